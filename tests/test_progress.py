"""What a job's heartbeat reports (``progress.state()``): its step, whether it waits, and
moves, as the job's own code sets them; and how a job task's process shares its node's cores."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from heygem_ray import progress, storage
from heygem_ray.job.context import StepClock


def test_the_step_a_job_waits_in_is_the_step_its_heartbeat_reports() -> None:
    """Compose waits on its chunks with ``steps.current = "render"`` (no block of its own):
    a job stopped there is stalled in render, not in the step it last entered."""
    steps = StepClock()
    assert progress.state()[2] == "plan"
    with steps("features"):
        assert progress.state()[2] == "features"
    steps.current = "render"
    assert progress.state()[2] == steps.current == "render"
    with steps("compose"):
        assert progress.state()[2] == "compose"


def test_a_wait_is_reported_while_it_lasts_and_its_end_is_a_move() -> None:
    moves, waits, _, _ = progress.state()
    assert not waits
    with progress.waiting():
        assert progress.state()[1]
    after, waits, _, _ = progress.state()
    assert not waits and after != moves


def test_a_job_process_runs_opencv_on_a_share_of_the_node_not_a_thread_per_core() -> None:
    """OpenCV's pool has a thread per core of the machine by default (OPENCV_FOR_THREADS_NUM
    stands in for a 16-core node's); a job task's process sizes it for a job per core."""
    code = (
        "import cv2\n"
        "from heygem_ray.driver.task import OPENCV_THREADS, share_cores\n"
        "before = cv2.getNumThreads()\n"
        "share_cores()\n"
        "print(before, cv2.getNumThreads(), OPENCV_THREADS)\n"
    )
    env = {**os.environ, "OPENCV_FOR_THREADS_NUM": "16"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["16", "2", "2"], proc.stdout


HOLDER = """
import sys, time
from pathlib import Path
from heygem_ray import storage
storage.LOCK_BEAT_S = 0.2
with storage.file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_a_lock_wait_is_progress_while_its_holder_runs_and_says_so_once_the_holder_is_paused(tmp_path, monkeypatch):
    """A ``preview`` paused with Ctrl-Z holding a reference's template lock held every job on
    that reference for ever, each one reported as waiting. A holder touches its lock file
    while it runs; a waiter whose holder's file stops changing stops counting as waiting
    (the driver's stall watch then stops it) and names the lock and its holder."""
    monkeypatch.setattr(storage, "LOCK_QUIET_S", 1.0)
    lock = tmp_path / ".key.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        taken = threading.Event()

        def wait() -> None:
            with storage.file_lock(lock):
                taken.set()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        time.sleep(2.5)  # past LOCK_QUIET_S: the holder runs, and beats
        assert (progress.state()[1], progress.state()[3]) == (True, "") and not taken.is_set()
        holder.send_signal(signal.SIGSTOP)
        _until(lambda: not progress.state()[1])
        blocked = progress.state()[3]
        assert blocked.startswith(f"the lock {lock}, held by pid {holder.pid} on ") and sys.executable in blocked
        assert "which was not seen running for 1 s and more (a process paused, with Ctrl-Z say" in blocked
        holder.send_signal(signal.SIGCONT)  # it goes on: the wait is the holder's again
        _until(lambda: progress.state()[1])
        assert progress.state()[3] == "" and not taken.is_set()
        holder.communicate("\n", timeout=20)
        _until(taken.is_set)
        waiter.join(5)
        assert (progress.state()[1], progress.state()[3]) == (False, "")
    finally:
        holder.kill()


def test_a_lock_file_on_a_disk_that_stopped_answering_holds_up_no_other_lock(tmp_path, monkeypatch):
    """One thread touched every lock a process held, holding its list while it did: a lock
    file on a dead mount (its touch never returns; here the touch of that one file blocks)
    stopped the beats of the process's other locks, and their release hung the job. Now the
    other lock beats on and is released at once."""
    monkeypatch.setattr(storage, "LOCK_BEAT_S", 0.1)
    dead, alive = tmp_path / "dead.lock", tmp_path / "alive.lock"
    never = threading.Event()
    utime = os.utime

    def touch(fd, *args, **kwargs):
        if isinstance(fd, int) and os.readlink(f"/proc/self/fd/{fd}") == str(dead):
            never.wait()  # as a call on a mount that stopped answering
        return utime(fd, *args, **kwargs)

    monkeypatch.setattr(os, "utime", touch)
    with contextlib.ExitStack() as stack:
        stack.enter_context(storage.file_lock(dead))
        stack.callback(never.set)  # (before the dead lock's release, which hung too)
        time.sleep(0.3)  # its beat is stuck now
        released = threading.Event()

        def hold_alive() -> None:
            with storage.file_lock(alive):
                first = alive.stat().st_mtime_ns
                _until(lambda: alive.stat().st_mtime_ns != first, timeout_s=5)  # it beats
            released.set()

        other = threading.Thread(target=hold_alive, daemon=True)
        other.start()
        other.join(10)
        assert released.is_set(), "the other lock did not beat, or its release hung"


UNDER_A_LIMIT = """
import resource, sys
from pathlib import Path
from heygem_ray import storage
from heygem_ray.errors import InputError

resource.setrlimit(resource.RLIMIT_FSIZE, (5, 5))  # a full disk, as far as the holder's line goes
with storage.file_lock(Path(sys.argv[1])):
    pass
try:
    with storage.file_lock(Path(sys.argv[1])):
        raise InputError("the block's own error", kind="storage")
except InputError as exc:
    print(exc.message)
"""


def test_a_lock_whose_holder_line_cannot_be_written_is_held_all_the_same(tmp_path):
    """Writing who holds a lock is for a waiter's message: on a full disk it was buffered,
    then raised as the file closed, after the block, in place of the block's own error."""
    proc = subprocess.run([sys.executable, "-c", UNDER_A_LIMIT, str(tmp_path / "x.lock")], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "the block's own error\n"), proc.stderr[-2000:]
