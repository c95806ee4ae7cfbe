"""Routing chunks to model workers: the run's router actor (which workers serve, what
each renders and since when), and the job's side of it (``RayService``: send a chunk,
send it again when its worker dies, tell a chunk that kills workers apart)."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

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

from heygem_ray import progress
from heygem_ray.driver.calls import (
    CHUNK_CALL,
    POLL_S,
    UNREACHABLE_PAUSE_S,
    UNREACHABLE_TRIES,
    ask,
)
from heygem_ray.errors import EngineError, HeygemError, first_line, out_of_memory, says_out_of_memory
from heygem_ray.job import ChunkFuture, ReferenceFuture
from heygem_ray.packs import Features
from heygem_ray.restore.inputs import RestoreInputs

log = logging.getLogger(__name__)


# A chunk whose worker died (or was stopped for taking too long) this many times while
# rendering it fails its job: it is what kills them (a segfault in the engine, the OOM
# killer, a call that hangs), and would take the next one too.
CHUNK_KILLS = 2


@dataclass(frozen=True)
class Beat:
    """A job task's last heartbeat, as the router keeps it."""

    where: tuple[str, int]  # the node id and pid of the process running it
    moves: int  # progress.state()'s count
    since: float  # the router's time.monotonic() when it last progressed
    step: str
    blocked: str  # what it waits for that stopped answering (progress.block), or ""


@ray.remote(num_cpus=0)
class Router:
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
    * Each job task's heartbeat (``beat``) says whether it moved bytes or waits on a
      worker; ``stalled`` names the tasks that did neither for a while (``driver/loop.py``
      stops them).
    * Every method but ``add``, ``beat`` and ``forget`` (sent without waiting) does the same
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
        self.beats: dict[str, Beat] = {}  # job task → its last heartbeat

    @ray.method(enable_task_events=False)
    def add(self, frames: int) -> None:
        self.frames += frames

    @ray.method(enable_task_events=False)
    def total(self) -> int:
        return self.frames

    @ray.method(enable_task_events=False)
    def beat(self, task: str, where: tuple[str, int], moves: int, waiting: bool, step: str, blocked: str) -> None:
        """A job task's heartbeat (``driver/task.py``): ``progress.state()`` in the task
        ``task`` (its Ray task id), run by process ``where`` (node id, pid). It has
        progressed when it moved or waits."""
        last = self.beats.get(task)
        since = time.monotonic() if last is None or waiting or moves != last.moves else last.since
        self.beats[task] = Beat(where, moves, since, step, blocked)

    @ray.method(enable_task_events=False)
    def stalled(self, limit_s: float) -> list[tuple[str, Beat, float]]:
        """(task, its last beat, seconds since it progressed) of the job tasks whose last
        progress is over ``limit_s`` seconds old (a task that sends no heartbeat any more
        stays at its last)."""
        now = time.monotonic()
        return [(task, beat, now - beat.since) for task, beat in self.beats.items() if now - beat.since > limit_s]

    @ray.method(enable_task_events=False)
    def forget(self, task: str) -> None:
        """A job task ended (or was stopped): its heartbeats are no longer watched."""
        self.beats.pop(task, None)

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


class RayFuture:
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

    def __init__(self, service: RayService, label: str, method: str, *args: Any):
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
                with progress.waiting():  # on the worker: its chunk has its own time limit
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
                        f"({first_line(exc)}); check the cluster's network, then run the same manifest again",
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
                        f"({first_line(exc)}); check the cluster's health, then run the same manifest again",
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


# What a model worker short of memory can do without: fewer frames at once.
WORKER_MEMORY_FIX = (
    "a smaller --chunk-frames (the frames a model worker renders at once) needs less of it; on the CPU, fewer jobs "
    "beside the worker on its node leave it more ('ray start --num-cpus N'); then run the same manifest again"
)


def _worker_error(exc: RayTaskError, label: str) -> HeygemError:
    """The error a model worker raised, for its job: a heygem error as it was (its kind
    and message), memory run out (on the GPU or the CPU) ``out_of_memory``, anything else
    an ``engine`` error with its type and message."""
    cause = exc.cause
    if isinstance(cause, HeygemError):
        return cause
    text = str(cause).strip()
    first = text.splitlines()[0] if text else ""
    if says_out_of_memory(cause):
        return out_of_memory(f"{label}: its model worker ran out of memory ({first_line(cause)})", WORKER_MEMORY_FIX)
    return EngineError(
        f"{label}: the model worker raised {type(cause).__name__}: {first} (its traceback is in the "
        "worker's log: the dashboard, or 'ray logs worker-*.err' on its node): a fault in the model or its "
        "engine, which another --backend may not have",
        kind="engine",
    )


class RayService:
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
        ask(self.router.release, send)

    def lost(self, worker: str) -> None:
        ask(self.router.lost, worker)

    def how_ended(self, send: str) -> str:
        return cast(str, ask(self.router.was_rendering, send))

    def _while_none_serves(self, method: Any, subject: str, *args: Any) -> Any:
        """What the router's ``method`` answers, asked again while it answers None (no
        worker serves), up to ``wait_s``."""
        deadline = time.monotonic() + self._wait_s
        with progress.waiting():  # for a worker: timed here
            while (answer := ask(method, *args)) is None:
                if time.monotonic() >= deadline:
                    raise EngineError(
                        f"{subject} model worker was serving for {self._wait_s:g} s (all lost, or starting); "
                        "check the cluster's health, then run the same manifest again",
                        kind="worker_lost",
                    )
                time.sleep(POLL_S)
        return answer

    def submit(self, features: Features, given: np.ndarray, restore: RestoreInputs | None = None) -> ChunkFuture:
        # The job sends its chunks in order, each chunk_frames long but the last (job/compose.py).
        first = self._sent * self._chunk_frames
        label = f"chunk {self._sent} (frames {first}-{first + len(given) - 1})"
        self._sent += 1
        return RayFuture(self, label, "render", features, given, restore)

    def submit_reference(self, crops: np.ndarray) -> ReferenceFuture:
        self._references += 1
        return RayFuture(self, f"reference chunk {self._references - 1} ({len(crops)} frames)", "reference", crops)

    def reference_key(self) -> str:
        return cast(str, self._while_none_serves(self.router.reference_key, "no"))
