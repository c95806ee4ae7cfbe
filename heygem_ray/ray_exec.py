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
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    RayError,
    RayTaskError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from heygem_ray import heap, metrics
from heygem_ray.config import RenderConfig, RunConfig
from heygem_ray.errors import EngineError, HeygemError
from heygem_ray.joblog import fields, job_logging
from heygem_ray.manifest import Job
from heygem_ray.packs import Features
from heygem_ray.pipeline import ChunkFuture, ReferenceFuture, render_job
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
    """A ModelWorker that joins the run's router once its models are open (again after
    each restart), and tells it which chunk it renders (so a chunk that kills it can be
    told apart)."""

    def __init__(self, cfg: RenderConfig, engines_dir: Path, router: Any):
        ctx = ray.get_runtime_context()
        self._router = router
        self._id = ctx.get_actor_id()  # the same after a restart
        ray.get(router.starting.remote(self._id))
        super().__init__(cfg, engines_dir, node=node_name())
        if self.error is None:  # one that cannot start is the driver's to report
            ray.get(router.joined.remote(self._id, ctx.current_actor, self.info.reference_key))

    def render(self, chunk: str, features: Features, given: np.ndarray) -> ChunkOutput:
        """``run_chunk`` for the chunk named ``chunk``; recorded first (and waited for: the
        record must outlive a worker killed by this very chunk)."""
        ray.get(self._router.started.remote(self._id, chunk))
        return self.run_chunk(features, given)

    def reference(self, chunk: str, crops: np.ndarray) -> np.ndarray:
        """``run_reference`` for the chunk named ``chunk``, recorded first as ``render``."""
        ray.get(self._router.started.remote(self._id, chunk))
        return self.run_reference(crops)


@ray.remote(num_cpus=0)
class _Router:
    """The run's shared state: which model workers serve, how many chunks each holds, the
    chunk each is rendering, and the frames composed so far.

    * A worker joins when its models are open (after a restart too) and leaves when a job
      finds it dead; chunks go to the joined worker with the fewest in flight (the one
      picked longest ago on a tie), so a worker still loading or building engines gets
      none, and a slow one gets fewer.
    * A worker renders its calls one at a time, so when it dies, one of the calls it held
      was rendering and the rest were queued: ``was_rendering`` tells a job which.

    Its calls (a few per chunk, and the driver's polls) keep no task events: they would
    fill the dashboard's task list and the GCS's event store with bookkeeping.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.serving: dict[str, Any] = {}  # joined worker (actor id) → its handle
        self.in_flight: dict[str, int] = {}
        self.joins: dict[str, int] = {}  # worker → times it joined: tells a stale loss apart
        self.picked: dict[str, int] = {}  # worker → the pick that chose it last
        self.picks = 0
        self.loading: set[str] = set()  # workers placed on a node, opening their models
        self.rendering: dict[str, str] = {}  # worker → the chunk it started last
        self.died_rendering: set[str] = set()  # chunks whose worker restarted before it ended
        self.reference_keys: dict[str, str] = {}  # serving worker → its WorkerInfo.reference_key

    @ray.method(enable_task_events=False)
    def add(self, frames: int) -> None:
        self.frames += frames

    @ray.method(enable_task_events=False)
    def total(self) -> int:
        return self.frames

    @ray.method(enable_task_events=False)
    def starting(self, worker: str) -> None:
        self.loading.add(worker)
        if (chunk := self.rendering.pop(worker, None)) is not None:  # a restart
            self.died_rendering.add(chunk)

    @ray.method(enable_task_events=False)
    def joined(self, worker: str, handle: Any, reference_key: str) -> None:
        self.loading.discard(worker)
        self.serving[worker] = handle
        self.reference_keys[worker] = reference_key
        self.in_flight[worker] = 0
        self.joins[worker] = self.joins.get(worker, 0) + 1

    @ray.method(enable_task_events=False)
    def reference_key(self) -> str | None:
        """A serving worker's ``reference_key`` (the same for all: one checkpoint and
        device kind a run); None while none serves."""
        return next((self.reference_keys[w] for w in self.serving), None)

    @ray.method(enable_task_events=False)
    def placed(self) -> int:
        """Workers placed on a node and still opening their models."""
        return len(self.loading)

    @ray.method(enable_task_events=False)
    def acquire(self) -> tuple[str, Any, int] | None:
        """(worker, its handle, its join count) for the next chunk; None while none serves."""
        if not self.serving:
            return None
        worker = min(self.serving, key=lambda w: (self.in_flight[w], self.picked.get(w, -1)))
        self.in_flight[worker] += 1
        self.picks += 1
        self.picked[worker] = self.picks
        return worker, self.serving[worker], self.joins[worker]

    @ray.method(enable_task_events=False)
    def release(self, worker: str) -> None:
        if worker in self.in_flight:
            self.in_flight[worker] = max(0, self.in_flight[worker] - 1)

    @ray.method(enable_task_events=False)
    def lost(self, worker: str, join: int) -> None:
        """A job found ``worker`` dead; it serves again when it joins again (a loss
        reported after it already has, seen by its join count, changes nothing)."""
        if self.joins.get(worker) == join:
            self.serving.pop(worker, None)
            self.in_flight.pop(worker, None)

    @ray.method(enable_task_events=False)
    def started(self, worker: str, chunk: str) -> None:
        self.rendering[worker] = chunk

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
    * A worker that died: the chunk goes to the next worker the router offers. If the
      chunk was the one rendering, it may be what killed the worker: after
      ``CHUNK_KILLS`` such deaths the job fails.
    """

    def __init__(self, service: _RayService, label: str, method: str, *args: Any):
        self._service, self._label, self._method, self._args = service, label, method, args
        self._kills = 0
        self._send()

    def _send(self) -> None:
        self._worker, actor, self._join = self._service.acquire(self._label)
        self._chunk = uuid.uuid4().hex  # this send of the chunk, as its worker reports it
        call = getattr(actor, self._method).options(name=CHUNK_CALL)
        self._ref: ray.ObjectRef = call.remote(self._chunk, *self._args)

    def result(self) -> Any:  # the method's: a ChunkOutput from render, an array from reference
        router = self._service.router
        while True:
            try:
                out = ray.get(self._ref)
                router.release.remote(self._worker)
                return out
            except RayTaskError as exc:
                router.release.remote(self._worker)
                raise _worker_error(exc, self._label) from None
            except (ActorDiedError, ActorUnavailableError, ActorUnschedulableError) as exc:
                router.lost.remote(self._worker, self._join)
                rendering = ray.get(router.was_rendering.remote(self._chunk))
                self._kills += rendering
                if self._kills >= CHUNK_KILLS:
                    raise EngineError(
                        f"{self._label}: its model worker died {self._kills} times while rendering it "
                        f"(last: {type(exc).__name__}): a crash in the model or its engine, or the OOM "
                        "killer; the worker logs ('ray logs worker-*.err' on its node, or the dashboard) "
                        "say which. Try a smaller --chunk-frames, or another --backend",
                        kind="worker_crash",
                    ) from exc
                log.warning("%s: its model worker died %s it (%s); sending it again", self._label,
                            "while rendering" if rendering else "before rendering", type(exc).__name__)
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
    """Sends each chunk to the worker the run's router offers (the one with the fewest
    chunks in flight). Each call (motion and render of one chunk) is ``render`` in the
    Ray dashboard.

    While no worker serves (all restarting, or their nodes replaced), a chunk waits for
    one, up to ``wait_s``; then its job fails as ``worker_lost`` and the driver tries it
    again.
    """

    def __init__(self, router: Any, workers: int, chunk_frames: int, wait_s: float):
        self.router = router
        self.workers = workers
        self._chunk_frames = chunk_frames
        self._wait_s = wait_s
        self._sent = 0
        self._references = 0

    def acquire(self, label: str) -> tuple[str, Any, int]:
        return cast(tuple[str, Any, int], self._while_none_serves(self.router.acquire, f"{label}: no"))

    def _while_none_serves(self, ask: Any, subject: str) -> Any:
        """What the router's ``ask`` answers, asked again while it answers None (no worker
        serves), up to ``wait_s``."""
        deadline = time.monotonic() + self._wait_s
        while (answer := ray.get(ask.remote())) is None:
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"{subject} model worker was serving for {self._wait_s:g} s (all lost or restarting); "
                    "check the cluster's health, then run the same manifest again",
                    kind="worker_lost",
                )
            time.sleep(POLL_S)
        return answer

    def submit(self, features: Features, given: np.ndarray) -> ChunkFuture:
        # The job sends its chunks in order, each chunk_frames long but the last (pipeline.py).
        first = self._sent * self._chunk_frames
        label = f"chunk {self._sent} (frames {first}-{first + len(given) - 1})"
        self._sent += 1
        return _RayFuture(self, label, "render", features, given)

    def submit_reference(self, crops: np.ndarray) -> ReferenceFuture:
        self._references += 1
        return _RayFuture(self, f"reference chunk {self._references - 1} ({len(crops)} frames)", "reference", crops)

    def reference_key(self) -> str:
        return cast(str, self._while_none_serves(self.router.reference_key, "no"))


@ray.remote(num_cpus=1)
def _job_task(job: Job, cfg: RunConfig, workers: int, router: Any) -> JobResult:
    def frames_done(frames: int) -> None:
        router.add.remote(frames)
        metrics.record_frames(frames, cfg.render.pack)

    service = _RayService(router, workers, cfg.render.chunk_frames, cfg.workers_ready_timeout_s)
    with job_logging(job.job_id):
        result = render_job(job, cfg.render, cfg.cache_dir, service, on_frames=frames_done)
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
    """The run's model worker actors, and the count it wants.

    * GPU workers (``num_gpus=1``) are started all at once and wait, pending, for a GPU:
      on a cluster that starts empty that is the demand its autoscaler answers with GPU
      nodes. Each joins the router when its models are open, whenever that is; one whose
      node leaves restarts where a GPU is free (Ray places it), or waits for one.
    * CPU workers reserve no CPU, so a restarted worker never waits behind the job tasks
      that wait for it (which would hang the run), and each is placed on a chosen node
      (the live node with CPUs and the fewest of this run's workers), so they spread.
      ``watch`` ends those of nodes that left and starts new ones where there is room.

    Workers that cannot start raise their error (a bad checkpoint, a backend that cannot
    run) from ``wait``: before any serves, that stops the run; later it is logged and
    the others go on.
    """

    def __init__(self, cfg: RunConfig, run_id: str, router: Any):
        self._cfg = cfg
        self._args = (cfg.render, cfg.engines_dir.resolve(), router)
        self._router = router
        self._prefix = f"model-worker-{run_id}"  # unique: several runs may share a cluster
        self._started = 0
        # Made once: every ray.remote() of a class is a new actor class to Ray, and costs memory.
        self._remote: Any = ray.remote(_ActorWorker)
        self._max_gpus = _autoscaler_max("GPU")
        self.kind = _worker_kind(cfg.device, self._max_gpus)
        self.actors: list[ray.actor.ActorHandle] = []
        self._nodes: list[str | None] = []  # the node each CPU worker was placed on
        self._ready: list[ray.ObjectRef] = []  # the first ready() of workers not yet serving
        self.serving = 0  # workers whose first ready() returned
        self.watch()

    def wanted(self) -> int:
        if self._cfg.workers:
            return self._cfg.workers
        resources = ray.cluster_resources()
        if self.kind == "gpu":  # one per GPU the cluster has, or its autoscaler can add
            return max(1, int(resources.get("GPU", 0)), self._max_gpus)
        cpus = int(resources.get("CPU", 0))
        # Never more model actors than cores less one: job tasks (analyze, compose) need one.
        return max(1, min(max(1, cpus // 4), cpus - 1))

    def jobs_cap(self) -> int:
        """Jobs to keep in flight: enough to keep the workers busy, and one per CPU."""
        cpus = int(ray.cluster_resources().get("CPU", 0))
        return self._cfg.max_jobs_in_flight or max(2 * max(1, self.serving), cpus)

    def _start(self, count: int) -> None:
        for _ in range(count):
            options: dict[str, Any] = {"num_cpus": 0, **_RESTART}
            node = None
            if self.kind == "gpu":
                options["num_gpus"] = 1
            else:
                node = self._place()
                if node is None:
                    return
                # Not soft: Ray's soft affinity may fall back to another node while the chosen
                # one is still starting workers. An actor whose node leaves is ended and
                # replaced by ``watch``, so a hard affinity never strands one.
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
            name = f"{self._prefix}-{self.kind}{self._started}"
            self._started += 1
            actor = self._remote.options(name=name, **options).remote(*self._args)
            self._ready.append(actor.ready.remote())
            self.actors.append(actor)
            self._nodes.append(node)

    def _place(self) -> str | None:
        """The live node with CPUs for the next CPU worker: fewest of ours, then most CPUs."""
        best: tuple[int, float, str] | None = None
        for n in ray.nodes():
            have = float(n.get("Resources", {}).get("CPU", 0))
            if n["Alive"] and have > 0:
                key = (self._nodes.count(n["NodeID"]), -have, n["NodeID"])
                best = key if best is None or key < best else best
        return None if best is None else best[2]

    def watch(self) -> None:
        """End the CPU workers of nodes that left the cluster; start workers up to the count wanted."""
        if self.kind == "cpu":
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            gone = [i for i, node in enumerate(self._nodes) if node not in alive]
            for i in gone:
                log.warning("node %s left the cluster: its model worker's chunks go to the others", self._nodes[i])
                ray.kill(self.actors[i], no_restart=True)
            keep = [i for i in range(len(self.actors)) if i not in gone]
            self.actors = [self.actors[i] for i in keep]
            self._nodes = [self._nodes[i] for i in keep]
        self._start(max(0, self.wanted() - len(self.actors)))

    def wait(self, timeout_s: float) -> list[WorkerInfo]:
        """The workers that began to serve since the last call, waiting up to ``timeout_s``
        for the first of them."""
        done, _ = ray.wait(self._ready, num_returns=1, timeout=timeout_s) if self._ready else ([], [])
        if done:
            done, self._ready = ray.wait(self._ready, num_returns=len(self._ready), timeout=0)
        infos = []
        for ref in done:
            try:
                infos.append(cast(WorkerInfo, ray.get(ref)))
            except HeygemError:  # its own start-up error: a bad checkpoint, a backend that cannot run
                if not self.serving and not infos:
                    raise
                log.exception("a model worker could not start; the others go on")
            except RayError as exc:  # ended (its node left), or it died while starting
                log.warning("a model worker ended before it served (%s)", type(exc).__name__)
        self.serving += len(infos)
        return infos

    def loading(self) -> int:
        """Workers placed on a node and opening their models (or building engines)."""
        return cast(int, ray.get(self._router.placed.remote()))

    def not_ready(self, timeout_s: float) -> EngineError:
        """The error for a run whose workers did not start: what the cluster lacks."""
        wanted = len(self.actors) or self.wanted()
        # CPU workers exist only where a node was chosen for them; GPU workers once placed.
        placed = len(self.actors) if self.kind == "cpu" else self.loading()
        waited = f"no model worker was ready after {timeout_s:g} s"
        if placed:
            why = (
                f"{placed} of {wanted} started on a node and are still loading their models or building "
                "engines; allow them longer (--start-timeout)"
            )
        elif self.kind == "gpu":
            total = ray.cluster_resources().get("GPU", 0)
            free = ray.available_resources().get("GPU", 0)
            can = (
                f"its autoscaler can have up to {self._max_gpus}" if self._max_gpus
                else "no autoscaler reported node types with GPUs"
            )
            why = (
                f"none of the {wanted} GPU workers it asked for started: the cluster has {total:g} GPUs "
                f"({free:g} free) and {can}. Check that GPU nodes can join ('ray status' lists the "
                "pending demand), or render on CPUs with --device cpu"
            )
        else:
            why = (
                f"none of the {wanted} CPU workers found a node with CPUs: add a worker node with CPUs, "
                "or use GPU workers (--device gpu) where the autoscaler adds GPU nodes"
            )
        return EngineError(f"{waited}: {why}", kind="workers_not_ready")

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def _autoscaler_max(resource: str) -> int:
    """How many of ``resource`` the cluster's autoscaler can provide at most, as it reported
    its node types to the GCS (0 when none did, or its limit is unbounded)."""
    try:
        limits = ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception:  # an older GCS, or a private API that moved: the cluster as it is
        log.debug("the autoscaler's limits could not be read", exc_info=True)
        return 0
    most = int(limits.get(resource, 0) or 0)
    return 0 if most >= sys.maxsize else most


def _worker_kind(device: str, max_gpus: int) -> str:
    """``auto``: GPU workers when the cluster has GPUs or its autoscaler can add them, and
    on a cluster with nothing to run on yet (one that starts empty, where GPU nodes are
    what an autoscaler is there to add); CPU workers where there are CPUs and no GPUs."""
    if device != "auto":
        return device
    now = ray.cluster_resources()
    return "gpu" if now.get("GPU", 0) >= 1 or max_gpus > 0 or now.get("CPU", 0) < 1 else "cpu"


# The first progress line while the run waits for its workers, then one this often.
WAITING_FIRST_S = 5.0
WAITING_EVERY_S = 30.0


def run_jobs(
    jobs: Iterable[Job],
    cfg: RunConfig,
    on_result: Callable[[JobResult], None] = lambda r: None,
    on_frames: Callable[[int], None] = lambda n: None,
    on_workers: Callable[[list[WorkerInfo]], None] = lambda infos: None,
    on_waiting: Callable[[str], None] = lambda line: None,
) -> None:
    """Render every job on the connected Ray cluster, passing each row to ``on_result`` as
    its job ends. ``jobs`` is taken one at a time as there is room for another job in
    flight (an iterator may decide about a job when its turn comes). ``on_workers`` hears of workers as they begin to serve; ``on_waiting``
    gets a progress line now and then while the run waits for its first worker.
    Whatever ends the run (also an error raised by a callback), its actors are ended and
    the job tasks still running are cancelled before it returns or raises."""
    run_id = uuid.uuid4().hex[:6]  # names this run's actors in the dashboard
    # On the driver's node: it must not leave the run with a node that leaves the cluster.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    router = cast(Any, _Router).options(name=f"router-{run_id}", scheduling_strategy=here).remote()
    try:
        pool = Pool(cfg, run_id, router)
        try:
            on_workers(_first_workers(pool, cfg.workers_ready_timeout_s, on_waiting))
            _render_all(jobs, cfg, pool, router, on_result, on_frames, on_workers)
        finally:
            pool.close()
    finally:
        ray.kill(router)


def _first_workers(pool: Pool, timeout_s: float, on_waiting: Callable[[str], None]) -> list[WorkerInfo]:
    """Wait for the first workers to serve, saying so now and then; none in time stops the run."""
    start = time.monotonic()
    say_at = start + WAITING_FIRST_S
    while True:
        now = time.monotonic()
        if now - start >= timeout_s:
            raise pool.not_ready(timeout_s)
        if infos := pool.wait(min(WATCH_S, start + timeout_s - now)):
            return infos
        pool.watch()  # nodes joining: CPU workers placed on them, more GPU workers wanted
        if time.monotonic() >= say_at:
            line = (
                f"waiting for model workers ({time.monotonic() - start:.0f} s of {timeout_s:g}): "
                f"{len(pool.actors)} {pool.kind.upper()} workers asked for, {pool.loading()} loading models, "
                "none ready yet"
            )
            log.info("%s", line)
            on_waiting(line)
            say_at = time.monotonic() + WAITING_EVERY_S


def _render_all(
    jobs: Iterable[Job],
    cfg: RunConfig,
    pool: Pool,
    router: Any,
    on_result: Callable[[JobResult], None],
    on_frames: Callable[[int], None],
    on_workers: Callable[[list[WorkerInfo]], None],
) -> None:
    """Keep up to the in-flight cap of job tasks running until every job has its row."""
    in_flight_cap = pool.jobs_cap()
    config_hash = cfg.config_hash()
    pending: dict[ray.ObjectRef, tuple[Job, int]] = {}  # task → (job, attempt)
    retry: list[tuple[Job, int]] = []
    queue = iter(jobs)
    exhausted = False
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
                ref = _job_task.options(name=JOB_TASK, max_retries=0).remote(job, cfg, pool.serving, router)
                pending[ref] = (job, attempt)
            if not pending:
                return
            if time.monotonic() >= next_watch:
                pool.watch()
                if joined := pool.wait(0):
                    on_workers(joined)
                in_flight_cap = pool.jobs_cap()
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
            on_frames(ray.get(router.total.remote()))
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
