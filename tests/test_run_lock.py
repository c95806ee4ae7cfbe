"""One run per output folder or bucket prefix: a second run is refused at once, having
touched nothing; the lock of a run that was killed is taken over by the next."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from heygem_ray import RunConfig, storage, submit
from heygem_ray.driver import RunCallbacks
from heygem_ray.driver.hold import RUN_LOCK, hold_output, runs_inside
from heygem_ray.errors import InputError
from heygem_ray.job.compose import PARTIAL_SUFFIX
from heygem_ray.storage import Location
from tests.helpers.media import make_excerpt

# Another process holding an output folder as a run does (driver.hold.hold_output), until killed.
HOLDER = """
import sys
from heygem_ray.driver.hold import hold_output
from heygem_ray.storage import location
with hold_output(location(sys.argv[1]), "run f1r57 of nightly.csv"):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def _held(output: Location) -> Iterator[subprocess.Popen]:
    """``output`` held by a live process (its environment reaches the same bucket)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes; the run lock with its holder (its
    heartbeat rewrites the rest)."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    if RUN_LOCK in files:
        files[RUN_LOCK] = json.loads(files[RUN_LOCK])["token"].encode()
    return files


@pytest.fixture
def folder(tmp_path, examples):
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=0.6)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    (tmp_path / "m.csv").write_text("job_id,audio,video\none,a.wav,p.jpg\ntwo,a.wav,p.jpg\n")
    return tmp_path


def test_a_second_run_into_a_folder_a_live_run_holds_exits_2_at_once_and_changes_nothing(folder):
    """The first run is rendering `one` (its partial MP4 is there); a second submit into the
    same folder must not delete that partial, write a table, or reach for a cluster (the
    address below would fail after 30 s with another message)."""
    out = folder / "out"
    with _held(out) as holder:
        partial = storage.staging_file(out / "one.mp4", folder, PARTIAL_SUFFIX)
        partial.write_bytes(b"the first run's video, half written")
        before = _snapshot(out)
        exe = str(Path(sys.executable).with_name("heygem-ray"))
        proc = subprocess.run([exe, "submit", "m.csv", "-o", "out", "--address", "ray://127.0.0.1:9"], cwd=folder,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: out is in use by another run: pid {holder.pid} on {socket.gethostname()} "
                               "(run f1r57 of nightly.csv) since ")  # fmt: skip
        assert "last heartbeat" in line and f"its lock {Path('out') / RUN_LOCK} is taken over" in line
        assert _snapshot(out) == before  # the partial, the holder's lock: as they were
        assert partial.is_file() and not (out / "results.parquet").exists()


def test_runs_into_folders_one_inside_the_other_are_refused_where_their_videos_would_meet(folder):
    """A live run holds `out`; another into `out/sub`, or one into `out/..`'s `parent` whose
    rows write `out/…`, wrote the same MP4s as it (each over the other's, the table of one
    wrong: found by an audit). Both now exit 2 at once, naming the holder, and change
    nothing; a run into `out` beside a live run in `out/sub` whose rows do not write there
    is not refused for it (it reaches for its cluster: the address below fails)."""
    out, exe = folder / "out", str(Path(sys.executable).with_name("heygem-ray"))
    (folder / "into_out.csv").write_text("job_id,audio,video,output\none,a.wav,p.jpg,out/one.mp4\n")
    with _held(out) as holder:
        before = _snapshot(folder)
        inside = subprocess.run([exe, "submit", "m.csv", "-o", "out/sub", "--address", "ray://127.0.0.1:9"],
                                cwd=folder, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert inside.returncode == 2, inside.stderr[-2000:]
        (line,) = inside.stderr.strip().splitlines()
        assert line.startswith(f"error: out/sub is inside {out}, which another run writes into: pid {holder.pid} on "
                               f"{socket.gethostname()} (run f1r57 of nightly.csv) since "), line  # fmt: skip
        assert line.endswith("; its rows may write here too: wait for it to end, stop it, or give another output "
                             "folder"), line  # fmt: skip
        around = subprocess.run([exe, "submit", "into_out.csv", "-o", ".", "--address", "ray://127.0.0.1:9"],
                                cwd=folder, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert around.returncode == 2, around.stderr[-2000:]
        (line,) = around.stderr.strip().splitlines()
        assert line.startswith(f"error: {out} is in use by another run: pid {holder.pid} on "), line
        assert line.endswith("; rows of this manifest write there: wait for that run to end, stop it, or give those "
                             "rows outputs elsewhere"), line  # fmt: skip
        assert _snapshot(folder) == before and not (out / "sub").exists()
    with _held(out / "sub"):
        beside = subprocess.run([exe, "submit", "m.csv", "-o", "out", "--address", "ray://127.0.0.1:9"], cwd=folder,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert beside.returncode == 2 and "could not reach the Ray cluster" in beside.stderr, beside.stderr[-2000:]


def test_in_a_bucket_a_prefix_inside_the_run_s_that_a_live_run_holds_is_found(bucket):
    """Runs into prefixes one inside the other, in a bucket: the prefix around this run's,
    and one inside it that its rows write into (found from one listing of the prefix)."""
    with _held(bucket / "out" / "sub") as holder:
        assert runs_inside(bucket / "out", [bucket / "out/a.mp4", bucket / "out/other/b.mp4"]) is None
        said = runs_inside(bucket / "out", [bucket / "out/a.mp4", bucket / "out/sub/deeper/c.mp4"])
        assert said is not None and said.startswith(f"{bucket / 'out/sub'} is in use by another run: pid {holder.pid}")
        with pytest.raises(InputError) as refused, hold_output(bucket / "out/sub/x", "a run inside"):
            pass
        assert refused.value.kind == "output_locked"
        assert refused.value.message.startswith(f"{bucket / 'out/sub/x'} is inside {bucket / 'out/sub'}, which another "
                                                f"run writes into: pid {holder.pid} ")  # fmt: skip


class _LockRead(RunCallbacks):
    """The words of the run lock's holder, read as the run starts."""

    def __init__(self, lock: Path) -> None:
        self.lock, self.what = lock, ""

    def started(self, total: int) -> None:
        self.what = json.loads(self.lock.read_bytes())["what"]


def test_a_run_takes_over_the_lock_of_a_killed_run_and_renders(folder, ray_local, caplog):
    out = folder / "out"
    with _held(out) as holder:
        pass  # killed: SIGKILL leaves its lock behind, with no heartbeat coming
    assert holder.returncode == -signal.SIGKILL and (out / RUN_LOCK).is_file()
    cfg = RunConfig(output_dir=out, cache_dir=folder / "cache", engines_dir=folder / "engines")
    held = _LockRead(out / RUN_LOCK)
    summary = submit(folder / "m.csv", cfg, held)
    assert [r.status for r in summary.results] == ["ok", "ok"], [r.error for r in summary.results]
    assert f"its process {holder.pid} on {socket.gethostname()} has ended" in caplog.text
    # The run's lock names it, its manifest and its rows (what `status` says of a run killed as it ran).
    assert held.what == f"run {summary.run_id} of {folder / 'm.csv'}, 2 rows"
    assert not (out / RUN_LOCK).exists()  # released at the end
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["run_id"] for r in table} == {summary.run_id}


def test_a_run_into_a_bucket_prefix_another_run_holds_is_refused_and_changes_nothing(bucket, tmp_path, examples):
    storage.write_bytes(bucket / "in/a.wav", (examples / "lesson1.wav").read_bytes())
    storage.write_bytes(bucket / "in/p.jpg", (examples / "presenter.jpg").read_bytes())
    storage.write_bytes(bucket / "in/m.csv", b"job_id,audio,video\none,a.wav,p.jpg\n")
    left = bucket / f"out/{storage.TMP_DIR}/one.mp4.0123abcd.tmp"  # the first run's upload in progress
    storage.write_bytes(left, b"half a video")
    with _held(bucket / "out") as holder:
        lock = bucket / "out" / RUN_LOCK
        before = {k: v for k, v in storage.list_stats(bucket, recursive=True).items() if k != lock}
        holding = json.loads(storage.read_bytes(lock))["token"]
        with pytest.raises(InputError) as refused:
            submit(bucket / "in/m.csv", RunConfig(output_dir=bucket / "out", cache_dir=tmp_path / "c",
                                                  engines_dir=tmp_path / "e", address="ray://127.0.0.1:9"))  # fmt: skip
        assert refused.value.kind == "output_locked"
        assert f"pid {holder.pid} on {socket.gethostname()} (run f1r57 of nightly.csv)" in refused.value.message
        assert {k: v for k, v in storage.list_stats(bucket, recursive=True).items() if k != lock} == before
        assert json.loads(storage.read_bytes(lock))["token"] == holding
