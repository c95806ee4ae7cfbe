"""Running a manifest on Ray: worker actors own the models, job tasks run the recipe.

* One ``ModelWorker`` actor per GPU (``num_gpus=1``); on a cluster without GPUs, CPU
  actors instead, leaving cores for the job tasks.
* One Ray task per job runs ``pipeline.render_job``; it sends chunks to the actors and
  composes their crops. Only crops, features and small metadata cross the object store.
* The driver keeps at most ``max_jobs_in_flight`` jobs submitted and hands each finished
  row on (it is kept on disk, not here), so a manifest of 100 000 rows needs little more
  driver memory than one of 100 (BENCHMARKS.md, "Memory").
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    GetTimeoutError,
    RayError,
    RayTaskError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from heygem_ray import heap, metrics
from heygem_ray.config import RenderConfig, RunConfig
from heygem_ray.errors import EngineError, HeygemError
from heygem_ray.joblog import fields, job_logging
from heygem_ray.manifest import Job
from heygem_ray.pipeline import ChunkFuture, render_job
from heygem_ray.results import JobResult
from heygem_ray.worker import ChunkOutput, ModelWorker, WorkerInfo

log = logging.getLogger(__name__)

# Seconds between progress polls while waiting for jobs.
POLL_S = 0.5
# Seconds between checks that the model workers' nodes are still in the cluster.
WATCH_S = 2.0
# A worker actor that dies is restarted (on its node), a bounded number of times: one
# that keeps dying (a broken GPU) is then gone, and its jobs use the other workers.
# Ray does not send a dead worker's calls again by itself: the job does (``_RayFuture``),
# where it can tell the chunk that was rendering from those queued behind it.
# (A chunk is a pure function of its arguments, so rendering it again is safe.)
_RESTART = {"max_restarts": 10, "max_task_retries": 0}
# A chunk whose worker died this many times while rendering it fails its job: it is what
# kills them (a segfault in the engine, the OOM killer), and would take the next one too.
CHUNK_KILLS = 2
# What job tasks and chunk calls are called in the Ray dashboard. The same for every job:
# Ray's dashboard agent keeps state for every task name it has seen (the `ray_tasks`
# metric is labelled by name) for the cluster's life, so a name per job grew it by about
# 50 KiB a row, run after run (BENCHMARKS.md, "Memory"). Log records name the job.
JOB_TASK = "job"
CHUNK_CALL = "render"


def node_name() -> str:
    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"


class _ActorWorker(ModelWorker):
    """A ModelWorker that knows which Ray node it lives on, and tells the run's progress
    actor which chunk it renders (so a chunk that kills it can be told apart)."""

    def __init__(self, cfg: RenderConfig, engines_dir: Path, progress: Any):
        super().__init__(cfg, engines_dir, node=node_name())
        self._progress = progress
        self._id = ray.get_runtime_context().get_actor_id()  # the same after a restart
        ray.get(progress.restarted.remote(self._id))

    def render(self, chunk: str, features: np.ndarray, crops: np.ndarray) -> ChunkOutput:
        """``run_chunk`` for the chunk named ``chunk``; recorded first (and waited for: the
        record must outlive a worker killed by this very chunk)."""
        ray.get(self._progress.started.remote(self._id, chunk))
        return self.run_chunk(features, crops)


@ray.remote(num_cpus=0)
class _Progress:
    """Frames composed so far, reported by job tasks, read by the driver; and the chunk
    each model worker is rendering, reported by the worker as it starts one.

    A worker renders its calls one at a time, so when it dies, one of the calls it held
    was rendering and the rest were queued: ``was_rendering`` tells a job which, for a
    chunk whose call failed that way.

    Its calls (a few per chunk, and the driver's polls) keep no task events: they would
    fill the dashboard's task list and the GCS's event store with bookkeeping.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.rendering: dict[str, str] = {}  # worker (actor id) → the chunk it started last
        self.died_rendering: set[str] = set()  # chunks whose worker restarted before it ended

    @ray.method(enable_task_events=False)
    def add(self, frames: int) -> None:
        self.frames += frames

    @ray.method(enable_task_events=False)
    def total(self) -> int:
        return self.frames

    @ray.method(enable_task_events=False)
    def started(self, worker: str, chunk: str) -> None:
        self.rendering[worker] = chunk

    @ray.method(enable_task_events=False)
    def restarted(self, worker: str) -> None:
        if (chunk := self.rendering.pop(worker, None)) is not None:
            self.died_rendering.add(chunk)

    @ray.method(enable_task_events=False)
    def was_rendering(self, chunk: str) -> bool:
        """Whether ``chunk`` was rendering when its worker died (asked once per loss)."""
        if chunk in self.died_rendering:
            self.died_rendering.discard(chunk)
            return True
        for worker, current in self.rendering.items():
            if current == chunk:  # its worker has not restarted yet
                del self.rendering[worker]
                return True
        return False


class _RayFuture:
    """One chunk on a worker actor, sent again when its worker dies or is gone.

    * An error raised on the worker (the model, its engine, a bug) is the job's error, as
      it was raised: not sent again, and not blamed on the cluster.
    * A worker that died: the chunk goes to the next worker the job can use (one gone for
      good, as when its node left, is dropped). If the chunk was the one rendering,
      it may be what killed the worker: after ``CHUNK_KILLS`` such deaths the job fails.
    """

    def __init__(self, service: _RayService, label: str, features: np.ndarray, crops: np.ndarray):
        self._service, self._label, self._args = service, label, (features, crops)
        self._kills = 0
        self._send()

    def _send(self) -> None:
        self._actor = self._service.next_actor()
        self._chunk = uuid.uuid4().hex  # this send of the chunk, as its worker reports it
        self._ref: ray.ObjectRef = self._actor.render.options(name=CHUNK_CALL).remote(self._chunk, *self._args)

    def result(self) -> ChunkOutput:
        while True:
            try:
                return cast(ChunkOutput, ray.get(self._ref))
            except RayTaskError as exc:
                raise _worker_error(exc, self._label) from None
            except (ActorDiedError, ActorUnavailableError, ActorUnschedulableError) as exc:
                gone = not isinstance(exc, ActorUnavailableError)  # for good, or its node is
                if gone:
                    self._service.drop(self._actor)
                rendering = ray.get(self._service.progress.was_rendering.remote(self._chunk))
                self._kills += rendering
                if self._kills >= CHUNK_KILLS:
                    raise EngineError(
                        f"{self._label}: its model worker died {self._kills} times while rendering it "
                        f"(last: {type(exc).__name__}): a crash in the model or its engine, or the OOM "
                        "killer; the worker logs ('ray logs worker-*.err' on its node, or the dashboard) "
                        "say which. Try a smaller --chunk-frames, or another --backend",
                        kind="worker_crash",
                    ) from exc
                log.warning("%s: its model worker %s %s it (%s); sending it again", self._label,
                            "is gone" if gone else "died", "while rendering" if rendering else "before rendering",
                            type(exc).__name__)
                self._send()
            except RayError as exc:
                raise EngineError(
                    f"the model worker rendering {self._label} was lost ({type(exc).__name__}); "
                    "check the cluster's health, then run the same manifest again",
                    kind="worker_lost",
                ) from exc


def _worker_error(exc: RayTaskError, label: str) -> HeygemError:
    """The error a model worker raised, for its job: a heygem error as it was (its kind
    and message), anything else an ``engine`` error with its type and message."""
    cause = exc.cause
    if isinstance(cause, HeygemError):
        return cause
    text = str(cause).strip()
    first = text.splitlines()[0] if text else ""
    return EngineError(
        f"{label}: the model worker raised {type(cause).__name__}: {first} (its traceback is in the "
        "worker's log: the dashboard, or 'ray logs worker-*.err' on its node); an out-of-memory "
        "error may pass with a smaller --chunk-frames, anything else is a fault in the model or its engine",
        kind="engine",
    )


class _RayService:
    """Sends each chunk to the next worker actor in turn, leaving out workers found dead.

    The driver gives each job its own first worker (job k starts at worker k mod n):
    starting every job at the first one would send all short, one-chunk jobs there.
    Each call (motion and render of one chunk) is ``render`` in the Ray dashboard.
    """

    def __init__(self, actors: list[ray.actor.ActorHandle], first: int, chunk_frames: int, progress: Any):
        start = first % len(actors)
        self._actors = actors[start:] + actors[:start]
        self._turn = 0
        self._chunk_frames = chunk_frames
        self._sent = 0
        self.progress = progress

    @property
    def workers(self) -> int:
        return len(self._actors)

    def next_actor(self) -> ray.actor.ActorHandle:
        if not self._actors:
            raise EngineError(
                "every model worker this job could use was lost; check the cluster's health, "
                "then run the same manifest again",
                kind="worker_lost",
            )
        actor = self._actors[self._turn % len(self._actors)]
        self._turn += 1
        return actor

    def drop(self, actor: ray.actor.ActorHandle) -> None:
        self._actors = [a for a in self._actors if a is not actor]

    def submit(self, features: np.ndarray, crops: np.ndarray) -> ChunkFuture:
        # The job sends its chunks in order, each chunk_frames long but the last (pipeline.py).
        first = self._sent * self._chunk_frames
        label = f"chunk {self._sent} (frames {first}-{first + len(crops) - 1})"
        self._sent += 1
        return _RayFuture(self, label, features, crops)


@ray.remote(num_cpus=1)
def _job_task(job: Job, cfg: RenderConfig, cache_dir: Path, actors: list, first: int, progress) -> JobResult:
    def frames_done(frames: int) -> None:
        progress.add.remote(frames)
        metrics.record_frames(frames, cfg.pack)

    with job_logging(job.job_id):
        result = render_job(job, cfg, cache_dir, _RayService(actors, first, cfg.chunk_frames, progress), on_frames=frames_done)
        _log_result(result)
    heap.release_free()  # Ray reuses this process for later jobs: hand back what this one freed
    return result


def _log_result(r: JobResult) -> None:
    """One line per job (the record names the job): a warning if it failed."""
    if r.status == "ok":
        log.info("%s", fields(status=r.status, frames=r.frames, seconds=r.seconds,
                              realtime_factor=r.realtime_factor, backend=r.backend, node=r.node))
    else:
        log.warning("%s", fields(status=r.status, stage=r.error_stage, kind=r.error_kind, error=r.error))


class Pool:
    """The run's model worker actors: one per GPU, or CPU actors sized to leave cores for
    job tasks. Actors reserve no CPU, so a restarted actor never waits behind the job
    tasks that wait for it (which would hang the run).

    Each actor is placed on a chosen node: the live node with the fewest of this run's
    actors (and, for GPU actors, a GPU left), so the workers spread over the nodes.
    ``watch`` follows the cluster: the actors of a node that left are ended for good (a
    GPU actor could not start again anywhere, and its calls would wait forever), which
    sends their chunks to the other actors; new actors are started where the cluster
    has room again.
    """

    def __init__(self, cfg: RunConfig, run_id: str, progress: Any):
        self._args = (cfg.render, cfg.engines_dir.resolve(), progress)
        self._cpu_workers = cfg.cpu_workers
        self._prefix = f"model-worker-{run_id}"  # unique: several runs may share a cluster
        self._started = 0
        # Made once: every ray.remote() of a class is a new actor class to Ray, and costs memory.
        self._remote: Any = ray.remote(_ActorWorker)
        self.kind = "gpu" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
        self.actors: list[ray.actor.ActorHandle] = []
        self._nodes: list[str] = []  # the node id each actor was placed on
        self._start(self._wanted())
        # Wait until every actor has its models open: a worker that cannot start raises
        # its error here (an EngineError for a backend that cannot run, an InputError for
        # a bad checkpoint), before any job is submitted.
        try:
            self.infos: list[WorkerInfo] = self._ready(cfg.workers_ready_timeout_s)
        except BaseException:
            self.close()
            raise

    def _ready(self, timeout_s: float) -> list[WorkerInfo]:
        calls: list[ray.ObjectRef] = [a.ready.remote() for a in self.actors]
        try:
            return cast(list[WorkerInfo], ray.get(calls, timeout=timeout_s))
        except GetTimeoutError:
            done, _ = ray.wait(calls, num_returns=len(calls), timeout=0)
            raise EngineError(
                f"{len(calls) - len(done)} of {len(calls)} model workers were not ready after {timeout_s:g} s: "
                "still loading their models or building engines, or waiting for their node or GPU "
                "('ray status' shows what is pending). Check the cluster, or allow longer "
                "(RunConfig.workers_ready_timeout_s) when engines are being built",
                kind="workers_not_ready",
            ) from None

    def _wanted(self) -> int:
        resources = ray.cluster_resources()
        if self.kind == "gpu":
            return int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        # Never more model actors than cores less one: job tasks (analyze, compose) need one.
        return max(1, min(self._cpu_workers or max(1, cpus // 4), cpus - 1))

    def _start(self, count: int) -> None:
        devices = {"num_gpus": 1} if self.kind == "gpu" else {}
        for _ in range(count):
            node = self._place()
            if node is None:
                return
            name = f"{self._prefix}-{self.kind}{self._started}"
            self._started += 1
            # Not soft: Ray's soft affinity may fall back to another node while the chosen
            # one is still starting workers. An actor whose node leaves is ended and
            # replaced by ``watch``, so a hard affinity never strands one.
            where = NodeAffinitySchedulingStrategy(node, soft=False)
            self.actors.append(
                self._remote.options(num_cpus=0, name=name, scheduling_strategy=where, **devices, **_RESTART).remote(*self._args)
            )
            self._nodes.append(node)

    def _place(self) -> str | None:
        """The live node for the next actor: fewest of ours, then most of the resource."""
        resource = "GPU" if self.kind == "gpu" else "CPU"
        best: tuple[int, float, str] | None = None
        for n in ray.nodes():
            have = float(n.get("Resources", {}).get(resource, 0))
            ours = self._nodes.count(n["NodeID"])
            if not n["Alive"] or have <= 0 or (self.kind == "gpu" and ours >= have):
                continue
            key = (ours, -have, n["NodeID"])
            best = key if best is None or key < best else best
        return None if best is None else best[2]

    def watch(self) -> None:
        """End the actors of nodes that left the cluster; start new ones where there is room."""
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        gone = [i for i, node in enumerate(self._nodes) if node not in alive]
        for i in gone:
            log.warning("node %s left the cluster: its model worker's chunks go to the others", self._nodes[i][:8])
            ray.kill(self.actors[i], no_restart=True)
        keep = [i for i in range(len(self.actors)) if i not in gone]
        self.actors = [self.actors[i] for i in keep]
        self._nodes = [self._nodes[i] for i in keep]
        self._start(max(0, self._wanted() - len(self.actors)))

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def run_jobs(
    jobs: list[Job],
    cfg: RunConfig,
    on_result: Callable[[JobResult], None] = lambda r: None,
    on_frames: Callable[[int], None] = lambda n: None,
    on_workers: Callable[[list[WorkerInfo]], None] = lambda infos: None,
) -> None:
    """Render every job on the connected Ray cluster, passing each row to ``on_result`` as
    its job ends. Whatever ends the run (also an error raised by a callback), its actors
    are ended and the job tasks still running are cancelled before it returns or raises."""
    run_id = uuid.uuid4().hex[:6]  # names this run's actors in the dashboard
    # On the driver's node: it must not leave the run with a node that leaves the cluster.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = cast(Any, _Progress).options(name=f"progress-{run_id}", scheduling_strategy=here).remote()
    try:
        pool = Pool(cfg, run_id, progress)
        try:
            on_workers(pool.infos)
            _render_all(jobs, cfg, pool, progress, on_result, on_frames)
        finally:
            pool.close()
    finally:
        ray.kill(progress)


def _render_all(
    jobs: list[Job],
    cfg: RunConfig,
    pool: Pool,
    progress: Any,
    on_result: Callable[[JobResult], None],
    on_frames: Callable[[int], None],
) -> None:
    """Keep up to the in-flight cap of job tasks running until every job has its row."""
    in_flight_cap = cfg.max_jobs_in_flight or 2 * len(pool.actors)
    config_hash = cfg.config_hash()
    pending: dict[ray.ObjectRef, tuple[Job, int]] = {}  # task → (job, attempt)
    retry: list[tuple[Job, int]] = []
    queue = iter(jobs)
    exhausted = False
    submitted = 0  # tasks started so far: spreads each job's first chunk over the workers
    next_watch = time.monotonic() + WATCH_S
    try:
        while True:
            while len(pending) < in_flight_cap and (retry or not exhausted):
                if retry:
                    job, attempt = retry.pop()
                elif (nxt := next(queue, None)) is not None:
                    job, attempt = nxt, 1
                else:
                    exhausted = True
                    break
                # max_retries=0: a lost task is retried here, where its attempts are counted.
                ref = _job_task.options(name=JOB_TASK, max_retries=0).remote(
                    job, cfg.render, cfg.cache_dir, pool.actors, submitted, progress
                )
                submitted += 1
                pending[ref] = (job, attempt)
            if not pending:
                return
            if time.monotonic() >= next_watch:
                pool.watch()
                heap.release_free()  # see heap.py: the driver's memory stays flat over many jobs
                next_watch = time.monotonic() + WATCH_S
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in done:
                job, attempt = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as exc:  # raised by the task itself, outside render_job: a bug
                    result = _task_error(job, cfg, exc)
                except RayError as exc:  # the task was lost (its worker or node died)
                    if attempt < cfg.max_attempts:
                        log.warning("%s: attempt %d lost (%s); trying again", job.label, attempt, type(exc).__name__)
                        retry.append((job, attempt + 1))
                        continue
                    result = _lost(job, cfg, exc)
                if result.error_kind == "worker_lost" and attempt < cfg.max_attempts:
                    # Every worker the task was given is gone: try again with the workers there are now.
                    log.warning("%s: attempt %d lost its model workers; trying again", job.label, attempt)
                    retry.append((job, attempt + 1))
                    continue
                result.attempts, result.config_hash = attempt, config_hash
                result.ray_task_id = ref.task_id().hex()
                on_result(result)
                metrics.record_job(result)  # here, where a row is final: a retried attempt is not a job
            on_frames(ray.get(progress.total.remote()))
    finally:
        for ref in pending:  # only when the run stops early: tasks that would report to no one
            ray.cancel(ref)


def _task_error(job: Job, cfg: RunConfig, exc: RayTaskError) -> JobResult:
    """A job whose task raised outside ``render_job`` (which turns every error into its
    row): a failed row, not retried (it would raise again)."""
    result = JobResult.for_job(job, cfg.render.pack)
    result.error_kind, result.error_stage = "internal", "plan"
    result.error = (
        f"{job.label}: internal error in its Ray task: {type(exc.cause).__name__}: {exc.cause} "
        "(a bug in heygem-ray; please report it with this message)"
    )
    return result


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
