"""Where the mouth and chin sit inside a face box.

Positions are in face-box units: u across (0 left edge, 1 right edge), v down (0 top, 1
bottom). A frontal cascade's box runs from the brow to about the chin, so the mouth is
near (0.5, 0.83) and the chin near v = 1.08 — but that varies with the face's
proportions, the head's tilt and the detector. Per frame, the mouth is found as the
reddest, darkest blob of the lower face (a "mouth map" of Cr and Cr/Cb, the lips' colour
against the skin's); the estimates are then smoothed over time and drawn towards the
typical position where they are unsure, so crops centred on them stay still.
"""

from __future__ import annotations

import cv2
import numpy as np

from heygem_ray.face.smooth import trend

# The typical mouth centre in a frontal cascade's box, and the chin below it.
TYPICAL_MOUTH = (0.5, 0.83)
CHIN_BELOW_MOUTH = 0.25
# Where the mouth is looked for, in box units: (u0, u1), (v0, v1).
_SEARCH_U = (0.22, 0.78)
_SEARCH_V = (0.62, 1.0)
# A mouth estimate further than this from the typical one is a miss (a beard, a shadow).
_MAX_OFFSET = (0.12, 0.12)
# Below this face side in pixels the lips are a few pixels: use the typical position.
MIN_SIDE = 36
# The mouth's place in the box changes slower than this many seconds (a nod, a tilt).
_PERIOD_S = 2.0


def mouth_point(frame: np.ndarray, box: np.ndarray) -> tuple[float, float] | None:
    """The mouth centre (u, v) in ``box`` units from one (H, W, 3) BGR frame, or None
    when the face is too small or the mouth map has no clear peak."""
    h, w = frame.shape[:2]
    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
    if min(bw, bh) < MIN_SIDE:
        return None
    x0, x1 = (int(np.clip(box[0] + u * bw, 0, w)) for u in _SEARCH_U)
    y0, y1 = (int(np.clip(box[1] + v * bh, 0, h)) for v in _SEARCH_V)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    ycc = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2YCrCb).astype(np.float32) / 255.0
    cr, cb = ycc[..., 1], ycc[..., 2]
    cr2 = cr * cr
    ratio = cr / np.maximum(cb, 1e-3)
    eta = 0.95 * cr2.mean() / max(float(ratio.mean()), 1e-6)
    mouth_map = cr2 * (cr2 - eta * ratio) ** 2  # high on lips: red and dark against skin
    mouth_map = cv2.GaussianBlur(mouth_map, (0, 0), max(0.8, 0.02 * bw))
    peak = mouth_map > np.percentile(mouth_map, 92)
    weights = mouth_map * peak
    total = float(weights.sum())
    if total <= 0:
        return None
    ys, xs = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
    u = (x0 + float((xs * weights).sum()) / total + 0.5 - box[0]) / bw
    v = (y0 + float((ys * weights).sum()) / total + 0.5 - box[1]) / bh
    if abs(u - TYPICAL_MOUTH[0]) > _MAX_OFFSET[0] or abs(v - TYPICAL_MOUTH[1]) > _MAX_OFFSET[1]:
        return None
    return float(u), float(v)


def steady(points: np.ndarray, fps: float) -> np.ndarray:
    """(n, 2) per-frame (u, v) estimates, NaN where there was none → (n, 2) float32 steady
    positions: their trend over ``_PERIOD_S``, drawn towards the typical position when few
    frames had an estimate (the typical position when none had)."""
    have = ~np.isnan(points[:, 0])
    typical = np.asarray(TYPICAL_MOUTH, np.float32)
    if not have.any():
        return np.broadcast_to(typical, points.shape).astype(np.float32)
    out = trend(np.nan_to_num(points), have, fps, _PERIOD_S)
    trust = min(1.0, float(have.mean()) / 0.5)
    return (trust * out + (1 - trust) * typical).astype(np.float32)
