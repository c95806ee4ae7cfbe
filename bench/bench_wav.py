"""Benchmark: decoding a long WAV, in FFmpeg's default 4 KiB packets and in 1 MiB ones.

    .venv/bin/python bench/bench_wav.py [--hours 1] [--repeat 2]

``media.decode_audio`` reads a job's audio through FFmpeg's pipe as 16 kHz mono float32.
FFmpeg's WAV demuxer hands its decoder 4 KiB packets unless told otherwise (its
``max_size`` option), and each packet costs it a trip through the kernel and its
filters. ``decode_audio`` now asks WAV input for 1 MiB packets. Both ways are timed here
side by side, on ``--hours`` of 16 kHz mono 16-bit noise (a lesson's WAV as a recorder
writes it): FFmpeg's CPU seconds (user and system, from the kernel's accounting of the
child) and the wall time of the decode as ``decode_audio`` does it (the pipe read in
1 MiB blocks), best of ``--repeat``. Both must give the same samples (SHA-256 of the
float32 stream). Writes bench/results/wav-<host>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import record

sys.path.insert(0, str(record.REPO))
from heygem_ray.media import ffmpeg_exe  # noqa: E402
from heygem_ray.media.decode import _READ_CHUNK  # noqa: E402

RATE = 16000


def make_wav(path: Path, hours: float) -> Path:
    """``hours`` of 16 kHz mono 16-bit noise, written a minute at a time."""
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        for _ in range(round(hours * 60)):
            w.writeframes((rng.standard_normal(60 * RATE) * 3000).clip(-32768, 32767).astype("<i2").tobytes())
    return path


def decode(path: Path, packet_bytes: int | None) -> tuple[float, float, str]:
    """(wall s, FFmpeg's CPU s, SHA-256 of the float32 samples) of one decode."""
    packets = ["-max_size", str(packet_bytes)] if packet_bytes else []
    args = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *packets, "-i", str(path),
            "-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-ar", str(RATE), "-ac", "1", "pipe:"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    while chunk := proc.stdout.read(_READ_CHUNK):
        digest.update(chunk)
    if proc.wait() != 0:
        raise SystemExit(f"ffmpeg failed on {path}")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = make_wav(Path(tmp) / "lesson.wav", args.hours)
        ways = {"4 KiB packets (FFmpeg's default: before)": None, "1 MiB packets (decode_audio now)": _READ_CHUNK}
        best: dict[str, tuple[float, float]] = {}
        digests = set()
        for _ in range(args.repeat):  # interleaved
            for name, packet in ways.items():
                wall, cpu, digest = decode(wav, packet)
                digests.add(digest)
                old = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(old[0], wall), min(old[1], cpu))
        if len(digests) != 1:
            raise SystemExit("the two ways decoded different samples")
        size = os.path.getsize(wav)
    (before, after) = best.values()
    results = [{"way": name, "wall_s": round(w, 3), "ffmpeg_cpu_s": round(c, 3)} for name, (w, c) in best.items()]
    results.append({"hours": args.hours, "wav_bytes": size, "same_samples": True,
                    "ffmpeg_cpu_ratio": round(before[1] / after[1], 2), "wall_ratio": round(before[0] / after[0], 2)})
    dest = record.write("wav", results)
    print("| way | wall s | FFmpeg CPU s |\n| --- | ---: | ---: |")
    for name, (w, c) in best.items():
        print(f"| {name} | {w:.2f} | {c:.2f} |")
    print(f"ratio (before / after): wall {before[0] / after[0]:.2f}×, FFmpeg CPU {before[1] / after[1]:.2f}×; "
          f"{args.hours:g} h, {size / 1e6:.0f} MB; same samples. → {dest}")


if __name__ == "__main__":
    main()
