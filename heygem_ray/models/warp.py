"""The ``warp`` pack's two networks: deterministic, no weights.

* motion: a Hann-weighted mean of a frame's 10 speech-band levels mapped to a mouth
  opening in [0, 1]; (N, 1). Silence gives 0: the mouth stays closed.
* render: warps the lower face of the square crop with ``grid_sample``: the jaw and
  lower lip move down, the upper lip up a little, and the gap between them is filled
  with a dark mouth interior.

Crop coordinates below are grid_sample's: x and y in [-1, 1], y pointing down. The
square crop is centred across on the mouth and puts it at y = 0.2; the chin falls near
y = 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heygem_ray.models.sizes import WARP_CROP, WARP_MOUTH_Y, WARP_WINDOW

CROP_SIZE = WARP_CROP
WINDOW = WARP_WINDOW  # mel columns per frame (125 ms at 80 columns/s)

# Band level (normalised mel units, −4 … 4) mapped to opening 0 and 1.
LEVEL_CLOSED = -3.0
LEVEL_OPEN = -1.0

# Mouth layout in crop coordinates, and how far the lips move at full opening.
MOUTH_Y = WARP_MOUTH_Y
MOUTH_HALF_WIDTH = 0.26
CHIN_Y = 0.5
JAW_DROP = 0.085
LIP_RAISE = 0.03
INTERIOR_BGR = (0.10, 0.08, 0.22)  # dark red-brown, BGR in [0, 1]


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
