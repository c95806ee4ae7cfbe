"""The face mesh's cost per face (``face/landmarks.py``) and a frame's whole look
(``face/looks.py``: the mesh plus the mouth's detail, brightness and sharpness), on
one CPU thread, for faces 40 to 400 px wide in a 1080p lecture-like frame
(tests/helpers/footage.py). Milliseconds per call, the median of ``--calls``.

    .venv/bin/python bench/bench_landmarks.py

Writes bench/results/landmarks-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import record

sys.path.insert(0, str(record.REPO))
from heygem_ray import media  # noqa: E402
from heygem_ray.face import looks  # noqa: E402
from heygem_ray.face.landmarks import face_landmarks  # noqa: E402
from tests.helpers.footage import lecture_clip  # noqa: E402


def per_call_ms(fn: Callable[[np.ndarray, np.ndarray], object], frame: np.ndarray, box: np.ndarray, calls: int) -> float:
    fn(frame, box)  # the first call builds the interpreter
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(frame, box)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for face in (40, 96, 200, 400):
            clip = lecture_clip(Path(tmp) / f"{face}.mp4", size=(1920, 1080), face=face, seconds=0.04, corner="centre",
                                motion="still")  # fmt: skip
            frame, box = media.read_video(clip.path)[0][0], clip.faces[0]
            row = {
                "face_px": face,
                "mesh_ms": round(per_call_ms(face_landmarks, frame, box, args.calls), 2),
                "look_ms": round(per_call_ms(looks.look, frame, box, args.calls), 2),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    print(record.write("landmarks", results, threads=1))


if __name__ == "__main__":
    main()
