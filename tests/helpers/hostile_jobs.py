"""Hostile files run as jobs: the cases the tests and ``bench/bench_hostile.py`` share.

``run_jobs`` runs each case's job with the real recipe (``render_job``: PyAV, ffmpeg, the
warp pack on PyTorch) in one fresh Python process, which reports its peak resident memory
after imports and the model and after each job, and the peak of the ffmpeg processes each
job started (tests/helpers/peak.py). ``REFUSED`` are files over a limit (or damaged so as to
read as far over one), each with what its row's message must say. ``SUBMIT`` runs a
manifest of many rows naming one missing file through ``submit`` on a local Ray, and
reports the driver's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from heygem_ray.config import InputLimits
from tests.helpers.hostile import (
    make_huge_png,
    make_jpeg_claiming,
    make_long_wav,
    make_mp4_claiming_frames,
    make_timestamp_gap_video,
)

ROOT = Path(__file__).resolve().parents[2]
LIMITS = InputLimits()

JOBS = """
import json, sys
from pathlib import Path
from heygem_ray.config import InputLimits, RenderConfig
from heygem_ray.manifest import Job
from heygem_ray.job import InProcessService, render_job
from heygem_ray.worker import ModelWorker
from tests.helpers.peak import ChildPeaks, self_peak_mib

folder, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
service = InProcessService(ModelWorker(RenderConfig(backend="pytorch"), engines_dir=folder / "engines"))
print("BEFORE", self_peak_mib(), flush=True)
for name, (audio, video, limits) in cases.items():
    cfg = RenderConfig(backend="pytorch", limits=InputLimits(**limits))
    job = Job(row=7, job_id=name, audio=Path(audio), video=Path(video), output=folder / "out" / f"{name}.mp4")
    with ChildPeaks("ffmpeg") as ffmpeg:
        result = render_job(job, cfg, folder / "cache", service)
    row = {k: v for k, v in result.to_row().items() if isinstance(v, (str, int, float, type(None)))}
    print("CASE", json.dumps({"name": name, "row": row, "peak_mib": self_peak_mib(), "ffmpeg_mib": ffmpeg.mib}),
          flush=True)
"""


def child_env(base: dict[str, str] | None = None, scratch: Path | None = None) -> dict[str, str]:
    """``base`` (this process's environment by default) with this checkout first on the
    path; temporary files (a job's scratch folder) under ``scratch`` if given (not for Ray,
    whose socket paths must stay short)."""
    base = dict(os.environ) if base is None else base
    env = {**base, "PYTHONPATH": os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])}
    return env if scratch is None else {**env, "TMPDIR": str(scratch)}


def run_jobs(tmp: Path, cases: dict[str, tuple[Path, Path, dict]], timeout: float) -> tuple[float, dict[str, dict]]:
    """Run each case's job in order in one fresh process: (its peak before the jobs, each
    case's row and the peaks after it)."""
    spec = json.dumps({name: (str(a), str(v), limits) for name, (a, v, limits) in cases.items()})
    proc = subprocess.run([sys.executable, "-c", JOBS, str(tmp), spec], cwd=ROOT, env=child_env(scratch=tmp),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the jobs' process failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.splitlines()
    before = next(float(x.split()[1]) for x in lines if x.startswith("BEFORE "))
    found = [json.loads(x.removeprefix("CASE ")) for x in lines if x.startswith("CASE ")]
    return before, {c["name"]: c for c in found}


# name → (maker of the hostile file in a folder, is it the audio (else the reference),
# step, error kind, words its message holds)
REFUSED = {
    "png-20000x20000": (lambda d: make_huge_png(d / "huge.png", width=20_000, height=20_000), False, "analyze", "too_large",
                        ["is 20000×20000 pixels", "above the limit of 33.2 million pixels",
                         f"--max-reference-pixels {LIMITS.max_reference_pixels}", "scale it down"]),
    # Within FFmpeg's own size limit (20 000² is over it): this one it decodes (a 5.9 GiB job before).
    "png-16000x16000": (lambda d: make_huge_png(d / "big.png", width=16_000, height=16_000), False, "analyze", "too_large",
                        ["is 16000×16000 pixels (256.0 million pixels)"]),
    "jpeg-claiming-20000x20000": (lambda d: make_jpeg_claiming(d / "claims.jpg", width=20_000, height=20_000),
                                  False, "analyze", "too_large", ["is 20000×20000 pixels", "--max-reference-pixels"]),
    "mp4-listing-2m-frames": (lambda d: make_mp4_claiming_frames(d / "2m.mp4", frames=2_000_000), False, "analyze", "too_large",
                              ["lists 2,000,000 frames in its header", "above the limit of 90,000 frames",
                               f"--max-reference-frames {LIMITS.max_reference_frames}", "use only its first minutes (--reference-seconds 300"]),
    "mp4-listing-80m-frames": (lambda d: make_mp4_claiming_frames(d / "80m.mp4", frames=80_000_000), False,
                               "analyze", "too_large", ["lists 80,000,000 frames in its header"]),
    "mp4-holding-1m-frames": (lambda d: make_mp4_claiming_frames(d / "1m.mp4", frames=1_000_000,
                                                                 every_frame_in_file=True),
                              False, "analyze", "too_large", ["lists 1,000,000 frames in its header"]),
    # Damaged, not long: refused all the same, before it is decoded.
    "frames-10-hours-apart": (lambda d: make_timestamp_gap_video(d / "gap.mkv", gap_seconds=36_000), False, "analyze",
                              "unreadable_media", ["has timestamps that jump 10:00:00 on after its first 2 frames",
                                                   "the file is damaged there"]),
    "audio-10-hours": (lambda d: make_long_wav(d / "ten-hours.wav", seconds=36_000), True, "audio", "too_large",
                       ["lasts 10:00:00 (as its header declares)", "above the limit of 4:00:00",
                        "--max-audio-seconds 14400", "split it"]),
}  # fmt: skip


SUBMIT = """
import csv, json, sys, time
from pathlib import Path
from heygem_ray import RenderConfig, RunConfig, submit
from tests.helpers.peak import self_peak_mib

folder, rows = Path(sys.argv[1]), int(sys.argv[2])
with open(folder / "manifest.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["audio", "video"])
    out.writerows(["gone.wav", "presenter.mp4"] for _ in range(rows))
start = time.monotonic()
summary = submit(folder / "manifest.csv", RunConfig(output_dir=folder / "out", cache_dir=folder / "cache",
                 engines_dir=folder / "engines", render=RenderConfig(backend="pytorch"), device="cpu", workers=1))
print("SUBMIT", json.dumps({"seconds": time.monotonic() - start, "peak_mib": self_peak_mib(), "total": summary.total,
                            "failed": summary.failed}))
"""
