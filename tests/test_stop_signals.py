"""driver/stop.py: Ctrl-C and SIGTERM while a run goes on, in this process (the main thread).

The run's own tests (test_liveness.py) stop a real ``submit``; these make the case they
cannot make on purpose: an interrupt that a call swallowed (as a Ray wait did once in a
full run) still stops the run at the loop's next round."""

from __future__ import annotations

import os
import signal
import time

import pytest

from heygem_ray.driver.stop import StopSignals, raise_if_stopped
from heygem_ray.errors import Interrupted


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs at the next bytecode after delivery


def _swallowing(signum: int) -> None:
    """What a call that checks for signals and drops the interrupt does."""
    try:
        _send(signum)
    except KeyboardInterrupt:
        pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_a_stop_signal_a_call_swallowed_is_raised_at_the_next_round(signum):
    before = signal.signal(signum, signal.SIG_DFL)  # (a runner may ignore SIGHUP: nohup pytest)
    stop = StopSignals()
    try:
        raise_if_stopped()  # nothing received: a round goes on
        _swallowing(signum)
        with pytest.raises(Interrupted) as got:
            raise_if_stopped()
        assert got.value.signum == signum and got.value.exit_status == 128 + signum
        assert stop.stopped_by(KeyboardInterrupt()) == signum  # what a Ray call re-raises instead
        assert stop.stopped_by(ValueError()) is None
    finally:
        stop.restore()
        signal.signal(signum, before)
    raise_if_stopped()  # restored: the next run starts clean


def test_the_first_signal_raises_a_second_sigterm_is_ignored_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    try:
        with pytest.raises(Interrupted) as got:
            _send(signal.SIGTERM)
        assert got.value.signum == signal.SIGTERM
        _send(signal.SIGTERM)  # while the table is written: ignored
        with pytest.raises(KeyboardInterrupt) as again:
            _send(signal.SIGINT)
        assert type(again.value) is KeyboardInterrupt  # not a second Interrupted: at once
        assert stop.received == signal.SIGTERM
    finally:
        stop.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_once_the_run_has_ended_a_signal_is_noted_until_its_table_is_written():
    stop = StopSignals()
    try:
        stop.defer()  # Ray shut down, the table being merged
        _send(signal.SIGTERM)  # noted, not raised
        assert stop.received == signal.SIGTERM
        raise_if_stopped()  # nor raised at a round
        with pytest.raises(KeyboardInterrupt):
            _send(signal.SIGINT)  # a second Ctrl-C: at once
    finally:
        stop.restore()



def test_a_second_sighup_is_ignored_and_under_nohup_sighup_stays_ignored():
    """A closed terminal (SIGHUP) stops a run as SIGTERM does; a run started under nohup,
    which ignores SIGHUP, goes on (before, the default SIGHUP ended the process at once,
    with no table and no word, and nohup's choice must stay)."""
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # (a runner may ignore it: nohup pytest)
    stop = StopSignals()
    try:
        with pytest.raises(Interrupted) as got:
            _send(signal.SIGHUP)
        assert got.value.exit_status == 129
        _send(signal.SIGHUP)  # while the table is written: ignored
    finally:
        stop.restore()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        stop = StopSignals()
        try:
            _send(signal.SIGHUP)  # nothing raised, nothing noted
            assert stop.received is None
        finally:
            stop.restore()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
