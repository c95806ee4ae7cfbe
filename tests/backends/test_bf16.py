"""``--precision bf16``: PyTorch in bfloat16 where the CPU has the instructions for it."""

from __future__ import annotations

import copy

import numpy as np
import torch

from heygem_ray import hardware
from heygem_ray.backends import open_runners
from heygem_ray.packs import get_pack


def test_bf16_runs_on_pytorch_where_the_cpu_has_bf16_else_fp32(stages, store) -> None:
    pack = get_pack("wav2lip")
    fast = bool(hardware.cpu_flags() & set(hardware.BF16_FLAGS))
    modules = copy.deepcopy(stages["wav2lip"])  # TorchRunner casts its modules in place
    chosen = open_runners(pack, modules, device="cpu", store=store, backend="auto", precision="bf16", batch_sizes=[4])
    try:
        if fast:
            assert (chosen.backend, chosen.precision) == ("pytorch", "bf16")
            assert "onnxruntime: bf16 runs on pytorch only" in chosen.note
        else:  # fp32, on the backend auto takes for it (an AMD EPYC without AVX-512 BF16 found this branch wrong)
            assert chosen.precision == "fp32" and "bf16 is slow on this CPU" in chosen.note
        rng = np.random.default_rng(0)
        crops = rng.random((4, 3, 96, 96), dtype=np.float32)
        codes = rng.standard_normal((4, 512, 1, 1), dtype=np.float32)
        got = chosen.runners["render"].infer({"crops": crops, "codes": codes})["generated"]
    finally:
        chosen.close()
    with torch.inference_mode():
        want = stages["wav2lip"]["render"](torch.from_numpy(crops), torch.from_numpy(codes)).numpy()
    assert got.dtype == np.float32 and np.abs(got - want).max() < 0.05  # bfloat16's 8-bit mantissa
