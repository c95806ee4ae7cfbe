"""jobs/nightly.py: dated run folders, resume, exit status, run.json; and the same script
submitted through the Ray Job API to a real two-node cluster."""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from heygem_ray import media
from heygem_ray.driver.hold import RUN_LOCK
from tests.helpers.media import make_excerpt
from tests.jobs import NIGHTLY


def _manifest(path: Path, rows: list[str]) -> Path:
    path.write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    return path


def _table(folder: Path) -> dict[str, dict]:
    return {r["job_id"]: r for r in pq.read_table(folder / "results.parquet").to_pylist()}


@pytest.fixture
def folder(tmp_path, examples):
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.0)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    _manifest(tmp_path / "good.csv", [f"one,{tmp_path / 'a.wav'},{tmp_path / 'p.jpg'}", f"two,{tmp_path / 'a.wav'},{tmp_path / 'p.jpg'}"])
    rows = (tmp_path / "good.csv").read_text().splitlines()[1:]
    _manifest(tmp_path / "m.csv", [*rows, f"bad,{tmp_path / 'missing.wav'},{tmp_path / 'p.jpg'}"])
    return tmp_path


def test_each_date_gets_its_folder_and_a_rerun_of_the_same_date_resumes_it(folder, nightly, ray_local, capsys):
    common = ["--cache-dir", str(folder / "cache"), "--engines", str(folder / "engines")]
    root = folder / "renders"

    # 1. the night of 2026-01-02: two rows render, the row whose audio is missing fails
    assert nightly.main([str(folder / "m.csv"), str(root), "--date", "2026-01-02", *common]) == 1
    night = root / "2026-01-02"
    first = _table(night)
    assert {j: r["status"] for j, r in first.items()} == {"one": "ok", "two": "ok", "bad": "failed"}
    assert first["bad"]["error_kind"] == "missing_file" and "missing.wav" in first["bad"]["error"]
    for j in ("one", "two"):
        assert Path(first[j]["output"]).parent == night
        assert len(media.read_video(first[j]["output"])[0]) == first[j]["frames"] == 25
    run = json.loads((night / "run.json").read_text())
    assert run["date"] == "2026-01-02" and run["exit_code"] == 1
    assert (run["jobs"], run["ok"], run["skipped"], run["failed"]) == (3, 2, 0, 1)
    assert run["results"] == str((night / "results.parquet").resolve())
    assert run["ray_job_submission_id"] is None and run["started_at"] <= run["ended_at"]
    assert run["render_settings"]["pack"] == "warp" and run["render_settings"]["loop"] == "pingpong"
    assert run["config_hash"] == first["one"]["config_hash"]
    assert json.loads(first["one"]["render_settings"]) == run["render_settings"]
    out = capsys.readouterr().out.splitlines()
    assert out and all(" nightly 2026-01-02: " in line for line in out), out
    assert any("2 ok, 0 skipped (done earlier), 1 failed of 3 jobs; exit 1" in line for line in out), out
    assert any(line.endswith(f"results: {(night / 'results.parquet').resolve()}") for line in out), out
    assert any("failed bad: [missing_file]" in line for line in out), out
    stamps = {j: Path(first[j]["output"]).stat().st_mtime_ns for j in ("one", "two")}

    # 2. the same date again: finished rows are skipped, untouched; the bad row fails again
    assert nightly.main([str(folder / "m.csv"), str(root), "--date", "2026-01-02", *common]) == 1
    again = _table(night)
    assert {j: r["status"] for j, r in again.items()} == {"one": "skipped", "two": "skipped", "bad": "failed"}
    assert {j: Path(again[j]["output"]).stat().st_mtime_ns for j in ("one", "two")} == stamps

    # 3. with the bad row fixed (here: dropped), the night ends clean without rendering again
    assert nightly.main([str(folder / "good.csv"), str(root), "--date", "2026-01-02", *common]) == 0
    assert json.loads((night / "run.json").read_text())["skipped"] == 2

    # 4. the next night is a new folder; the previous one is left as it was. After it, the
    #    template no night has used for 40 days is pruned, the one this night used is kept.
    (used,) = [p for p in (folder / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")]
    stale = Path(shutil.copytree(used, folder / "cache" / ("e" * 32)))
    os.utime(stale, (time.time() - 40 * 86400,) * 2)
    assert nightly.main([str(folder / "good.csv"), str(root), "--date", "2026-01-03", *common]) == 0
    assert not stale.exists() and used.is_dir()
    assert json.loads((root / "2026-01-03" / "run.json").read_text())["cache_pruned"]["templates"] == 1
    assert any(f"template cache {folder / 'cache'}: removed 1 unused for 30 days" in line
               for line in capsys.readouterr().out.splitlines())  # fmt: skip
    assert {j: r["status"] for j, r in _table(root / "2026-01-03").items()} == {"one": "ok", "two": "ok"}
    assert sorted(p.name for p in root.iterdir()) == ["2026-01-02", "2026-01-03"]
    assert {j: Path(again[j]["output"]).stat().st_mtime_ns for j in ("one", "two")} == stamps


def test_run_json_says_a_night_is_under_way_from_when_it_holds_its_folder(folder, ray_join):
    """run.json is written as the night takes its folder, saying it is under way and how
    many jobs it set out to render, before any is rendered: a night killed as it ran (kill
    -9, a lost node) leaves that, where it left no run.json at all. Its end writes it over.
    (Read as the night runs, not killed here: a driver killed on the tests' shared Ray
    instance has that instance report its workers' deaths into the next tests' output.)"""
    root = folder / "renders"
    night = root / "2026-01-06"
    proc = subprocess.Popen([sys.executable, str(NIGHTLY), str(folder / "good.csv"), str(root), "--date", "2026-01-06",
                             "--cache-dir", str(folder / "cache"), "--engines", str(folder / "engines")],
                            env=ray_join, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (night / "run.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        under_way = json.loads((night / "run.json").read_text())
        rendered = [p.name for p in night.glob("*.mp4")]
        assert proc.wait(300) == 0
    finally:
        proc.kill()
    assert under_way["state"] == "running" and under_way["jobs"] == 2 and under_way["date"] == "2026-01-06"
    assert "exit_code" not in under_way and "ended_at" not in under_way and under_way["started_at"]
    assert rendered == []  # (before the first job's video)
    run = json.loads((night / "run.json").read_text())
    assert run["state"] == "ended" and run["exit_code"] == 0 and run["jobs"] == 2 and run["ended_at"]


# The nightly job in a process of its own whose run lock beats every 0.1 s, and whose
# folder another run takes over as its first row is kept: that run's lock and run.json
# replace this one's. Prints the exit status.
_TAKEN_OVER = """
import json, os, runpy, sys, time
from pathlib import Path
from heygem_ray import locks
from heygem_ray.driver import resume
from heygem_ray.driver.hold import RUN_LOCK

locks.BEATS_PER_STALE = int(locks.STALE_AFTER_S / 0.1)
record = resume.record

def kept_then_taken_over(output_dir, result):
    kept = record(output_dir, result)
    resume.record = record
    lock = Path(output_dir) / RUN_LOCK
    alive = os.getppid()  # (the test's own process: a holder that is running)
    other = json.loads(lock.read_text()) | {"token": "0" * 32, "pid": alive, "what": "the other run",
                                             "process_start": locks._process_start(alive)}
    lock.write_text(json.dumps(other))
    (Path(output_dir) / "run.json").write_text('{"by": "the other run"}')
    time.sleep(2)  # its heartbeat finds the lock another's
    return kept

resume.record = kept_then_taken_over
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    print("EXIT", exc.code)
"""


def test_a_night_whose_folder_is_taken_over_leaves_the_other_runs_run_json_alone(folder, ray_join):
    """A night whose heartbeat had stopped long enough for another run to take its folder
    over stops there, without a table (as submit does); it wrote its run.json over the
    other run's all the same."""
    root, night = folder / "renders", folder / "renders" / "2026-01-07"
    proc = subprocess.run([sys.executable, "-c", _TAKEN_OVER, str(NIGHTLY), str(folder / "good.csv"), str(root),
                           "--date", "2026-01-07", "--cache-dir", str(folder / "cache"), "--engines",
                           str(folder / "engines"), "--max-jobs", "1"],
                          env=ray_join, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert "EXIT 1" in proc.stdout.splitlines(), proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "was taken over while this process held it" in proc.stderr, proc.stderr[-3000:]
    assert "run.json not written: the folder is another run's now (pid " in proc.stdout, proc.stdout[-3000:]
    assert json.loads((night / "run.json").read_text()) == {"by": "the other run"}
    assert not (night / "results.parquet").exists()


def test_an_unusable_manifest_exits_2_and_says_why_in_run_json(tmp_path, nightly, monkeypatch, capsys):
    (tmp_path / "m.csv").write_text("job_id,voice,video\nx,a.wav,p.jpg\n")
    # What Ray gives a Job's entrypoint: its metadata, with the submission id.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "heygem-nightly-x"}}))
    assert nightly.main([str(tmp_path / "m.csv"), str(tmp_path / "r"), "--date", "2026-01-02"]) == 2
    run = json.loads((tmp_path / "r" / "2026-01-02" / "run.json").read_text())
    assert run["exit_code"] == 2 and "'audio'" in run["error"] and "jobs" not in run
    assert run["ray_job_submission_id"] == "heygem-nightly-x"
    assert "error: manifest" in capsys.readouterr().err


def test_a_ray_address_that_is_the_dashboards_exits_2_saying_so_and_the_night_ends_in_run_json(folder):
    """``RAY_ADDRESS=http://head:8265``, as Ray's Jobs docs have users export: a Ray
    ``ValueError`` was a traceback, exit 1, and run.json said ``running`` for ever. (A
    process of its own: one that has joined Ray already never reads the address.)"""
    env = os.environ | {"RAY_ADDRESS": "http://127.0.0.1:8265"}
    proc = subprocess.run([sys.executable, str(NIGHTLY), str(folder / "good.csv"), str(folder / "r"), "--date",
                           "2026-01-03"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    run = json.loads((folder / "r" / "2026-01-03" / "run.json").read_text())
    assert (run["state"], run["exit_code"]) == ("ended", 2), run
    assert run["error"].startswith("RAY_ADDRESS 'http://127.0.0.1:8265' is no address of a Ray cluster (Invalid Ray "
                                   "address: 'http://127.0.0.1:8265') (an http:// address is the dashboard's")
    assert "give the head node's GCS address, HOST:6379" in proc.stderr and "Traceback" not in proc.stderr


HOLDER = """
import sys
from heygem_ray.driver.hold import hold_output
from pathlib import Path
with hold_output(Path(sys.argv[1]), "run f1r57 of nightly.csv"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_night_another_run_holds_is_refused_in_one_line_and_its_run_json_left_alone(folder, nightly, capsys):
    """Submitted again while the night still runs (README's advice for a stuck night): exit
    2 with one line naming the holder; the running night's folder, run.json included, is
    not touched."""
    night = folder / "renders" / "2026-01-02"
    night.mkdir(parents=True)
    (night / "run.json").write_text('{"date": "2026-01-02", "started_at": "the first run"}\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(night)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        before = {p.name: p.read_bytes() for p in night.iterdir() if p.name != RUN_LOCK}
        holding = json.loads((night / RUN_LOCK).read_text())["token"]
        code = nightly.main([str(folder / "m.csv"), str(folder / "renders"), "--date", "2026-01-02",
                             "--address", "ray://127.0.0.1:9"])  # fmt: skip
        assert code == 2
        assert {p.name: p.read_bytes() for p in night.iterdir() if p.name != RUN_LOCK} == before
        assert json.loads((night / RUN_LOCK).read_text())["token"] == holding  # its heartbeat rewrites the rest
    finally:
        holder.kill()
        holder.wait()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {night} is in use by another run: pid {holder.pid} on ")
    assert "(run f1r57 of nightly.csv)" in line


NIGHT_HOLDER = """
import sys
from heygem_ray.driver.hold import hold_output
from pathlib import Path
with hold_output(Path(sys.argv[1]), "night 2026-01-01 of nightly.csv", lock_name=sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_night_does_not_start_while_another_night_runs(folder, nightly, capsys):
    """A scheduler with no concurrency policy (KubeRay's RayCronJob has none) starts the
    next night while the last one overruns: it is refused in one line, exit 2, and makes no
    folder of its own; the message says how to render it once the other night has ended."""
    root = folder / "renders"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", NIGHT_HOLDER, str(root), nightly.NIGHTS_LOCK],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        code = nightly.main([str(folder / "m.csv"), str(root), "--date", "2026-01-02", "--address", "ray://127.0.0.1:9"])
        assert code == 2
        assert sorted(p.name for p in root.iterdir()) == [nightly.NIGHTS_LOCK]  # no 2026-01-02/, no run.json
    finally:
        holder.kill()
        holder.wait()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {root} is in use by another run: pid {holder.pid} on ")
    assert "(night 2026-01-01 of nightly.csv)" in line
    assert "this night does not start while another runs; once it has ended, render this one with --date 2026-01-02" in line


def test_the_date_defaults_to_today_in_utc_and_must_be_a_date(nightly, capsys):
    assert nightly.parse_args(["m.csv", "out"]).date is None  # main() fills in today (UTC)
    assert nightly.parse_args(["m.csv", "out", "--date", "2026-01-02"]).date == "2026-01-02"
    with pytest.raises(SystemExit) as exc:
        nightly.parse_args(["m.csv", "out", "--date", "2026-13-01"])
    assert exc.value.code == 2 and "use YYYY-MM-DD" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nightly.parse_args(["m.csv", "out", "--pack", "nope"])


def test_the_restore_options_reach_the_render_settings(tmp_path, nightly, capsys):
    args = nightly.parse_args(["m.csv", "out", "--restore", "gfpgan", "--restore-checkpoint", "g.pth",
                               "--restore-blend", "0.5"])  # fmt: skip
    assert (args.restore, args.restore_checkpoint, args.restore_blend) == ("gfpgan", Path("g.pth"), 0.5)
    (tmp_path / "m.csv").write_text("audio,video\na.wav,p.jpg\n")
    assert nightly.main([str(tmp_path / "m.csv"), str(tmp_path / "out"), "--restore", "gfpgan"]) == 2
    assert "--restore gfpgan needs its weights: pass --restore-checkpoint" in capsys.readouterr().err


def test_the_reference_options_reach_the_render_settings(tmp_path, nightly, capsys):
    args = nightly.parse_args(["m.csv", "out", "--max-resolution", "1080", "--reference-seconds", "300",
                               "--reference-start", "90", "--max-fps", "30"])  # fmt: skip
    assert (args.max_resolution, args.reference_seconds, args.reference_start, args.max_fps) == (1080, 300.0, 90.0, 30)
    (tmp_path / "m.csv").write_text("audio,video\na.wav,p.mp4\n")
    assert nightly.main([str(tmp_path / "m.csv"), str(tmp_path / "out"), "--max-fps", "12"]) == 2
    assert "--max-fps must be 0 (the reference's own) or 20 or more" in capsys.readouterr().err
    assert nightly.main([str(tmp_path / "m.csv"), str(tmp_path / "out"), "--reference-seconds", "0.5"]) == 2
    assert "--reference-seconds must be 0 (all of each reference) or at least 1 seconds" in capsys.readouterr().err
    assert nightly.main([str(tmp_path / "m.csv"), str(tmp_path / "out"), "--reference-start", "-1"]) == 2
    assert "--reference-start must be 0 (each reference from its beginning)" in capsys.readouterr().err


# A two-node cluster with the dashboard (the Job API's server), in its own process so it
# never meets the Ray instance this test process may hold. RAY_TMPDIR (set by the test)
# keeps its session files and its "current cluster" address out of /tmp/ray, where another
# process's ray.init() would find it.
CLUSTER = """
import sys
from ray.cluster_utils import Cluster

dashboard, agent_head, agent_worker = (int(a) for a in sys.argv[1:4])
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1",
    "dashboard_port": dashboard, "dashboard_agent_listen_port": agent_head})
cluster.add_node(num_cpus=2, dashboard_agent_listen_port=agent_worker)
cluster.wait_for_nodes()
print("READY", sum(n["Alive"] for n in cluster.global_state.node_table()), flush=True)
sys.stdin.read()  # until the test closes stdin
cluster.shutdown()
"""
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_for_job(client, submission_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (status := str(client.get_job_status(submission_id).value)) not in TERMINAL:
        assert time.monotonic() < deadline, f"{submission_id} still {status}:\n{client.get_job_logs(submission_id)[-3000:]}"
        time.sleep(1)
    return status


def test_nightly_runs_as_a_ray_job_on_a_two_node_cluster(folder, examples):
    from ray.job_submission import JobSubmissionClient

    # Two more good rows (one with a video reference): work for both nodes.
    rows = (folder / "m.csv").read_text().splitlines()[1:]
    rows += [f"three,{folder / 'a.wav'},{examples / 'presenter.mp4'}", f"four,{folder / 'a.wav'},{folder / 'p.jpg'}"]
    _manifest(folder / "m.csv", rows)
    root = folder / "renders"
    night = root / "2026-01-04"
    args = [
        str(folder / "m.csv"), str(root), "--date", "2026-01-04",
        "--cache-dir", str(folder / "cache"), "--engines", str(folder / "engines"), "--workers", "2",
    ]
    dashboard, agent_head, agent_worker = _free_ports(3)
    ray_tmp = tempfile.mkdtemp(prefix="hgr", dir="/tmp")  # short: Ray's unix socket paths live under it
    bin_dir = str(Path(sys.executable).parent)
    # The cluster's `python` is this environment's, as on a node whose image has heygem-ray.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_TMPDIR": ray_tmp, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")
    }
    cluster_log = folder / "cluster.log"  # a file, not a pipe: nobody reads it while the test runs
    with cluster_log.open("w") as log:
        cluster = subprocess.Popen(
            [sys.executable, "-c", CLUSTER, str(dashboard), str(agent_head), str(agent_worker)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
        )
    try:
        assert cluster.stdout is not None
        ready = cluster.stdout.readline() if select.select([cluster.stdout], [], [], 120)[0] else "(no READY in 120 s)\n"
        assert ready == "READY 2\n", ready + cluster_log.read_text()[-3000:]  # two live nodes
        address = f"http://127.0.0.1:{dashboard}"
        client = _client(JobSubmissionClient, address)

        # 1. the night's job, submitted as README.md shows: four rows render on the
        #    cluster, the bad row fails, so the job FAILS with the script's exit status 1
        #    (what an operator's alert watches) and `ray job submit` exits 1 too
        submit = subprocess.run(
            [str(Path(bin_dir) / "ray"), "job", "submit", "--address", address,
             "--submission-id", "heygem-nightly-2026-01-04", "--working-dir", str(NIGHTLY.parents[1]),
             "--", "python", "jobs/nightly.py", *args],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert submit.returncode == 1, submit.stdout[-3000:] + submit.stderr[-3000:]
        info = client.get_job_info("heygem-nightly-2026-01-04")
        assert (str(info.status.value), info.driver_exit_code) == ("FAILED", 1), info.message
        table = _table(night)
        assert {j: r["status"] for j, r in table.items()} == {
            "one": "ok", "two": "ok", "bad": "failed", "three": "ok", "four": "ok"
        }
        for r in table.values():
            if r["status"] == "ok":
                assert len(media.read_video(r["output"])[0]) == r["frames"] == 25
        logs = client.get_job_logs("heygem-nightly-2026-01-04")
        assert "nightly 2026-01-04: 4 ok, 0 skipped (done earlier), 1 failed of 5 jobs; exit 1" in logs, logs[-3000:]
        assert f"results: {(night / 'results.parquet').resolve()}" in logs
        assert json.loads((night / "run.json").read_text())["ray_job_submission_id"] == "heygem-nightly-2026-01-04"

        # 2. resubmitted the same day (from Python this time, and under a new submission
        #    id: Ray keeps ids unique), the job resumes the night: nothing is rendered again
        retry = "heygem-nightly-2026-01-04-retry1"
        entrypoint = shlex.join([sys.executable, str(NIGHTLY), *args])
        assert client.submit_job(entrypoint=entrypoint, submission_id=retry) == retry
        assert _wait_for_job(client, retry) == "FAILED" and client.get_job_info(retry).driver_exit_code == 1
        again = _table(night)
        assert {j for j, r in again.items() if r["status"] == "skipped"} == {"one", "two", "three", "four"}
        run = json.loads((night / "run.json").read_text())
        assert run["ray_job_submission_id"] == retry and run["skipped"] == 4

        # 3. another night asks for GPU workers the cluster does not have and waits for
        #    them; `ray job stop` (SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S)
        #    stops it: the table says every row 'stopped', run.json says why, exit 143
        stopped = "heygem-nightly-2026-01-05"
        entrypoint = shlex.join([sys.executable, str(NIGHTLY), *args[:3], "2026-01-05", *args[4:], "--device", "gpu"])
        client.submit_job(entrypoint=entrypoint, submission_id=stopped,
                          runtime_env={"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}})
        deadline = time.monotonic() + 240
        while "waiting for model workers (" not in client.get_job_logs(stopped):
            assert time.monotonic() < deadline, client.get_job_logs(stopped)[-3000:]
            time.sleep(1)
        assert client.stop_job(stopped)
        assert _wait_for_job(client, stopped) == "STOPPED"
        run = json.loads((root / "2026-01-05" / "run.json").read_text())
        assert run["exit_code"] == 143 and "it was sent SIGTERM" in run["error"], run
        assert {r["status"] + "/" + r["error_kind"] for r in _table(root / "2026-01-05").values()} == {"failed/stopped"}
        assert "nightly 2026-01-05: stopped by SIGTERM; exit 143" in client.get_job_logs(stopped)
    finally:
        if cluster.stdin is not None:
            cluster.stdin.close()
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _client(cls, address: str, timeout: float = 60):
    """The Job API client, once the head's dashboard answers (it starts after the nodes)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return cls(address)
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
