"""One job, start to finish: the numbered recipe, free of Ray.

``render_job`` is called by the driver's job task (``driver/loop.py``) and, in tests,
``preview`` and for debugging, directly with an in-process model service. Whatever goes
wrong becomes the job's result row; nothing escapes to stop the batch.
"""

from __future__ import annotations

import logging
import platform
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from heygem_ray import media, storage
from heygem_ray.analyze import analyze
from heygem_ray.checks import Reference, check_reference, mouth_box, notes, still_span
from heygem_ray.config import InputLimits, RenderConfig, default_download_dir
from heygem_ray.errors import (
    HeygemError,
    InputError,
    InternalError,
    first_line,
    out_of_memory,
    says_out_of_memory,
    storage_error,
)
from heygem_ray.features import HEARD_MIN_S, SAMPLE_RATE, Pcm, heard_seconds, silent_audio
from heygem_ray.job.compose import render_and_compose
from heygem_ray.job.context import JobContext, StepClock
from heygem_ray.job.reference import reference_inputs
from heygem_ray.job.scratch import job_scratch
from heygem_ray.job.service import ModelService
from heygem_ray.job.tiles import restore_inputs
from heygem_ray.manifest import Job
from heygem_ray.packs import get_pack
from heygem_ray.results import JobResult
from heygem_ray.steps import TIMED
from heygem_ray.timeline import plan

log = logging.getLogger(__name__)


def read_speech(audio: Path, name: object, out: Path, limits: InputLimits) -> Pcm:
    """``audio`` (``name``, as the manifest gives it) decoded to 16 kHz mono into the file
    ``out``, as a job reads its speech: audio longer than ``limits`` allow is ``too_large``,
    and audio with no sound in it ``silent_audio`` unless they allow it (also what
    ``preview --manifest`` says of tonight's rows)."""
    media.decode_audio(audio, out, SAMPLE_RATE, max_seconds=limits.max_audio_seconds)
    pcm = Pcm.from_file(out)
    if not limits.allow_silent_audio and heard_seconds(pcm) < HEARD_MIN_S:
        raise silent_audio(name, pcm.samples / SAMPLE_RATE, media.audio_tracks(audio))
    return pcm


def render_job(
    job: Job,
    cfg: RenderConfig,
    cache_dir: Path,
    models: ModelService,
    on_frames: Callable[[int], None] = lambda n: None,
) -> JobResult:
    """Render ``job`` to its MP4 and describe what happened."""
    t_start = time.perf_counter()
    pack = get_pack(cfg.pack)
    result = JobResult.for_job(job, cfg.pack)
    result.restore = cfg.restore
    steps = StepClock()
    try:
        if job.problem is not None:
            raise job.problem
        if job.output is None:
            raise InternalError(f"{job.label} has neither an output nor a problem")
        with job_scratch() as scratch, ExitStack() as held:
            # 1. fetch the audio (downloaded first when in a bucket) and decode it to 16 kHz
            #    mono, into a file (a missing, empty, unreadable, too long or silent file
            #    stops here)
            with steps("audio"):
                audio = storage.fetch(job.audio, "audio", default_download_dir())
                pcm = read_speech(audio, job.audio, Path(scratch) / "audio.f32", cfg.limits)
            # 2. analyze the reference (a cached template when seen before)
            with steps("analyze"):
                video = storage.fetch(job.video, "reference", default_download_dir())
                template, result.template_cached = analyze(
                    video, pack.geometry, cfg.detector, cache_dir, cfg.limits, max_resolution=cfg.max_resolution,
                    reference_seconds=cfg.reference_seconds, reference_start=cfg.reference_start, max_fps=cfg.max_fps,
                )  # fmt: skip
                held.enter_context(template)  # its frame store and crops, held open to the end
                result.decoder = template.decoder
            # 3. check the reference (the row's warnings) and plan the output frames (over a
            #    talking take's still stretch for warp); features are computed a chunk at a
            #    time in step 5
            with steps("features"):
                reference = Reference.of(template)
                audio_seconds = pcm.samples / SAMPLE_RATE
                checks = check_reference(reference, pack, cfg.detector.min_face, cfg.loop, audio_seconds, cfg.restore)
                result.reference_notes = notes(checks)
                span = still_span(reference) if pack.keeps_reference_mouth else None
                timeline = plan(audio_seconds, template.frames, template.fps, cfg.loop, template.is_image, span)
                features = pack.features(pcm, template.fps, timeline.frames)
            # 4. what the render stage gets per reference frame: its crop, or the pack's
            #    reference-stage output for it (computed on the workers once per template);
            #    to restore faces, also its face aligned to the network's tile (kept likewise)
            with steps("analyze"):
                given = reference_inputs(template, pack, models, timeline, cfg.chunk_frames, Path(scratch))
                restore = restore_inputs(template, timeline, Path(scratch)) if cfg.restore != "none" else None
            # 5+6. motion, render (and restore) per chunk on the workers, composed and encoded here
            composed = render_and_compose(JobContext(
                job.output, audio, cfg, pack, models, template, timeline, features, given, restore, steps, scratch,
                on_frames,
            ))
            last = composed.worker
        # Which file was published, for a rerun to tell it from any other put there later.
        published = storage.stat(job.output)
        if published is None:
            raise InputError(f"{job.output} was gone right after it was written: check what else writes to "
                             "the output folder", kind="missing_file")  # fmt: skip
        result.output_bytes, result.output_mtime_ns = published.size, published.mtime_ns
        result.status = "ok"
        result.frames = timeline.frames
        result.face_lost_frames = int(np.count_nonzero(~template.present[timeline.ref_index]))
        result.mouth_box = mouth_box(reference, timeline.ref_index)
        result.audio_seconds = pcm.samples / SAMPLE_RATE
        result.backend, result.precision, result.backend_note = last.backend, last.precision, last.backend_note
        result.engine_key, result.calibration = last.engine_key, last.calibration
        result.restore_backend, result.restore_sample = last.restore_backend or None, composed.restore_sample
        result.node, result.gpu = last.node, last.device.gpu
        result.compute_capability = last.device.compute_capability
        result.encoder = composed.encoder
    except Exception as exc:
        known = exc if isinstance(exc, HeygemError) else storage_error(exc) if isinstance(exc, OSError) else None
        if known is None and says_out_of_memory(exc):  # a node short of memory (not ours to prevent)
            known = out_of_memory(f"its job ran out of memory on node {platform.node()} in step {steps.current} "
                                  f"({first_line(exc)})")  # fmt: skip
        if known is not None:  # the user's to fix: a bad file, a full disk, a read-only folder, …
            result.error_kind, result.error_step = known.kind, steps.current
            result.error = f"{job.label}: {known.message}"
        else:  # a bug: keep the batch going, keep the evidence
            log.error("%s failed in %s:\n%s", job.label, steps.current, traceback.format_exc())
            result.error_kind, result.error_step = "internal", steps.current
            result.error = (
                f"{job.label}: internal error in step {steps.current}: {type(exc).__name__}: {exc} "
                "(a bug in heygem-ray; please report it with this message)"
            )
    result.seconds = time.perf_counter() - t_start
    for name in TIMED:
        setattr(result, f"{name}_s", steps.seconds.get(name))
    if result.status == "ok" and result.seconds > 0:
        result.realtime_factor = result.frames / float(template.fps) / result.seconds
    return result
