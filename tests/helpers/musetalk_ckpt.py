"""A MuseTalk 1.5 ``models/`` folder with seeded random weights, in the public files'
formats and layout, small: the same block types and interfaces (8-channel 32×32 latents,
384-wide speech states, 5 Whisper hidden states), fewer and narrower layers.

The VAE file uses diffusers 0.4's names for the mid-block attention (``query``, ``key``,
``value``, ``proj_attn``) and the Whisper file holds the whole speech-to-text model
(``model.encoder.*``, ``model.decoder.*``), as the public downloads do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0.dev0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [32, 64, 64, 64], "center_input_sample": False,
    "cross_attention_dim": 384, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                      "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8, "layers_per_block": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}  # fmt: skip
VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", "act_fn": "silu",
    "block_out_channels": [32, 32, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 32, "out_channels": 3, "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}  # fmt: skip
WHISPER_CONFIG = {
    "d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 96,
    "decoder_layers": 1, "decoder_attention_heads": 6, "decoder_ffn_dim": 96, "num_mel_bins": 80,
    "max_source_positions": 1500, "max_target_positions": 32, "vocab_size": 64, "activation_function": "gelu",
    "scale_embedding": False, "dropout": 0.0, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 3,
    "decoder_start_token_id": 2,
}  # fmt: skip
# MuseTalk 1.5's own configs (musetalkV15/musetalk.json, sd-vae-ft-mse, whisper-tiny): for
# checks on the meta device and for benchmarks with random weights of the real size.
FULL_UNET_CONFIG = {
    **UNET_CONFIG, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
}  # fmt: skip
FULL_VAE_CONFIG = {**VAE_CONFIG, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}
FULL_WHISPER_CONFIG = {
    **WHISPER_CONFIG, "encoder_ffn_dim": 1536, "decoder_layers": 4, "decoder_ffn_dim": 1536,
    "max_target_positions": 448, "vocab_size": 51865, "pad_token_id": 50257, "bos_token_id": 50257,
    "eos_token_id": 50257, "decoder_start_token_id": 50258,
}  # fmt: skip
_MODERN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def write_models(root: Path, seed: int = 0, full: bool = False) -> Path:
    """Write the folder under ``root``; returns it. ``full``: MuseTalk 1.5's own sizes
    (``FULL_*``, about 3.9 GB of files) instead of the small ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    unet_config, vae_config = (FULL_UNET_CONFIG, FULL_VAE_CONFIG) if full else (UNET_CONFIG, VAE_CONFIG)
    torch.manual_seed(seed)
    (root / "musetalkV15").mkdir(parents=True, exist_ok=True)
    (root / "musetalkV15" / "musetalk.json").write_text(json.dumps(unet_config))
    torch.save(UNet2DConditionModel.from_config(unet_config).state_dict(), root / "musetalkV15" / "unet.pth")

    (root / "sd-vae").mkdir(exist_ok=True)
    (root / "sd-vae" / "config.json").write_text(json.dumps(vae_config))
    vae = AutoencoderKL.from_config(vae_config).state_dict()
    legacy = {}
    for key, value in vae.items():
        m = re.match(r"^(.*mid_block\.attentions\.\d+\.)(to_q|to_k|to_v|to_out\.0)(\..*)$", key)
        legacy[f"{m[1]}{_MODERN[m[2]]}{m[3]}" if m else key] = value
    torch.save(legacy, root / "sd-vae" / "diffusion_pytorch_model.bin")

    (root / "whisper").mkdir(exist_ok=True)
    config = WhisperConfig(**(FULL_WHISPER_CONFIG if full else WHISPER_CONFIG))
    (root / "whisper" / "config.json").write_text(config.to_json_string())
    torch.save(WhisperForConditionalGeneration(config).state_dict(), root / "whisper" / "pytorch_model.bin")
    (root / "whisper" / "preprocessor_config.json").write_text(WhisperFeatureExtractor().to_json_string())
    return root
