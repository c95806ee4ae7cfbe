"""The run loop on real Ray: how it ends, and what a failure on a worker does to a job."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from heygem_ray import RunConfig, media, submit
from heygem_ray.errors import EngineError
from tests.helpers.media import make_excerpt

# Its own Ray, with the dashboard: the state API (list_actors) needs it, and sees only this run's actors.
CALLBACK_RAISES = """
import logging, sys, time
from pathlib import Path
import ray
from ray.util.state import list_actors
from heygem_ray import RenderConfig, RunConfig, submit
from heygem_ray.errors import RunStopped
from heygem_ray.driver import RunCallbacks


class Broken(RunCallbacks):
    def job_done(self, result):
        raise RuntimeError(f"the caller's callback broke on {result.job_id}")


ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, logging_level=logging.WARNING)
folder = Path(sys.argv[1])
cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines",
                render=RenderConfig(chunk_frames=8))
try:
    submit(folder / "m.csv", cfg, Broken())
    print("RETURNED")
except RunStopped as exc:
    print("STOPPED", exc.message)
    print("CAUSE", repr(exc.__cause__))
    # Looked at while the error is in hand (its traceback holds the run's frames, and so
    # the actor handles, which would otherwise end the actors when dropped): ended by the
    # run itself. ray.kill is asynchronous: the GCS learns of the deaths within seconds.
    deadline = time.monotonic() + 30
    while True:
        actors = list_actors(address=ctx.address_info["gcs_address"], limit=1000)
        if all(a.state == "DEAD" for a in actors) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for a in actors:
        print("ACTOR", a.class_name, a.name, a.state)
ray.shutdown()
"""


def test_an_error_in_result_handling_ends_the_actors_and_reaches_the_caller(tmp_path, examples):
    """The caller's callback raises on the first finished row: the run stops, its model
    workers and progress actor end, the table still holds a row per job, and the caller
    gets the error with its message (not a run that 'rendered nothing'). A job that ended
    too as the run stopped keeps its row (how many did depends on timing)."""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.0)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    rows = [f"job{i},a.wav,p.jpg" for i in range(4)]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    proc = subprocess.run(
        [sys.executable, "-c", CALLBACK_RAISES, str(tmp_path)], capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    stopped = [line for line in lines if line.startswith("STOPPED")]
    assert len(stopped) == 1, lines
    assert str(tmp_path / "out" / "results.parquet") in stopped[0]
    assert any(line.startswith("CAUSE RuntimeError(\"the caller's callback broke on job") for line in lines), lines

    actors = [line.split() for line in lines if line.startswith("ACTOR")]
    kinds = {parts[1] for parts in actors}
    assert {"ActorWorker", "Router"} <= kinds, actors
    assert all(parts[-1] == "DEAD" for parts in actors), actors

    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert sorted(r["job_id"] for r in table) == [f"job{i}" for i in range(4)]
    ended = [r for r in table if r["status"] == "ok"]
    assert ended and all(len(media.read_video(Path(r["output"]))[0]) == r["frames"] == 25 for r in ended), table
    assert (f"the run stopped after {len(ended)} of 4 jobs had ended: RuntimeError: the caller's callback broke on "
            "job") in stopped[0]  # fmt: skip
    for r in table:
        if r not in ended:
            assert (r["status"], r["error_kind"]) == ("failed", "stopped")
            assert "the run stopped before this job ended (RuntimeError: the caller's callback broke on" in r["error"]


# Faults injected on the model workers, chosen by a chunk's length (chunk_frames is 8, so
# only a job's last chunk can be shorter): 1 frame kills the worker's process with
# SIGKILL, as a segfault or the OOM killer would; 2 frames raise the error PyTorch raises
# when CUDA runs out of memory; 3 frames raise a heygem error of kind "internal". Ray runs
# the hook in each of its worker processes before any task (`worker_process_setup_hook`).
FAULTS = """
import logging, os, sys
from pathlib import Path
import ray
from heygem_ray import RenderConfig, RunConfig, submit


def inject_faults():
    import os, signal
    from heygem_ray.errors import InternalError
    from heygem_ray.worker import ModelWorker

    run_chunk = ModelWorker.run_chunk

    def faulty(self, features, crops, *rest):
        if len(crops) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if len(crops) == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if len(crops) == 3:
            raise InternalError("a check in the worker failed (injected)")
        return run_chunk(self, features, crops, *rest)

    ModelWorker.run_chunk = faulty


# The test process's Ray instance (RAY_ADDRESS): the hook runs in this job's workers only.
ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING,
         runtime_env={"worker_process_setup_hook": inject_faults})
folder = Path(sys.argv[1])
cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines",
                render=RenderConfig(chunk_frames=8))
summary = submit(folder / "m.csv", cfg)
for r in summary.results:
    print("ROW", r.job_id, r.status, r.attempts, r.frames, r.error_kind, r.error_step, r.error or "")
ray.shutdown()
"""


@pytest.fixture(scope="module")
def faults(tmp_path_factory, examples, ray_join) -> tuple[Path, dict[str, list[str]], str]:
    d = tmp_path_factory.mktemp("faults")
    shutil.copy(examples / "presenter.jpg", d / "p.jpg")
    # 25 frames a second: 28 frames (8+8+8+4) for the good rows, 25, 26 and 27 for the others.
    for name, seconds in [("good", 1.12), ("kill", 1.0), ("oom", 1.04), ("internal", 1.08)]:
        make_excerpt(examples / "lesson1.wav", d / f"{name}.wav", seconds=seconds)
    rows = ["good1,good.wav,p.jpg", "kill,kill.wav,p.jpg", "oom,oom.wav,p.jpg", "internal,internal.wav,p.jpg",
            "good2,good.wav,p.jpg"]
    (d / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    proc = subprocess.run([sys.executable, "-c", FAULTS, str(d)], capture_output=True, text=True, timeout=500,
                          env=ray_join)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    found = [line.split(maxsplit=7) for line in proc.stdout.splitlines() if line.startswith("ROW")]
    return d, {parts[1]: parts[2:] for parts in found}, proc.stderr


def test_an_error_raised_on_a_worker_is_its_jobs_error_and_is_not_retried(faults):
    _, rows, _ = faults
    status, attempts, frames, kind, stage, error = rows["oom"]
    assert (status, attempts, kind, stage) == ("failed", "1", "out_of_memory", "render"), rows["oom"]
    assert error.startswith("row 3 (job 'oom'): chunk 3 (frames 24-25): its model worker ran out of memory "
                            "(RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (injected)): a smaller "
                            "--chunk-frames (the frames a model worker renders at once) needs less of it"), error
    # A heygem error keeps its kind and message.
    status, attempts, frames, kind, stage, error = rows["internal"]
    assert (status, attempts, kind, stage) == ("failed", "1", "internal", "render"), rows["internal"]
    assert error == "row 4 (job 'internal'): a check in the worker failed (injected)"


def test_a_chunk_that_kills_its_worker_fails_its_job_after_the_bound(faults):
    _, rows, stderr = faults
    status, attempts, frames, kind, stage, error = rows["kill"]
    assert (status, attempts, kind, stage) == ("failed", "1", "worker_crash", "render"), rows["kill"]
    assert error.startswith("row 2 (job 'kill'): chunk 3 (frames 24-24): its model worker died 2 times while rendering it")
    assert "--chunk-frames" in error
    # Rendered twice: sent again after the first death (and maybe before it ran, when
    # another chunk's death took the worker it was queued on).
    assert stderr.count("chunk 3 (frames 24-24): its model worker died while rendering it") == 1, stderr[-3000:]


def test_the_other_rows_render_next_to_failing_and_crashing_chunks(faults):
    d, rows, _ = faults
    assert sorted(rows) == ["good1", "good2", "internal", "kill", "oom"]
    for job in ("good1", "good2"):
        assert rows[job][:3] == ["ok", rows[job][1], "28"], rows[job]
        assert len(media.read_video(d / "out" / f"{job}.mp4")[0]) == 28
    assert sorted(p.name for p in (d / "out").iterdir() if not p.name.startswith(".heygem")) == [
        "good1.mp4", "good2.mp4", "results.parquet"
    ]


def test_workers_that_do_not_start_in_time_stop_the_run_saying_so(tmp_path, examples, ray_local):
    (tmp_path / "m.csv").write_text(f"audio,video\n{examples / 'lesson1.wav'},{examples / 'presenter.jpg'}\n")
    cfg = RunConfig(output_dir=tmp_path / "out", cache_dir=tmp_path / "cache", engines_dir=tmp_path / "engines",
                    workers_ready_timeout_s=0.01)
    with pytest.raises(EngineError) as err:
        submit(tmp_path / "m.csv", cfg)
    assert err.value.kind == "workers_not_ready"
    assert err.value.message == (
        "no model worker was ready after 0.01 s: 1 of 1 started on a node and are still loading their models "
        "or building engines; allow them longer (--start-timeout)"
    )
    assert not (tmp_path / "out").exists()
