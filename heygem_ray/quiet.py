"""Keeping libraries' notices that tell a user nothing out of the terminal and the logs.

Native code (LiteRT, Ray's C++ client) writes to the process's stderr, file descriptor 2,
beneath Python: ``held_stderr`` holds it aside for a moment and passes on only the lines
asked for. Ray's Python notices go through ``logging``: ``without_record`` drops one.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from heygem_ray.streams import reader_gone

# One hold at a time (two threads' would restore each other's descriptor); one inside
# another in the same thread passes its lines on to the outer one.
_held = threading.RLock()


@contextmanager
def held_stderr(keep: Callable[[bytes], bool]) -> Iterator[None]:
    """Hold the process's stderr (file descriptor 2, every thread's) aside while the block
    runs, then pass on the lines it received for which ``keep`` is true (another thread's
    lines too, late). Where no temporary file can be made, nothing is held."""
    try:
        caught = tempfile.TemporaryFile()
    except OSError:
        yield
        return
    with _held, caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True) if keep(line)]
            if kept:
                try:
                    os.write(2, b"".join(kept))
                except OSError as exc:  # a terminal closed meanwhile: nowhere to say them
                    if not reader_gone(exc, 2):
                        raise


@contextmanager
def without_record(logger: str, words: str) -> Iterator[None]:
    """Drop the records of ``logger`` whose message holds ``words`` while the block runs."""

    def wanted(record: logging.LogRecord) -> bool:
        return words not in record.getMessage()

    log = logging.getLogger(logger)
    log.addFilter(wanted)
    try:
        yield
    finally:
        log.removeFilter(wanted)
