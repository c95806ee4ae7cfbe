"""One runner protocol over every inference backend.

A runner wraps one stage of a pack (``motion`` or ``render``) and is called with
name-keyed float32 arrays whose leading axis is the batch. Inputs are checked against
the stage's declared names and shapes before anything runs.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

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


class TorchRunner:
    """A stage run by PyTorch on ``device`` (CPU or CUDA) in ``dtype`` (fp32 or fp16).

    I/O stays float32 whatever the compute precision. The runner takes ``module`` over:
    it is moved to ``device`` and ``dtype`` in place (no copy of the weights), so a caller
    that needs the module as it was passes a copy.
    """

    backend = "pytorch"

    def __init__(
        self,
        stage: str,
        module: torch.nn.Module,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ):
        self.stage = stage
        self.inputs, self.outputs = inputs, outputs
        self.device, self.dtype = device, dtype
        if device.type == "cuda" and dtype == torch.float32:
            # cuDNN convolutions default to TF32 (a 10-bit mantissa) on Ampere and later, which
            # puts Wav2Lip ~1e-2 away from fp32. fp32 means fp32 here, as for TensorRT.
            # Process-wide, which is right for a worker: it owns its process and its GPU.
            torch.backends.cudnn.allow_tf32 = False
        self.module = module.to(device=device, dtype=dtype).eval()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self.stage, self.inputs, inputs)
        # Arrays from Ray's object store are read-only views: torch gets its own copy, in
        # C order (a transposed view would give channels-last tensors, whose convolution
        # kernels round differently from the ones the other backends match).
        args = [torch.tensor(np.ascontiguousarray(inputs[s.name]), device=self.device, dtype=self.dtype)
                for s in self.inputs]
        with torch.inference_mode():
            out = self.module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {s.name: o.float().cpu().numpy() for s, o in zip(self.outputs, outs, strict=True)}

    def close(self) -> None:
        del self.module
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
