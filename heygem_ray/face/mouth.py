"""Where the mouth and chin sit inside a face box, steady over time.

Positions are in face-box units: u across (0 left edge, 1 right edge), v down (0 top, 1
bottom). A frontal cascade's box runs from the brow to about the chin, so the mouth is
near (0.5, 0.83) and the chin near v = 1.08 — but that varies with the face's
proportions, the head's tilt and the detector. Per frame, the mouth is where the lips
meet, between the inner edges of both lips as the face mesh places them
(``face/looks.py``); the estimates are then smoothed over time and drawn towards the
typical position where they are unsure, so crops centred on them stay still.
"""

from __future__ import annotations

import numpy as np

from heygem_ray.face.smooth import trend

# The typical mouth centre in a frontal cascade's box, and the chin below it.
TYPICAL_MOUTH = (0.5, 0.83)
CHIN_BELOW_MOUTH = 0.25
# A mouth estimate further than this from the typical one is a miss (the mesh placed on
# something else than a face the cascade boxed).
_MAX_OFFSET = (0.12, 0.12)
# The mouth's place in the box changes slower than this many seconds (a nod, a tilt).
_PERIOD_S = 2.0


def plausible(points: np.ndarray) -> np.ndarray:
    """(n, 2) per-frame (u, v) estimates → the same with NaN where an estimate is too far
    from the typical mouth to be one."""
    off = np.abs(points - np.asarray(TYPICAL_MOUTH, np.float32))
    far = (off[:, 0] > _MAX_OFFSET[0]) | (off[:, 1] > _MAX_OFFSET[1])
    return np.where(far[:, None], np.float32(np.nan), points).astype(np.float32)


def steady(points: np.ndarray, fps: float) -> np.ndarray:
    """(n, 2) per-frame (u, v) estimates, NaN where there was none → (n, 2) float32 steady
    positions: their trend over ``_PERIOD_S``, drawn towards the typical position when few
    frames had an estimate (the typical position when none had)."""
    points = plausible(points)
    have = ~np.isnan(points[:, 0])
    typical = np.asarray(TYPICAL_MOUTH, np.float32)
    if not have.any():
        return np.broadcast_to(typical, points.shape).astype(np.float32)
    out = trend(np.nan_to_num(points), have, fps, _PERIOD_S)
    trust = min(1.0, float(have.mean()) / 0.5)
    return (trust * out + (1 - trust) * typical).astype(np.float32)
