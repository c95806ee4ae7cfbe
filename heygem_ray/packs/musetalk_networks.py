"""The ``musetalk`` pack's three stages over MuseTalk 1.5's networks (``models/musetalk.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from heygem_ray.errors import InputError
from heygem_ray.models.musetalk import CROP, FILES, VAE_SCALE, load, position_code
from heygem_ray.packs.musetalk import EXTRACTOR_SETTINGS, TOKENS, whisper_extractor


class MuseTalkReference(nn.Module):
    """(B, 3, 256, 256) BGR crops in [0, 1] → (B, 8, 32, 32): the scaled latent (the
    posterior's mode) of the crop with its lower half at −1, then of the whole crop."""

    keep_upper: torch.Tensor  # (1, 1, 256, 256): 1 on rows 0..127, 0 below

    def __init__(self, vae: Any):  # diffusers AutoencoderKL
        super().__init__()
        self.vae = vae
        keep = torch.ones(1, 1, CROP, CROP)
        keep[..., CROP // 2 :, :] = 0.0  # the mouth's half, to be painted
        self.register_buffer("keep_upper", keep)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        rgb = crops.flip(1)
        halves = [self.vae.encode((image - 0.5) / 0.5).latent_dist.mode() for image in (rgb * self.keep_upper, rgb)]
        return torch.cat(halves, dim=1) * VAE_SCALE


class MuseTalkMotion(nn.Module):
    """(B, 80, 3000) log-mel of 30 s segments → (B, 1500, 5, 384): the Whisper encoder's
    five hidden states (embeddings, the three inner layers, the normed last), stacked."""

    def __init__(self, whisper: Any):  # transformers WhisperEncoder
        super().__init__()
        self.whisper = whisper

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.whisper(features, output_hidden_states=True).hidden_states, dim=2)


class MuseTalkRender(nn.Module):
    """(B, 8, 32, 32) reference latents and (B, 50, 384) speech tokens → (B, 3, 256, 256)
    BGR in [0, 1]: the UNet at t = 0 on the tokens plus their position code, decoded."""

    position: torch.Tensor  # (50, 384) sinusoidal position code

    def __init__(self, unet: Any, vae: Any):  # diffusers UNet2DConditionModel, AutoencoderKL
        super().__init__()
        self.unet, self.vae = unet, vae
        self.register_buffer("position", position_code(*TOKENS))

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = torch.zeros((), dtype=torch.long, device=latents.device)
        painted = self.unet(latents, t, encoder_hidden_states=tokens + self.position).sample
        image = self.vae.decode(painted / VAE_SCALE).sample  # RGB in [-1, 1]
        return (image / 2 + 0.5).clamp(0, 1).flip(1)


def load_stages(checkpoint: Path | None) -> dict[str, nn.Module]:
    if checkpoint is None:
        raise InputError("the musetalk pack needs --checkpoint DIR (MuseTalk's models/ folder)", kind="bad_argument")
    models = load(checkpoint)
    standard = whisper_extractor()
    differ = [k for k in EXTRACTOR_SETTINGS if getattr(models.features, k) != getattr(standard, k)]
    if differ:
        raise InputError(
            f"{Path(checkpoint) / FILES['whisper_features']}: {', '.join(differ)} differ from whisper-tiny's "
            "(the settings MuseTalk 1.5 was trained with); use the file MuseTalk's download script fetches",
            kind="bad_checkpoint",
        )
    return {
        "reference": MuseTalkReference(models.vae).eval(),
        "motion": MuseTalkMotion(models.whisper).eval(),
        "render": MuseTalkRender(models.unet, models.vae).eval(),
    }
