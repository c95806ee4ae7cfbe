"""The track's pure parts on arrays: choosing the presenter, gaps, steadiness."""

import cv2
import numpy as np

from heygem_ray.config import DetectorConfig
from heygem_ray.face import looks
from heygem_ray.face.smooth import trend
from heygem_ray.face.track import Observations, Tracker, _Frame, _Track, finish, iou

FPS = 25.0
NAN4 = [np.nan] * 4


def track(frames, box):
    t = _Track()
    for f in frames:
        t.hit(f, np.asarray(box(f), np.float32), looks.empty())
    return t


def seen(boxes: np.ndarray) -> Observations:
    n = len(boxes)
    return Observations(boxes=boxes.astype(np.float32), looks=np.full((n, len(looks.LOOKS)), np.nan, np.float32),
                        moves=np.full((n, 2), np.nan, np.float32))  # fmt: skip


def tracker_with(n: int, *tracks: _Track) -> Tracker:
    t = Tracker.__new__(Tracker)  # the choosing part only: no detector needed
    t.frames, t.active, t.retired = n, list(tracks), []
    return t


def test_the_large_persistent_face_wins_and_a_face_beside_it_is_left_out():
    main = track(range(40), lambda f: (100 + f, 100, 180 + f, 180))
    small = track(range(40), lambda f: (400, 50, 430, 80))  # a small face (a poster) all along
    flicker = track(range(5, 8), lambda f: (300, 300, 450, 450))  # bigger, three frames
    chosen = tracker_with(40, small, flicker, main).presenter()
    assert chosen is not None
    assert np.allclose(chosen.boxes[:, 0], 100 + np.arange(40))
    # The other faces are kept: where each is, and in what share of the frames.
    assert np.allclose(sorted(chosen.others.tolist()), [[300, 300, 450, 450, 3 / 40], [400, 50, 430, 80, 1.0]])


def test_the_presenter_after_a_cut_joins_the_track_and_a_false_face_in_the_cut_does_not_count_twice():
    before = track(range(0, 20), lambda f: (100, 100, 180, 180))
    after = track(range(40, 60), lambda f: (600, 120, 684, 204))  # came back elsewhere, same size
    chosen = tracker_with(60, before, after).presenter()
    assert chosen is not None
    found = ~np.isnan(chosen.boxes[:, 0])
    assert found[:20].all() and not found[20:40].any() and found[40:].all()


def test_short_misses_are_filled_and_long_ones_are_lost():
    boxes = np.array([[100 + 2 * f, 100, 180 + 2 * f, 180] for f in range(60)], np.float32)
    boxes[10:14] = NAN4  # 4 frames: filled
    boxes[30:50] = NAN4  # 20 frames (0.8 s): lost
    face = finish(seen(boxes), FPS, DetectorConfig(max_gap_s=0.4))
    assert face.present[10:14].all() and not face.present[30:50].any()
    assert face.present[:30].sum() == 30 and face.present[50:].all()
    assert np.allclose(face.boxes[10:14, 0], 100 + 2 * np.arange(10, 14), atol=0.5)  # on the line


def test_a_noisy_still_face_is_steady_and_a_moving_one_is_followed_without_lag():
    rng = np.random.default_rng(0)
    n = 50
    still = np.tile([500, 300, 600, 400], (n, 1)) + rng.normal(0, 3, (n, 4))
    face = finish(seen(still), FPS, DetectorConfig())
    assert np.abs(np.diff(face.boxes, axis=0)).max() < 0.5

    # 6 px a frame to the right; the detector's boxes wander by ±3 px.
    moving = np.array([[100 + 6 * f, 300, 200 + 6 * f, 400] for f in range(n)], np.float64)
    face = finish(seen(moving + rng.normal(0, 3, (n, 4))), FPS, DetectorConfig())
    centre = (face.boxes[:, 0] + face.boxes[:, 2]) / 2
    assert np.abs(centre - (150 + 6 * np.arange(n)))[3:-3].max() < 2.0  # no lag behind the face


def test_measured_motion_makes_the_path_exact_between_noisy_detections():
    rng = np.random.default_rng(1)
    n = 40
    truth = 100 + 4 * np.sin(np.arange(n) / 4)  # a sway the detector's noise would hide
    boxes = np.stack([truth, np.full(n, 100), truth + 80, np.full(n, 180)], axis=1) + rng.normal(0, 3, (n, 4))
    obs = seen(boxes)
    obs.moves[1:, 0] = np.diff(truth)
    obs.moves[1:, 1] = 0
    face = finish(obs, FPS, DetectorConfig())
    centre = (face.boxes[:, 0] + face.boxes[:, 2]) / 2
    assert np.ptp(centre - (truth + 40)) < 0.5  # the sway exactly, up to one offset


def test_trend_follows_a_ramp_and_flattens_noise():
    n = 100
    ramp = np.linspace(0, 50, n)[:, None]
    out = trend(ramp, np.ones(n), FPS, 2.0)
    assert np.abs(out - ramp).max() < 1e-3
    noise = np.random.default_rng(2).normal(0, 1, (n, 1))
    weights = np.ones(n)
    weights[40:60] = 0  # missing values are bridged
    assert np.ptp(trend(noise, weights, FPS, 2.0, order=1)) < 0.5


def test_iou():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10]], np.float32)
    assert np.isclose(iou(a, b)[0, 0], 50 / 150)


def test_the_tracker_converts_only_the_region_around_a_face_and_gets_the_whole_frames_pixels_there():
    """``_Frame.around`` converts a region of an I420 frame to BGR exactly as converting the
    whole frame gives it there (even-aligned, clipped at the frame's edges, boxes running
    off every edge), and the grey the detector reads is the luma plane itself."""
    rng = np.random.default_rng(7)
    i420 = rng.integers(0, 256, (360 * 3 // 2, 640), np.uint8)
    frame = _Frame(i420)
    whole = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    assert np.shares_memory(frame.grey, i420) and np.array_equal(frame.grey, i420[:360])
    for box in ([101.3, 57.8, 163.1, 120.2], [-30, -12, 40, 50], [600, 300, 700, 420], [0, 0, 640, 360], [5, 5, 6, 6]):
        for span in (1.0, 2.0):
            region, corner = frame.around(np.asarray(box, np.float32), span)
            x0, y0 = int(corner[0]), int(corner[1])
            assert x0 % 2 == 0 and y0 % 2 == 0 and region.shape[0] % 2 == 0 and region.shape[1] % 2 == 0
            assert np.array_equal(region, whole[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]]), (box, span)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            assert x0 <= max(cx, 0) and y0 <= max(cy, 0)  # the face's centre is inside (or the edge nearest it)
    # A look measured on the region is the look measured on the whole frame.
    box = np.array([240.0, 100.0, 360.0, 220.0], np.float32)
    np.testing.assert_array_equal(frame.look(box), looks.look(whole, box))
