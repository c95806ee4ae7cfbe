"""Benchmark: the inference backends side by side on this machine, in one run.

    .venv/bin/python bench/bench_backends.py [--seconds S] [--reps N] [--e2e-repeat N]

1. Render stage: frames/s of each pack's render stage (warp, batch 32; wav2lip with a
   seeded random checkpoint in the public format, batch 16: the real one's compute) for
   every backend and precision that can run here, opened with ``open_runners`` on a
   temporary engine store: pytorch fp32, onnxruntime fp32 and fp16 on the CPU; pytorch
   fp32/fp16, onnxruntime fp32/fp16 and tensorrt fp32/fp16 on a CUDA GPU when there is
   one. A backend that cannot run here gets a row saying why. Inputs are real: crops of
   examples/presenter.mp4 from the pack's template (BGR in [0, 1]) and codes computed by
   the PyTorch fp32 motion stage from examples/lesson1.wav, the same for every row, so
   "max |Δ|" compares the render stages alone. Warm-up, then the median of ``--reps``
   timed repetitions spread over ``--seconds``.
2. End to end: one job (lesson1.wav on presenter.mp4, warp pack) through ``render_job``
   on an in-process ``ModelWorker`` per backend (precision "auto": fp32 on a CPU, fp16
   on a GPU), the template cache warmed first, so the wall time is probe + cached
   template + features + motion + render + compose/encode. Median of ``--e2e-repeat``.

Writes bench/results/backends-<host>.json and prints markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers (the random Wav2Lip checkpoint)

from heygem_ray import media  # noqa: E402
from heygem_ray.analyze import analyze  # noqa: E402
from heygem_ray.backends import onnx_artifact, open_runners  # noqa: E402
from heygem_ray.backends import ort as ort_backend  # noqa: E402
from heygem_ray.backends import trt as trt_backend  # noqa: E402
from heygem_ray.config import BackendName, DetectorConfig, RenderConfig  # noqa: E402
from heygem_ray.engines import EngineStore, Precision  # noqa: E402
from heygem_ray.errors import HeygemError  # noqa: E402
from heygem_ray.features import SAMPLE_RATE, Pcm  # noqa: E402
from heygem_ray.job import InProcessService, render_job  # noqa: E402
from heygem_ray.manifest import Job  # noqa: E402
from heygem_ray.packs import PackSpec, get_pack  # noqa: E402
from heygem_ray.worker import ModelWorker  # noqa: E402
from tests.helpers.wav2lip_ckpt import write_random_checkpoint  # noqa: E402

AUDIO = REPO / "examples" / "lesson1.wav"
VIDEO = REPO / "examples" / "presenter.mp4"
BATCH = {"warp": 32, "wav2lip": 16}
E2E_BACKENDS = ("pytorch", "onnxruntime", "tensorrt")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Busy share of all CPUs over ``seconds`` (from /proc/stat); None where there is none."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else cpu_name()


def trt_version() -> str | None:
    try:
        return trt_backend.trt_version()
    except Exception:  # not installed, or libnvinfer missing
        return None


# -- inputs ------------------------------------------------------------------------------------


def pack_inputs(pack: PackSpec, stages: dict[str, torch.nn.Module], cache: Path) -> dict[str, np.ndarray]:
    """Real render-stage inputs for one batch: template crops and PyTorch fp32 motion codes."""
    batch = BATCH[pack.name]
    template, _ = analyze(VIDEO, pack.geometry, DetectorConfig(), cache)
    crops_u8 = template.crops(np.arange(batch) % template.frames)  # (B, S, S, 3) uint8 BGR
    crops = np.ascontiguousarray(crops_u8.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    wav = media.load_audio(AUDIO, SAMPLE_RATE)
    frames = int(len(wav) / SAMPLE_RATE * template.fps)
    mid = max(0, frames // 2 - batch // 2)  # speech, not the leading silence
    features = pack.features(Pcm.from_array(wav), template.fps, frames)(range(mid, mid + batch))
    with torch.inference_mode():
        codes = stages["motion"](torch.from_numpy(features)).numpy()
    return {"crops": crops, "codes": codes}


# -- timing ------------------------------------------------------------------------------------


def throughput(call: Callable[[], Any], batch: int, seconds: float, reps: int) -> dict[str, Any]:
    """Warm up, size a repetition to ``seconds / reps``, return the median frames/s of ``reps``."""
    call()  # warm-up (open_runners already ran a one-frame smoke batch)
    t0 = time.perf_counter()
    call()
    one = time.perf_counter() - t0
    calls = max(1, round(seconds / reps / one))
    fps = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        fps.append(batch * calls / (time.perf_counter() - t0))
    median = statistics.median(fps)
    return {
        "fps": median,
        "ms_per_batch": 1000.0 * batch / median,
        "fps_reps": fps,
        "calls_per_rep": calls,
    }


def ort_cpu_graph_report(onnx_path: Path, tmp: Path) -> dict[str, Any]:
    """What ONNX Runtime's CPU provider does to an fp16 graph: the Casts it inserts, the
    float16 weights it keeps (0: it upcast them all and computes in float32)."""
    import onnx

    def summary(model: Any) -> tuple[int, collections.Counter[str]]:
        casts = sum(n.op_type == "Cast" for n in model.graph.node)
        kinds = collections.Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer)
        return casts, kinds

    optimised = tmp / f"{onnx_path.parent.name}.cpu-optimised.onnx"
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(optimised)
    onnxruntime.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    casts_before, init_before = summary(onnx.load(str(onnx_path)))
    casts_after, init_after = summary(onnx.load(str(optimised)))
    return {
        "casts_in_graph": casts_before,
        "casts_after_ort_cpu_optimisation": casts_after,
        "float16_weights_in_graph": init_before.get("FLOAT16", 0),
        "float16_weights_after_ort_cpu_optimisation": init_after.get("FLOAT16", 0),
    }


# -- 1. render stage ---------------------------------------------------------------------------


def render_configs(cuda: bool) -> list[tuple[str, str, str]]:
    """(device, backend, precision) rows, in table order; the first of each device is its baseline."""
    rows = [("cpu", "pytorch", "fp32"), ("cpu", "onnxruntime", "fp32"), ("cpu", "onnxruntime", "fp16"),
            ("cpu", "tensorrt", "fp32")]
    if cuda:
        rows += [("cuda:0", b, p) for b in ("pytorch", "onnxruntime", "tensorrt") for p in ("fp32", "fp16")]
        rows.remove(("cpu", "tensorrt", "fp32"))  # tensorrt is a GPU backend: its rows are below
    return rows


def bench_render(
    pack: PackSpec,
    checkpoint: Path | None,
    device: str,
    backend: str,
    precision: str,
    inputs: dict[str, np.ndarray],
    reference: np.ndarray | None,
    store: EngineStore,
    tmp: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    batch = BATCH[pack.name]
    row: dict[str, Any] = {
        "pack": pack.name, "device": device, "device_name": device_name(device), "backend": backend,
        "precision": precision, "batch": batch, "status": "ok", "note": "",
    }
    if backend == "tensorrt":
        ok, why = trt_backend.available()
        if not ok:
            return {**row, "status": "skipped", "note": f"tensorrt not available: {why}"}
    # Fresh modules per row: TorchRunner moves and casts its module in place.
    stages = pack.load_stages(checkpoint)
    t0 = time.perf_counter()
    try:
        chosen = open_runners(pack, stages, device=device, store=store, backend=cast(BackendName, backend),
                              precision=cast(Precision, precision), batch_sizes=[batch], intra_op_threads=cores())
    except HeygemError as e:
        return {**row, "status": "skipped", "note": e.message}
    row["open_s"] = time.perf_counter() - t0
    runner = chosen.runners["render"]
    forced = None
    if chosen.precision != precision:
        # open_runners runs fp32 for fp16 on a CPU (a worker would): time the fp16 graph
        # itself too, so the table shows what ORT does with it on this CPU.
        row["note"] = f"open_runners: {chosen.note}; timed the fp16 ONNX graph directly on ORT's CPU provider"
        path, _ = onnx_artifact(store, pack, "render", stages["render"], "fp16")
        forced = ort_backend.OrtRunner("render", path, *pack.io("render"), device=device,
                                       intra_op_threads=cores())
        runner = forced
        try:
            row["ort_cpu_fp16"] = ort_cpu_graph_report(path, tmp)
            r = row["ort_cpu_fp16"]
            row["note"] += (f" (after ORT's CPU optimisation: Cast nodes {r['casts_in_graph']} → {r['casts_after_ort_cpu_optimisation']}, "
                            f"{r['float16_weights_after_ort_cpu_optimisation']} of "
                            f"{r['float16_weights_in_graph']} weights still float16)")
        except Exception as e:  # a report only: the timing stands without it
            row["ort_cpu_fp16"] = {"error": f"{type(e).__name__}: {e}"}
    elif chosen.note:
        row["note"] = chosen.note
    try:
        out = runner.infer(inputs)["generated"]
        row.update(throughput(lambda: runner.infer(inputs), batch, args.seconds, args.reps))
    finally:
        if forced is not None:
            forced.close()
        chosen.close()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    row["finite"] = bool(np.isfinite(out).all())
    row["output_range"] = [float(out.min()), float(out.max())]
    if reference is not None:
        row["max_abs_diff_vs_pytorch_fp32_cpu"] = float(np.abs(out - reference).max())
    return row


# -- 2. end to end -----------------------------------------------------------------------------


def bench_e2e(backend: str, cache: Path, engines: Path, out_dir: Path, repeat: int) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": backend, "pack": "warp", "status": "ok", "note": ""}
    if backend == "tensorrt":
        ok, why = trt_backend.available()
        if not ok:
            return {**row, "status": "skipped", "note": f"tensorrt not available: {why}"}
    cfg = RenderConfig(pack="warp", backend=cast(BackendName, backend))
    worker = ModelWorker(cfg, engines_dir=engines)
    try:
        info = worker.ready()
    except HeygemError as e:
        return {**row, "status": "skipped", "note": e.message}
    row.update(precision=info.precision, device=info.device.device, note=info.backend_note,
               device_name=info.device.gpu or cpu_name())
    service = InProcessService(worker)
    runs = []
    try:
        for i in range(repeat):
            job = Job(row=1, job_id="lesson1-video", audio=AUDIO, video=VIDEO, output=out_dir / f"{backend}-{i}.mp4")
            result = render_job(job, cfg, cache, service)
            if result.status != "ok":
                return {**row, "status": "failed", "note": result.error}
            runs.append(result)
    finally:
        worker.close()
    best = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]  # the median run
    probe = media.probe_video(best.output)  # type: ignore[arg-type]  # an "ok" result has its output
    video_s = best.frames / float(probe.fps)
    row.update(
        wall_s=best.seconds,
        wall_s_runs=[r.seconds for r in runs],
        frames=best.frames,
        video_s=video_s,
        realtime_factor=video_s / best.seconds,
        template_cached=best.template_cached,
        output_frames=probe.frames,
        stages_s={s: getattr(best, f"{s}_s") for s in ("analyze", "features", "motion", "render", "compose")},
    )
    return row


# -- report ------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| pack | device | backend | precision | batch | frames/s | × pytorch fp32 | max abs Δ vs pytorch fp32 | note |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pack']} | {r['device_name']} | {r['backend']} | {r['precision']} | {r['batch']} | "
            f"{fmt(r.get('fps'), 1)} | {fmt(r.get('ratio_vs_pytorch_fp32'))} | "
            f"{fmt(r.get('max_abs_diff_vs_pytorch_fp32_cpu'), 6) if r.get('status') == 'ok' else '—'} | "
            f"{r['status'] + ': ' if r['status'] != 'ok' else ''}{r['note']} |"
        )
    return "\n".join(lines)


def e2e_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | precision | device | wall s | video s | realtime × | × pytorch | features s | motion s | render s | compose s | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        st = r.get("stages_s", {})
        lines.append(
            f"| {r['backend']} | {r.get('precision', '—')} | {r.get('device_name', '—')} | {fmt(r.get('wall_s'))} | "
            f"{fmt(r.get('video_s'))} | {fmt(r.get('realtime_factor'))} | {fmt(r.get('ratio_vs_pytorch'))} | "
            f"{fmt(st.get('features'), 3)} | {fmt(st.get('motion'), 3)} | {fmt(st.get('render'))} | "
            f"{fmt(st.get('compose'))} | {r['status'] + ': ' if r['status'] != 'ok' else ''}{r['note']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per render-stage row")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per render-stage row (median)")
    ap.add_argument("--e2e-repeat", type=int, default=3, help="end-to-end runs per backend (median)")
    args = ap.parse_args()
    n_cores = cores()
    torch.set_num_threads(n_cores)
    cuda = torch.cuda.is_available()
    t_start = time.perf_counter()
    busy_before = cpu_busy()
    if busy_before is not None and busy_before > 0.2:
        print(f"warning: the CPUs were {busy_before:.0%} busy before the run: other work on this machine "
              "will skew the numbers (rerun when it is quiet)", file=sys.stderr)
    render_rows: list[dict[str, Any]] = []
    e2e_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cache, store = tmp / "templates", EngineStore(tmp / "engines")
        checkpoint = write_random_checkpoint(tmp / "wav2lip-random.pth", seed=0)
        for name in ("warp", "wav2lip"):
            pack = get_pack(name)
            ckpt = checkpoint if name == "wav2lip" else None
            inputs = pack_inputs(pack, pack.load_stages(ckpt), cache)
            reference = None
            baseline: dict[str, float] = {}
            for device, backend, precision in render_configs(cuda):
                print(f"render: {name} {device} {backend} {precision} ...", file=sys.stderr, flush=True)
                row = bench_render(pack, ckpt, device, backend, precision, inputs, reference, store, tmp, args)
                if (backend, precision) == ("pytorch", "fp32") and row["status"] == "ok":
                    baseline[device] = row["fps"]
                    if device == "cpu":  # the reference output for every row's max |Δ|
                        reference = pack.load_stages(ckpt)["render"](
                            torch.from_numpy(inputs["crops"]), torch.from_numpy(inputs["codes"])
                        ).detach().numpy()
                        row["max_abs_diff_vs_pytorch_fp32_cpu"] = 0.0
                if row["status"] == "ok" and device in baseline:
                    row["ratio_vs_pytorch_fp32"] = row["fps"] / baseline[device]
                render_rows.append(row)
        # 2. end to end: warm the warp template, then one job per backend
        analyze(VIDEO, get_pack("warp").geometry, RenderConfig().detector, cache)
        for backend in E2E_BACKENDS:
            print(f"end to end: {backend} ...", file=sys.stderr, flush=True)
            e2e_rows.append(bench_e2e(backend, cache, tmp / "engines", tmp / "out", args.e2e_repeat))
        base = next((r["wall_s"] for r in e2e_rows if r["backend"] == "pytorch" and r["status"] == "ok"), None)
        for r in e2e_rows:
            if base and r["status"] == "ok":
                r["ratio_vs_pytorch"] = base / r["wall_s"]
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": socket.gethostname(),
        "machine": f"{platform.machine()}, {cpu_name()}, {platform.platform()}",
        "cores": n_cores,
        "torch_threads": torch.get_num_threads(),
        "ort_intra_op_threads": {"render_stage": n_cores, "end_to_end": "worker default (ORT: one per physical core)"},
        "gpu": device_name("cuda:0") if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "tensorrt": trt_version(),
        "numpy": np.__version__,
        "settings": {"seconds_per_row": args.seconds, "reps": args.reps, "e2e_repeat": args.e2e_repeat,
                     "batch": BATCH, "wav2lip_checkpoint": "random, seed 0, public format"},
        "ratios": "× = frames/s over pytorch fp32 on the same pack and device (render); "
                  "pytorch wall s over this wall s (end to end); higher is faster",
        "render_stage": render_rows,
        "end_to_end": {"job": "examples/lesson1.wav on examples/presenter.mp4, warp pack, template cached",
                       "rows": e2e_rows},
        "bench_seconds": time.perf_counter() - t_start,
        # Busy share of all CPUs over the second before the run: well above 0 means another
        # process shared the cores and the numbers are low (rerun on a quiet machine).
        "cpu_busy_before": busy_before,
    }
    out = REPO / "bench" / "results" / f"backends-{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"## Render stage ({n_cores} cores; median of {args.reps} reps over ~{args.seconds:g} s)\n")
    print(render_table(render_rows))
    print(f"\n## End to end ({report['end_to_end']['job']}; median of {args.e2e_repeat})\n")
    print(e2e_table(e2e_rows))
    print(f"\nwritten to {out} ({report['bench_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
