"""Seeded GFPGAN checkpoints in the public file format, and seeded faces, for tests.

The key sets and shapes come from ``tests/data/gfpgan_state_dict.json``, written from the
public ``GFPGANv1Clean`` (TencentARC/GFPGAN at 7552a77) built with the v1.4 settings and
with the narrow test settings below: not derived from our module, so loading these files
checks our layout against the published one.

``tests/data/gfpgan_public_<i>.png`` are what the public code (its network with
``randomize_noise=False``, and ``GFPGANer.enhance``'s pre- and post-processing for an
aligned face) made of ``seeded_faces(FACES, FACE_SEED)[i]`` with the narrow checkpoint of
seed ``CKPT_SEED``. Everything here is elementwise numpy and torch's CPU generator, so the
same seeds give the same bytes on any machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "data"
STATE_DICT_JSON = DATA / "gfpgan_state_dict.json"
# The narrow test configuration (GFPGANConfig fields; the public code's arguments of the
# same names): 1/8 of the channels, 64-wide style codes. About 1.4 M parameters.
NARROW = {"narrow": 0.125, "channel_multiplier": 2, "num_style_feat": 64, "num_mlp": 8}
CKPT_SEED = 0
FACES = 3
FACE_SEED = 1


def public_shapes(which: str) -> dict[str, tuple[int, ...]]:
    """``"v1.4"`` or ``"narrow"``: every key of the public network's state dict and its shape."""
    tensors = json.loads(STATE_DICT_JSON.read_text())[which]
    return {k: tuple(v) for k, v in tensors.items()}


def random_state_dict(which: str = "narrow", seed: int = CKPT_SEED) -> dict[str, torch.Tensor]:
    """Random weights in the public layout, scaled so the restored face stays mostly inside
    [-1, 1] (a network that saturates everywhere would pass any comparison).

    Convolutions and linear layers are fan-in scaled normals; style modulations are 1 plus a
    small term (the public initialisation's bias of 1); the noise strengths are positive, so
    the stored noise maps matter; the SFT scale maps are about 1; ToRGB weights are small,
    since seven resolutions add up into the image.
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in public_shapes(which).items():
        if ".noises.noise" in key or key.endswith("constant_input.weight"):
            sd[key] = torch.randn(shape, generator=g)
        elif key.endswith("modulation.bias"):
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("modulation.weight"):
            sd[key] = torch.randn(shape, generator=g) * (0.3 / math.sqrt(shape[1]))
        elif key.endswith("modulated_conv.weight"):  # (1, Cout, Cin, k, k)
            gain = 0.12 if shape[1] == 3 else 1.0  # ToRGB
            sd[key] = torch.randn(shape, generator=g) * (gain / math.sqrt(math.prod(shape[2:])))
        elif shape == (1,):  # a style conv's noise strength
            sd[key] = 0.05 + 0.1 * torch.rand(shape, generator=g)
        elif key.startswith("condition_scale.") and key.endswith(".2.bias"):
            sd[key] = 1.0 + 0.05 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):  # of convolutions, linear layers, style convs and ToRGB (1, C, 1, 1)
            sd[key] = 0.05 * torch.randn(shape, generator=g)
        else:  # conv (Cout, Cin, k, k) or linear (out, in) weights
            sd[key] = torch.randn(shape, generator=g) * math.sqrt(1.0 / math.prod(shape[1:]))
    return sd


def write_checkpoint(path: str | Path, which: str = "narrow", seed: int = CKPT_SEED, *, key: str = "params_ema",
                     drop_key: str | None = None, extra_key: str | None = None,
                     reshape_key: str | None = None) -> Path:
    """Save ``{key: state_dict}`` as the public files are saved (``params_ema``; older files
    ``params``). ``drop_key`` leaves a key out, ``extra_key`` adds one and ``reshape_key``
    adds a row to one, to test the loader's errors."""
    sd = random_state_dict(which, seed)
    if drop_key is not None:
        del sd[drop_key]
    if extra_key is not None:
        sd[extra_key] = torch.zeros(1)
    if reshape_key is not None:
        sd[reshape_key] = torch.cat([sd[reshape_key], sd[reshape_key][:1]])
    path = Path(path)
    torch.save({key: sd}, path)
    return path


def seeded_faces(n: int = FACES, seed: int = FACE_SEED, size: int = 512) -> np.ndarray:
    """(n, size, size, 3) uint8 BGR: smooth random colour fields (bilinear from a 9×9 grid)
    with fine grain on top, like a face's broad shading and its texture."""
    rng = np.random.default_rng(seed)
    grid = rng.uniform(30.0, 225.0, (n, 9, 9, 3))
    pos = (np.arange(size) + 0.5) * (8.0 / size)  # pixel centres in grid units, [0, 8)
    i0 = np.floor(pos).astype(np.int64)
    t = pos - i0
    rows = grid[:, i0] * (1 - t)[None, :, None, None] + grid[:, i0 + 1] * t[None, :, None, None]
    field = rows[:, :, i0] * (1 - t)[None, None, :, None] + rows[:, :, i0 + 1] * t[None, None, :, None]
    grain = rng.integers(-12, 13, field.shape)
    return np.clip(np.rint(field) + grain, 0, 255).astype(np.uint8)
