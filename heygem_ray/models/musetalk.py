"""MuseTalk 1.5's networks, built offline from the config files of the public ``models/``
folder and loaded strictly from the weight files users download.

The folder (``--checkpoint DIR``) holds, as MuseTalk's download script lays it out::

    musetalkV15/musetalk.json, musetalkV15/unet.pth            the UNet (diffusers UNet2DConditionModel)
    sd-vae/config.json, sd-vae/diffusion_pytorch_model.bin     the VAE (diffusers AutoencoderKL)
    whisper/config.json, whisper/pytorch_model.bin,            the speech encoder (transformers'
        whisper/preprocessor_config.json                       Whisper encoder and feature extractor)

Known quirks of those files, handled here: the VAE file (written by diffusers 0.4) names
its mid-block attention ``query/key/value/proj_attn`` where diffusers now says
``to_q/to_k/to_v/to_out.0``; the Whisper file holds the whole speech-to-text model under
``model.encoder.*`` and ``model.decoder.*``, of which only the encoder is used. Anything
else that does not match (a missing file, a missing or unexpected key, a wrong shape) is
an ``InputError`` naming the file and the key, before any work.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heygem_ray.errors import InputError

FILES = {
    "unet_config": "musetalkV15/musetalk.json",
    "unet": "musetalkV15/unet.pth",
    "vae_config": "sd-vae/config.json",
    "vae": "sd-vae/diffusion_pytorch_model.bin",
    "whisper_config": "whisper/config.json",
    "whisper": "whisper/pytorch_model.bin",
    "whisper_features": "whisper/preprocessor_config.json",
}
# The VAE's latent scale: absent from sd-vae-ft-mse's config, so diffusers' default.
VAE_SCALE = 0.18215
_FIX = (
    "--checkpoint must be MuseTalk's models/ folder as its download script lays it out "
    "(musetalkV15/, sd-vae/, whisper/), with the files it downloads"
)
# diffusers 0.4's names for the VAE mid-block attention → today's.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_KEY = re.compile(r"^(.*mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)(\..*)$")


@dataclass
class MuseTalkModels:
    unet: nn.Module  # diffusers UNet2DConditionModel: (B, 8, 32, 32), t, (B, 50, 384) → (B, 4, 32, 32)
    vae: nn.Module  # diffusers AutoencoderKL: (B, 3, 256, 256) ↔ (B, 4, 32, 32)
    whisper: nn.Module  # transformers WhisperEncoder: (1, 80, 3000) → 5 hidden states (1, 1500, 384)
    features: Any  # transformers WhisperFeatureExtractor: 16 kHz audio → (1, 80, 3000) log-mel


def load(root: str | Path) -> MuseTalkModels:
    """The three networks of ``root`` (MuseTalk's ``models/`` folder), in eval mode on the CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    root = Path(root)
    paths = {name: root / rel for name, rel in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"MuseTalk weights: {', '.join(missing)} not found. {_FIX}", kind="missing_file")

    unet = UNet2DConditionModel.from_config(_config(paths["unet_config"]))
    _load_strict(unet, _state_dict(paths["unet"]), paths["unet"])

    vae = AutoencoderKL.from_config(_config(paths["vae_config"]))
    _load_strict(vae, _renamed_legacy_attention(_state_dict(paths["vae"])), paths["vae"])

    config = WhisperConfig.from_dict(_config(paths["whisper_config"]))
    whisper = WhisperEncoder(config)
    _load_strict(whisper, _whisper_encoder_keys(_state_dict(paths["whisper"])), paths["whisper"])

    features = WhisperFeatureExtractor.from_dict(_config(paths["whisper_features"]))
    return MuseTalkModels(unet.eval(), vae.eval(), whisper.eval(), features)


def _config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable JSON config ({exc}). {_FIX}", kind="bad_checkpoint") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a JSON object of settings. {_FIX}", kind="bad_checkpoint")
    return config


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not plain tensors, a truncated file
        raise InputError(f"{path} could not be read as PyTorch weights ({type(exc).__name__}: {exc}). {_FIX}",
                         kind="bad_checkpoint") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict of tensors. {_FIX}", kind="bad_checkpoint")
    return obj


def _renamed_legacy_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = _LEGACY_KEY.match(key)
        out[f"{m[1]}{_LEGACY_ATTENTION[m[2]]}{m[3]}" if m else key] = value
    return out


def _whisper_encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights of a Whisper file (``model.encoder.*``, or ``encoder.*`` as
    saved from the bare model), without the prefix; the decoder's are dropped."""
    for prefix in ("model.encoder.", "encoder."):
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    return state  # an encoder saved alone: its keys are checked as they are


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        problems.append(f"unexpected key {unexpected[0]}"
                        + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    if wrong:
        k = wrong[0]
        problems.append(f"key {k} has shape {tuple(state[k].shape)}, its config says {tuple(expected[k].shape)}")
    if problems:
        raise InputError(f"{path} does not match its config: {'; '.join(problems)}. {_FIX}", kind="bad_checkpoint")
    module.load_state_dict(state, strict=True)
