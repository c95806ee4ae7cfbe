"""Where a scan after the first looks (``face.search.changed_regions``): only around what
changed since it was last scanned, never at noise, and not at the faces already followed."""

from __future__ import annotations

import numpy as np

from heygem_ray import media
from heygem_ray.face.haar import HaarDetector
from heygem_ray.face.search import CHANGE_CELL, CHANGE_MARGIN, changed_regions, scan, shrink_for_change
from tests.helpers.footage import lecture_clip, slide

SIZE = (1152, 648)  # a 1080p frame at the scan's scale for 40-px faces
WINDOW = 20  # the cascade's
NONE = np.zeros((0, 4), np.float32)


def _frame(seed: int = 0) -> np.ndarray:
    return np.ascontiguousarray(slide(*SIZE, seed=seed)[..., 1])


def test_a_frame_that_did_not_change_beyond_noise_is_not_scanned():
    rng = np.random.default_rng(0)
    before = _frame()
    noisy = np.clip(before + rng.normal(0, 4, before.shape), 0, 255).astype(np.uint8)
    seen = shrink_for_change(before)
    assert changed_regions(shrink_for_change(noisy), seen, SIZE, WINDOW, NONE) == []


def test_a_change_is_scanned_with_a_margin_and_marked_seen_there_only():
    before = _frame()
    after = before.copy()
    after[300:340, 500:540] = 255 - after[300:340, 500:540]  # something came in
    seen = shrink_for_change(before)
    kept = seen.copy()
    cells = shrink_for_change(after)
    (region,) = changed_regions(cells, seen, SIZE, WINDOW, NONE)
    x0, y0, x1, y1 = region
    margin = CHANGE_MARGIN * WINDOW
    assert x0 <= 500 - margin and y0 <= 300 - margin and x1 >= 540 + margin and y1 >= 340 + margin, region
    assert (x1 - x0) * (y1 - y0) < 0.2 * SIZE[0] * SIZE[1], region
    # Inside the region the cells are as now; outside, as they were.
    cx0, cy0, cx1, cy1 = (v // CHANGE_CELL for v in region)
    np.testing.assert_array_equal(seen[cy0 + 1 : cy1 - 1, cx0 + 1 : cx1 - 1], cells[cy0 + 1 : cy1 - 1, cx0 + 1 : cx1 - 1])
    outside = np.ones(seen.shape, bool)
    outside[max(0, cy0 - 1) : cy1 + 1, max(0, cx0 - 1) : cx1 + 1] = False
    np.testing.assert_array_equal(seen[outside], kept[outside])
    # Scanned again with nothing new: nothing to look at.
    assert changed_regions(cells, seen, SIZE, WINDOW, NONE) == []


def test_a_change_inside_a_followed_face_is_its_own():
    before = _frame()
    after = before.copy()
    after[300:340, 500:540] = 255 - after[300:340, 500:540]  # a mouth that moves
    followed = np.array([[480, 270, 560, 360]], np.float32)
    assert changed_regions(shrink_for_change(after), shrink_for_change(before), SIZE, WINDOW, followed) == []


def test_a_frame_mostly_changed_is_scanned_whole():
    seen = shrink_for_change(_frame(0))
    assert changed_regions(shrink_for_change(_frame(1)), seen, SIZE, WINDOW, NONE) is None


def test_a_face_found_in_two_overlapping_regions_is_kept_once(tmp_path):
    clip = lecture_clip(tmp_path / "face.mp4", size=SIZE, face=80, seconds=0.2, motion="still")
    frame = np.ascontiguousarray(media.read_video(clip.path)[0][0][..., 1])
    detector = HaarDetector()
    whole = scan(detector, frame, 1.0)
    assert len(whole) >= 1
    halves = [(0, 0, SIZE[0], SIZE[1]), (SIZE[0] // 2, 0, SIZE[0], SIZE[1])]  # the face is in both
    np.testing.assert_array_equal(scan(detector, frame, 1.0, halves), whole)
