"""Coarse to fine: where in a frame to look for faces, and at what scale.

A whole-frame scan costs with the frame's area at the scale that makes the smallest face
just fit the detector's window (a 40-pixel face in 4K: 0.6× → 2304×1296), so it runs on
a subset of frames. A scan after the first looks again only where the frame changed
since that part was last scanned (``changed_regions``): where nothing changed, the
cascade would find what it found there before. A window search around a face already
found costs with the face's area alone, so it runs on every frame, at a scale that gives
the face ``WORK_SIDE`` pixels whatever its size in the frame.
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
# Change between scans is measured on the scan's frame shrunk CHANGE_CELL times (camera
# noise averages out; at 1080p a cell is about 7 frame pixels): a cell changed where it
# differs by more than CHANGE_LEVEL grey levels from when it was last scanned.
CHANGE_CELL = 4
CHANGE_LEVEL = 8
# Around a change, this many detector windows are scanned too: a face of which only a
# part changed (a mouth, a turn of the head) is seen whole.
CHANGE_MARGIN = 5
# When regions to scan cover more than this share of the frame, it is scanned whole.
WHOLE_SHARE = 0.5
# Changes within the boxes of faces already followed, grown by this share of their side
# on every side (a jaw that moves), are theirs: a new face there would overlap them.
FOLLOWED_GROWTH = 0.25

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the scan's frame


def scan_scale(detector: Detector, min_face: int) -> float:
    """The scale at which the whole-frame scan finds faces from ``min_face`` pixels."""
    return min(1.0, SCAN_HEADROOM * detector.window / min_face)


def scan(detector: Detector, small: np.ndarray, scale: float, regions: list[Region] | None = None) -> np.ndarray:
    """Every face in a whole (h, w) uint8 grey frame downscaled by ``scale`` (see
    ``scan_scale``), or in its ``regions`` of it (``changed_regions``) → (k, 4) float32
    boxes in pixels of the full frame."""
    h, w = small.shape
    found = np.zeros((0, 4), np.float32)
    for x0, y0, x1, y1 in regions if regions is not None else [(0, 0, w, h)]:
        boxes = detector.detect(small[y0:y1, x0:x1], detector.window, 0) + np.array([x0, y0, x0, y0], np.float32)
        # Regions may overlap: a face found twice is kept once.
        fresh = [b for b in boxes if len(found) == 0 or iou(b[None], found).max() < 0.5]
        found = np.concatenate([found, np.asarray(fresh, np.float32).reshape(-1, 4)])
    return found / np.float32(scale)


def shrink_for_change(small: np.ndarray) -> np.ndarray:
    """The scan's (h, w) uint8 frame shrunk ``CHANGE_CELL`` times, as ``changed_regions`` compares it."""
    h, w = small.shape
    return cv2.resize(small, (max(1, w // CHANGE_CELL), max(1, h // CHANGE_CELL)), interpolation=cv2.INTER_AREA)


def changed_regions(
    cells: np.ndarray, seen: np.ndarray, size: tuple[int, int], window: int, followed: np.ndarray
) -> list[Region] | None:
    """Where to scan a frame whose ``shrink_for_change`` is ``cells``, given ``seen``: each
    cell as it was when last scanned. Returns the regions (pixels of the (w, h) ``size``
    scan frame) around the cells changed outside the ``followed`` (k, 4) face boxes (the
    scan frame's pixels: where those faces are, and where they were at the last scan),
    each region updated in ``seen``; None where they would cover most of the frame (scan
    it whole)."""
    changed = (cv2.absdiff(cells, seen) > CHANGE_LEVEL).astype(np.uint8)
    w, h = size
    sx, sy = w / cells.shape[1], h / cells.shape[0]
    for box in followed:
        grow = FOLLOWED_GROWTH * (box[2:] - box[:2])
        x0, y0 = np.floor((box[:2] - grow) / (sx, sy)).astype(int).clip(0)
        x1, y1 = np.ceil((box[2:] + grow) / (sx, sy)).astype(int)
        changed[y0:y1, x0:x1] = 0
    if not changed.any():
        return []
    reach = int(np.ceil(CHANGE_MARGIN * window / CHANGE_CELL))
    grown = cv2.dilate(changed, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1)))
    _, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    rects = stats[1:, :4]  # x, y, width, height in cells
    if (rects[:, 2] * rects[:, 3]).sum() > WHOLE_SHARE * cells.size:
        return None
    regions = []
    for x, y, cw, ch in rects.tolist():
        seen[y : y + ch, x : x + cw] = cells[y : y + ch, x : x + cw]
        # To the frame's edge where the cells reach it (a frame not a whole number of cells).
        x1 = w if x + cw == cells.shape[1] else int(np.ceil((x + cw) * sx))
        y1 = h if y + ch == cells.shape[0] else int(np.ceil((y + ch) * sy))
        regions.append((int(x * sx), int(y * sy), x1, y1))
    return regions


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes a (n, 4) and b (m, 4) → (n, m)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


def search_window(detector: Detector, grey: np.ndarray, expected: np.ndarray) -> np.ndarray | None:
    """The face nearest ``expected`` (4,) in a window around it, or None: ``grey`` is the
    (h, w) uint8 frame; boxes are in its pixels."""
    h, w = grey.shape[:2]
    side = float(max(expected[2] - expected[0], expected[3] - expected[1]))
    grow = WINDOW_MARGIN * side
    x0, y0 = max(0, int(expected[0] - grow)), max(0, int(expected[1] - grow))
    x1, y1 = min(w, int(np.ceil(expected[2] + grow))), min(h, int(np.ceil(expected[3] + grow)))
    if x1 - x0 < detector.window or y1 - y0 < detector.window:
        return None
    zoom = WORK_SIDE / side
    interpolation = cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
    region = cv2.resize(grey[y0:y1, x0:x1], (round((x1 - x0) * zoom), round((y1 - y0) * zoom)), interpolation=interpolation)
    region = cv2.equalizeHist(region)
    lo, hi = (max(detector.window, round(WORK_SIDE * r)) for r in WINDOW_SIZES)
    found = detector.detect(region, lo, hi)
    if len(found) == 0:
        return None
    found = found / np.float32(zoom) + np.array([x0, y0, x0, y0], np.float32)
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
