"""Custom Ray metrics: what a run is doing, for Prometheus, Grafana and the Ray dashboard.

Each number is recorded with ``ray.util.metrics`` in the process that knows it: the
driver records each job once its row is final (status, step latencies, realtime factor;
an attempt that is tried again is not counted), the job task counts frames as it composes
them, the model worker counts engine builds and backend fallbacks as it starts. Ray's
metrics agent on every node exports them on its Prometheus endpoint with the prefix
``ray_``; counters also get the suffix ``_total``:

==========================================  =========  ===============================
exported name                               type       tags
==========================================  =========  ===============================
``ray_heygem_jobs_finished_total``          counter    status, error_kind, pack
``ray_heygem_frames_rendered_total``        counter    pack
``ray_heygem_step_seconds``                 histogram  step, pack, backend
``ray_heygem_job_realtime_factor``          histogram  pack, backend
``ray_heygem_engine_builds_total``          counter    backend, stage, precision
``ray_heygem_backend_fallbacks_total``      counter    from_backend, to_backend
==========================================  =========  ===============================

Ray also adds its own tags (``NodeAddress``, ``WorkerId``, ``SessionName``, …). It
exports a histogram's ``_sum`` from bucket midpoints, so sums (and averages) are
approximate; counts and buckets are exact.

Nothing happens at import: the metric objects are made on first use in each process and
kept for its life. Every ``record_*`` function does nothing in a process that is not
connected to Ray, so the recipe, the model worker and ``heygem-ray engines build`` run
unchanged without a cluster (and this module never imports Ray by itself).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heygem_ray.steps import TIMED

if TYPE_CHECKING:
    from heygem_ray.results import JobResult

# Seconds one step of one job takes (each of steps.TIMED, the results table's ``<step>_s``):
# 10 ms (a cached template) to 10 min (a long video).
STEP_SECONDS_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0]
# Seconds of video per wall-clock second of the job; above 1 is faster than real time.
REALTIME_FACTOR_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


@dataclass(frozen=True)
class _Metrics:
    jobs_finished: Any  # ray.util.metrics.Counter
    frames_rendered: Any  # Counter
    step_seconds: Any  # Histogram
    realtime_factor: Any  # Histogram
    engine_builds: Any  # Counter
    backend_fallbacks: Any  # Counter


@functools.cache
def _make() -> _Metrics:
    from ray.util.metrics import Counter, Histogram

    return _Metrics(
        jobs_finished=Counter(
            "heygem_jobs_finished",
            description="Jobs (manifest rows) that ended, by status (ok, failed) and error kind.",
            tag_keys=("status", "error_kind", "pack"),
        ),
        frames_rendered=Counter(
            "heygem_frames_rendered",
            description="Output video frames composed and encoded.",
            tag_keys=("pack",),
        ),
        step_seconds=Histogram(
            "heygem_step_seconds",
            description="Seconds one job spent in one step (motion and render: summed over its chunks).",
            boundaries=STEP_SECONDS_BOUNDARIES,
            tag_keys=("step", "pack", "backend"),
        ),
        realtime_factor=Histogram(
            "heygem_job_realtime_factor",
            description="Seconds of video rendered per second of the job's wall time, per finished job.",
            boundaries=REALTIME_FACTOR_BOUNDARIES,
            tag_keys=("pack", "backend"),
        ),
        engine_builds=Counter(
            "heygem_engine_builds",
            description="Engine-store artifacts built by workers (ONNX exports, TensorRT engines).",
            tag_keys=("backend", "stage", "precision"),
        ),
        backend_fallbacks=Counter(
            "heygem_backend_fallbacks",
            description="Model workers on which --backend auto skipped a backend for the next one.",
            tag_keys=("from_backend", "to_backend"),
        ),
    )


def _metrics() -> _Metrics | None:
    """The metric objects, or None where this process is not connected to Ray."""
    ray = sys.modules.get("ray")  # not imported ⇒ not connected: never import it here
    if ray is None or not ray.is_initialized():
        return None
    return _make()


def record_job(result: JobResult) -> None:
    """One job's final row: its status and, for a rendered job, its step times and speed."""
    m = _metrics()
    if m is None:
        return
    m.jobs_finished.inc(tags={"status": result.status, "error_kind": result.error_kind or "none", "pack": result.pack})
    if result.status != "ok":
        return
    backend = result.backend or "unknown"
    for step in TIMED:
        seconds = getattr(result, f"{step}_s")
        if seconds is not None:
            m.step_seconds.observe(seconds, tags={"step": step, "pack": result.pack, "backend": backend})
    if result.realtime_factor is not None:
        m.realtime_factor.observe(result.realtime_factor, tags={"pack": result.pack, "backend": backend})


def record_frames(frames: int, pack: str) -> None:
    """``frames`` more output frames composed (called per chunk, so rates are live)."""
    m = _metrics()
    if m is not None and frames > 0:
        m.frames_rendered.inc(frames, tags={"pack": pack})


def record_engine_build(backend: str, stage: str, precision: str) -> None:
    """An artifact was built into the engine store (not found there)."""
    m = _metrics()
    if m is not None:
        m.engine_builds.inc(tags={"backend": backend, "stage": stage, "precision": precision})


def record_backend_fallback(from_backend: str, to_backend: str) -> None:
    """``--backend auto`` could not use ``from_backend`` on this worker and went on to ``to_backend``."""
    m = _metrics()
    if m is not None:
        m.backend_fallbacks.inc(tags={"from_backend": from_backend, "to_backend": to_backend})
