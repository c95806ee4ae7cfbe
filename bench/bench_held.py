"""A slow take (under 20 fps, each frame held) analysed and read back: this checkout against
another, in one run.

    git archive <commit> | tar -x -C /tmp/before      # the code before (no git metadata needed)
    .venv/bin/python bench/bench_held.py --before /tmp/before [--seconds 8] [--repeat 2]

One lecture-like 1920×1080 clip (tests/helpers/footage.py: a 160 px face on a busy slide,
panning) at each of ``--fps`` (a screen recording's 5, 10 and 15 fps), which analysis reads
with each frame held the fewest whole times that reach 25 fps (5 → 25, 10 → 30, 15 → 30).
Each checkout's ``heygem_ray`` analyses it in a child process run in that checkout, the two
interleaved ``--repeat`` times (the median kept), then reads every frame of the template
back as compose does (``Template.read_i420``):

* **analysis**: CPU ms per frame shown (all of it: the decoding ffmpeg, the store's
  thread, OpenCV's) and the wall seconds;
* **template**: the frame store's bytes, and the whole folder's;
* **read back**: CPU ms per frame shown of reading the frames in order.

Writes bench/results/held-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from tests.helpers.footage import lecture_clip  # noqa: E402

# Runs in the checkout measured (cwd), so it imports that checkout's heygem_ray.
_CHILD = """
import json, resource, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
from heygem_ray.analyze import analyze
from heygem_ray.config import DetectorConfig
from heygem_ray.packs import get_pack


def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


cache = Path(tempfile.mkdtemp())
try:
    t0, cpu0 = time.perf_counter(), cpu()
    template, _ = analyze(Path(sys.argv[1]), get_pack("warp").geometry, DetectorConfig(), cache)
    seconds, cpu_s = time.perf_counter() - t0, cpu() - cpu0
    with template:
        cpu0 = time.process_time()
        for frame in template.read_i420(np.arange(template.frames)):
            pass
        read_s = time.process_time() - cpu0
        store = (template.root / "frames.bin").stat().st_size
        folder = sum(p.stat().st_size for p in template.root.iterdir())
        print("RESULT " + json.dumps({"frames": template.frames, "fps": str(template.fps), "seconds": seconds,
                                      "cpu_s": cpu_s, "read_s": read_s, "store_bytes": store, "template_bytes": folder}))
finally:
    shutil.rmtree(cache)
"""


def measure(repo: Path, clip: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(clip)], capture_output=True, text=True, cwd=repo,
                          check=True)  # fmt: skip
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each take")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each checkout, interleaved")
    parser.add_argument("--fps", default="5,10,15", help="the takes' own frame rates")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fps in map(int, args.fps.split(",")):
            clip = lecture_clip(Path(tmp) / f"take-{fps}.mp4", size=(1920, 1080), face=160, seconds=args.seconds,
                                fps=fps).path  # fmt: skip
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.repeat):
                runs["before"].append(measure(args.before, clip))
                runs["after"].append(measure(record.REPO, clip))
            row: dict = {"take_fps": fps, "fps": runs["after"][0]["fps"], "frames": runs["after"][0]["frames"]}
            for label, got in runs.items():
                frames = got[0]["frames"]
                row[f"{label}_analysis_cpu_ms_per_frame"] = round(1e3 * statistics.median(r["cpu_s"] for r in got) / frames, 2)
                row[f"{label}_analysis_s"] = round(statistics.median(r["seconds"] for r in got), 2)
                row[f"{label}_read_cpu_ms_per_frame"] = round(1e3 * statistics.median(r["read_s"] for r in got) / frames, 2)
                row[f"{label}_store_bytes"] = got[0]["store_bytes"]
                row[f"{label}_template_bytes"] = got[0]["template_bytes"]
            for key in ("analysis_cpu_ms_per_frame", "read_cpu_ms_per_frame", "store_bytes", "template_bytes"):
                row[f"before_over_after_{key.removesuffix('_per_frame')}"] = round(row[f"before_{key}"] / row[f"after_{key}"], 2)
            results.append(row)
            print(json.dumps(row), flush=True)
    print(f"written to {record.write('held', results, size='1920x1080', seconds=args.seconds, repeat=args.repeat, before=str(args.before))}")


if __name__ == "__main__":
    main()
