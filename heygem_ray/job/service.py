"""Where a job's chunks go: the model service a job is given, and the one that runs them
in this process.

``ModelService`` is what the recipe needs of the model workers: submit a chunk, get a
future of its crops. The Ray side (``driver/router.py``) routes each chunk to a worker
actor; ``InProcessService`` runs it at once on a ``ModelWorker`` here (tests, debugging,
``preview``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from heygem_ray.packs import Features
from heygem_ray.restore.inputs import RestoreInputs
from heygem_ray.worker_io import ChunkOutput

if TYPE_CHECKING:  # the job tasks import this module and never load the networks' libraries
    from heygem_ray.worker import ModelWorker

# Chunks rendered ahead of the one being composed, at least: keeps the workers busy
# while the job composes. A job sends as many ahead as there are workers, so one long
# video spreads over every GPU; the crops it holds are bounded by that, not by its length.
LOOKAHEAD = 2


class ChunkFuture(Protocol):
    def result(self) -> ChunkOutput: ...


class ReferenceFuture(Protocol):
    def result(self) -> np.ndarray: ...


class ModelService(Protocol):
    """Where the pack's stages run: in this process, or on Ray worker actors."""

    @property
    def workers(self) -> int:
        """How many chunks can render at once."""
        ...

    def submit(self, features: Features, given: np.ndarray, restore: RestoreInputs | None = None) -> ChunkFuture:
        """A chunk: its features and, per frame, its crops or reference-stage outputs
        (and, to restore its faces, their aligned reference tiles)."""
        ...

    def submit_reference(self, crops: np.ndarray) -> ReferenceFuture:
        """Reference frames' crops through the pack's reference stage."""
        ...

    def reference_key(self) -> str:
        """What the workers' reference stage computes (``WorkerInfo.reference_key``)."""
        ...


class _Done:
    """A future whose value is already there."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


class InProcessService:
    """Runs chunks at once on a worker in this process (tests, debugging)."""

    workers = 1

    def __init__(self, worker: ModelWorker):
        self.worker = worker

    def submit(self, features: Features, given: np.ndarray, restore: RestoreInputs | None = None) -> ChunkFuture:
        return _Done(self.worker.run_chunk(features, given, restore))

    def submit_reference(self, crops: np.ndarray) -> ReferenceFuture:
        return _Done(self.worker.run_reference(crops))

    def reference_key(self) -> str:
        return self.worker.ready().reference_key
