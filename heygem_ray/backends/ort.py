"""The ONNX Runtime backend: a stage's ONNX graph run by an ``InferenceSession``.

Execution providers: on a CUDA worker the CUDA provider (with CPU for anything it lacks),
elsewhere the CPU provider. ONNX Runtime's own TensorRT provider is not picked by default:
heygem-ray's ``tensorrt`` backend already builds TensorRT engines once per GPU type into
the engine store, while the provider would rebuild them in every worker process at start.
Pass ``providers=["TensorrtExecutionProvider", ...]`` to use it anyway.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from heygem_ray.backends.runner import check_inputs
from heygem_ray.errors import EngineError, first_line
from heygem_ray.export import graph_names
from heygem_ray.packs import TensorSpec

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
_ERROR_ONLY = 3  # ORT log severity: errors and fatal only (its warnings are about folding)
_ORT_FLOAT = "tensor(float)"

Provider = str | tuple[str, dict[str, Any]]


def available(device: str = "cpu") -> tuple[bool, str]:
    """(usable on ``device``, why not). ``device`` is "cpu" or "cuda[:N]"."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return False, f"onnxruntime is not installed ({e})"
    if device.startswith("cuda") and CUDA_EP not in ort.get_available_providers():
        return False, "onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu)"
    return True, ""


def default_providers(device: str | None = None) -> list[Provider]:
    """CUDA (then CPU) for a CUDA ``device``, or when ``device`` is None and ORT has CUDA; else CPU."""
    import onnxruntime as ort

    has_cuda = CUDA_EP in ort.get_available_providers()
    if device is None:
        device = "cuda:0" if has_cuda else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        return [(CUDA_EP, {"device_id": index}), CPU_EP]
    return [CPU_EP]


class OrtRunner:
    """A stage run by ONNX Runtime. Inputs and outputs are float32 whatever the graph computes in."""

    backend = "onnxruntime"

    def __init__(
        self,
        stage: str,
        onnx_path: str | os.PathLike[str],
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        providers: list[Provider] | None = None,
        *,
        intra_op_threads: int | None = None,
        device: str | None = None,
    ):
        import onnxruntime as ort

        self.stage = stage
        self.inputs, self.outputs = inputs, outputs
        self._in_names, self._out_names = graph_names(inputs, outputs)
        path = Path(onnx_path)
        if not path.is_file():
            raise EngineError(f"{stage}: ONNX graph {path} not found", kind="engine_missing")
        options = ort.SessionOptions()
        options.log_severity_level = _ERROR_ONLY
        # Idle threads sleep rather than spin: a worker shares its node's cores with the jobs'
        # decode, compose and encode, and spinning threads take their time (BENCHMARKS.md,
        # "Threads that wait").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads is not None:  # None: ORT's choice (one thread per physical core)
            options.intra_op_num_threads = intra_op_threads
        chosen = providers if providers is not None else default_providers(device)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as e:  # ORT raises its own classes, all bare Exception subclasses
            raise EngineError(f"{stage}: onnxruntime could not load {path} ({first_line(e)}): a file in the engine "
                              "store that is damaged, or was written by another onnxruntime; remove it, and the next "
                              "run (or 'heygem-ray engines build') builds it again") from e  # fmt: skip
        self._check_session(path, chosen)

    def _check_session(self, path: Path, chosen: list[Provider]) -> None:
        got_in = sorted(i.name for i in self.session.get_inputs())
        got_out = sorted(o.name for o in self.session.get_outputs())
        if got_in != sorted(self._in_names) or got_out != sorted(self._out_names):
            raise EngineError(
                f"{self.stage}: {path.name} has inputs {got_in} and outputs {got_out}, the stage declares "
                f"{sorted(self._in_names)} and {sorted(self._out_names)}; export it again",
            )
        wrong = [t.name for t in (*self.session.get_inputs(), *self.session.get_outputs()) if t.type != _ORT_FLOAT]
        if wrong:
            raise EngineError(f"{self.stage}: {path.name} has non-float32 I/O {wrong}")
        # ORT drops a provider whose libraries fail to load (e.g. CUDA without cuDNN) with
        # only a log line: running on the CPU instead of the GPU must not go unnoticed.
        wanted = {p if isinstance(p, str) else p[0] for p in chosen}
        missing = wanted - set(self.session.get_providers())
        if missing:
            raise EngineError(
                f"{self.stage}: onnxruntime could not start {sorted(missing)} "
                "(are the CUDA and cuDNN libraries it needs installed?)",
            )

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self.stage, self.inputs, inputs)
        feeds = {name: inputs[spec.name] for name, spec in zip(self._in_names, self.inputs, strict=True)}
        try:
            outs = self.session.run(list(self._out_names), feeds)
        except Exception as e:  # see __init__
            raise EngineError(f"{self.stage}: onnxruntime failed: {e}") from e
        return {spec.name: out for spec, out in zip(self.outputs, outs, strict=True)}

    def close(self) -> None:
        self.__dict__.pop("session", None)
