"""INT8: calibrated QDQ graphs of a pack's int8 stages, and the gate that decides whether
they are used.

One artefact serves both runtimes. ``quantize_graph`` turns a stage's fp32 ONNX graph into
a QDQ graph with ONNX Runtime's ``quantize_static``: the pack's ``int8_ops`` with
weights int8, symmetric, one scale per output channel, and input activations int8,
symmetric (zero point 0), their ranges measured on calibration frames. That is the form
TensorRT 10 builds an explicitly quantized INT8 engine from (``backends/trt.py``), and ONNX
Runtime runs it as it is on a GPU. On an x86 CPU, ONNX Runtime runs int8 × int8
convolutions slower than fp32 (BENCHMARKS.md, "INT8 and bf16"), so ``cpu_form`` rewrites the activations to uint8 with zero point 128: the same
numbers (q_u8 = q_s8 + 128, same scale), run by its uint8 × int8 VNNI/AMX kernels. Both
forms are engine-store entries keyed by the calibration data's id.

Calibration data (``calibration_set``): face crops from the templates of real references
and the pack's audio features of real speech, ``CALIBRATION_FRAMES`` frames to measure
ranges on and ``HELD_OUT_FRAMES`` more for the gate, in runs of ``RUN_FRAMES``
consecutive frames spread over every row of a manifest (default: the bundled examples).
Each run goes through the pack as a job's chunk does (``run_chunks``), so a stage is
calibrated on what it receives in a job, whatever the stages before it compute (MuseTalk's
UNet: the reference latents and the gathered speech tokens). Its ``id`` hashes the arrays.

The gate (``gate``): the pack's stages on the int8 runners against PyTorch fp32 on the
held-out frames, as 8-bit pixels; PSNR of the generated crops and of the pasted mouth
region (the crop's lower half, weighted by the pack's paste mask) must both reach
``MIN_PSNR_DB``. ``open_first`` applies it: a refused int8 set is closed and the next
precision tried, with the figures in the note.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import platform
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from heygem_ray import media, metrics, storage
from heygem_ray.analyze import analyze
from heygem_ray.config import DetectorConfig, PrecisionName, default_download_dir
from heygem_ray.engines import EngineKey, EngineStore, Precision
from heygem_ray.errors import EngineError, InputError, InternalError
from heygem_ray.export import MAX_ONNX_WEIGHT_BYTES, export_onnx
from heygem_ray.features import SAMPLE_RATE, Pcm
from heygem_ray.manifest import Job, read_manifest
from heygem_ray.packs import Features, PackSpec, StageCall
from heygem_ray.runners import Runner, TorchRunner, infer_batched
from heygem_ray.timeline import loop_indices

if TYPE_CHECKING:
    from heygem_ray.backends import RunnerSet

# Frames whose activations set the ranges, and frames kept apart for the gate, taken in
# runs of consecutive frames (a pack's chunk features span frames: MuseTalk's speech windows).
CALIBRATION_FRAMES = 128
HELD_OUT_FRAMES = 32
RUN_FRAMES = 4
# The gate: PSNR against fp32, in dB, on the generated crops and on the pasted mouth region.
MIN_PSNR_DB = 30.0
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[1] / "examples" / "manifest.csv"
_BATCH = 16  # frames per calibration and gate call
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
# CPU flags (/proc/cpuinfo) of the instructions that make int8 and bf16 fast.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

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


def calibration_set(
    pack: PackSpec,
    manifest: Path | None,
    cache_dir: Path,
    *,
    frames: int = CALIBRATION_FRAMES,
    held_out: int = HELD_OUT_FRAMES,
) -> CalibrationSet:
    """``frames + held_out`` frames (rounded up to whole runs) from the rows of
    ``manifest`` (columns audio and video; None: the bundled examples), in runs of
    ``RUN_FRAMES`` spread evenly over each row's output frames where the face is found.
    Templates are cached in ``cache_dir``."""
    manifest = manifest or DEFAULT_CALIBRATION
    if not manifest.is_file():
        raise InputError(
            f"int8 calibration manifest {manifest} not found: pass --calibrate MANIFEST, a CSV with "
            "columns audio and video of your presenter and their speech",
            kind="missing_file",
        )
    jobs = read_manifest(manifest, cache_dir / "unused-outputs")
    calibrating, judging = math.ceil(frames / RUN_FRAMES), math.ceil(held_out / RUN_FRAMES)
    share = math.ceil((calibrating + judging) / len(jobs))
    runs: list[Run] = []
    for job in jobs:
        try:
            if job.problem is not None:
                raise job.problem
            runs.extend(_row_runs(pack, job, share, cache_dir))
        except InputError as e:
            raise InputError(f"calibration manifest {manifest}, {job.label}: {e.message}", kind=e.kind) from e
    # A fixed shuffle, so the held-out runs come from every row.
    order = np.random.default_rng(0).permutation(len(runs))[: calibrating + judging]
    return CalibrationSet(pack.name, tuple(runs[i] for i in order), judging, str(manifest))


def calibration_for(
    pack: PackSpec, precisions: tuple[Precision, ...], manifest: Path | None, cache_dir: Path
) -> CalibrationSet | None:
    """The calibration set when one of ``precisions`` is int8 and the pack has int8 stages."""
    if "int8" not in precisions or not pack.int8_stages:
        return None
    return calibration_set(pack, manifest, cache_dir)


def _row_runs(pack: PackSpec, job: Job, runs: int, cache_dir: Path) -> list[Run]:
    """``runs`` runs of one row, evenly over its output frames, each with a face throughout."""
    video = storage.fetch(job.video, "reference", default_download_dir())
    audio = storage.fetch(job.audio, "audio", default_download_dir())
    template, _ = analyze(video, pack.geometry, DetectorConfig(), cache_dir)
    wav = media.load_audio(audio, SAMPLE_RATE)
    n = max(1, round(len(wav) / SAMPLE_RATE * template.fps))
    ref = loop_indices(n, template.frames, "pingpong")  # output frame → reference frame
    with_face = np.convolve(template.present[ref].astype(np.int64), np.ones(RUN_FRAMES, np.int64), "valid")
    starts = np.flatnonzero(with_face == RUN_FRAMES)
    if len(starts) == 0:
        raise InputError(f"no {RUN_FRAMES} consecutive frames of {video} with a face", kind="no_face")
    chunk = pack.features(Pcm.from_array(wav), template.fps, n)
    picked = starts[np.linspace(0, len(starts) - 1, runs).round().astype(np.int64)]
    return [Run(template.crops(ref[s : s + RUN_FRAMES]), chunk(range(s, s + RUN_FRAMES))) for s in picked]


# -- the stages on real frames ------------------------------------------------------------------


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


# -- the graphs ---------------------------------------------------------------------------------


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


def quantize_graph(fp32: Path, out: Path, inputs: dict[str, np.ndarray], ops: tuple[str, ...]) -> None:
    """Write the QDQ int8 graph of ``fp32`` to ``out`` (its weights to ``<out>.data``),
    ``ops`` quantized (MatMul: those with a weight), activation ranges (min/max) measured
    on ``inputs`` (name → (n, ...) float32)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader: Any = _Reader(inputs)  # duck-typed CalibrationDataReader
    graph = onnx.load(str(fp32), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    # Products of two activations (attention's scores and values) stay float: the QDQ
    # quantizer would take them too (it ignores its MatMulConstBOnly option).
    products = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights]
    with _quiet_root_logger():
        quantize_static(
            str(fp32),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=products,
            calibrate_method=CalibrationMethod.MinMax,
            # The graphs of a stage past 2 GiB in fp32 (MuseTalk's UNet), and their
            # calibration copies, need their weights in files of their own.
            use_external_data_format=True,
            extra_options={
                "ActivationSymmetric": True,  # zero point 0: TensorRT's explicit quantization
                "WeightSymmetric": True,
                "QuantizeBias": False,  # biases stay float: TensorRT folds them into its int8 kernels
            },
            calibration_providers=["CPUExecutionProvider"],
        )


def single_file(graph: Path, out: Path) -> None:
    """``graph`` (weights in external files) written to ``out`` as one ONNX file; a graph
    whose weights one file cannot hold is refused."""
    import onnx

    model = onnx.load(str(graph))  # and its weights
    weights = sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)
    if weights > MAX_ONNX_WEIGHT_BYTES:
        raise EngineError(f"its int8 graph's weights are {weights / 2**30:.1f} GiB, more than one ONNX file holds "
                          "(2 GiB)")
    onnx.save(model, str(out))


def cpu_form(qdq: Path, out: Path) -> None:
    """The QDQ graph for ONNX Runtime on an x86 CPU: activations uint8 with zero point 128
    instead of int8 with zero point 0 (the same values), weights left int8."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq))
    inits = {i.name: i for i in model.graph.initializer}
    weights: set[str] = set()
    activations: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) == 3:
            is_weight = node.op_type == "DequantizeLinear" and node.input[0] in inits
            (weights if is_weight else activations).add(node.input[2])
    if weights & activations:
        raise InternalError(f"{qdq.name}: zero points shared by weights and activations: {sorted(weights & activations)}")
    for name in activations:
        zero = numpy_helper.to_array(inits[name])
        if zero.dtype != np.int8 or zero.any():
            raise InternalError(f"{qdq.name}: activation zero point {name} is {zero.dtype} {zero}, not int8 0")
        inits[name].CopyFrom(numpy_helper.from_array(np.full(zero.shape, 128, np.uint8), name))
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
    fp32 stages run on ``device``); with ``cpu`` on an x86 machine, its CPU form.
    ``weights_hash``: ``chain_hash`` of the stages."""
    from heygem_ray.backends import onnx_key

    key = onnx_key(pack, stage, "int8", weights_hash, calibration=calibration.id)

    def write_qdq(tmp: Path) -> None:
        # The fp32 graph is a working copy beside the entry (gigabytes for MuseTalk's UNet);
        # the store keeps only the int8 one.
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".quantize-") as work:
            fp32, qdq = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
            export_onnx(modules[stage], *pack.io(stage), fp32, external_data=True)
            quantize_graph(fp32, qdq, stage_inputs(pack, modules, calibration, stage, device), pack.int8_ops)
            single_file(qdq, tmp)
        metrics.record_engine_build("onnxruntime", stage, "int8")

    qdq = store.get_or_build(key, write_qdq, rebuild=build)
    if not (cpu and _X86):
        return qdq, key
    cpu_key = dataclasses.replace(key, arch="cpu")
    return store.get_or_build(cpu_key, lambda tmp: cpu_form(qdq, tmp), rebuild=build), cpu_key


# -- the gate -----------------------------------------------------------------------------------


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


# -- choosing a precision -----------------------------------------------------------------------


def cpu_flags() -> set[str]:
    """This CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def int8_pays(device: str) -> tuple[bool, str]:
    """(int8 is fast on ``device``, the instructions or hardware that make it so, or why not)."""
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if (major, minor) >= (7, 5):
            return True, f"INT8 tensor cores (compute capability {major}.{minor})"
        return False, f"compute capability {major}.{minor} has no INT8 tensor cores (7.5 or later)"
    have = sorted(cpu_flags() & set(INT8_FLAGS))
    if have:
        return True, ", ".join(have)
    return False, f"this CPU has none of {', '.join(INT8_FLAGS)}"


def precision_order(precision: PrecisionName, device: str, pack: PackSpec, *, calibrated: bool) -> tuple[Precision, ...]:
    """The precisions a worker tries, in order. "auto": fp16 on a GPU, fp32 on a CPU, with
    int8 first where it pays, the pack has int8 stages and calibration data was given."""
    if precision != "auto":
        return (precision,)
    base: Precision = "fp16" if device.startswith("cuda") else "fp32"
    if calibrated and pack.int8_stages and int8_pays(device)[0]:
        return ("int8", base)
    return (base,)


def runtime_version(backend: str) -> str:
    """The version of the runtime that runs ``backend``'s artifacts."""
    if backend == "tensorrt":
        from heygem_ray.backends import trt

        return f"tensorrt{trt.trt_version()}"
    if backend == "onnxruntime":
        import onnxruntime

        return f"onnxruntime{onnxruntime.__version__}"
    return f"torch{torch.__version__}"


def verdict_path(store: EngineStore, pack: PackSpec, chosen: RunnerSet, device: str,
                 calibration: CalibrationSet) -> Path:
    """Where the gate's verdict on ``chosen`` is kept: it depends on every artifact the set
    runs (their keys: weights, precision, backend, GPU architecture, calibration), the
    runtime, the kind of device, the fp32 reference's PyTorch, the held-out frames and the
    threshold."""
    from heygem_ray.backends import device_arch

    what = {
        "keys": {stage: key.digest() for stage, key in sorted(chosen.engine_keys.items())},
        "runtime": runtime_version(chosen.backend),
        "device": device_arch(device) if device.startswith("cuda") else f"cpu-{platform.machine()}",
        "reference": f"torch{torch.__version__}",
        "calibration": calibration.id,
        "min_db": MIN_PSNR_DB,
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return store.root / "gates" / f"{pack.name}-{digest[:16]}.json"


def kept_gate(pack: PackSpec, chosen: RunnerSet, modules: dict[str, nn.Module], calibration: CalibrationSet,
              store: EngineStore, device: str) -> GateResult:
    """``gate``'s verdict on ``chosen``, judged once and kept in the store: a worker that
    opens the same int8 set on the same kind of device reads it instead of running the
    held-out frames at fp32 again (seconds for Wav2Lip, minutes for MuseTalk on a CPU)."""
    path = verdict_path(store, pack, chosen, device, calibration)
    try:
        kept = json.loads(path.read_text())
        return GateResult(float(kept["crops_db"]), float(kept["mouth_db"]), int(kept["frames"]), calibration.source)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not judged yet (or a record from elsewhere that does not read): judge it
    result = gate(pack, chosen.runners, modules, calibration, device)
    record = {"crops_db": result.crops_db, "mouth_db": result.mouth_db, "frames": result.frames,
              "passed": result.passed, "source": result.source}
    storage.write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    return result


def open_first(
    pack: PackSpec,
    modules: dict[str, nn.Module],
    precisions: tuple[Precision, ...],
    calibration: CalibrationSet | None,
    *,
    store: EngineStore,
    device: str,
    **open_kwargs: Any,
) -> tuple[RunnerSet, GateResult | None]:
    """``open_runners`` at the first of ``precisions`` that opens and, for int8, passes the
    gate (its result is returned with the runners; ``kept_gate``); each refused one adds to
    the note. The last one's error is raised as it is."""
    from heygem_ray.backends import open_runners

    notes: list[str] = []
    for i, precision in enumerate(precisions):
        last = i == len(precisions) - 1
        try:
            chosen = open_runners(pack, modules, precision=precision, calibration=calibration, store=store,
                                  device=device, **open_kwargs)
        except EngineError as e:
            if last:
                raise
            notes.append(f"{precision}: {e.message}")
            continue
        result = None
        if chosen.precision == "int8" and calibration is not None:
            result = kept_gate(pack, chosen, modules, calibration, store, device)
            if not result.passed:
                chosen.close()
                message = f"int8 refused by the accuracy gate: {result.describe()}"
                if last:
                    raise EngineError(
                        f"{message}. Calibrate on frames of this presenter (heygem-ray engines build "
                        "--precision int8 --calibrate MANIFEST), or run --precision fp32 or fp16",
                        kind="int8_refused",
                    )
                notes.append(message)
                continue
        note = "; ".join([*notes, chosen.note] if chosen.note else notes)
        return dataclasses.replace(chosen, note=note), result
    raise InternalError("open_first needs at least one precision")
