"""The face mesh (``face/landmarks.py``) on the hard footage (tests/helpers/footage.py):
the portrait small and moving on a slide, 40 to 200 px wide at 720p to 4K. Given the
face's true box, its mouth lands where the portrait's lips meet, its five points where a
face has them, its lip gap follows a mouth opened by a known amount, and a box on the
slide is no face."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from heygem_ray import media
from heygem_ray.face.landmarks import face_landmarks
from tests.helpers.footage import lecture_clip

CASES = [((1280, 720), 40), ((1920, 1080), 64), ((1920, 1080), 96), ((3840, 2160), 200)]


@pytest.mark.parametrize(("size", "face"), CASES, ids=[f"{s[1]}p-{f}px" for s, f in CASES])
def test_the_mouth_and_the_five_points_on_small_moving_faces(tmp_path, size, face):
    clip = lecture_clip(tmp_path / "c.mp4", size=size, face=face, seconds=0.4, corner="top-left")
    frames, _ = media.read_video(clip.path)
    for i in range(0, len(frames), 3):
        box = clip.faces[i]
        found = face_landmarks(frames[i], box)
        assert found is not None and found.score > 0.9, f"frame {i}"
        # "Measured by eye" in the portrait: within 6 % of the face's width (2.4 px at 40 px).
        assert np.linalg.norm(found.mouth() - clip.mouths[i]) < 0.06 * face, f"frame {i}: {found.mouth()} vs {clip.mouths[i]}"
        left_eye, right_eye, nose, left_corner, right_corner = found.five()
        x0, y0, x1, y1 = box
        assert x0 < left_eye[0] < nose[0] < right_eye[0] < x1 and y0 < left_eye[1] < nose[1] < left_corner[1] < y1
        assert left_corner[0] < found.mouth()[0] < right_corner[0]
        assert abs(found.face_height() - (y1 - y0)) < 0.35 * (y1 - y0)  # forehead to chin ≈ the box


def test_the_lip_gap_follows_an_opening_mouth(tmp_path):
    def opening(t: float) -> float:
        return float(t / 2.0)  # 0 to 1 over the clip

    clip = lecture_clip(tmp_path / "t.mp4", size=(1280, 720), face=160, seconds=2.0, corner="centre", motion="still",
                        talk=opening)  # fmt: skip
    frames, _ = media.read_video(clip.path)
    gaps = np.array([face_landmarks(f, b).lip_gap() for f, b in zip(frames, clip.faces, strict=True)])  # type: ignore[union-attr]
    assert np.corrcoef(gaps, clip.openings)[0, 1] > 0.9
    # Wide open, the gap has grown by several pixels: about a third of what the footage
    # moved the lips (0.12 face heights apart: the mesh reads the drawn opening short), and
    # many times the mesh's frame-to-frame noise (about 0.5 px here).
    assert gaps[-5:].mean() - gaps[:5].mean() > 0.03 * 160
    assert np.abs(np.diff(gaps[:10])).mean() < 1.0


def test_a_box_on_the_slide_is_no_face(tmp_path):
    clip = lecture_clip(tmp_path / "s.mp4", size=(1280, 720), face=96, seconds=0.2, corner="bottom-right", motion="still")
    frame = media.read_video(clip.path)[0][0]
    assert face_landmarks(frame, np.array([100, 150, 196, 246], np.float32)) is None  # text on the slide
    assert face_landmarks(frame, np.array([5, 5, 5, 5], np.float32)) is None  # an empty box


def test_the_mesh_prints_nothing_of_its_delegate_and_lets_other_lines_through() -> None:
    """LiteRT's C++ prints a line on picking XNNPACK, once per process: it would stand under a
    run's progress bar and in every job's log. Lines others write meanwhile still get out."""
    code = (
        "import os\n"
        "from heygem_ray.face import landmarks\n"
        "from heygem_ray.quiet import held_stderr\n"
        "landmarks._interpreter()\n"
        "with held_stderr(lambda line: landmarks.DELEGATE_LINE not in line):\n"
        "    os.write(2, b'a line of its own\\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "print('ready')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "ready\n", proc.stderr
    assert proc.stderr == "a line of its own\n", proc.stderr
