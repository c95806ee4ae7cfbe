"""Aligning a face to GFPGAN's 512-px FFHQ template, and blending the restored face back.

GFPGAN restores faces aligned as its training faces were (FFHQ): eyes, nose tip and mouth
corners at fixed places in a 512×512 tile. The alignment is a similarity transform
(rotation, uniform scale, translation) fitted to five face points, as the public code's
helper fits it (OpenCV's least-median-of-squares estimate); the restored tile goes back
through the inverse transform and is blended only where the caller allows it.

The five points come from the face track (``alignment_points``): until the track has
landmarks, they are the template's own shape, placed on the tracked mouth and scaled by
the face box's width. That one function is what a landmark model replaces.

The pipeline never moves whole frames: the restored face travels in a face crop's box,
sampled on a grid (``box_grid``) at a resolution of the caller's choosing, and
``restored_layer`` makes it a layer over that box (a face and its weight), which compose
blends into the frame with ``geometry.paste_i420``.

Pure functions over arrays: images are (H, W, 3) uint8 BGR; points are (x, y) in pixels,
integers at pixel centres ((0, 0) is the centre of the top-left pixel, as in OpenCV and
the template); matrices are (2, 3) float64 mapping image → tile coordinates
(``cv2.warpAffine``'s convention); boxes are ``(x0, y0, x1, y1)`` integer pixels,
end-exclusive, as ``heygem_ray.geometry`` cuts crops from them.
"""

from __future__ import annotations

import cv2
import numpy as np

from heygem_ray.face.track import FaceTrack

TILE = 512  # side of the aligned face, pixels
# Where the five points sit in the tile: left eye, right eye, nose tip, left mouth corner,
# right mouth corner ("left" = smaller x in the image).
FFHQ_TEMPLATE = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043],
     [313.08905, 371.15118]],
    np.float32,
)
# The template's mouth centre (between the corners) and its eyes' distance apart, tile pixels.
_TEMPLATE_MOUTH = FFHQ_TEMPLATE[3:].mean(axis=0)
_TEMPLATE_EYE_SPAN = float(np.linalg.norm(FFHQ_TEMPLATE[1] - FFHQ_TEMPLATE[0]))
# The eyes' distance apart in face-box widths, for OpenCV's frontal cascade's box (the
# face detector's; eye detections on the bundled presenter: 0.45). With the template's
# shape this puts the eyes 0.46 box heights above the mouth (v ≈ 0.37 for a mouth at 0.83).
EYE_SPAN = 0.44
# What the tile shows where the transform reaches outside the image: the public helper's grey.
OUTSIDE_BGR = (135, 133, 132)
# Width, in tile pixels, over which a restored tile fades in from its border, so its edge
# never shows in the frame (about a tenth of the tile, like the public paste-back's blur).
DEFAULT_FEATHER = 48.0


def alignment_points(track: FaceTrack) -> np.ndarray:
    """The track's (n, 5, 2) float32 face points per frame, in the template's order.

    Derived from the steady face box and mouth: the template's five points, scaled so the
    eyes are ``EYE_SPAN`` box widths apart and moved so its mouth centre is the tracked
    mouth. Upright always: the box says nothing of a tilted head (a landmark model will).
    """
    boxes = track.boxes.astype(np.float64)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    mouth = boxes[:, :2] + track.mouths * np.stack([width, height], axis=1)  # (n, 2) pixels
    scale = EYE_SPAN * width / _TEMPLATE_EYE_SPAN  # image pixels per tile pixel
    shape = (FFHQ_TEMPLATE - _TEMPLATE_MOUTH).astype(np.float64)  # (5, 2) tile pixels from the mouth
    return (mouth[:, None, :] + scale[:, None, None] * shape[None]).astype(np.float32)


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


def box_grid(box: np.ndarray, grid: tuple[int, int], matrix: np.ndarray) -> np.ndarray:
    """(2, 3) float64: pixel (i, j) of a ``grid`` = (width, height) image spread over
    ``box`` (a crop of that size cut from it, as ``cv2.resize`` samples it) → tile
    coordinates under the image → tile ``matrix``: the matrix that ``to_tile`` warps such a
    crop into the tile with, and ``from_tile`` the tile onto such a grid."""
    x0, y0, x1, y1 = (float(v) for v in box)
    sx, sy = (x1 - x0) / grid[0], (y1 - y0) / grid[1]
    # grid pixel i's centre is image x0 + (i + 0.5) · sx − 0.5 (pixel centres at integers)
    to_image = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return np.asarray(matrix, np.float64) @ to_image


def restored_layer(
    restored: np.ndarray,
    box: np.ndarray,
    matrix: np.ndarray,
    mask: np.ndarray,
    blend: float = 1.0,
    feather: float = DEFAULT_FEATHER,
) -> tuple[np.ndarray, np.ndarray]:
    """A restored face as a layer over ``box``: the face (bh, bw, 3) uint8 and its weight
    (bh, bw) float32, in box pixels (bw, bh: the box's width and height).

    ``restored`` (R, R', 3) uint8 is the restored tile sampled over the box (``box_grid``
    with grid (R', R)); ``mask`` (S, S) float32 in [0, 1] says where restoring is allowed
    (the pack's paste mask, spread over the box as ``geometry.paste_i420`` spreads it);
    ``matrix`` is the frame → tile similarity. The weight is ``blend`` × mask × the tile's
    feathered border weight: 0 outside the mask, the tile, or with ``blend`` 0."""
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be in [0, 1], got {blend}")
    x0, y0, x1, y1 = (int(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    coverage = from_tile(tile_weight(feather), box_grid(box, (bw, bh), matrix), (bh, bw))
    spread = cv2.resize(mask, (bw, bh), interpolation=cv2.INTER_LINEAR)
    face = cv2.resize(restored, (bw, bh), interpolation=cv2.INTER_LINEAR)
    return face, (coverage * spread * np.float32(blend)).astype(np.float32)
