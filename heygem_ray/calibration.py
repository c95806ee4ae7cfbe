"""Calibration data for int8: runs of real frames from a manifest of the presenter.

Face crops from the templates of real references and the pack's audio features of real
speech, ``CALIBRATION_FRAMES`` frames to measure activation ranges on and
``HELD_OUT_FRAMES`` more for the accuracy gate, in runs of ``RUN_FRAMES`` consecutive
frames spread over every row of a manifest (default: the bundled examples). The graphs
are built from them in ``backends/int8.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from heygem_ray import media, storage
from heygem_ray.analyze import analyze
from heygem_ray.backends.int8 import RUN_FRAMES, CalibrationSet, Run
from heygem_ray.config import DetectorConfig, RenderConfig, default_download_dir, row_settings_problem
from heygem_ray.engines import Precision
from heygem_ray.errors import InputError
from heygem_ray.features import SAMPLE_RATE, Pcm
from heygem_ray.manifest import Job, read_manifest
from heygem_ray.packs import PackSpec
from heygem_ray.timeline import loop_indices

# Frames whose activations set the ranges (the default of --calibration-frames), and,
# kept apart for the gate, a quarter as many more.
CALIBRATION_FRAMES = 128
HELD_OUT_FRAMES = CALIBRATION_FRAMES // 4
# Seconds of each reference analysed for calibration (``analyze``'s ``reference_seconds``):
# the runs need a few seconds of each row, and a calibration manifest is often the batch's
# own, whose references may be whole recorded lectures; an hour of one would be analysed
# (and cached in the engine store) while its model worker starts.
CALIBRATION_REFERENCE_SECONDS = 60.0
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[1] / "examples" / "manifest.csv"


def calibration_set(
    pack: PackSpec,
    manifest: Path | None,
    cache_dir: Path,
    *,
    frames: int = CALIBRATION_FRAMES,
    held_out: int = HELD_OUT_FRAMES,
) -> CalibrationSet:
    """``frames + held_out`` frames (rounded up to whole runs) from the rows of
    ``manifest`` (columns audio and video; None: the bundled examples), in runs of
    ``RUN_FRAMES`` spread evenly over each row's output frames where the face is found,
    at most ``CALIBRATION_REFERENCE_SECONDS`` of each reference looped under its audio:
    from the row's own ``reference_start``, as far as its ``reference_seconds`` (the
    manifest's columns; the run's options do not apply: the engines built from these
    frames serve every run). Templates are cached in ``cache_dir``."""
    manifest = manifest or DEFAULT_CALIBRATION
    if not manifest.is_file():
        raise InputError(
            f"int8 calibration manifest {manifest} not found: pass --calibrate MANIFEST, a CSV with "
            "columns audio and video of your presenter and their speech",
            kind="missing_file",
        )
    jobs = read_manifest(manifest, cache_dir / "unused-outputs")
    calibrating, judging = math.ceil(frames / RUN_FRAMES), math.ceil(held_out / RUN_FRAMES)
    share = math.ceil((calibrating + judging) / len(jobs))
    runs: list[Run] = []
    for job in jobs:
        try:
            problem = job.problem or row_settings_problem(job.row_settings, RenderConfig())
            if problem is not None:
                raise problem
            runs.extend(_row_runs(pack, job, share, cache_dir))
        except InputError as e:
            hint = (f" (calibration analyses {CALIBRATION_REFERENCE_SECONDS:g} s of each reference at most, from "
                    "its row's reference_start column, or its beginning: the run's --reference-start does not apply "
                    "to it; where the presenter comes in later, give that row a reference_start, or give --calibrate "
                    "a manifest of takes that show the presenter)") if e.kind == "no_face" else ""  # fmt: skip
            raise InputError(f"calibration manifest {manifest}, {job.label}: {e.message}{hint}", kind=e.kind) from e
    # A fixed shuffle, so the held-out runs come from every row.
    order = np.random.default_rng(0).permutation(len(runs))[: calibrating + judging]
    return CalibrationSet(pack.name, tuple(runs[i] for i in order), judging, str(manifest))


def held_out_frames(frames: int) -> int:
    """Frames the gate judges when ``frames`` calibrate: a quarter as many, a run at least."""
    return max(RUN_FRAMES, frames // 4)


def calibration_for(
    pack: PackSpec, precisions: tuple[Precision, ...], manifest: Path | None, cache_dir: Path,
    frames: int = CALIBRATION_FRAMES,
) -> CalibrationSet | None:
    """The calibration set (``frames`` calibrating, ``held_out_frames(frames)`` for the gate)
    when one of ``precisions`` is int8 and the pack has int8 stages."""
    if "int8" not in precisions or not pack.int8_stages:
        return None
    return calibration_set(pack, manifest, cache_dir, frames=frames, held_out=held_out_frames(frames))


def _row_runs(pack: PackSpec, job: Job, runs: int, cache_dir: Path) -> list[Run]:
    """``runs`` runs of one row, evenly over its output frames, each with a face throughout:
    its reference from its own ``reference_start``, for ``CALIBRATION_REFERENCE_SECONDS``
    or its own ``reference_seconds`` where that is shorter."""
    video = storage.fetch(job.video, "reference", default_download_dir())
    audio = storage.fetch(job.audio, "audio", default_download_dir())
    own = RenderConfig().for_row(job.row_settings)
    seconds = min(own.reference_seconds or CALIBRATION_REFERENCE_SECONDS, CALIBRATION_REFERENCE_SECONDS)
    template, _ = analyze(video, pack.geometry, DetectorConfig(), cache_dir, reference_seconds=seconds,
                          reference_start=own.reference_start)  # fmt: skip
    with template:
        wav = media.load_audio(audio, SAMPLE_RATE)
        n = max(1, round(len(wav) / SAMPLE_RATE * template.fps))
        ref = loop_indices(n, template.frames, "pingpong")  # output frame → reference frame
        with_face = np.convolve(template.present[ref].astype(np.int64), np.ones(RUN_FRAMES, np.int64), "valid")
        starts = np.flatnonzero(with_face == RUN_FRAMES)
        if len(starts) == 0:
            raise InputError(f"no {RUN_FRAMES} consecutive frames of {video} with a face", kind="no_face")
        chunk = pack.features(Pcm.from_array(wav), template.fps, n)
        picked = starts[np.linspace(0, len(starts) - 1, runs).round().astype(np.int64)]
        return [Run(template.crops(ref[s : s + RUN_FRAMES]), chunk(range(s, s + RUN_FRAMES))) for s in picked]


# -- the stages on real frames ------------------------------------------------------------------
