"""A run under a seeded schedule of faults: model workers killed (by Ray and by SIGKILL of
their process), job tasks killed, the output folder's disk filled (a small tmpfs, full
until a write fails with ENOSPC, freed a few seconds later), and transient RPC failures
between the run's processes, injected by Ray itself. Every row must end `ok` or with an honest kind, no finished MP4 may
be lost or cut short, the run must end, and a rerun must complete every row.

The schedule is drawn from `random.Random(seed)`: the seeds come from the environment
(`HEYGEM_FAULT_SEEDS=3,17`) or the fixed list below, and a failure names its seed and the
schedule it drew, so it replays. (Ray's RPC fault injection draws where the failures fall
with a random seed of its own; the schedule fixes their rates.)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from heygem_ray import media
from tests.helpers.media import make_excerpt
from tests.helpers.procs import PROCESSES

SEEDS = [int(s) for s in os.environ.get("HEYGEM_FAULT_SEEDS", "1").split(",")]
ROWS = 40
# Kinds a row may honestly end with when its job was lost this way: its task killed on
# every attempt, a chunk whose workers were killed twice while they rendered it, a chunk
# whose workers could not be reached, the run stopped (no worker left), a write that found
# the output's disk full.
HONEST = {"worker_lost", "worker_crash", "stopped", "storage"}

# The run, in its own process and its own local Ray. The schedule (JSON, argv[3]) says
# when to do what, in seconds after the first model worker serves; every worker process
# carries its env_vars (Ray's RPC fault injection, and a token that tells this run's
# processes from any other Ray's on the machine). Prints one ROW line per table row and
# one DID line per action done.
RUN = PROCESSES + """
import errno, json, logging, os, signal, sys, threading, time
from pathlib import Path
import ray
from heygem_ray import RenderConfig, RunConfig, submit
from heygem_ray.errors import RunStopped
from heygem_ray.driver import RunCallbacks

folder, token, schedule = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
env = {TOKEN_VAR: token}
if schedule["rpc_failure"]:
    env["RAY_testing_rpc_failure"] = json.dumps(schedule["rpc_failure"])
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
         runtime_env={"env_vars": env})


def model_workers():
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted((a["name"], a["namespace"]) for a in named if a["name"].startswith("model-worker-"))


def kill_worker_by_ray(pick):
    live = model_workers()
    if not live:
        return None
    name, namespace = live[pick % len(live)]
    ray.kill(ray.get_actor(name, namespace=namespace))
    return name


def sigkill(pids, pick):
    if not pids:
        return None
    pid = pids[pick % len(pids)]
    os.kill(pid, signal.SIGKILL)
    return pid


FILLER = folder / "out" / ".filler"


def fill_output_disk(pick):
    # Write into the output folder (its own small tmpfs) until its disk is full: every write
    # of the run there fails with ENOSPC until the filler goes, 2 to 8 s later (or once
    # every job has ended, so that the run can write its table).
    with open(FILLER, "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 20))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        try:  # the last few bytes
            while True:
                f.write(bytes(4096))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    threading.Timer(pick % 7 + 2, free_output_disk).start()
    return "full"


def free_output_disk():
    FILLER.unlink(missing_ok=True)


# What the schedule can do.
ACTIONS = {
    "fill_output_disk": fill_output_disk,
    "kill_worker_by_ray": kill_worker_by_ray,
    "kill_worker_process": lambda pick: sigkill(processes("ray::ActorWorker", token), pick),
    "kill_job_task": lambda pick: sigkill(processes("ray::job", token), pick),
}


class Chaos(RunCallbacks):
    def __init__(self):
        self.serving = threading.Event()
        self.ended = threading.Event()
        self.jobs, self.done = 0, 0

    def started(self, jobs):
        self.jobs = jobs

    def job_done(self, result):
        self.done += 1
        if self.done == self.jobs:
            free_output_disk()

    def workers(self, infos):
        self.serving.set()

    def run(self):
        self.serving.wait()
        start = time.monotonic()
        for event in schedule["events"]:
            if self.ended.wait(max(0.0, start + event["at"] - time.monotonic())):
                return
            done = ACTIONS[event["do"]](event["pick"])
            print("DID", round(time.monotonic() - start, 1), event["do"], done, flush=True)


chaos = Chaos()
thread = threading.Thread(target=chaos.run, daemon=True)
thread.start()
cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines",
                render=RenderConfig(chunk_frames=8), workers=1, worker_restarts=20)
try:
    summary = submit(folder / "m.csv", cfg, chaos)
    path = summary.results_path
except RunStopped as exc:
    print("STOPPED", exc.message, flush=True)
    path = folder / "out" / "results.parquet"
chaos.ended.set()
free_output_disk()
import pyarrow.parquet as pq
# (No table: the run stopped because it could not write it, and said so above.)
for r in pq.read_table(path).to_pylist() if path.exists() else []:
    print("ROW", json.dumps({k: r[k] for k in ("job_id", "status", "error_kind", "error", "frames", "output",
                                              "attempts")}), flush=True)
ray.shutdown()
"""


KINDS = ["kill_worker_by_ray", "kill_worker_process", "kill_job_task", "fill_output_disk"]


def draw(seed: int, disk: bool = True) -> dict:
    """The schedule a seed stands for: each kind of action once and 1 to 4 more, at random
    moments of the first 60 s of rendering, and the rate of Ray's injected RPC failures on
    calls between the run's processes. ``disk``: whether the output folder's disk may be
    filled (it is a tmpfs of its own)."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS if disk or k != "fill_output_disk"]
    kinds += [rng.choice(kinds) for _ in range(rng.randint(1, 4))]
    events = [{"at": round(rng.uniform(2, 60), 1), "do": kind, "pick": rng.randrange(1000)} for kind in kinds]
    percent = rng.choice([2, 5, 10])  # of the calls an actor or job makes to an actor: split three ways
    split = [rng.randint(0, percent) for _ in range(2)]
    low, high = sorted(split)
    rpc = {"CoreWorkerService.grpc_client.PushTask": {
        "num_failures": -1, "req_failure_prob": low, "resp_failure_prob": high - low,
        "in_flight_failure_prob": percent - high,
    }}
    return {"events": sorted(events, key=lambda e: e["at"]), "rpc_failure": rpc}


def _run(folder: Path, schedule: dict) -> tuple[dict[str, dict], str]:
    """Run the manifest once under ``schedule``: (table rows by job id, everything it printed)."""
    proc = subprocess.run([sys.executable, "-c", RUN, str(folder), uuid.uuid4().hex, json.dumps(schedule)],
                          capture_output=True, text=True, timeout=900)
    said = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, said
    rows = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    return {r["job_id"]: r for r in rows}, said


@pytest.fixture
def out_disk(tmp_path) -> Iterator[bool]:
    """The output folder on a tmpfs of its own (64 MiB; the run's outputs take a few), so
    that filling it fills nothing else: True, or False where this user may not mount one
    (the schedule then leaves the disk alone)."""
    out = tmp_path / "out"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(out)],
                             capture_output=True).returncode == 0  # fmt: skip
    yield mounted
    if mounted:
        subprocess.run(["umount", "-l", str(out)], check=False)


@pytest.fixture
def manifest(tmp_path, examples) -> Path:
    """ROWS rows of 0.5 s or 0.8 s of speech over the bundled photo."""
    clips = []
    for seconds in (0.5, 0.8):
        clip = tmp_path / f"{seconds}.wav"
        clips.append(make_excerpt(examples / "lesson1.wav", clip, seconds=seconds))
    rows = [f"job{i},{clips[i % 2]},{examples / 'presenter.jpg'}" for i in range(ROWS)]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def _check_outputs(out: Path, rows: dict[str, dict], replay: str) -> None:
    """Every ok row's MP4 decodes to its frame count; every MP4 under a job's name is whole."""
    for r in rows.values():
        if r["status"] in ("ok", "skipped"):
            frames = len(media.read_video(Path(r["output"]))[0])
            assert frames == r["frames"] > 0, f"{replay}: {r}"
    for mp4 in out.glob("[!.]*.mp4"):
        assert media.probe_video(mp4).frames == len(media.read_video(mp4)[0]) > 0, f"{replay}: {mp4}"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_run_under_seeded_faults_ends_keeps_every_finished_video_and_reruns_to_completion(manifest, out_disk,
                                                                                          seed):
    folder = manifest.parent
    schedule = draw(seed, disk=out_disk)
    replay = f"seed {seed} (HEYGEM_FAULT_SEEDS={seed} replays it), schedule {json.dumps(schedule)}"

    rows, said = _run(folder, schedule)
    replay += f"\n--- the run said:\n{said[-8000:]}"
    if rows:
        assert sorted(rows) == sorted(f"job{i}" for i in range(ROWS)), replay  # every row, once
        for r in rows.values():
            assert r["status"] == "ok" or (r["status"] == "failed" and r["error_kind"] in HONEST), f"{replay}\n{r}"
            assert r["status"] == "ok" or r["error"].startswith("row "), f"{replay}\n{r}"
    else:  # a job's record met the full disk: the run stops, says why and what to do, and has no table
        stop = next((line for line in said.splitlines() if line.startswith("STOPPED ")), "")
        assert "no space left on device; free space on that disk" in stop, replay
        assert stop.endswith("run the same manifest again to render the rest"), replay
        if "the results table could not be written either" in stop:  # then: where the rows that ended are
            assert f"kept in {folder / 'out' / '.heygem-results'} ('heygem-ray status {folder / 'out'}'" in stop, replay
    _check_outputs(folder / "out", rows, replay)
    assert "DID " in said, replay  # the schedule ran while jobs were rendering

    again, said = _run(folder, {"events": [], "rpc_failure": None})
    assert sorted(again) == sorted(f"job{i}" for i in range(ROWS)), f"{replay}\n--- the rerun said:\n{said}"
    assert {r["status"] for r in again.values()} <= {"ok", "skipped"}, f"{replay}\n--- the rerun said:\n{said}"
    if rows:
        assert {j for j, r in again.items() if r["status"] == "skipped"} == {j for j, r in rows.items()
                                                                             if r["status"] == "ok"}, replay
    _check_outputs(folder / "out", again, replay)
    assert not list((folder / "out").glob("*.part.mp4")), replay
