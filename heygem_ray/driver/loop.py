"""The driver's loop: a manifest on Ray, where worker actors own the models and job tasks
run the recipe.

* One ``ModelWorker`` actor per GPU (``num_gpus=1``); on a cluster without GPUs, CPU
  actors instead, leaving cores for the job tasks.
* One Ray task per job runs ``job.render_job``; it sends chunks to the actors and
  composes their crops. Only crops, features and small metadata cross the object store.
* The driver keeps at most ``max_jobs_in_flight`` jobs submitted and hands each finished
  row on (it is kept on disk, not here), so a manifest of 100 000 rows needs little more
  driver memory than one of 100 (BENCHMARKS.md, "Memory").
* Every run ends (``Pool``): a worker that fails or dies while starting stops it at once;
  dead or wedged workers are replaced within a budget, and once none can serve it stops.
  A job task that stops progressing (``progress``: no byte moved and no wait on a worker
  for ``job_stall_timeout_s``) is stopped, and its row fails ``stalled``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import ray
from ray.exceptions import (
    OutOfMemoryError,
    RayError,
    RayTaskError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from heygem_ray import heap, metrics
from heygem_ray.config import RunConfig
from heygem_ray.driver.calls import (
    JOB_TASK,
    POLL_S,
    ask,
)
from heygem_ray.driver.pool import WATCH_S, Pool
from heygem_ray.driver.router import Router
from heygem_ray.driver.stop import raise_if_stopped
from heygem_ray.driver.task import job_task
from heygem_ray.errors import HeygemError, out_of_memory
from heygem_ray.manifest import Job
from heygem_ray.results import JobResult
from heygem_ray.steps import Step
from heygem_ray.worker_io import WorkerInfo

log = logging.getLogger(__name__)


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
        cast(Any, Router)
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
        infos = pool.watch(min(WATCH_S, start + timeout_s - now))
        raise_if_stopped()
        if infos:
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
                ref = job_task.options(name=JOB_TASK, max_retries=0).remote(job, cfg, pool.serving, router)
                pending[ref] = (job, attempt)
            if not pending:
                return
            if time.monotonic() >= next_watch:
                if joined := pool.watch():  # raises when no worker can serve any more
                    on_workers(joined)
                in_flight_cap = pool.jobs_cap()
                heap.release_free()  # see heap.py: the driver's memory stays flat over many jobs
                for job, attempt, result in _stop_stalled(pending, router, cfg):
                    if attempt < _attempts(result, cfg):
                        log.warning("%s (attempt %d); trying it again", result.error, attempt)
                        retry.append((job, attempt + 1))
                        continue
                    log.warning("%s", result.error)
                    result.config_hash = config_hash
                    on_result(result)
                    metrics.record_job(result)
                next_watch = time.monotonic() + WATCH_S
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            raise_if_stopped()
            for ref in done:
                router.forget.remote(ref.task_id().hex())
                if (row := _ended(ref, pending, cfg, retry)) is not None:
                    row.config_hash = config_hash
                    on_result(row)
                    metrics.record_job(row)  # here, where a row is final: a retried attempt is not a job
            on_frames(ask(router.total))
    finally:
        try:
            if pending:  # only when the run stops early
                _keep_ended(pending, cfg, config_hash, on_result)
        finally:  # (also where a signal came meanwhile)
            for ref in pending:  # tasks that would report to no one
                ray.cancel(ref)


def _ended(ref: ray.ObjectRef, pending: dict[ray.ObjectRef, tuple[Job, int]], cfg: RunConfig,
           retry: list[tuple[Job, int]] | None) -> JobResult | None:  # fmt: skip
    """The row of the job whose task ``ref`` ended (taken from ``pending``), or None where
    the job is given another attempt: put in ``retry`` and said in the log (not when
    ``retry`` is None: the run is stopping, and the job says ``stopped``)."""
    job, attempt = pending.pop(ref)
    again = None
    try:
        result = ray.get(ref)
    except RayTaskError as exc:  # raised by the task itself, outside render_job: a bug
        result = _task_error(job, cfg, exc)
    except RayError as exc:  # the task was lost (its worker or node died)
        again = f"{job.label}: attempt {attempt} lost ({type(exc).__name__}); trying again"
        result = _lost(job, cfg, exc)
    else:
        if result.error_kind == "worker_lost":  # every worker the task was given is gone
            again = f"{job.label}: attempt {attempt} lost its model workers; trying again"
        elif result.error_kind == "stalled":  # its ffmpeg stalled
            again = f"{result.error} (attempt {attempt}); trying it again"
    if again is not None and attempt < _attempts(result, cfg):
        if retry is not None:
            log.warning("%s", again)
            retry.append((job, attempt + 1))
        return None
    result.attempts, result.ray_task_id = attempt, ref.task_id().hex()
    return result


def _keep_ended(pending: dict[ray.ObjectRef, tuple[Job, int]], cfg: RunConfig, config_hash: str,
                on_result: Callable[[JobResult], None]) -> None:  # fmt: skip
    """Hand on the rows of the jobs in ``pending`` whose tasks ended but were not read yet,
    as the run stops: their MP4s are published, and a row kept means a rerun does not
    render them again. A job that would have been tried again says ``stopped``, as does
    one whose row cannot be kept; where its storage refused it, so does every job after it:
    the cause of the stop may be the same (a store that stopped answering, where each row
    would wait a minute or more for it)."""
    try:
        # (fetch_local=False: ready where they are; a row on another node is fetched by its get)
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0, fetch_local=False)
    except RayError as exc:  # Ray itself may be why the run stops
        log.warning("the jobs that ended as the run stopped could not be read: %s", exc)
        return
    for i, ref in enumerate(ready):
        if (result := _ended(ref, pending, cfg, retry=None)) is None:
            continue
        result.config_hash = config_hash
        try:
            on_result(result)
        except Exception as exc:  # the run is stopping for a reason of its own, maybe this one
            storage_failed = isinstance(exc, HeygemError) and exc.kind == "storage"
            rest = len(ready) - i - 1 if storage_failed else 0
            log.warning("row %d (job %r) ended as the run stopped; handing on its row failed: %s%s", result.row,
                        result.job_id, getattr(exc, "message", exc),
                        f"; the {rest} other jobs that ended too say 'stopped'" if rest else "")  # fmt: skip
            if storage_failed:
                return
            continue
        metrics.record_job(result)


# Attempts a job that stalls is given (at most ``max_attempts``): a stall is most often its
# node's (a network mount that stopped answering, a process paused), and the job may move
# on another node, or later; a job that stalls again fails ``stalled``.
STALL_ATTEMPTS = 2


def _attempts(result: JobResult, cfg: RunConfig) -> int:
    """The attempts a job whose last attempt ended with ``result`` may have in all."""
    return min(STALL_ATTEMPTS, cfg.max_attempts) if result.error_kind == "stalled" else cfg.max_attempts


def _stop_stalled(
    pending: dict[ray.ObjectRef, tuple[Job, int]], router: Any, cfg: RunConfig
) -> list[tuple[Job, int, JobResult]]:
    """The jobs, attempts and rows of the job tasks the router names as stalled (no
    progress for ``job_stall_timeout_s``: ``progress``), each task stopped and taken from
    ``pending``. One that ended meanwhile is left for the loop to read."""
    by_task = {ref.task_id().hex(): ref for ref in pending}
    rows = []
    for task, beat, quiet_s in ask(router.stalled, cfg.job_stall_timeout_s):
        ref, step = by_task.get(task), beat.step
        if ref is None:  # ended, and already read
            router.forget.remote(task)
            continue
        if ray.wait([ref], timeout=0)[0]:
            continue
        # Cancelled, and its process killed on its node: a paused one dies now, one stuck
        # in the kernel (a dead mount) when its call returns, and writes nothing after.
        ray.cancel(ref, force=True)
        node, pid = beat.where
        _kill.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(pid)
        router.forget.remote(task)
        job, attempt = pending.pop(ref)
        result = JobResult.for_job(job, cfg.render.pack)
        result.error_kind, result.error_step = "stalled", cast(Step, step)
        again = f", as at each of its {attempt} attempts" if attempt > 1 else ""
        why = (
            f"it waited for {beat.blocked}; its task was stopped. Then run the same manifest again"
            if beat.blocked
            else "it read and wrote nothing, and waited on no model worker; its task was stopped. A file system that "
            "stopped answering (a network mount) or a process paused on its node does this; check the node, then run "
            "the same manifest again"
        )
        result.error = (
            f"{job.label}: made no progress for {quiet_s:.0f} s in step {step} (--job-stall-timeout "
            f"{cfg.job_stall_timeout_s:g}){again}: {why}"
        )
        result.attempts, result.ray_task_id = attempt, task
        rows.append((job, attempt, result))
    return rows


@ray.remote(num_cpus=0, max_retries=0)
def _kill(pid: int) -> None:
    """SIGKILL process ``pid`` of this node if it is still a Ray worker (not a pid reused)."""
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
            os.kill(pid, signal.SIGKILL)
    except OSError:  # gone already
        pass


def _task_error(job: Job, cfg: RunConfig, exc: RayTaskError) -> JobResult:
    """A job whose task raised outside ``render_job`` (which turns every error into its
    row): a failed row, not retried (it would raise again)."""
    result = JobResult.for_job(job, cfg.render.pack)
    result.error_kind, result.error_step = "internal", "plan"
    result.error = (
        f"{job.label}: internal error in its Ray task: {type(exc.cause).__name__}: {exc.cause} "
        "(a bug in heygem-ray; please report it with this message)"
    )
    return result


def _lost(job: Job, cfg: RunConfig, exc: RayError) -> JobResult:
    """A job whose task or worker died: a failed row that says so (``out_of_memory`` where
    Ray's memory monitor stopped it, on a node short of memory)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    result = JobResult.for_job(job, cfg.render.pack)
    if isinstance(exc, OutOfMemoryError):
        said = out_of_memory(f"{job.label}: Ray stopped its task {cfg.max_attempts} times for want of memory on its "
                             f"node ({first})")  # fmt: skip
        result.error_kind, result.error_step, result.error = said.kind, "render", said.message
        return result
    result.error_kind, result.error_step = "worker_lost", "render"
    result.error = (
        f"{job.label}: the Ray task or worker running it died {cfg.max_attempts} times "
        f"({type(exc).__name__}: {first}); check the cluster's health, then run the same manifest again"
    )
    return result
