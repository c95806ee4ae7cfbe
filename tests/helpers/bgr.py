"""Frames in BGR: the plain forms of what the package does to I420 frames, kept for the
tests (and bench/bench_compose.py) to compare with: ``cut`` and ``paste`` for
``geometry.cut_i420`` and ``geometry.paste_i420``, ``paste_restored`` for compose's blend
of a restored face (``face.align.restored_layer``), ``from_bgr_frame`` to make I420 frames."""

from __future__ import annotations

import cv2
import numpy as np

from heygem_ray import geometry
from heygem_ray.face.align import DEFAULT_FEATHER, restored_layer
from heygem_ray.media import yuv


def cut(frame: np.ndarray, box: np.ndarray, size: int, resample: str = "area") -> np.ndarray:
    """(H, W, 3) uint8 frame, box → (size, size, 3) uint8 crop (edge pixels repeated outside)."""
    ys, xs = geometry._box_pixels(box, *frame.shape[:2])
    region = frame[ys[:, None], xs[None, :]]
    return cv2.resize(region, (size, size), interpolation=geometry._RESAMPLE[resample])


def paste(
    frame: np.ndarray, crop: np.ndarray, box: np.ndarray, mask: np.ndarray, base: np.ndarray | None = None
) -> None:
    """Blend ``crop`` (S, S, 3) uint8 into ``frame`` in place over ``box``.

    ``mask`` (S, S) float32 in [0, 1] is the weight of the generated crop; it falls to 0
    at the crop's border so no box edge shows. Pixels outside the box are not touched.

    With ``base`` (the crop the model was given), only the change is pasted:
    ``frame + mask · (up(crop) − up(base))``. Where the model left the crop as it was,
    the frame keeps its full-resolution detail instead of a resized copy of itself.

    Only the rectangle where the resized mask is above 0 is blended: outside it either
    formula gives back the frame's own pixels, so the result is the same, for less work
    (warp's mask covers 41 % of its crop).
    """
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    # The part of the box inside the frame, in box coordinates.
    bx0, by0, bx1, by1 = max(x0, 0) - x0, max(y0, 0) - y0, min(x1, w) - x0, min(y1, h) - y0
    if bx0 >= bx1 or by0 >= by1:
        return
    m = cv2.resize(mask, (bw, bh), interpolation=cv2.INTER_LINEAR)[by0:by1, bx0:bx1]
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return
    # Narrowed to the mask's support, still in box coordinates, and the same in the frame.
    by0, by1, bx0, bx1 = by0 + rows[0], by0 + rows[-1] + 1, bx0 + cols[0], bx0 + cols[-1] + 1
    m = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1, None]
    sl = (slice(by0, by1), slice(bx0, bx1))
    target = (slice(y0 + by0, y0 + by1), slice(x0 + bx0, x0 + bx1))
    gen = cv2.resize(crop, (bw, bh), interpolation=cv2.INTER_LINEAR)[sl].astype(np.float32)
    under = frame[target].astype(np.float32)
    if base is None:
        blended = m * gen + (1.0 - m) * under
    else:
        old = cv2.resize(base, (bw, bh), interpolation=cv2.INTER_LINEAR)[sl].astype(np.float32)
        blended = under + m * (gen - old)
    frame[target] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def from_bgr_frame(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR (even H and W) → an I420 frame, each chroma sample the mean of
    the four pixels it covers, rounded."""
    height, width = bgr.shape[:2]
    converted = yuv.bgr_to_yuv(bgr)
    frame = np.empty(yuv.frame_shape(width, height), np.uint8)
    luma, cb, cr = yuv.planes(frame)
    luma[:] = yuv._round(converted[..., 0])
    chroma = yuv.halve(converted[..., 1:])
    cb[:], cr[:] = yuv._round(chroma[..., 0]), yuv._round(chroma[..., 1])
    return frame


def paste_restored(
    frame: np.ndarray,
    restored: np.ndarray,
    box: np.ndarray,
    matrix: np.ndarray,
    mask: np.ndarray,
    blend: float = 1.0,
    feather: float = DEFAULT_FEATHER,
) -> None:
    """Blend a restored face (``restored_layer``'s arguments) into a BGR ``frame`` (H, W,
    3) uint8 in place, inside ``box``: each pixel becomes w · restored + (1 − w) · frame,
    rounded. Where the layer's weight w is 0 the frame's pixels stay as they are, bit for
    bit. (Compose blends the same layer into its I420 frames with ``geometry.paste_i420``.)
    """
    face, weight = restored_layer(restored, box, matrix, mask, blend, feather)
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    # The part of the box inside the frame, in box coordinates.
    bx0, by0, bx1, by1 = max(x0, 0) - x0, max(y0, 0) - y0, min(x1, w) - x0, min(y1, h) - y0
    if bx0 >= bx1 or by0 >= by1:
        return
    inside = (slice(by0, by1), slice(bx0, bx1))
    on = weight[inside] > 0
    if not on.any():
        return
    target = frame[y0 + by0 : y0 + by1, x0 + bx0 : x0 + bx1]  # a view: written in place
    wt = weight[inside][on][:, None]  # (n, 1)
    mixed = wt * face[inside][on].astype(np.float32) + (1 - wt) * target[on].astype(np.float32)
    target[on] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
