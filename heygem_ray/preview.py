"""``heygem-ray preview``: look at a presenter's take before a night's batch uses it.

One reference, on this machine, no cluster: it is analysed through the template cache
(the same key a batch uses, so a preview warms tonight's batch), checked
(``checks.py``), and the first few seconds of speech rendered with the chosen pack by a
model worker in this process. Three files come out, named after the reference:

* ``<stem>-sheet.png``: a contact sheet, frames across the take with the presenter's
  face box, the pack's crop box and the mouth point drawn, frames without the face
  marked, and a strip below: where the face was found, followed or lost, and how open
  the mouth is, frame by frame (with the still stretch warp loops over, if any);
* ``<stem>-preview.mp4``: the reference and the render side by side, with the sound;
* ``<stem>-checks.json``: the verdict and each check (``Check.as_dict``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import wave
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from heygem_ray import media, storage
from heygem_ray.analyze import analyze
from heygem_ray.checks import Check, Level, Reference, check_reference, opening, still_span, verdict
from heygem_ray.config import RenderConfig, default_download_dir, row_settings_problem
from heygem_ray.errors import HeygemError, InputError, InternalError, PresenterLater, storage_errors
from heygem_ray.face import looks
from heygem_ray.features import SAMPLE_RATE
from heygem_ray.job import InProcessService, render_job
from heygem_ray.job.compose import PARTIAL_SUFFIX
from heygem_ray.job.recipe import read_speech
from heygem_ray.manifest import Job, read_manifest, write_with_settings
from heygem_ray.packs import PackSpec, get_pack
from heygem_ray.storage import Location, Uri
from heygem_ray.template.files import Template
from heygem_ray.timeline import plan
from heygem_ray.worker import ModelWorker

# The speech rendered when no audio is given: the bundled lesson.
BUNDLED_SPEECH = Path(__file__).resolve().parents[1] / "examples" / "lesson1.wav"
SHEET_FRAMES = 12  # frames on the contact sheet: 4 across, 3 down
SHEET_COLUMNS = 4
TILE_WIDTH = 360  # pixels per frame on the sheet
STRIP_HEIGHT = 90  # the strip under the frames: the face row and the mouth's opening
VIDEO_HEIGHT = 360  # each half of the side-by-side video, pixels tall
# BGR colours, the same on the sheet and in docs/preview.md.
FACE, CROP, MOUTH, LOST, FOLLOWED, STILL = (0, 200, 0), (255, 140, 0), (0, 0, 255), (0, 0, 220), (0, 200, 230), (200, 200, 200)
_LEVEL_COLOUR = {"ok": (0, 160, 0), "warn": (0, 160, 230), "fail": (0, 0, 220)}


@dataclass(frozen=True)
class Preview:
    """What ``preview`` found and wrote."""

    checks: list[Check]
    sheet: Path
    video: Path
    report: Path  # the JSON
    span: tuple[int, int] | None  # the still stretch warp loops over, frames

    @property
    def verdict(self) -> Level:
        return verdict(self.checks)


def preview(
    reference: Path,
    audio: Path | None,
    cfg: RenderConfig,
    cache_dir: Path,
    engines_dir: Location,
    out_dir: Path,
    seconds: float = 5.0,
    name: str | None = None,
    worker: Callable[[], ModelWorker] | None = None,
    inputs: Collection[Path] = (),
) -> Preview:
    """Check ``reference`` for ``cfg``'s pack and write the sheet, the video and the JSON
    into ``out_dir``, named after ``name`` (default: the reference's stem). ``worker`` gives
    the model worker that renders (default: one started for ``cfg``, once the reference is
    analysed). Raises ``HeygemError`` (an unreadable file, no face, a worker that cannot
    start; a file it would write that is ``reference``, ``audio`` or one of ``inputs``):
    nothing is written then but what was finished."""
    if not 0 < seconds < math.inf:  # (nan too)
        raise InputError(f"--seconds must be a number of seconds above 0, got {seconds:g}", kind="bad_argument")
    pack = get_pack(cfg.pack)
    speech = audio or BUNDLED_SPEECH
    stem = name or reference.stem
    sheet, video, report = (out_dir / f"{stem}-{end}" for end in ("sheet.png", "preview.mp4", "checks.json"))
    for dest in (sheet, video, report):
        refuse_input(dest, (reference, speech, *inputs))
    with storage_errors(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    # One preview writes a name in a folder at a time (a second waits): its three files are
    # of one preview, and none removes another's video as it is written.
    with storage.file_lock(out_dir / f".{stem}.preview.lock"):
        with storage_errors(out_dir):
            # An earlier preview's files of this name: replaced, or gone where this one fails
            # (a checks file saying "ok" of a take since damaged would mislead a script).
            for old in (sheet, video, report, *storage.staged_leftovers([video], PARTIAL_SUFFIX)):
                old.unlink(missing_ok=True)
        return _preview(reference, speech, audio is not None, cfg, pack, cache_dir, engines_dir, worker,
                        (sheet, video, report), seconds)  # fmt: skip


def _preview(
    reference: Path, speech: Path, given: bool, cfg: RenderConfig, pack: PackSpec, cache_dir: Path,
    engines_dir: Location, worker: Callable[[], ModelWorker] | None, files: tuple[Path, Path, Path], seconds: float,
) -> Preview:  # fmt: skip
    """``preview``'s work, its output names held: analysis, the checks, the three files
    (the sheet, the video, the checks), ``given``: whether the audio was given."""
    sheet, video, report = files
    out_dir = sheet.parent
    template, _ = analyze(media.require_file(reference, "reference"), pack.geometry, cfg.detector, cache_dir,
                          cfg.limits, max_resolution=cfg.max_resolution, reference_seconds=cfg.reference_seconds,
                          reference_start=cfg.reference_start, max_fps=cfg.max_fps)  # fmt: skip
    with template:
        ref = Reference.of(template)
        audio_seconds = media.probe_audio(speech).duration if given else None
        checks = check_reference(ref, pack, cfg.detector.min_face, cfg.loop, audio_seconds)
        if given and (refused := _audio_refused(speech, cfg)) is not None:
            checks.append(refused)
        span = still_span(ref) if pack.keeps_reference_mouth else None
        with storage_errors(out_dir):
            _write_png(sheet, contact_sheet(reference.name, template, ref, pack, checks, span))
            started = (worker or functools.partial(_model_worker, cfg, engines_dir))()
            _side_by_side(reference, speech, seconds, template, span, pack, cfg, cache_dir, started, video)
            storage.write_bytes(report, (json.dumps({
                "reference": str(reference), "pack": pack.name, "verdict": verdict(checks),
                "audio": str(speech), "audio_seconds": audio_seconds,
                "still_span_s": None if span is None else [round(f / float(ref.fps), 3) for f in span],
                "checks": [c.as_dict() for c in checks], "contact_sheet": sheet.name, "video": video.name,
            }, indent=1) + "\n").encode())  # fmt: skip
        return Preview(checks, sheet, video, report, span)


def _audio_refused(speech: Path, cfg: RenderConfig) -> Check | None:
    """The ``audio`` check's failure where tonight's job would refuse ``speech`` as it reads
    it (silent, unless ``cfg`` allows it; cut short), or None where it would not: the
    preview itself renders its first seconds as they are."""
    with tempfile.TemporaryDirectory(prefix="heygem-preview-") as scratch:
        try:
            read_speech(speech, speech, Path(scratch) / "audio.f32", cfg.limits)
        except InputError as exc:
            if exc.kind == "storage":  # this machine's scratch disk, not the audio
                raise
            return Check("audio", "fail", f"submit would fail its row ({exc.kind})", exc.message)
    return None


# -- a manifest's references ------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """A reference of a manifest, checked at the render settings of the rows that use it so."""

    video: Location
    rows: tuple[int, ...]  # the manifest's data rows (from 1)
    cfg: RenderConfig  # the run's settings, with those rows' own (``manifest.ROW_SETTINGS``)
    found: Preview | None  # None where it could not be checked: ``error`` says why
    error: HeygemError | None = None

    @property
    def verdict(self) -> Level:
        return "fail" if self.found is None else self.found.verdict

    @property
    def advised(self) -> dict[str, float]:
        """The render settings its checks advise (``Check.settings``: ``lost``'s stretch),
        or its error does (``PresenterLater``: where the presenter comes in)."""
        if isinstance(self.error, PresenterLater):
            return dict(self.error.settings)
        return {k: v for check in (self.found.checks if self.found else []) for k, v in check.settings.items()}


@dataclass(frozen=True)
class ManifestPreview:
    """What ``preview_manifest`` found and wrote."""

    references: list[Checked]
    problems: list[tuple[Job, HeygemError]]  # rows that cannot be rendered as they are, their reference aside
    filled: dict[int, dict[str, float]] = field(default_factory=dict)  # data row → settings written for it
    manifest: Path | None = None  # the manifest with them (None: nothing advised)

    @property
    def verdict(self) -> Level:
        """The worst of its references' verdicts; ``fail`` where a row cannot be rendered."""
        levels: list[Level] = [c.verdict for c in self.references] + (["fail"] if self.problems else [])
        return max(levels, key=("ok", "warn", "fail").index, default="ok")


def preview_manifest(
    manifest: Location,
    cfg: RenderConfig,
    cache_dir: Path,
    engines_dir: Location,
    out_dir: Path,
    seconds: float = 5.0,
    checked: Callable[[Checked], None] = lambda _: None,
) -> ManifestPreview:
    """Check every reference ``manifest`` names as ``preview`` does, once per render
    settings its rows give it (their own ``reference_start`` and ``reference_seconds`` over
    ``cfg``'s), in the order they first appear, with the longest of those rows' audio (the
    one the length check is most about: every local file is measured, and of the objects in
    a bucket only the first, fetched); ``checked`` is called with each as it is done.
    Each writes its files into ``out_dir`` named after its video (``-2``, ``-3`` where
    names repeat). A reference that cannot be used fails, and the others are checked; a
    row that cannot be rendered (a bad cell, its audio unreadable) is a problem of its own.
    Where a reference's checks advise settings (``lost``: the stretch with the presenter),
    its rows get them in a copy of the manifest, ``out_dir``/<manifest stem>-previewed.csv
    (the manifest itself is never written). One model worker renders for them all (a row's
    own settings are the reference's, not the model's), started at the first reference
    analysed. Raises ``HeygemError`` where the manifest cannot be read."""
    if not 0 < seconds < math.inf:  # (nan too)
        raise InputError(f"--seconds must be a number of seconds above 0, got {seconds:g}", kind="bad_argument")
    groups: dict[tuple[str, float, float], list[Job]] = {}
    problems: list[tuple[Job, HeygemError]] = []
    rows = read_manifest(manifest, out_dir / ".outputs")  # (where its videos would go: unused)
    inputs = [*(loc for j in rows for loc in (j.audio, j.video) if isinstance(loc, Path)),
              *([manifest] if isinstance(manifest, Path) else [])]  # fmt: skip
    for job in rows:
        problem = job.problem or row_settings_problem(job.row_settings, cfg)
        if problem is not None:
            problems.append((job, problem))
            continue
        own = cfg.for_row(job.row_settings)
        groups.setdefault((str(job.video), own.reference_start, own.reference_seconds), []).append(job)
    references: list[Checked] = []
    names: set[str] = set()
    worker = functools.cache(functools.partial(_model_worker, cfg, engines_dir))
    for jobs in groups.values():
        speech, longest = None, 0.0  # the longest audio of the rows, and its seconds
        for job in jobs:
            if speech is not None and isinstance(job.audio, Uri):  # measured only where it is at hand
                continue
            try:
                audio = storage.fetch(job.audio, "audio", default_download_dir())
                length = media.probe_audio(media.require_file(audio, "audio")).duration
                with tempfile.TemporaryDirectory(prefix="heygem-preview-") as scratch:  # what the job will say of it
                    read_speech(audio, job.audio, Path(scratch) / "audio.f32", cfg.limits)
            except HeygemError as exc:
                problems.append((job, exc))
                continue
            if speech is None or length > longest:
                speech, longest = audio, length
        name = _unique(jobs[0].video.stem or "reference", names)
        own = cfg.for_row(jobs[0].row_settings)
        try:
            video = storage.fetch(jobs[0].video, "reference", default_download_dir())
            found = Checked(jobs[0].video, tuple(j.row for j in jobs), own,
                            preview(video, speech, own, cache_dir, engines_dir, out_dir, seconds, name, worker, inputs))  # fmt: skip
        except HeygemError as exc:
            found = Checked(jobs[0].video, tuple(j.row for j in jobs), own, None, exc)
        references.append(found)
        checked(found)
    problems.sort(key=lambda p: p[0].row)
    filled = {row: ref.advised for ref in references if ref.advised for row in ref.rows}
    if not filled:
        return ManifestPreview(references, problems)
    dest = out_dir / f"{Path(str(manifest)).stem}-previewed.csv"
    refuse_input(dest, inputs)
    write_with_settings(manifest, filled, dest)
    return ManifestPreview(references, problems, filled, dest)


def _model_worker(cfg: RenderConfig, engines_dir: Location) -> ModelWorker:
    """A model worker for ``cfg`` in this process (its engine store opens a bucket too)."""
    return ModelWorker(cfg, engines_dir=cast(Path, engines_dir))


def refuse_input(dest: Path, inputs: Collection[Path]) -> None:
    """Raise ``bad_argument`` where ``dest`` is one of ``inputs`` (by its name, a link to it,
    or another name of the same file): a preview never writes over a reference, an audio
    or a manifest."""
    for source in inputs:
        same = os.path.realpath(dest) == os.path.realpath(source)  # (a link loop resolves no further: no error here)
        if same or (dest.exists() and source.exists() and os.path.samefile(dest, source)):
            raise InputError(
                f"preview would write {dest}, which is the input {source}: give --output-dir a folder apart from "
                "the media files", kind="bad_argument",
            )  # fmt: skip


def _unique(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``… where ``taken`` holds it; added to ``taken``."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise InternalError(f"OpenCV could not encode the contact sheet {path} as PNG")
    storage.write_bytes(path, data.tobytes())


def _side_by_side(
    reference: Path, speech: Path, seconds: float, template: Template, span: tuple[int, int] | None, pack: PackSpec,
    cfg: RenderConfig, cache_dir: Path, worker: ModelWorker, out: Path,
) -> None:
    """The first ``seconds`` of ``speech`` rendered by ``worker``, beside the reference
    frames it was rendered from (the same timeline: over ``span`` when warp loops a talking
    take's still stretch), both ``VIDEO_HEIGHT`` tall, with the sound."""
    if worker.error is not None:
        raise worker.error
    with tempfile.TemporaryDirectory(prefix="heygem-preview-") as scratch:
        # (samples,) float32 in [-1, 1]; audio cut short is the audio check's to say
        pcm = media.load_audio(speech, SAMPLE_RATE, whole=False)[: round(seconds * SAMPLE_RATE)]
        short = Path(scratch) / "speech.wav"
        with wave.open(str(short), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
        rendered = Path(scratch) / "rendered.mp4"
        job = Job(row=1, job_id=f"preview {reference.name}", audio=short, video=reference, output=rendered)
        # Its first seconds may be a pause: shown as they are (a silent lesson is submit's to refuse).
        pause_ok = replace(cfg, limits=replace(cfg.limits, allow_silent_audio=True))
        result = render_job(job, pause_ok, cache_dir, InProcessService(worker))
        if result.status != "ok":
            raise HeygemError(result.error or "the preview's render failed", kind=result.error_kind or "error")
        duration = len(pcm) / SAMPLE_RATE
        timeline = plan(duration, template.frames, template.fps, cfg.loop, template.is_image, span)
        scale = VIDEO_HEIGHT / template.height
        half = (2 * round(template.width * scale / 2), VIDEO_HEIGHT)
        info = media.probe_video(rendered)
        # written beside ``out`` under a hidden name, and given its name once whole
        staged = storage.staging_file(out, Path(scratch), PARTIAL_SUFFIX)
        try:
            with media.VideoWriter(staged, width=2 * half[0], height=half[1], fps=template.fps, audio=speech,
                                   duration=duration, crf=cfg.crf, preset=cfg.preset) as writer:  # fmt: skip
                for left, right in zip(template.read_frames(timeline.ref_index), media.iter_frames(info),
                                       strict=False):  # fmt: skip
                    pair = [cv2.resize(f, half, interpolation=cv2.INTER_AREA) for f in (left, right)]
                    for frame, label in zip(pair, ("reference", pack.name), strict=True):
                        _label(frame, label, (8, 24))
                    writer.write(np.hstack(pair))
            storage.publish(staged, out)
        finally:
            staged.unlink(missing_ok=True)


def _label(image: np.ndarray, text: str, at: tuple[int, int], colour: tuple[int, int, int] = (255, 255, 255)) -> None:
    """White (or ``colour``) text with a dark outline, readable on any frame."""
    cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 1, cv2.LINE_AA)


def contact_sheet(name: str, template: Template, ref: Reference, pack: PackSpec, checks: list[Check],
                  span: tuple[int, int] | None) -> np.ndarray:  # fmt: skip
    """(H, W, 3) uint8 BGR: ``SHEET_FRAMES`` frames across the take, marked, over the strip
    of every frame, under a title with the verdict."""
    count = min(SHEET_FRAMES, ref.frames)
    index = np.unique(np.linspace(0, ref.frames - 1, count).round().astype(np.int64))
    scale = TILE_WIDTH / template.width
    tile_h = round(template.height * scale)
    tiles = [_tile(frame, i, ref, scale, tile_h) for i, frame in zip(index, template.read_frames(index), strict=True)]
    while len(tiles) % SHEET_COLUMNS:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[r : r + SHEET_COLUMNS]) for r in range(0, len(tiles), SHEET_COLUMNS)]
    grid = np.vstack(rows)
    width = grid.shape[1]
    title = np.full((34, width, 3), 32, np.uint8)
    worst = verdict(checks)
    _label(title, f"{name}  pack {pack.name}  verdict: {worst}", (8, 23), _LEVEL_COLOUR[worst])
    return np.vstack([title, grid, _strip(ref, width, span), _legend(width)])


def _tile(frame: np.ndarray, i: int, ref: Reference, scale: float, tile_h: int) -> np.ndarray:
    tile = cv2.resize(frame, (TILE_WIDTH, tile_h), interpolation=cv2.INTER_AREA)
    t = i / float(ref.fps)
    if not ref.present[i]:
        cv2.rectangle(tile, (1, 1), (TILE_WIDTH - 2, tile_h - 2), LOST, 4)
        _label(tile, f"{t:.1f} s  no face", (8, 22), LOST)
        return tile
    face = (ref.faces[i] * scale).round().astype(int)
    crop = (ref.crops[i] * scale).round().astype(int)
    cv2.rectangle(tile, tuple(crop[:2]), tuple(crop[2:]), CROP, 1)
    cv2.rectangle(tile, tuple(face[:2]), tuple(face[2:]), FACE if ref.detected[i] else FOLLOWED, 1)
    u, v = ref.looks[i, looks.MOUTH_U], ref.looks[i, looks.MOUTH_V]
    if np.isfinite(u) and np.isfinite(v):
        w, h = ref.faces[i, 2] - ref.faces[i, 0], ref.faces[i, 3] - ref.faces[i, 1]
        at = (round(float(ref.faces[i, 0] + u * w) * scale), round(float(ref.faces[i, 1] + v * h) * scale))
        cv2.circle(tile, at, 3, MOUTH, -1)
    _label(tile, f"{t:.1f} s" + ("" if ref.detected[i] else "  followed"), (8, 22))
    return tile


def _strip(ref: Reference, width: int, span: tuple[int, int] | None) -> np.ndarray:
    """Every frame left to right: the face row (green found, yellow followed between
    detections, red lost) and, under it, the lips' gap as a curve (grey: warp's still
    stretch)."""
    strip = np.full((STRIP_HEIGHT, width, 3), 24, np.uint8)
    x = np.minimum((np.arange(ref.frames) * width) // max(ref.frames, 1), width - 1)
    colour = np.where(ref.present[:, None], np.where(ref.detected[:, None], FACE, FOLLOWED), LOST).astype(np.uint8)
    for i in range(ref.frames):
        strip[4:16, x[i]: max(x[i] + 1, x[min(i + 1, ref.frames - 1)])] = colour[i]
    top, bottom = 24, STRIP_HEIGHT - 6
    if span is not None:
        strip[top:bottom, x[span[0]]: x[span[1] - 1] + 1] = (60, 60, 60)
    gap = opening(ref)
    if np.isfinite(gap).any():
        # 0 to 0.1 face heights (a mouth wide open in speech) bottom to top.
        y = bottom - np.clip(np.nan_to_num(gap) / 0.1, 0, 1) * (bottom - top)
        points = np.stack([x, y.round()], axis=1).astype(np.int32)
        cv2.polylines(strip, [points], False, STILL, 1, cv2.LINE_AA)
    _label(strip, "mouth opening", (8, bottom - 4), STILL)
    return strip


def _legend(width: int) -> np.ndarray:
    legend = np.full((28, width, 3), 32, np.uint8)
    x = 8
    for text, colour in (("face found", FACE), ("followed", FOLLOWED), ("no face", LOST), ("crop", CROP),
                         ("mouth", MOUTH)):  # fmt: skip
        cv2.rectangle(legend, (x, 9), (x + 12, 21), colour, -1)
        _label(legend, text, (x + 18, 20))
        x += 30 + 11 * len(text)
    return legend
