"""The ``analyze`` stage: a reference video or photo → a cached template
(``heygem_ray.template``: what it holds, how the cache keeps it).

The reference is probed, decoded once, every frame kept in the frame store while the
presenter's face is followed (``track_reference``), then the crops are cut along the
steady track. The template is found in the cache under its key (``template.cache``) or
built there: atomically (a temporary folder, then a rename) and under the key's lock, so
two jobs with the same reference build it once. A reference in which no face is found is
remembered as such (``template.cache.remember_failure``), and where a cut left part of the
take unsearched, the error names the start at which the presenter comes in.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shlex
import shutil
import time
import uuid
from contextlib import closing
from pathlib import Path

import av
import numpy as np

from heygem_ray import media, storage
from heygem_ray.config import CUT_FILE_FRAMES, DetectorConfig, InputLimits
from heygem_ray.errors import InputError, PresenterLater, folder_removed, storage_errors
from heygem_ray.face.align import alignment_points
from heygem_ray.face.arrival import first_seen
from heygem_ray.face.haar import HaarDetector
from heygem_ray.face.track import FaceTrack, Tracker, find_presenter
from heygem_ray.geometry import CropGeometry, cut_i420
from heygem_ray.template.cache import (
    REMEMBERED_FAILURES,
    failed_before,
    lock_path,
    mark_used,
    remember_failure,
    remove_leftovers,
    set_aside,
    tag,
    template_key,
)
from heygem_ray.template.damage import DamagedTemplate
from heygem_ray.template.files import STORED_FILE, TEMPLATE_VERSION, Template, save_faces
from heygem_ray.template.store import FRAME_CODEC, FRAME_LEVEL, STORE_AHEAD, FrameStore, StoreWriter, read_ahead

log = logging.getLogger(__name__)


# A track found in fewer frames than this is taken for detector noise, not a presenter.
MIN_DETECTED_FRACTION = 0.2


# A reference written while it is analysed (a copy or a sync job still writing the media
# folder) is analysed again from its new bytes, this many times in all; its analysis of
# bytes that changed underneath is never kept.
CHANGED_TRIES = 3
# Before it is analysed again it must have stayed as it is for SETTLE_S (a copy still
# writing it is waited for, not analysed again and again), waited for CHANGE_WAIT_S at most.
SETTLE_S, CHANGE_WAIT_S = 5.0, 120.0

_FIX = ("something is writing it now, a copy or a sync job; no analysis of it was kept. Let that finish, then run "
        "the same manifest again")  # fmt: skip


class ReferenceChanged(InputError):
    """The reference was written, cut or replaced while it was being analysed; ``change``
    says how. ``tries``: how many analyses in a row it happened to, where it is the end of
    them; ``still``: it went on changing for ``CHANGE_WAIT_S`` after."""

    def __init__(self, video: Path, change: str, tries: int = 0, still: bool = False):
        said = (f"reference {video} changed while it was analysed ({change}) and was still changing "
                f"{CHANGE_WAIT_S:.0f} s later: {_FIX}" if still else
                f"reference {video} was written while it was analysed, {tries} times in a row (the last time "
                f"{change}): {_FIX}" if tries else
                f"reference {video} changed while it was analysed ({change})")  # fmt: skip
        super().__init__(said, kind="input_changed")
        self.change = change


def analyze(
    video: Path,
    geometry: CropGeometry,
    detector: DetectorConfig,
    cache_dir: Path,
    limits: InputLimits | None = None,
    max_resolution: int = 0,
    reference_seconds: float = 0.0,
    reference_start: float = 0.0,
    max_fps: int = 0,
) -> tuple[Template, bool]:
    """The template for ``video``, built unless cached whole. Returns (template, was_cached).
    A cache this process cannot write serves the templates it holds whole (``_read_only``).
    ``max_resolution`` (0: none): a reference whose shorter side is longer is analysed
    scaled down to it (``media.probe_video``), and the template is of that size.
    ``reference_seconds`` (0: all): a longer reference is analysed as far as that, and the
    template holds those frames (``VideoInfo.cut``). ``reference_start`` (0: its beginning):
    a video is used from that many seconds in (``VideoInfo.start``), and a cut counts from
    there. ``max_fps`` (0: none): a faster take is analysed with every k-th frame kept
    (``media.probe_video``), and the template is at that rate.

    A cached template found damaged (``Template.open``) is set aside, with a warning, and
    built again. A reference over ``limits`` (default ``InputLimits()``) is ``too_large``:
    refused by the probe before it is decoded, and a cached template of one (built under
    higher limits) is refused too.

    A reference written while it is analysed (its size, times or inode differ afterwards:
    ``storage.file_stamp``) keeps no analysis, and no remembered failure: it is analysed
    again from its new bytes, up to ``CHANGED_TRIES`` times in all, then ``input_changed``."""
    limits = limits or InputLimits()
    tries, changed = 1, ""
    while True:
        try:
            return _analyze(video, geometry, detector, cache_dir, limits, max_resolution, reference_seconds,
                            reference_start, max_fps)  # fmt: skip
        except ReferenceChanged as exc:
            if tries == CHANGED_TRIES:
                raise ReferenceChanged(video, exc.change, tries) from exc
            if not _settled(video):
                raise ReferenceChanged(video, exc.change, still=True) from exc
            log.warning("%s: analysing it again", exc.message)
            tries, changed = tries + 1, exc.change
        except InputError as exc:
            # Its bytes as they stood still after a change: perhaps a copy cut off for a while.
            if not changed or type(exc) is not InputError or exc.kind == "storage":
                raise
            raise InputError(f"{exc.message}; it changed as this job analysed it before ({changed}): where a copy "
                             "of it was not finished then, run the same manifest again once it is",
                             kind=exc.kind) from exc  # fmt: skip


def _settled(video: Path) -> bool:
    """Wait until ``video`` has stayed as it is for ``SETTLE_S``: True, or False where it
    was still changing ``CHANGE_WAIT_S`` on (gone: True, for the next try to say so)."""
    start = quiet = time.monotonic()
    seen: list[int] | None = None
    while True:
        try:
            now = storage.file_stamp(video)
        except OSError:
            return True
        clock = time.monotonic()
        if now != seen:
            seen, quiet = now, clock
        elif clock - quiet >= SETTLE_S:
            return True
        if clock - start >= CHANGE_WAIT_S:
            return False
        time.sleep(min(0.5, SETTLE_S / 4))


def _analyze(
    video: Path,
    geometry: CropGeometry,
    detector: DetectorConfig,
    cache_dir: Path,
    limits: InputLimits,
    max_resolution: int,
    reference_seconds: float,
    reference_start: float,
    max_fps: int,
) -> tuple[Template, bool]:
    media.require_file(video, "reference")
    storage.makedirs(cache_dir)
    stamp = storage.file_stamp(video)  # the bytes hashed for the key must be those analysed
    key = template_key(video, geometry, detector, cache_dir, max_resolution, reference_seconds, reference_start,
                       max_fps=max_fps)  # fmt: skip
    root = cache_dir / key
    if not os.access(cache_dir, os.W_OK):
        return _read_only(video, cache_dir, root, limits), True
    tag(cache_dir)
    with storage.file_lock(lock_path(cache_dir, key)):
        with storage_errors(cache_dir):
            remove_leftovers(cache_dir, key)
        if os.path.lexists(root):
            try:
                template = Template.open(root)
            except DamagedTemplate as exc:
                log.warning("the cached analysis of %s in %s is damaged (%s): analysing the reference again",
                            video, root, exc)  # fmt: skip
                with storage_errors(cache_dir):
                    set_aside(root, cache_dir / f".{key}.{uuid.uuid4().hex}.damaged")
            else:
                mark_used(root)
                return _within_limits(template, video, limits), True
        failed_before(cache_dir, key, video)
        # Probed only when building: a reference whose frames the probe cannot count from its
        # packets (variable rate, say) is decoded once for that (as far as a cut, if any).
        # Where reference_seconds cuts it, the frame limit bounds the frames used.
        file_frames = max(limits.max_reference_frames, CUT_FILE_FRAMES if reference_seconds else 0)
        try:
            info = media.probe_video(
                video, max_pixels=limits.max_reference_pixels, max_frames=file_frames,
                max_resolution=max_resolution, max_fps=max_fps, max_seconds=reference_seconds,
                start_seconds=reference_start,
            )  # fmt: skip
            media.check_reference_frames(video, info.frames, max_frames=limits.max_reference_frames)
        except InputError as exc:  # (an MP4 still being copied has no index yet)
            _unchanged(video, stamp, exc)
            raise
        tmp = cache_dir / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            with storage_errors(cache_dir):  # a full or read-only cache: the user's to fix
                try:
                    _build(info, geometry, detector, tmp, limits.max_reference_pixels)
                    _unchanged(video, stamp)
                    _put_in_place(tmp, root, cache_dir / f".{key}.{uuid.uuid4().hex}.damaged")
                except FileNotFoundError as exc:
                    if os.path.lexists(tmp):
                        raise
                    # the folder being built went away: removed with the cache by a cleanup
                    raise folder_removed(cache_dir, f"the analysis of {video}") from exc
        except InputError as exc:
            if not isinstance(exc, ReferenceChanged):  # what failed may have been other bytes
                _unchanged(video, stamp, exc)
            if exc.kind not in REMEMBERED_FAILURES:
                raise
            failed = _seen_later(exc, info, detector)
            remember_failure(cache_dir, key, video, failed)
            if failed is exc:
                raise
            raise failed from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Template.open(root), False


def _unchanged(video: Path, stamp: list[int], failure: InputError | None = None) -> None:
    """Raise ``ReferenceChanged`` (from ``failure``, if the analysis failed) where ``video``
    is no longer the file ``stamp`` was taken of."""
    try:
        now = storage.file_stamp(video)
    except OSError:
        change = "it was moved or deleted"
    else:
        if now == stamp:
            return
        change = ("another file was put in its place" if now[:2] != stamp[:2] else
                  f"its size went from {stamp[2]:,} to {now[2]:,} bytes" if now[2] != stamp[2] else "it was written to")  # fmt: skip
    raise ReferenceChanged(video, change) from failure


def _put_in_place(built: Path, root: Path, aside: Path) -> None:
    """Rename the template ``built`` to ``root``. A folder found there (made while it was
    built, by a job that held the template set aside open and wrote into its path) is no
    whole template: it is set aside to ``aside``, as a damaged one is, and the rename made."""
    try:
        os.replace(built, root)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        log.warning("%s was made while its template was built: set aside, and the template put in its place", root)
        with contextlib.suppress(FileNotFoundError):  # (gone again meanwhile)
            set_aside(root, aside)
        os.replace(built, root)


def _seen_later(exc: InputError, info: media.VideoInfo, detector: DetectorConfig) -> InputError:
    """``exc`` (no face in the frames analysed), or where the take goes on past a cut
    (``--reference-seconds``) and a keyframe after it shows a face (``arrival.first_seen``),
    a ``PresenterLater`` that names the start finding them."""
    if not info.cut or isinstance(exc, PresenterLater):  # (one that names a start already)
        return exc
    try:
        seen = first_seen(info.path, detector, float((info.start + info.frames) / info.fps), info.video_stream,
                          info.rotation, (info.width, info.height))  # fmt: skip
    except (av.FFmpegError, OSError):  # (the take's own error is the one to say)
        return exc
    if seen is None:
        return exc
    start = float(math.floor(seen))
    return PresenterLater(
        f"{exc.message}. After that part, the take's keyframes first show a face {seen:.1f} s in (the presenter "
        f"may come in up to one keyframe interval earlier): --reference-start {start:g} (or the row's "
        "reference_start column) uses it from there",
        {"reference_start": start},
    )


def _read_only(video: Path, cache_dir: Path, root: Path, limits: InputLimits) -> Template:
    """The template ``root`` of a cache this process cannot write (a volume mounted
    read-only, a cache built into an image), opened without its lock: nothing here can
    build or replace it. One not there whole is the user's to add where it can be written."""
    try:
        template = Template.open(root)
    except DamagedTemplate as exc:
        holds = f"holds no whole analysis of it ({exc})" if os.path.lexists(root) else "holds no analysis of it"
        raise InputError(
            f"reference {video}: the template cache {cache_dir} cannot be written here and {holds}: analyse the "
            f"reference into it where it can be written (heygem-ray preview {video} --cache-dir {cache_dir}, with "
            "the same --min-face, --max-resolution, --reference-start, --reference-seconds and pack as the batch), "
            "or give a --cache-dir this node can write",
            kind="storage",
        ) from None
    return _within_limits(template, video, limits)


def _within_limits(template: Template, video: Path, limits: InputLimits) -> Template:
    """``template``, unless its reference is over ``limits`` (then it is closed, and the
    error raised)."""
    try:
        media.check_reference_size(video, template.width, template.height, max_pixels=limits.max_reference_pixels)
        media.check_reference_frames(video, template.frames, max_frames=limits.max_reference_frames)
    except BaseException:
        template.close()
        raise
    return template


def _build(
    info: media.VideoInfo, geometry: CropGeometry, detector_cfg: DetectorConfig, out: Path, max_pixels: int
) -> None:
    out.mkdir(parents=True)
    video = info.path

    # Pass 1: decode once, store every frame, follow the faces. Where NVDEC fails on this
    # reference, it is decoded again on the CPU (a damaged file fails there too, and says so).
    decoder, fell_back = media.pick_decoder(info), ""
    try:
        track, offsets, stored = _store_and_track(info, geometry, detector_cfg, max_pixels, out, decoder)
    except InputError as exc:
        if decoder == "cpu" or exc.kind != "unreadable_media":
            raise
        decoder, fell_back = "cpu", f"NVDEC failed, decoded on the CPU: {exc}"
        track, offsets, stored = _store_and_track(info, geometry, detector_cfg, max_pixels, out, decoder)
    frames = len(stored)
    np.save(out / "offsets.npy", np.asarray(offsets, np.int64))
    repeats = frames > len(offsets) - 1
    if repeats:
        np.save(out / STORED_FILE, np.asarray(stored, np.int64))

    # The presenter's steady track; its crop boxes.
    boxes = geometry.crop_boxes(track, info.width, info.height)
    np.save(out / "boxes.npy", boxes)
    np.save(out / "present.npy", track.present)
    save_faces(out, track)
    points = alignment_points(track)
    np.save(out / "points.npy", points)

    # Pass 2: cut the crops from the stored frames.
    crops = np.lib.format.open_memmap(
        out / "crops.npy", mode="w+", dtype=np.uint8, shape=(frames, geometry.size, geometry.size, 3)
    )
    storage.allocate(out / "crops.npy")
    # Closed here also on an error: its thread stops before the folder is removed.
    with closing(FrameStore(out / "frames.bin", offsets, info.width, info.height, stored if repeats else None)) as store, \
            closing(read_ahead(map(store.read, range(frames)), STORE_AHEAD)) as ahead:  # fmt: skip
        for i, frame in enumerate(ahead):
            crops[i] = cut_i420(frame, boxes[i], geometry.size, geometry.resample)
    crops.flush()
    del crops

    meta = {
        "version": TEMPLATE_VERSION,
        "source": str(video),
        "fps": str(info.fps),
        "width": info.width,
        "height": info.height,
        "frames": frames,
        "listed_frames": info.frames,
        "is_image": info.is_image,
        "frame_store": f"i420 bt709 tv, {FRAME_CODEC} level {FRAME_LEVEL}",
        "decoder": decoder,
        "decoder_note": fell_back,
        "source_colour": info.colour,
        "deinterlaced": info.interlaced,
        "sample_aspect": str(info.sample_aspect),
        "scaled_from": list(info.scaled_from) if info.scaled_from else None,
        "cut_to_seconds": info.duration if info.cut else None,
        "start_seconds": float(info.start / info.fps) if info.start else None,
        "own_fps": str(info.own_fps) if info.own_fps else None,
        "face_detected_fraction": float(track.detected.mean()),
        "face_present_fraction": float(track.present.mean()),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def _store_and_track(
    info: media.VideoInfo,
    geometry: CropGeometry,
    detector_cfg: DetectorConfig,
    max_pixels: int,
    out: Path,
    decoder: media.Decoder,
) -> tuple[FaceTrack, list[int], list[int]]:
    """Decode the reference with ``decoder``, writing each frame to ``out``/frames.bin
    (from its start, its space held ahead: ``StoreWriter._reserve``) as the faces are
    followed: the track, the stored frames' offsets, and the stored frame of each frame."""
    crops = info.frames * geometry.size * geometry.size * 3
    with StoreWriter(out / "frames.bin", info.width, info.height, info.frames, crops, info.path) as store:
        track = track_reference(info, detector_cfg, max_pixels, store, decoder)
    return track, store.offsets, store.stored


# A take in too few of whose frames the face was found, found nearly all in one stretch of
# it: where that stretch holds this share of the detections and the face is found in this
# share of its frames, for at least PART_MIN_S, the presenter is taken to be in that part.
PART_SHARE, PART_DENSITY, PART_MIN_S = 0.9, 0.5, 1.0


def _part_with_face(track: FaceTrack, info: media.VideoInfo) -> tuple[float, float] | None:
    """Where the presenter is in only one part of the take analysed (a lecture whose camera
    comes to them late, a talk that ends with them): its (start, end) in seconds from the
    take's beginning; None where the few frames with a face are spread over it (chance
    detections, a face too small or turned away throughout)."""
    hits = np.flatnonzero(track.detected)
    if hits.size == 0:
        return None
    # The shortest stretch holding PART_SHARE of the detections.
    keep = max(1, math.ceil(PART_SHARE * hits.size))
    widths = hits[keep - 1 :] - hits[: hits.size - keep + 1]
    first = int(np.argmin(widths))
    lo, hi = int(hits[first]), int(hits[first + keep - 1]) + 1
    fps = float(info.fps)
    if (hi - lo) / fps < PART_MIN_S or keep < PART_DENSITY * (hi - lo):
        return None
    offset = float(info.start / info.fps)
    return offset + lo / fps, offset + hi / fps


def _scaled_note(info: media.VideoInfo) -> str:
    """For a message about the faces of a reference scaled down (``max_resolution``)."""
    if info.scaled_from is None:
        return ""
    width, height = info.scaled_from
    return (f"; the reference was scaled down from {width}×{height} to {info.width}×{info.height} by "
            "--max-resolution, which makes its faces smaller too: a higher one, or 0, keeps them at their size")


def _streams_note(info: media.VideoInfo) -> str:
    """Where a reference holds more than one video stream (a lecture capture's camera and
    screen), that only one was searched, and how to give another."""
    if info.video_streams < 2:
        return ""
    return (f"; it holds {info.video_streams} video streams and the first is the one read: where the presenter is in "
            f"another, give that stream as a file of its own (ffmpeg -i {shlex.quote(str(info.path))} -map 0:v:1 -c copy "
            "presenter.mp4 takes the second)")  # fmt: skip


def _cut_note(info: media.VideoInfo) -> str:
    """For a message about the faces of a reference of which only a part was searched
    (``--reference-seconds``)."""
    if not info.cut:
        return ""
    start = info.start / info.fps
    where = f"its {info.duration:.1f} s from {float(start):.1f} s in" if start else f"its first {info.duration:.1f} s"
    return (f"; only {where} were searched (--reference-seconds): where the presenter comes in later in the take, "
            "--reference-start moves the part used to them")


def track_reference(
    info: media.VideoInfo,
    detector_cfg: DetectorConfig,
    max_pixels: int | None,
    store: StoreWriter,
    decoder: media.Decoder = "cpu",
) -> FaceTrack:
    """The presenter's smoothed face track through the reference ``info`` describes, its
    frames decoded once by ``decoder`` and kept in ``store`` ((H·3/2, W) uint8 I420 in
    BT.709, ``media.yuv``), which the tracker reads back from. It does not depend on the
    pack: every crop geometry is cut along the same track. A reference
    without frames is ``unreadable_media``; one whose presenter is found in too few frames
    is ``no_face``."""
    video = info.path
    tracker = Tracker(
        HaarDetector(min_neighbors=detector_cfg.min_neighbors, scale_factor=detector_cfg.scale_factor),
        detector_cfg,
        float(info.fps),
        store.recall,
    )
    for frame in media.iter_frames(info, max_pixels=max_pixels, pixel_format="yuv420p", decoder=decoder):
        if store.keep(frame):  # the frame before again: stored and followed once
            tracker.repeat()
        else:
            tracker.add(frame)
    frames = tracker.frames
    if frames == 0:
        raise InputError(
            f"reference {video} decoded to no frames: re-export it (e.g. as H.264 MP4) "
            "or give a photo instead",
            kind="unreadable_media",
        )
    track = find_presenter(tracker, float(info.fps))
    found = 0 if track is None else int(track.detected.sum())
    if track is not None and found < MIN_DETECTED_FRACTION * frames and (part := _part_with_face(track, info)):
        start, end = part
        raise PresenterLater(
            f"reference {video}: too few frames with a face (the presenter's face was detected in {found} of its "
            f"{frames} frame(s), nearly all between {start:.1f} s and {end:.1f} s into the take): where the presenter "
            f"is in only that part, --reference-start {math.floor(start * 10) / 10:g} (or the row's reference_start "
            "column) uses the take from there",
            {"reference_start": math.floor(start * 10) / 10},
        )
    if track is None or found < MIN_DETECTED_FRACTION * frames:
        said = "no face found" if found == 0 else "too few frames with a face"  # (for a template of the take)
        raise InputError(
            f"reference {video}: {said} (the presenter's face was detected in {found} of its "
            f"{frames} frame(s)); faces are searched for from {detector_cfg.min_face} pixels wide, "
            "facing the camera. Use a video or photo where the presenter faces the camera and is "
            "well lit, or, for a smaller face, lower the smallest face searched for "
            f"(--min-face, at least 20; analysis is slower){_scaled_note(info)}{_cut_note(info)}"
            f"{_streams_note(info)}",
            kind="no_face",
        )
    return track
