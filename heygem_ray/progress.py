"""How far the job in this process has got, for the driver's watch on jobs that hang.

A job's work moves bytes and frames: through ffmpeg's pipes, from its files and its
template's frame store, to and from buckets. Each such move calls ``moved()``. A wait
that someone else answers for (a chunk on a model worker, which has its own time limit;
another job's template lock) is held in ``waiting()``. The job task's heartbeat
(``driver/task.py``) reports ``state()`` to the run's router now and then, and the
driver stops a job that neither moved nor waited for ``--job-stall-timeout`` seconds
(``driver/loop.py``): a read stuck on a network file system, a process paused on its node.

One job runs in a process at a time; the counters carry over from job to job, which is
fine: the router looks for change, not for values.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from heygem_ray.steps import Step

_moves = itertools.count(1)  # next() is one step under the GIL, from any thread; 0 is "none yet"
_last = 0
_waits = 0
_lock = threading.Lock()
_step: Step = "plan"
_blocked: str | None = None
# Set when the step changes: the heartbeat reports at once (a job that stops early in a
# step is reported in it).
step_changed = threading.Event()


def moved() -> None:
    """Note that the job moved some bytes or a frame."""
    global _last
    _last = next(_moves)


@contextmanager
def waiting() -> Iterator[None]:
    """Hold while the job waits on something with its own time limit (or its own watch).
    Its end counts as a move: a heartbeat that falls after it sees the job progressed."""
    global _waits
    with _lock:
        _waits += 1
    try:
        yield
    finally:
        with _lock:
            _waits -= 1
        moved()


def at(step: Step) -> None:
    """Note the step the job is in (for the row of a job that stops moving)."""
    global _step
    _step = step
    step_changed.set()


def block(on: str | None) -> None:
    """Note what the job waits for where that has stopped answering (a lock whose holder is
    paused: ``storage.file_lock``), for the row of a job stopped as stalled; None: nothing."""
    global _blocked
    _blocked = on


def state() -> tuple[int, bool, Step, str]:
    """(moves so far, whether it is waiting now, its step, what it waits for that stopped
    answering or "")."""
    return _last, _waits > 0, _step, _blocked or ""
