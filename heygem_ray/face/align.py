"""Aligning a face to GFPGAN's 512-px FFHQ template, and blending the restored face back.

GFPGAN restores faces aligned as its training faces were (FFHQ): eyes, nose tip and mouth
corners at fixed places in a 512×512 tile. The alignment is a similarity transform
(rotation, uniform scale, translation) fitted to five face points, as the public code's
helper fits it (OpenCV's least-median-of-squares estimate); the restored tile goes back
through the inverse transform and is blended only where the caller allows it.

Pure functions over arrays: images are (H, W, 3) uint8 BGR; points are (x, y) in pixels,
integers at pixel centres ((0, 0) is the centre of the top-left pixel, as in OpenCV and
the template); matrices are (2, 3) float64 mapping image → tile coordinates
(``cv2.warpAffine``'s convention).
"""

from __future__ import annotations

import cv2
import numpy as np

TILE = 512  # side of the aligned face, pixels
# Where the five points sit in the tile: left eye, right eye, nose tip, left mouth corner,
# right mouth corner ("left" = smaller x in the image).
FFHQ_TEMPLATE = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043],
     [313.08905, 371.15118]],
    np.float32,
)
# What the tile shows where the transform reaches outside the image: the public helper's grey.
OUTSIDE_BGR = (135, 133, 132)
# Width, in tile pixels, over which a restored tile fades in from its border, so its edge
# never shows in the frame (about a tenth of the tile, like the public paste-back's blur).
DEFAULT_FEATHER = 48.0


def similarity(points: np.ndarray) -> np.ndarray | None:
    """(5, 2) face points in the template's order → (2, 3) float64 image → tile matrix, the
    least-median-of-squares similarity (robust to one misplaced point). None when the
    points fix no transform (all at one place)."""
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(points, np.float32).reshape(-1, 1, 2),
                                            FFHQ_TEMPLATE.reshape(-1, 1, 2), method=cv2.LMEDS)
    if matrix is None or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        return None
    return matrix.astype(np.float64)


def to_tile(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The (512, 512, 3) aligned face of ``image`` under ``matrix`` (bilinear; grey where
    the tile reaches outside the image)."""
    return cv2.warpAffine(image, matrix, (TILE, TILE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=OUTSIDE_BGR)


def from_tile(tile: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``tile`` (512, 512, C) warped back into an image of ``size`` = (height, width)
    through the inverse of ``matrix`` (bilinear; 0 where the image is outside the tile)."""
    height, width = size
    return cv2.warpAffine(tile, cv2.invertAffineTransform(matrix), (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def tile_weight(feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """(512, 512) float32: 1 inside, falling smoothly (smoothstep) over ``feather`` pixels
    to 0 on the tile's outermost pixels."""
    index = np.arange(TILE, dtype=np.float32)
    to_edge = np.minimum(index, TILE - 1 - index)  # pixels to the outermost row or column: 0 on it
    ramp = np.clip(to_edge / np.float32(max(feather, 1.0)), 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def paste_restored(
    image: np.ndarray,
    tile: np.ndarray,
    matrix: np.ndarray,
    mask: np.ndarray,
    blend: float = 1.0,
    feather: float = DEFAULT_FEATHER,
) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the restored ``tile`` blended in: a new array.

    Each pixel becomes w · restored + (1 − w) · image, rounded, with
    w = ``blend`` × ``mask`` × the tile's feathered border weight warped back (0 outside
    the tile). ``mask`` (H, W) float32 in [0, 1] says where restoring is allowed (where the
    pack changed the face); ``blend`` in [0, 1] how much of the restored face to show
    there. Where w is 0 (outside the mask, outside the tile, or ``blend`` 0) the pixels
    are the input's, bit for bit.
    """
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be in [0, 1], got {blend}")
    height, width = image.shape[:2]
    if mask.shape != (height, width):
        raise ValueError(f"mask is {mask.shape}, the image is {(height, width)}")
    out = image.copy()
    weight = from_tile(tile_weight(feather), matrix, (height, width)) * mask.astype(np.float32) * np.float32(blend)
    inside = weight > 0
    if not inside.any():
        return out
    restored = from_tile(tile, matrix, (height, width))
    w = weight[inside][:, None]  # (n, 1)
    mixed = w * restored[inside].astype(np.float32) + (1 - w) * image[inside].astype(np.float32)
    out[inside] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out
