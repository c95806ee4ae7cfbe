"""Benchmark: finding where a presenter comes into a long take, at its keyframes.

    .venv/bin/python bench/bench_first_seen.py [--minutes 5] [--keyframe 2] [--repeat 2]

``face.arrival.first_seen`` names the first keyframe showing a face after the part of a take
that was searched (``--reference-seconds``) held none. It decodes keyframes only, and
runs the analysis's whole-frame scan on one every ``FIRST_SEEN_STEP_S`` seconds, then on
those it skipped before the first with a face. Timed here on the worst case, a take with
nobody in it (every scan misses): ``--minutes`` of 1920×1080 noisy test pattern at 8
Mbit/s with a keyframe every ``--keyframe`` seconds, searched for a 40-px face from its
start, as ``first_seen`` does and with every keyframe scanned (the step 0); best of
``--repeat``: wall and CPU seconds of this process, keyframes decoded and scanned, and
the ratio. Writes bench/results/first-seen-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from heygem_ray import media  # noqa: E402
from heygem_ray.config import DetectorConfig  # noqa: E402
from heygem_ray.face import arrival  # noqa: E402


def take(path: Path, minutes: float, keyframe_s: float) -> Path:
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=1920x1080:rate=25,noise=alls=8:allf=t", "-t", str(minutes * 60), "-c:v", "libx264",
                    "-preset", "ultrafast", "-b:v", "8M", "-g", str(round(keyframe_s * 25)), str(path)],
                   check=True)  # fmt: skip
    return path


def timed(clip: Path, step: float) -> dict:
    """One search from the start at ``step`` seconds between scans."""
    scanned = 0
    found = arrival._face_finder(DetectorConfig(), 0)

    def counting(frame: object) -> bool:
        nonlocal scanned
        scanned += 1
        return found(frame)  # type: ignore[arg-type]

    arrival.FIRST_SEEN_STEP_S, before = step, arrival.FIRST_SEEN_STEP_S
    original, arrival._face_finder = arrival._face_finder, lambda *_: counting  # type: ignore[assignment]
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        seen = arrival.first_seen(clip, DetectorConfig(), 0.0)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    finally:
        arrival._face_finder, arrival.FIRST_SEEN_STEP_S = original, before  # type: ignore[assignment]
    return {"step_s": step, "seen": seen, "keyframes_scanned": scanned, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--keyframe", type=float, default=2.0, help="seconds between the take's keyframes")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = take(Path(tmp) / "take.mp4", args.minutes, args.keyframe)
        runs: dict[float, list[dict]] = {arrival.FIRST_SEEN_STEP_S: [], 0.0: []}
        for _ in range(args.repeat):
            for step in runs:
                runs[step].append(timed(clip, step))
                print(json.dumps(runs[step][-1]), flush=True)
    results = [min(got, key=lambda r: r["cpu_s"]) for got in runs.values()]
    every = results[1]
    for row in results:
        row["cpu_x_less"] = round(every["cpu_s"] / row["cpu_s"], 2)
        row["cpu_s_per_hour"] = round(row["cpu_s"] * 60 / args.minutes, 1)
        row["wall_s_per_hour"] = round(row["wall_s"] * 60 / args.minutes, 1)
    print(json.dumps(results, indent=1))
    print(record.write("first-seen", results, minutes=args.minutes, keyframe_s=args.keyframe, repeat=args.repeat))


if __name__ == "__main__":
    main()
