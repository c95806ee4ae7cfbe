import cv2
import numpy as np
import pytest

from heygem_ray.face import FaceTrack
from heygem_ray.geometry import CropGeometry, cut_i420, feathered_ellipse, paste_i420
from heygem_ray.media import yuv
from heygem_ray.packs import get_pack
from tests.helpers.bgr import cut, from_bgr_frame, paste


def face(box, mouth=(0.5, 0.8), chin=1.05) -> FaceTrack:
    return FaceTrack(
        boxes=np.array([box], np.float32), present=np.ones(1, bool), detected=np.ones(1, bool),
        mouths=np.array([mouth], np.float32), chins=np.array([chin], np.float32),
    )


def test_mouth_crop_box_puts_the_mouth_where_the_pack_wants_it():
    g = CropGeometry(size=64, mode="mouth", scale=1.5, mouth_y=0.2)
    (b,) = g.crop_boxes(face([100, 100, 200, 200], mouth=(0.4, 0.8)), 640, 480)
    # Side 150, centred across on the mouth (x 140); the mouth (y 180) at 0.2 of the half-side below centre.
    assert b.tolist() == [65, 90, 215, 240]


def test_padded_crop_box_reaches_the_chin_and_is_clipped_to_the_frame():
    g = CropGeometry(size=96, mode="padded", pad=(0, 10, 0, 0))
    (b,) = g.crop_boxes(face([10, 300, 110, 400], chin=1.1), 640, 480)
    assert b.tolist() == [10, 300, 110, 420]  # chin at 410, then 10 px of padding
    (b,) = g.crop_boxes(face([10, 400, 110, 475]), 640, 480)
    assert b.tolist() == [10, 400, 110, 480]


def test_cut_repeats_edge_pixels_outside_the_frame():
    frame = np.zeros((20, 20, 3), np.uint8)
    frame[:, 0] = 200
    crop = cut(frame, np.array([-10, 0, 10, 20]), 20)
    assert crop[:, :9].min() >= 190  # the left half is the repeated left column


def test_paste_leaves_everything_outside_the_box_alone_and_blends_softly():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    before = frame.copy()
    box = np.array([30, 20, 90, 80])
    mask = feathered_ellipse(32, (0.0, 0.0), (0.8, 0.8), 0.2)
    paste(frame, np.full((32, 32, 3), 255, np.uint8), box, mask)
    outside = np.ones((100, 120), bool)
    outside[20:80, 30:90] = False
    assert np.array_equal(frame[outside], before[outside])
    assert frame[50, 60].min() == 255  # centre fully replaced
    assert np.abs(frame[20, 30].astype(int) - before[20, 30]).max() <= 1  # corner untouched


def test_paste_box_partly_outside_the_frame():
    frame = np.zeros((50, 50, 3), np.uint8)
    paste(frame, np.full((16, 16, 3), 255, np.uint8), np.array([-20, -20, 20, 20]), np.ones((16, 16), np.float32))
    assert frame[:20, :20].min() == 255 and frame[20:].max() == 0


def test_feathered_mask_is_zero_on_the_border_and_one_inside():
    m = feathered_ellipse(64, (0.0, 0.0), (0.7, 0.7), 0.2)
    assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
    assert m[32, 32] == 1.0


def test_residual_paste_of_an_unchanged_crop_leaves_the_frame_exactly_as_it_was():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    before = frame.copy()
    box = np.array([30, 20, 90, 80])
    crop = cut(frame, box, 32)
    mask = feathered_ellipse(32, (0.0, 0.0), (0.8, 0.8), 0.2)
    paste(frame, crop, box, mask, base=crop)
    assert np.array_equal(frame, before)
    # A changed crop moves the frame by exactly the (resized, masked) change.
    paste(frame, np.clip(crop.astype(int) + 40, 0, 255).astype(np.uint8), box, mask, base=crop)
    assert frame[50, 60].astype(int).mean() > before[50, 60].astype(int).mean() + 20


def _whole_box_paste(frame, crop, box, mask, base=None):
    """paste's formulas over the whole box: what paste must give, pixel for pixel."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if fx0 >= fx1 or fy0 >= fy1:  # the box is off the frame
        return
    sl = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    up = [cv2.resize(a, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR).astype(np.float32)[sl]
          for a in (mask, crop, crop if base is None else base)]
    m, gen, old = up[0][..., None], up[1], up[2]
    under = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    blended = m * gen + (1.0 - m) * under if base is None else under + m * (gen - old)
    frame[fy0:fy1, fx0:fx1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("pack", ["warp", "wav2lip", "musetalk"])
def test_paste_blends_only_where_the_mask_is_and_matches_the_whole_box_formula(pack):
    mask = get_pack(pack).paste_mask
    size = mask.shape[0]
    rng = np.random.default_rng(2)
    for trial in range(40):
        frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        crop, base = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        x0, y0 = rng.integers(-60, 150), rng.integers(-60, 110)  # some boxes hang over an edge
        side = int(rng.integers(8, 90))
        box = np.array([x0, y0, x0 + side, y0 + side])
        for given in (None, base):
            got, want = frame.copy(), frame.copy()
            paste(got, crop, box, mask, given)
            _whole_box_paste(want, crop, box, mask, given)
            assert np.array_equal(got, want), (trial, box, given is None)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 noise blurred into mid-range colours (BGR that an I420 frame can hold without
    clipping, so converting it there and back stays within a level)."""
    noise = rng.integers(40, 216, shape, dtype=np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 3) if noise.ndim == 3 else noise


@pytest.mark.parametrize("pack", ["warp", "wav2lip", "musetalk"])
def test_paste_i420_is_paste_in_bgr_within_a_level_and_leaves_every_other_byte(pack):
    """Pasting into the I420 frame gives the frame that pasting into its BGR picture and
    converting back gives (one level for the rounding of that round trip), and writes no
    byte outside the box grown to whole chroma samples: the rest reaches the encoder as it
    was decoded."""
    mask = get_pack(pack).paste_mask
    size = mask.shape[0]
    rng = np.random.default_rng(3)
    for trial in range(30):
        frame = from_bgr_frame(_smooth(rng, (120, 160, 3)))
        crop, base = (_smooth(rng, (size, size, 3)) for _ in range(2))
        x0, y0 = int(rng.integers(-60, 150)), int(rng.integers(-60, 110))  # some boxes hang over an edge
        side = int(rng.integers(8, 90))
        box = np.array([x0, y0, x0 + side, y0 + side])
        for given in (None, base):
            got = frame.copy()
            paste_i420(got, crop, box, mask, given)
            want = yuv.to_bgr_frame(frame)
            paste(want, crop, box, mask, given)
            assert np.abs(got.astype(int) - from_bgr_frame(want)).max() <= 1, (trial, box, given is None)
            # Outside the box grown to even rows and columns, every plane is as it was.
            ey0, ex0, ey1, ex1 = y0 & ~1, x0 & ~1, (y0 + side + 1) & ~1, (x0 + side + 1) & ~1
            for plane, before, step in zip(yuv.planes(got), yuv.planes(frame), (1, 2, 2), strict=True):
                outside = np.ones(plane.shape, bool)
                outside[max(ey0 // step, 0) : max(ey1 // step, 0), max(ex0 // step, 0) : max(ex1 // step, 0)] = False
                assert np.array_equal(plane[outside], before[outside]), (trial, box)


def test_residual_paste_i420_of_an_unchanged_crop_leaves_the_frame_byte_for_byte():
    rng = np.random.default_rng(4)
    frame = from_bgr_frame(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8))
    before = frame.copy()
    box = np.array([30, 20, 90, 80])
    crop = cut_i420(frame, box, 32)
    paste_i420(frame, crop, box, feathered_ellipse(32, (0.0, 0.0), (0.8, 0.8), 0.2), base=crop)
    assert np.array_equal(frame, before)


def test_cut_i420_is_cut_of_the_frames_bgr_picture():
    rng = np.random.default_rng(5)
    frame = from_bgr_frame(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    for box in (np.array([10, 5, 50, 45]), np.array([-15, -10, 25, 30]), np.array([60, 40, 100, 80])):
        assert np.array_equal(cut_i420(frame, box, 24), cut(yuv.to_bgr_frame(frame), box, 24))
