"""The PyTorch backend: a stage's module run as it is, on a CPU or a CUDA GPU."""

from __future__ import annotations

import numpy as np
import torch

from heygem_ray.backends.runner import check_inputs
from heygem_ray.packs import TensorSpec


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
