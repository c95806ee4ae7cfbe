"""A long lecture take analysed whole, with ``--reference-seconds``, and with that from
``--reference-start`` seconds in, in one run.

    .venv/bin/python bench/bench_reference_seconds.py [--seconds 40] [--cut 10] [--start 20,30] [--repeat 2]

One camera-like 1920×1080 lecture take (tests/helpers/footage.py: a 160-px presenter
panning on a busy slide, talking; temporal noise on every pixel, then H.264 at 8 Mbit/s
as a camera or phone records) of ``--seconds``, standing for a whole recorded lecture.
Each setting analyses it into a fresh template cache in a fresh process (what the first
row of a new presenter does: decode, face search, frame store, crops): the whole take,
its first ``--cut`` seconds, and ``--cut`` seconds from each ``--start`` seconds in (read
from the keyframe before the start, the frames from there to it decoded and dropped).
The settings alternate, ``--repeat`` times, and the median is kept. Per setting: frames
analysed, CPU seconds (the process and its ffmpeg children), wall seconds, the template's
bytes, and each ratio to the whole take; for a start, what it costs against the same cut
from the beginning (CPU seconds, and per frame of the take before it).

Writes bench/results/reference-seconds-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from tests.helpers.footage import lecture_clip  # noqa: E402

# One analysis in a fresh process: its CPU, the ffmpeg children's included.
_ANALYSIS = """
import json, resource, sys, tempfile, time
from pathlib import Path
from heygem_ray.analyze import analyze
from heygem_ray.config import DetectorConfig
from heygem_ray.packs import get_pack

take, cut, start = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])

def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

c0, t0 = cpu(), time.perf_counter()
template, _ = analyze(take, get_pack("warp").geometry, DetectorConfig(), Path(tempfile.mkdtemp()),
                      reference_seconds=cut, reference_start=start)
c1, t1 = cpu(), time.perf_counter()
print("RESULT " + json.dumps({
    "frames": template.frames, "cpu_s": c1 - c0, "wall_s": t1 - t0,
    "template_bytes": sum(p.stat().st_size for p in template.root.iterdir()),
}))
"""


def camera_take(folder: Path, seconds: float) -> Path:
    """The 1080p take with a camera's noise, at 8 Mbit/s."""
    clean = lecture_clip(folder / "clean.mp4", size=(1920, 1080), face=160, seconds=seconds, corner="centre",
                         talk=lambda t: 0.5).path  # fmt: skip
    return record.camera_like(clean, folder / "take.mp4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the take (the whole lecture)")
    parser.add_argument("--cut", type=float, default=10.0, help="--reference-seconds")
    parser.add_argument("--start", default="20", help="--reference-start of the settings after those two, "
                                                       "comma-separated (20,30: a setting from each)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each setting, alternating")
    args = parser.parse_args()
    starts = [float(s) for s in args.start.split(",")]
    settings = ((0.0, 0.0), (args.cut, 0.0), *((args.cut, s) for s in starts))  # (reference_seconds, reference_start)
    with tempfile.TemporaryDirectory() as tmp:
        take = camera_take(Path(tmp), args.seconds)
        runs: dict[tuple[float, float], list[dict]] = {setting: [] for setting in settings}
        for _ in range(args.repeat):
            for cut, start in settings:
                got, _ = record.run_child(f"reference_seconds {cut:g} reference_start {start:g}", _ANALYSIS,
                                          str(take), str(cut), str(start))  # fmt: skip
                runs[cut, start].append(got)
                print(json.dumps({"reference_seconds": cut, "reference_start": start, **got}), flush=True)
    results = []
    for cut, start in settings:
        row: dict = {"reference_seconds": cut, "reference_start": start}
        for key in runs[cut, start][0]:
            row[key] = statistics.median(r[key] for r in runs[cut, start])
        results.append(row)
    whole, first, *later = results
    for row in results:
        for key in ("cpu_s", "wall_s", "template_bytes"):
            row[f"{key}_x_less"] = round(whole[key] / row[key], 2)
    for row in later:
        skipped = round(row["reference_start"] * whole["frames"] / args.seconds)  # the take's frames before it
        row["skipped_frames"] = skipped
        row["start_cpu_s"] = round(row["cpu_s"] - first["cpu_s"], 2)  # what the start costs
        row["skip_cpu_ms_per_frame"] = round(row["start_cpu_s"] * 1e3 / skipped, 2)
    print(json.dumps(results, indent=1))
    print(record.write("reference-seconds", results, seconds=args.seconds, cut=args.cut, start=starts,
                       repeat=args.repeat))  # fmt: skip


if __name__ == "__main__":
    main()
