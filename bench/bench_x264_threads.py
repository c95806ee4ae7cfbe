"""x264's threads: the memory and CPU of one encoder at the jobs' settings, side by side.

    .venv/bin/python bench/bench_x264_threads.py [--frames 60] [--threads 2,24]

A node runs a job per core, each with its own encoder; x264 left to itself runs 1.5
threads a core of the machine (24 on a 16-core node), each frame thread holding frames.
This encodes the same noisy test pattern (ffmpeg's ``testsrc2`` with temporal noise,
``noise=alls=6:allf=t+u``) at 1080p and 4K with the jobs' options
(``media.encoders.video_codec_options``: lean, CRF 18) at each thread count (``0``:
x264's own choice on this machine), and records the ffmpeg process's peak resident
memory, its CPU seconds a frame and its wall time. The pattern is made inside the same
ffmpeg, so the memory includes its frames (the same at every thread count).

Writes bench/results/x264-threads-<host>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from heygem_ray.media import ffmpeg_exe  # noqa: E402
from heygem_ray.media.encoders import video_codec_options  # noqa: E402

SIZES = {"1080p": "1920x1080", "4K": "3840x2160"}


def encode(size: str, threads: int, frames: int, out: Path) -> dict:
    """One encode in a child process: its peak RSS (MB), CPU ms a frame and wall s."""
    options = {**video_codec_options("libx264", "lean", 18), "threads": threads}
    args = [ffmpeg_exe(), "-nostdin", "-v", "error", "-f", "lavfi",
            "-i", record.noisy_pattern(size), "-frames:v", str(frames),
            *record.ffmpeg_args(options), "-f", "mp4", "-y", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"ffmpeg exited {proc.returncode}: {stderr[-2000:]}")
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # kB on Linux
        "cpu_ms_per_frame": round((usage.ru_utime + usage.ru_stime) * 1e3 / frames, 2),
        "wall_s": round(wall, 2),
        "mp4_kb": round(out.stat().st_size / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--threads", default="2,0,24", help="thread counts; 0: x264's own choice")
    opts = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="heygem-x264-") as tmp:
        for name, size in SIZES.items():
            for threads in (int(t) for t in opts.threads.split(",")):
                row = {"size": name, "threads": threads, "frames": opts.frames,
                       **encode(size, threads, opts.frames, Path(tmp) / "out.mp4")}  # fmt: skip
                results.append(row)
                print(row, flush=True)
    dest = record.write("x264-threads", results)
    print(f"\nwritten to {dest}\n")
    record.print_threads_table(results, "x264", "x264's own")


if __name__ == "__main__":
    main()
