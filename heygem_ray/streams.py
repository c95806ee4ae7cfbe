"""A reader that went away is no failure of the command.

``heygem-ray submit … | head``, a log pipe whose reader died, a terminal closed under a
run: the next write to stdout or stderr fails (``EPIPE``; ``EIO`` on a terminal that is
gone). What a run does does not depend on being watched, so ``forgive_gone_readers``
wraps both streams: on such a failure the stream's file descriptor is pointed at
``/dev/null`` (native code and child processes that write to it are spared too), the
write counts as done, and the command ends with the status of what it did.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Any, TextIO

# A pipe without a reader; a terminal that closed (its pseudo-terminal's other side).
_GONE = frozenset({errno.EPIPE, errno.EIO})


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

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._gone(exc)

    def _gone(self, exc: OSError) -> None:
        if exc.errno not in _GONE:
            raise exc
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
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
