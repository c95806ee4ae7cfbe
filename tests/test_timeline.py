from fractions import Fraction

import numpy as np

from heygem_ray.timeline import loop_indices, plan


def test_pingpong_turns_at_both_ends_without_repeating_the_end_frames():
    assert loop_indices(10, 4, "pingpong").tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]


def test_forward_wraps():
    assert loop_indices(7, 3, "forward").tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_still_image_shows_its_one_frame():
    assert loop_indices(5, 1, "pingpong").tolist() == [0] * 5


def test_output_follows_the_audio_length():
    t = plan(2.0, 30, Fraction(30000, 1001), "pingpong", is_image=False)
    assert t.frames == round(2.0 * 30000 / 1001) == 60
    assert t.duration == 2.0
    assert np.all(t.ref_index < 30)


def test_trim_cuts_at_the_reference_end_but_never_a_still_image():
    t = plan(10.0, 50, Fraction(25), "trim", is_image=False)
    assert (t.frames, t.duration) == (50, 2.0)
    assert plan(10.0, 1, Fraction(25), "trim", is_image=True).frames == 250


def test_very_short_audio_still_gives_one_frame():
    assert plan(0.001, 10, Fraction(25), "pingpong", is_image=False).frames == 1
