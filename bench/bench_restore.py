"""Benchmark: GFPGAN v1.4 face restoration at its real size (seeded random weights), faces/s.

    .venv/bin/python bench/bench_restore.py [--batches 1,4,16] [--reps 3] [--reps-large 1] [--no-int8]

The network (``models/gfpgan.py``, 86.4 M parameters, ~396 GFLOP a face) is built by
``gfpgan.load`` from a seeded random checkpoint in the public format at the v1.4 size
(tests/helpers/gfpgan_ckpt.py): it costs what the real weights cost. Each backend runs it
through the runner a worker would use, on (k, 3, 512, 512) float32 faces from seeded
images (``to_network``), at each of ``--batches``:

* CPU: PyTorch fp32 (``TorchRunner``); ONNX Runtime fp32 (``OrtRunner`` on the graph from
  ``export_onnx`` with the stage's I/O, one file); ONNX Runtime int8 (``--no-int8`` skips
  it): the project's int8 path (``backends.int8.quantize_graph``: Conv weights per channel,
  activations calibrated on ``--calibrate`` other faces, in the x86 CPU form on x86;
  ``single_file``), timed only if its restored faces reach ``MIN_PSNR_DB`` against PyTorch fp32 on the
  batch-4 faces, else the row says it was refused and why.
* CUDA, where there is a GPU: PyTorch fp16 (``TorchRunner`` in float16), and TensorRT fp16
  (the fp16 graph, ``build_engine`` with a (1, max, max) batch profile) where TensorRT is
  installed.

One warm-up call at batch 1, then the median of ``--reps`` calls per batch (batches of 16
or more on the CPU: ``--reps-large``; a face takes seconds there). Each row has the wall
time and, for CPU rows, the process's CPU time divided by its threads: on a machine shared
with other work the wall time grows with the others' load, the CPU time much less.
Differences: max |Δ| of the network's output against PyTorch fp32 on the CPU at batch 1.
Writes bench/results/restore-<host>.json and prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers (the seeded checkpoint and faces), bench.*

from bench.bench_backends import cores, cpu_busy, cpu_name  # noqa: E402
from bench.record import write  # noqa: E402
from heygem_ray import hardware  # noqa: E402
from heygem_ray.backends import int8  # noqa: E402
from heygem_ray.backends import ort as ort_backend  # noqa: E402
from heygem_ray.backends import trt as trt_backend  # noqa: E402
from heygem_ray.backends.pytorch import TorchRunner  # noqa: E402
from heygem_ray.backends.runner import Runner  # noqa: E402
from heygem_ray.engines import BatchProfile  # noqa: E402
from heygem_ray.export import export_onnx  # noqa: E402
from heygem_ray.models import gfpgan  # noqa: E402
from tests.helpers.gfpgan_ckpt import random_state_dict, seeded_faces  # noqa: E402

STAGE = "restore"
MIN_PSNR_DB = 35.0  # int8 is reported only if its faces are this close to fp32's
GATE_BATCH = 4  # the faces the int8 gate compares (the batch-4 timing faces)


def checkpoint(folder: Path) -> Path:
    path = folder / "GFPGANv1.4-seeded.pth"
    torch.save({"params_ema": random_state_dict("v1.4", seed=0)}, path)
    return path


def timed(runner: Runner, x: np.ndarray, reps: int, threads: int) -> tuple[float, float, np.ndarray]:
    """(median wall seconds, median CPU seconds per thread, output) of ``reps`` calls."""
    walls, cpus = [], []
    out = np.empty(0)
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        out = runner.infer({"faces": x})["restored"]
        walls.append(time.perf_counter() - w0)
        cpus.append((time.process_time() - c0) / threads)
    return statistics.median(walls), statistics.median(cpus), out


def measure(name: str, runner: Runner, device: str, precision: str, x: np.ndarray, batches: list[int],
            args: argparse.Namespace, reference: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """Rows for ``runner`` at each batch; PyTorch CPU fp32's outputs fill ``reference``."""
    threads = cores()
    runner.infer({"faces": x[:1]})  # warm-up: first-call allocations, kernel choice
    rows = []
    for batch in batches:
        reps = args.reps_large if device == "cpu" and batch >= 16 else args.reps
        wall, cpu, out = timed(runner, x[:batch], reps, threads)
        if name == "pytorch" and device == "cpu" and precision == "fp32":
            reference[batch] = out
        row: dict[str, Any] = {"backend": name, "device": device, "precision": precision, "batch": batch,
                               "reps": reps, "seconds": wall, "faces_per_s": batch / wall}
        if device == "cpu":
            row |= {"cpu_seconds_per_thread": cpu, "faces_per_cpu_s": batch / cpu}
        if 1 in reference and batch == 1:
            row["max_abs_diff_vs_pytorch_fp32"] = float(np.abs(out - reference[1]).max())
        if batch == GATE_BATCH and batch in reference:
            row["psnr_db_vs_pytorch_fp32"] = int8.psnr(gfpgan.to_faces(out), gfpgan.to_faces(reference[batch]))
        rows.append(row)
        print(row, flush=True)
    return rows


def int8_graph(fp32: Path, folder: Path, calibrate: np.ndarray) -> Path:
    """The restoration network's int8 graph as ``--precision int8`` builds a stage's: QDQ with
    the Conv weights per channel, calibrated on ``calibrate``; one file; on x86 in the CPU
    form (uint8 activations with zero points of their own), else the portable one
    (symmetric int8 activations)."""
    qdq, single = folder / "int8-qdq.onnx", folder / "int8.onnx"
    int8.quantize_graph(fp32, qdq, {"faces": calibrate}, ("Conv",), cpu=hardware.X86)
    int8.single_file(qdq, single)
    return single


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reps-large", type=int, default=1, help="reps at batch >= 16 on the CPU")
    parser.add_argument("--calibrate", type=int, default=8, help="int8: faces to calibrate on")
    parser.add_argument("--no-int8", action="store_true")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(cores())
    busy, load = cpu_busy(), os.getloadavg()[0]
    faces = seeded_faces(max(batches), seed=2)
    x = gfpgan.to_network(faces)
    rows: list[dict[str, Any]] = []
    reference: dict[int, np.ndarray] = {}
    notes: dict[str, str] = {}
    io = gfpgan.STAGE_IO
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        folder = Path(tmp)
        path = checkpoint(folder)
        t0 = time.perf_counter()
        net = gfpgan.load(path)  # memory-mapped: its pages are read as the first call runs
        notes["load_seconds"] = f"{time.perf_counter() - t0:.2f}"
        t0 = time.perf_counter()
        gfpgan.to_faces(gfpgan.to_network(faces))
        notes["pre_and_post_ms_per_face"] = f"{(time.perf_counter() - t0) * 1000 / len(faces):.1f}"

        # 1. CPU
        runner: Runner = TorchRunner(STAGE, net, *io, device=torch.device("cpu"))
        rows += measure("pytorch", runner, "cpu", "fp32", x, batches, args, reference)
        t0 = time.perf_counter()
        fp32_graph = export_onnx(net, *io, folder / "restore-fp32.onnx")
        notes["onnx_export_seconds"] = f"{time.perf_counter() - t0:.1f}"
        notes["onnx_fp32_mb"] = f"{fp32_graph.stat().st_size / 1e6:.0f}"
        runner = ort_backend.OrtRunner(STAGE, fp32_graph, *io, device="cpu")
        rows += measure("onnxruntime", runner, "cpu", "fp32", x, batches, args, reference)
        runner.close()
        if not args.no_int8:
            t0 = time.perf_counter()
            calibrate = gfpgan.to_network(seeded_faces(args.calibrate, seed=3))
            graph = int8_graph(fp32_graph, folder, calibrate)
            notes["int8_build_seconds"] = f"{time.perf_counter() - t0:.1f}"
            notes["onnx_int8_mb"] = f"{graph.stat().st_size / 1e6:.0f}"
            runner = ort_backend.OrtRunner(STAGE, graph, *io, device="cpu")
            got = runner.infer({"faces": x[:GATE_BATCH]})["restored"]
            db = int8.psnr(gfpgan.to_faces(got), gfpgan.to_faces(reference[GATE_BATCH]))
            notes["int8_psnr_db"] = f"{db:.1f}"
            if db >= MIN_PSNR_DB:
                rows += measure("onnxruntime", runner, "cpu", "int8", x, batches, args, reference)
            else:
                rows.append({"backend": "onnxruntime", "device": "cpu", "precision": "int8",
                             "refused": f"PSNR {db:.1f} dB against fp32 on {GATE_BATCH} faces, "
                                        f"under the {MIN_PSNR_DB:.0f} dB gate"})
                print(rows[-1], flush=True)
            runner.close()

        # 2. CUDA
        if torch.cuda.is_available():
            runner = TorchRunner(STAGE, gfpgan.load(path), *io,
                                 device=torch.device("cuda:0"), dtype=torch.float16)
            rows += measure("pytorch", runner, "cuda", "fp16", x, batches, args, reference)
            runner.close()
            ok, why = trt_backend.available()
            if ok:
                top = -(-max(batches) // trt_backend.PROFILE_MAX_MULTIPLE) * trt_backend.PROFILE_MAX_MULTIPLE
                half = export_onnx(net, *io, folder / "restore-fp16.onnx", fp16=True)
                t0 = time.perf_counter()
                engine = trt_backend.build_engine(half, folder / "restore-fp16.plan", profile=BatchProfile(1, top, top),
                                                  fp16=True, timing_cache=folder / "timing.cache")
                notes["tensorrt_build_seconds"] = f"{time.perf_counter() - t0:.1f}"
                runner = trt_backend.TrtRunner(STAGE, engine, *io)
                rows += measure("tensorrt", runner, "cuda", "fp16", x, batches, args, reference)
                runner.close()
            else:
                notes["tensorrt"] = why

    machine = {"cpu_model": cpu_name(), "cores": str(cores()), "load_1min_before": f"{load:.2f}",
               "cpu_busy_before": f"{busy:.2f}" if busy is not None else "?", "torch_threads": str(torch.get_num_threads()),
               **notes}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    print("wrote", write("restore", rows, **machine))
    print(f"\n{machine}\n")
    print("| backend | device | precision | batch | faces/s (wall) | faces/s (CPU time) | max abs Δ vs PyTorch fp32 |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "refused" in r:
            print(f"| {r['backend']} | {r['device']} | {r['precision']} | – | refused: {r['refused']} | | |")
            continue
        print(f"| {r['backend']} | {r['device']} | {r['precision']} | {r['batch']} | {_cell(r, 'faces_per_s', '.3f')} | "
              f"{_cell(r, 'faces_per_cpu_s', '.3f')} | {_cell(r, 'max_abs_diff_vs_pytorch_fp32', '.1e')} |")


def _cell(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "–"


if __name__ == "__main__":
    main()
