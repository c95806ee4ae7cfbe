"""Coarse to fine: where in a frame to look for faces, and at what scale.

A whole-frame scan costs with the frame's area at the scale that makes the smallest face
just fit the detector's window (a 40-pixel face in 4K: 0.6× → 2304×1296), so it runs on
a subset of frames. A window search around a face already found costs with the face's
area alone, so it runs on every frame, at a scale that gives the face ``WORK_SIDE``
pixels whatever its size in the frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from heygem_ray.face.detector import Detector

# A face is searched for at this side in pixels, in windows around the track.
WORK_SIDE = 64
# The window: the expected box grown by this fraction of its side on every side.
WINDOW_MARGIN = 0.6
# Sizes accepted in a window, relative to the expected face (slow zoom, wrong guess).
WINDOW_SIZES = (0.7, 1.45)
# Frame-to-frame motion is measured on this square share of the face box, sampled to
# PATCH × PATCH pixels: the face's centre, not the background beside it.
PATCH_SHARE = 0.7
PATCH = 64
# Phase correlation's peak below this is no match.
MIN_RESPONSE = 0.15
_HANN = cv2.createHanningWindow((PATCH, PATCH), cv2.CV_32F)
# The whole-frame scan makes the smallest face this much larger than the detector's
# window: at exactly the window size a cascade misses more.
SCAN_HEADROOM = 1.2


def scan_scale(detector: Detector, min_face: int) -> float:
    """The scale at which the whole-frame scan finds faces from ``min_face`` pixels."""
    return min(1.0, SCAN_HEADROOM * detector.window / min_face)


def scan(detector: Detector, small: np.ndarray, scale: float) -> np.ndarray:
    """Every face in a whole (h, w) uint8 grey frame, downscaled by ``scale`` (see
    ``scan_scale``) → (k, 4) float32 boxes in pixels of the full frame."""
    return detector.detect(small, detector.window, 0) / np.float32(scale)


def search_window(detector: Detector, grey: np.ndarray, expected: np.ndarray, scale: float = 1.0) -> np.ndarray | None:
    """The face nearest ``expected`` (4,) in a window around it, or None.

    ``grey`` is the (h, w) uint8 frame downscaled by ``scale``; boxes are in pixels of the
    full frame.
    """
    h, w = grey.shape[:2]
    side = float(max(expected[2] - expected[0], expected[3] - expected[1]))
    grow = WINDOW_MARGIN * side
    x0, y0 = max(0, int((expected[0] - grow) * scale)), max(0, int((expected[1] - grow) * scale))
    x1 = min(w, int(np.ceil((expected[2] + grow) * scale)))
    y1 = min(h, int(np.ceil((expected[3] + grow) * scale)))
    if x1 - x0 < detector.window or y1 - y0 < detector.window:
        return None
    zoom = WORK_SIDE / (side * scale)
    interpolation = cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
    region = cv2.resize(grey[y0:y1, x0:x1], (round((x1 - x0) * zoom), round((y1 - y0) * zoom)), interpolation=interpolation)
    region = cv2.equalizeHist(region)
    lo, hi = (max(detector.window, round(WORK_SIDE * r)) for r in WINDOW_SIZES)
    found = detector.detect(region, lo, hi)
    if len(found) == 0:
        return None
    found = (found / np.float32(zoom) + np.array([x0, y0, x0, y0], np.float32)) / np.float32(scale)
    # Nearest in centre and size: a window seldom holds two faces, but may hold a false one.
    centre = (expected[:2] + expected[2:]) / 2
    dist = np.linalg.norm((found[:, :2] + found[:, 2:]) / 2 - centre, axis=1)
    dist += np.abs((found[:, 2] - found[:, 0]) - side)
    return found[int(np.argmin(dist))]


def face_patch(grey: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The centre of the face in ``box`` as a (PATCH, PATCH) float32 patch of the full-size
    (h, w) uint8 grey frame, and its frame pixels per patch pixel; None at the frame's
    edge. Two patches cut at boxes of one size are what ``motion`` compares."""
    h, w = grey.shape[:2]
    half = max(2, round(max(box[2] - box[0], box[3] - box[1]) * PATCH_SHARE / 2))
    # Rounded half up (not to even): a box moved by whole pixels cuts its patch exactly
    # that many pixels away, which ``motion`` relies on.
    cx, cy = (int(np.floor(c + 0.5)) for c in ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
    if cx - half < 0 or cy - half < 0 or cx + half > w or cy + half > h:
        return None
    region = grey[cy - half : cy + half, cx - half : cx + half]
    interpolation = cv2.INTER_AREA if 2 * half > PATCH else cv2.INTER_LINEAR
    patch = cv2.resize(region, (PATCH, PATCH), interpolation=interpolation).astype(np.float32)
    return patch, 2 * half / PATCH


def motion(before: np.ndarray, after: np.ndarray, step: float) -> tuple[float, float] | None:
    """How far the face moved in pixels (dx, dy) between two patches cut at boxes of one
    size (relative to where the second was cut), by phase correlation; None when the
    match is weak (a turn, a cut, a blur)."""
    (dx, dy), response = cv2.phaseCorrelate(before, after, _HANN)
    if response < MIN_RESPONSE:
        return None
    return float(dx * step), float(dy * step)


def is_colour(frame: np.ndarray) -> bool:
    """Whether the frame has colour at all: a greyscale recording gives no skin test."""
    small = frame[:: max(1, frame.shape[0] // 64), :: max(1, frame.shape[1] // 64)]
    ycc = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_BGR2YCrCb).astype(np.int16)
    return bool(np.abs(ycc[..., 1:] - 128).max() > 6)


def skin_fraction(frame: np.ndarray, box: np.ndarray) -> float:
    """Share of the box's inner half (the cheeks, nose and mouth) in the skin range of
    YCrCb (Cr 133–173, Cb 77–127: wide enough for every skin tone under white light)."""
    h, w = frame.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0, x1 = int(np.clip(box[0] + 0.25 * bw, 0, w)), int(np.clip(box[2] - 0.25 * bw, 0, w))
    y0, y1 = int(np.clip(box[1] + 0.3 * bh, 0, h)), int(np.clip(box[3] - 0.2 * bh, 0, h))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    ycc = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2YCrCb)
    cr, cb = ycc[..., 1], ycc[..., 2]
    return float(((cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127)).mean())
