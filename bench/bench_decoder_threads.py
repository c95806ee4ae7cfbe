"""The reference decoder's threads: the memory and CPU of one decoder as analysis runs it.

    .venv/bin/python bench/bench_decoder_threads.py [--frames 100] [--threads 1,2,0,17]

A node runs a job per core, and a job that analyses a reference decodes it with ffmpeg,
whose H.264 decoder left to itself runs a frame thread per core and one more (17 on a
16-core node), each holding frames. This makes a noisy clip (ffmpeg's ``testsrc2`` with
temporal noise, ``noise=alls=6:allf=t+u``, H.264 at 8 Mbit/s for 1080p and 30 for 4K, as
a camera hands it over) and reads it through ``media.iter_frames`` as analysis does (I420,
BT.709), in a fresh Python process per thread count (``media.decode.DECODER_THREADS``; 0:
FFmpeg's own choice on this machine), which reports its ffmpeg's peak resident memory and
CPU seconds a frame (the reaped child's ``getrusage``), and the wall time of the read.

Writes bench/results/decoder-threads-<host>.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from heygem_ray.media import ffmpeg_exe  # noqa: E402

SIZES = {"1080p": ("1920x1080", "8M"), "4K": ("3840x2160", "30M")}

READ = """
import json, resource, sys, time
from heygem_ray import media
from heygem_ray.media import decode

decode.DECODER_THREADS = int(sys.argv[2])
info = media.probe_video(sys.argv[1])
t0 = time.perf_counter()
frames = sum(1 for _ in decode.iter_frames(info, pixel_format="yuv420p"))
wall = time.perf_counter() - t0
used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the ffmpeg it started, reaped
print("RESULT " + json.dumps({
    "frames": frames,
    "peak_rss_mb": round(used.ru_maxrss / 1024, 1),
    "cpu_ms_per_frame": round((used.ru_utime + used.ru_stime) * 1e3 / frames, 2),
    "wall_s": round(wall, 2),
}))
"""


def make_clip(size: str, rate: str, frames: int, out: Path) -> Path:
    args = [ffmpeg_exe(), "-nostdin", "-v", "error", "-f", "lavfi",
            "-i", record.noisy_pattern(size), "-frames:v", str(frames),
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", rate, "-pix_fmt", "yuv420p", "-y", str(out)]  # fmt: skip
    subprocess.run(args, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--threads", default="1,2,0,17", help="decoder thread counts; 0: FFmpeg's own choice")
    opts = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="heygem-decoder-") as tmp:
        for name, (size, rate) in SIZES.items():
            clip = make_clip(size, rate, opts.frames, Path(tmp) / f"{name}.mp4")
            for threads in (int(t) for t in opts.threads.split(",")):
                got, _ = record.run_child(f"{name} at {threads} threads", READ, str(clip), str(threads))
                row = {"size": name, "threads": threads, **got}
                results.append(row)
                print(row, flush=True)
    dest = record.write("decoder-threads", results)
    print(f"\nwritten to {dest}\n")
    record.print_threads_table(results, "decoder", "FFmpeg's own")


if __name__ == "__main__":
    main()
