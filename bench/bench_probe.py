"""Probing a reference, and the rerun check of a finished MP4, against another checkout's.

One clip: a minute of 720p at 30 fps, H.264 + AAC with the index first (+faststart), as
``media.VideoWriter`` writes outputs. Two measurements, each in a fresh Python process
(the probe caches its answer per process), imports not timed, median of ``--repeat``:

* ``probe``: ``media.probe_video(clip)``, what analysing a new reference starts with;
* ``rerun check``: ``resume._complete(clip, row)``, what a rerun does for each finished
  job's MP4 before skipping it;
* ``probe, 1 ms time base``: the same minute stream-copied into an MP4 whose video time
  base is 1/1000 s, which cannot hold 1/30 s exactly, so the probe counts the frames by
  decoding (as it does for a variable-rate file): the case where nothing is saved.

``--before DIR`` measures the same calls with the ``heygem_ray`` of another checkout (an
older commit unpacked there), in the same run, and gives before / after ratios:

    mkdir /tmp/before && git archive 74f543d | tar -x -C /tmp/before
    .venv/bin/python bench/bench_probe.py --before /tmp/before

Writes bench/results/probe-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from heygem_ray import media  # noqa: E402

# Run in a checkout (its folder is the working directory, so it imports that heygem_ray).
_MEASURE = """
import json, sys, time
from pathlib import Path
from heygem_ray import media
from heygem_ray.driver import resume
clip, what, frames = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
if what == "probe":
    value = media.probe_video(clip).frames
else:
    value = resume._complete(clip, {"frames": frames})
seconds = time.perf_counter() - t0
print("RESULT " + json.dumps({"seconds": seconds, "value": value, "package": media.__file__}))
"""


def measure(repo: Path, clip: Path, what: str, frames: int, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(clip), what, str(frames)], capture_output=True,
                              text=True, cwd=repo, check=True)  # fmt: skip
        runs.append(json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT ")))
    if any(not Path(r["package"]).resolve().is_relative_to(repo.resolve()) for r in runs):
        raise SystemExit(f"the child imported heygem_ray from {runs[0]['package']}, not from {repo}")
    return {"seconds": statistics.median(r["seconds"] for r in runs), "value": runs[0]["value"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the clip")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement (the median is kept)")
    parser.add_argument("--before", type=Path, help="another checkout whose probing to measure beside this one")
    args = parser.parse_args()
    # Load average before the run (1, 5, 15 min): well above 0 means another process shared
    # the cores, and the seconds (less so the ratios) are worse than on a quiet machine.
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "talk-720p.mp4"
        subprocess.run(
            [media.ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={args.seconds}",
             "-f", "lavfi", "-i", f"sine=frequency=220:sample_rate=48000:duration={args.seconds}",
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(clip)],
            check=True,
        )  # fmt: skip
        ms_clip = Path(tmp) / "talk-720p-ms.mp4"
        subprocess.run([media.ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(clip), "-c", "copy",
                        "-video_track_timescale", "1000", str(ms_clip)], check=True)  # fmt: skip
        frames = round(args.seconds * 30)
        for measure_name, what, path in (
            ("probe", "probe", clip), ("rerun check", "rerun check", clip), ("probe, 1 ms time base", "probe", ms_clip)
        ):
            row: dict = {"measure": measure_name, "clip": f"{args.seconds:g} s 720p30 H.264+AAC MP4, "
                         f"{path.stat().st_size / 1e6:.1f} MB", "frames": frames}  # fmt: skip
            for label, repo in (("after", record.REPO), ("before", args.before)):
                if repo is None:
                    continue
                got = measure(repo, path, what, frames, args.repeat)
                row[f"{label}_s"] = round(got["seconds"], 4)
                row[f"{label}_value"] = got["value"]
            if args.before is not None:
                row["before_over_after"] = round(row["before_s"] / row["after_s"], 1)
            results.append(row)
            print(json.dumps(row), flush=True)
    print(record.write("probe", results, load_average_before=load))


if __name__ == "__main__":
    main()
