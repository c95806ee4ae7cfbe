"""A phone's 60-fps lecture take rendered at its own rate and at ``--max-fps`` 30, in one run.

    .venv/bin/python bench/bench_fps.py [--seconds 4] [--repeat 2]

One 1920×1080 lecture-like take at 60 fps (tests/helpers/footage.py: a 162-px presenter
panning on a busy slide, talking), with a camera's noise (H.264 at 12 Mbit/s, as a phone
records 1080p60), and a speech-like tone as long as it. Each setting renders it as one job
with the warp pack (no model weights: what is measured is the CPU side, as on a GPU node)
through the real recipe in a fresh process: analysis into a fresh template cache, then the
job (features, model, compose, x264 at the default ``lean``). The settings alternate,
``--repeat`` times, and the median is kept. Per setting: CPU seconds per second of video
(the process and its ffmpeg children: analysis, and the rest of the job), the wall time,
the frames, the template's bytes and the MP4's size, and each ratio to the take's own rate.

Writes bench/results/fps-<host>.json.
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
from tests.helpers.media import make_tone  # noqa: E402

CAPS = (0, 30)
# One job in a fresh process: its CPU, the ffmpeg children's included.
_JOB = """
import json, resource, sys, tempfile, time
from pathlib import Path
from heygem_ray.analyze import analyze
from heygem_ray.config import RenderConfig
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.packs import get_pack
from heygem_ray.worker import ModelWorker

take, audio, cap = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
out, cache = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
cfg = RenderConfig(backend="pytorch", max_fps=cap)
service = InProcessService(ModelWorker(cfg, engines_dir=out / "engines"))

def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

c0, t0 = cpu(), time.perf_counter()
template, _ = analyze(take, get_pack("warp").geometry, cfg.detector, cache, max_fps=cap)
c1, t1 = cpu(), time.perf_counter()
store = sum(p.stat().st_size for p in template.root.iterdir())
fps = float(template.fps)
template.close()
result = render_job(Job(row=1, job_id="j", audio=audio, video=take, output=out / "j.mp4"), cfg, cache, service)
assert result.status == "ok", result.error
c2, t2 = cpu(), time.perf_counter()
print("RESULT " + json.dumps({
    "analysis_cpu_s": c1 - c0, "job_cpu_s": c2 - c1, "wall_s": t2 - t0, "analysis_wall_s": t1 - t0,
    "template_bytes": store, "mp4_bytes": Path(result.output).stat().st_size, "frames": result.frames, "fps": fps,
}))
"""


def phone_take(folder: Path, seconds: float) -> Path:
    """The 1080p60 take with a camera's noise, at a phone's 12 Mbit/s."""
    clean = lecture_clip(folder / "clean.mp4", size=(1920, 1080), face=162, seconds=seconds, fps=60, corner="centre",
                         talk=lambda t: 0.5).path  # fmt: skip
    return record.camera_like(clean, folder / "take.mp4", "12M")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the take (and the speech)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each setting, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        take = phone_take(Path(tmp), args.seconds)
        audio = make_tone(Path(tmp) / "speech.wav", seconds=args.seconds)
        runs: dict[int, list[dict]] = {cap: [] for cap in CAPS}
        for _ in range(args.repeat):
            for cap in CAPS:
                got, _ = record.run_child(f"max_fps {cap}", _JOB, str(take), str(audio), str(cap))
                runs[cap].append(got)
                print(json.dumps({"max_fps": cap, **got}), flush=True)
    results = []
    for cap in CAPS:
        row: dict = {"max_fps": cap}
        for key in runs[cap][0]:
            row[key] = statistics.median(r[key] for r in runs[cap])
        row["analysis_cpu_s_per_s"] = round(row["analysis_cpu_s"] / args.seconds, 3)
        row["job_cpu_s_per_s"] = round(row["job_cpu_s"] / args.seconds, 3)
        results.append(row)
    own = results[0]
    for row in results:
        for key in ("analysis_cpu_s_per_s", "job_cpu_s_per_s", "wall_s", "template_bytes", "mp4_bytes"):
            row[f"{key}_x_cheaper"] = round(own[key] / row[key], 2)
    print(json.dumps(results, indent=1))
    print(record.write("fps", results, seconds=args.seconds, repeat=args.repeat))


if __name__ == "__main__":
    main()
