"""MuseTalk 1.5's networks from a models/ folder in the public layout and formats
(tests/helpers/musetalk_ckpt.py: seeded, small), and its audio features against numbers
from the public pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from heygem_ray.errors import InputError
from heygem_ray.features import musetalk_audio, musetalk_windows
from heygem_ray.models import musetalk
from tests.helpers.musetalk_ckpt import FULL_UNET_CONFIG, FULL_VAE_CONFIG, FULL_WHISPER_CONFIG

REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "musetalk_audio_reference.json").read_text())


@pytest.fixture(scope="module")
def folder(musetalk_folder) -> Path:
    return musetalk_folder


@pytest.fixture(scope="module")
def models(folder) -> musetalk.MuseTalkModels:
    return musetalk.load(folder)


def signal(seconds: float = 2.0, sr: int = 16000, seed: int = 7) -> np.ndarray:
    """A gliding, pulsing tone in noise, as 16-bit samples read back to float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (150 + 400 * t) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x = x + 0.05 * rng.standard_normal(len(t))
    return (np.clip(np.round(x * 32767), -32768, 32767).astype("<i2") / 32768).astype(np.float32)


def test_the_three_networks_load_strictly_and_have_musetalks_interfaces(models):
    with torch.inference_mode():
        latents = models.vae.encode(torch.zeros(1, 3, 256, 256)).latent_dist.mode()
        assert latents.shape == (1, 4, 32, 32)
        out = models.unet(torch.zeros(1, 8, 32, 32), torch.tensor([0]), encoder_hidden_states=torch.zeros(1, 50, 384))
        assert out.sample.shape == (1, 4, 32, 32)
        assert models.vae.decode(out.sample).sample.shape == (1, 3, 256, 256)
        states = models.whisper(torch.zeros(1, 80, 3000), output_hidden_states=True).hidden_states
        assert len(states) == 5 and all(s.shape == (1, 1500, 384) for s in states)


def test_the_vaes_legacy_attention_names_and_the_whisper_files_decoder_are_handled(folder, models):
    vae_file = torch.load(folder / "sd-vae" / "diffusion_pytorch_model.bin", weights_only=True)
    assert "encoder.mid_block.attentions.0.query.weight" in vae_file  # the old name, as downloaded
    loaded = models.vae.state_dict()
    for old, new in [("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")]:
        assert torch.equal(loaded[f"decoder.mid_block.attentions.0.{new}.weight"],
                           vae_file[f"decoder.mid_block.attentions.0.{old}.weight"])
    whisper_file = torch.load(folder / "whisper" / "pytorch_model.bin", weights_only=True)
    assert any(k.startswith("model.decoder.") for k in whisper_file)
    assert torch.equal(models.whisper.state_dict()["conv1.weight"], whisper_file["model.encoder.conv1.weight"])


def _broken(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(folder, copy)
    return copy


def test_a_missing_file_stops_the_load_naming_it(folder, tmp_path):
    copy = _broken(folder, tmp_path)
    (copy / "sd-vae" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(InputError) as err:
        musetalk.load(copy)
    assert err.value.kind == "missing_file"
    assert f"{copy / 'sd-vae' / 'diffusion_pytorch_model.bin'} not found" in err.value.message
    assert "MuseTalk's models/ folder" in err.value.message


def test_a_wrong_or_missing_key_stops_the_load_naming_the_file_and_the_key(folder, tmp_path):
    copy = _broken(folder, tmp_path)
    unet = torch.load(copy / "musetalkV15" / "unet.pth", weights_only=True)
    unet["conv_in.weight"] = unet["conv_in.weight"][:, :4]  # a 4-channel input: another model's UNet
    del unet["conv_out.bias"]
    torch.save(unet, copy / "musetalkV15" / "unet.pth")
    with pytest.raises(InputError) as err:
        musetalk.load(copy)
    assert err.value.kind == "bad_checkpoint"
    message = err.value.message
    assert message.startswith(f"{copy / 'musetalkV15' / 'unet.pth'} does not match its config: 1 missing key(s): "
                              "conv_out.bias; ")
    assert "1 key(s) with the wrong shape: conv_in.weight is [32, 4, 3, 3], expected [32, 8, 3, 3]" in message


def test_audio_features_match_the_public_pipeline(models):
    """The public get_audio_feature + get_whisper_chunk on the same weights and audio gave
    these numbers (tests/data/musetalk_audio_reference.json)."""
    got = musetalk_audio(signal(), 25, models)
    assert got.dtype == np.float32 and list(got.shape) == REFERENCE["shape"] == [50, 50, 384]
    for i, j, k, value in REFERENCE["elements"]:
        assert abs(got[i, j, k] - value) <= 1e-4, (i, j, k)
    np.testing.assert_allclose(got.sum(axis=(1, 2)), REFERENCE["frame_sums"], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(got[0].sum(axis=1), REFERENCE["token_sums_first"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got[-1].sum(axis=1), REFERENCE["token_sums_last"], rtol=1e-4, atol=1e-3)


def test_each_frames_window_is_ten_states_around_it_time_major():
    states = np.arange(100 * 5 * 384, dtype=np.float32).reshape(100, 5, 384)  # 2 s of states
    got = musetalk_windows(states, 32000, 25, 50)
    # Frame i, token t·5 + layer l: state 2i − 4 + t (zeros before the start), layer l.
    for i, t, layer in [(0, 0, 0), (0, 4, 3), (0, 9, 4), (10, 3, 1), (49, 9, 2)]:
        s = 2 * i - 4 + t
        want = states[s, layer] if 0 <= s < 100 else np.zeros(384, np.float32)
        np.testing.assert_array_equal(got[i, t * 5 + layer], want)
    # 10.5 s of audio: every frame has its window (MuseTalk itself would stop at 10 s).
    assert musetalk_windows(np.zeros((1500, 5, 384), np.float32), 168000, 25, 262).shape == (262, 50, 384)


RENDER = json.loads((Path(__file__).parents[1] / "data" / "musetalk_render_reference.json").read_text())


def render_inputs(k: int = 3, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """``k`` 256×256 BGR crops (gradients in noise) and (k, 50, 384) audio features."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256]
    crops = np.stack([np.stack([(x + 40 * i) % 256, (y * (i + 1)) % 256, (x + y) // 2], -1) for i in range(k)])
    crops = np.clip(crops.astype(np.float64) + rng.normal(0, 12, crops.shape), 0, 255).astype(np.uint8)
    return crops, rng.standard_normal((k, 50, 384)).astype(np.float32)


def test_generated_crops_match_the_public_pipeline(models):
    """Reference latents, the UNet's prediction and the decoded crops against the public
    pipeline's on the same weights and inputs (tests/data/musetalk_render_reference.json)."""
    crops, audio = render_inputs()
    latents = musetalk.reference_latents(models, crops)
    assert latents.shape == (3, 8, 32, 32)
    for *index, value in RENDER["latents"]:
        assert abs(latents[tuple(index)].item() - value) <= 1e-5, index
    predicted = musetalk.predict(models, latents, audio)
    for *index, value in RENDER["predicted"]:
        assert abs(predicted[tuple(index)].item() - value) <= 1e-4, index
    np.testing.assert_allclose(predicted.sum(dim=(1, 2, 3)).numpy(), RENDER["predicted_sums"], rtol=1e-4, atol=1e-2)
    pixels = musetalk.generate(models, crops, audio)
    assert pixels.shape == (3, 256, 256, 3) and pixels.dtype == np.uint8
    for *index, value in RENDER["pixels"]:
        assert abs(int(pixels[tuple(index)]) - value) <= 1, index  # a last-bit difference may round the other way
    np.testing.assert_allclose(pixels.astype(np.int64).sum(axis=(1, 2, 3)), RENDER["image_sums"], rtol=1e-5)


def test_the_position_code_is_sines_at_even_channels_and_cosines_at_odd_ones():
    code = musetalk.position_code()
    assert code.shape == (50, 384)
    assert torch.allclose(code[:, 0], torch.sin(torch.arange(50.0))) and torch.allclose(code[:, 1], torch.cos(torch.arange(50.0)))
    assert torch.allclose(code[7, 382], torch.sin(torch.tensor(7 * 10000 ** (-382 / 384))))


def test_the_posterior_is_sampled_only_when_asked_and_then_reproducibly(models):
    crops, _ = render_inputs(k=1)
    mode = musetalk.reference_latents(models, crops)
    first = musetalk.reference_latents(models, crops, sample=torch.Generator().manual_seed(3))
    again = musetalk.reference_latents(models, crops, sample=torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and not torch.allclose(first, mode)
    assert torch.equal(mode, musetalk.reference_latents(models, crops))  # the mode: deterministic


def test_the_full_size_configs_build_musetalks_networks_and_their_key_sets_load(tmp_path):
    """MuseTalk 1.5's real configs on the meta device (no memory): the parameter counts of
    the 3.4 GB UNet, the VAE and whisper-tiny's encoder, and the strict load of each
    file's key set as the public files hold it (legacy VAE attention names, the whole
    Whisper model) through the loader's key handling."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(FULL_UNET_CONFIG)
        vae = AutoencoderKL.from_config(FULL_VAE_CONFIG)
        config = WhisperConfig(**FULL_WHISPER_CONFIG)
        whisper, whole = WhisperEncoder(config), WhisperForConditionalGeneration(config)
    counts = [sum(t.numel() for t in m.state_dict().values()) for m in (unet, vae, whisper)]
    assert counts == [849_947_844, 83_653_863, 8_208_384]
    unet_keys = unet.state_dict()
    assert unet_keys["conv_in.weight"].shape == (320, 8, 3, 3)  # [masked ‖ reference] latents
    assert unet_keys["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 384)
    modern = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, tensor in vae.state_dict().items():
        for new, old in modern.items():
            if ".mid_block.attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = tensor
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    musetalk._load_strict(unet, dict(unet_keys), tmp_path / "unet.pth")
    musetalk._load_strict(vae, musetalk._renamed_legacy_attention(legacy), tmp_path / "vae.bin")
    musetalk._load_strict(whisper, musetalk._whisper_encoder_keys(whole.state_dict()), tmp_path / "whisper.bin")
