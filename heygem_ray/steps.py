"""The steps of a job, one name each, as a result row, the report, the metrics and the
logs call them.

A pack's *stages* are its networks (``reference``, ``motion``, ``render``): the job's
``motion`` and ``render`` steps are where they run, on the model workers, and ``restore``
where the optional restoration stage runs after them (timed only with ``--restore``). ``plan`` is
before any of a job's work (a bad manifest row, a job the cluster lost); the others are
timed, each in its ``<step>_s`` column.
"""

from __future__ import annotations

from typing import Literal, get_args

Step = Literal["plan", "audio", "analyze", "features", "motion", "render", "restore", "compose"]
STEPS: tuple[Step, ...] = get_args(Step)
# The timed steps, in job order: fetch and decode the audio, analyze the reference, audio
# features, motion, render and restore (summed over a job's chunks, on the workers), compose.
TIMED: tuple[Step, ...] = STEPS[1:]
