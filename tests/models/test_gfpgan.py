"""GFPGAN v1.4: layout against the public key set, parity with the public code, fixed
noise, pre/post-processing, and the loader's errors.

The reference numbers (tests/data/gfpgan_public_*.png) were made by the public
``GFPGANv1Clean`` (TencentARC/GFPGAN 7552a77, its two ``archs`` files run in a scratch
folder outside this repository with basicsr's registry and initialiser stubbed out; no
other change) on the narrow checkpoint that ``tests.helpers.gfpgan_ckpt`` writes, with
``randomize_noise=False`` and ``GFPGANer.enhance``'s pre/post-processing for an aligned face
(basicsr's ``img2tensor``/``tensor2img``). Face 0 is stored whole; faces 1 and 2 every
other row and column, side by side, to keep the files small.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from heygem_ray.errors import InputError, InternalError
from heygem_ray.export import MAX_ONNX_WEIGHT_BYTES
from heygem_ray.models.gfpgan import FACE_SIZE, GFPGANConfig, GFPGANv1Clean, load, restore, to_faces, to_network
from tests.helpers.gfpgan_ckpt import DATA, NARROW, public_shapes, seeded_faces, write_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("gfpgan") / "narrow.pth")


@pytest.fixture(scope="module")
def net(ckpt: Path) -> GFPGANv1Clean:
    return load(ckpt)


@pytest.fixture(scope="module")
def restored(net: GFPGANv1Clean) -> np.ndarray:
    return restore(net, seeded_faces())


# -- layout ---------------------------------------------------------------------------------------


def test_v14_has_the_public_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        full = GFPGANv1Clean()
    ours = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    published = public_shapes("v1.4")
    assert len(published) == 285
    assert sorted(set(published) - set(ours)) == [] and sorted(set(ours) - set(published)) == []
    assert list(ours.items()) == list(published.items())  # same shapes, same order
    params = sum(p.numel() for p in full.parameters())
    noise = sum(math.prod(s) for k, s in published.items() if ".noises.noise" in k)
    assert params == sum(math.prod(s) for s in published.values()) - noise == 86_444_252  # 86.4 M
    # One fp32 ONNX file holds it (the exporter refuses past MAX_ONNX_WEIGHT_BYTES).
    assert sum(t.numel() * 4 for t in full.state_dict().values()) < MAX_ONNX_WEIGHT_BYTES


def test_narrow_config_is_the_public_narrow_network() -> None:
    with torch.device("meta"):
        narrow = GFPGANv1Clean(GFPGANConfig(**NARROW))
    assert {k: tuple(v.shape) for k, v in narrow.state_dict().items()} == public_shapes("narrow")


# -- numbers --------------------------------------------------------------------------------------


def _public(index: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The public output for seeded face ``index`` and the pixels of it that are stored."""
    if index == 0:
        return cv2.imread(str(DATA / "gfpgan_public_0.png")), (slice(None), slice(None))
    strided = cv2.imread(str(DATA / "gfpgan_public_strided.png"))
    half = FACE_SIZE // 2
    return strided[:, (index - 1) * half : index * half], (slice(None, None, 2), slice(None, None, 2))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_restore_matches_the_public_code(restored: np.ndarray, index: int) -> None:
    want, where = _public(index)
    got = restored[index][where]
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, f"face {index}: {np.count_nonzero(diff > 1)} values more than one grey level off"
    # Off by one only where float rounding lands on the other side of a level: rare.
    assert np.count_nonzero(diff) / diff.size < 1e-3
    # And the faces really went through the network: far from their inputs and from grey.
    face = seeded_faces()[index][where]
    assert np.abs(got.astype(np.int16) - face).mean() > 20 and got.std() > 10


def test_same_faces_give_identical_output_and_draw_no_noise(net: GFPGANv1Clean, restored: np.ndarray) -> None:
    before = torch.get_rng_state()
    again = restore(net, seeded_faces())
    np.testing.assert_array_equal(again, restored)
    assert torch.equal(torch.get_rng_state(), before)  # no random draw: the stored noise maps only


def test_noise_maps_are_the_checkpoints(ckpt: Path, net: GFPGANv1Clean, restored: np.ndarray) -> None:
    """Other noise maps give another face: the stored ones are what restore uses."""
    other = load(ckpt)
    other.stylegan_decoder.noises.noise14 = torch.zeros_like(net.stylegan_decoder.noises.noise14)
    changed = restore(other, seeded_faces()[:1])
    assert np.abs(changed[0].astype(np.int16) - restored[0]).max() > 5


# -- pre- and post-processing ---------------------------------------------------------------------


def test_to_network_is_the_public_normalisation() -> None:
    levels = np.repeat(np.arange(256, dtype=np.uint8), 2)  # every level, on two rows each
    face = np.broadcast_to(levels[:, None, None], (FACE_SIZE, FACE_SIZE, 3)).copy()
    face[..., 0] = 255 - face[..., 0]  # B differs from R, to see the channel order
    x = to_network(face[None])
    assert x.shape == (1, 3, FACE_SIZE, FACE_SIZE) and x.dtype == np.float32
    # img2tensor(face / 255., bgr2rgb=True) then normalize(mean 0.5, std 0.5), as the public wrapper
    public = torch.from_numpy((face / 255.0).astype(np.float32)[..., ::-1].copy()).permute(2, 0, 1)
    public = public.sub_(torch.full((3, 1, 1), 0.5)).div_(torch.full((3, 1, 1), 0.5))
    np.testing.assert_array_equal(x[0], public.numpy())  # bit for bit, RGB


def test_to_faces_clamps_scales_rounds_and_flips_to_bgr() -> None:
    out = np.zeros((1, 3, FACE_SIZE, FACE_SIZE), np.float32)
    out[0, 0] = 2.0  # R past the top: 255
    out[0, 1] = 0.0  # G at the middle: 127.5 rounds to even, 128
    out[0, 2] = -1.5  # B past the bottom: 0
    faces = to_faces(out)
    assert faces.shape == (1, FACE_SIZE, FACE_SIZE, 3) and faces.dtype == np.uint8
    assert tuple(faces[0, 7, 9]) == (0, 128, 255)  # BGR


def test_restore_refuses_what_is_not_aligned_512_faces(net: GFPGANv1Clean) -> None:
    with pytest.raises(InternalError, match=r"\(k, 512, 512, 3\) uint8 faces, got uint8\[1, 256, 256, 3\]"):
        restore(net, np.zeros((1, 256, 256, 3), np.uint8))


# -- loading --------------------------------------------------------------------------------------


def test_load_reads_the_width_from_the_shapes(net: GFPGANv1Clean) -> None:
    assert net.config == GFPGANConfig(**NARROW)
    assert not net.training
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in net.state_dict().values())


def test_load_takes_params_when_there_is_no_params_ema(tmp_path: Path, net: GFPGANv1Clean) -> None:
    older = load(write_checkpoint(tmp_path / "old.pth", key="params")).state_dict()
    assert older.keys() == net.state_dict().keys()
    assert all(torch.equal(older[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(("change", "message"), [
    ({"drop_key": "condition_shift.6.2.bias"}, r"1 missing key\(s\): condition_shift\.6\.2\.bias"),
    ({"extra_key": "stylegan_decoder.noises.noise15"}, r"1 unexpected key\(s\): stylegan_decoder\.noises\.noise15"),
    ({"reshape_key": "final_conv.weight"}, r"final_conv\.weight is \[33, 32, 3, 3\], expected \[32, 32, 3, 3\]"),
    ({"drop_key": "stylegan_decoder.constant_input.weight"}, r"no stylegan_decoder\.constant_input\.weight"),
], ids=["missing", "unexpected", "shape", "no-width"])
def test_a_wrong_key_is_named_with_the_file(tmp_path: Path, change: dict[str, str], message: str) -> None:
    path = write_checkpoint(tmp_path / "bad.pth", **change)
    with pytest.raises(InputError, match=message) as err:
        load(path)
    assert str(path) in err.value.message
    assert "not a GFPGAN v1.3/v1.4 clean checkpoint" in err.value.message
    assert "GFPGANv1.4.pth" in err.value.message and err.value.kind == "bad_checkpoint"


def test_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wav2lip.pth"
    torch.save({"params": {"audio_encoder.0.conv_block.0.weight": torch.zeros(32, 1, 3, 3)}}, path)
    with pytest.raises(InputError, match=r"not a GFPGAN v1\.3/v1\.4 clean checkpoint: no stylegan_decoder"):
        load(path)


@pytest.mark.parametrize(("content", "message"), [
    ({"state_dict": {}}, r"no 'params_ema' or 'params' state dict \(its keys: state_dict\)"),
    ([1, 2], r"not a GFPGAN checkpoint \(a list, not a dict\)"),
    ({"params_ema": {"conv_body_first.weight": [1.0]}}, r"'params_ema' is not a state dict of tensors"),
], ids=["no-params", "not-a-dict", "not-tensors"])
def test_a_file_of_another_shape_is_refused(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(InputError, match=message):
        load(path)


class _Payload:
    """Anything but tensors: the safe unpickler must refuse it (and never run it)."""


def test_pickled_code_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": _Payload()}, path)
    with pytest.raises(InputError, match=r"not loaded, for safety \(.*_Payload\)"):
        load(path)


def _truncated_checkpoint(tmp_path: Path) -> bytes:
    whole = tmp_path / "whole.pth"
    torch.save({"params_ema": {"final_conv.weight": torch.ones(64, 64)}}, whole)
    return whole.read_bytes()[:600]


@pytest.mark.parametrize("make", [lambda _: b"", lambda _: b"not a checkpoint at all", _truncated_checkpoint],
                         ids=["empty", "text", "truncated"])
def test_an_unreadable_file_is_refused(tmp_path: Path, make) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(make(tmp_path))
    with pytest.raises(InputError, match=r"cannot read as a torch checkpoint \(.+\); is it damaged") as err:
        load(path)
    assert err.value.kind == "bad_checkpoint"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.pth: GFPGAN checkpoint not found") as err:
        load(tmp_path / "missing.pth")
    assert err.value.kind == "missing_file"
