"""The run's model workers: where they go, which serve, which are dead or wedged, and
their replacements within a budget."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import ray
from ray.exceptions import (
    ActorUnavailableError,
    ActorUnschedulableError,
    RayError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from heygem_ray.config import RunConfig, WorkerDevice
from heygem_ray.driver.actor import ActorWorker
from heygem_ray.driver.calls import (
    ask,
    death,
)
from heygem_ray.errors import HeygemError, WorkersUnavailable
from heygem_ray.worker_io import WorkerInfo

log = logging.getLogger(__name__)


# Seconds between the pool's checks of its workers (alive, wedged, their nodes still there).
WATCH_S = 2.0
# Ray never restarts a worker actor (max_restarts 0): the pool starts another in its place
# (``Pool.watch``), so one budget counts every death, and a worker that dies while
# starting is seen at once rather than restarted behind the driver's back. (Ray also
# logs an error-level line for every actor created with restarts whose constructor
# arguments hold an object reference: the router's handle is one.) Ray does not send a
# dead worker's calls again by itself either: the job does (``router.RayFuture``), where it can
# tell the chunk that was rendering from those queued behind it. (A chunk is a pure
# function of its arguments, so rendering it again is safe.)
ACTOR_OPTIONS = {"max_restarts": 0, "max_task_retries": 0}


Kind = Literal["gpu", "cpu"]


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
        self._remote: Any = ray.remote(ActorWorker)
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
                        f"model worker {m.name} died while starting ({death(exc)}); the worker logs "
                        "('ray logs worker-*.err' on its node, or the dashboard) say why; a process killed "
                        "while loading models is often the OOM killer",
                        kind="worker_start",
                    ) from None
                self._drop(m, f"died ({death(exc)})", kill=False)
                continue
            if not m.serving:
                m.serving = self.served = True
                joined.append(cast(WorkerInfo, info))
            m.check = m.actor.alive.remote()
        return joined

    def _drop_overdue(self) -> None:
        """Stop the workers whose chunk has rendered past its limit: wedged."""
        for name, seconds, frames, limit in ask(self._router.overdue):
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
        ask(self._router.lost, m.name)
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
            options: dict[str, Any] = {"num_cpus": 0, **ACTOR_OPTIONS}
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
        return cast(int, ask(self._router.placed))

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
