"""Benchmark: MuseTalk 1.5's three networks at their real size (random weights), per stage.

    .venv/bin/python bench/bench_musetalk.py [--batch 8] [--reps 3] [--backends pytorch,onnxruntime,int8]

The musetalk pack's stages built from MuseTalk's own configs (``FULL_*`` in
tests/helpers/musetalk_ckpt.py: the 850 M-parameter UNet, the sd-vae-ft-mse VAE,
whisper-tiny's encoder) with seeded random weights, which cost what the real ones cost:

* ``reference`` (VAE encoder, twice per crop): once per reference frame, not per output frame;
* ``motion`` (Whisper encoder): one 30 s segment, 750 output frames at 25 fps;
* ``render`` (UNet + VAE decoder): per output frame. What a job's speed depends on.

Each on PyTorch and on ONNX Runtime (graphs exported to a temporary folder with their
weights in external files: the fp32 UNet is more than one ONNX file holds), fp32 on the
CPU; on a CUDA GPU also fp16; ``int8``: the pack's int8 stages (render) as ``--precision
int8`` runs them on this CPU, calibrated on random inputs (``int8_runner``). Frames per second at ``--batch`` (motion: output frames per
second, a segment serving 750), the median of ``--reps`` after a warm-up, and the largest
difference of ONNX Runtime's outputs from PyTorch's. Writes bench/results/musetalk-<host>.json
and prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers (the real configs)
from bench.record import write  # noqa: E402
from heygem_ray.packs.musetalk import PACK  # noqa: E402
from heygem_ray.packs.musetalk_networks import MuseTalkMotion, MuseTalkReference, MuseTalkRender  # noqa: E402
from tests.helpers.musetalk_ckpt import FULL_UNET_CONFIG, FULL_VAE_CONFIG, FULL_WHISPER_CONFIG  # noqa: E402

SEGMENT_FRAMES = 750  # output frames a 30 s speech segment serves at 25 fps


def build(stage: str) -> torch.nn.Module:
    """The stage with seeded random weights of the real size (the same every call)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    if stage == "motion":
        return MuseTalkMotion(WhisperEncoder(WhisperConfig(**FULL_WHISPER_CONFIG))).eval()
    vae = AutoencoderKL.from_config(FULL_VAE_CONFIG)
    if stage == "reference":
        return MuseTalkReference(vae).eval()
    return MuseTalkRender(UNet2DConditionModel.from_config(FULL_UNET_CONFIG), vae).eval()


def inputs(stage: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    specs, _ = PACK.io(stage)
    n = 1 if stage == "motion" else batch
    return {s.name: rng.uniform(0, 1, (n, *s.shape)).astype(np.float32) * (0.2 if s.name == "latents" else 1.0)
            for s in specs}


def timed(run, reps: int) -> tuple[float, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    out = run()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def pytorch_runner(module: torch.nn.Module, stage: str, device: str, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    specs, outs = PACK.io(stage)
    module = module.to(device=device, dtype=dtype)

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.tensor(feed[s.name], device=device, dtype=dtype) for s in specs]
        with torch.inference_mode():
            out = module(*args)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return {outs[0].name: out.float().cpu().numpy()}

    return run


def onnxruntime_runner(module: torch.nn.Module, stage: str, folder: Path, device: str, fp16: bool):  # type: ignore[no-untyped-def]
    import onnxruntime

    specs, outs = PACK.io(stage)
    names = [s.name for s in specs] + [o.name for o in outs]
    path = folder / f"{stage}-{'fp16' if fp16 else 'fp32'}" / "model.onnx"  # and its weights' files beside it
    path.parent.mkdir(parents=True)
    model = module.half() if fp16 else module
    dtype = torch.float16 if fp16 else torch.float32
    example = tuple(torch.zeros((2, *s.shape), dtype=dtype, device=device) for s in specs)
    model = model.to(device)
    torch.onnx.export(model, example, str(path), input_names=[s.name for s in specs], output_names=[o.name for o in outs],
                      dynamic_axes={n: {0: "batch"} for n in names}, opset_version=17, dynamo=False)
    providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(str(path), providers=providers)

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {k: v.astype(np.float16 if fp16 else np.float32) for k, v in feed.items()}
        return {k: np.asarray(v, np.float32) for k, v in zip([o.name for o in outs], session.run(None, cast), strict=True)}

    return run


def int8_runner(module: torch.nn.Module, stage: str, folder: Path, calibrate: dict[str, np.ndarray]):
    """``--precision int8`` as the pack builds it (backends/int8.py: the QDQ graph in its x86 CPU
    form, the pack's ``int8_ops``), calibrated on ``calibrate``: speed does not depend on
    which ranges, so random inputs serve here, where real frames would take an hour of
    fp32 reference and render stages on a CPU."""
    import onnxruntime

    from heygem_ray.backends.int8 import quantize_graph, single_file
    from heygem_ray.export import export_onnx

    specs, outs = PACK.io(stage)
    work = folder / f"{stage}-int8"
    work.mkdir(parents=True)
    export_onnx(PACK.int8_form(stage, module), specs, outs, work / "fp32.onnx", external_data=True)
    quantize_graph(work / "fp32.onnx", work / "qdq.onnx", calibrate, PACK.int8_ops, cpu=True)
    single_file(work / "qdq.onnx", work / "int8-cpu.onnx")
    session = onnxruntime.InferenceSession(str(work / "int8-cpu.onnx"), providers=["CPUExecutionProvider"])

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip([o.name for o in outs], session.run(None, feed), strict=True))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backends", default="pytorch,onnxruntime",
                        help="of pytorch, onnxruntime, int8 (the int8 stages on ONNX Runtime, CPU)")
    parser.add_argument("--calibrate", type=int, default=4, help="int8: random items to calibrate on")
    parser.add_argument("--stages", default="motion,render,reference")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    devices = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "fp16")] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-musetalk-") as tmp:
        for device, precision in devices:
            dtype = torch.float16 if precision == "fp16" else torch.float32
            for stage in args.stages.split(","):
                feed = inputs(stage, args.batch)
                reference = None
                for backend in args.backends.split(","):
                    if backend == "int8" and (stage not in PACK.int8_stages or device != "cpu"):
                        continue
                    if backend == "int8":
                        calibrate = {k: v[: args.calibrate] for k, v in inputs(stage, args.calibrate, seed=1).items()}
                        run = int8_runner(build(stage), stage, Path(tmp), calibrate)
                    elif backend == "pytorch":
                        run = pytorch_runner(build(stage), stage, device, dtype)
                    else:
                        run = onnxruntime_runner(build(stage), stage, Path(tmp) / f"{device}-{backend}", device,
                                                 precision == "fp16")
                    seconds, out = timed(lambda run=run, feed=feed: run(feed), args.reps)
                    frames = SEGMENT_FRAMES if stage == "motion" else args.batch
                    (value,) = out.values()
                    delta = float(np.abs(value - reference).max()) if reference is not None else 0.0
                    reference = value if reference is None else reference
                    row = {"stage": stage, "device": device, "precision": "int8" if backend == "int8" else precision,
                           "backend": "onnxruntime" if backend == "int8" else backend,
                           "batch": len(next(iter(feed.values()))), "seconds": seconds, "fps": frames / seconds,
                           "max_abs_diff_vs_pytorch": delta}
                    rows.append(row)
                    print(row, flush=True)
                    del run
    cpu = {"cpu_model": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"),
           "load_1min_before": f"{load:.2f}", "torch_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        cpu["gpu"] = torch.cuda.get_device_name(0)
    print("wrote", write("musetalk-int8" if "int8" in args.backends.split(",") else "musetalk", rows, **cpu))
    print("\n| stage | device | precision | backend | batch | frames/s | max abs diff vs PyTorch |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['stage']} | {r['device']} | {r['precision']} | {r['backend']} | {r['batch']} | {r['fps']:.2f} | "
              f"{r['max_abs_diff_vs_pytorch']:.1e} |")


if __name__ == "__main__":
    main()
