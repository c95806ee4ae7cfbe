"""The TensorRT backend (TensorRT 10 and 11): engine building and a runner.

``tensorrt`` is imported inside the functions that need it, so this module imports on
machines without it; ``available()`` says whether it can be used and, if not, why.

One build path for both majors:

* The network is **strongly typed**: on TensorRT 10 by the ``STRONGLY_TYPED`` creation
  flag, on TensorRT 11 always (there it is the only mode, and flags 0 is passed). Tensor
  types come from the ONNX graph, so an FP32 graph builds an FP32 engine and the FP16
  graph from ``export_onnx(fp16=True)`` (float16 weights and compute, float32 I/O) builds
  an FP16 engine. TensorRT 11 removed ``BuilderFlag.FP16``; on TensorRT 10 it still exists
  but would make weakly typed engines whose per-layer precision is TensorRT's guess, with
  numbers that differ from ONNX Runtime's FP16 run and between versions. One graph, one
  path, the same numbers on 10 and 11.
* FP32 engines clear ``BuilderFlag.TF32`` so they match PyTorch FP32 to ~1e-5; FP16 is
  the fast precision.
* One optimization profile over the batch axis of every input (``BatchProfile``); batches
  larger than its max are split by the runner.
* A timing cache per (TensorRT version, GPU architecture) file, loaded before and merged
  back after each build, so rebuilding or building a sibling stage skips tactic timing.

Not used: ``EXPLICIT_BATCH`` (ignored by 10, gone in 11), ``max_workspace_size``,
``platform_has_fast_fp16``, ``build_engine``, binding-index ``execute_v2``, pycuda.
Device memory is torch CUDA tensors on the primary context torch already uses: one
CUDA context per process.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heygem_ray import storage
from heygem_ray.backends.runner import check_inputs
from heygem_ray.engines import BatchProfile
from heygem_ray.errors import EngineError
from heygem_ray.export import graph_names
from heygem_ray.hardware import tensorrt_version as trt_version
from heygem_ray.packs import TensorSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "INSTALL_HINT",
    "SUPPORTED_MAJORS",
    "BatchProfile",
    "TrtRunner",
    "available",
    "build_engine",
    "choose_profile",
    "parse_version",
    "trt_version",
]

SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = "tensorrt is not installed (pip install 'heygem-ray[tensorrt]' from NVIDIA's index)"
DEFAULT_WORKSPACE_BYTES = 4 << 30
# Profile max is rounded up to a multiple of this: batch sizes 30 and 32 share an engine,
# and the tail of a run never needs a rebuild for being one or two frames larger.
PROFILE_MAX_MULTIPLE = 8

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


# -- pure parts (no tensorrt needed) ---------------------------------------------------------


def parse_version(text: str) -> tuple[int, int, int]:
    """``"10.9.0.34"`` → ``(10, 9, 0)``; ``"11.0"`` → ``(11, 0, 0)``."""
    m = _VERSION.match(text)
    if m is None:
        raise ValueError(f"not a TensorRT version: {text!r}")
    return int(m[1]), int(m[2]), int(m[3] or 0)


def version_problem(text: str) -> str | None:
    """None if TensorRT ``text`` is one this code is written for, else why not."""
    major = parse_version(text)[0]
    if major in SUPPORTED_MAJORS:
        return None
    wanted = " or ".join(map(str, SUPPORTED_MAJORS))
    age = "too old" if major < min(SUPPORTED_MAJORS) else "newer than this heygem-ray supports"
    return f"TensorRT {text} is {age}: heygem-ray needs TensorRT {wanted}"


def choose_profile(batch_sizes_sent: list[int]) -> BatchProfile:
    """The profile for a worker that sends these batch sizes.

    min 1 (any tail chunk fits); opt the most common size (ties → the larger), since
    TensorRT tunes its kernels for opt; max the largest size rounded up to a multiple of
    ``PROFILE_MAX_MULTIPLE``.
    """
    sizes = [int(b) for b in batch_sizes_sent]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch sizes must be a non-empty list of positive ints, got {batch_sizes_sent}")
    counts = Counter(sizes)
    opt = max(counts, key=lambda b: (counts[b], b))
    top = -(-max(sizes) // PROFILE_MAX_MULTIPLE) * PROFILE_MAX_MULTIPLE
    return BatchProfile(1, opt, top)


# -- needs tensorrt ----------------------------------------------------------------------------


def available() -> tuple[bool, str]:
    """(usable here, why not): tensorrt importable, a supported version, and a CUDA GPU."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, INSTALL_HINT
    except OSError as e:  # the wheel is there but libnvinfer could not be loaded
        return False, f"tensorrt is installed but failed to load ({e})"
    problem = version_problem(trt.__version__)
    if problem:
        return False, problem
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    return True, ""


@functools.cache
def _logger() -> Any:
    # One logger per process; TensorRT needs it to outlive every builder and runtime.
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def _network_flags(trt: Any) -> int:
    if parse_version(trt.__version__)[0] >= 11:
        return 0  # every network is strongly typed; no flag needed
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    profile: BatchProfile,
    fp16: bool,
    timing_cache: str | os.PathLike[str],
) -> Path:
    """Build a serialized engine for this GPU from ``onnx_path`` into ``engine_path``.

    ``fp16`` says what the ONNX graph computes in (``export_onnx(fp16=...)``); it changes
    no builder flag, only whether TF32 is allowed. Raises ``EngineError`` with the
    parser's or builder's reason.
    """
    import tensorrt as trt

    onnx_path, engine_path, timing_cache = Path(onnx_path), Path(engine_path), Path(timing_cache)
    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path.name}: {errors}", kind="engine_build")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, DEFAULT_WORKSPACE_BYTES)
    if not fp16 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 means FP32: TF32 convs drift by ~1e-3

    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise EngineError(f"{onnx_path.name}: input {tensor.name!r} has a dynamic axis besides the batch")
        opt_profile.set_shape(tensor.name, (profile.min, *rest), (profile.opt, *rest), (profile.max, *rest))
    config.add_optimization_profile(opt_profile)

    cache = _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path.name} "
            "(its log on stderr says why)",
            kind="engine_build",
        )
    _save_timing_cache(config, cache, timing_cache)
    storage.write_bytes(engine_path, memoryview(serialized))
    return engine_path


def _load_timing_cache(config: Any, path: Path) -> Any:
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # Unreadable, or from another GPU or TensorRT version: start an empty one.
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config: Any, cache: Any, path: Path) -> None:
    """Merge what is on disk (another process may have added to it) into ``cache``, write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage.file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            on_disk = config.create_timing_cache(path.read_bytes())
            if on_disk is not None:
                cache.combine(on_disk, ignore_mismatch=False)
        storage.write_bytes(path, memoryview(cache.serialize()))


class TrtRunner:
    """A stage run by a TensorRT engine on ``device``; float32 numpy in and out.

    Batches larger than the engine profile's max are run in slices of at most max.
    """

    backend = "tensorrt"

    def __init__(
        self,
        stage: str,
        engine_path: str | os.PathLike[str],
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        device: str = "cuda:0",
    ):
        import tensorrt as trt
        import torch

        self.stage = stage
        self.inputs, self.outputs = inputs, outputs
        self._in_names, self._out_names = graph_names(inputs, outputs)
        self.device = torch.device(device)
        path = Path(engine_path)
        with torch.cuda.device(self.device):  # TensorRT uses the current device's primary context
            self._runtime = trt.Runtime(_logger())
            self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise EngineError(
                    f"{stage}: TensorRT {trt.__version__} could not load {path} (built by another "
                    "TensorRT version or for another GPU?); delete it and it will be rebuilt",
                )
            self._check_io(trt, path)
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        # (min, opt, max) shapes of profile 0; the batch is the leading axis.
        self.max_batch = int(self.engine.get_tensor_profile_shape(self._in_names[0], 0)[2][0])

    def _check_io(self, trt: Any, path: Path) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = sorted(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outs = sorted(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        if ins != sorted(self._in_names) or outs != sorted(self._out_names):
            raise EngineError(
                f"{self.stage}: {path.name} has inputs {ins} and outputs {outs}, the stage declares "
                f"{sorted(self._in_names)} and {sorted(self._out_names)}; rebuild it",
            )
        wrong = [n for n in names if self.engine.get_tensor_dtype(n) != trt.float32]
        if wrong:
            raise EngineError(f"{self.stage}: {path.name} has non-float32 I/O {wrong}")

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self.stage, self.inputs, inputs)
        n = len(inputs[self.inputs[0].name])
        if n == 0:  # no profile admits batch 0
            return {s.name: np.zeros((0, *s.shape), np.float32) for s in self.outputs}
        parts = [
            self._run({k: v[s : s + self.max_batch] for k, v in inputs.items()}) for s in range(0, n, self.max_batch)
        ]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        # Buffers are allocated on self.stream, so the caching allocator will not hand
        # them to other streams before the engine is done with them.
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            keep: list[torch.Tensor] = []
            for name, spec in zip(self._in_names, self.inputs, strict=True):
                t = torch.from_numpy(np.ascontiguousarray(inputs[spec.name])).to(self.device)
                keep.append(t)
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise EngineError(f"{self.stage}: the engine refused {name} of shape {tuple(t.shape)}")
                self.context.set_tensor_address(name, t.data_ptr())
            results: list[torch.Tensor] = []
            for name in self._out_names:
                shape = tuple(self.context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=torch.float32, device=self.device)
                results.append(out)
                self.context.set_tensor_address(name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineError(f"{self.stage}: TensorRT execution failed (its log on stderr says why)")
            self.stream.synchronize()
            host = [r.cpu() for r in results]
            del keep  # the inputs may go back to the allocator only now
        return {spec.name: h.numpy() for spec, h in zip(self.outputs, host, strict=True)}

    def close(self) -> None:
        import torch

        # Context before engine before runtime: TensorRT's destruction order.
        for name in ("context", "engine", "_runtime"):
            self.__dict__.pop(name, None)
        torch.cuda.empty_cache()
