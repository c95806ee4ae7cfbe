"""Each pack's paste mask, by its content: it covers the mouth fully, leaves what the pack
must not change (warp: everything above the nose) untouched, fades out softly, and is 0 on
the crop's border; pasted through it, a crop changes the frame exactly where it says."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from heygem_ray.models.warp import MOUTH_Y
from heygem_ray.packs import get_pack
from tests.helpers.bgr import paste


def _pixel(size: int, u: float) -> int:
    """Crop units in [-1, 1] → the pixel whose centre is nearest."""
    return min(size - 1, int((u + 1) / 2 * size))


@pytest.mark.parametrize("name", ["warp", "wav2lip", "musetalk"])
def test_the_mask_covers_the_mouth_and_fades_to_nothing_at_the_border(name: str) -> None:
    pack = get_pack(name)
    mask = pack.paste_mask
    size = pack.geometry.size
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    # Down to a quarter at the outermost pixels (their centres half a pixel from the edge),
    # so no box edge shows.
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert border.max() <= 0.25
    # Fully the generated crop where the mouth is: the crop's centre column, in its lower half.
    mouth_y = MOUTH_Y if name == "warp" else 0.45
    assert mask[_pixel(size, mouth_y), size // 2] == pytest.approx(1.0)
    # A soft edge, not a cut-out: a band of partial weights between 1 and 0.
    partial = (mask > 0.05) & (mask < 0.95)
    assert partial.mean() > 0.02


def test_warp_leaves_the_eyes_and_above_as_they_were() -> None:
    mask = get_pack("warp").paste_mask
    third = mask.shape[0] // 3  # the crop is centred on the mouth: its top third is the eyes and brows
    assert mask[:third].max() == 0.0
    assert mask[third:].max() == pytest.approx(1.0)


def test_musetalk_blends_only_below_the_nose_line() -> None:
    mask = get_pack("musetalk").paste_mask
    size = mask.shape[0]
    assert mask[: size // 2 - size // 16].max() == 0.0  # the nose line is mid-crop
    assert mask[size // 2 + size // 8 :].max() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["warp", "wav2lip", "musetalk"])
def test_a_crop_pasted_through_the_mask_changes_the_frame_by_the_mask(name: str) -> None:
    pack = get_pack(name)
    size = pack.geometry.size
    frame = np.full((size + 100, size + 120, 3), 100, np.uint8)
    box = np.array([37, 21, 37 + size + 30, 21 + size + 30])  # resized on the way in, as in a job
    before = frame.copy()
    paste(frame, np.full((size, size, 3), 200, np.uint8), box, pack.paste_mask)
    x0, y0, x1, y1 = box
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(frame[outside], before[outside])
    changed = frame[y0:y1, x0:x1, 0].astype(int) - 100  # 0 … 100: the mask's weight × 100
    assert changed.max() == 100 and changed.min() == 0
    expected = cv2.resize(pack.paste_mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) * 100
    assert np.abs(changed - expected).max() <= 1
