"""Analysis of a reference against decoding it, at 720p, 1080p and 4K.

For each size, a lecture-like clip (tests/helpers/footage.py: the portrait small in a
corner, panning, on a busy slide) is decoded once (ffmpeg → frames, nothing else) and
analysed once into a fresh template cache; both are given in seconds per second of
reference, and their ratio, with the analysing process's peak memory and its CPU per frame
(all of it, and its analysing thread's alone). ``--before DIR`` also analyses each clip with the
``heygem_ray`` of another checkout (e.g. a worktree of an older commit), in one run:

    git worktree add /tmp/before f3e2a4e
    .venv/bin/python bench/bench_analyze.py --before /tmp/before

Writes bench/results/analyze-<host>.json.
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
from tests.helpers.footage import lecture_clip  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
# Analyse in a child process run in ``repo``, so it imports that checkout's heygem_ray (also
# bench_opencv_threads.py's child, after it sets OpenCV's threads).
ANALYZE = """
import json, resource, shutil, sys, tempfile, time
from pathlib import Path
from heygem_ray.analyze import analyze
from heygem_ray.config import DetectorConfig
from heygem_ray.errors import HeygemError
from heygem_ray.packs import get_pack
cache = Path(tempfile.mkdtemp())


def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


t0, cpu0, main0 = time.perf_counter(), cpu(), time.thread_time()
try:
    analyze(Path(sys.argv[1]), get_pack("warp").geometry, DetectorConfig(), cache)
    outcome = "ok"
except HeygemError as exc:
    outcome = exc.kind
seconds, cpu_s, main_s = time.perf_counter() - t0, cpu() - cpu0, time.thread_time() - main0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the analysing process's high-water mark
print("RESULT " + json.dumps({"seconds": seconds, "cpu_s": cpu_s, "main_cpu_s": main_s, "outcome": outcome,
                              "peak_mib": peak}))
shutil.rmtree(cache)
"""


def analyse_in(repo: Path, clip: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", ANALYZE, str(clip)], capture_output=True, text=True, cwd=repo,
                          check=True)  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--before", type=Path, help="another checkout whose analysis to measure beside this one")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in SIZES.items():
            # The hard case (a 40 px face), and one the earlier detector could find (15 % of the height).
            for face in (40, round(0.15 * size[1])):
                clip = lecture_clip(Path(tmp) / f"{name}-{face}.mp4", size=size, face=face, seconds=args.seconds)
                t0 = time.perf_counter()
                frames = sum(1 for _ in media.iter_frames(media.probe_video(clip.path)))
                decode = time.perf_counter() - t0
                row = {"size": name, "face_px": face, "frames": frames, "decode_s_per_s": decode / args.seconds}
                for label, repo in (("after", record.REPO), ("before", args.before)):
                    if repo is None:
                        continue
                    got = analyse_in(repo, clip.path)
                    row[f"{label}_outcome"] = got["outcome"]
                    row[f"{label}_s_per_s"] = got["seconds"] / args.seconds
                    row[f"{label}_over_decode"] = got["seconds"] / decode
                    row[f"{label}_peak_mib"] = round(got["peak_mib"])
                    # CPU per frame: all of it (the decoder's too), and the analysing thread's
                    # alone (what bounds the wall time where cores are free).
                    row[f"{label}_cpu_ms_per_frame"] = round(1e3 * got["cpu_s"] / frames, 2)
                    row[f"{label}_main_cpu_ms_per_frame"] = round(1e3 * got["main_cpu_s"] / frames, 2)
                results.append(row)
                print(json.dumps(row), flush=True)
    print(record.write("analyze", results))


if __name__ == "__main__":
    main()
