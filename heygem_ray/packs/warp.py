"""The ``warp`` pack: deterministic lips, no weights.

* features: per output frame, the speech-band loudness of the 10 mel columns (125 ms)
  centred on the frame's time, after normalising the whole clip's loudness; (N, 10).
* motion: a Hann-weighted mean of those 10 values mapped to a mouth opening in [0, 1];
  (N, 1). Silence gives 0: the mouth stays closed.
* render: warps the lower face of the square crop with ``grid_sample``: the jaw and
  lower lip move down, the upper lip up a little, and the gap between them is filled
  with a dark mouth interior.

Crop coordinates below are grid_sample's: x and y in [-1, 1], y pointing down. The
square crop (geometry below) is centred across on the mouth and puts it at y = 0.2; the
chin falls near y = 0.5.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heygem_ray.features import MAX_ABS, MEL_FPS, Pcm, mel_column_count, mel_columns
from heygem_ray.geometry import CropGeometry, feathered_ellipse
from heygem_ray.packs.spec import ChunkFeatures, PackSpec, frame_stages

CROP_SIZE = 160
WINDOW = 10  # mel columns per frame (125 ms at 80 columns/s)
SPEECH_BANDS = slice(8, 64)  # mel bands of most speech energy (~150 Hz – 3.5 kHz)

# Loudness normalisation: the 95th percentile of 20 ms RMS is brought to TARGET_RMS.
# Below SILENCE_RMS the clip is treated as silence and left as it is.
TARGET_RMS = 0.1
SILENCE_RMS = 1e-3
MAX_GAIN = 100.0

# Band level (normalised mel units, −4 … 4) mapped to opening 0 and 1.
LEVEL_CLOSED = -3.0
LEVEL_OPEN = -1.0

# Mouth layout in crop coordinates, and how far the lips move at full opening.
MOUTH_Y = 0.2
MOUTH_HALF_WIDTH = 0.26
CHIN_Y = 0.5
JAW_DROP = 0.085
LIP_RAISE = 0.03
INTERIOR_BGR = (0.10, 0.08, 0.22)  # dark red-brown, BGR in [0, 1]

GEOMETRY = CropGeometry(size=CROP_SIZE, mode="mouth", scale=1.5, mouth_y=MOUTH_Y)


def loudness_gain(pcm: Pcm, sample_rate: int = 16000) -> float:
    """The gain that brings the clip's speech to a fixed level (1.0 for silence), from
    one pass over the waveform a block at a time."""
    hop = sample_rate // 50  # 20 ms
    rms = [
        np.sqrt(np.mean(block[: len(block) // hop * hop].reshape(-1, hop) ** 2, axis=1))
        for block in pcm.blocks(hop * 3000)  # 60 s blocks, whole hops but for the last
    ]
    levels = np.concatenate(rms) if rms else np.zeros(0, np.float32)  # (samples // hop,) RMS
    if len(levels) == 0:
        return 1.0
    level = float(np.percentile(levels, 95))
    if level < SILENCE_RMS:
        return 1.0
    return min(MAX_GAIN, TARGET_RMS / level)


def warp_features(pcm: Pcm, fps: Fraction, frames: int) -> ChunkFeatures:
    """16 kHz mono waveform → per chunk of frames, (n, WINDOW) float32 band levels
    centred on each frame, the clip's loudness normalised first."""
    scaled = pcm.scaled(loudness_gain(pcm))
    n_cols = mel_column_count(pcm.samples)

    def chunk(span: range) -> np.ndarray:
        # Frame i is on screen from i/fps to (i+1)/fps; its window is centred on the middle.
        idx = np.arange(span.start, span.stop)
        centre = np.floor((idx + 0.5) * MEL_FPS / float(fps)).astype(int)
        cols = (centre - WINDOW // 2)[:, None] + np.arange(WINDOW)[None, :]  # (n, WINDOW) mel columns
        inside = (cols >= 0) & (cols < n_cols)  # columns past either end read as silence
        if not inside.any():
            return np.full(cols.shape, -MAX_ABS, np.float32)
        first, stop = int(cols[inside].min()), int(cols[inside].max()) + 1
        level = mel_columns(scaled, first, stop)[SPEECH_BANDS].mean(axis=0)  # (stop - first,)
        out = np.full(cols.shape, -MAX_ABS, np.float32)
        out[inside] = level[cols[inside] - first]
        return out

    return chunk


class WarpMotion(nn.Module):
    """(B, WINDOW) band levels → (B, 1) mouth opening in [0, 1]."""

    weights: torch.Tensor  # (WINDOW,) Hann weights summing to 1

    def __init__(self) -> None:
        super().__init__()
        w = torch.hann_window(WINDOW + 2, periodic=False)[1:-1]
        self.register_buffer("weights", w / w.sum())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        level = (features * self.weights).sum(dim=1, keepdim=True)
        return ((level - LEVEL_CLOSED) / (LEVEL_OPEN - LEVEL_CLOSED)).clamp(0.0, 1.0)


def _smoothstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class WarpRender(nn.Module):
    """(B, 3, S, S) crops in [0, 1] and (B, 1) openings → (B, 3, S, S) crops."""

    base: torch.Tensor  # (1, S, S, 2) identity sampling grid, x then y
    pull: torch.Tensor  # (1, S, S) downward shift at full opening, crop units
    x: torch.Tensor  # (1, S, S) x coordinate of each pixel
    y: torch.Tensor  # (1, S, S) y coordinate of each pixel
    interior: torch.Tensor  # (1, 3, 1, 1) mouth-interior colour, BGR

    def __init__(self, size: int = CROP_SIZE):
        super().__init__()
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        gx = torch.exp(-((x / (MOUTH_HALF_WIDTH * 1.6)) ** 2))
        # Downward pull: 0 above the mouth line, 1 just below it, fading out past the chin.
        down = _smoothstep((y - MOUTH_Y) / 0.05) * (1 - _smoothstep((y - CHIN_Y - 0.05) / 0.4))
        # Upward push of the upper lip: strongest at the mouth line, gone by the nose.
        up = _smoothstep((y - MOUTH_Y + 0.15) / 0.12) * (1 - _smoothstep((y - MOUTH_Y) / 0.03))
        self.register_buffer("base", torch.stack([x, y], dim=-1)[None])  # (1, S, S, 2)
        self.register_buffer("pull", (gx * JAW_DROP * down - gx * LIP_RAISE * up)[None])  # (1, S, S)
        self.register_buffer("x", x[None])
        self.register_buffer("y", y[None])
        self.register_buffer("interior", torch.tensor(INTERIOR_BGR).view(1, 3, 1, 1))

    def forward(self, crops: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        a = codes.view(-1, 1, 1)  # (B, 1, 1) opening
        # Output pixel (x, y) shows the input at (x, y - a·pull): content moves down by a·pull.
        dy = a * self.pull  # (B, S, S)
        grid = self.base - torch.stack([torch.zeros_like(dy), dy], dim=-1)
        warped = F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # Dark interior between the moved lips: an ellipse whose height follows the opening.
        centre = MOUTH_Y + a * (JAW_DROP - LIP_RAISE) / 2
        half_h = a * (JAW_DROP + LIP_RAISE) * 0.45 + 1e-3
        r = torch.sqrt((self.x / (MOUTH_HALF_WIDTH * 0.7)) ** 2 + ((self.y - centre) / half_h) ** 2)
        alpha = ((1.0 - r) / 0.35).clamp(0.0, 1.0) * (a * 8.0).clamp(0.0, 1.0)  # (B, S, S)
        alpha = alpha.unsqueeze(1)
        return warped * (1 - alpha) + self.interior * alpha


def _load_stages(checkpoint: Path | None) -> dict[str, nn.Module]:
    return {"motion": WarpMotion().eval(), "render": WarpRender().eval()}


PACK = PackSpec(
    name="warp",
    geometry=GEOMETRY,
    features=warp_features,
    stages=frame_stages(CROP_SIZE, (WINDOW,), (1,)),
    paste_mask=feathered_ellipse(CROP_SIZE, centre=(0.0, MOUTH_Y + 0.12), radii=(0.5, 0.38), feather=0.25),
    paste_mode="residual",
    load_stages=_load_stages,
    # ONNX Runtime's CPU GridSample runs the render stage 3.4× slower than torch's.
    cpu_backends=("pytorch", "onnxruntime"),
)
