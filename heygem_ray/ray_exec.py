"""Running a manifest on Ray: worker actors own the models, job tasks run the recipe.

* One ``ModelWorker`` actor per GPU (``num_gpus=1``); on a cluster without GPUs, CPU
  actors instead, leaving cores for the job tasks.
* One Ray task per job runs ``pipeline.render_job``; it sends chunks to the actors and
  composes their crops. Only crops, features and small metadata cross the object store.
* The driver keeps at most ``max_jobs_in_flight`` jobs submitted, so a manifest of
  100 000 rows needs no more driver memory than one of 100.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray
from ray.exceptions import RayError

from heygem_ray.config import RenderConfig, RunConfig
from heygem_ray.errors import EngineError, HeygemError
from heygem_ray.manifest import Job
from heygem_ray.pipeline import ChunkFuture, render_job
from heygem_ray.results import JobResult
from heygem_ray.worker import ChunkOutput, ModelWorker, WorkerInfo

log = logging.getLogger(__name__)

# Seconds between progress polls while waiting for jobs.
POLL_S = 0.5
# A worker actor that dies is restarted, and the chunk calls it held are sent again
# (run_chunk is a pure function of its arguments, so repeating it is safe).
_RESTART = {"max_restarts": -1, "max_task_retries": -1}
# Model workers go to different nodes where they can, rather than filling one first.
_PLACEMENT = {"scheduling_strategy": "SPREAD"}


def node_name() -> str:
    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"


class _ActorWorker(ModelWorker):
    """A ModelWorker that knows which Ray node it lives on."""

    def __init__(self, cfg: RenderConfig, engines_dir: Path):
        super().__init__(cfg, engines_dir, node=node_name())


@ray.remote(num_cpus=0)
class _Progress:
    """Frames composed so far, reported by job tasks, read by the driver."""

    def __init__(self) -> None:
        self.frames = 0

    def add(self, frames: int) -> None:
        self.frames += frames

    def total(self) -> int:
        return self.frames


class _RayFuture:
    def __init__(self, ref: ray.ObjectRef):
        self.ref = ref

    def result(self) -> ChunkOutput:
        try:
            return ray.get(self.ref)
        except RayError as exc:
            if isinstance(exc, HeygemError):  # the worker's own error, raised through Ray
                raise
            raise EngineError(
                f"the model worker rendering this chunk was lost ({type(exc).__name__}); "
                "check the cluster's health, then run the same manifest again",
                kind="worker_lost",
            ) from exc


class _RayService:
    """Sends each chunk to the next worker actor in turn.

    The driver gives each job its own first worker (job k starts at worker k mod n):
    starting every job at the first one would send all short, one-chunk jobs there.
    """

    def __init__(self, actors: list[ray.actor.ActorHandle], first: int):
        start = first % len(actors)
        self._next = itertools.cycle(actors[start:] + actors[:start])

    def submit(self, features: np.ndarray, crops: np.ndarray) -> ChunkFuture:
        return _RayFuture(next(self._next).run_chunk.remote(features, crops))


@ray.remote(num_cpus=1)
def _job_task(job: Job, cfg: RenderConfig, cache_dir: Path, actors: list, first: int, progress) -> JobResult:
    return render_job(job, cfg, cache_dir, _RayService(actors, first), on_frames=progress.add.remote)


@dataclass(frozen=True)
class Pool:
    actors: list
    kind: str  # "gpu" or "cpu"
    infos: list[WorkerInfo]


def start_workers(cfg: RunConfig) -> Pool:
    """One actor per GPU, or CPU actors sized to leave cores for job tasks.

    Waits until every actor has its models open: a worker that cannot start raises its
    error here (e.g. EngineError for a backend that cannot run, InputError for a bad
    checkpoint), before any job is submitted.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    remote: Any = ray.remote(_ActorWorker)
    args = (cfg.render, cfg.engines_dir.resolve())
    prefix = f"model-worker-{uuid.uuid4().hex[:6]}"  # unique: several runs may share a cluster
    if gpus > 0:
        actors = [remote.options(num_gpus=1, num_cpus=1, name=f"{prefix}-gpu{i}", **_RESTART, **_PLACEMENT).remote(*args) for i in range(gpus)]
        kind = "gpu"
    else:
        cpus = int(resources.get("CPU", 1))
        count = cfg.cpu_workers or max(1, cpus // 4)
        # Never let model actors take every core: job tasks (analyze, compose) need one.
        count = max(1, min(count, cpus - 1))
        # On a single core the one actor must not reserve it, or no job task could start.
        reserve = 1 if cpus >= 2 else 0
        actors = [
            remote.options(num_cpus=reserve, name=f"{prefix}-cpu{i}", **_RESTART, **_PLACEMENT).remote(*args) for i in range(count)
        ]
        kind = "cpu"
    try:
        infos = ray.get([a.ready.remote() for a in actors])
    except BaseException:
        for actor in actors:
            ray.kill(actor)
        raise
    return Pool(actors, kind, infos)


def run_jobs(
    jobs: list[Job],
    cfg: RunConfig,
    on_result: Callable[[JobResult], None] = lambda r: None,
    on_frames: Callable[[int], None] = lambda n: None,
    on_workers: Callable[[list[WorkerInfo]], None] = lambda infos: None,
) -> list[JobResult]:
    """Render every job on the connected Ray cluster; results in completion order."""
    pool = start_workers(cfg)
    on_workers(pool.infos)
    progress = cast(Any, _Progress).remote()
    in_flight_cap = cfg.max_jobs_in_flight or 2 * len(pool.actors)
    config_hash = cfg.config_hash()
    pending: dict[ray.ObjectRef, tuple[Job, int]] = {}  # task → (job, attempt)
    retry: list[tuple[Job, int]] = []
    results: list[JobResult] = []
    queue = iter(jobs)
    exhausted = False
    submitted = 0  # tasks started so far: spreads each job's first chunk over the workers
    while True:
        while len(pending) < in_flight_cap and (retry or not exhausted):
            if retry:
                job, attempt = retry.pop()
            elif (nxt := next(queue, None)) is not None:
                job, attempt = nxt, 1
            else:
                exhausted = True
                break
            ref = _job_task.options(name=f"job:{job.job_id}").remote(
                job, cfg.render, cfg.cache_dir, pool.actors, submitted, progress
            )
            submitted += 1
            pending[ref] = (job, attempt)
        if not pending:
            break
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        for ref in done:
            job, attempt = pending.pop(ref)
            try:
                result = ray.get(ref)
            except RayError as exc:
                if attempt < cfg.max_attempts:
                    log.warning("%s: attempt %d lost (%s); trying again", job.label, attempt, type(exc).__name__)
                    retry.append((job, attempt + 1))
                    continue
                result = _lost(job, cfg, exc)
            result.attempts, result.config_hash = attempt, config_hash
            results.append(result)
            on_result(result)
        on_frames(ray.get(progress.total.remote()))
    for actor in pool.actors:
        ray.kill(actor)
    return results


def _lost(job: Job, cfg: RunConfig, exc: RayError) -> JobResult:
    """A job whose task or worker died: a failed row that says so."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    result = JobResult.for_job(job, cfg.render.pack)
    result.error_kind, result.error_stage = "worker_lost", "render"
    result.error = (
        f"{job.label}: the Ray task or worker running it died {cfg.max_attempts} times "
        f"({type(exc).__name__}: {first}); check the cluster's health, then run the same manifest again"
    )
    return result
