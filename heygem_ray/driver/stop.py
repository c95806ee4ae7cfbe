"""Ctrl-C, SIGTERM and SIGHUP stop a run, also where a Ray call swallows the interrupt.

Python turns SIGINT into ``KeyboardInterrupt`` in the main thread, and a Ray call that
is waiting checks for signals from C++ and raises the interrupt itself. Not always:
in a full test run, a Ctrl-C sent while the run waited for GPU workers left the driver in
``ray.wait`` inside ``Pool.watch`` and waiting on (its stacks, 120 s later, showed the
loop still going round). So a stop signal is also remembered here, and the driver's
loops call ``raise_if_stopped`` every round: an interrupt a Ray call swallowed comes back
within one round (``WATCH_S``, ``POLL_S``).

While a run goes on (``StopSignals`` installed in the main thread), the first SIGINT,
SIGTERM or SIGHUP (the terminal it ran in closed: an ssh session dropped) raises
``Interrupted``; a second SIGTERM or SIGHUP is ignored (so that the table gets written), a
second SIGINT raises ``KeyboardInterrupt`` at once (Ctrl-C twice stops at once). What the
run then prints to a terminal that is gone goes nowhere (``streams``). A SIGHUP ignored
when the run began (``nohup``) stays ignored. Once the run has ended (``defer``: Ray shut down, the table merged) a first signal
is only noted: the table is finished, then the run returns as it would have. Elsewhere than the main thread nothing is installed: only the main thread receives
signals.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from heygem_ray.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# The StopSignals installed now, if any (signals are the process's: one at a time).
_installed: StopSignals | None = None


class StopSignals:
    """The stop signals' handler while a run goes on: installed when made (in the main
    thread), put back to what it was by ``restore``."""

    def __init__(self) -> None:
        global _installed
        self.received: int | None = None  # the first stop signal's number
        self.deferred = False  # the run has ended: a first signal is noted (``defer``)
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:  # under nohup
                    continue
                self._previous[signum] = signal.signal(signum, self._stop)
            _installed = self

    def _stop(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
            if self.deferred:
                return
            raise Interrupted(signum)
        if signum == signal.SIGINT:  # the second Ctrl-C: at once, whatever is being done
            raise KeyboardInterrupt

    def stopped_by(self, exc: BaseException) -> int | None:
        """The signal that stopped the run, if one did: the first one received, or SIGINT
        for a ``KeyboardInterrupt`` raised without one (Ctrl-C where nothing was installed)."""
        if not isinstance(exc, KeyboardInterrupt):
            return None
        return int(self.received) if self.received is not None else int(signal.SIGINT)

    def defer(self) -> None:
        """From now on (the run has ended, its table is being written) a first stop signal
        is noted in ``received``, not raised: stopping there would leave no table for the
        work done. A second Ctrl-C still stops at once."""
        self.deferred = True

    def restore(self) -> None:
        global _installed
        for signum, previous in self._previous.items():
            # None: a handler set outside Python (put back as the default)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        if _installed is self:
            _installed = None


def raise_if_stopped() -> None:
    """Raise ``Interrupted`` for a stop signal received while a run goes on: where the
    interrupt its handler raised was swallowed by a Ray call, the run still stops."""
    if _installed is not None and _installed.received is not None and not _installed.deferred:
        raise Interrupted(_installed.received)
