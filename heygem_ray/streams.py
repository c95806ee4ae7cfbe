"""A reader that went away is no failure of the command.

``heygem-ray submit … | head``, a log pipe whose reader died, a terminal closed under a
run: the next write to stdout or stderr fails (``EPIPE``; ``EIO`` on a terminal that is
gone; ``reader_gone``: EIO from a file on a failing disk is no such thing, and is raised). What a run does does not depend on being watched, so ``forgive_gone_readers``
wraps both streams: on such a failure the stream's file descriptor is pointed at
``/dev/null`` (native code and child processes that write to it are spared too), the
write counts as done, and the command ends with the status of what it did.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterable
from typing import Any, TextIO


def reader_gone(exc: OSError, fd: int) -> bool:
    """Whether ``exc``, from a write to the file descriptor ``fd``, says its reader went
    away: EPIPE (a pipe or socket without a reader), or EIO from a terminal (a character
    device: a pseudo-terminal whose other side closed). EIO from a file is its disk's error."""
    if exc.errno == errno.EPIPE:
        return True
    if exc.errno != errno.EIO:
        return False
    try:
        return stat.S_ISCHR(os.fstat(fd).st_mode)
    except OSError:
        return False


class _Forgiving:
    """``stream`` with writes that go to ``/dev/null`` once its reader has gone."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._gone(exc)
            return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._gone(exc)

    def _gone(self, exc: OSError) -> None:
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):
            raise exc from None
        if not reader_gone(exc, fd):
            raise exc
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        with contextlib.suppress(OSError, ValueError):  # what the failed write left buffered goes there
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def forgive_gone_readers() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` (once) so that a reader that went away is not
    an error: see the module's text."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Forgiving):
            setattr(sys, name, _Forgiving(stream))
