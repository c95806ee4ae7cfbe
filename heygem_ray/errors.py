"""The error hierarchy.

Every failure that reaches a user is one of three kinds:

* ``InputError``: something about the user's files or arguments is wrong; the message
  says which file, what is wrong and how to fix it.  A bad manifest row fails only its row.
* ``EngineError``: a backend or engine could not be built, loaded or run.
* ``InternalError``: a bug in heygem-ray; the message asks for a report.

``RunStopped`` is raised by ``submit`` when a run stops after its workers started (an
error while handling a finished row, or no model worker left): some jobs may have
rendered, and the table has a row for every job. ``WorkersUnavailable`` says why a run
cannot go on for want of model workers (none could start, or none is left).
``Interrupted`` is no failure: SIGINT or SIGTERM stopped the run, and ``submit`` raises it
once the table is written.

Each error carries a short ``kind`` (a stable snake_case word written to the results
table as ``error_kind``) and, once it is known, the ``stage`` it failed in.
"""

from __future__ import annotations

import signal


class HeygemError(Exception):
    """Base of every error heygem-ray raises on purpose."""

    kind: str = "error"

    def __init__(self, message: str, *, kind: str | None = None, stage: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.stage = stage

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputError(HeygemError):
    """A user's file, manifest or argument is wrong. The message tells how to fix it."""

    kind = "input"


class EngineError(HeygemError):
    """A backend could not build, load or run a model."""

    kind = "engine"


class InternalError(HeygemError):
    """A bug: something heygem-ray should have prevented."""

    kind = "internal"


class WorkersUnavailable(EngineError):
    """The run's model workers cannot serve: one died or failed while starting, none was
    ready in time, or none is left and the restart budget is spent. Nothing the rows can
    fix: the run stops, and the message says what the cluster or the workers lack."""


class RunStopped(HeygemError):
    """A run stopped part-way: the results table holds the rows of the jobs that ended,
    and rows saying ``stopped`` for the others. The message says why, and how to finish.
    ``exit_status``: 2 when its model workers could not go on (``WorkersUnavailable``),
    else 1."""

    kind = "stopped"

    def __init__(self, message: str, *, exit_status: int = 1):
        super().__init__(message)
        self.exit_status = exit_status


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (``ray job stop``, ``kill``, a pod being deleted) stopped
    the run. A ``KeyboardInterrupt``, so code that stops on Ctrl-C stops on it too.
    ``exit_status`` is the shell's for the signal: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or signal.Signals(signum).name)
        self.signum = signum

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def exit_status(self) -> int:
        return 128 + self.signum
