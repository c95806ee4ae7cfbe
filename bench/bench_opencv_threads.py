"""OpenCV's threads in a job's process: the CPU and wall time of one analysis at each count.

    .venv/bin/python bench/bench_opencv_threads.py [--seconds 8] [--threads 1,2,17] [--repeat 2]

OpenCV's wheel runs its parallel loops (the face cascade's scales, resizes, colour
conversions) on a pool of its own, as many threads as the machine has cores, whatever
Ray's ``num_cpus`` says (it reads no ``OMP_NUM_THREADS``): 16 in every job's process on a
16-core node that runs 16 jobs. This analyses a camera-like 1080p lecture clip (the
portrait, 160 px, panning on a busy slide; temporal noise, H.264 at 8 Mbit/s: bench_compose's
``camera_like``) into a fresh template, in a fresh Python process per thread count
(``cv2.setNumThreads``), and reports CPU ms a frame (the process's and its decoder's) and
the wall time. 17 threads on these 2 cores stands for sixteen jobs' pools of 16 on 16 cores,
as in bench_decoder_threads.py. Runs alternate between the counts; the table gives the
median of ``--repeat``.

Writes bench/results/opencv-threads-<host>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from bench.bench_analyze import ANALYZE  # noqa: E402
from bench.bench_compose import camera_like  # noqa: E402
from heygem_ray import media  # noqa: E402
from tests.helpers.footage import lecture_clip  # noqa: E402

# bench_analyze's analysis in a fresh process (argv[1] the clip), OpenCV's threads set
# first (argv[2]).
ANALYSE = "import cv2, sys\ncv2.setNumThreads(int(sys.argv[2]))\n" + ANALYZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads", default="1,2,17")
    parser.add_argument("--repeat", type=int, default=2)
    opts = parser.parse_args()
    counts = [int(t) for t in opts.threads.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="heygem-opencv-") as tmp:
        clip = camera_like(lecture_clip(Path(tmp) / "lecture.mp4", size=(1920, 1080), face=160,
                                        seconds=opts.seconds).path)  # fmt: skip
        frames = media.probe_video(clip).frames
        for rep in range(opts.repeat):
            for n in counts:
                got, _ = record.run_child(f"{n} OpenCV threads", ANALYSE, str(clip), str(n))
                if got["outcome"] != "ok":
                    raise SystemExit(f"the analysis with {n} OpenCV threads failed: {got['outcome']}")
                got["cpu_ms_per_frame"] = round(1e3 * got["cpu_s"] / frames, 2)
                runs[n].append(got)
                print({"repeat": rep, "threads": n, **got}, flush=True)
    results = [
        {"threads": n, "runs": rs, "cpu_ms_per_frame": statistics.median(r["cpu_ms_per_frame"] for r in rs),
         "wall_s": statistics.median(r["seconds"] for r in rs)}
        for n, rs in runs.items()
    ]  # fmt: skip
    dest = record.write("opencv-threads", results)
    print(f"\nwritten to {dest}\n")
    base = next((r for r in results if r["threads"] == 2), results[0])
    print("| OpenCV threads | CPU ms a frame | × 2 threads' | wall s | runs (CPU ms a frame) |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for r in results:
        each = " / ".join(f"{x['cpu_ms_per_frame']:.1f}" for x in r["runs"])
        print(f"| {r['threads']} | {r['cpu_ms_per_frame']:.1f} | {r['cpu_ms_per_frame'] / base['cpu_ms_per_frame']:.2f} "
              f"| {r['wall_s']:.2f} | {each} |")


if __name__ == "__main__":
    main()
