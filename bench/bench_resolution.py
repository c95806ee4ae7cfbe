"""A 4K lecture take rendered at its own size and at ``--max-resolution`` 1080 and 720, in one run.

    .venv/bin/python bench/bench_resolution.py [--seconds 4] [--repeat 2]

One 3840×2160 lecture-like take (tests/helpers/footage.py: a 240-px presenter panning on
a busy slide, talking), with a camera's noise (H.264 at 30 Mbit/s, as a 4K camera or
phone records), and a speech-like tone as long as it. Each setting renders it as one job
with the warp pack (no model weights: what is measured is the CPU side, as on a GPU node)
through the real recipe in a fresh process: analysis into a fresh template cache, then
the job (features, model, compose, x264 at the default ``lean``). The settings alternate,
``--repeat`` times, and the median is kept. Per setting: CPU seconds per second of video
(the process and its ffmpeg children: analysis, and the rest of the job), the wall time,
the template's bytes, the MP4's size and resolution, and each ratio to the take's own
size.

Writes bench/results/resolution-<host>.json.
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
from heygem_ray import media  # noqa: E402
from tests.helpers.footage import lecture_clip  # noqa: E402
from tests.helpers.media import make_tone  # noqa: E402

CAPS = (0, 1080, 720)
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
cfg = RenderConfig(backend="pytorch", max_resolution=cap)
service = InProcessService(ModelWorker(cfg, engines_dir=out / "engines"))

def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

c0, t0 = cpu(), time.perf_counter()
template, _ = analyze(take, get_pack("warp").geometry, cfg.detector, cache, max_resolution=cap)
c1, t1 = cpu(), time.perf_counter()
store = sum(p.stat().st_size for p in template.root.iterdir())
template.close()
result = render_job(Job(row=1, job_id="j", audio=audio, video=take, output=out / "j.mp4"), cfg, cache, service)
assert result.status == "ok", result.error
c2, t2 = cpu(), time.perf_counter()
print("RESULT " + json.dumps({
    "analysis_cpu_s": c1 - c0, "job_cpu_s": c2 - c1, "wall_s": t2 - t0, "analysis_wall_s": t1 - t0,
    "template_bytes": store, "mp4_bytes": Path(result.output).stat().st_size, "frames": result.frames,
}))
"""


def camera_take(folder: Path, seconds: float) -> Path:
    """The 4K take with a camera's noise, at a 4K camera's 30 Mbit/s."""
    clean = lecture_clip(folder / "clean.mp4", size=(3840, 2160), face=240, seconds=seconds, corner="centre",
                         talk=lambda t: 0.5).path  # fmt: skip
    return record.camera_like(clean, folder / "take.mp4", "30M")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the 4K take (and the speech)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each setting, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        take = camera_take(Path(tmp), args.seconds)
        audio = make_tone(Path(tmp) / "speech.wav", seconds=args.seconds)
        runs: dict[int, list[dict]] = {cap: [] for cap in CAPS}
        for _ in range(args.repeat):
            for cap in CAPS:
                got, _ = record.run_child(f"max_resolution {cap}", _JOB, str(take), str(audio), str(cap))
                runs[cap].append(got)
                print(json.dumps({"max_resolution": cap, **got}), flush=True)
    results = []
    for cap in CAPS:
        width, height = media.video_probe.scaled_to(3840, 2160, cap)
        row: dict = {"max_resolution": cap, "size": f"{width}x{height}"}
        for key in runs[cap][0]:
            row[key] = statistics.median(r[key] for r in runs[cap])
        seconds = row["frames"] / 25
        row["analysis_cpu_s_per_s"] = round(row["analysis_cpu_s"] / seconds, 3)
        row["job_cpu_s_per_s"] = round(row["job_cpu_s"] / seconds, 3)
        results.append(row)
    own = results[0]
    for row in results:
        for key in ("analysis_cpu_s_per_s", "job_cpu_s_per_s", "wall_s", "template_bytes", "mp4_bytes"):
            row[f"{key}_x_cheaper"] = round(own[key] / row[key], 2)
    print(json.dumps(results, indent=1))
    print(record.write("resolution", results, seconds=args.seconds, repeat=args.repeat))


if __name__ == "__main__":
    main()
