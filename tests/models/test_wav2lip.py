"""The Wav2Lip generator: layout against the published key set, loading, errors, numerics."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heygem_ray.errors import InputError, InternalError
from heygem_ray.models.wav2lip import (
    EMBED_DIM,
    FACE_SIZE,
    MEL_STEP,
    N_MELS,
    ConvTransposeBlock,
    PhaseConvBlock,
    Wav2Lip,
    convolution_form,
    load,
    weights_hash,
)
from tests.helpers.wav2lip_ckpt import (
    random_state_dict,
    spec_shapes,
    write_random_checkpoint,
)

torch.set_num_threads(2)

B = 2


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory):
    return write_random_checkpoint(tmp_path_factory.mktemp("w2l") / "wav2lip.pth", seed=0)


@pytest.fixture(scope="module")
def model(ckpt) -> Wav2Lip:
    return load(ckpt)


def _inputs(batch: int = B, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mel = torch.rand(batch, 1, N_MELS, MEL_STEP, generator=g) * 8 - 4  # (B, 1, 80, 16) in [-4, 4]
    face = torch.rand(batch, 6, FACE_SIZE, FACE_SIZE, generator=g)  # (B, 6, 96, 96) BGR in [0, 1]
    face[:, :3, FACE_SIZE // 2:] = 0  # masked lower half
    return mel, face


def test_state_dict_matches_published_keys_and_shapes() -> None:
    ours = {k: tuple(v.shape) for k, v in Wav2Lip().state_dict().items()}
    published = spec_shapes()
    assert len(published) == 352
    assert sorted(set(published) - set(ours)) == []
    assert sorted(set(ours) - set(published)) == []
    assert ours == published


def test_parameter_count() -> None:
    n = sum(p.numel() for p in Wav2Lip().parameters())
    assert n == sum(math.prod(s) for k, s in spec_shapes().items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert abs(n / 1e6 - 36.3) < 0.05


@pytest.mark.parametrize("module_prefix", [False, True])
def test_load_round_trips_random_checkpoint(tmp_path, module_prefix: bool) -> None:
    path = write_random_checkpoint(tmp_path / "w.pth", seed=3, module_prefix=module_prefix)
    loaded = load(path)
    assert not loaded.training
    direct = Wav2Lip()
    direct.load_state_dict(random_state_dict(seed=3))
    direct.eval()
    mel, face = _inputs()
    with torch.no_grad():
        out = loaded(mel, face)
        torch.testing.assert_close(out, direct(mel, face), rtol=0, atol=0)
    assert out.shape == (B, 3, FACE_SIZE, FACE_SIZE) and out.dtype == torch.float32
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0
    assert out.std().item() > 0.01  # not saturated: the random weights exercise the net


def test_load_accepts_bare_state_dict(tmp_path) -> None:
    path = tmp_path / "bare.pth"
    torch.save(random_state_dict(seed=4), path)
    assert isinstance(load(path), Wav2Lip)


def test_load_accepts_numpy_scalars_in_metadata(tmp_path) -> None:
    # Re-saved checkpoints sometimes store global_step as a numpy integer.
    path = tmp_path / "np.pth"
    torch.save({"state_dict": random_state_dict(seed=4), "global_step": np.int64(7)}, path)
    assert isinstance(load(path), Wav2Lip)


def test_forward_equals_decode_of_encoded_audio(model: Wav2Lip) -> None:
    mel, face = _inputs()
    with torch.no_grad():
        emb = model.encode_audio(mel)
        assert emb.shape == (B, EMBED_DIM, 1, 1)
        torch.testing.assert_close(model(mel, face), model.decode(face, emb), rtol=0, atol=0)


def test_output_depends_on_audio_and_face(model: Wav2Lip) -> None:
    mel, face = _inputs(seed=1)
    mel2, face2 = _inputs(seed=2)
    with torch.no_grad():
        out = model(mel, face)
        assert (model(mel2, face) - out).abs().max() > 1e-4
        assert (model(mel, face2) - out).abs().max() > 1e-4


def test_batch_items_are_independent(model: Wav2Lip) -> None:
    mel, face = _inputs(batch=3)
    with torch.no_grad():
        whole = model(mel, face)
        one = model(mel[1:2], face[1:2])
    torch.testing.assert_close(whole[1:2], one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", [
    "face_decoder_blocks.3.0.conv_block.0.weight",
    "audio_encoder.12.conv_block.1.running_var",
])
def test_missing_key_is_named(tmp_path, key: str) -> None:
    path = write_random_checkpoint(tmp_path / "w.pth", drop_key=key, module_prefix=True)
    with pytest.raises(InputError) as err:
        load(path)
    assert err.value.kind == "bad_checkpoint"
    assert key in err.value.message and str(path) in err.value.message
    assert "missing" in err.value.message and "wav2lip_gan.pth" in err.value.message


def test_unexpected_key_is_named(tmp_path) -> None:
    path = write_random_checkpoint(tmp_path / "w.pth", extra_key="disc.weight")
    with pytest.raises(InputError) as err:
        load(path)
    assert err.value.kind == "bad_checkpoint"
    assert "disc.weight" in err.value.message and "unexpected" in err.value.message


def test_wrong_shape_is_named(tmp_path) -> None:
    sd = random_state_dict()
    key = "output_block.1.weight"
    sd[key] = torch.zeros(3, 16, 1, 1)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(InputError) as err:
        load(path)
    assert key in err.value.message and "[3, 16, 1, 1]" in err.value.message and "[3, 32, 1, 1]" in err.value.message


def test_many_bad_keys_are_counted(tmp_path) -> None:
    # A discriminator-like file: nothing matches; the message names a few and counts the rest.
    sd = {f"face_encoder_blocks.{i}.weight": torch.zeros(1) for i in range(20)}
    path = tmp_path / "disc.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(InputError) as err:
        load(path)
    msg = err.value.message
    assert "352 missing" in msg and "20 unexpected" in msg and "more)" in msg
    assert len(msg) < 2000


@pytest.mark.parametrize(("keys", "named"), [
    # Wav2Lip's SyncNet_color: two nn.Sequential stacks of Conv2d blocks, no decoder.
    (["face_encoder.0.conv_block.0.weight", "face_encoder.0.conv_block.1.running_mean",
      "audio_encoder.0.conv_block.0.weight"], "lip-sync expert discriminator (SyncNet, lipsync_expert.pth)"),
    # Wav2Lip_disc_qual: the generator's face encoder, then a 1-channel head.
    (["face_encoder_blocks.0.0.conv_block.0.weight", "binary_pred.0.weight", "binary_pred.0.bias"],
     "visual quality discriminator (visual_quality_disc.pth)"),
])  # fmt: skip
def test_a_discriminator_from_wav2lips_release_is_named_as_what_it_is(tmp_path, keys, named) -> None:
    """The release hands out its two training networks beside the generator, in the same
    format: either, given as the checkpoint, is named (not refused with a key list)."""
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": torch.zeros(2, 2) for k in keys}, "global_step": 1}, path)
    with pytest.raises(InputError) as err:
        load(path)
    assert err.value.kind == "bad_checkpoint"
    assert err.value.message.startswith(f"{path} is Wav2Lip's {named}, which trains the generator and cannot render. ")
    assert "missing key" not in err.value.message


def test_missing_and_unreadable_files(tmp_path) -> None:
    with pytest.raises(InputError) as err:
        load(tmp_path / "nope.pth")
    assert err.value.kind == "missing_file" and "nope.pth" in err.value.message
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InputError) as err:
        load(junk)
    assert err.value.kind == "bad_checkpoint" and "junk.pth" in err.value.message
    not_sd = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_sd)
    with pytest.raises(InputError) as err:
        load(not_sd)
    assert err.value.kind == "bad_checkpoint"


def test_a_folder_or_a_pipe_given_for_the_checkpoint_says_what_it_is(tmp_path) -> None:
    """``--checkpoint checkpoints/`` (the folder the weights were downloaded to) names the
    weights files in it; a FIFO is no file to read (it would block), not "not found"."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("wav2lip_gan.pth", "wav2lip.pth", "README.md"):
        (folder / name).write_bytes(b"")
    with pytest.raises(InputError) as err:
        load(folder)
    assert err.value.kind == "missing_file"
    assert err.value.message.startswith(f"{folder}: is a folder, not the checkpoint file; it holds wav2lip.pth, "
                                        "wav2lip_gan.pth: name one of them. Pass the public")  # fmt: skip
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is a folder, not the checkpoint file, and holds no weights file"):
        weights_hash(tmp_path / "empty")
    os.mkfifo(tmp_path / "pipe.pth")
    with pytest.raises(InputError, match=r"pipe\.pth: is not a regular file \(a pipe, a device or a socket\)"):
        load(tmp_path / "pipe.pth")


def test_pickled_objects_are_refused(tmp_path) -> None:
    # Fraction stands in for any class outside the safe unpickler's allow-list: the loader
    # must refuse it rather than fall back to weights_only=False.
    from fractions import Fraction

    path = tmp_path / "odd.pth"
    torch.save({"state_dict": random_state_dict(), "extra": Fraction(1, 3)}, path)
    with pytest.raises(InputError) as err:
        load(path)
    assert err.value.kind == "bad_checkpoint" and "odd.pth" in err.value.message


def test_weights_hash(tmp_path, ckpt) -> None:
    import hashlib

    assert weights_hash(ckpt) == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    other = write_random_checkpoint(tmp_path / "other.pth", seed=1)
    assert weights_hash(other) != weights_hash(ckpt)
    with pytest.raises(InputError):
        weights_hash(tmp_path / "nope.pth")


def test_first_blocks_by_hand(model: Wav2Lip) -> None:
    # Conv → BatchNorm (running stats) → ReLU written out with functional ops, then the
    # first residual block, checked against the modules.
    _, face = _inputs()
    sd = model.state_dict()
    p = "face_encoder_blocks.0.0.conv_block"
    z = F.conv2d(face, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], stride=1, padding=3)
    z = (z - sd[f"{p}.1.running_mean"][:, None, None]) / torch.sqrt(sd[f"{p}.1.running_var"][:, None, None] + 1e-5)
    z = torch.relu(z * sd[f"{p}.1.weight"][:, None, None] + sd[f"{p}.1.bias"][:, None, None])  # (B, 16, 96, 96)
    with torch.no_grad():
        x = model.get_submodule("face_encoder_blocks.1.0")(z)  # (B, 32, 48, 48)
        p = "face_encoder_blocks.1.1.conv_block"
        r = F.conv2d(x, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], padding=1)
        r = F.batch_norm(r, sd[f"{p}.1.running_mean"], sd[f"{p}.1.running_var"], sd[f"{p}.1.weight"],
                         sd[f"{p}.1.bias"], training=False, eps=1e-5)
        torch.testing.assert_close(model.get_submodule("face_encoder_blocks.0.0")(face), z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.get_submodule("face_encoder_blocks.1.1")(x), torch.relu(r + x),
                                   rtol=1e-5, atol=1e-5)


# The spec's layer tables, written out again independently of the model code:
# (kind, stride, padding, residual[, output_padding]) per block; weights come from the
# state dict by key, so a wrong stride, padding, residual flag or skip order shows up.
_Spec = tuple[Any, ...]
_R: _Spec = ("C", 1, 1, True)
_AUDIO: list[_Spec] = [("C", 1, 1, False), _R, _R, ("C", (3, 1), 1, False), _R, _R, ("C", 3, 1, False), _R, _R,
          ("C", (3, 2), 1, False), _R, ("C", 1, 0, False), ("C", 1, 0, False)]
_FACE_ENC: list[list[_Spec]] = [[("C", 1, 3, False)], [("C", 2, 1, False), _R, _R], [("C", 2, 1, False), _R, _R, _R],
             [("C", 2, 1, False), _R, _R], [("C", 2, 1, False), _R, _R], [("C", 2, 1, False), _R],
             [("C", 1, 0, False), ("C", 1, 0, False)]]
_T: _Spec = ("T", 2, 1, False, 1)
_FACE_DEC: list[list[_Spec]] = [[("C", 1, 0, False)], [("T", 1, 0, False, 0), _R], [_T, _R, _R], [_T, _R, _R], [_T, _R, _R],
             [_T, _R, _R], [_T, _R, _R]]


def _block(sd: dict[str, torch.Tensor], prefix: str, spec: _Spec, x: torch.Tensor) -> torch.Tensor:
    w, b = sd[f"{prefix}.conv_block.0.weight"], sd[f"{prefix}.conv_block.0.bias"]
    if spec[0] == "T":
        y = F.conv_transpose2d(x, w, b, stride=spec[1], padding=spec[2], output_padding=spec[4])
    else:
        y = F.conv2d(x, w, b, stride=spec[1], padding=spec[2])
    bn = f"{prefix}.conv_block.1"
    y = (y - sd[f"{bn}.running_mean"][:, None, None]) / torch.sqrt(sd[f"{bn}.running_var"][:, None, None] + 1e-5)
    y = y * sd[f"{bn}.weight"][:, None, None] + sd[f"{bn}.bias"][:, None, None]
    return torch.relu(y + x if spec[3] else y)


def _reference_forward(sd: dict[str, torch.Tensor], mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    x = mel
    for i, spec in enumerate(_AUDIO):
        x = _block(sd, f"audio_encoder.{i}", spec, x)
    skips, f = [], face
    for i, blocks in enumerate(_FACE_ENC):
        for j, spec in enumerate(blocks):
            f = _block(sd, f"face_encoder_blocks.{i}.{j}", spec, f)
        skips.append(f)
    for i, blocks in enumerate(_FACE_DEC):
        for j, spec in enumerate(blocks):
            x = _block(sd, f"face_decoder_blocks.{i}.{j}", spec, x)
        x = torch.cat((x, skips[len(skips) - 1 - i]), dim=1)
    x = _block(sd, "output_block.0", ("C", 1, 1, False), x)
    return torch.sigmoid(F.conv2d(x, sd["output_block.1.weight"], sd["output_block.1.bias"]))


def test_forward_matches_functional_reference_of_the_spec(model: Wav2Lip) -> None:
    sd = random_state_dict(seed=0)  # the weights in the ``ckpt`` fixture
    mel, face = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(mel, face), _reference_forward(sd, mel, face), rtol=1e-4, atol=1e-5)


def test_onnx_export_matches_onnxruntime(model: Wav2Lip, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "wav2lip.onnx"
    with warnings.catch_warnings():
        # dynamo=False: the torch.export-based exporter needs onnxscript, which we do not
        # depend on; the TorchScript exporter warns that it is deprecated.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, _inputs(batch=1), str(path), dynamo=False, opset_version=17,
            input_names=["mel", "face"], output_names=["out"],
            dynamic_axes={"mel": {0: "batch"}, "face": {0: "batch"}, "out": {0: "batch"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mel, face = _inputs(batch=3, seed=5)  # a batch size other than the exported one
    (got,) = session.run(None, {"mel": mel.numpy(), "face": face.numpy()})
    with torch.no_grad():
        want = model(mel, face).numpy()
    assert got.shape == (3, 3, FACE_SIZE, FACE_SIZE)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_convolution_form_matches_the_functional_reference_of_the_spec(model: Wav2Lip) -> None:
    """The decoder with its transposed convolutions as phase convolutions computes what
    the spec's layer tables do (F.conv_transpose2d there); the model itself is untouched."""
    form = convolution_form(model)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in form.modules())
    assert sum(isinstance(m, PhaseConvBlock) for m in form.modules()) == 6
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == 6
    mel, face = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(form(mel, face), _reference_forward(random_state_dict(seed=0), mel, face),
                                   rtol=1e-4, atol=1e-5)


def _transposed(kernel: int, stride: int, padding: int, extra: int, seed: int = 0) -> ConvTransposeBlock:
    """A ConvTransposeBlock of 5 → 7 channels with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    block = ConvTransposeBlock(5, 7, kernel, stride, padding, extra)
    norm = block.conv_block[1]
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    return block.eval()


# (kernel, stride, padding, output_padding): Wav2Lip's two kinds first, then others a
# phase form covers (odd and even kernels, stride 3, stride 1 with padding).
@pytest.mark.parametrize("layer", [(3, 2, 1, 1), (3, 1, 0, 0), (5, 2, 2, 1), (2, 2, 0, 0), (3, 1, 1, 0), (3, 3, 0, 0)])
@pytest.mark.parametrize("size", [1, 4, 7])
def test_phase_conv_block_is_the_transposed_convolution(layer: tuple[int, int, int, int], size: int) -> None:
    kernel, stride, _, _ = layer
    block = _transposed(*layer)
    phases = PhaseConvBlock(block, size)
    x = torch.randn(2, 5, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = block(x), phases(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the phases take the kernel's taps between them, each once: no multiply by a zero tap
    assert sum(w[0, 0].numel() for w in phases.weights) == kernel * kernel


@pytest.mark.parametrize(("layer", "why"), [
    ((4, 2, 1, 0), r"paddings \[\(1, 0\), \(1, 0\)\] need a Pad node"),
    ((3, 2, 1, 0), "its 7 px are not whole phases"),
    ((2, 3, 0, 1), "a phase with no kernel tap"),
])
def test_phase_conv_block_refuses_a_layer_one_convolution_per_phase_cannot_be(layer, why: str) -> None:
    with pytest.raises(InternalError, match=why):
        PhaseConvBlock(_transposed(*layer), 4)
