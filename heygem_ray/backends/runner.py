"""One runner protocol over every inference backend.

A runner wraps one stage of a pack (``motion``, ``render``, …) and is called with
name-keyed float32 arrays whose leading axis is the batch. Inputs are checked against
the stage's declared names and shapes before anything runs. The runners themselves sit
beside this module: ``pytorch.py``, ``ort.py`` (ONNX Runtime), ``trt.py`` (TensorRT).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from heygem_ray.errors import InternalError
from heygem_ray.packs import TensorSpec


class Runner(Protocol):
    backend: str

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def check_inputs(stage: str, specs: tuple[TensorSpec, ...], inputs: dict[str, np.ndarray]) -> None:
    """Raise naming the first input whose name, shape or dtype is not the declared one."""
    expected = [s.name for s in specs]
    if sorted(inputs) != sorted(expected):
        raise InternalError(f"{stage}: inputs {sorted(inputs)} given, {sorted(expected)} declared")
    batch = {len(a) for a in inputs.values()}
    if len(batch) != 1:
        raise InternalError(f"{stage}: inputs disagree on the batch size ({sorted(batch)})")
    for spec in specs:
        arr = inputs[spec.name]
        if tuple(arr.shape[1:]) != spec.shape or arr.dtype != np.dtype(spec.dtype):
            raise InternalError(
                f"{stage}: input {spec.name!r} is {arr.dtype}{list(arr.shape)}, "
                f"declared {spec.dtype}[batch, {', '.join(map(str, spec.shape))}]"
            )


def infer_batched(runner: Runner, inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """``runner`` on ``inputs`` ``batch`` items at a time, the outputs joined."""
    n = len(next(iter(inputs.values())))
    parts = [runner.infer({k: v[s : s + batch] for k, v in inputs.items()}) for s in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
