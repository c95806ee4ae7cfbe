"""Frames as the encoder takes them: I420 (planar YUV 4:2:0), BT.709, limited range.

Analysis stores the reference this way and compose hands it to the encoder this way, so
the pixels a job does not paste over travel from the decoder to the encoder untouched:
no full-frame colour conversion on the way (each one cost more than the paste, and
ffmpeg's default BGR conversion truncated). Only the regions that need BGR (a pack's
face crop, the generated crop being pasted) are converted, exactly, here.

An I420 frame of width W and height H (both even) is one (H·3/2, W) uint8 array: the Y
plane's H rows, then the U (Cb) plane and the V (Cr) plane, each (H/2, W/2), packed
row after row. Chroma sample (i, j) covers luma pixels (2i, 2j) to (2i+1, 2j+1).
"""

from __future__ import annotations

import cv2
import numpy as np

# BT.709 luma weights of R and B (G's is the rest).
_KR, _KB = 0.2126, 0.0722
_KG = 1.0 - _KR - _KB
# Limited ("tv") range: luma 16–235, chroma 16–240 around 128, for 8-bit samples.
_Y_SCALE, _C_SCALE = 219.0 / 255.0, 224.0 / 255.0

# (3, 4) float32: B, G, R in [0, 255] → Y, Cb, Cr (cv2.transform's affine form; the last
# column is the offset).
_TO_YUV = np.array(
    [
        [_Y_SCALE * _KB, _Y_SCALE * _KG, _Y_SCALE * _KR, 16.0],
        [_C_SCALE * 0.5, -_C_SCALE * 0.5 * _KG / (1 - _KB), -_C_SCALE * 0.5 * _KR / (1 - _KB), 128.0],
        [-_C_SCALE * 0.5 * _KB / (1 - _KR), -_C_SCALE * 0.5 * _KG / (1 - _KR), _C_SCALE * 0.5, 128.0],
    ],
    np.float32,
)
# (3, 4) float32: its inverse, Y, Cb, Cr → B, G, R.
_TO_BGR = np.concatenate(
    [np.linalg.inv(_TO_YUV[:, :3]), -np.linalg.inv(_TO_YUV[:, :3]) @ _TO_YUV[:, 3:]], axis=1
).astype(np.float32)


def frame_shape(width: int, height: int) -> tuple[int, int]:
    """The (rows, columns) of an I420 frame of ``width`` × ``height`` pixels."""
    return height * 3 // 2, width


def size_of(frame: np.ndarray) -> tuple[int, int]:
    """(width, height) in pixels of an I420 ``frame``."""
    return frame.shape[1], frame.shape[0] * 2 // 3


def planes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of an I420 ``frame``'s planes: Y (H, W), U (H/2, W/2), V (H/2, W/2), uint8.
    Writing into them writes into the frame."""
    width, height = size_of(frame)
    flat = frame.reshape(-1)
    luma, chroma = width * height, (width // 2) * (height // 2)
    return (
        flat[:luma].reshape(height, width),
        flat[luma : luma + chroma].reshape(height // 2, width // 2),
        flat[luma + chroma :].reshape(height // 2, width // 2),
    )


def bgr_to_yuv(bgr: np.ndarray) -> np.ndarray:
    """(h, w, 3) BGR (uint8 or float32, 0–255) → (h, w, 3) float32 Y, Cb, Cr, unrounded."""
    return cv2.transform(bgr.astype(np.float32, copy=False), _TO_YUV)


def bgr_to_yuv_change(bgr: np.ndarray) -> np.ndarray:
    """A change of colour, (h, w, 3) float32 B, G, R → (h, w, 3) float32 Y, Cb, Cr: the
    conversion's linear part alone (no offsets)."""
    return cv2.transform(bgr.astype(np.float32, copy=False), _TO_YUV[:, :3])


def to_bgr(luma: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Full-resolution (h, w) uint8 Y, Cb, Cr planes → (h, w, 3) uint8 BGR, rounded and
    clipped to 0–255."""
    return cv2.transform(cv2.merge([luma, cb, cr]), _TO_BGR)  # uint8 in, saturating rounded uint8 out


def region_to_bgr(frame: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The pixels of an I420 ``frame`` at rows ``ys`` (h,) and columns ``xs`` (w,) (int
    indices inside the frame, in any order, repeats allowed) → (h, w, 3) uint8 BGR. Each
    pixel takes the chroma sample that covers it."""
    luma, cb, cr = planes(frame)
    rows, cols = ys[:, None], xs[None, :]
    return to_bgr(luma[rows, cols], cb[rows // 2, cols // 2], cr[rows // 2, cols // 2])


def to_bgr_frame(frame: np.ndarray) -> np.ndarray:
    """An I420 ``frame`` → (H, W, 3) uint8 BGR (exact BT.709; for checks and previews:
    compose never converts whole frames)."""
    width, height = size_of(frame)
    return region_to_bgr(frame, np.arange(height), np.arange(width))


def halve(values: np.ndarray) -> np.ndarray:
    """(h, w) or (h, w, c) float32 with even h and w → (h/2, w/2[, c]): the mean of each
    2 × 2 block (OpenCV's area resize, exact at a factor of two: a twentieth of NumPy's
    reshaped mean's time, which was most of a paste)."""
    h, w = values.shape[:2]
    return cv2.resize(values, (w // 2, h // 2), interpolation=cv2.INTER_AREA).reshape(h // 2, w // 2, *values.shape[2:])


_NOTHING = np.zeros(1)  # a scalar 0 to OpenCV


def _round(values: np.ndarray) -> np.ndarray:
    """float32 → uint8, rounded (half to even) and clipped to 0–255: OpenCV's saturating
    conversion, ten times NumPy's rint, clip and cast."""
    return cv2.add(values, _NOTHING, dtype=cv2.CV_8U)


def put(plane: np.ndarray, values: np.ndarray) -> None:
    """Write float32 ``values`` into the uint8 ``plane`` (a view) of the same shape, rounded
    and clipped to 0–255."""
    plane[:] = _round(values)
