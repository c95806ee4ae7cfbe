"""Where a benchmark's numbers go: ``bench/results/<name>-<host>.json``, with the machine,
the command that made them and the date; how a benchmark runs one measurement in a fresh
Python process (``run_child``); and the modes of a benchmark over many Ray tasks
(``each_mode``), each keeping a few tasks in flight in its child (``in_flight``); the
jobs' encoder options as an ffmpeg command line (``ffmpeg_args``); a clip as a camera
records it (``camera_like``); one job rendered at each value of a cap on the reference
(``capped_runs``: ``max_resolution``, ``max_fps``); and, for the benchmarks of a codec's threads, the noisy
pattern they code (``noisy_pattern``) and their table (``print_threads_table``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]


def write(name: str, results: list[dict], **machine: Any) -> Path:
    """Write ``results`` with this machine's description (plus ``machine``'s fields); returns the file."""
    record = {
        "machine": {
            "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            **machine,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": results,
    }
    dest = RESULTS / f"{name}-{socket.gethostname()}.json"
    dest.write_text(json.dumps(record, indent=2) + "\n")
    return dest


def ffmpeg_args(options: dict[str, Any]) -> list[str]:
    """ffmpeg output options as ``media.encoders.video_codec_options`` gives them (keyword
    form, for ffmpeg-python) → command-line arguments: ``-c:v`` for the codec, ``-<key>
    <value>`` for the rest."""
    args: list[str] = []
    for key, value in options.items():
        args += ["-c:v" if key == "vcodec" else f"-{key}", str(value)]
    return args


def camera_like(clip: Path, out: Path, bitrate: str = "8M") -> Path:
    """``clip`` as a camera would record it, written to ``out``: temporal noise on every
    pixel (luma and chroma, ffmpeg's ``noise`` filter at strength 6, uniform), then H.264 at
    ``bitrate`` (x264 ``fast``; 8 Mbit/s as a 1080p camera or phone, 30 at 4K), tagged BT.709
    limited range. What x264 and the frame store spend their time on in real footage: noise
    that differs in every frame, which a synthetic slide has none of."""
    from heygem_ray.media import ffmpeg_exe  # (the repository is on the path once a benchmark runs)

    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip), "-vf", "noise=alls=6:allf=t+u",
                    "-c:v", "libx264", "-preset", "fast", "-b:v", bitrate, "-pix_fmt", "yuv420p",
                    "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
                    str(out)], check=True)  # fmt: skip
    return out


def noisy_pattern(size: str) -> str:
    """ffmpeg's lavfi source of a ``size`` ("1920x1080") test pattern at 25 fps with
    temporal noise on every pixel (as a camera hands it over)."""
    return f"testsrc2=size={size}:rate=25,noise=alls=6:allf=t+u"


def print_threads_table(results: list[dict], codec: str, own: str) -> None:
    """A BENCHMARKS table of ``results`` rows (size, threads, peak RSS, CPU a frame, wall)
    of ``codec``'s thread counts; 0 threads is ``own`` choice."""
    print(f"| size | {codec} threads | peak RSS | CPU ms a frame | wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        threads = own if r["threads"] == 0 else r["threads"]
        print(f"| {r['size']} | {threads} | {r['peak_rss_mb']:.0f} MB | {r['cpu_ms_per_frame']:.1f} | {r['wall_s']:.2f} |")


def run_child(label: str, script: str, *args: str, unset: tuple[str, ...] = ("RAY_ADDRESS",)) -> tuple[Any, float]:
    """Run ``script`` with ``args`` in a fresh ``python -c`` in the repository, without the
    environment variables ``unset`` (RAY_ADDRESS: a local Ray of its own). Returns the JSON
    it printed after ``RESULT `` and its wall time in seconds; a failure stops the benchmark
    with the child's stderr, under ``label``."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{label}: exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(result.removeprefix("RESULT ")), time.perf_counter() - t0


def each_mode(doc: str, modes: tuple[str, ...], run_mode: Callable[[str, int], dict], every: int) -> list[dict]:
    """Parse ``--tasks`` (the command line of a benchmark described by ``doc``, which reads
    memory every ``every`` tasks), then run ``run_mode(mode, tasks)`` for each of ``modes``,
    printing each result as it comes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    tasks = parser.parse_args().tasks
    if tasks < 3 * every:  # a slope needs readings after the start-up one
        parser.error(f"--tasks must be at least {3 * every} (a reading every {every} tasks)")
    results = []
    for mode in modes:
        results.append(run_mode(mode, tasks))
        print(json.dumps(results[-1]), flush=True)
    return results


def in_flight(
    submit: Callable[[int], Any], tasks: int, every: int, reading: Callable[[], float], between: Callable[[], None] = lambda: None
) -> list[list[float]]:
    """In a benchmark's child process (``from bench import record``; it runs in the
    repository): start ``tasks`` Ray tasks with ``submit(i)``, four in flight, and take
    ``reading()`` after every ``every`` of them end; ``between`` runs after each wait.
    Returns [[tasks done, reading], ...]."""
    import ray

    pending: list[Any] = []
    readings: list[list[float]] = []
    done = submitted = 0
    while done < tasks:
        while len(pending) < 4 and submitted < tasks:
            pending.append(submit(submitted))
            submitted += 1
        ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        for ref in ready:
            ray.get(ref)
            done += 1
            if done % every == 0:
                readings.append([done, round(reading(), 1)])
        between()
    return readings


# One job in a fresh process at one value of a render setting that caps the reference
# (``max_resolution``, ``max_fps``: a RenderConfig field and an ``analyze`` argument alike),
# with the warp pack: analysis into a fresh template cache, then the job. Its CPU is the
# process's and its ffmpeg children's.
_CAPPED_JOB = """
import json, resource, sys, tempfile, time
from pathlib import Path
from heygem_ray.analyze import analyze
from heygem_ray.config import RenderConfig
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.packs import get_pack
from heygem_ray.worker import ModelWorker

take, audio, setting, cap = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out, cache = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
cfg = RenderConfig(backend="pytorch", **{setting: cap})
service = InProcessService(ModelWorker(cfg, engines_dir=out / "engines"))

def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

c0, t0 = cpu(), time.perf_counter()
template, _ = analyze(take, get_pack("warp").geometry, cfg.detector, cache, **{setting: cap})
c1, t1 = cpu(), time.perf_counter()
store = sum(p.stat().st_size for p in template.root.iterdir())
size, fps = f"{template.width}x{template.height}", float(template.fps)
template.close()
result = render_job(Job(row=1, job_id="j", audio=audio, video=take, output=out / "j.mp4"), cfg, cache, service)
assert result.status == "ok", result.error
c2, t2 = cpu(), time.perf_counter()
print("RESULT " + json.dumps({
    "analysis_cpu_s": c1 - c0, "job_cpu_s": c2 - c1, "wall_s": t2 - t0, "analysis_wall_s": t1 - t0,
    "template_bytes": store, "mp4_bytes": Path(result.output).stat().st_size, "frames": result.frames,
    "size": size, "fps": fps,
}))
"""


def capped_runs(setting: str, caps: tuple[int, ...], take: Path, audio: Path, seconds: float, repeat: int) -> list[dict]:
    """``take`` rendered with ``audio`` (both ``seconds`` long) as one job at each of ``caps``
    of ``setting`` (the first: the take as it is), alternating, ``repeat`` times: per cap,
    the medians, CPU seconds per second of video, and each figure's ratio to the first's."""
    runs: dict[int, list[dict]] = {cap: [] for cap in caps}
    for _ in range(repeat):
        for cap in caps:
            got, _ = run_child(f"{setting} {cap}", _CAPPED_JOB, str(take), str(audio), setting, str(cap))
            runs[cap].append(got)
            print(json.dumps({setting: cap, **got}), flush=True)
    results = []
    for cap in caps:
        first = runs[cap][0]
        row: dict = {setting: cap, "size": first["size"]}
        row.update({k: statistics.median(r[k] for r in runs[cap]) for k in first if k != "size"})
        row["analysis_cpu_s_per_s"] = round(row["analysis_cpu_s"] / seconds, 3)
        row["job_cpu_s_per_s"] = round(row["job_cpu_s"] / seconds, 3)
        results.append(row)
    own = results[0]
    for row in results:
        for key in ("analysis_cpu_s_per_s", "job_cpu_s_per_s", "wall_s", "template_bytes", "mp4_bytes"):
            row[f"{key}_x_cheaper"] = round(own[key] / row[key], 2)
    return results
