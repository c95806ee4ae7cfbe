"""The one lock mechanism (locks.py), in a local folder and in a bucket on moto's S3 server:
who holds it, staleness by heartbeat, conditional takeover, release of one's own only."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from heygem_ray import locks, storage
from heygem_ray.locks import Held, Holder, Lease
from heygem_ray.storage import Location

# A holder on another machine: only its heartbeat can say it is gone.
ELSEWHERE = Holder("far-host", 4242, "run abc of m.csv", "2026-01-02T03:00:00Z", "2026-01-02T03:00:00Z", 7,
                   "0" * 32, "another-boot/pid:[1]", "99")


@pytest.fixture(params=["folder", "bucket"])
def lock_at(request, tmp_path) -> Location:
    if request.param == "folder":
        return tmp_path / "out" / ".lock"
    return request.getfixturevalue("bucket") / "out" / ".lock"


def _record(where: Location) -> dict:
    """The lock's record as the locks read it: a file under its flock (a heartbeat rewrites
    it in place, empty for a moment), an object whole."""
    found = locks._store(where).read()
    assert found is not None, f"no lock record at {where}"
    return json.loads(found.data)


def _left_stale(where: Location, holder: Holder | None, stale_after_s: float) -> None:
    """A lock whose holder stopped refreshing it more than ``stale_after_s`` ago."""
    storage.write_bytes(where, holder.encode() if holder else b"pid 1 on gone")
    if isinstance(where, Path):
        past = time.time() - 10 * stale_after_s
        os.utime(where, (past, past))
    else:  # an object's age is the store's to say: wait it out (Last-Modified counts whole seconds)
        time.sleep(stale_after_s + 1.2)


def _at_once(n: int, call: Callable[[int], Lease | Held]) -> list[Lease | Held]:
    """``call(i)`` in ``n`` threads released together."""
    start = threading.Barrier(n)
    got: list[Lease | Held] = []

    def run(i: int) -> None:
        start.wait()
        got.append(call(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_a_held_lock_names_its_holder_and_is_gone_once_released(lock_at):
    with locks.acquire(lock_at, "run one of m.csv") as first:
        assert isinstance(first, Lease)
        second = locks.acquire(lock_at, "run two of m.csv")
        assert isinstance(second, Held)
        assert re.fullmatch(rf"pid {os.getpid()} on {re.escape(socket.gethostname())} \(run one of m.csv\) since "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, last heartbeat [01] s ago", second.describe())
        assert _record(lock_at)["token"] == first.holder.token
    assert not storage.is_file(lock_at)
    again = locks.acquire(lock_at, "run three of m.csv")
    assert isinstance(again, Lease)
    again.release()
    assert not storage.is_file(lock_at)


def test_the_heartbeat_keeps_a_lock_past_the_stale_time(lock_at):
    with locks.acquire(lock_at, "a long build", stale_after_s=1) as held:
        assert isinstance(held, Lease)
        time.sleep(3)
        assert isinstance(locks.acquire(lock_at, "a waiter", stale_after_s=1), Held)
        assert held.holder.beats >= 10 and held.lost is None


@pytest.mark.parametrize("holder", [ELSEWHERE, None], ids=["record", "older-version"])
def test_of_many_that_find_a_lock_stale_at_once_exactly_one_takes_it(lock_at, holder):
    for _ in range(2):
        _left_stale(lock_at, holder, stale_after_s=1)
        got = _at_once(8, lambda i: locks.acquire(lock_at, f"taker {i}", stale_after_s=1))
        (winner,) = [g for g in got if isinstance(g, Lease)]
        assert _record(lock_at)["token"] == winner.holder.token
        assert all(g.holder is not None and g.holder.token == winner.holder.token for g in got if isinstance(g, Held))
        winner.release()


def test_a_change_is_refused_once_the_lock_is_not_what_its_maker_read(lock_at):
    """The interleaving threads rarely hit, made on purpose: two takers read the same stale
    record, one takes the lock over, then the other's takeover and delete must both fail."""
    _left_stale(lock_at, ELSEWHERE, stale_after_s=1)
    late = locks._store(lock_at)
    seen = late.read()
    assert seen is not None and Holder.parse(seen.data) == ELSEWHERE
    first = locks.acquire(lock_at, "the first taker", stale_after_s=1)
    assert isinstance(first, Lease)
    assert late.replace(seen.version, Holder.me("the second taker").encode()) is None
    assert late.delete(seen.version) is False
    assert _record(lock_at)["token"] == first.holder.token
    first.release()


def test_a_holder_whose_heartbeat_stopped_leaves_its_successors_lock_alone(lock_at):
    """A holder that stalled (its heartbeat stopped: here, never due) is taken over; when it
    comes back and releases, its successor's lock stays, and it knows it lost its own."""
    stalled = locks.acquire(lock_at, "a stalled build", stale_after_s=1, heartbeat_s=3600)
    assert isinstance(stalled, Lease)
    if isinstance(lock_at, Path):
        os.utime(lock_at, (time.time() - 10, time.time() - 10))
    else:
        time.sleep(2.2)
    successor = locks.acquire(lock_at, "the next build", stale_after_s=1)
    assert isinstance(successor, Lease)
    stalled.release()
    assert stalled.lost is not None and "taken over" in stalled.lost and "(the next build)" in stalled.lost
    assert _record(lock_at)["token"] == successor.holder.token
    successor.release()
    assert not storage.is_file(lock_at)


def test_a_heartbeat_that_finds_its_lock_gone_takes_it_again(tmp_path, caplog):
    """A cleanup deleted the run's output folder, lock and all: the lock is no other run's,
    so the heartbeat takes it again, and the run goes on holding its folder."""
    lock = tmp_path / "out" / ".lock"
    held = locks.acquire(lock, "a run", heartbeat_s=0.1)
    assert isinstance(held, Lease)
    with caplog.at_level(logging.WARNING, logger="heygem_ray.locks"):
        shutil.rmtree(tmp_path / "out")
        deadline = time.monotonic() + 10
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a few more beats: it keeps it
    assert held.lost is None and _record(lock)["token"] == held.holder.token
    assert f"the lock {lock} was removed while this process held it" in caplog.text and "took it again" in caplog.text
    assert isinstance(locks.acquire(lock, "another run"), locks.Held)
    held.release()
    assert not lock.exists()


def test_a_lock_deleted_and_taken_by_another_run_before_the_heartbeat_is_lost(tmp_path):
    lock = tmp_path / ".lock"
    held = locks.acquire(lock, "a run", heartbeat_s=0.3)
    assert isinstance(held, Lease)
    lock.unlink()  # deleted by hand, and another run starts at once
    other = locks.acquire(lock, "the other run")
    assert isinstance(other, Lease)
    deadline = time.monotonic() + 10
    while held.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.lost is not None and "taken over" in held.lost and "(the other run)" in held.lost
    held.release()
    assert _record(lock)["token"] == other.holder.token
    other.release()


HOLD = """
import sys
from heygem_ray import locks
from heygem_ray.storage import location
lease = locks.acquire(location(sys.argv[1]), "a run that will be killed")
print("held", flush=True)
sys.stdin.read()
"""


def test_the_lock_of_a_killed_process_of_this_machine_is_taken_over_at_once(lock_at, caplog):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_at)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert isinstance(locks.acquire(lock_at, "too early"), Held)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Its heartbeat would take two minutes to go stale; its process is known gone now.
    taken = locks.acquire(lock_at, "the next run")
    assert isinstance(taken, Lease)
    assert f"its process {holder.pid} on {socket.gethostname()} has ended" in caplog.text
    taken.release()


# A holder of a lock in a folder, rewriting it every 0.1 s until told to stop.
BEATING = """
import sys
from pathlib import Path
from heygem_ray import locks
lease = locks.acquire(Path(sys.argv[1]), "a run on another node", stale_after_s=1.2, heartbeat_s=0.1)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_file_that_looks_stale_by_the_clocks_but_beats_on_is_not_taken(tmp_path, monkeypatch):
    """This machine's clock an hour ahead of the one that stamps the lock's file (a shared
    file system's server, another node): the file says its last write was an hour ago, while
    its holder still rewrites it every 0.1 s. The file is watched before it is taken over,
    its record changes meanwhile, and it stays held, saying why; once the holder is gone the
    same file is taken over."""
    lock = tmp_path / "out" / ".lock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", BEATING, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        ahead = types.SimpleNamespace(time=lambda: time.time() + 3600, sleep=time.sleep)
        monkeypatch.setattr(locks, "time", ahead)  # this process's clock, as the locks read it
        tries = [locks.acquire(lock, "a second run", stale_after_s=1.2) for _ in range(3)]
        assert all(isinstance(t, Held) and t.clocks_disagree for t in tries), tries
        said = tries[0].describe()
        assert "whose heartbeat goes on" in said and "clocks" in said and "s ago" in said, said
        assert _record(lock)["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    taken = locks.acquire(lock, "the next run", stale_after_s=1.2)
    assert isinstance(taken, Lease)
    taken.release()
