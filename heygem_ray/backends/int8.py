"""INT8 artifacts: calibrated QDQ graphs of a pack's int8 stages, and the gate that
measures them.

``quantize_graph`` turns a stage's fp32 ONNX graph into a QDQ graph with ONNX Runtime's
``quantize_static``: the pack's ``int8_ops`` with weights int8, symmetric, one scale per
output channel, and activations with ranges measured on calibration frames. The graph is
exported from the pack's ``int8_form`` of the stage (Wav2Lip: its transposed convolutions
as ordinary ones, which quantize). It comes in two forms, each an engine-store entry keyed
by the calibration data's id:

* the portable form, activations int8 and symmetric (zero point 0): what TensorRT 10 builds
  an explicitly quantized INT8 engine from (``backends/trt.py``), and what ONNX Runtime
  runs as it is on a GPU or a CPU other than x86;
* the x86 CPU form, activations uint8 with a zero point of their own (asymmetric): ONNX
  Runtime's x86 kernels multiply uint8 by int8 (VNNI/AMX; int8 × int8 runs slower than fp32
  there), and a zero point per tensor lets the quantizer fold each ReLU into the layer
  before it (its output range starts at 0) and gives non-negative tensors all 256 steps.

Calibration data (a ``CalibrationSet``, gathered by ``heygem_ray.calibration``) is runs of
``RUN_FRAMES`` consecutive frames; each run goes through the pack as a job's chunk does
(``run_chunks``), so a stage is calibrated on what it receives in a job, whatever the
stages before it compute (MuseTalk's UNet: the reference latents and the gathered speech
tokens). Its ``id`` hashes the arrays.

The gate (``gate``): the pack's stages on the int8 runners against PyTorch fp32 on the
held-out frames, as 8-bit pixels; PSNR of the generated crops and of the pasted mouth
region (the crop's lower half, weighted by the pack's paste mask) must both reach
``MIN_PSNR_DB``. Whether an int8 set is then used is ``heygem_ray.precision``'s to decide.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import logging
import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from torch import nn

from heygem_ray import metrics
from heygem_ray.backends.artifacts import onnx_key
from heygem_ray.backends.pytorch import TorchRunner
from heygem_ray.backends.runner import Runner, infer_batched
from heygem_ray.engines import EngineKey, EngineStore
from heygem_ray.errors import EngineError, InternalError
from heygem_ray.export import MAX_ONNX_WEIGHT_BYTES, export_onnx
from heygem_ray.hardware import X86
from heygem_ray.packs import Features, PackSpec, StageCall

# Consecutive frames a calibration run holds (a pack's chunk features span frames:
# MuseTalk's speech windows).
RUN_FRAMES = 4
# The gate: PSNR against fp32, in dB, on the generated crops and on the pasted mouth region.
MIN_PSNR_DB = 30.0
_BATCH = 16  # frames per calibration and gate call
# What ``quantize_graph`` and a pack's ``int8_form`` and ``int8_ops`` make of a stage, in
# every int8 graph's engine key, so that a store's graphs of an older recipe are built
# again rather than taken for today's (the package version does not change with each
# commit). Raise it when any of them changes. 2: Wav2Lip's transposed convolutions as
# phase convolutions, its whole render graph in int8, the asymmetric x86 form.
QDQ_RECIPE = 2


@dataclass(frozen=True, eq=False)
class Run:
    """``RUN_FRAMES`` consecutive output frames of a row: what a chunk of them is given."""

    crops: np.ndarray  # (k, S, S, 3) uint8 BGR reference crops
    features: Features  # the pack's chunk features for the same frames


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Runs of real frames for int8: the first ``len(runs) - held_out`` calibrate, the
    last ``held_out`` judge (never seen by the calibration)."""

    pack: str
    runs: tuple[Run, ...]
    held_out: int  # runs
    source: str  # where the frames came from, for messages

    def __post_init__(self) -> None:
        if not 0 < self.held_out < len(self.runs):
            raise InternalError(f"calibration set of {len(self.runs)} runs, {self.held_out} held out")

    @functools.cached_property
    def id(self) -> str:
        """16 hex digits of sha256 over the pack, the split and the arrays (shapes and bytes)."""
        digest = hashlib.sha256(f"{self.pack}:{self.held_out}".encode())
        for run in self.runs:
            features = run.features if isinstance(run.features, Mapping) else {"": run.features}
            for a in (run.crops, *(features[k] for k in sorted(features))):
                digest.update(f":{a.dtype}{a.shape}:".encode())
                digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()[:16]

    def part(self, held_out: bool) -> tuple[Run, ...]:
        """The held-out runs, or the calibrating ones."""
        cut = len(self.runs) - self.held_out
        return self.runs[cut:] if held_out else self.runs[:cut]


@contextlib.contextmanager
def fp32_call(
    pack: PackSpec,
    modules: dict[str, nn.Module],
    device: str = "cpu",
    record: dict[str, list[dict[str, np.ndarray]]] | None = None,
) -> Iterator[StageCall]:
    """A stage call on the fp32 PyTorch modules on ``device``, ``_BATCH`` frames at a time;
    with ``record``, each stage's inputs are appended to ``record[stage]``. On a GPU it runs
    copies (the modules stay on the CPU, where the exporter and the digests read them):
    MuseTalk's fp32 stages take 10 s a frame on a CPU."""
    runners: dict[str, TorchRunner] = {}

    def call(stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if record is not None:
            record.setdefault(stage, []).append(inputs)
        if stage not in runners:
            module = modules[stage] if device == "cpu" else copy.deepcopy(modules[stage])
            runners[stage] = TorchRunner(stage, module, *pack.io(stage), device=torch.device(device))
        return infer_batched(runners[stage], inputs, _BATCH)

    try:
        yield call
    finally:
        for runner in runners.values():
            runner.close()


def runner_call(runners: dict[str, Runner]) -> StageCall:
    def call(stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return infer_batched(runners[stage], inputs, _BATCH)

    return call


def run_chunks(pack: PackSpec, call: StageCall, runs: tuple[Run, ...]) -> np.ndarray:
    """Each run through the pack as a job's chunk goes (its reference stage first, where
    the pack has one) → (n, 3, S, S) float32 BGR in [0, 1]."""
    outs = []
    for run in runs:
        given = run.crops if pack.reference is None else pack.run_reference(call, run.crops)
        outs.append(pack.chunk(call, run.features, given))
    return np.concatenate(outs)


def stage_inputs(
    pack: PackSpec, modules: dict[str, nn.Module], calibration: CalibrationSet, stage: str, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """What ``stage`` receives on the calibrating frames when every stage runs fp32."""
    record: dict[str, list[dict[str, np.ndarray]]] = {}
    with fp32_call(pack, modules, device, record) as call:
        run_chunks(pack, call, calibration.part(held_out=False))
    return {k: np.concatenate([r[k] for r in record[stage]]) for k in record[stage][0]}


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader``: the inputs, ``_BATCH`` at a time."""

    def __init__(self, inputs: dict[str, np.ndarray]):
        self.inputs, self.at = inputs, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        n = len(next(iter(self.inputs.values())))
        if self.at >= n:
            return None
        batch = {k: np.ascontiguousarray(v[self.at : self.at + _BATCH]) for k, v in self.inputs.items()}
        self.at += _BATCH
        return batch

    def rewind(self) -> None:
        self.at = 0


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # quantize_static logs advice meant for its own users through the root logger
    # ("consider pre-processing"); a worker's log is no place for it.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    """The process's temporary files made in ``folder`` while the block runs: ONNX Runtime's
    quantizer writes its calibration copy of the graph (the fp32 graph with every
    activation an output: gigabytes for MuseTalk's UNet) in the system's temporary folder,
    a node's /tmp, where this puts it beside the working copy instead (an int8 build is the
    only thing its worker does meanwhile)."""
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before


def quantize_graph(fp32: Path, out: Path, inputs: dict[str, np.ndarray], ops: tuple[str, ...], *,
                   cpu: bool = False) -> None:
    """Write the QDQ int8 graph of ``fp32`` to ``out`` (its weights to ``<out>.data``),
    ``ops`` quantized (MatMul: those with a weight), activation ranges (min/max) measured
    on ``inputs`` (name → (n, ...) float32); ``cpu``: in the x86 CPU form (uint8
    activations with zero points), else the portable one (int8, zero point 0)."""

    reader: Any = _Reader(inputs)  # duck-typed CalibrationDataReader
    graph = onnx.load(str(fp32), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    # Products of two activations (attention's scores and values) stay float: the QDQ
    # quantizer would take them too (it ignores its MatMulConstBOnly option).
    products = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights]
    with _quiet_root_logger(), _temporary_files_in(out.parent):
        quantize_static(
            str(fp32),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops),
            per_channel=True,
            activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=products,
            calibrate_method=CalibrationMethod.MinMax,
            # The graphs of a stage past 2 GiB in fp32 (MuseTalk's UNet), and their
            # calibration copies, need their weights in files of their own.
            use_external_data_format=True,
            extra_options={
                # Zero point 0 for TensorRT's explicit quantization; a CPU's zero points
                # follow each range, so a ReLU's output is quantized over [0, max] and the
                # ReLU itself is dropped.
                "ActivationSymmetric": not cpu,
                "WeightSymmetric": True,
                "QuantizeBias": False,  # biases stay float: TensorRT folds them into its int8 kernels
            },
            calibration_providers=["CPUExecutionProvider"],
        )


def single_file(graph: Path, out: Path) -> None:
    """``graph`` (weights in external files) written to ``out`` as one ONNX file; a graph
    whose weights one file cannot hold is refused."""

    model = onnx.load(str(graph))  # and its weights
    weights = sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)
    if weights > MAX_ONNX_WEIGHT_BYTES:
        raise EngineError(f"its int8 graph's weights are {weights / 2**30:.1f} GiB, more than one ONNX file holds "
                          "(2 GiB)")
    onnx.save(model, str(out))


def chain_hash(digests: list[str]) -> str:
    """The weights an int8 stage depends on: its own and those of the stages before it,
    whose outputs are its calibration inputs."""
    return hashlib.sha256(":".join(digests).encode()).hexdigest()


def int8_onnx_artifact(
    store: EngineStore,
    pack: PackSpec,
    stage: str,
    modules: dict[str, nn.Module],
    calibration: CalibrationSet,
    *,
    weights_hash: str,
    cpu: bool,
    build: bool = True,
    device: str = "cpu",
) -> tuple[Path, EngineKey]:
    """The stage's QDQ graph from ``store`` (calibrated and written first if missing, the
    fp32 stages run on ``device``): with ``cpu`` on an x86 machine its x86 CPU form, else
    the portable one. ``weights_hash``: ``chain_hash`` of the stages."""
    x86_form = cpu and X86
    key = onnx_key(pack, stage, "int8", weights_hash, calibration=calibration.id)
    key = dataclasses.replace(key, backend_version=f"{key.backend_version}-qdq{QDQ_RECIPE}",
                              arch="cpu" if x86_form else key.arch)

    def write_qdq(tmp: Path) -> None:
        # The fp32 graph is a working copy beside the entry (gigabytes for MuseTalk's UNet);
        # the store keeps only the int8 one.
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".quantize-") as work:
            fp32, qdq = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
            export_onnx(pack.int8_form(stage, modules[stage]), *pack.io(stage), fp32, external_data=True)
            quantize_graph(fp32, qdq, stage_inputs(pack, modules, calibration, stage, device), pack.int8_ops,
                           cpu=x86_form)
            single_file(qdq, tmp)
        metrics.record_engine_build("onnxruntime", stage, "int8")

    return store.get_or_build(key, write_qdq, rebuild=build), key


@dataclass(frozen=True)
class GateResult:
    crops_db: float  # PSNR of the generated crops against fp32
    mouth_db: float  # the same over the pasted mouth region
    frames: int
    source: str

    @property
    def passed(self) -> bool:
        return min(self.crops_db, self.mouth_db) >= MIN_PSNR_DB

    def describe(self) -> str:
        return (f"on {self.frames} held-out frames of {self.source}, PSNR against fp32 is {self.crops_db:.1f} dB "
                f"on the generated crops and {self.mouth_db:.1f} dB on the pasted mouth region "
                f"(at least {MIN_PSNR_DB:.0f} dB needed)")


def psnr(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> float:
    """PSNR in dB of 8-bit images ``a`` against ``b`` (…, S, S, 3); ``weight`` (S, S) weighs
    pixels (a pasted crop changes the frame by its mask times the difference)."""
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if weight is None:
        mse = float(err.mean())
    else:  # the mean over the region, counting each pixel by its weight
        w = weight.astype(np.float64)[..., None]
        mse = float((err * w**2).sum() / (w.sum() * err.size / w.size))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def mouth_weight(pack: PackSpec) -> np.ndarray:
    """(S, S) float32: the paste mask over the crop's lower half (the mouth), 0 above."""
    weight = pack.paste_mask.astype(np.float32).copy()
    weight[: weight.shape[0] // 2] = 0.0
    return weight


def to_pixels(out: np.ndarray) -> np.ndarray:
    # (n, 3, S, S) float32 in [0, 1] → (n, S, S, 3) uint8, as the worker converts them
    return np.clip(np.rint(out.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)


def gate(pack: PackSpec, runners: dict[str, Runner], modules: dict[str, nn.Module],
         calibration: CalibrationSet, device: str = "cpu") -> GateResult:
    """The int8 ``runners`` against the fp32 ``modules`` (run on ``device``) on the held-out frames."""
    held = calibration.part(held_out=True)
    with fp32_call(pack, modules, device) as call:
        want = to_pixels(run_chunks(pack, call, held))
    got = to_pixels(run_chunks(pack, runner_call(runners), held))
    return GateResult(psnr(got, want), psnr(got, want, mouth_weight(pack)), len(want), calibration.source)
