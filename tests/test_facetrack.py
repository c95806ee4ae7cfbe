import numpy as np

from heygem_ray.facetrack import iou, smooth, track_main_face


def box(x, y, s):
    return np.array([[x, y, x + s, y + s]], np.float32)


def test_the_large_persistent_face_wins_over_a_larger_flicker_and_a_small_steady_one():
    frames = []
    for f in range(20):
        dets = [box(100 + f, 100, 80), box(400, 50, 30)]  # main face drifts; small face steady
        if f == 5:
            dets.append(box(300, 300, 150))  # one-frame false positive, bigger than both
        frames.append(np.concatenate(dets))
    track = track_main_face(frames)
    assert track is not None
    assert np.allclose(track.boxes[:, 0], 100 + np.arange(20))
    assert track.detected.all()


def test_misses_are_filled_from_neighbours():
    frames = [box(100 + 10 * f, 100, 80) if f not in (3, 4, 5) else np.zeros((0, 4), np.float32) for f in range(10)]
    frames[0] = np.zeros((0, 4), np.float32)
    track = track_main_face(frames)
    assert track is not None
    assert track.detected.tolist() == [False, True, True, False, False, False, True, True, True, True]
    # Linear between frames 2 and 6; held before the first hit.
    assert np.allclose(track.boxes[3:6, 0], [130, 140, 150])
    assert track.boxes[0, 0] == 110


def test_no_face_anywhere_gives_none():
    assert track_main_face([np.zeros((0, 4), np.float32)] * 5) is None


def test_smooth_averages_over_the_window_and_keeps_length():
    b = np.zeros((7, 4), np.float32)
    b[3] = 10
    s = smooth(b, 5)
    assert s.shape == (7, 4)
    assert np.allclose(s[1:6, 0], 2.0) and s[0, 0] == 0 and s[6, 0] == 0


def test_iou():
    assert np.isclose(iou(box(0, 0, 10), box(5, 0, 10))[0, 0], 50 / 150)
