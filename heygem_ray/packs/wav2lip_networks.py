"""The ``wav2lip`` pack's two stages over the public generator (``models/wav2lip.py``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from heygem_ray.errors import InputError
from heygem_ray.models.wav2lip import FACE_SIZE, Wav2Lip, convolution_form, load


class Wav2LipMotion(nn.Module):
    """(B, 1, 80, 16) mel windows → (B, 512, 1, 1) audio codes."""

    def __init__(self, model: Wav2Lip):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.encode_audio(features)


class Wav2LipRender(nn.Module):
    """(B, 3, 96, 96) BGR crops in [0, 1] and (B, 512, 1, 1) codes → (B, 3, 96, 96)."""

    keep_upper: torch.Tensor  # (1, 1, 96, 96): 1 on rows 0..47, 0 below

    def __init__(self, model: Wav2Lip):
        super().__init__()
        self.model = model
        lower = torch.ones(1, 1, FACE_SIZE, FACE_SIZE)
        lower[..., FACE_SIZE // 2 :, :] = 0.0  # rows 48..95 hidden from the model
        self.register_buffer("keep_upper", lower)

    def forward(self, crops: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        face = torch.cat([crops * self.keep_upper, crops], dim=1)  # (B, 6, 96, 96)
        return self.model.decode(face, codes)


def int8_form(stage: str, module: nn.Module) -> nn.Module:
    """The render stage with its decoder's transposed convolutions as ordinary ones
    (``models.wav2lip.PhaseConvBlock``), so they quantize too."""
    if isinstance(module, Wav2LipRender):
        return Wav2LipRender(convolution_form(module.model)).eval()
    return module


def load_stages(checkpoint: Path | None) -> dict[str, nn.Module]:
    if checkpoint is None:
        raise InputError(
            "the wav2lip pack needs --checkpoint PATH (the public wav2lip.pth or wav2lip_gan.pth)",
            kind="bad_argument",
        )
    model = load(checkpoint)
    return {"motion": Wav2LipMotion(model).eval(), "render": Wav2LipRender(model).eval()}
