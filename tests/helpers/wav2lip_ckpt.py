"""A seeded random checkpoint in the public Wav2Lip file format, for tests.

The key set and shapes come from ``tests/data/wav2lip_state_dict.json``, the public
generator's state dict as published (not derived from our model), so loading this file
checks our module layout against the published one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

STATE_DICT_JSON = Path(__file__).resolve().parents[1] / "data" / "wav2lip_state_dict.json"


def spec_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the public generator's state dict and its shape, as published."""
    tensors = json.loads(STATE_DICT_JSON.read_text())["tensors"]
    return {k: tuple(v) for k, v in tensors.items()}


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights scaled so activations stay O(1) through the 40-odd layers.

    Conv weights are He-scaled normals (a fixed 0.05 would blow activations up by ~3× per
    512-channel layer, since BatchNorm uses fixed running stats here), BatchNorm weights
    are ~1, biases and running means small, running variances in [0.5, 1.5].
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in spec_shapes().items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:  # conv or transposed-conv weight
            fan_in = math.prod(shape[1:])
            sd[key] = torch.randn(shape, generator=g) * math.sqrt(1.0 / fan_in)
        elif key.endswith("weight"):  # BatchNorm scale
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:  # conv and BatchNorm biases
            sd[key] = 0.05 * torch.randn(shape, generator=g)
    return sd


def write_random_checkpoint(
    path: str | Path,
    seed: int = 0,
    module_prefix: bool = False,
    drop_key: str | None = None,
    extra_key: str | None = None,
) -> Path:
    """Save ``{"state_dict", "optimizer", "global_step", "global_epoch"}`` like the public files.

    ``module_prefix`` prefixes every key with ``module.`` (as DataParallel does);
    ``drop_key`` leaves one key out and ``extra_key`` adds one, to test the loader's errors.
    """
    sd = random_state_dict(seed)
    if drop_key is not None:
        del sd[drop_key]
    if extra_key is not None:
        sd[extra_key] = torch.zeros(1)
    if module_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    path = Path(path)
    torch.save({"state_dict": sd, "optimizer": {}, "global_step": 0, "global_epoch": 0}, path)
    return path
