"""The driver's C heap under Ray.

Ray's threads allocate and free in many glibc malloc arenas, and glibc keeps what is
freed there: a bare driver that submits tasks as ``run_jobs`` does and drops their results
grew about 30 KiB per task (``bench/bench_driver_heap.py``, BENCHMARKS.md "Memory"). Two remedies, both no-ops on another C library:
``limit_arenas`` for a process heygem-ray owns (the CLI, the nightly job), called before
Ray starts its threads, and ``release_free`` now and then while a run goes on.
"""

from __future__ import annotations

import ctypes
import functools
import platform

_M_ARENA_MAX = -8  # mallopt's parameter number for the arena limit (glibc's malloc.h)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_arenas(arenas: int = 1) -> None:
    """Let this process's threads share ``arenas`` malloc arenas (as MALLOC_ARENA_MAX does).
    Threads that already have an arena keep it, so call this before ``ray.init``."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)


def release_free() -> None:
    """Give the free pages of every malloc arena back to the system (``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
