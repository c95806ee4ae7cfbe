"""The run loop on real Ray: how it ends, and what a failure on a worker does to a job."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from heygem_ray import media

# Each script starts its own Ray, with the dashboard: the state API (list_actors) needs it.
CALLBACK_RAISES = """
import logging, sys, time
from pathlib import Path
import ray
from ray.util.state import list_actors
from heygem_ray import RenderConfig, RunConfig, submit
from heygem_ray.errors import RunStopped
from heygem_ray.run import RunCallbacks


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


def _speech(src: Path, dst: Path, seconds: float) -> Path:
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-t", str(seconds), str(dst)], check=True)
    return dst


def test_an_error_in_result_handling_ends_the_actors_and_reaches_the_caller(tmp_path, examples):
    """The caller's callback raises on the first finished row: the run stops, its model
    workers and progress actor end, the table still holds a row per job, and the caller
    gets the error with its message (not a run that 'rendered nothing')."""
    _speech(examples / "lesson1.wav", tmp_path / "a.wav", 1.0)
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
    assert "the run stopped after 1 of 4 jobs had ended: RuntimeError: the caller's callback broke on job" in stopped[0]
    assert str(tmp_path / "out" / "results.parquet") in stopped[0]
    assert any(line.startswith("CAUSE RuntimeError(\"the caller's callback broke on job") for line in lines), lines

    actors = [line.split() for line in lines if line.startswith("ACTOR")]
    kinds = {parts[1] for parts in actors}
    assert {"_ActorWorker", "_Progress"} <= kinds, actors
    assert all(parts[-1] == "DEAD" for parts in actors), actors

    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert sorted(r["job_id"] for r in table) == [f"job{i}" for i in range(4)]
    ended = [r for r in table if r["status"] == "ok"]
    assert len(ended) == 1 and len(media.read_video(Path(ended[0]["output"]))[0]) == ended[0]["frames"] == 25
    for r in table:
        if r is not ended[0]:
            assert (r["status"], r["error_kind"]) == ("failed", "stopped")
            assert "the run stopped before this job ended (RuntimeError: the caller's callback broke on" in r["error"]
