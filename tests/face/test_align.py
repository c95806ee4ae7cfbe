"""Face alignment to the FFHQ template, the points it is fitted to, and the masked
paste-back of a restored face over a crop box: known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from heygem_ray.face import FaceTrack
from heygem_ray.face.align import (
    EYE_SPAN,
    FFHQ_TEMPLATE,
    OUTSIDE_BGR,
    TILE,
    alignment_points,
    box_grid,
    from_tile,
    similarity,
    tile_weight,
    to_tile,
)
from tests.helpers.bgr import paste_restored


def _matrix(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    """(2, 3) image → tile similarity: rotate by ``degrees`` and scale, then translate."""
    a = math.radians(degrees)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx],
                     [scale * math.sin(a), scale * math.cos(a), ty]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _image_points(matrix: np.ndarray) -> np.ndarray:
    """Where the template's five points are in an image that ``matrix`` aligns."""
    return _apply(cv2.invertAffineTransform(matrix), FFHQ_TEMPLATE.astype(np.float64))


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(20, 235, (6, 6, 3)).astype(np.float32)
    return np.rint(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)).clip(0, 255).astype(np.uint8)


# A face about 200 px wide, turned by 12°, in a 360 × 300 region: the tile magnifies it.
KNOWN = _matrix(1.6, 12.0, -90.0, -40.0)


@pytest.mark.parametrize("matrix", [KNOWN, _matrix(0.5, -30.0, 10.0, 60.0), _matrix(1.0, 0.0, 0.0, 0.0)],
                         ids=["magnify-turned", "shrink-turned", "identity"])
def test_similarity_recovers_a_known_transform(matrix: np.ndarray) -> None:
    found = similarity(_image_points(matrix))
    assert found is not None
    np.testing.assert_allclose(found, matrix, atol=1e-4)


def test_similarity_ignores_one_misplaced_point() -> None:
    points = _image_points(KNOWN)
    points[2] += (25.0, -18.0)  # the nose tip badly placed
    found = similarity(points)
    assert found is not None
    good = [0, 1, 3, 4]
    assert np.abs(_apply(found, points[good]) - FFHQ_TEMPLATE[good]).max() < 0.5


def test_similarity_of_coincident_points_is_none() -> None:
    assert similarity(np.full((5, 2), 100.0)) is None


def test_marked_points_land_on_the_template() -> None:
    """Dots drawn at a face's five points appear, in the tile, at the template's."""
    image = np.full((300, 360, 3), 255, np.uint8)
    points = _image_points(KNOWN)
    for x, y in points:
        cv2.circle(image, (round(x * 16), round(y * 16)), 3 * 16, (0, 0, 0), -1, lineType=cv2.LINE_AA, shift=4)
    matrix = similarity(points)
    assert matrix is not None
    tile = to_tile(image, matrix)
    dark = 255.0 - tile[..., 0].astype(np.float64)
    for tx, ty in FFHQ_TEMPLATE:
        y0, x0 = int(ty) - 12, int(tx) - 12
        patch = dark[y0 : y0 + 25, x0 : x0 + 25]
        ys, xs = np.mgrid[y0 : y0 + 25, x0 : x0 + 25]  # pixel centres at integers, as OpenCV's and the template's
        centre = ((xs * patch).sum() / patch.sum(), (ys * patch).sum() / patch.sum())
        assert np.hypot(centre[0] - tx, centre[1] - ty) < 0.5, (centre, (tx, ty))


def test_tile_is_grey_outside_the_image() -> None:
    image = _smooth_image(100, 100)
    tile = to_tile(image, _matrix(1.0, 0.0, 300.0, 300.0))  # the image lands on tile pixels 300..399
    assert tile.shape == (TILE, TILE, 3)
    assert (tile[:290, :290] == OUTSIDE_BGR).all()
    np.testing.assert_array_equal(tile[310:400, 310:400], image[10:100, 10:100])


def test_round_trip_gives_the_region_back() -> None:
    region = _smooth_image(300, 360)
    back = from_tile(to_tile(region, KNOWN), KNOWN, region.shape[:2])
    covered = from_tile(np.ones((TILE, TILE), np.float32), KNOWN, region.shape[:2])
    # Inside the tile's footprint and 2 px from the region's edge (where the tile mixed in
    # the grey it shows outside the region).
    inner = cv2.erode((covered > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(bool)
    assert inner.mean() > 0.3  # the test sees a good part of the region
    diff = np.abs(back.astype(np.int16) - region.astype(np.int16))[inner]
    assert diff.max() <= 2 and diff.mean() < 0.5


def test_tile_weight_is_one_inside_and_zero_at_the_border() -> None:
    weight = tile_weight(48.0)
    assert weight.shape == (TILE, TILE) and weight.dtype == np.float32
    assert (weight[48:-48, 48:-48] == 1.0).all() and weight[47, 256] < 1.0
    assert weight[0].max() == weight[:, -1].max() == 0.0
    assert np.all(np.diff(weight[TILE // 2, : TILE // 2]) >= 0)  # rises monotonically towards the middle


def test_box_grid_maps_grid_pixels_onto_the_box() -> None:
    """Under the identity, pixel (i, j) of a grid the box's own size is frame pixel
    (x0 + i, y0 + j); of a grid half its size, the centre of its 2 × 2 pixels."""
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    box = np.array([40, 30, 140, 90])
    same = box_grid(box, (100, 60), identity)
    np.testing.assert_allclose(_apply(same, np.array([[0.0, 0.0], [99.0, 59.0]])), [[40, 30], [139, 89]], atol=1e-12)
    half = box_grid(box, (50, 30), identity)
    np.testing.assert_allclose(_apply(half, np.array([[0.0, 0.0], [49.0, 29.0]])), [[40.5, 30.5], [138.5, 88.5]],
                               atol=1e-12)
    # and then through the frame → tile matrix
    np.testing.assert_allclose(box_grid(box, (100, 60), KNOWN), KNOWN @ np.vstack([same, [0, 0, 1]]), atol=1e-12)


def test_box_grid_samples_what_cv2_resize_of_the_box_gives() -> None:
    frame = _smooth_image(200, 240, seed=2)
    box = np.array([30, 20, 190, 180])
    crop = cv2.resize(frame[20:180, 30:190], (80, 80), interpolation=cv2.INTER_LINEAR)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    sampled = from_tile(frame, box_grid(box, (80, 80), identity), (80, 80))
    assert np.abs(sampled.astype(np.int16) - crop).max() <= 1


def _track(boxes: np.ndarray, mouths: np.ndarray) -> FaceTrack:
    n = len(boxes)
    return FaceTrack(boxes=boxes.astype(np.float32), present=np.ones(n, bool), detected=np.ones(n, bool),
                     mouths=mouths.astype(np.float32), chins=np.full(n, 1.08, np.float32))


def test_alignment_points_keep_the_templates_shape_on_the_tracked_mouth() -> None:
    track = _track(np.array([[100.0, 50.0, 300.0, 250.0], [10.0, 20.0, 60.0, 80.0]]),
                   np.array([[0.5, 0.83], [0.45, 0.8]]))
    points = alignment_points(track)
    assert points.shape == (2, 5, 2) and points.dtype == np.float32
    for p, box, (u, v) in zip(points, track.boxes, track.mouths, strict=True):
        width = box[2] - box[0]
        np.testing.assert_allclose(np.linalg.norm(p[1] - p[0]), EYE_SPAN * width, rtol=1e-5)
        np.testing.assert_allclose(p[3:].mean(axis=0), [box[0] + u * width, box[1] + v * (box[3] - box[1])],
                                   atol=1e-3)
        matrix = similarity(p)
        assert matrix is not None
        assert np.abs(_apply(matrix, p.astype(np.float64)) - FFHQ_TEMPLATE).max() < 1e-2  # upright, exact fit
    # eyes above the mouth by 0.46 box heights, for the typical frontal box
    assert points[0, 0, 1] == pytest.approx(50 + 200 * (0.83 - 0.46), abs=2.0)


@pytest.fixture(scope="module")
def paste_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A frame, a crop box reaching past its right edge, a 'restored' face over the box
    (the aligned frame's colours inverted, sampled on a 150-px grid over the box) and a
    mask over the crop's lower half with a soft edge."""
    frame = _smooth_image(300, 360, seed=1)
    box = np.array([100, 60, 380, 300])  # 280 × 240, 20 px outside the frame on the right
    restored = from_tile(255 - to_tile(frame, KNOWN), box_grid(box, (150, 150), KNOWN), (150, 150))
    mask = np.zeros((96, 96), np.float32)
    mask[48:, :] = 1.0
    mask[40:48, :] = np.linspace(0, 1, 8, dtype=np.float32)[:, None]  # a soft edge
    return frame, box, restored, mask


def _spread(mask: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The mask over the box in frame coordinates, as paste spreads it (0 elsewhere)."""
    out = np.zeros(shape, np.float32)
    x0, y0, x1, y1 = box
    spread = cv2.resize(mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out[y0:y1, x0 : min(x1, shape[1])] = spread[:, : min(x1, shape[1]) - x0]
    return out


def test_paste_leaves_pixels_outside_the_mask_bit_identical(paste_case) -> None:
    frame, box, restored, mask = paste_case
    out = frame.copy()
    paste_restored(out, restored, box, KNOWN, mask)
    outside = _spread(mask, box, frame.shape[:2]) == 0
    np.testing.assert_array_equal(out[outside], frame[outside])
    changed = np.abs(out.astype(np.int16) - frame).max(axis=2) > 0
    assert changed[~outside].mean() > 0.3  # and inside it something did change


def test_paste_inside_mask_and_tile_is_the_restored_face(paste_case) -> None:
    """Where mask and tile weight are 1, the frame shows the restored face: the restored
    tile brought back at frame resolution (the 150-px grid resized over the box)."""
    frame, box, restored, mask = paste_case
    out = frame.copy()
    paste_restored(out, restored, box, KNOWN, mask, blend=1.0, feather=48.0)
    want = 255 - from_tile(to_tile(frame, KNOWN), KNOWN, frame.shape[:2])
    full = (from_tile(tile_weight(48.0), KNOWN, frame.shape[:2]) > 0.9999) & (_spread(mask, box, frame.shape[:2]) == 1)
    assert full.sum() > 1000
    assert np.abs(out[full].astype(np.int16) - want[full]).mean() < 3.0  # resampled twice on the way


def test_blend_mixes_restored_over_unrestored(paste_case) -> None:
    frame, box, restored, mask = paste_case
    out, half = frame.copy(), frame.copy()
    paste_restored(out, restored, box, KNOWN, mask, blend=1.0)
    paste_restored(half, restored, box, KNOWN, mask, blend=0.5)
    full = (from_tile(tile_weight(), KNOWN, frame.shape[:2]) > 0.9999) & (_spread(mask, box, frame.shape[:2]) == 1)
    want = 0.5 * out.astype(np.float64) + 0.5 * frame
    assert np.abs(half[full] - want[full]).max() <= 1.01  # each rounded once
    none = frame.copy()
    paste_restored(none, restored, box, KNOWN, mask, blend=0.0)
    np.testing.assert_array_equal(none, frame)


@pytest.mark.parametrize("blend", [-0.1, 1.5])
def test_blend_outside_0_1_is_refused(paste_case, blend: float) -> None:
    frame, box, restored, mask = paste_case
    with pytest.raises(ValueError, match=r"blend must be in \[0, 1\]"):
        paste_restored(frame.copy(), restored, box, KNOWN, mask, blend=blend)
