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

Artifacts come from the ``EngineStore``: the ONNX graph of each stage (arch "any", shared
by onnxruntime and the TensorRT build; ``onnx_artifact``) and, for tensorrt, an engine per
GPU architecture and batch profile (``tensorrt_artifact``, also what ``heygem-ray engines
build`` needs). Keys carry ``stage_digest``: the stage's weights and code.

``precision="int8"`` (with a ``calibration`` set) runs the pack's ``int8_stages`` from
calibrated QDQ graphs (``quantize.py``) on onnxruntime or tensorrt and the others fp32;
pytorch has no int8. Whether the result is accurate enough is ``quantize.gate``'s to say.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from heygem_ray import __version__, metrics
from heygem_ray.backends.trt import choose_profile
from heygem_ray.config import BackendName
from heygem_ray.engines import BatchProfile, EngineKey, EngineStore, Precision
from heygem_ray.errors import EngineError, InternalError, storage_error
from heygem_ray.export import DEFAULT_OPSET, export_onnx
from heygem_ray.packs import PackSpec
from heygem_ray.runners import Runner, TorchRunner

if TYPE_CHECKING:
    from heygem_ray.quantize import CalibrationSet

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


def device_arch(device: str) -> str:
    """The store's arch for ``device``: ``cpu``, or the GPU's compute capability as ``sm_90``.

    Read through torch, which uses the device's primary context: no second CUDA context.
    """
    if not device.startswith("cuda"):
        return "cpu"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return f"sm_{major}{minor}"


def stage_digest(module: nn.Module) -> str:
    """sha256 over what a stage computes: its state dict and the heygem_ray code it runs.

    The state dict (names, dtypes, shapes, bytes, in name order) covers a checkpoint's
    weights and a weightless pack's constant buffers; the source files of the heygem_ray
    modules defining its layers cover constants and formulas in ``forward`` (editing
    ``packs/warp.py`` must not leave a stale engine in the store).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for name in sorted({type(m).__module__ for m in module.modules()}):
        if name.partition(".")[0] == "heygem_ray":
            source = inspect.getsourcefile(sys.modules[name])
            digest.update(name.encode() + b"\0" + (Path(source).read_bytes() if source else b""))
    return digest.hexdigest()


def open_runners(
    pack: PackSpec,
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
    """Runners for ``stages`` (from ``pack.load_stages``) on the chosen backend.

    ``batch_sizes``: the batch sizes the worker will send (default ``[32]``), for the
    TensorRT profile. ``build=False``: use only artifacts already in the store.
    ``calibration``: the frames int8 graphs are calibrated on (needed for int8).
    """
    notes: list[str] = []
    if precision == "fp16" and not device.startswith("cuda"):
        precision = "fp32"
        notes.append("fp16 needs a CUDA GPU; running fp32")
    if precision == "bf16" and not device.startswith("cuda") and not _cpu_has_bf16():
        precision = "fp32"
        notes.append("bf16 is slow on this CPU (it has no AVX-512 BF16 or AMX); running fp32")
    if precision == "int8" and not pack.int8_stages:
        precision = "fp32"
        notes.append(f"int8 does not pay for the {pack.name} pack; running fp32")
    if precision == "int8" and calibration is None:
        raise EngineError("int8 needs calibration data (quantize.calibration_set)", kind="bad_argument")
    ctx = _Context(pack, stages, device, store, precision, choose_profile(batch_sizes or [32]), build,
                   intra_op_threads, calibration)
    order = auto_order(pack, device, precision) if backend == "auto" else (backend,)
    skipped: list[str] = []
    for name in order:
        try:
            runners, keys = _OPENERS[name](ctx)
            _smoke(pack, runners)
        except (EngineError, RuntimeError, OSError) as e:
            # RuntimeError/OSError: CUDA, TensorRT or ORT failures not already wrapped; an
            # OSError of the store's disk (full, read-only) is the user's to fix, and said so.
            refused = storage_error(e, store.root) if isinstance(e, OSError) else None
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


def auto_order(pack: PackSpec, device: str, precision: Precision = "fp32") -> tuple[str, ...]:
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
    pack: PackSpec
    stages: dict[str, nn.Module]
    device: str
    store: EngineStore
    precision: Precision
    profile: BatchProfile
    build: bool
    intra_op_threads: int | None
    calibration: CalibrationSet | None
    hashes: dict[str, str] = field(default_factory=dict)  # stage → stage_digest, computed once


def onnx_key(pack: PackSpec, stage: str, precision: Precision, weights_hash: str, calibration: str = "") -> EngineKey:
    """The engine key of a stage's ONNX graph (int8: with its calibration id)."""
    return EngineKey(
        pack=pack.name,
        weights_hash=weights_hash,
        stage=stage,
        precision=precision,
        profile=None,
        backend="onnxruntime",
        backend_version=f"opset{DEFAULT_OPSET}-torch{torch.__version__}-heygem{__version__}",
        arch="any",  # an ONNX graph runs anywhere
        calibration=calibration,
    )


def onnx_artifact(
    store: EngineStore,
    pack: PackSpec,
    stage: str,
    module: nn.Module,
    precision: Precision,
    *,
    build: bool = True,
    weights_hash: str | None = None,
) -> tuple[Path, EngineKey]:
    """The stage's ONNX graph from ``store``, exported first if missing (unless ``build=False``)."""
    key = onnx_key(pack, stage, precision, weights_hash or stage_digest(module))
    inputs, outputs = pack.io(stage)

    def export(tmp: Path) -> None:
        export_onnx(module, inputs, outputs, tmp, fp16=precision == "fp16")
        metrics.record_engine_build("onnxruntime", stage, precision)

    return store.get_or_build(key, export, rebuild=build), key


def tensorrt_artifact(
    store: EngineStore,
    pack: PackSpec,
    stage: str,
    module: nn.Module,
    precision: Precision,
    profile: BatchProfile,
    device: str,
    *,
    build: bool = True,
    weights_hash: str | None = None,
    source: tuple[Path, EngineKey] | None = None,
) -> tuple[Path, EngineKey]:
    """The stage's TensorRT engine for ``device``'s GPU from ``store``, built first if missing.

    Needs ``trt.available()``; ``heygem-ray engines build`` is a loop over this.
    ``source``: the ONNX graph and its key to build from (an int8 QDQ graph); default, the
    stage's graph exported at ``precision``.
    """
    from heygem_ray.backends import trt

    if source is None:
        if precision == "int8":
            raise InternalError(f"{stage}: an int8 engine is built from its calibrated QDQ graph (pass source)")
        weights_hash = weights_hash or stage_digest(module)
        source = onnx_artifact(store, pack, stage, module, precision, build=build, weights_hash=weights_hash)
    onnx_path, onnx_key = source
    arch, version = device_arch(device), trt.trt_version()
    key = EngineKey(pack.name, onnx_key.weights_hash, stage, precision, profile, "tensorrt", version, arch,
                    onnx_key.calibration)
    timing_cache = store.root / "timing" / f"tensorrt-{version}-{arch}.cache"

    def build_plan(tmp: Path) -> None:
        with torch.cuda.device(torch.device(device)):
            # An int8 QDQ graph builds int8 layers where its Q/DQ pairs are (explicit quantization).
            trt.build_engine(onnx_path, tmp, profile=profile, fp16=precision == "fp16", timing_cache=timing_cache)
        metrics.record_engine_build("tensorrt", stage, precision)

    return store.get_or_build(key, build_plan, rebuild=build), key


def _hash(ctx: _Context, stage: str) -> str:
    if stage not in ctx.hashes:
        ctx.hashes[stage] = stage_digest(ctx.stages[stage])
    return ctx.hashes[stage]


def _int8_graph(ctx: _Context, stage: str, cpu: bool) -> tuple[Path, EngineKey] | None:
    """The stage's calibrated QDQ graph when it runs int8 (``cpu``: in the form for
    ONNX Runtime on this CPU), else None."""
    from heygem_ray import quantize

    if ctx.precision != "int8" or stage not in ctx.pack.int8_stages or ctx.calibration is None:
        return None
    upstream = list(ctx.stages)[: list(ctx.stages).index(stage) + 1]
    return quantize.int8_onnx_artifact(ctx.store, ctx.pack, stage, ctx.stages, ctx.calibration, cpu=cpu,
                                       weights_hash=quantize.chain_hash([_hash(ctx, s) for s in upstream]),
                                       build=ctx.build, device=ctx.device)


def _cpu_has_bf16() -> bool:
    from heygem_ray import quantize

    return bool(quantize.cpu_flags() & set(quantize.BF16_FLAGS))


def _not_bf16(ctx: _Context) -> None:
    if ctx.precision == "bf16":
        raise EngineError("bf16 runs on pytorch only")


def _float(ctx: _Context) -> Precision:
    """The precision of the stages that are not int8."""
    return "fp32" if ctx.precision == "int8" else ctx.precision


def _open_tensorrt(ctx: _Context) -> tuple[dict[str, Runner], dict[str, EngineKey]]:
    from heygem_ray.backends import trt

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
    from heygem_ray.backends import ort

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


def _smoke(pack: PackSpec, runners: dict[str, Runner]) -> None:
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
