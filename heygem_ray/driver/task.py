"""The job task: one manifest row run through the recipe on a Ray worker process.

It sends its chunks to the model workers through the router's client (``RayService``)
and imports nothing of the pool, the model workers or their networks: a job task's
process never loads PyTorch or the runtimes (decoding, features and compose need
neither), which saves each of them seconds of start-up and hundreds of MB.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cv2
import ray

from heygem_ray import heap, metrics, progress
from heygem_ray.config import RunConfig
from heygem_ray.driver.router import RayService
from heygem_ray.job import render_job
from heygem_ray.joblog import fields, job_logging
from heygem_ray.manifest import Job
from heygem_ray.results import JobResult

log = logging.getLogger(__name__)


# Heartbeats a job-stall timeout: the driver finds a stalled job within a quarter of it late.
BEATS_PER_TIMEOUT = 4
# OpenCV's threads in a job task's process. Its wheel's own pool has a thread per core of the
# node (it reads no OMP_NUM_THREADS, which Ray sets), in every job's process, while a node
# runs a job per core. Analysing camera-like 1080p with 17 on 2 cores (sixteen such pools
# on 16 cores) took 1.07–1.11× the CPU a frame of 2 in two runs, and no less wall time
# (bench/bench_opencv_threads.py). As for x264 and the reference decoder, two let a job
# alone on a node use two cores.
OPENCV_THREADS = 2


@ray.remote(num_cpus=1)
def job_task(job: Job, cfg: RunConfig, workers: int, router: Any) -> JobResult:
    def frames_done(frames: int) -> None:
        router.add.remote(frames)
        metrics.record_frames(frames, cfg.render.pack)

    share_cores()
    service = RayService(router, workers, cfg.render.chunk_frames, cfg.workers_ready_timeout_s)
    with job_logging(job.job_id), _heartbeat(router, cfg.job_stall_timeout_s / BEATS_PER_TIMEOUT):
        # The run's render settings, with any the row gives itself (checked when the run began)
        result = render_job(job, cfg.for_row(job.row_settings).render, cfg.cache_dir, service, on_frames=frames_done)
        _log_result(result)
    heap.release_free()  # Ray reuses this process for later jobs: hand back what this one freed
    return result


def share_cores() -> None:
    """Size this process's thread pools for a node that runs a job per core."""
    cv2.setNumThreads(OPENCV_THREADS)


@contextmanager
def _heartbeat(router: Any, every_s: float) -> Iterator[None]:
    """Report this job's ``progress.state()`` to the router every ``every_s`` seconds and
    when its step changes (from now, under this task's id) while the block runs, from a
    thread of its own."""
    context = ray.get_runtime_context()
    task, where = context.get_task_id(), (context.get_node_id(), os.getpid())
    stop = threading.Event()

    def beat() -> None:
        while True:
            progress.step_changed.clear()
            if stop.is_set():  # looked at after the clear: a stop set just before it is not missed
                return
            router.beat.remote(task, where, *progress.state())
            progress.step_changed.wait(every_s)

    beating = threading.Thread(target=beat, name="job-heartbeat", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        progress.step_changed.set()  # wakes it to stop
        beating.join()


def _log_result(r: JobResult) -> None:
    """One line per job (the record names the job): a warning if it failed."""
    if r.status == "ok":
        log.info("%s", fields(status=r.status, frames=r.frames, seconds=r.seconds,
                              realtime_factor=r.realtime_factor, backend=r.backend, node=r.node))
    else:
        log.warning("%s", fields(status=r.status, step=r.error_step, kind=r.error_kind, error=r.error))
