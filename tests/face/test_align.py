"""Face alignment to the FFHQ template and the masked paste-back: known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from heygem_ray.face.align import (
    FFHQ_TEMPLATE,
    OUTSIDE_BGR,
    TILE,
    from_tile,
    paste_restored,
    similarity,
    tile_weight,
    to_tile,
)


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


@pytest.fixture(scope="module")
def paste_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A region, a 'restored' tile (the aligned region's colours inverted) and a mask over
    the region's lower half."""
    region = _smooth_image(300, 360, seed=1)
    tile = 255 - to_tile(region, KNOWN)
    mask = np.zeros(region.shape[:2], np.float32)
    mask[150:, :] = 1.0
    mask[140:150, :] = np.linspace(0, 1, 10, dtype=np.float32)[:, None]  # a soft edge
    return region, tile, mask


def test_paste_leaves_pixels_outside_the_mask_bit_identical(paste_case) -> None:
    region, tile, mask = paste_case
    out = paste_restored(region, tile, KNOWN, mask)
    assert out is not region and out.dtype == np.uint8
    np.testing.assert_array_equal(out[mask == 0], region[mask == 0])
    changed = np.abs(out.astype(np.int16) - region).max(axis=2) > 0
    assert changed[mask > 0].mean() > 0.3  # and inside it something did change


def test_paste_inside_mask_and_tile_is_the_restored_face(paste_case) -> None:
    region, tile, mask = paste_case
    out = paste_restored(region, tile, KNOWN, mask, blend=1.0, feather=48.0)
    restored = from_tile(tile, KNOWN, region.shape[:2])
    full = (from_tile(tile_weight(48.0), KNOWN, region.shape[:2]) > 0.9999) & (mask == 1.0)
    assert full.sum() > 1000
    np.testing.assert_array_equal(out[full], restored[full])


def test_blend_mixes_restored_over_unrestored(paste_case) -> None:
    region, tile, mask = paste_case
    restored = from_tile(tile, KNOWN, region.shape[:2]).astype(np.float64)
    full = (from_tile(tile_weight(), KNOWN, region.shape[:2]) > 0.9999) & (mask == 1.0)
    half = paste_restored(region, tile, KNOWN, mask, blend=0.5).astype(np.float64)
    want = 0.5 * restored + 0.5 * region
    assert np.abs(half[full] - want[full]).max() <= 0.51  # rounding, and w a hair off 0.5 where bilinear
    np.testing.assert_array_equal(paste_restored(region, tile, KNOWN, mask, blend=0.0), region)


@pytest.mark.parametrize("blend", [-0.1, 1.5])
def test_blend_outside_0_1_is_refused(paste_case, blend: float) -> None:
    region, tile, mask = paste_case
    with pytest.raises(ValueError, match=r"blend must be in \[0, 1\]"):
        paste_restored(region, tile, KNOWN, mask, blend=blend)
