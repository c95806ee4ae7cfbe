"""What one job carries from step to step: its context (frozen once the steps before
compose have run) and the clock that times each step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heygem_ray import progress
from heygem_ray.config import RenderConfig
from heygem_ray.job.service import ModelService
from heygem_ray.packs import ChunkFeatures, PackSpec
from heygem_ray.restore.inputs import RestoreInputs
from heygem_ray.steps import Step
from heygem_ray.storage import Location
from heygem_ray.template.files import Template
from heygem_ray.timeline import Timeline


class StepClock:
    """Wall seconds per step, and which step is running (for error rows)."""

    def __init__(self) -> None:
        self.seconds: dict[Step, float] = {}
        self.current = "plan"

    @property
    def current(self) -> Step:
        return self._current

    @current.setter
    def current(self, name: Step) -> None:
        """The step the job is in, set directly where it waits outside any block of its own
        (compose, for its chunks: ``steps.current = "render"``); its heartbeat reports it
        (``progress.at``)."""
        self._current = name
        progress.at(name)

    @contextmanager
    def __call__(self, name: Step) -> Iterator[None]:
        self.current = name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: Step, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


@dataclass(frozen=True)
class JobContext:
    """One job, as the recipe's first steps leave it for motion, render and compose."""

    output: Location  # where the MP4 goes
    audio: Path  # the audio file (local), whose sound the MP4 carries
    cfg: RenderConfig
    pack: PackSpec
    models: ModelService
    template: Template  # the analysed reference
    timeline: Timeline  # output frame → reference frame
    features: ChunkFeatures  # the pack's audio features, a chunk of output frames at a time
    given: Callable[[np.ndarray], np.ndarray]  # reference frame indices → what the workers get for them
    # With --restore: reference frame indices → their aligned tiles, boxes and alignments.
    restore: Callable[[np.ndarray], RestoreInputs] | None
    clock: StepClock
    scratch: Path  # the job's scratch folder
    on_frames: Callable[[int], None]  # told how many frames each composed chunk wrote
