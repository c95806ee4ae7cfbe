"""Model packs: ``features → motion → render`` plus the face-crop geometry.

A ``PackSpec`` is light (no weights): CPU stages use it for geometry, audio features and
the paste mask. ``load_stages`` builds the two ``torch.nn.Module`` stages on a worker:

* motion: ``features`` (B, *F) float32 → ``codes`` (B, *C) float32
* render: ``crops`` (B, 3, S, S) float32 BGR in [0, 1], ``codes`` (B, *C) → ``generated``
  (B, 3, S, S) float32 BGR in [0, 1]

Every pack has exactly this I/O, so workers, runners and exporters never branch on the
pack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from heygem_ray.features import Pcm
from heygem_ray.geometry import CropGeometry

# The features of a span of output frames, [start, stop) → (stop − start, *F) float32.
ChunkFeatures = Callable[[range], np.ndarray]
# Per job: 16 kHz mono waveform, output fps, output frame count → its ChunkFeatures.
# Whatever needs the whole clip (e.g. a loudness level) is measured here, once; each
# chunk then reads only the samples it covers.
FeatureFn = Callable[[Pcm, Fraction, int], ChunkFeatures]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # without the leading dynamic batch axis
    dtype: str = "float32"


@dataclass(frozen=True)
class PackSpec:
    name: str
    geometry: CropGeometry
    features: FeatureFn
    feature_shape: tuple[int, ...]
    code_shape: tuple[int, ...]
    paste_mask: np.ndarray  # (S, S) float32 in [0, 1], 0 on the border
    # "residual": paste only what the render stage changed (keeps the frame's detail
    # where the crop is unchanged); "replace": paste the generated crop itself.
    paste_mode: Literal["residual", "replace"]
    load_stages: Callable[[Path | None], dict[str, torch.nn.Module]]
    # ``--backend auto`` on a worker without a GPU: the backends to try, fastest first for
    # this pack's layers on a CPU (measured in bench/bench_backends.py).
    cpu_backends: tuple[str, ...] = ("onnxruntime", "pytorch")
    # ``--precision int8``: the stages run as calibrated int8 QDQ graphs (quantize.py);
    # the others stay fp32. Empty: int8 does not pay for this pack (it runs fp32).
    int8_stages: tuple[str, ...] = ()

    def io(self, stage: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Declared (inputs, outputs) of ``stage`` ("motion" or "render")."""
        size = self.geometry.size
        crops = TensorSpec("crops", (3, size, size))
        codes = TensorSpec("codes", self.code_shape)
        if stage == "motion":
            return (TensorSpec("features", self.feature_shape),), (codes,)
        if stage == "render":
            return (crops, codes), (TensorSpec("generated", crops.shape),)
        raise ValueError(f"unknown stage {stage!r}")


def get_pack(name: str) -> PackSpec:
    # Imported here: a pack's module pulls in its model code only when asked for.
    if name == "warp":
        from heygem_ray.packs.warp import PACK
    elif name == "wav2lip":
        from heygem_ray.packs.wav2lip import PACK
    else:
        raise ValueError(f"unknown pack {name!r}")
    return PACK
