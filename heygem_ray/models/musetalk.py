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
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from heygem_ray.errors import InputError, InternalError
from heygem_ray.models.checkpoint import check_keys, check_values, read_weights, unwrapped
from heygem_ray.models.sizes import MUSETALK_CROP, MUSETALK_FILES, MUSETALK_POSITIONS

FILES = MUSETALK_FILES
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
    # Typed loosely: diffusers and transformers are imported only where a pack needs them.
    unet: Any  # diffusers UNet2DConditionModel: (B, 8, 32, 32), t, (B, 50, 384) → (B, 4, 32, 32)
    vae: Any  # diffusers AutoencoderKL: (B, 3, 256, 256) ↔ (B, 4, 32, 32)
    whisper: Any  # transformers WhisperEncoder: (1, 80, 3000) → 5 hidden states (1, 1500, 384)
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
        raise InputError(f"MuseTalk weights: {_not_the_folder(root) or ', '.join(missing) + ' not found'}. {_FIX}",
                         kind="missing_file")  # fmt: skip

    # The UNet (3.2 GB at full size) is made without memory or initialisation and takes the
    # file's mapped tensors as its own: one copy of its weights in memory where a UNet built,
    # then loaded from a file read whole, held two.
    with torch.device("meta"):
        unet = _built(UNet2DConditionModel.from_config, paths["unet_config"], "UNet2DConditionModel")
    _load_strict(unet, _state_dict(paths["unet"], mmap=True), paths["unet"], assign=True)

    vae = _built(AutoencoderKL.from_config, paths["vae_config"], "AutoencoderKL")
    _load_strict(vae, _renamed_legacy_attention(_state_dict(paths["vae"])), paths["vae"])

    whisper = _built(lambda c: WhisperEncoder(WhisperConfig.from_dict(c)), paths["whisper_config"], "whisper")
    _load_strict(whisper, _whisper_encoder_keys(_state_dict(paths["whisper"])), paths["whisper"])

    features = _built(WhisperFeatureExtractor.from_dict, paths["whisper_features"], "WhisperFeatureExtractor")
    return MuseTalkModels(unet.eval(), vae.eval(), whisper.eval(), features)


# What a file given as MuseTalk's folder is, by its first bytes.
_ARCHIVES = ((b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip archive (.tar.gz)"), (b"7z\xbc\xaf", "a 7-Zip archive"))


def _not_the_folder(root: Path) -> str:
    """What ``root`` is where it is not MuseTalk's ``models/`` folder and what to give
    instead, as far as can be told (an archive of it, a weights file, the folder above it
    or one inside it); "" where nothing can."""
    if root.is_file():
        with open(root, "rb") as f:
            head = f.read(512)
        what = next((name for magic, name in _ARCHIVES if head.startswith(magic)), "a single file")
        if head[257:262] == b"ustar":
            what = "a tar archive"
        return f"{root} is {what}, not MuseTalk's models/ folder: unpack it, and give the models/ folder inside"
    if all((root / "models" / rel).is_file() for rel in FILES.values()):
        return f"{root} holds MuseTalk's models/ folder: give {root / 'models'}"
    if root.name == "musetalkV15" and all((root.parent / rel).is_file() for rel in FILES.values()):
        return f"{root} is the UNet's folder inside MuseTalk's models/ folder: give {root.parent}"
    return ""


def _built(make: Any, config_path: Path, expected: str) -> Any:
    """``make(config)`` of the JSON config at ``config_path``, which must be ``expected``'s
    (its ``_class_name``, or for Whisper its ``model_type``, where it says): another's
    (Whisper's config.json copied as the UNet's builds an 860M-parameter UNet before it
    fails) or settings of the wrong type are ``bad_checkpoint`` naming the file."""
    config = _config(config_path)
    said = config.get("_class_name", config.get("model_type"))
    if isinstance(said, str) and said != expected:
        raise InputError(f"{config_path} is the config of {said}, not of MuseTalk's {expected}. {_FIX}",
                         kind="bad_checkpoint")  # fmt: skip
    try:
        return make(config)
    except Exception as exc:  # noqa: BLE001 - diffusers and transformers raise many types on bad settings
        raise InputError(f"{config_path}: its settings do not build a {expected} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}). {_FIX}", kind="bad_checkpoint") from exc


def _config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable JSON config ({exc}). {_FIX}", kind="bad_checkpoint") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a JSON object of settings. {_FIX}", kind="bad_checkpoint")
    return config


def _state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    obj = read_weights(path, _FIX, mmap=mmap)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict of tensors. {_FIX}", kind="bad_checkpoint")
    return unwrapped(obj)


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


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, assign: bool = False) -> None:
    """``state`` into ``module`` after its keys and values are checked; ``assign``: the
    module (made on the meta device) takes ``state``'s tensors, as float32."""
    check_keys(state, module, f"{path} does not match its config", _FIX)
    check_values(state, str(path), _FIX)
    if not assign:
        module.load_state_dict(state, strict=True)
        return
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # a buffer the file does not hold, which assign cannot fill
        raise InternalError(f"{path}: {len(left)} tensor(s) of the network are not in the file ({left[0]}, …)")


# -- the render step, as the public pipeline runs it (scripts/inference.py with its VAE and UNet classes)

CROP = MUSETALK_CROP  # the face crop's side: 32×32 latents
POSITIONS = MUSETALK_POSITIONS  # audio tokens per frame


def position_code(length: int = POSITIONS, width: int = 384) -> torch.Tensor:
    """The sinusoidal position code added to each frame's audio tokens: sines at even
    channels, cosines at odd ones, wavelengths from 2π to 10000·2π."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    code = torch.zeros(length, width)
    code[:, 0::2] = torch.sin(position * rate)
    code[:, 1::2] = torch.cos(position * rate)
    return code


def reference_latents(models: MuseTalkModels, crops: np.ndarray, sample: torch.Generator | None = None) -> torch.Tensor:
    """(k, 256, 256, 3) uint8 BGR crops of reference frames → (k, 8, 32, 32) UNet input:
    the latent of the crop with its lower half blanked (−1), then of the whole crop. Depends
    on the reference only: computed once per reference frame. The VAE posterior's mode
    (deterministic), or with a generator a sample of it (what the public code does)."""
    # Contiguous (k, 3, H, W), as the public code builds it: a channels-last view takes
    # other convolution kernels, whose last-bit differences the networks amplify.
    rgb = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2)) / 255.0).float()
    masked = rgb.clone()
    masked[:, :, CROP // 2 :, :] = 0  # the mouth's half, to be painted
    with torch.inference_mode():
        halves = []
        for image in (masked, rgb):
            posterior = models.vae.encode((image - 0.5) / 0.5).latent_dist
            latent = posterior.mode() if sample is None else posterior.sample(generator=sample)
            halves.append(latent * VAE_SCALE)
    return torch.cat(halves, dim=1)


def predict(models: MuseTalkModels, latents: torch.Tensor, audio: np.ndarray) -> torch.Tensor:
    """(k, 8, 32, 32) reference latents and (k, 50, 384) audio features → (k, 4, 32, 32)
    latents of the painted crops: the UNet once, at t = 0, on the audio tokens plus their
    position code."""
    tokens = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)) + position_code(audio.shape[1], audio.shape[2])
    with torch.inference_mode():
        return models.unet(latents, torch.tensor([0]), encoder_hidden_states=tokens).sample


def decode(models: MuseTalkModels, latents: torch.Tensor) -> np.ndarray:
    """(k, 4, 32, 32) latents → (k, 256, 256, 3) uint8 BGR crops."""
    with torch.inference_mode():
        image = models.vae.decode(latents / VAE_SCALE).sample
    pixels = ((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return np.ascontiguousarray(pixels[..., ::-1])


def generate(models: MuseTalkModels, crops: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """(k, 256, 256, 3) uint8 BGR crops and their (k, 50, 384) audio features → the generated
    crops, as the public pipeline makes them from the same weights (with the posterior's mode)."""
    return decode(models, predict(models, reference_latents(models, crops), audio))
