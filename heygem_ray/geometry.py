"""Face-crop geometry: which part of a frame a pack sees, and how its output goes back.

Boxes are ``(x0, y0, x1, y1)`` integer pixels of the decoded frame, end-exclusive. A box
may reach outside the frame (square crops near an edge): cutting fills the outside by
repeating the edge pixels, pasting writes only the inside.

Frames are I420 as the template stores them and the encoder takes them (``cut_i420``,
``paste_i420``); the crops are BGR, and only the pasted region of a frame is converted, so
every other pixel reaches the encoder as it was decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from heygem_ray.face import FaceTrack
from heygem_ray.media import yuv

# Where the lower end of the nose bridge sits above the mouth, in face-box heights of a
# frontal cascade's box (the mouth near v = 0.83, the bridge's end near v = 0.56).
NOSE_ABOVE_MOUTH = 0.27
_RESAMPLE = {"area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


@dataclass(frozen=True)
class CropGeometry:
    """How a pack cuts its face crop from the presenter's face track.

    ``mouth``: a square of ``scale`` × the face box's larger side, centred across on the
    mouth and placed so the mouth lands at height ``mouth_y`` of the crop (crop y in
    [-1, 1], down): every crop holds the mouth at the same place, whatever the face's
    proportions or the detector's box.
    ``padded``: the face box, reaching down at least to the chin, grown by ``pad`` =
    (top, bottom, left, right) pixels and clipped to the frame (the public Wav2Lip
    inference geometry, whose detector's box ends at the chin).
    ``halves``: the face's width, from as far above the nose as the chin is below it down
    to the chin, grown by ``pad`` and clipped to the frame: the nose sits on the crop's
    middle row, so its lower half is the mouth and jaw (MuseTalk's crop, which it cuts
    from landmarks: the lower end of the nose bridge and the lowest jaw point). The nose
    is placed ``NOSE_ABOVE_MOUTH`` face heights above the tracked mouth.
    The crop is resized to ``size`` × ``size`` with ``resample``. The track is already
    smooth over time.
    """

    size: int
    mode: Literal["mouth", "padded", "halves"]
    scale: float = 1.0
    mouth_y: float = 0.0
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    resample: Literal["area", "lanczos"] = "area"

    def crop_boxes(self, track: FaceTrack, width: int, height: int) -> np.ndarray:
        """The track's face boxes and mouths → (n, 4) int32 crop boxes."""
        faces = track.boxes
        fw, fh = faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1]
        if self.mode == "mouth":
            side = self.scale * np.maximum(fw, fh)
            cx = faces[:, 0] + track.mouths[:, 0] * fw
            cy = faces[:, 1] + track.mouths[:, 1] * fh - self.mouth_y * side / 2
            boxes = np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)
        else:
            top, bottom, left, right = self.pad
            chin = faces[:, 1] + track.chins * fh
            if self.mode == "halves":
                nose = faces[:, 1] + (track.mouths[:, 1] - NOSE_ABOVE_MOUTH) * fh
                boxes = np.stack([faces[:, 0], 2 * nose - chin, faces[:, 2], chin], axis=1)
            else:
                boxes = np.stack([faces[:, 0], faces[:, 1], faces[:, 2], np.maximum(faces[:, 3], chin)], axis=1)
            boxes = boxes + np.array([-left, -top, right, bottom], np.float32)
            boxes = np.clip(boxes, 0, [width, height, width, height])
        out = np.rint(boxes).astype(np.int32)
        # At least one pixel wide and high, whatever rounding did.
        out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
        out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
        return out


def cut_i420(frame: np.ndarray, box: np.ndarray, size: int, resample: str = "area") -> np.ndarray:
    """(H·3/2, W) uint8 I420 frame, box → (size, size, 3) uint8 BGR crop, the box's pixels
    (edge pixels repeated outside the frame) resized: only those are converted."""
    width, height = yuv.size_of(frame)
    ys, xs = _box_pixels(box, height, width)
    return cv2.resize(yuv.region_to_bgr(frame, ys, xs), (size, size), interpolation=_RESAMPLE[resample])


def _box_pixels(box: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows (h,) and columns (w,) of a box's pixels, those outside the frame moved to its edge."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return np.clip(np.arange(y0, y1), 0, height - 1), np.clip(np.arange(x0, x1), 0, width - 1)


def paste_i420(
    frame: np.ndarray, crop: np.ndarray, box: np.ndarray, mask: np.ndarray, base: np.ndarray | None = None
) -> None:
    """Blend ``crop`` (S, S, 3) uint8 BGR into the I420 ``frame`` (H·3/2, W) uint8 in place
    over ``box``, resized to it (linear).

    ``mask`` (S, S) float32 in [0, 1] is the weight of the generated crop; it falls to 0
    at the crop's border so no box edge shows. Pixels outside the box are not touched.
    With ``base`` (the crop the model was given), only the change is pasted:
    ``frame + mask · (up(crop) − up(base))``: where the model left the crop as it was, the
    frame keeps its full-resolution detail instead of a resized copy of itself.

    The blend is done in BT.709 YUV (it commutes with the linear colour conversion, so the
    result is what blending in BGR and converting would give, less the rounding of a
    round trip: ``tests/helpers/bgr.py`` keeps that BGR blend, which the tests compare).

    Only the mask's support, grown to whole chroma samples (even rows and columns), is
    read and written: every other pixel keeps the bytes it was decoded with. Luma is
    blended per pixel; each chroma sample takes the mean of its four pixels' blends.
    """
    width, height = yuv.size_of(frame)
    x0, y0, x1, y1 = (int(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    m = cv2.resize(mask, (bw, bh), interpolation=cv2.INTER_LINEAR)  # (bh, bw) in box coordinates
    # The mask's support inside the frame, in frame coordinates.
    inside = m[max(-y0, 0) : min(height, y1) - y0, max(-x0, 0) : min(width, x1) - x0]
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return
    top, left = max(y0, 0) + rows[0], max(x0, 0) + cols[0]
    bottom, right = max(y0, 0) + rows[-1] + 1, max(x0, 0) + cols[-1] + 1
    # Grown to even bounds: at most one pixel past the box each way, where the padded mask is 0.
    top, left, bottom, right = top & ~1, left & ~1, (bottom + 1) & ~1, (right + 1) & ~1
    sl = (slice(top - y0 + 1, bottom - y0 + 1), slice(left - x0 + 1, right - x0 + 1))  # in the padded box

    def padded(image: np.ndarray, zero: bool) -> np.ndarray:
        border = cv2.BORDER_CONSTANT if zero else cv2.BORDER_REPLICATE
        return cv2.copyMakeBorder(image, 1, 1, 1, 1, border, value=0)[sl]

    m = padded(m, zero=True)  # (h, w) float32 weight of the generated crop
    luma, cb, cr = yuv.planes(frame)
    target = (slice(top, bottom), slice(left, right))
    chroma_target = (slice(top // 2, bottom // 2), slice(left // 2, right // 2))
    under_y = luma[target].astype(np.float32)
    under_c = cv2.merge([cb[chroma_target], cr[chroma_target]]).astype(np.float32)  # (h/2, w/2, 2)
    if base is None:  # m · gen + (1 − m) · frame = frame + m · gen − m · frame
        weighted = yuv.bgr_to_yuv(padded(cv2.resize(crop, (bw, bh), interpolation=cv2.INTER_LINEAR), zero=False))
        weighted *= m[..., None]
        new_y = under_y + weighted[..., 0] - m * under_y
        halved = yuv.halve(weighted)
        new_c = under_c + halved[..., 1:] - yuv.halve(m)[..., None] * under_c
    else:  # frame + m · (gen − base): the difference converted alone (the conversion is linear)
        gen, under = (padded(cv2.resize(c, (bw, bh), interpolation=cv2.INTER_LINEAR), zero=False) for c in (crop, base))
        weighted = yuv.bgr_to_yuv_change(cv2.subtract(gen, under, dtype=cv2.CV_32F))
        weighted *= m[..., None]
        new_y = under_y + weighted[..., 0]
        new_c = under_c + yuv.halve(weighted)[..., 1:]
    yuv.put(luma[target], new_y)
    yuv.put(cb[chroma_target], new_c[..., 0])
    yuv.put(cr[chroma_target], new_c[..., 1])


def feathered_ellipse(size: int, centre: tuple[float, float], radii: tuple[float, float], feather: float) -> np.ndarray:
    """(size, size) float32 mask: 1 inside the ellipse, falling smoothly to 0 outside.

    ``centre`` and ``radii`` are in crop units, x and y in [-1, 1]; ``feather`` is the
    width of the soft edge in the same units. The mask is forced to 0 on the crop border.
    """
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    r = np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2)
    # Distance beyond the ellipse, roughly in crop units, mapped through a smoothstep.
    t = np.clip((r - 1.0) * min(radii) / feather, 0.0, 1.0)
    mask = 1.0 - t * t * (3 - 2 * t)
    border = np.minimum.reduce([x + 1, 1 - x, y + 1, 1 - y]) * size / 2  # pixels to the edge
    return (mask * np.clip(border / 2.0, 0.0, 1.0)).astype(np.float32)
