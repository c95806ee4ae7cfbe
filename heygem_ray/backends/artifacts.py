"""A stage's artifacts in the engine store: its ONNX graph and its TensorRT engines.

Keys carry ``stage_digest``, what the stage computes (its weights and code): an edited
pack or new weights never meet a stale graph. ``heygem-ray engines build`` is a loop over
``onnx_artifact`` and ``tensorrt_artifact``.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from heygem_ray import metrics
from heygem_ray.backends import trt
from heygem_ray.engines import BatchProfile, EngineKey, EngineStore, Precision
from heygem_ray.errors import InternalError
from heygem_ray.export import DEFAULT_OPSET, export_onnx
from heygem_ray.hardware import device_arch
from heygem_ray.packs import StageSet
from heygem_ray.version import __version__


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


def onnx_key(pack: StageSet, stage: str, precision: Precision, weights_hash: str, calibration: str = "") -> EngineKey:
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
    pack: StageSet,
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
    pack: StageSet,
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
    if source is None:
        if precision == "int8":
            raise InternalError(f"{stage}: an int8 engine is built from its calibrated QDQ graph (pass source)")
        weights_hash = weights_hash or stage_digest(module)
        source = onnx_artifact(store, pack, stage, module, precision, build=build, weights_hash=weights_hash)
    onnx_path, onnx_key = source
    arch, version = device_arch(device), trt.trt_version()
    key = EngineKey(pack.name, onnx_key.weights_hash, stage, precision, profile, "tensorrt", version, arch,
                    onnx_key.calibration, source=onnx_key.digest())
    timing_cache = store.root / "timing" / f"tensorrt-{version}-{arch}.cache"

    def build_plan(tmp: Path) -> None:
        with torch.cuda.device(torch.device(device)):
            # An int8 QDQ graph builds int8 layers where its Q/DQ pairs are (explicit quantization).
            trt.build_engine(onnx_path, tmp, profile=profile, fp16=precision == "fp16", timing_cache=timing_cache)
        metrics.record_engine_build("tensorrt", stage, precision)

    return store.get_or_build(key, build_plan, rebuild=build), key
