"""Running a manifest on Ray: worker actors own the models, job tasks run the recipe.

* One ``ModelWorker`` actor per GPU (``num_gpus=1``); on a cluster without GPUs, CPU
  actors instead, leaving cores for the job tasks.
* One Ray task per job runs ``pipeline.render_job``; it sends chunks to the actors and
  composes their crops. Only crops, features and small metadata cross the object store.
* The driver keeps at most ``max_jobs_in_flight`` jobs submitted and hands each finished
  row on (it is kept on disk, not here), so a manifest of 100 000 rows needs little more
  driver memory than one of 100 (BENCHMARKS.md, "Memory").
* Every run ends (``Pool``): a worker that fails or dies while starting stops it at once;
  dead or wedged workers are replaced within a budget, and once none can serve it stops.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    ObjectLostError,
    RayError,
    RayTaskError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from heygem_ray import heap, metrics
from heygem_ray.config import RenderConfig, RunConfig, WorkerDevice
from heygem_ray.errors import EngineError, HeygemError, WorkersUnavailable
from heygem_ray.joblog import fields, job_logging
from heygem_ray.manifest import Job
from heygem_ray.packs import Features
from heygem_ray.pipeline import ChunkFuture, ReferenceFuture, render_job
from heygem_ray.results import JobResult
from heygem_ray.worker import ChunkOutput, GpuUse, ModelWorker, WorkerInfo

log = logging.getLogger(__name__)

# Seconds between progress polls while waiting for jobs.
POLL_S = 0.5
# Seconds between the pool's checks of its workers (alive, wedged, their nodes still there).
WATCH_S = 2.0
# Ray never restarts a worker actor (max_restarts 0): the pool starts another in its place
# (``Pool.watch``), so one budget counts every death, and a worker that dies while
# starting is seen at once rather than restarted behind the driver's back. (Ray also
# logs an error-level line for every actor created with restarts whose constructor
# arguments hold an object reference: the router's handle is one.) Ray does not send a
# dead worker's calls again by itself either: the job does (``_RayFuture``), where it can
# tell the chunk that was rendering from those queued behind it. (A chunk is a pure
# function of its arguments, so rendering it again is safe.)
_ACTOR_OPTIONS = {"max_restarts": 0, "max_task_retries": 0}
# A chunk whose worker died (or was stopped for taking too long) this many times while
# rendering it fails its job: it is what kills them (a segfault in the engine, the OOM
# killer, a call that hangs), and would take the next one too.
CHUNK_KILLS = 2
# A call Ray could not deliver or answer for a moment (ActorUnavailableError: a dropped
# connection; it may or may not have run) is made again, to the same actor, up to this
# many times in all, after pauses that double from UNREACHABLE_PAUSE_S: a chunk renders
# the same twice, and the router's methods may run twice.
UNREACHABLE_TRIES = 4
UNREACHABLE_PAUSE_S = 0.5
# What job tasks and chunk calls are called in the Ray dashboard. The same for every job:
# Ray's dashboard agent keeps state for every task name it has seen (the `ray_tasks`
# metric is labelled by name) for the cluster's life, so a name per job grew it by about
# 50 KiB a row, run after run (BENCHMARKS.md, "Memory"). Log records name the job.
JOB_TASK = "job"
CHUNK_CALL = "render"

Kind = Literal["gpu", "cpu"]


def node_name() -> str:
    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"


def _ask(method: Any, *args: Any) -> Any:
    """``ray.get(method.remote(*args))`` for the run's router, made again while Ray cannot
    reach it for a moment (``UNREACHABLE_TRIES`` in all); then a ``worker_lost`` error."""
    tries = 0
    while True:
        try:
            return ray.get(method.remote(*args))
        except ActorUnavailableError as exc:
            tries += 1
            if tries == UNREACHABLE_TRIES:
                raise EngineError(
                    f"the run's router (its bookkeeping actor, on the driver's node) could not be reached "
                    f"{tries} times ({_first_line(exc)}); check the cluster's network, then run the "
                    "same manifest again",
                    kind="worker_lost",
                ) from exc
            time.sleep(UNREACHABLE_PAUSE_S * 2 ** (tries - 1))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _death(exc: RayError) -> str:
    """How Ray says an actor died: its error's first line, and the first sentence of the
    worker's exit detail where Ray gives one (its exit code, a signal, the OOM killer)."""
    detail = re.search(r"Worker exit detail: ([^.]*\.)", str(exc))
    return _first_line(exc) + (f" {detail.group(1)}" if detail else "")


class _ActorWorker(ModelWorker):
    """A ModelWorker that joins the run's router once its models are open, and tells it
    which chunk it renders and when (so a chunk that kills it, or takes too long, can be
    told apart). Known to the router by its actor name, unique in the run."""

    def __init__(self, cfg: RenderConfig, engines_dir: Path, router: Any, device: WorkerDevice):
        ctx = ray.get_runtime_context()
        self._router = router
        self._name = cast(str, ctx.get_actor_name())
        _ask(router.starting, self._name)
        # Ray gave it a GPU: --device gpu must use it; auto may render on the CPU, saying why.
        gpu: GpuUse = ("required" if device == "gpu" else "wanted") if ray.get_gpu_ids() else "none"
        super().__init__(cfg, engines_dir, node=node_name(), gpu=gpu)
        if self.error is None:  # one that cannot start is the driver's to report
            _ask(router.joined, self._name, ctx.current_actor, self.info.reference_key)

    @ray.method(enable_task_events=False)
    def alive(self) -> None:
        """The pool's health check: answered between chunks; an error once the actor is dead."""

    def render(self, chunk: str, features: Features, given: np.ndarray) -> ChunkOutput:
        """``run_chunk`` for the chunk named ``chunk``; recorded first (and waited for: the
        record must outlive a worker killed by this very chunk), and its end after."""
        _ask(self._router.started, self._name, chunk, len(given))
        try:
            return self.run_chunk(features, given)
        finally:
            _ask(self._router.finished, self._name, chunk)

    def reference(self, chunk: str, crops: np.ndarray) -> np.ndarray:
        """``run_reference`` for the chunk named ``chunk``, recorded as ``render`` is."""
        _ask(self._router.started, self._name, chunk, len(crops))
        try:
            return self.run_reference(crops)
        finally:
            _ask(self._router.finished, self._name, chunk)


@ray.remote(num_cpus=0)
class _Router:
    """The run's shared state: which model workers serve, the chunks each holds, the chunk
    each is rendering and since when, and the frames composed so far.

    * A worker joins when its models are open and leaves when it is found dead (by a job,
      or the pool); chunks go to the joined worker with the fewest in flight (the one
      picked longest ago on a tie), so a worker still loading or building engines gets
      none, and a slow one gets fewer.
    * A worker renders its calls one at a time, so when it dies, one of the calls it held
      was rendering and the rest were queued: ``was_rendering`` tells a job which.
    * ``overdue`` names the workers whose chunk has rendered longer than its limit
      (``chunk_timeout_s`` + ``chunk_timeout_per_frame_s`` × its frames), timed here, on
      one clock, from the moment the worker began it (not while it waited in a queue).
    * Every method but ``add`` (a progress count, sent without waiting) does the same
      when asked twice (a caller asks again when Ray lost the reply): a chunk's worker is
      kept under the id of that send.

    Its calls (a few per chunk, and the driver's polls) keep no task events: they would
    fill the dashboard's task list and the GCS's event store with bookkeeping.
    """

    def __init__(self, timeout_s: float, timeout_per_frame_s: float) -> None:
        self.timeout_s, self.timeout_per_frame_s = timeout_s, timeout_per_frame_s
        self.frames = 0
        self.serving: dict[str, Any] = {}  # joined worker (actor name) → its handle
        self.in_flight: dict[str, int] = {}
        self.sends: dict[str, str] = {}  # chunk send → the worker it went to, until released
        self.picked: dict[str, int] = {}  # worker → the pick that chose it last
        self.picks = 0
        self.loading: set[str] = set()  # workers placed on a node, opening their models
        self.rendering: dict[str, tuple[str, float, int]] = {}  # worker → (chunk, since, frames)
        self.died_rendering: set[str] = set()  # chunks whose worker was lost while it rendered them
        self.timed_out: set[str] = set()  # chunks whose worker was stopped for taking too long
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

    @ray.method(enable_task_events=False)
    def joined(self, worker: str, handle: Any, reference_key: str) -> None:
        self.loading.discard(worker)
        self.serving[worker] = handle
        self.reference_keys[worker] = reference_key
        self.in_flight.setdefault(worker, 0)

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
    def acquire(self, send: str) -> tuple[str, Any] | None:
        """(worker, its handle) for the chunk send ``send``; None while none serves."""
        if (worker := self.sends.get(send)) in self.serving:  # asked again: the same answer
            return worker, self.serving[worker]
        if not self.serving:
            return None
        worker = min(self.serving, key=lambda w: (self.in_flight[w], self.picked.get(w, -1)))
        self.in_flight[worker] += 1
        self.picks += 1
        self.picked[worker] = self.picks
        self.sends[send] = worker
        return worker, self.serving[worker]

    @ray.method(enable_task_events=False)
    def release(self, send: str) -> None:
        worker = self.sends.pop(send, None)
        if worker in self.in_flight:
            self.in_flight[worker] = max(0, self.in_flight[worker] - 1)

    @ray.method(enable_task_events=False)
    def lost(self, worker: str) -> None:
        """``worker`` is dead or stopped: it serves no more chunks (actors are never
        restarted, so this is for good)."""
        self.serving.pop(worker, None)
        self.in_flight.pop(worker, None)
        self.reference_keys.pop(worker, None)
        self.loading.discard(worker)
        if (current := self.rendering.pop(worker, None)) is not None:
            self.died_rendering.add(current[0])

    @ray.method(enable_task_events=False)
    def started(self, worker: str, chunk: str, frames: int) -> None:
        if self.rendering.get(worker, ("",))[0] != chunk:  # asked twice: keep the first time
            self.rendering[worker] = (chunk, time.monotonic(), frames)

    @ray.method(enable_task_events=False)
    def finished(self, worker: str, chunk: str) -> None:
        if self.rendering.get(worker, ("",))[0] == chunk:
            del self.rendering[worker]

    @ray.method(enable_task_events=False)
    def overdue(self) -> list[tuple[str, float, int, float]]:
        """(worker, seconds, frames, limit) for each worker whose chunk has rendered past
        its limit; the chunk is then known as timed out (``was_rendering``)."""
        now = time.monotonic()
        late = []
        for worker, (chunk, since, frames) in list(self.rendering.items()):
            limit = self.timeout_s + self.timeout_per_frame_s * frames
            if now - since > limit:
                late.append((worker, now - since, frames, limit))
                del self.rendering[worker]
                self.timed_out.add(chunk)
        return late

    @ray.method(enable_task_events=False)
    def was_rendering(self, chunk: str) -> str:
        """How ``chunk``'s worker ended it (asked once per loss): "timeout" (stopped for
        taking too long on it), "died" (while rendering it), or "" (it was queued)."""
        if chunk in self.timed_out:
            self.timed_out.discard(chunk)
            return "timeout"
        if chunk in self.died_rendering:
            self.died_rendering.discard(chunk)
            return "died"
        for worker, current in list(self.rendering.items()):
            if current[0] == chunk:  # its loss has not reached the router yet
                del self.rendering[worker]
                return "died"
        return ""


class _RayFuture:
    """One chunk on a worker actor, sent again when its worker dies, is stopped, or cannot
    be reached for a moment.

    * An error raised on the worker (the model, its engine, a bug) is the job's error, as
      it was raised: not sent again, and not blamed on the cluster.
    * A worker Ray cannot reach for a moment: the chunk goes to the same worker again (it
      may be fine: only the pool drops a worker), up to ``UNREACHABLE_TRIES`` in all.
    * A worker that died or was stopped: the chunk goes to the next worker the router
      offers. If the chunk was the one rendering, it may be what killed or wedged the
      worker: after ``CHUNK_KILLS`` such ends the job fails.
    * Its rendered crops lost with the node that held them (the worker's node left before
      the job fetched them): the chunk goes to the next worker, up to ``UNREACHABLE_TRIES``
      times.
    """

    def __init__(self, service: _RayService, label: str, method: str, *args: Any):
        self._service, self._label, self._method, self._args = service, label, method, args
        self._ends: list[str] = []  # how each worker that held it while rendering it ended
        self._unreachable = 0
        self._outputs_lost = 0
        self._send()

    def _send(self) -> None:
        self._chunk = uuid.uuid4().hex  # this send of the chunk, as its worker reports it
        self._worker, self._actor = self._service.acquire(self._label, self._chunk)
        self._call()

    def _call(self) -> None:
        call = getattr(self._actor, self._method).options(name=CHUNK_CALL)
        self._ref: ray.ObjectRef = call.remote(self._chunk, *self._args)

    def result(self) -> Any:  # the method's: a ChunkOutput from render, an array from reference
        while True:
            try:
                out = ray.get(self._ref)
            except RayTaskError as exc:
                self._service.release(self._chunk)
                raise _worker_error(exc, self._label) from None
            except ActorUnavailableError as exc:
                self._unreachable += 1
                if self._unreachable >= UNREACHABLE_TRIES:
                    self._service.release(self._chunk)
                    raise EngineError(
                        f"{self._label}: its model worker could not be reached {self._unreachable} times "
                        f"({_first_line(exc)}); check the cluster's network, then run the same manifest again",
                        kind="worker_lost",
                    ) from exc
                log.warning("%s: its model worker could not be reached for a moment (%s); sending it again to "
                            "the same worker", self._label, type(exc).__name__)
                time.sleep(UNREACHABLE_PAUSE_S * 2 ** (self._unreachable - 1))
                self._call()
            except (ActorDiedError, ActorUnschedulableError) as exc:
                self._service.release(self._chunk)
                self._service.lost(self._worker)
                if ended := self._service.how_ended(self._chunk):
                    self._ends.append(ended)
                if len(self._ends) >= CHUNK_KILLS:
                    raise self._killed(exc) from exc
                log.warning("%s: its model worker %s it (%s); sending it again", self._label, {
                    "timeout": "was stopped for taking too long on", "died": "died while rendering",
                }.get(ended, "died before rendering"), type(exc).__name__)
                self._send()
            except ObjectLostError as exc:
                self._service.release(self._chunk)
                self._outputs_lost += 1
                if self._outputs_lost >= UNREACHABLE_TRIES:
                    raise EngineError(
                        f"{self._label}: its rendered crops were lost {self._outputs_lost} times "
                        f"({_first_line(exc)}); check the cluster's health, then run the same manifest again",
                        kind="worker_lost",
                    ) from exc
                log.warning("%s: its rendered crops were lost with its worker's node (%s); sending it again",
                            self._label, type(exc).__name__)
                self._send()
            except RayError as exc:
                raise EngineError(
                    f"the model worker rendering {self._label} was lost ({type(exc).__name__}); "
                    "check the cluster's health, then run the same manifest again",
                    kind="worker_lost",
                ) from exc
            else:
                self._service.release(self._chunk)
                return out

    def _killed(self, exc: RayError) -> EngineError:
        """The job's error for a chunk that ended ``CHUNK_KILLS`` of its workers."""
        if all(ended == "timeout" for ended in self._ends):
            return EngineError(
                f"{self._label}: rendering it took longer than its limit {len(self._ends)} times, and each time its "
                "model worker was stopped as wedged (a GPU call that hangs, or a worker far slower than expected); "
                "the worker logs ('ray logs worker-*.err' on its node, or the dashboard) may say why. If the workers "
                "are just slow, raise --chunk-timeout-per-frame (or --chunk-timeout)",
                kind="chunk_timeout",
            )
        stopped = self._ends.count("timeout")
        return EngineError(
            f"{self._label}: its model worker died {self._ends.count('died')} times while rendering it "
            + (f"and was stopped {stopped} times as wedged on it " if stopped else "")
            + f"(last: {type(exc).__name__}): a crash in the model or its engine, or the OOM "
            "killer; the worker logs ('ray logs worker-*.err' on its node, or the dashboard) "
            "say which. Try a smaller --chunk-frames, or another --backend",
            kind="worker_crash",
        )


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

    While no worker serves (all lost, their replacements still loading), a chunk waits
    for one, up to ``wait_s``; then its job fails as ``worker_lost`` and the driver tries
    it again. (The driver stops the run sooner when none can serve any more: ``Pool``.)
    """

    def __init__(self, router: Any, workers: int, chunk_frames: int, wait_s: float):
        self.router = router
        self.workers = workers
        self._chunk_frames = chunk_frames
        self._wait_s = wait_s
        self._sent = 0
        self._references = 0

    def acquire(self, label: str, send: str) -> tuple[str, Any]:
        return cast(tuple[str, Any], self._while_none_serves(self.router.acquire, f"{label}: no", send))

    def release(self, send: str) -> None:
        _ask(self.router.release, send)

    def lost(self, worker: str) -> None:
        _ask(self.router.lost, worker)

    def how_ended(self, send: str) -> str:
        return cast(str, _ask(self.router.was_rendering, send))

    def _while_none_serves(self, method: Any, subject: str, *args: Any) -> Any:
        """What the router's ``method`` answers, asked again while it answers None (no
        worker serves), up to ``wait_s``."""
        deadline = time.monotonic() + self._wait_s
        while (answer := _ask(method, *args)) is None:
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"{subject} model worker was serving for {self._wait_s:g} s (all lost, or starting); "
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


@dataclass
class _Member:
    """One of the pool's worker actors."""

    name: str  # its actor name, unique in the run: the router knows it by this
    actor: Any  # its handle
    node: str | None  # the node a CPU worker was placed on; None for GPU workers (Ray places them)
    check: ray.ObjectRef  # its first ready() until it serves; then its latest alive()
    serving: bool = False


class Pool:
    """The run's model worker actors: started, watched, replaced, and the count it wants.

    * GPU workers (``num_gpus=1``) are started all at once and wait, pending, for a GPU:
      on a cluster that starts empty that is the demand its autoscaler answers with GPU
      nodes. Each joins the router when its models are open, whenever that is.
    * CPU workers reserve no CPU, so a new worker never waits behind the job tasks that
      wait for it (which would hang the run), and each is placed on a chosen node (the
      live node with CPUs and the fewest of this run's workers), so they spread.
    * ``auto`` on a cluster with nothing to run on yet, which no autoscaler describes:
      the first node to join decides (GPUs: GPU workers; CPUs only: CPU workers).
    * ``watch`` (every ``WATCH_S``) learns which workers began to serve and which are
      gone. Until one has served, a worker that raised its start-up error (a bad
      checkpoint, a GPU it cannot use) or died while starting stops the run. After that,
      a worker that dies, fails to start, is wedged on a chunk (the router's ``overdue``)
      or whose node left is dropped and another started in its place, as long as no more
      than ``worker_restarts`` × the workers wanted were dropped; past that budget the
      others go on, and once none is left, or none has served for the start-up timeout,
      the run stops (``WorkersUnavailable``).
    """

    def __init__(self, cfg: RunConfig, run_id: str, router: Any, say: Callable[[str], None]):
        self._cfg = cfg
        self._args = (cfg.render, cfg.engines_dir.resolve(), router, cfg.device)
        self._router = router
        self._say = say
        self._prefix = f"model-worker-{run_id}"  # unique: several runs may share a cluster
        self._started = 0
        # Made once: every ray.remote() of a class is a new actor class to Ray, and costs memory.
        self._remote: Any = ray.remote(_ActorWorker)
        self._limits = _autoscaler_limits()
        self.kind: Kind | None = _worker_kind(cfg.device, self._limits)
        self.members: list[_Member] = []
        self.served = False  # a worker has served: from then on, losses are replaced
        self.dropped = 0  # workers dropped (dead, failed to start, wedged, node gone)
        self._last_drop = ""
        self._none_since: float | None = None  # since when no worker serves, once one has
        self.watch()

    @property
    def serving(self) -> int:
        return sum(m.serving for m in self.members)

    def wanted(self) -> int:
        if self._cfg.workers:
            return self._cfg.workers
        resources = ray.cluster_resources()
        if self.kind == "gpu":  # one per GPU the cluster has, or its autoscaler can add
            return max(1, int(resources.get("GPU", 0)), _bounded(self._limits.get("GPU", 0)))
        cpus = int(resources.get("CPU", 0))
        # Never more model actors than cores less one: job tasks (analyze, compose) need one.
        return max(1, min(max(1, cpus // 4), cpus - 1))

    def budget(self) -> int:
        """Workers that may be dropped and replaced over the run."""
        return self._cfg.worker_restarts * self.wanted()

    def jobs_cap(self) -> int:
        """Jobs to keep in flight: enough to keep the workers busy, and one per CPU."""
        cpus = int(ray.cluster_resources().get("CPU", 0))
        return self._cfg.max_jobs_in_flight or max(2 * max(1, self.serving), cpus)

    def watch(self, timeout_s: float = 0.0) -> list[WorkerInfo]:
        """One round of care, waiting up to ``timeout_s`` for news of a worker: returns
        the workers that began to serve since the last round; raises what stops the run."""
        if self.kind is None:
            self._decide()
        if self.kind is None:
            time.sleep(timeout_s)
            return []
        joined = self._check(timeout_s)
        self._drop_overdue()
        if self.kind == "cpu":
            self._drop_where_nodes_left()
        if self.dropped <= self.budget():
            self._start(max(0, self.wanted() - len(self.members)))
        self._must_have_some()
        return joined

    def _decide(self) -> None:
        """``auto`` on an empty cluster: GPU or CPU workers, once a node joins (or an
        autoscaler says what it adds), said in a progress line."""
        self._limits = _autoscaler_limits()
        self.kind = _worker_kind(self._cfg.device, self._limits)
        if self.kind is not None:
            now = ray.cluster_resources()
            if now.get("GPU", 0) >= 1:
                line = "a node with GPUs joined: rendering on GPU workers"
            elif now.get("CPU", 0) >= 1:
                line = "a CPU-only node joined: rendering on CPU workers"
            else:
                line = f"the autoscaler adds nodes {'with' if self.kind == 'gpu' else 'without'} GPUs: " \
                       f"rendering on {self.kind.upper()} workers"
            log.info("%s", line)
            self._say(line)

    def _check(self, timeout_s: float) -> list[WorkerInfo]:
        """Read the workers' answers: the first ready() of those starting, the alive() of
        those serving."""
        checks = [m.check for m in self.members]
        if not checks:
            time.sleep(timeout_s)
            return []
        done, _ = ray.wait(checks, num_returns=1, timeout=timeout_s)
        if done:
            done, _ = ray.wait(checks, num_returns=len(checks), timeout=0)
        answered = set(done)
        joined = []
        for m in [m for m in self.members if m.check in answered]:
            try:
                info = ray.get(m.check)
            except HeygemError as exc:  # its own start-up error: a bad checkpoint, no CUDA, too little memory
                if not self.served:
                    raise
                self._drop(m, f"could not start: {exc.message}", kill=True)
                continue
            except ActorUnavailableError:  # out of reach for a moment: ask again
                m.check = m.actor.alive.remote() if m.serving else m.actor.ready.remote()
                continue
            except ActorUnschedulableError:  # its node left before it could start there
                self._drop(m, f"could not be placed on node {m.node}: it left", kill=False)
                continue
            except RayError as exc:  # it died (a crash, the OOM killer, its node gone)
                if not m.serving and not self.served:
                    raise WorkersUnavailable(
                        f"model worker {m.name} died while starting ({_death(exc)}); the worker logs "
                        "('ray logs worker-*.err' on its node, or the dashboard) say why; a process killed "
                        "while loading models is often the OOM killer",
                        kind="worker_start",
                    ) from None
                self._drop(m, f"died ({_death(exc)})", kill=False)
                continue
            if not m.serving:
                m.serving = self.served = True
                joined.append(cast(WorkerInfo, info))
            m.check = m.actor.alive.remote()
        return joined

    def _drop_overdue(self) -> None:
        """Stop the workers whose chunk has rendered past its limit: wedged."""
        for name, seconds, frames, limit in _ask(self._router.overdue):
            for m in [m for m in self.members if m.name == name]:
                self._drop(m, f"took {seconds:.0f} s on a chunk of {frames} frames, past its limit of {limit:.0f} s "
                              "(--chunk-timeout + --chunk-timeout-per-frame × frames): stopped as wedged", kill=True)

    def _drop_where_nodes_left(self) -> None:
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for m in [m for m in self.members if m.node not in alive]:
            self._drop(m, f"is gone with its node {m.node}", kill=True)

    def _drop(self, m: _Member, why: str, kill: bool) -> None:
        """Take ``m`` out of the run (its chunks go to the others); another may replace it."""
        self.members.remove(m)
        if kill:
            ray.kill(m.actor)
        _ask(self._router.lost, m.name)
        self.dropped += 1
        self._last_drop = f"{m.name} {why}"
        budget = self.budget()
        then = "another takes its place" if self.dropped <= budget else "the restart budget is spent: no other takes its place"
        log.warning("model worker %s; %s (%d of %d, --worker-restarts × workers)", self._last_drop, then,
                    self.dropped, budget)

    def _must_have_some(self) -> None:
        """Once a worker has served: stop the run when none is left and none may be started,
        or none has served for the start-up timeout."""
        if not self.served or any(m.serving for m in self.members):
            self._none_since = None
            return
        now = time.monotonic()
        self._none_since = self._none_since or now
        timeout_s = self._cfg.workers_ready_timeout_s
        if not self.members and self.dropped > self.budget():
            raise WorkersUnavailable(
                f"no model worker is left: {self.dropped} were lost, past the restart budget of {self.budget()} "
                f"(--worker-restarts {self._cfg.worker_restarts} × {self.wanted()} workers); the last: "
                f"{self._last_drop}. Check the workers' logs and the nodes, then run the same manifest again",
                kind="workers_lost",
            )
        if now - self._none_since >= timeout_s:
            raise WorkersUnavailable(
                f"no model worker has served for {timeout_s:g} s: {len(self.members)} started in place of lost "
                f"ones, {self.loading()} of them loading models and the rest waiting for a node; the last lost: "
                f"{self._last_drop}. Check that nodes can join ('ray status'), then run the same manifest again",
                kind="workers_lost",
            )

    def _start(self, count: int) -> None:
        for _ in range(count):
            options: dict[str, Any] = {"num_cpus": 0, **_ACTOR_OPTIONS}
            node = None
            if self.kind == "gpu":
                options["num_gpus"] = 1
            else:
                node = self._place()
                if node is None:
                    return
                # Not soft: Ray's soft affinity may fall back to another node while the chosen
                # one is still starting workers. A worker whose node leaves is dropped and
                # replaced by ``watch``, so a hard affinity never strands one.
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
            name = f"{self._prefix}-{self.kind}{self._started}"
            self._started += 1
            actor = self._remote.options(name=name, **options).remote(*self._args)
            self.members.append(_Member(name, actor, node, actor.ready.remote()))

    def _place(self) -> str | None:
        """The live node with CPUs for the next CPU worker: fewest of ours, then most CPUs."""
        ours = [m.node for m in self.members]
        best: tuple[int, float, str] | None = None
        for n in ray.nodes():
            have = float(n.get("Resources", {}).get("CPU", 0))
            if n["Alive"] and have > 0:
                key = (ours.count(n["NodeID"]), -have, n["NodeID"])
                best = key if best is None or key < best else best
        return None if best is None else best[2]

    def loading(self) -> int:
        """Workers placed on a node and opening their models (or building engines)."""
        return cast(int, _ask(self._router.placed))

    def waiting_line(self, waited_s: float, timeout_s: float) -> str:
        """A progress line while the run waits for its first worker."""
        if self.kind is None:
            return (
                f"waiting for a node to join ({waited_s:.0f} s of {timeout_s:g}): the cluster has no CPUs or GPUs "
                "for model workers yet; the first node to join decides between GPU and CPU workers"
            )
        return (
            f"waiting for model workers ({waited_s:.0f} s of {timeout_s:g}): {len(self.members)} "
            f"{self.kind.upper()} workers asked for, {self.loading()} loading models, none ready yet"
        )

    def not_ready(self, timeout_s: float) -> WorkersUnavailable:
        """The error for a run whose workers did not start: what the cluster lacks."""
        waited = f"no model worker was ready after {timeout_s:g} s"
        if self.kind is None:
            return WorkersUnavailable(
                f"{waited}: no node with CPUs or GPUs joined the cluster, and no autoscaler reported the node "
                "types it adds (with --device auto the first node to join decides between GPU and CPU workers). "
                "Check that nodes can join ('ray status'), or choose with --device gpu or --device cpu",
                kind="workers_not_ready",
            )
        wanted = len(self.members) or self.wanted()
        # CPU workers exist only where a node was chosen for them; GPU workers once placed.
        placed = len(self.members) if self.kind == "cpu" else self.loading()
        if placed:
            why = (
                f"{placed} of {wanted} started on a node and are still loading their models or building "
                "engines; allow them longer (--start-timeout)"
            )
        elif self.kind == "gpu":
            total = ray.cluster_resources().get("GPU", 0)
            free = ray.available_resources().get("GPU", 0)
            most = _bounded(self._limits.get("GPU", 0))
            can = (
                f"its autoscaler can have up to {most}" if most
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
        return WorkersUnavailable(f"{waited}: {why}", kind="workers_not_ready")

    def close(self) -> None:
        for m in self.members:
            ray.kill(m.actor)


def _autoscaler_limits() -> dict[str, int]:
    """The most of each resource the cluster's autoscaler can provide, as it reported its
    node types to the GCS; empty when none did."""
    try:
        limits = ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception:  # an older GCS, or a private API that moved: the cluster as it is
        log.debug("the autoscaler's limits could not be read", exc_info=True)
        return {}
    return {name: int(most or 0) for name, most in limits.items()}


def _bounded(most: int) -> int:
    """An autoscaler's limit as a count of workers: 0 when unbounded."""
    return 0 if most >= sys.maxsize else most


def _worker_kind(device: WorkerDevice, limits: dict[str, int]) -> Kind | None:
    """``auto``: GPU workers when the cluster has a GPU or its autoscaler's node types have
    GPUs; CPU workers when it has CPUs and no GPU, or its autoscaler's node types have
    none. None while it has neither and no autoscaler said what it adds (a cluster that
    starts empty, with nodes joining by other means): the first node to join decides."""
    if device != "auto":
        return device
    now = ray.cluster_resources()
    if now.get("GPU", 0) >= 1 or limits.get("GPU", 0) > 0:
        return "gpu"
    if now.get("CPU", 0) >= 1 or limits:
        return "cpu"
    return None


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
    flight (an iterator may decide about a job when its turn comes). ``on_workers`` hears
    of workers as they begin to serve; ``on_waiting`` gets a progress line now and then
    while the run waits for its first worker. Raises ``WorkersUnavailable`` when the
    workers cannot serve (see ``Pool``). Whatever ends the run (also an error raised by a
    callback), its actors are ended and the job tasks still running are cancelled before
    it returns or raises."""
    run_id = uuid.uuid4().hex[:6]  # names this run's actors in the dashboard
    # On the driver's node: it must not leave the run with a node that leaves the cluster.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    router = (
        cast(Any, _Router)
        .options(name=f"router-{run_id}", scheduling_strategy=here)
        .remote(cfg.chunk_timeout_s, cfg.chunk_timeout_per_frame_s)
    )
    try:
        pool = Pool(cfg, run_id, router, on_waiting)
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
        # Nodes joining: CPU workers placed on them, more GPU workers wanted, auto decided.
        if infos := pool.watch(min(WATCH_S, start + timeout_s - now)):
            return infos
        if time.monotonic() >= say_at:
            line = pool.waiting_line(time.monotonic() - start, timeout_s)
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
                if joined := pool.watch():  # raises when no worker can serve any more
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
            on_frames(_ask(router.total))
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
