"""Benchmark: heygem-ray against the public Wav2Lip inference script, end to end, on this CPU.

    git clone https://github.com/Rudrabha/Wav2Lip /tmp/wav2lip-public   # outside this repository
    .venv/bin/python bench/bench_vs_public.py /tmp/wav2lip-public [--seconds 58] [--repeat 2] [--before CHECKOUT] [--no-auto]

The public ``inference.py`` runs in its checkout as its README documents, on the CPU (torch
without CUDA), PyTorch fp32 at its default batch of 128, with ``--box`` (the face's box: its
S3FD detector needs weights from a download); it writes its scratch files into the
checkout's ``temp/``. Both sides get the same inputs, made here: a seeded random generator in
the public checkpoint format (``tests/helpers/wav2lip_ckpt.py``: the real one's compute), a
``--seconds`` 1280×720 lecture clip of the bundled portrait (face 240 px wide, still, so one
box fits every frame) and the bundled speech looped to the same length as 16 kHz WAV.

Rows, one run of each in turn, ``--repeat`` times (median; every run's time kept):

- ``public``: ``python inference.py --checkpoint_path … --face clip.mp4 --audio speech.wav --box …``;
- ``ours auto``: ``heygem-ray submit --pack wav2lip`` (``--precision auto``: ONNX Runtime fp32 here;
  ``--no-auto`` leaves it out);
- ``ours int8``: the same with ``--precision int8`` (calibrated on the bundled examples);
- with ``--before CHECKOUT`` (another checkout of heygem-ray, e.g. ``git worktree add
  /tmp/heygem-before <commit>``), ``before int8``: that checkout's ``--precision int8``, with
  an engine store and template cache of its own.

Ours run with a warm template and a built engine store, as a nightly batch finds them: one
untimed run of each first. Each timed run is the whole command (a local Ray starts and stops
inside it) into a fresh output folder; the stage times come from its ``results.parquet``.

One compatibility shim for the public script: librosa 0.10 made ``librosa.filters.mel``'s
arguments keyword-only and the script passes two of them positionally; the shim names them
and changes nothing else. Without an ``ffmpeg`` on PATH, the one heygem-ray uses
(imageio-ffmpeg's) is put on the public script's PATH for its two ffmpeg commands.

Writes bench/results/vs-public-<host>.json (``record.write``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers (checkpoint, footage), bench.*

from bench import record  # noqa: E402
from bench.bench_backends import cores, cpu_busy, cpu_name  # noqa: E402
from bench.bench_int8 import speech  # noqa: E402
from heygem_ray import media  # noqa: E402
from tests.helpers.footage import lecture_clip  # noqa: E402
from tests.helpers.wav2lip_ckpt import write_random_checkpoint  # noqa: E402

# The public audio.py calls librosa.filters.mel(sample_rate, n_fft, n_mels=..., ...): since
# librosa 0.10 the first two must be named. Run as ``python -c SHIM ARGS...`` in the checkout.
SHIM = """
import runpy, sys
import librosa.filters
_mel = librosa.filters.mel
def mel(*args, **kwargs):
    return _mel(**dict(zip(("sr", "n_fft"), args)), **kwargs)
librosa.filters.mel = mel
sys.argv = ["inference.py", *sys.argv[1:]]
runpy.run_path("inference.py", run_name="__main__")
"""
PAD_BOTTOM = 10  # px below the face box: the public --pads default, which --box skips (our crops add it)
TIMEOUT_S = 3600


def inputs(tmp: Path, seconds: float) -> tuple[Path, Path, Path, list[int]]:
    """(checkpoint, clip, speech, public --box as top bottom left right)."""
    checkpoint = write_random_checkpoint(tmp / "wav2lip-random.pth", seed=0)
    clip = lecture_clip(tmp / "lecture-720p.mp4", size=(1280, 720), face=240, seconds=seconds, corner="centre",
                        motion="still")
    x0, y0, x1, y1 = clip.faces[0]
    box = [round(y0), min(clip.size[1], round(y1) + PAD_BOTTOM), round(x0), round(x1)]
    return checkpoint, clip.path, speech(tmp / "speech.wav", seconds), box


def run(label: str, argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one command; a failure stops the benchmark with its output's end."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label}: exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return wall


def public_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if shutil.which("ffmpeg") is None:
        tools = tmp / "tools"
        tools.mkdir()
        (tools / "ffmpeg").symlink_to(media.ffmpeg_exe())
        env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', '')}"
    return env


def ours_env(checkout: Path) -> dict[str, str]:
    # The checkout's heygem_ray (also in Ray's workers), a local Ray of its own.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(checkout)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("public", type=Path, help="a checkout of github.com/Rudrabha/Wav2Lip (outside this repository)")
    ap.add_argument("--seconds", type=float, default=58.0, help="length of the clip and of the speech")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each row, interleaved (median)")
    ap.add_argument("--before", type=Path, help="another checkout of heygem-ray: adds its --precision int8 row")
    ap.add_argument("--no-auto", action="store_true", help="leave out the ours auto row (a shorter run)")
    args = ap.parse_args()
    public = args.public.resolve()
    if not (public / "inference.py").is_file():
        ap.error(f"{public} has no inference.py: clone https://github.com/Rudrabha/Wav2Lip there")
    before = args.before.resolve() if args.before else None
    if before is not None and not (before / "heygem_ray" / "cli.py").is_file():
        ap.error(f"{before} is not a checkout of heygem-ray (no heygem_ray/cli.py)")
    if torch.cuda.is_available():
        ap.error("this compares the CPU paths: hide the GPU (CUDA_VISIBLE_DEVICES=) and run again")
    busy_before = cpu_busy()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        checkpoint, clip, audio, box = inputs(tmp, args.seconds)
        manifest = tmp / "manifest.csv"
        manifest.write_text(f"job_id,audio,video\nlecture,{audio},{clip}\n")
        exe = str(Path(sys.executable).with_name("heygem-ray"))

        def ours(precision: str, store: str) -> list[str]:
            return [exe, "submit", str(manifest), "--pack", "wav2lip", "--checkpoint", str(checkpoint),
                    "--engines", str(tmp / store / "engines"), "--cache-dir", str(tmp / store / "templates"),
                    "--precision", precision]

        rows: dict[str, list[str]] = {
            "public": [sys.executable, "-c", SHIM, "--checkpoint_path", str(checkpoint), "--face", str(clip),
                       "--audio", str(audio), "--outfile", str(tmp / "public.mp4"), "--box", *map(str, box)],
            **({} if args.no_auto else {"ours auto": ours("auto", "ours")}),
            "ours int8": ours("int8", "ours"),
        }
        envs = {"public": (public, public_env(tmp)), "ours auto": (REPO, ours_env(REPO)),
                "ours int8": (REPO, ours_env(REPO))}
        if before is not None:
            rows["before int8"] = ours("int8", "before")
            envs["before int8"] = (before, ours_env(before))
        for name in [n for n in rows if n != "public"]:  # warm: the template, the engines, the gate's verdict
            run(f"{name} (warm-up)", [*rows[name], "--output-dir", str(tmp / f"warm-{name.replace(' ', '-')}")],
                *envs[name])
        walls: dict[str, list[float]] = {name: [] for name in rows}
        stages: dict[str, list[dict[str, Any]]] = {name: [] for name in rows if name != "public"}
        for i in range(args.repeat):  # one of each in turn, so other load falls on all alike
            for name, argv in rows.items():
                out = tmp / f"out-{name.replace(' ', '-')}-{i}"
                print(f"{name} run {i + 1} ...", file=sys.stderr, flush=True)
                walls[name].append(run(name, argv if name == "public" else [*argv, "--output-dir", str(out)],
                                       *envs[name]))
                if name != "public":
                    (row,) = pq.read_table(out / "results.parquet").to_pylist()
                    if row["status"] != "ok":
                        raise SystemExit(f"{name}: row {row['status']}: {row['error']}")
                    stages[name].append({k: row[k] for k in ("frames", "backend", "precision", "analyze_s",
                                                             "features_s", "motion_s", "render_s", "compose_s")})
        frames = media.probe_video(tmp / "public.mp4").frames
    base = statistics.median(walls["public"])
    results = []
    for name, runs in walls.items():
        wall = statistics.median(runs)
        results.append({"row": name, "wall_s": wall, "wall_s_runs": runs, "speedup_vs_public": base / wall,
                        "frames": frames if name == "public" else stages[name][0]["frames"],
                        **({"stages": stages[name]} if name in stages else {"box": box})})
    out = record.write(
        "vs-public", results, cpu=cpu_name(), cores=str(cores()), torch=torch.__version__,
        public=f"{public} at {git_head(public)}", ours=f"this checkout at {git_head(REPO)}",
        before=f"{before} at {git_head(before)}" if before else "", seconds=f"{args.seconds}",
        cpu_busy_before=f"{busy_before}",
        loadavg_before=" ".join(load_before), loadavg_after=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
        bench_seconds=f"{time.perf_counter() - t_start:.0f}",
    )
    print("| row | wall s (median) | runs | × public | frames | motion s | render s | compose s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        st = r.get("stages", [{}])[0]
        cols = " | ".join(f"{st[k]:.1f}" if k in st else "–" for k in ("motion_s", "render_s", "compose_s"))
        print(f"| {r['row']} | {r['wall_s']:.1f} | {' / '.join(f'{w:.1f}' for w in r['wall_s_runs'])} | "
              f"{r['speedup_vs_public']:.2f} | {r['frames']} | {cols} |")
    print(f"\nwritten to {out}")


def git_head(checkout: Path) -> str:
    proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown commit"


if __name__ == "__main__":
    main()
