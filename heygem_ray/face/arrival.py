"""Where a presenter comes into a take: its first keyframe showing a face (``first_seen``).

Analysis searches a reference as far as ``--reference-seconds``; where that part holds no
face, the rest of a lecture may. Reading the rest at its keyframes only (nothing else is
decoded) and scanning them as analysis scans a frame names the start that finds the
presenter, for the ``no_face`` message (``analyze``) and for a manifest's preview.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np

from heygem_ray.config import DetectorConfig
from heygem_ray.face.haar import HaarDetector
from heygem_ray.face.search import is_colour, scan, scan_scale, skin_fraction
from heygem_ray.media.ffmpeg import LITERAL_NAME

# Seconds between the keyframes ``first_seen`` scans first: at 1080p a whole-frame scan for
# a 40-px face costs ~85 CPU ms against ~9 for decoding a keyframe. Those skipped before the
# first with a face are scanned after it, so the answer is the first keyframe with one.
FIRST_SEEN_STEP_S = 5.0


def first_seen(
    video: Path, detector_cfg: DetectorConfig, after_s: float, stream_index: int = 0, rotation: int = 0,
    size: tuple[int, int] | None = None,
) -> float | None:
    """Seconds into ``video`` of its first keyframe at or after ``after_s`` with a face of
    ``detector_cfg.min_face`` pixels or more (whole-frame scans as analysis makes them, the
    same skin test), or None where none has one. ``stream_index``, ``rotation`` and ``size``
    (width, height upright: the size analysis sees the frames at, after ``max_resolution``
    and square pixels; None: as stored) as ``VideoInfo`` has them, so a face counts the
    pixels analysis would count. Only keyframes are decoded, and scanned ``FIRST_SEEN_STEP_S``
    apart until one shows a face, then those skipped before it (or, where none did, those
    after the last one scanned): an hour of 1080p costs its demuxing, 9 ms a keyframe and
    a scan every few seconds (about 60 CPU s), not a decode of every frame."""
    has_face = _face_finder(detector_cfg, rotation, size)
    missed, found = None, None  # the last keyframe scanned without a face, the first with one
    for at, frame in _keyframes(video, stream_index, after_s, FIRST_SEEN_STEP_S):
        if has_face(frame):
            found = at
            break
        missed = at
    if missed is None:
        return found
    for at, frame in _keyframes(video, stream_index, missed, 0.0):  # those skipped before it (or the take's end)
        if found is not None and at >= found:
            break
        if at > missed and has_face(frame):
            return at
    return found


def _keyframes(video: Path, stream_index: int, from_s: float, step_s: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds into the take, frame) of ``video``'s keyframes from ``from_s``, at least
    ``step_s`` apart; nothing else is decoded."""
    with av.open(str(video), options=LITERAL_NAME) as container:
        stream = container.streams.video[stream_index]
        stream.codec_context.skip_frame = "NONKEY"
        origin = (container.start_time or 0) / 1e6  # ffmpeg's times count from here (``VideoInfo.seek``)
        if stream.time_base is not None and from_s > 0:
            container.seek(int((from_s + origin) / stream.time_base), stream=stream)  # the keyframe before
        due = from_s
        for frame in container.decode(stream):
            if frame.time is not None and frame.time - origin >= due:
                yield frame.time - origin, frame
                due = frame.time - origin + step_s


def _face_finder(
    detector_cfg: DetectorConfig, rotation: int, size: tuple[int, int] | None
) -> Callable[[av.VideoFrame], bool]:
    """Whether a frame (scaled to ``size`` turned back, then upright by ``rotation``) shows a
    face as analysis finds one."""
    detector = HaarDetector(min_neighbors=detector_cfg.min_neighbors, scale_factor=detector_cfg.scale_factor)
    scale = scan_scale(detector, detector_cfg.min_face)
    stored = None if size is None else size[::-1] if rotation in (90, 270) else size

    def has_face(frame: av.VideoFrame) -> bool:
        if stored is not None and stored != (frame.width, frame.height):
            frame = frame.reformat(width=stored[0], height=stored[1], interpolation="AREA")
        bgr: np.ndarray = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="bgr24"), k=-rotation // 90), np.uint8)
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        small = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else grey
        colour = is_colour(bgr)
        return any(box[2] - box[0] >= detector_cfg.min_face and (not colour or skin_fraction(bgr, box) >= detector_cfg.min_skin)
                   for box in scan(detector, small, scale))  # fmt: skip

    return has_face
