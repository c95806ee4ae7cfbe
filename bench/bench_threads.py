"""Threads that wait: the render stage beside a busy neighbour, its idle threads spinning or asleep.

On a node, the model worker shares the cores with the job tasks: decode, compose and x264.
Between two operations of a network, ONNX Runtime's threads spin by default and PyTorch's
OpenMP threads spin for a while (``OMP_WAIT_POLICY`` unset); a spinning thread holds a
core the neighbour needed. This runs the Wav2Lip render stage (the public architecture,
seeded weights, batch 16) for ``--seconds`` in a fresh process, four ways: ONNX Runtime
with its threads spinning (its default) or asleep (``session.intra_op.allow_spinning=0``,
as ``OrtRunner`` opens every session), PyTorch with ``OMP_WAIT_POLICY`` unset or
``PASSIVE``; each alone and beside a neighbour, an x264 encode of a 1280×720 test picture
at compose's preset. Writes both sides' frames/s to ``bench/results/threads-<host>.json``.

    python bench/bench_threads.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.*

from bench import record  # noqa: E402
from bench.bench_backends import cores, cpu_busy, cpu_name  # noqa: E402
from heygem_ray import media  # noqa: E402
from heygem_ray.config import RenderConfig  # noqa: E402

BATCH = 16
# The render stage in a child: READY once built, then frames/s over the seconds given once
# the parent writes a line (argv: backend, spin or wait, seconds, checkpoint, graph folder).
CHILD = """
import json, sys, time
import numpy as np
import torch
from heygem_ray.export import export_onnx
from heygem_ray.packs import get_pack

backend, mode, seconds, checkpoint, folder = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
pack = get_pack("wav2lip")
stage = pack.load_stages(checkpoint)["render"].eval()
inputs, outputs = pack.io("render")
feed = {t.name: np.random.default_rng(0).random((BATCH, *t.shape), np.float32) for t in inputs}
if backend == "onnxruntime":
    from bench.bench_int8 import session
    path = export_onnx(stage, inputs, outputs, f"{folder}/render.onnx")
    opened = session(path, **{"session.intra_op.allow_spinning": "1" if mode == "spin" else "0"})
    call = lambda: opened.run(None, feed)
else:
    given = [torch.from_numpy(feed[t.name]) for t in inputs]
    def call():
        with torch.inference_mode():
            stage(*given)
call()
print("READY", flush=True)
sys.stdin.readline()
frames, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    call()
    frames += BATCH
print("RESULT " + json.dumps({"frames_per_s": frames / (time.perf_counter() - t0)}), flush=True)
""".replace("BATCH", str(BATCH))


def neighbour(progress: Path) -> subprocess.Popen:
    """x264 on an endless 1280×720 test picture at compose's preset, its frame count in ``progress``."""
    return subprocess.Popen(
        [media.ffmpeg_exe(), "-v", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=1000",
         "-c:v", "libx264", "-preset", RenderConfig.preset, "-threads", "2", "-f", "null", "-",
         "-progress", str(progress)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def encoded(progress: Path) -> tuple[int, float]:
    """(frames the neighbour has encoded, when read)."""
    text = progress.read_text() if progress.exists() else ""
    counts = [int(line.split("=")[1]) for line in text.splitlines() if line.startswith("frame=")]
    return (counts[-1] if counts else 0), time.perf_counter()


def one(backend: str, mode: str, beside: bool, seconds: float, checkpoint: Path, tmp: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if backend == "pytorch" and mode == "wait":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    child = subprocess.Popen([sys.executable, "-c", CHILD, backend, mode, str(seconds), str(checkpoint), str(tmp)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    assert child.stdin is not None and child.stdout is not None
    if child.stdout.readline().strip() != "READY":
        raise SystemExit(f"{backend} {mode}: the render child did not start (exit {child.wait()})")
    progress = tmp / "progress.txt"
    progress.unlink(missing_ok=True)
    encoder = neighbour(progress) if beside else None
    if encoder is not None:
        time.sleep(3)  # past its start
    f0, t0 = encoded(progress)
    child.stdin.write("go\n")
    child.stdin.flush()
    result = next(json.loads(line.removeprefix("RESULT ")) for line in child.stdout if line.startswith("RESULT "))
    f1, t1 = encoded(progress)
    child.wait()
    if encoder is not None:
        encoder.kill()
        encoder.wait()
        result["neighbour_frames_per_s"] = (f1 - f0) / (t1 - t0)
    return {"backend": backend, "threads": mode, "beside_x264": beside, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each render runs")
    args = ap.parse_args()
    from tests.helpers.wav2lip_ckpt import write_random_checkpoint

    busy = cpu_busy()
    results = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        checkpoint = write_random_checkpoint(tmp / "wav2lip.pth", seed=0)
        for backend in ("onnxruntime", "pytorch"):
            for mode in ("spin", "wait"):
                for beside in (False, True):
                    results.append(one(backend, mode, beside, args.seconds, checkpoint, tmp))
                    print(json.dumps(results[-1]), flush=True)
    dest = record.write("threads", results, cpu=cpu_name(), cores=cores(), busy_before=busy)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
