"""Benchmark: what resume's content checks cost (``identity.py``, ``resume.split``).

    .venv/bin/python bench/bench_trust.py [--weights-mib 512] [--rows 2000]

A rerun trusts an earlier row only if the weights' and inputs' contents are the ones it
was rendered from, so the driver hashes them. Each digest is kept in this machine's cache
under the file's stat, so only the first run after a file changed pays for reading it:

* weights: ``identity.weights_digest`` of a checkpoint file of ``--weights-mib`` MiB
  (MuseTalk's UNet alone is 3.4 GB), with an empty digest cache, then with it filled;
* rerun check: ``resume.split`` over ``--rows`` finished rows in a local folder (each its
  own one-second WAV, one shared reference, a real MP4 each), every one of them trusted:
  with an empty digest cache (the first run after an upgrade: every audio is hashed),
  then filled (every night after).

The digest cache goes to a temporary ``XDG_CACHE_HOME``. Writes bench/results/trust-<host>.json
and prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.record import write  # noqa: E402
from heygem_ray import identity, media  # noqa: E402
from heygem_ray.driver import resume  # noqa: E402
from heygem_ray.manifest import read_manifest  # noqa: E402
from heygem_ray.results import JobResult  # noqa: E402


def timed(call: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = call()
    return time.perf_counter() - t0, value


def weights(mib: int, folder: Path) -> dict[str, Any]:
    ckpt = folder / "weights.pth"
    block = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    with open(ckpt, "wb") as f:
        for _ in range(mib):
            f.write(block)
    cold, first = timed(lambda: identity.weights_digest(ckpt))
    warm, again = timed(lambda: identity.weights_digest(ckpt))
    assert first == again
    return {"what": f"weights_digest of a {mib} MiB checkpoint", "items": 1, "cold_s": cold, "warm_s": warm}


def rerun_check(rows: int, folder: Path) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    (folder / "p.jpg").write_bytes(b"a reference")
    lines = ["job_id,audio,video"]
    for i in range(rows):
        with wave.open(str(folder / f"a{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(rng.integers(-3000, 3000, 16000, dtype=np.int16).tobytes())
        lines.append(f"lesson-{i:05d},a{i}.wav,p.jpg")
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    mp4 = folder / "template.mp4"  # every row's MP4 is a copy: a second of 25 frames
    with media.VideoWriter(mp4, width=64, height=48, fps=Fraction(25), audio=folder / "a0.wav", duration=1.0) as w:
        w.write(np.zeros((25, 48, 64, 3), np.uint8))
    out = folder / "out"
    jobs = read_manifest(folder / "m.csv", out)
    earlier = resume.Basis("earlier", "h", identity.NO_WEIGHTS)
    for job in jobs:
        assert isinstance(job.output, Path)
        out.mkdir(exist_ok=True)
        shutil.copyfile(mp4, job.output)
        st = job.output.stat()
        row = JobResult.for_job(job, "warp")
        row.status, row.frames, row.output_bytes, row.output_mtime_ns = "ok", 25, st.st_size, st.st_mtime_ns
        resume.record(out, earlier.stamp(row, identity.input_identity(job.audio), identity.input_identity(job.video)))
    shutil.rmtree(Path(os.environ["XDG_CACHE_HOME"]) / "heygem-ray" / "digests")  # as before the first run
    now = resume.Basis("now", "h", identity.NO_WEIGHTS)
    cold, (todo, skipped) = timed(lambda: resume.split(jobs, out, now))
    assert not todo and len(skipped) == rows
    warm, (todo, skipped) = timed(lambda: resume.split(jobs, out, now))
    assert not todo and len(skipped) == rows
    return {"what": "resume.split, every row trusted (local folder)", "items": rows, "cold_s": cold, "warm_s": warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-mib", type=int, default=512)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trust-") as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        (Path(tmp) / "w").mkdir()
        (Path(tmp) / "r").mkdir()
        results = [weights(args.weights_mib, Path(tmp) / "w"), rerun_check(args.rows, Path(tmp) / "r")]
    print("wrote", write("trust", results))
    print("\n| check | items | empty digest cache | filled |\n| --- | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['what']} | {r['items']} | {r['cold_s']:.2f} s | {r['warm_s']:.3f} s |")


if __name__ == "__main__":
    main()
