"""Peak memory of this process and of the processes it starts, for tests that bound it.

A process's peak is the kernel's high-water mark of its resident memory (``VmHWM`` in
``/proc/PID/status``): exact for this process; for children (ffmpeg), sampled every
10 ms while they run. Each sample reads the child's own high-water mark, so a child seen
at any moment before it exits is seen with its peak up to then (a child that allocates
a large picture lives long enough to be seen with it).
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

_MIB = 1024  # kB per MiB (the kernel reports kB)


def _status(pid: str | int = "self") -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it exited meanwhile
        return {}
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def _hwm_kb(pid: str | int = "self") -> int:
    return int(_status(pid).get("VmHWM", "0 kB").split()[0])


def self_peak_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    return _hwm_kb() / _MIB


def _descendants(pid: str | int = "self") -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


class ChildPeaks:
    """While the block runs, the largest peak of any process this one started whose
    program name starts with ``name`` (MiB; 0.0 when none ran). ::

        with ChildPeaks("ffmpeg") as ffmpeg:
            work()
        ffmpeg.mib

    Matched by name: a child caught between its fork and its exec still shows this
    process's memory (shared, with vfork) under this process's name.
    """

    INTERVAL_S = 0.01

    def __init__(self, name: str) -> None:
        self.name = name
        self.mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="child-peaks", daemon=True)

    def _watch(self) -> None:
        while True:
            for pid in _descendants():
                status = _status(pid)
                if status.get("Name", "").startswith(self.name):
                    self.mib = max(self.mib, int(status.get("VmHWM", "0 kB").split()[0]) / _MIB)
            if self._stop.wait(self.INTERVAL_S):
                return

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
