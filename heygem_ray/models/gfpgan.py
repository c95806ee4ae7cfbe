"""GFPGAN v1.3 / v1.4 face restoration ("clean" architecture), built so that the public
``GFPGANv1.4.pth`` and ``GFPGANv1.3.pth`` load unchanged.

The network is a U-Net whose encoder reads a 512×512 face and whose decoder is a
StyleGAN2 generator: the encoder's bottleneck gives one style code per decoder layer, and
every decoder level is modulated (spatial feature transform, on half its channels) by a
scale and a shift computed from the U-Net's upsampling path at the same resolution.
Module names follow the public code (``conv_body_down``, ``stylegan_decoder.style_convs``,
``condition_scale``, ...), so ``state_dict()`` has its 285 keys and shapes.

Differences from the public ``GFPGANv1Clean.forward``, none of which changes a number
beyond float rounding:

* Noise: always the decoder's stored noise buffers (``stylegan_decoder.noises.noise0`` …
  ``noise14``), the public ``randomize_noise=False``. The public wrapper draws fresh
  noise on every call (its default), which makes a video flicker; here the output is a
  function of the input alone and nothing is ever drawn.
* Modulated convolutions scale the input's channels by the style and the output's by
  the demodulation factor around one shared convolution, instead of building a weight per
  sample and running a grouped convolution. Same arithmetic, but the graph has fixed
  weights and no batch-sized group count, so it exports with a dynamic batch axis and
  TensorRT builds it as ordinary convolutions.
* ``forward`` returns the restored image only, clamped to [-1, 1] (the first step of the
  public post-processing); the public one also returns the intermediate RGB images.
* The public wrapper passes ``weight=0.5`` (``GFPGANer.enhance``); the clean architecture
  ignores it, so there is no such parameter here.
* The StyleGAN2 mapping network (``stylegan_decoder.style_mlp``) is kept for the
  checkpoint's keys but never runs: v1.3/v1.4 feed the encoder's codes in as latents.

Tensors (float32):

* stage input ``faces``: (B, 3, 512, 512) RGB in [-1, 1], a face aligned to the FFHQ
  template (``heygem_ray.face.align``); ``to_network`` makes it from uint8 BGR faces.
* stage output ``restored``: the same shape, RGB in [-1, 1]; ``to_faces`` turns it back
  into uint8 BGR exactly as the public ``tensor2img(..., rgb2bgr=True, min_max=(-1, 1))``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heygem_ray.errors import InputError, InternalError
from heygem_ray.models.checkpoint import SHOWN_KEYS, check_keys, check_values, read_weights, unwrapped, weights_file
from heygem_ray.packs import StageIO, TensorSpec

__all__ = ["FACE_SIZE", "STAGE_IO", "GFPGANConfig", "GFPGANv1Clean", "load", "restore", "to_faces", "to_network"]

FACE_SIZE = 512  # side of the aligned face, pixels
_LOG_SIZE = 9  # log2(FACE_SIZE): the encoder halves 512 → 4 in 7 steps, the decoder doubles back
_LEVELS = range(3, _LOG_SIZE + 1)  # log2 of the resolutions 8 … 512 that have an up/down block
NUM_LATENTS = 2 * _LOG_SIZE - 2  # style codes, one per decoder layer (16)
NUM_NOISES = 2 * (_LOG_SIZE - 2) + 1  # noise buffers, one per style convolution (15)
_SLOPE = 0.2  # leaky ReLU's negative slope, everywhere
_EPS = 1e-8  # demodulation's epsilon

# The declared I/O of the restoration stage, for export and the runners.
STAGE_IO: StageIO = (
    (TensorSpec("faces", (3, FACE_SIZE, FACE_SIZE)),),
    (TensorSpec("restored", (3, FACE_SIZE, FACE_SIZE)),),
)

# StyleGAN2's channels per resolution at narrow 1 before the channel multiplier, which
# applies from 64 px up.
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32}
_MULTIPLIED_FROM = 64

_FIX = (
    "Pass the public GFPGANv1.4.pth (or GFPGANv1.3.pth) from the GFPGAN v1.3.0 release; "
    "GFPGANv1.pth (the paper model) and RestoreFormer.pth are other architectures"
)


@dataclass(frozen=True)
class GFPGANConfig:
    """The width of the network. The defaults are v1.3/v1.4's; a smaller ``narrow`` (the
    public code's parameter: a factor on every channel count) or ``num_style_feat`` gives
    a small network of the same architecture, for tests. The U-Net uses half the
    decoder's channels at every resolution."""

    narrow: float = 1.0
    channel_multiplier: int = 2
    num_style_feat: int = 512  # width of a style code
    num_mlp: int = 8  # linear layers of the (unused) mapping network

    def channels(self, resolution: int, unet: bool = False) -> int:
        """Feature channels at ``resolution`` px in the decoder, or the U-Net (``unet``)."""
        multiplier = self.channel_multiplier if resolution >= _MULTIPLIED_FROM else 1
        width = self.narrow * 0.5 if unet else self.narrow
        return int(_BASE_CHANNELS[resolution] * multiplier * width)


# -- the U-Net ---------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """3×3 conv, resample ×2 or ×½ (bilinear), 3×3 conv, plus a resampled 1×1 skip."""

    def __init__(self, cin: int, cout: int, scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.conv1(x), _SLOPE)
        out = F.leaky_relu(self.conv2(self._resample(out)), _SLOPE)
        return out + self.skip(self._resample(x))

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


def _sft_branch(c: int) -> nn.Sequential:
    """conv 3×3, leaky ReLU, conv 3×3: one SFT scale or shift map (``c`` channels, the
    half of the decoder's channels that is modulated)."""
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(_SLOPE), nn.Conv2d(c, c, 3, 1, 1))


# -- the StyleGAN2 decoder ---------------------------------------------------------------------


class ModulatedConv2d(nn.Module):
    """A StyleGAN2 modulated convolution (no bias), optionally after a ×2 bilinear upsample.

    For sample b: conv(x_b, w · s_b) · d_b, where s_b = modulation(latent_b) scales the
    input channels and d_b[o] = 1 / sqrt(Σ_{i,k} (w[o,i,k] s_b[i])² + ε) normalises each
    output channel (``demodulate``). Computed as conv(x_b · s_b, w) · d_b: one convolution
    with fixed weights for the whole batch.
    """

    def __init__(self, cin: int, cout: int, kernel: int, num_style_feat: int, demodulate: bool,
                 upsample: bool = False):
        super().__init__()
        self.modulation = nn.Linear(num_style_feat, cin)
        self.weight = nn.Parameter(torch.empty(1, cout, cin, kernel, kernel))  # leading 1: the public layout
        self.padding = kernel // 2
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W), (B, num_style_feat) → (B, Cout, H, W), or 2H × 2W when upsampling."""
        style = self.modulation(latent)  # (B, Cin)
        weight = self.weight[0]  # (Cout, Cin, k, k)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        out = F.conv2d(x * style[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:
            # (Cout, Cin): Σ_k w², as a squared norm: exported as ReduceL2 on the convolution's
            # own weight tensor, where w² would be folded into a second copy of every weight.
            energy = torch.linalg.vector_norm(weight, dim=(2, 3)).square()
            demod = torch.rsqrt(style.square() @ energy.t() + _EPS)  # (B, Cout)
            out = out * demod[:, :, None, None]
        return out


class StyleConv(nn.Module):
    """Modulated 3×3 conv (×√2), plus the fixed noise map times a learnt strength, plus a
    bias, then leaky ReLU."""

    def __init__(self, cin: int, cout: int, num_style_feat: int, upsample: bool = False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(cin, cout, 3, num_style_feat, demodulate=True, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # the noise's strength
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``noise``: (1, 1, H, W) at the output's resolution, the same for every sample."""
        out = self.modulated_conv(x, latent) * math.sqrt(2)
        return F.leaky_relu(out + self.weight * noise + self.bias, _SLOPE)


class ToRGB(nn.Module):
    """Modulated 1×1 conv to RGB (not demodulated) plus a bias, added to the previous
    level's RGB upsampled ×2 (``skip``)."""

    def __init__(self, cin: int, num_style_feat: int):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(cin, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, latent: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, latent) + self.bias
        if skip is None:
            return out
        return out + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)


class ConstantInput(nn.Module):
    """The decoder's learnt 4×4 starting map, the same for every sample."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, channels, 4, 4))

    def forward(self) -> torch.Tensor:
        """(1, C, 4, 4): one map for the whole batch; the first modulated convolution
        broadcasts it to the batch of its styles, so no batch size is ever read."""
        return self.weight


class StyleGAN2Decoder(nn.Module):
    """The StyleGAN2 generator with SFT: 16 style codes and the U-Net's scale/shift maps
    → a 512×512 RGB image. The public ``StyleGAN2GeneratorCSFT`` with ``sft_half=True``."""

    def __init__(self, config: GFPGANConfig):
        super().__init__()
        nsf = config.num_style_feat
        # The mapping network: its weights are in the checkpoint, but v1.3/v1.4 give the
        # decoder latents directly, so it never runs. Index 0 (the public pixel norm) has no
        # weights; linear layers sit at odd indices.
        mapping: list[nn.Module] = [nn.Identity()]
        for _ in range(config.num_mlp):
            mapping += [nn.Linear(nsf, nsf), nn.LeakyReLU(_SLOPE)]
        self.style_mlp = nn.Sequential(*mapping)
        c4 = config.channels(4)
        self.constant_input = ConstantInput(c4)
        self.style_conv1 = StyleConv(c4, c4, nsf)
        self.to_rgb1 = ToRGB(c4, nsf)
        self.style_convs = nn.ModuleList()  # per level: an upsampling conv, then a plain one
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(NUM_NOISES):
            # noise0 is 4×4; then two per resolution: 8, 8, 16, 16, …, 512, 512.
            side = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.empty(1, 1, side, side))
        cin = c4
        for level in _LEVELS:
            cout = config.channels(2**level)
            self.style_convs.append(StyleConv(cin, cout, nsf, upsample=True))
            self.style_convs.append(StyleConv(cout, cout, nsf))
            self.to_rgbs.append(ToRGB(cout, nsf))
            cin = cout
        # Channels per level left as they are by the SFT, then modulated (the halves).
        self._sft_channels = [config.channels(2**level) // 2 for level in _LEVELS]

    def forward(self, latents: torch.Tensor, conditions: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(B, 16, num_style_feat) latents, one (scale, shift) pair per level 8 … 512 px,
        each (B, C/2, r, r) → (B, 3, 512, 512) RGB, unclamped."""
        noise = [getattr(self.noises, f"noise{i}") for i in range(NUM_NOISES)]
        out = self.style_conv1(self.constant_input(), latents[:, 0], noise[0])
        rgb = self.to_rgb1(out, latents[:, 1])
        for k, (scale, shift) in enumerate(conditions):
            layer = 2 * k + 1  # index of this level's first style conv, its latent and its noise
            out = self.style_convs[2 * k](out, latents[:, layer], noise[layer])
            # SFT on the second half of the channels; the first half passes unchanged.
            kept, modulated = out.split(self._sft_channels[k], dim=1)
            out = torch.cat([kept, modulated * scale + shift], dim=1)
            out = self.style_convs[2 * k + 1](out, latents[:, layer + 1], noise[layer + 1])
            rgb = self.to_rgbs[k](out, latents[:, layer + 2], rgb)
        return rgb


# -- the whole network -------------------------------------------------------------------------


class GFPGANv1Clean(nn.Module):
    """GFPGAN v1.3/v1.4: (B, 3, 512, 512) RGB in [-1, 1] → restored, the same shape, in [-1, 1].

    86.4 M parameters and 285 state-dict entries at the default config.
    """

    def __init__(self, config: GFPGANConfig | None = None):
        super().__init__()
        self.config = config = config or GFPGANConfig()

        def unet(resolution: int) -> int:
            return config.channels(resolution, unet=True)

        self.conv_body_first = nn.Conv2d(3, unet(FACE_SIZE), 1)
        # Encoder: 512 → 256 → … → 4 px.
        self.conv_body_down = nn.ModuleList(
            ResBlock(unet(2**level), unet(2 ** (level - 1)), 0.5) for level in reversed(_LEVELS)
        )
        self.final_conv = nn.Conv2d(unet(4), unet(4), 3, 1, 1)
        # Decoder side of the U-Net: 4 → 8 → … → 512 px.
        self.conv_body_up = nn.ModuleList(ResBlock(unet(2 ** (level - 1)), unet(2**level), 2) for level in _LEVELS)
        # The public training's intermediate RGB outputs: in the checkpoint, not used to restore.
        self.toRGB = nn.ModuleList(nn.Conv2d(unet(2**level), 3, 1) for level in _LEVELS)
        self.final_linear = nn.Linear(unet(4) * 4 * 4, NUM_LATENTS * config.num_style_feat)
        self.stylegan_decoder = StyleGAN2Decoder(config)
        self.condition_scale = nn.ModuleList(_sft_branch(unet(2**level)) for level in _LEVELS)
        self.condition_shift = nn.ModuleList(_sft_branch(unet(2**level)) for level in _LEVELS)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 3, 512, 512) RGB in [-1, 1] → (B, 3, 512, 512) RGB in [-1, 1]."""
        feat = F.leaky_relu(self.conv_body_first(faces), _SLOPE)
        skips = []  # encoder outputs, 256 px first
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), _SLOPE)  # (B, C, 4, 4)
        latents = self.final_linear(feat.flatten(1)).view(-1, NUM_LATENTS, self.config.num_style_feat)
        conditions = []
        for block, scale, shift, skip in zip(self.conv_body_up, self.condition_scale, self.condition_shift,
                                             reversed(skips), strict=True):
            feat = block(feat + skip)  # 4 px (+ the 4 px skip) → 8 px, …
            conditions.append((scale(feat), shift(feat)))
        return self.stylegan_decoder(latents, conditions).clamp(-1.0, 1.0)


# -- pre- and post-processing ------------------------------------------------------------------

# The network's input value of each 8-bit level, computed as the public code does (÷255 in
# float64, to float32, then (x − 0.5) / 0.5 in float32): looked up, the same numbers.
_INPUT_LEVELS = (((np.arange(256) / 255.0).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)).astype(np.float32)


def to_network(faces: np.ndarray) -> np.ndarray:
    """(k, 512, 512, 3) uint8 BGR aligned faces → (k, 3, 512, 512) float32 RGB in [-1, 1],
    as the public ``img2tensor(face / 255., bgr2rgb=True)`` and ``normalize(0.5, 0.5)``."""
    _check_faces(faces)
    return np.ascontiguousarray(_INPUT_LEVELS[faces[..., ::-1]].transpose(0, 3, 1, 2))


def to_faces(restored: np.ndarray) -> np.ndarray:
    """(k, 3, 512, 512) float32 RGB → (k, 512, 512, 3) uint8 BGR, as the public
    ``tensor2img(..., rgb2bgr=True, min_max=(-1, 1))``: clamp, to [0, 1], ×255, round."""
    unit = (np.clip(restored.astype(np.float32, copy=False), -1.0, 1.0) + np.float32(1.0)) / np.float32(2.0)
    pixels = (unit.transpose(0, 2, 3, 1) * np.float32(255.0)).round().astype(np.uint8)
    return np.ascontiguousarray(pixels[..., ::-1])


def _check_faces(faces: np.ndarray) -> None:
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
        raise InternalError(f"GFPGAN restores (k, {FACE_SIZE}, {FACE_SIZE}, 3) uint8 faces, "
                            f"got {faces.dtype}{list(faces.shape)}")


def restore(net: GFPGANv1Clean, faces: np.ndarray) -> np.ndarray:
    """(k, 512, 512, 3) uint8 BGR faces aligned to the FFHQ template → restored, the same
    shape: the public ``GFPGANer.enhance(face, has_aligned=True)`` with its network's stored
    noise. Runs in one batch on the device ``net`` is on; the same faces always give the
    same result."""
    first = next(net.parameters())
    x = torch.from_numpy(to_network(faces)).to(device=first.device, dtype=first.dtype)
    with torch.inference_mode():
        out = net(x)
    return to_faces(out.float().cpu().numpy())


# -- loading ------------------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> GFPGANv1Clean:
    """The network of a public GFPGAN v1.3/v1.4 checkpoint, in eval mode on the CPU.

    The file is a dict whose ``params_ema`` (else ``params``) is the state dict. The width
    is read from its shapes (the v1.3/v1.4 files give the default config; narrow test
    checkpoints load through here too); then every key and shape must be exactly the
    architecture's. The weights are memory-mapped where the file's format allows.
    """
    path = weights_file(path, "GFPGAN checkpoint", _FIX)
    sd = _state_dict(path, read_weights(path, _FIX, mmap=True))
    config = _infer_config(path, sd)
    with torch.device("meta"):  # no memory and no initialisation for weights about to be replaced
        net = GFPGANv1Clean(config)
    check_keys(sd, net, f"{path} is not a GFPGAN v1.3/v1.4 clean checkpoint", _FIX)
    check_values(sd, str(path), _FIX)
    net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    return net.eval()


def _state_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: not a GFPGAN checkpoint (a {type(obj).__name__}, not a dict). {_FIX}",
                         kind="bad_checkpoint")
    name = "params_ema" if "params_ema" in obj else "params"
    sd = obj.get(name)
    bare = unwrapped(obj)
    if sd is None and _KEY_C4 in bare:  # its state dict itself, re-saved (or from safetensors), perhaps DataParallel's
        name, sd = "its state dict", bare
    if not isinstance(sd, Mapping):
        if (other := _other_model(obj)) is not None:
            raise InputError(f"{path} is {other}, not GFPGAN's (face restoration). {_FIX}", kind="bad_checkpoint")
        found = ", ".join(sorted(map(str, obj))[:SHOWN_KEYS])
        raise InputError(f"{path}: not a GFPGAN checkpoint: no 'params_ema' or 'params' state dict "
                         f"(its keys: {found}). {_FIX}", kind="bad_checkpoint")
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{path}: '{name}' is not a state dict of tensors. {_FIX}", kind="bad_checkpoint")
    return unwrapped(sd)


def _other_model(obj: Mapping[Any, Any]) -> str | None:
    """Whose weights a checkpoint that is no GFPGAN's holds, as the user would pass them on
    (a pack's file given to --restore-checkpoint), in words; None where not known."""
    inner = obj.get("state_dict", obj)
    keys = [k.removeprefix("module.") for k in inner if isinstance(k, str)] if isinstance(inner, Mapping) else []
    if any(k.startswith("face_decoder_blocks.") for k in keys):
        return "a Wav2Lip checkpoint (the lip-sync pack's: give it to --checkpoint with --pack wav2lip)"
    if any(k.startswith(("face_encoder_blocks.", "face_encoder.", "audio_encoder.")) for k in keys):
        return ("one of the networks Wav2Lip's release trains its generator with (the lip-sync expert "
                "lipsync_expert.pth, or the visual quality discriminator visual_quality_disc.pth): neither renders")
    if any(k.startswith(("down_blocks.", "encoder.down_blocks.", "encoder.conv_in.")) for k in keys):
        return "a UNet or VAE of a diffusion model (MuseTalk's: give its models/ folder to --checkpoint with --pack musetalk)"
    return None


# Keys whose shapes give the config: (1, C, 4, 4) decoder channels at 4 px; (1, 3, C, 1, 1)
# decoder channels at 512 px; (Cin, num_style_feat).
_KEY_C4 = "stylegan_decoder.constant_input.weight"
_KEY_C512 = f"stylegan_decoder.to_rgbs.{len(_LEVELS) - 1}.modulated_conv.weight"
_KEY_STYLE = "stylegan_decoder.style_conv1.modulated_conv.modulation.weight"
_MLP_KEY = re.compile(r"^stylegan_decoder\.style_mlp\.\d+\.weight$")


def _infer_config(path: Path, sd: Mapping[str, torch.Tensor]) -> GFPGANConfig:
    """The config whose shapes ``sd`` has; its other keys are checked against it afterwards."""
    missing = [k for k in (_KEY_C4, _KEY_C512, _KEY_STYLE) if k not in sd]
    if missing:
        raise InputError(f"{path} is not a GFPGAN v1.3/v1.4 clean checkpoint: no {', '.join(missing)}. {_FIX}",
                         kind="bad_checkpoint")
    c4, c512, nsf = sd[_KEY_C4].shape[1], sd[_KEY_C512].shape[2], sd[_KEY_STYLE].shape[1]
    narrow = c4 / _BASE_CHANNELS[4]
    multiplier = c512 / (_BASE_CHANNELS[FACE_SIZE] * narrow)
    if multiplier < 1 or multiplier != round(multiplier):
        raise InputError(f"{path} is not a GFPGAN v1.3/v1.4 clean checkpoint: its decoder has {c4} channels at "
                         f"4 px and {c512} at 512 px, no channel multiplier gives both. {_FIX}", kind="bad_checkpoint")
    return GFPGANConfig(narrow=narrow, channel_multiplier=round(multiplier), num_style_feat=nsf,
                        num_mlp=sum(1 for k in sd if _MLP_KEY.match(k)))
