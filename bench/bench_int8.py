"""Benchmark: int8 and bf16 against fp32 for the wav2lip render stage on this CPU, in one run.

    .venv/bin/python bench/bench_int8.py [--seconds S] [--reps N] [--e2e-seconds S] [--e2e-repeat N] [--no-e2e]

1. Render stage: frames/s of the wav2lip render stage (a seeded random checkpoint in the
   public format: the real one's compute; batch 32, a worker's default) at
   - pytorch fp32 (the reference) and onnxruntime fp32;
   - onnxruntime int8, step by step from the graph before issue 26 ("int8 before": only the
     convolutions quantized, the six transposed convolutions float, activations int8 with
     zero point 0 rewritten to uint8 with zero point 128), then with the transposed
     convolutions as phase convolutions (``PackSpec.int8_form``), then with the pack's
     ``int8_ops`` (adds, concatenations, ReLUs, the pixel shuffle) quantized too, then the
     x86 CPU form ``--precision int8`` runs now (uint8 activations with zero points of their
     own, every ReLU folded); the portable form (int8 activations, what TensorRT builds
     from) as ONNX Runtime's CPU provider runs it; session options on today's x86 form
     (spinning off; graph optimizations without the layout ones);
   - pytorch bf16, where the CPU has AVX-512 BF16 or AMX.
   Then today's x86 form at batch 8 to 128.
   Calibration: the bundled examples (``calibration.calibration_set``: 128 frames, 32 held
   out, in runs of 4). Timed on the held-out frames' crops and the fp32 motion stage's codes for them,
   the rows interleaved (one repetition of each in turn, ``--reps`` times, median), so load
   from other processes falls on every row alike; each row's best repetition is kept too (the
   least disturbed one). PSNR against pytorch fp32 of the generated crops as 8-bit pixels,
   and of the pasted mouth region (``int8.gate``'s figures), on the 32 held-out frames.
2. End to end: one ``--e2e-seconds`` (60) job at 720p through ``render_job`` on an in-process
   ``ModelWorker`` (onnxruntime) per precision, fp32 and int8 alternating ``--e2e-repeat``
   times (the fastest run of each kept), the template cached first: a 1280×720 lecture clip
   of the bundled portrait (face 240 px wide) and the bundled speech looped. The workers
   start (and the int8 one builds and gates its graph) before timing, as ``engines build``
   would ahead of time.

Writes bench/results/int8-<host>.json (``record.write``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers (checkpoint, footage), bench.*

from bench import record  # noqa: E402
from bench.bench_backends import cores, cpu_busy, cpu_name  # noqa: E402
from heygem_ray import hardware, media  # noqa: E402
from heygem_ray.analyze import analyze  # noqa: E402
from heygem_ray.backends import int8, onnx_artifact, stage_digest  # noqa: E402
from heygem_ray.backends import ort as ort_backend  # noqa: E402
from heygem_ray.backends.pytorch import TorchRunner  # noqa: E402
from heygem_ray.backends.runner import Runner  # noqa: E402
from heygem_ray.calibration import calibration_set  # noqa: E402
from heygem_ray.config import RenderConfig  # noqa: E402
from heygem_ray.engines import EngineStore  # noqa: E402
from heygem_ray.export import export_onnx  # noqa: E402
from heygem_ray.features import SAMPLE_RATE  # noqa: E402
from heygem_ray.job import InProcessService, render_job  # noqa: E402
from heygem_ray.manifest import Job  # noqa: E402
from heygem_ray.packs import get_pack  # noqa: E402
from heygem_ray.worker import ModelWorker  # noqa: E402
from tests.helpers.footage import lecture_clip  # noqa: E402
from tests.helpers.wav2lip_ckpt import write_random_checkpoint  # noqa: E402

PACK = get_pack("wav2lip")
BATCH = 32  # what a worker sends by default (RenderConfig.batch_size)
BATCHES = (8, 16, 32, 64, 128)
BEFORE = "int8 before: convolutions only, transposed ones float"
NOW = "onnxruntime int8 (x86 form: uint8 activations with zero points, ReLUs folded)"
# Session options tried on today's x86 form (ONNX Runtime's session config keys).
SESSION_OPTIONS: dict[str, dict[str, str]] = {
    "spinning off": {"session.intra_op.allow_spinning": "0"},
    "optimizations without layout (extended)": {"level": "ORT_ENABLE_EXTENDED"},
}
SPEECH = (REPO / "examples" / "lesson1.wav", REPO / "examples" / "lesson2.mp3")


def interleaved(calls: dict[str, tuple[Callable[[], Any], int]], seconds: float, reps: int) -> dict[str, dict[str, Any]]:
    """frames/s of each call (name → (call, frames it renders)), timed in turn ``reps``
    times: the median, and the best repetition (the one least disturbed by other load)."""
    sized: dict[str, int] = {}
    for name, (call, _) in calls.items():
        call()  # warm-up
        t0 = time.perf_counter()
        call()
        sized[name] = max(1, round(seconds / reps / (time.perf_counter() - t0)))
    fps: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, (call, frames) in calls.items():
            t0 = time.perf_counter()
            for _ in range(sized[name]):
                call()
            fps[name].append(frames * sized[name] / (time.perf_counter() - t0))
    return {name: {"fps": statistics.median(v), "fps_best": max(v), "fps_reps": v, "calls_per_rep": sized[name]}
            for name, v in fps.items()}


def zero_point_128(qdq: Path, out: Path) -> None:
    """The x86 CPU form before issue 26: the portable graph's int8 activations (zero point
    0) rewritten to uint8 with zero point 128, the same values; weights left int8."""
    model = onnx.load(str(qdq))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in inits:
            zero = inits[node.input[2]]
            zero.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(zero).shape, 128, np.uint8), zero.name))
    onnx.save(model, str(out))


def int8_steps(tmp: Path, modules: dict[str, torch.nn.Module], calibration: Any) -> dict[str, Path]:
    """The int8 render graphs from the one before issue 26 to the last step before today's
    x86 form, each calibrated on the same frames and in the old CPU form (zero point 128)."""
    render, inputs = modules["render"], int8.stage_inputs(PACK, modules, calibration, "render")
    steps = {
        "int8 before: convolutions only, transposed ones float": (render, ("Conv",)),
        "+ transposed convolutions as phase convolutions": (PACK.int8_form("render", render), ("Conv",)),
        "+ adds, concatenations, ReLUs and the shuffle in int8": (PACK.int8_form("render", render), PACK.int8_ops),
    }
    graphs = {}
    for i, (name, (module, ops)) in enumerate(steps.items()):
        work = tmp / f"step{i}"
        work.mkdir()
        export_onnx(module, *PACK.io("render"), work / "fp32.onnx", external_data=True)
        int8.quantize_graph(work / "fp32.onnx", work / "qdq.onnx", inputs, ops)
        int8.single_file(work / "qdq.onnx", work / "int8.onnx")
        zero_point_128(work / "int8.onnx", work / "cpu.onnx")
        graphs[name] = work / "cpu.onnx"
    return graphs


def session(graph: Path, **config: str) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session of ``graph`` on every core; ``config``: session config
    entries, and ``level`` a GraphOptimizationLevel name."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = cores()
    options.log_severity_level = 3
    level = config.pop("level", None)
    if level is not None:
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def render_stage(tmp: Path, checkpoint: Path, args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    modules = PACK.load_stages(checkpoint)
    store = EngineStore(tmp / "engines")
    calibration = calibration_set(PACK, None, tmp / "templates")
    held = calibration.part(held_out=True)
    crops = np.concatenate([run.crops for run in held])  # (32, 96, 96, 3) uint8
    features = np.concatenate([np.asarray(run.features) for run in held])  # (32, 1, 80, 16)
    with int8.fp32_call(PACK, modules) as fp32:
        want = int8.run_chunks(PACK, fp32, held)
        codes = fp32("motion", {"features": features})["codes"]
    batch = {"crops": np.ascontiguousarray(crops[:BATCH].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0,
             "codes": codes[:BATCH]}
    weights = int8.chain_hash([stage_digest(modules[s]) for s in ("motion", "render")])
    t0 = time.perf_counter()
    int8_cpu, _ = int8.int8_onnx_artifact(store, PACK, "render", modules, calibration, weights_hash=weights,
                                          cpu=True)
    build_s = time.perf_counter() - t0
    int8_any, _ = int8.int8_onnx_artifact(store, PACK, "render", modules, calibration, weights_hash=weights,
                                          cpu=False)
    fp32_graph, _ = onnx_artifact(store, PACK, "render", modules["render"], "fp32")
    steps = int8_steps(tmp, modules, calibration)
    io = PACK.io("render")
    threads = cores()

    def ort_runner(graph: Path) -> Runner:
        return ort_backend.OrtRunner("render", graph, *io, device="cpu", intra_op_threads=threads)

    runners: dict[str, tuple[str, str, Runner]] = {
        "pytorch fp32": ("pytorch", "fp32", TorchRunner("render", PACK.load_stages(checkpoint)["render"], *io,
                                                        device=torch.device("cpu"))),
        "onnxruntime fp32": ("onnxruntime", "fp32", ort_runner(fp32_graph)),
        **{name: ("onnxruntime", "int8 (uint8 activations, zero point 128)", ort_runner(graph))
           for name, graph in steps.items()},
        NOW: ("onnxruntime", "int8", ort_runner(int8_cpu)),
        "onnxruntime int8, portable form": ("onnxruntime", "int8 (int8 activations)", ort_runner(int8_any)),
    }
    bf16 = sorted(hardware.cpu_flags() & set(hardware.BF16_FLAGS))
    if bf16:
        runners["pytorch bf16"] = ("pytorch", "bf16", TorchRunner("render", PACK.load_stages(checkpoint)["render"], *io,
                                                                  device=torch.device("cpu"), dtype=torch.bfloat16))
    # Session options on today's x86 form: the numbers are the same as its row's.
    options = {f"{NOW}, {what}": session(int8_cpu, **config) for what, config in SESSION_OPTIONS.items()}
    calls: dict[str, tuple[Callable[[], Any], int]] = {
        **{name: ((lambda r=r: r.infer(batch)), BATCH) for name, (_, _, r) in runners.items()},
        **{name: ((lambda s=s: s.run(None, batch)), BATCH) for name, s in options.items()},
    }
    timed = interleaved(calls, args.seconds, args.reps)
    mouth = int8.mouth_weight(PACK)
    reference = int8.to_pixels(want)
    rows = []
    for name, (backend, precision, runner) in runners.items():
        got = int8.to_pixels(int8.run_chunks(
            PACK, int8.runner_call({"motion": _torch_motion(PACK, modules), "render": runner}), held))
        rows.append({
            "row": name, "backend": backend, "precision": precision, "batch": BATCH, **timed[name],
            "psnr_crops_db": int8.psnr(got, reference), "psnr_mouth_db": int8.psnr(got, reference, mouth),
            "held_out_frames": len(crops),
        })
        runner.close()
    now = next(r for r in rows if r["row"] == NOW)
    for name, config in SESSION_OPTIONS.items():
        rows.append({**now, "row": f"{NOW}, {name}", "session_config": config, **timed[f"{NOW}, {name}"]})
    by_name = {r["row"]: r for r in rows}
    for r in rows:
        for base in ("pytorch fp32", "onnxruntime fp32", BEFORE):
            r[f"ratio_vs_{base}"] = r["fps"] / by_name[base]["fps"]
            r[f"best_ratio_vs_{base}"] = r["fps_best"] / by_name[base]["fps_best"]
    now["calibration"] = {"id": calibration.id, "frames": sum(len(r.crops) for r in calibration.part(False)),
                          "held_out": len(crops), "source": "examples/manifest.csv",
                          "build_s": build_s, "cpu_flags": sorted(hardware.cpu_flags() & set(hardware.INT8_FLAGS))}
    # Batch sizes on today's x86 form: frames/s for each, interleaved.
    sweep = session(int8_cpu)
    many = {k: np.concatenate([v] * (max(BATCHES) // BATCH)) for k, v in batch.items()}
    sized = {f"batch {b}": ((lambda b=b: sweep.run(None, {k: v[:b] for k, v in many.items()})), b) for b in BATCHES}
    swept = interleaved(sized, args.seconds, args.reps)
    batches = [{"batch": b, **swept[f"batch {b}"], "ratio_vs_batch_32": swept[f"batch {b}"]["fps"]
                / swept[f"batch {BATCH}"]["fps"]} for b in BATCHES]
    return rows, batches


def _torch_motion(pack: Any, modules: dict[str, torch.nn.Module]) -> Runner:
    return TorchRunner("motion", modules["motion"], *pack.io("motion"), device=torch.device("cpu"))


def speech(path: Path, seconds: float) -> Path:
    """The bundled speech, looped to ``seconds``, as 16 kHz mono 16-bit WAV."""
    clips = [media.load_audio(p, SAMPLE_RATE) for p in SPEECH]
    one = np.concatenate(clips)
    wav = np.tile(one, int(np.ceil(seconds * SAMPLE_RATE / len(one))))[: int(seconds * SAMPLE_RATE)]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def end_to_end(tmp: Path, checkpoint: Path, seconds: float, repeat: int) -> list[dict[str, Any]]:
    video = lecture_clip(tmp / "lecture-720p.mp4", size=(1280, 720), face=240, seconds=10.0, corner="centre",
                         motion="pan").path
    audio = speech(tmp / "speech.wav", seconds)
    cache = tmp / "templates"
    analyze(video, PACK.geometry, RenderConfig().detector, cache)  # the template, cached before timing
    workers: dict[str, tuple[RenderConfig, ModelWorker, float]] = {}
    for precision in ("fp32", "int8"):
        cfg = RenderConfig(pack="wav2lip", checkpoint=checkpoint, backend="onnxruntime", precision=precision)
        t0 = time.perf_counter()
        worker = ModelWorker(cfg, engines_dir=tmp / "engines")
        worker.ready()
        workers[precision] = (cfg, worker, time.perf_counter() - t0)
    runs: dict[str, list[Any]] = {p: [] for p in workers}
    try:
        for i in range(repeat):  # alternating, so load from other processes falls on both alike
            for precision, (cfg, worker, _) in workers.items():
                job = Job(row=1, job_id=f"e2e-{precision}", audio=audio, video=video,
                          output=tmp / f"e2e-{precision}-{i}.mp4")
                result = render_job(job, cfg, cache, InProcessService(worker))
                if result.status != "ok":
                    raise SystemExit(f"end to end {precision}: {result.error}")
                runs[precision].append(result)
    finally:
        for _, worker, _ in workers.values():
            worker.close()
    rows = []
    for precision, results in runs.items():
        best = min(results, key=lambda r: r.seconds)  # the run least disturbed by other processes
        rows.append({
            "precision": best.precision, "backend": best.backend, "calibration": best.calibration,
            "worker_start_s": workers[precision][2], "wall_s": best.seconds, "wall_s_runs": [r.seconds for r in results],
            "frames": best.frames, "video_s": best.frames / 25.0, "realtime_factor": best.realtime_factor,
            "stages_s": {s: getattr(best, f"{s}_s") for s in ("analyze", "features", "motion", "render", "compose")},
        })
    rows[1]["speedup_vs_fp32"] = rows[0]["wall_s"] / rows[1]["wall_s"]
    rows[1]["render_speedup_vs_fp32"] = rows[0]["stages_s"]["render"] / rows[1]["stages_s"]["render"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per render-stage row")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions per render-stage row (median)")
    ap.add_argument("--e2e-seconds", type=float, default=60.0, help="length of the end-to-end job's audio")
    ap.add_argument("--e2e-repeat", type=int, default=2, help="end-to-end jobs per precision, alternating (best kept)")
    ap.add_argument("--no-e2e", action="store_true", help="the render stage only")
    args = ap.parse_args()
    torch.set_num_threads(cores())
    busy_before = cpu_busy()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        checkpoint = write_random_checkpoint(tmp / "wav2lip-random.pth", seed=0)
        print("render stage ...", file=sys.stderr, flush=True)
        rows, batches = render_stage(tmp, checkpoint, args)
        e2e = [] if args.no_e2e else end_to_end(tmp, checkpoint, args.e2e_seconds, args.e2e_repeat)
    results = ([{"part": "render_stage", **r} for r in rows] + [{"part": "batch_size", **r} for r in batches]
               + [{"part": "end_to_end", **r} for r in e2e])
    out = record.write(
        "int8", results, cpu=cpu_name(), cores=str(cores()), torch=torch.__version__,
        onnxruntime=onnxruntime.__version__, cpu_busy_before=f"{busy_before}",
        loadavg_before=" ".join(load_before), loadavg_after=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
        bench_seconds=f"{time.perf_counter() - t_start:.0f}",
    )
    print("| row | frames/s (median; best) | × pytorch fp32 | × onnxruntime fp32 | × int8 before (best) "
          "| PSNR crops dB | PSNR mouth dB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {r['fps']:.1f}; {r['fps_best']:.1f} | {r['ratio_vs_pytorch fp32']:.2f} | "
              f"{r['ratio_vs_onnxruntime fp32']:.2f} | {r[f'ratio_vs_{BEFORE}']:.2f} "
              f"({r[f'best_ratio_vs_{BEFORE}']:.2f}) | {r['psnr_crops_db']:.1f} | {r['psnr_mouth_db']:.1f} |")
    print("\n| batch | frames/s (median; best) | × batch 32 |")
    print("|---:|---:|---:|")
    for b in batches:
        print(f"| {b['batch']} | {b['fps']:.1f}; {b['fps_best']:.1f} | {b['ratio_vs_batch_32']:.2f} |")
    if e2e:
        print("\n| precision | wall s | video s | realtime × | motion s | render s | compose s | × fp32 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in e2e:
            st = r["stages_s"]
            print(f"| {r['precision']} | {r['wall_s']:.1f} | {r['video_s']:.1f} | {r['realtime_factor']:.2f} | "
                  f"{st['motion']:.2f} | {st['render']:.1f} | {st['compose']:.1f} | {r.get('speedup_vs_fp32', 1.0):.2f} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
