"""The public Wav2Lip generator, built so that its published checkpoints load unchanged.

Module names follow the public code exactly (``audio_encoder``, ``face_encoder_blocks``,
``face_decoder_blocks``, ``output_block``, each block's ``conv_block``), so that
``state_dict()`` has the same 352 keys and shapes as ``wav2lip.pth`` / ``wav2lip_gan.pth``.

Inputs and outputs (all float32):

* mel window: (B, 1, 80, 16): 80 mel bands × 16 columns (200 ms at 80 columns/s), values
  in [-4, 4] from :func:`heygem_ray.features.wav2lip_mel`.
* face: (B, 6, 96, 96) BGR in [0, 1]: channels 0-2 the crop with its lower half (rows
  48..95) zeroed, channels 3-5 the unmasked reference crop.
* output: (B, 3, 96, 96) BGR in [0, 1]: the crop with generated lips.

The forward pass is split in two stages so a pipeline can run them apart:
``forward(mel, face) == decode(face, encode_audio(mel))``.

``convolution_form`` gives the same generator with its decoder's transposed convolutions
written as ordinary ones (``PhaseConvBlock``): the form its int8 graph is exported in.
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn

from heygem_ray.errors import InputError, InternalError
from heygem_ray.features import MEL_STEP, N_MELS
from heygem_ray.models.checkpoint import check_keys, check_values, read_weights, unwrapped, weights_file
from heygem_ray.models.sizes import WAV2LIP_EMBED, WAV2LIP_FACE

# MEL_STEP: mel columns per video frame (200 ms at 80 columns/s); N_MELS: mel bands.
# Both are defined with the features that produce them and re-exported here.
__all__ = ["EMBED_DIM", "FACE_SIZE", "MEL_STEP", "N_MELS", "ConvBlock", "ConvTransposeBlock", "PhaseConvBlock",
           "Wav2Lip", "convolution_form", "load", "weights_hash"]

FACE_SIZE = WAV2LIP_FACE  # side of the square face crop, pixels
EMBED_DIM = WAV2LIP_EMBED  # channels of the audio embedding and of the face bottleneck

_FIX = "Pass the public wav2lip.pth or wav2lip_gan.pth generator checkpoint, not the discriminator/expert."


class ConvBlock(nn.Module):
    """Conv → BatchNorm (→ + input when ``residual``) → ReLU. The public ``Conv2d``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int,
                 residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class ConvTransposeBlock(nn.Module):
    """ConvTranspose → BatchNorm → ReLU. The public ``Conv2dTranspose``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, output_padding: int = 0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _phase_taps(kernel: int, stride: int, padding: int, phase: int) -> list[tuple[int, int]]:
    """(d, tap) pairs of one phase of a transposed convolution along one axis: output pixel
    ``stride * m + phase`` takes input pixel ``m + d`` through kernel tap ``tap``.

    A transposed convolution sends input pixel i through tap k to output pixel
    ``stride * i + k - padding``; for that to be ``stride * m + phase``, k − phase − padding
    must be a multiple of the stride, and then i − m = −(k − phase − padding) / stride.
    """
    return [(-((tap - phase - padding) // stride), tap) for tap in range(kernel)
            if (tap - phase - padding) % stride == 0]


class PhaseConvBlock(nn.Module):
    """A ``ConvTransposeBlock`` (transposed convolution, BatchNorm, ReLU) as ordinary
    convolutions: the same function to float rounding, in layers an int8 runtime quantizes
    (ONNX Runtime has no int8 transposed convolution on a CPU).

    A transposed convolution of stride s computes output pixel (s·m + r_y, s·n + r_x) from
    the input pixels (m + d_y, n + d_x) of a small window, through the kernel taps of its
    phase (r_y, r_x). Each of the s² phases is therefore a stride-1 convolution of the input
    with its own small kernel, those taps only (for Wav2Lip's 3×3 stride-2 layers: 1×1,
    1×2, 2×1 and 2×2, nine taps in all, as many multiplies as the transposed convolution),
    BatchNorm folded into it, then ReLU. The phase images are then interleaved into the
    s-times larger image (a pixel shuffle). The shuffle is written as reshapes around one
    transpose in NHWC order, its sizes fixed for an input of ``size`` pixels: ONNX
    Runtime's int8 convolutions run in NHWC, so the layout transposes it puts around them
    cancel against these and the shuffle moves 8-bit values (its DepthToSpace would run
    in float, between two layout changes).
    """

    def __init__(self, block: ConvTransposeBlock, size: int):
        super().__init__()
        up, norm = block.conv_block
        if not isinstance(up, nn.ConvTranspose2d) or not isinstance(norm, nn.BatchNorm2d):
            raise InternalError(f"PhaseConvBlock takes a ConvTransposeBlock, got {block}")
        pads, mean, var = up.padding, norm.running_mean, norm.running_var
        if isinstance(pads, str) or mean is None or var is None:
            raise InternalError(f"no phase form for {block}: numeric padding and BatchNorm running statistics needed")
        kernel, stride, padding, extra = up.kernel_size[0], up.stride[0], pads[0], up.output_padding[0]
        square = all(len(set(v)) == 1 for v in (up.kernel_size, up.stride, pads, up.output_padding))
        if not square or up.groups != 1 or up.dilation != (1, 1):
            raise InternalError(f"no phase form for {up}: square kernel, stride and padding, one group, no dilation")
        out_size = stride * (size - 1) - 2 * padding + kernel + extra
        if out_size % stride:
            raise InternalError(f"no phase form for {up} at {size} px: its {out_size} px are not whole phases")
        self.size, self.stride, self.channels = out_size // stride, stride, up.out_channels
        # BatchNorm (running statistics) folded into the weights and bias: y = w·x·g + (b − mean)·g + beta.
        gain = norm.weight.detach() / torch.sqrt(var + norm.eps)  # (C_out,)
        weight = up.weight.detach() * gain[None, :, None, None]  # (C_in, C_out, k, k)
        bias = up.bias.detach() if up.bias is not None else torch.zeros(up.out_channels)
        self.bias = nn.Parameter((bias - mean) * gain + norm.bias.detach())
        self.weights = nn.ParameterList()
        self.paddings: list[int | tuple[int, int] | str] = []
        taps = [_phase_taps(kernel, stride, padding, r) for r in range(stride)]
        if not all(taps):
            raise InternalError(f"no phase form for {up}: a phase with no kernel tap (stride above the kernel)")
        for ty in taps:  # phases in (r_y, r_x) order: the shuffle's channel order
            for tx in taps:
                self.weights.append(nn.Parameter(self._phase_weight(weight, ty, tx)))
                self.paddings.append(self._padding(size, ty, tx, up))

    @staticmethod
    def _phase_weight(weight: torch.Tensor, ty: list[tuple[int, int]], tx: list[tuple[int, int]]) -> torch.Tensor:
        """(C_in, C_out, k, k) transposed-convolution weights → (C_out, C_in, K_y, K_x) of a
        convolution whose tap (a, b) reads input pixel (m + d_y, n + d_x), d_y = a + min d_y."""
        (y0, _), (x0, _) = min(ty), min(tx)
        out = weight.new_zeros(weight.shape[1], weight.shape[0], max(ty)[0] - y0 + 1, max(tx)[0] - x0 + 1)
        for dy, ky in ty:
            for dx, kx in tx:
                out[:, :, dy - y0, dx - x0] = weight[:, :, ky, kx].T
        return out

    def _padding(self, size: int, ty: list[tuple[int, int]], tx: list[tuple[int, int]],
                 up: nn.ConvTranspose2d) -> int | tuple[int, int] | str:
        """The phase convolution's padding: (before, after) per axis so that it gives
        ``self.size`` outputs, as ``F.conv2d`` takes it (one ONNX Conv, no Pad node)."""
        pads = [(-min(t)[0], self.size - size + max(t)[0]) for t in (ty, tx)]
        if all(before == after for before, after in pads):
            return pads[0][0], pads[1][0]
        # "same": as many outputs as inputs, (K − 1) // 2 before and the rest after (K − 1 in all)
        if self.size == size and all(before == (after + before) // 2 for before, after in pads):
            return "same"
        raise InternalError(f"no phase form for {up} at {size} px: paddings {pads} need a Pad node")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, size, size) → (B, C_out, s·size', s·size') float32, size' = ``self.size``."""
        with warnings.catch_warnings():  # "same" with an even kernel pads a copy: this form is only exported
            warnings.filterwarnings("ignore", message="Using padding='same' with even kernel lengths")
            phases = [torch.relu(nn.functional.conv2d(x, w, self.bias, padding=p))  # (B, C_out, size', size') each
                      for w, p in zip(self.weights, self.paddings, strict=True)]
        s, n, c = self.stride, self.size, self.channels
        if s == 1:
            return phases[0]
        y = torch.cat(phases, dim=1).permute(0, 2, 3, 1)  # (B, n, n, s·s·C): channels (r_y, r_x, c)
        y = y.reshape(-1, n, s, s * c).transpose(1, 2)  # (B·n rows, r_y, n columns, (r_x, c))
        return y.reshape(-1, n * s, n * s, c).permute(0, 3, 1, 2)  # (B, C, s·n, s·n)


def _res(c: int) -> ConvBlock:
    """A 3×3 stride-1 residual block that keeps ``c`` channels and the spatial size."""
    return ConvBlock(c, c, 3, 1, 1, residual=True)


class Wav2Lip(nn.Module):
    """The public Wav2Lip generator (36.3 M parameters)."""

    def __init__(self) -> None:
        super().__init__()
        C, T = ConvBlock, ConvTransposeBlock
        # Sizes after each encoder block, for a 96×96 face: 96, 48, 24, 12, 6, 3, 1.
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(C(6, 16, 7, 1, 3)),
            nn.Sequential(C(16, 32, 3, 2, 1), _res(32), _res(32)),
            nn.Sequential(C(32, 64, 3, 2, 1), _res(64), _res(64), _res(64)),
            nn.Sequential(C(64, 128, 3, 2, 1), _res(128), _res(128)),
            nn.Sequential(C(128, 256, 3, 2, 1), _res(256), _res(256)),
            nn.Sequential(C(256, 512, 3, 2, 1), _res(512)),
            nn.Sequential(C(512, 512, 3, 1, 0), C(512, 512, 1, 1, 0)),
        ])
        # Mel window 80×16 → 27×16 → 9×6 → 3×3 → 1×1 (rows × columns).
        self.audio_encoder = nn.Sequential(
            C(1, 32, 3, 1, 1), _res(32), _res(32),
            C(32, 64, 3, (3, 1), 1), _res(64), _res(64),
            C(64, 128, 3, 3, 1), _res(128), _res(128),
            C(128, 256, 3, (3, 2), 1), _res(256),
            C(256, 512, 3, 1, 0), C(512, 512, 1, 1, 0),
        )
        # Each decoder block's input is the previous block's output concatenated with the
        # face encoder's skip of the same size, hence cin = previous cout + skip channels.
        # Sizes after each block: 1, 3, 6, 12, 24, 48, 96.
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(C(512, 512, 1, 1, 0)),
            nn.Sequential(T(1024, 512, 3, 1, 0), _res(512)),
            nn.Sequential(T(1024, 512, 3, 2, 1, 1), _res(512), _res(512)),
            nn.Sequential(T(768, 384, 3, 2, 1, 1), _res(384), _res(384)),
            nn.Sequential(T(512, 256, 3, 2, 1, 1), _res(256), _res(256)),
            nn.Sequential(T(320, 128, 3, 2, 1, 1), _res(128), _res(128)),
            nn.Sequential(T(160, 64, 3, 2, 1, 1), _res(64), _res(64)),
        ])
        self.output_block = nn.Sequential(C(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) float32 mel window in [-4, 4] → (B, 512, 1, 1) float32 embedding."""
        return self.audio_encoder(mel)

    def decode(self, face: torch.Tensor, audio_embedding: torch.Tensor) -> torch.Tensor:
        """(B, 6, 96, 96) BGR [0,1] masked+reference, (B, 512, 1, 1) → (B, 3, 96, 96) BGR in [0, 1]."""
        feats = []  # skip connections, (B, 16, 96, 96) … (B, 512, 1, 1)
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        x = audio_embedding  # (B, 512, 1, 1)
        for block in self.face_decoder_blocks:
            x = block(x)
            x = torch.cat((x, feats.pop()), dim=1)  # deepest skip first
        return self.output_block(x)  # (B, 80, 96, 96) → (B, 3, 96, 96)

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) mel window, (B, 6, 96, 96) BGR face pair → (B, 3, 96, 96) BGR in [0, 1]."""
        return self.decode(face_sequences, self.encode_audio(audio_sequences))


def convolution_form(model: Wav2Lip) -> Wav2Lip:
    """A copy of ``model`` (in eval mode) whose decoder's transposed convolutions are
    ``PhaseConvBlock``s, for 96 × 96 faces: the same function to float rounding."""
    form = copy.deepcopy(model).eval()
    size = 1  # the decoder starts from the 1 × 1 audio embedding; its other layers keep the size
    for block in form.face_decoder_blocks:
        layers = cast(nn.Sequential, block)
        if isinstance(layers[0], ConvTransposeBlock):
            phases = PhaseConvBlock(layers[0], size)
            layers[0] = phases
            size = phases.size * phases.stride
    return form


def _extract_state_dict(path: Path, obj: object) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a checkpoint dict (or the dict itself), ``module.`` stripped."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if isinstance(obj, Mapping) and ("params_ema" in obj or "params" in obj):
        raise InputError(f"{path} is a GFPGAN checkpoint (face restoration), not Wav2Lip's: give it to "
                         f"--restore-checkpoint with --restore gfpgan. {_FIX}", kind="bad_checkpoint")  # fmt: skip
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict of tensors (found {type(obj).__name__}). {_FIX}",
                         kind="bad_checkpoint")
    return unwrapped(obj)


def _training_network(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Which of the networks Wav2Lip's release trains its generator with ``sd`` holds, in
    words, or None: the lip-sync expert (SyncNet: ``face_encoder`` and ``audio_encoder``
    stacks, no decoder), or the visual quality discriminator (the generator's face encoder
    with a ``binary_pred`` head). Both come with the generator's files, by name alike."""
    if any(k.startswith("face_encoder.") for k in sd) and not any(k.startswith("face_decoder_blocks.") for k in sd):
        return "Wav2Lip's lip-sync expert discriminator (SyncNet, lipsync_expert.pth)"
    if any(k.startswith("binary_pred.") for k in sd):
        return "Wav2Lip's visual quality discriminator (visual_quality_disc.pth)"
    return None


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Wav2Lip:
    """Build the generator from a public checkpoint; returned in eval mode on ``map_location``.

    Accepts ``{"state_dict": sd, ...}`` or a bare ``sd``; keys may start with ``module.``.
    The key set and every shape must be exactly the public generator's.
    """
    path = weights_file(path, "checkpoint", _FIX)
    sd = _extract_state_dict(path, read_weights(path, _FIX, map_location=map_location))
    model = Wav2Lip()
    if (other := _training_network(sd)) is not None:
        raise InputError(f"{path} is {other}, which trains the generator and cannot render. {_FIX}",
                         kind="bad_checkpoint")
    check_keys(sd, model, f"{path} is not a Wav2Lip generator checkpoint", _FIX)
    check_values(sd, str(path), _FIX)
    model.load_state_dict(sd, strict=True)
    return model.to(map_location).eval()


def weights_hash(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of the checkpoint file's bytes (read in 1 MiB chunks)."""
    path = weights_file(path, "checkpoint", _FIX)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
