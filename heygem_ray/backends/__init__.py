"""Pick a backend for a worker and open the runners of a pack's stages on it.

``open_runners`` is the one entry point a model worker needs::

    runners = open_runners(pack, stages, device="cuda:0", store=EngineStore(root),
                           backend="auto", precision="fp16", batch_sizes=[32])
    runners.backend   # "tensorrt" | "onnxruntime" | "pytorch": what will run
    runners.note      # why the faster ones did not ("" when the first choice ran)
    runners.runners   # {"motion": Runner, "render": Runner}: one per stage of the pack

``auto`` tries ``tensorrt`` → ``onnxruntime`` → ``pytorch`` on a GPU, and ``tensorrt`` →
the pack's ``cpu_backends`` (fastest first for its layers) on a CPU; it keeps the first that
loads every stage and runs a one-item smoke batch. Each one skipped adds "<backend>:
<reason>" to the note. A backend named explicitly must work, else ``EngineError`` says why.

The package, bottom up: ``runner`` (the protocol every runner follows) and the runners
beside each other (``pytorch``, ``ort`` for ONNX Runtime, ``trt`` for TensorRT);
``artifacts``, the engine store's entries (each stage's ONNX graph, shared by onnxruntime
and the TensorRT build, and a TensorRT engine per GPU architecture and batch profile);
``int8``, the calibrated QDQ graphs of a pack's ``int8_stages`` and the gate that measures
them. Which precision a worker runs is decided above this package (``heygem_ray.precision``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from heygem_ray import metrics
from heygem_ray.backends import ort, trt
from heygem_ray.backends.artifacts import onnx_artifact, stage_digest, tensorrt_artifact
from heygem_ray.backends.int8 import CalibrationSet, chain_hash, int8_onnx_artifact
from heygem_ray.backends.pytorch import TorchRunner
from heygem_ray.backends.runner import Runner
from heygem_ray.config import BackendName
from heygem_ray.engines import BatchProfile, EngineKey, EngineStore, Precision
from heygem_ray.errors import EngineError, InputError, InternalError, storage_error
from heygem_ray.hardware import cpu_has_bf16
from heygem_ray.packs import PackSpec, StageSet

AUTO_ORDER: tuple[str, ...] = ("tensorrt", "onnxruntime", "pytorch")


@dataclass(frozen=True)
class RunnerSet:
    """A pack's stage runners on one backend, and how that backend was chosen."""

    backend: str
    precision: Precision  # what runs: fp16 on a CPU falls back to fp32 (noted), as int8 for a pack without int8 stages
    note: str
    runners: dict[str, Runner]
    engine_keys: dict[str, EngineKey] = field(default_factory=dict)  # empty for pytorch

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


def open_runners(
    pack: StageSet,
    stages: dict[str, nn.Module],
    *,
    device: str,
    store: EngineStore,
    backend: BackendName = "auto",
    precision: Precision = "fp32",
    batch_sizes: list[int] | None = None,
    build: bool = True,
    intra_op_threads: int | None = None,
    calibration: CalibrationSet | None = None,
) -> RunnerSet:
    """Runners for ``stages`` (from ``pack.load_stages``) on the chosen backend. ``pack``
    is a model pack or another set of networks with declared stages (the restoration
    stage's ``restore.stage.Restorer``).

    ``batch_sizes``: the batch sizes the worker will send (default ``[32]``), for the
    TensorRT profile. ``build=False``: use only artifacts already in the store.
    ``calibration``: the frames int8 graphs are calibrated on (needed for int8).
    """
    notes: list[str] = []
    if precision == "fp16" and not device.startswith("cuda"):
        precision = "fp32"
        notes.append("fp16 needs a CUDA GPU; running fp32")
    if precision == "bf16" and not device.startswith("cuda") and not cpu_has_bf16():
        precision = "fp32"
        notes.append("bf16 is slow on this CPU (it has no AVX-512 BF16 or AMX); running fp32")
    if precision == "int8" and not pack.int8_stages:
        precision = "fp32"
        notes.append(f"int8 does not pay for the {pack.name} pack; running fp32")
    if precision == "int8" and calibration is None:
        raise EngineError("int8 needs calibration data (calibration.calibration_set)", kind="bad_argument")
    ctx = _Context(pack, stages, device, store, precision, trt.choose_profile(batch_sizes or [32]), build,
                   intra_op_threads, calibration)
    order = auto_order(pack, device, precision) if backend == "auto" else (backend,)
    skipped: list[str] = []
    for name in order:
        try:
            runners, keys = _OPENERS[name](ctx)
            _smoke(pack, runners)
        except (EngineError, RuntimeError, OSError, InputError) as e:
            # RuntimeError/OSError: CUDA, TensorRT or ORT failures not already wrapped; an
            # OSError of the store's disk (full, read-only), or a bucket store that refused
            # us (InputError ``storage``), is the user's to fix, and said so: ``auto`` goes
            # on to a backend that needs no store (PyTorch), as it would for any other reason.
            if isinstance(e, InputError) and e.kind != "storage":
                raise
            refused = e if isinstance(e, InputError) else storage_error(e, store.root) if isinstance(e, OSError) else None
            if refused is not None and backend != "auto":
                raise refused from e
            known = refused or (e if isinstance(e, EngineError) else None)
            reason = known.message if known is not None else f"{type(e).__name__}: {e}"
            if backend != "auto":
                raise EngineError(f"--backend {name} cannot run here: {reason}") from e
            notes.append(f"{name}: {reason}")
            skipped.append(name)
            continue
        for tried in skipped:
            metrics.record_backend_fallback(tried, name)
        return RunnerSet(name, precision, "; ".join(notes), runners, keys)
    raise EngineError("no backend could run the model: " + "; ".join(notes))  # pytorch failed too


def auto_order(pack: StageSet, device: str, precision: Precision = "fp32") -> tuple[str, ...]:
    """What ``auto`` tries, in order. TensorRT is tried on a CPU too: its reason for not
    running ("not installed", "no CUDA device") goes in the note. int8 on a CPU runs on
    onnxruntime, whichever backend runs the pack's float stages fastest there."""
    if device.startswith("cuda"):
        return AUTO_ORDER
    cpu = pack.cpu_backends
    if precision == "int8" and "onnxruntime" not in cpu:
        cpu = ("onnxruntime", *cpu)
    return ("tensorrt", *cpu)


@dataclass(frozen=True)
class _Context:
    pack: StageSet
    stages: dict[str, nn.Module]
    device: str
    store: EngineStore
    precision: Precision
    profile: BatchProfile
    build: bool
    intra_op_threads: int | None
    calibration: CalibrationSet | None
    hashes: dict[str, str] = field(default_factory=dict)  # stage → stage_digest, computed once


def _hash(ctx: _Context, stage: str) -> str:
    if stage not in ctx.hashes:
        ctx.hashes[stage] = stage_digest(ctx.stages[stage])
    return ctx.hashes[stage]


def _int8_graph(ctx: _Context, stage: str, cpu: bool) -> tuple[Path, EngineKey] | None:
    """The stage's calibrated QDQ graph when it runs int8 (``cpu``: in the form for
    ONNX Runtime on this CPU), else None."""
    if ctx.precision != "int8" or stage not in ctx.pack.int8_stages or ctx.calibration is None:
        return None
    if not isinstance(ctx.pack, PackSpec):  # calibration runs a pack's own frames through it
        raise InternalError(f"{ctx.pack.name} declares int8 stages, but only a pack's are calibrated")
    upstream = list(ctx.stages)[: list(ctx.stages).index(stage) + 1]
    return int8_onnx_artifact(ctx.store, ctx.pack, stage, ctx.stages, ctx.calibration, cpu=cpu,
                                       weights_hash=chain_hash([_hash(ctx, s) for s in upstream]),
                                       build=ctx.build, device=ctx.device)


def _not_bf16(ctx: _Context) -> None:
    if ctx.precision == "bf16":
        raise EngineError("bf16 runs on pytorch only")


def _float(ctx: _Context) -> Precision:
    """The precision of the stages that are not int8."""
    return "fp32" if ctx.precision == "int8" else ctx.precision


def _open_tensorrt(ctx: _Context) -> tuple[dict[str, Runner], dict[str, EngineKey]]:
    ok, why = trt.available()
    if not ok:
        raise EngineError(why)
    if not ctx.device.startswith("cuda"):
        raise EngineError("the worker has no CUDA device")
    _not_bf16(ctx)
    runners: dict[str, Runner] = {}
    keys: dict[str, EngineKey] = {}
    try:
        for stage in ctx.pack.stages:
            source = _int8_graph(ctx, stage, cpu=False)
            engine, keys[stage] = tensorrt_artifact(
                ctx.store, ctx.pack, stage, ctx.stages[stage], "int8" if source else _float(ctx), ctx.profile,
                ctx.device, build=ctx.build, weights_hash=_hash(ctx, stage), source=source,
            )
            runners[stage] = trt.TrtRunner(stage, engine, *ctx.pack.io(stage), device=ctx.device)
    except BaseException:
        _close_all(runners)
        raise
    return runners, keys


def _open_onnxruntime(ctx: _Context) -> tuple[dict[str, Runner], dict[str, EngineKey]]:
    ok, why = ort.available(ctx.device)
    if not ok:
        raise EngineError(why)
    _not_bf16(ctx)
    runners: dict[str, Runner] = {}
    keys: dict[str, EngineKey] = {}
    try:
        for stage in ctx.pack.stages:
            int8 = _int8_graph(ctx, stage, cpu=not ctx.device.startswith("cuda"))
            path, keys[stage] = int8 or onnx_artifact(ctx.store, ctx.pack, stage, ctx.stages[stage], _float(ctx),
                                                      build=ctx.build, weights_hash=_hash(ctx, stage))
            runners[stage] = ort.OrtRunner(stage, path, *ctx.pack.io(stage), device=ctx.device,
                                           intra_op_threads=ctx.intra_op_threads)
    except BaseException:
        _close_all(runners)
        raise
    return runners, keys


def _open_pytorch(ctx: _Context) -> tuple[dict[str, Runner], dict[str, EngineKey]]:
    if ctx.precision == "int8":
        raise EngineError("pytorch has no int8 graphs (int8 runs on onnxruntime or tensorrt)")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(ctx.precision, torch.float32)
    runners: dict[str, Runner] = {
        stage: TorchRunner(stage, ctx.stages[stage], *ctx.pack.io(stage), device=torch.device(ctx.device), dtype=dtype)
        for stage in ctx.pack.stages
    }
    return runners, {}


_OPENERS: dict[str, Callable[[_Context], tuple[dict[str, Runner], dict[str, EngineKey]]]] = {
    "tensorrt": _open_tensorrt,
    "onnxruntime": _open_onnxruntime,
    "pytorch": _open_pytorch,
}


def _smoke(pack: StageSet, runners: dict[str, Runner]) -> None:
    """One item of zeros through each stage: a backend that loads but cannot run fails
    here, not mid-job."""
    try:
        for stage, (inputs, _) in pack.stages.items():
            runners[stage].infer({s.name: np.zeros((1, *s.shape), np.dtype(s.dtype)) for s in inputs})
    except BaseException:
        _close_all(runners)
        raise


def _close_all(runners: dict[str, Runner]) -> None:
    for runner in runners.values():
        runner.close()
