"""A 4K lecture take rendered at its own size and at ``--max-resolution`` 1080 and 720, in one run.

    .venv/bin/python bench/bench_resolution.py [--seconds 4] [--repeat 2]

One 3840×2160 lecture-like take (tests/helpers/footage.py: a 240-px presenter panning on
a busy slide, talking), with a camera's noise (H.264 at 30 Mbit/s, as a 4K camera or
phone records), and a speech-like tone as long as it. Each setting renders it as one job
with the warp pack (no model weights: what is measured is the CPU side, as on a GPU node)
through the real recipe in a fresh process: analysis into a fresh template cache, then
the job (features, model, compose, x264 at the default ``lean``). The settings alternate,
``--repeat`` times, and the median is kept. Per setting: CPU seconds per second of video
(the process and its ffmpeg children: analysis, and the rest of the job), the wall time,
the template's bytes, the MP4's size and resolution, and each ratio to the take's own
size.

Writes bench/results/resolution-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from tests.helpers.footage import lecture_clip  # noqa: E402
from tests.helpers.media import make_tone  # noqa: E402

CAPS = (0, 1080, 720)


def camera_take(folder: Path, seconds: float) -> Path:
    """The 4K take with a camera's noise, at a 4K camera's 30 Mbit/s."""
    clean = lecture_clip(folder / "clean.mp4", size=(3840, 2160), face=240, seconds=seconds, corner="centre",
                         talk=lambda t: 0.5).path  # fmt: skip
    return record.camera_like(clean, folder / "take.mp4", "30M")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the 4K take (and the speech)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each setting, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        take = camera_take(Path(tmp), args.seconds)
        audio = make_tone(Path(tmp) / "speech.wav", seconds=args.seconds)
        results = record.capped_runs("max_resolution", CAPS, take, audio, args.seconds, args.repeat)
    print(json.dumps(results, indent=1))
    print(record.write("resolution", results, seconds=args.seconds, repeat=args.repeat))


if __name__ == "__main__":
    main()
