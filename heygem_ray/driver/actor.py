"""The model worker as a Ray actor: a ``ModelWorker`` that reports to the run's router.

Every process that holds an actor handle loads the actor's class: the driver that makes
the actors, the router and each job task that send them chunks. So this module imports
no network library; the ``ModelWorker`` (PyTorch, the runtimes) is imported and made in
the actor's own process, in ``__init__``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import ray

from heygem_ray.config import RenderConfig, WorkerDevice
from heygem_ray.driver.calls import (
    ask,
    node_name,
)
from heygem_ray.packs import Features
from heygem_ray.restore.inputs import RestoreInputs
from heygem_ray.worker_io import ChunkOutput, GpuUse, WorkerInfo

if TYPE_CHECKING:
    from heygem_ray.worker import ModelWorker


class ActorWorker:
    """A ModelWorker that joins the run's router once its models are open, and tells it
    which chunk it renders and when (so a chunk that kills it, or takes too long, can be
    told apart). Known to the router by its actor name, unique in the run."""

    def __init__(self, cfg: RenderConfig, engines_dir: Path, router: Any, device: WorkerDevice):
        # PyTorch's OpenMP threads wait asleep, not spinning: the actor shares its node's cores
        # with the job tasks (BENCHMARKS.md, "Threads that wait"). OpenMP reads it as torch
        # loads, so it is set before the import; a value the user set is kept.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from heygem_ray.worker import ModelWorker  # here, in the actor's process alone (see above)

        ctx = ray.get_runtime_context()
        self._router = router
        self._name = cast(str, ctx.get_actor_name())
        ask(router.starting, self._name)
        # Ray gave it a GPU: --device gpu must use it; auto may render on the CPU, saying why.
        gpu: GpuUse = ("required" if device == "gpu" else "wanted") if ray.get_gpu_ids() else "none"
        self._worker: ModelWorker = ModelWorker(cfg, engines_dir, node=node_name(), gpu=gpu)
        if self._worker.error is None:  # one that cannot start is the driver's to report
            ask(router.joined, self._name, ctx.current_actor, self._worker.info.reference_key)

    def ready(self) -> WorkerInfo:
        """The worker's description once its models are open, or its start-up error."""
        return self._worker.ready()

    @ray.method(enable_task_events=False)
    def alive(self) -> None:
        """The pool's health check: answered between chunks; an error once the actor is dead."""

    def render(self, chunk: str, features: Features, given: np.ndarray,
               restore: RestoreInputs | None = None) -> ChunkOutput:
        """``run_chunk`` for the chunk named ``chunk``; recorded first (and waited for: the
        record must outlive a worker killed by this very chunk), and its end after."""
        ask(self._router.started, self._name, chunk, len(given))
        try:
            return self._worker.run_chunk(features, given, restore)
        finally:
            ask(self._router.finished, self._name, chunk)

    def reference(self, chunk: str, crops: np.ndarray) -> np.ndarray:
        """``run_reference`` for the chunk named ``chunk``, recorded as ``render`` is."""
        ask(self._router.started, self._name, chunk, len(crops))
        try:
            return self._worker.run_reference(crops)
        finally:
            ask(self._router.finished, self._name, chunk)
