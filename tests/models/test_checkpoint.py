"""Files users download and give as weights, as they come wrong: a pickle that would run
code, a web page or a Git LFS pointer saved in place of the file, weights that are not
finite, MuseTalk's folder given as its archive or one level off, a config of another
model. Each says what the file is and what to give, never runs code, never renders."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from heygem_ray.errors import InputError
from heygem_ray.models import gfpgan, musetalk, wav2lip
from tests.helpers.gfpgan_ckpt import random_state_dict as gfpgan_state_dict
from tests.helpers.gfpgan_ckpt import write_checkpoint as write_gfpgan
from tests.helpers.musetalk_ckpt import write_models
from tests.helpers.wav2lip_ckpt import random_state_dict as wav2lip_state_dict
from tests.helpers.wav2lip_ckpt import write_random_checkpoint

LOADERS = {"wav2lip": wav2lip.load, "gfpgan": gfpgan.load}


class _RunsAShell:
    """What a booby-trapped checkpoint holds: unpickled, it runs a shell command."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.mark}",)


@pytest.mark.parametrize("pack", LOADERS)
def test_a_checkpoint_that_would_run_a_command_is_refused_and_never_run(tmp_path: Path, pack: str) -> None:
    """torch 2.13 words the refusal anew ("Trying to load unsupported GLOBAL posix.system
    …"): the message named nothing and passed on torch's advice to load it unsafely."""
    mark = tmp_path / "ran"
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "params_ema": {}, "trap": _RunsAShell(mark)}, path)
    with pytest.raises(InputError) as err:
        LOADERS[pack](path)
    assert not mark.exists()
    assert err.value.kind == "bad_checkpoint"
    assert f"{path} holds Python objects or code that are not loaded, for safety (posix.system)" in err.value.message
    assert "weights_only" not in err.value.message and "Re-running" not in err.value.message


PAGE = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>...</body></html>"
POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:4fa8...\nsize 435807851\n"


@pytest.mark.parametrize("pack", LOADERS)
@pytest.mark.parametrize(("data", "said"), [
    (PAGE, "is a web page (HTML), not the weights: the download link answered with a page; download the file itself"),
    (b"\n  " + PAGE, "is a web page (HTML)"),
    (POINTER, "is a Git LFS pointer, not the weights: fetch the file itself ('git lfs pull' in its clone)"),
], ids=["page", "page-after-blank", "lfs-pointer"])  # fmt: skip
def test_a_page_or_a_pointer_saved_as_the_weights_says_what_it_is(tmp_path: Path, pack: str, data: bytes,
                                                                   said: str) -> None:  # fmt: skip
    path = tmp_path / "wav2lip_gan.pth"
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        LOADERS[pack](path)
    assert err.value.kind == "bad_checkpoint" and err.value.message.startswith(f"{path} {said}")


@pytest.mark.parametrize("pack", LOADERS)
def test_a_photo_or_a_clip_given_as_the_weights_says_what_it_is(tmp_path: Path, pack: str, examples: Path) -> None:
    """A still or a clip picked in place of the checkpoint was 'damaged or incomplete?'
    (torch's 'Unsupported operand 255' for a JPEG)."""
    for name, said in (("presenter.jpg", "a JPEG image"), ("presenter.mp4", "an MP4 (or MOV) video"),
                       ("lesson1.wav", "a WAV audio file"), ("lesson2.mp3", "an MP3 audio file")):  # fmt: skip
        path = Path(shutil.copy(examples / name, tmp_path / f"{name}.pth"))
        with pytest.raises(InputError) as err:
            LOADERS[pack](path)
        assert err.value.kind == "bad_checkpoint" and err.value.message.startswith(f"{path} is {said}, not the weights. ")


def test_a_wav2lip_checkpoint_given_for_restoration_says_where_it_goes(tmp_path: Path) -> None:
    """The reverse of a GFPGAN file given to Wav2Lip (which said so): this said only that
    no 'params_ema' or 'params' was in it, listing Wav2Lip's keys."""
    path = write_random_checkpoint(tmp_path / "wav2lip_gan.pth", seed=0)
    with pytest.raises(InputError) as err:
        gfpgan.load(path)
    assert err.value.kind == "bad_checkpoint" and err.value.message.startswith(
        f"{path} is a Wav2Lip checkpoint (the lip-sync pack's: give it to --checkpoint with --pack wav2lip), not "
        "GFPGAN's (face restoration). Pass the public GFPGANv1.4.pth")
    expert = tmp_path / "lipsync_expert.pth"  # which --checkpoint refuses too: not sent there
    torch.save({"state_dict": {"face_encoder.0.conv_block.0.weight": torch.randn(4, 3, 3, 3),
                               "audio_encoder.0.conv_block.0.weight": torch.randn(4, 1, 3, 3)}}, expert)  # fmt: skip
    with pytest.raises(InputError) as err:
        gfpgan.load(expert)
    assert err.value.message.startswith(f"{expert} is one of the networks Wav2Lip's release trains its generator with")


def test_weights_that_are_not_finite_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    """NaN running variances rendered a black box for a mouth with verdict `ok`."""
    sd = wav2lip_state_dict()
    name = next(k for k in sd if k.endswith("running_var"))
    sd[name] = torch.full_like(sd[name], float("nan"))
    torch.save({"state_dict": sd}, tmp_path / "nan.pth")
    with pytest.raises(InputError) as err:
        wav2lip.load(tmp_path / "nan.pth")
    assert err.value.kind == "bad_checkpoint"
    assert err.value.message.startswith(f"{tmp_path / 'nan.pth'}: its tensor {name} holds NaN or infinite values")

    sd = gfpgan_state_dict()
    name = sorted(sd)[3]
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] = float("inf")
    torch.save({"params_ema": sd}, tmp_path / "inf.pth")
    with pytest.raises(InputError, match=rf"its tensor {name} holds NaN or infinite values"):
        gfpgan.load(tmp_path / "inf.pth")


def test_weights_that_hold_one_value_throughout_are_refused(tmp_path: Path) -> None:
    """A Wav2Lip file of the right shapes whose every tensor is zeros (a placeholder, a file
    saved before training) loaded, and rendered the same mouth whatever the audio; one
    whose kernels are a constant each, the same. Trained weights with one zero tensor among
    them (a bias, a layer left at its start) still load."""
    sd = wav2lip_state_dict()
    torch.save({"state_dict": {k: torch.zeros_like(v) for k, v in sd.items()}}, tmp_path / "zeros.pth")
    with pytest.raises(InputError) as err:
        wav2lip.load(tmp_path / "zeros.pth")
    kernels = sum(v.is_floating_point() and v.dim() >= 2 for v in sd.values())
    assert err.value.kind == "bad_checkpoint" and err.value.message.startswith(
        f"{tmp_path / 'zeros.pth'}: each of its {kernels} weight tensors is all zeros: these are no trained weights")
    torch.save({"state_dict": {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in sd.items()}},
               tmp_path / "halves.pth")  # fmt: skip
    with pytest.raises(InputError, match="weight tensors holds one value throughout"):
        wav2lip.load(tmp_path / "halves.pth")
    first = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() >= 2)
    torch.save({"state_dict": sd | {first: torch.zeros_like(sd[first])}}, tmp_path / "one_zero.pth")
    wav2lip.load(tmp_path / "one_zero.pth")


def test_gfpgan_saved_as_its_bare_state_dict_or_from_data_parallel_loads(tmp_path: Path) -> None:
    """As Wav2Lip's does; and Wav2Lip given GFPGAN's file says which it is."""
    write_gfpgan(tmp_path / "public.pth")
    want = gfpgan.load(tmp_path / "public.pth").state_dict()
    sd = gfpgan_state_dict()
    torch.save(sd, tmp_path / "bare.pth")
    torch.save({"params_ema": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "dp.pth")
    for name in ("bare.pth", "dp.pth"):
        got = gfpgan.load(tmp_path / name).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(InputError, match=r"public\.pth is a GFPGAN checkpoint \(face restoration\), not Wav2Lip's: "
                                         r"give it to --restore-checkpoint with --restore gfpgan"):  # fmt: skip
        wav2lip.load(tmp_path / "public.pth")
    write_random_checkpoint(tmp_path / "w.pth")
    assert isinstance(wav2lip.load(tmp_path / "w.pth"), torch.nn.Module)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MuseTalk models/ folder in the public layout."""
    return write_models(tmp_path_factory.mktemp("musetalk") / "models")


def _archive(models: Path, out: Path, kind: str) -> Path:
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as z:
            for f in models.rglob("*"):
                z.write(f, f.relative_to(models.parent))
    else:
        with tarfile.open(out, "w:gz" if kind == "tar.gz" else "w") as t:
            t.add(models, arcname="models")
    return out


@pytest.mark.parametrize(("kind", "said"), [("zip", "a zip archive"), ("tar.gz", "a gzip archive (.tar.gz)"),
                                            ("tar", "a tar archive")])  # fmt: skip
def test_musetalk_given_its_folder_as_an_archive_says_unpack_it(tmp_path: Path, models: Path, kind: str,
                                                                said: str) -> None:  # fmt: skip
    archive = _archive(models, tmp_path / f"models.{kind}", kind)
    with pytest.raises(InputError) as err:
        musetalk.load(archive)
    assert err.value.message.startswith(f"MuseTalk weights: {archive} is {said}, not MuseTalk's models/ folder: "
                                        "unpack it, and give the models/ folder inside")  # fmt: skip


def test_musetalk_given_the_folder_above_or_below_says_which_to_give(tmp_path: Path, models: Path) -> None:
    """The MuseTalk clone (which holds models/), or models/musetalkV15 (the UNet's): a list
    of seven files "not found" said neither."""
    with pytest.raises(InputError, match=rf"{models.parent} holds MuseTalk's models/ folder: give {models}\."):
        musetalk.load(models.parent)
    with pytest.raises(InputError, match=rf"{models / 'musetalkV15'} is the UNet's folder inside MuseTalk's models/ "
                                         rf"folder: give {models}\."):  # fmt: skip
        musetalk.load(models / "musetalkV15")


def test_musetalk_with_another_models_config_or_bad_settings_names_the_file(tmp_path: Path, models: Path) -> None:
    """Whisper's config.json copied as the UNet's built a UNet of 860M parameters (3.9 GB)
    before failing on its weights; a setting of the wrong type was a TypeError naming no file."""
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    unet_config = copy / "musetalkV15" / "musetalk.json"
    shutil.copy(copy / "whisper" / "config.json", unet_config)
    with pytest.raises(InputError) as err:
        musetalk.load(copy)
    assert err.value.kind == "bad_checkpoint"
    assert err.value.message.startswith(f"{unet_config} is the config of whisper, not of MuseTalk's UNet2DConditionModel")
    config = json.loads((models / "musetalkV15" / "musetalk.json").read_text())
    config["block_out_channels"] = "wide"
    unet_config.write_text(json.dumps(config))
    with pytest.raises(InputError) as err:
        musetalk.load(copy)
    assert err.value.kind == "bad_checkpoint"
    assert err.value.message.startswith(f"{unet_config}: its settings do not build a UNet2DConditionModel (")


def test_musetalk_weights_that_are_a_page_say_so(tmp_path: Path, models: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    (copy / "musetalkV15" / "unet.pth").write_bytes(io.BytesIO(PAGE).read())
    with pytest.raises(InputError, match=r"unet\.pth is a web page \(HTML\), not the weights"):
        musetalk.load(copy)


def test_a_weights_folder_with_a_link_back_to_itself_is_hashed_once(tmp_path: Path, models: Path) -> None:
    """`models/self -> models/` (a link to a folder above): the walk went round it 40 levels
    deep, hashing the whole folder at each (160 GB at MuseTalk's size). Files that are links
    into a blob store (a Hugging Face snapshot) are still followed."""
    from heygem_ray import identity

    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    plain = identity.weights_digest(copy)
    (copy / "self").symlink_to(copy, target_is_directory=True)
    assert identity.weights_digest(copy) == plain
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    shutil.copytree(models, blobs)
    for f in blobs.rglob("*"):
        if f.is_file():
            link = snapshot / f.relative_to(blobs)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
    assert identity.weights_digest(snapshot) == plain


def test_musetalks_weights_are_the_files_its_networks_read_not_the_rest_of_models(tmp_path: Path,
                                                                                  models: Path) -> None:
    """MuseTalk's download puts the v1 UNet (3.4 GB), DWPose, a SyncNet and a face parser
    beside the files its 1.5 networks read: removing or changing one of those must not
    render every video of a run again, nor should hashing them cost each new machine."""
    from heygem_ray import RenderConfig, identity

    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    cfg = RenderConfig(pack="musetalk", checkpoint=copy)
    first = identity.render_weights(cfg)
    (copy / "musetalk").mkdir()
    (copy / "musetalk" / "pytorch_model.bin").write_bytes(b"the v1 UNet")
    (copy / "dwpose").mkdir()
    (copy / "dwpose" / "dw-ll_ucoco_384.pth").write_bytes(b"a pose model")
    assert identity.render_weights(cfg) == first
    (copy / "dwpose" / "dw-ll_ucoco_384.pth").unlink()
    assert identity.render_weights(cfg) == first
    with open(copy / "sd-vae" / "config.json", "a") as f:
        f.write(" ")
    assert identity.render_weights(cfg) != first


def test_a_checkpoint_that_is_a_broken_link_says_where_it_points(tmp_path: Path) -> None:
    """A link into a download folder since moved: "not found" alone sent users looking for
    the link, which is there."""
    link = tmp_path / "wav2lip_gan.pth"
    link.symlink_to(tmp_path / "downloads" / "wav2lip_gan.pth")
    with pytest.raises(InputError) as err:
        wav2lip.load(link)
    assert err.value.kind == "missing_file"
    assert err.value.message.startswith(f"{link}: is a link to {tmp_path / 'downloads' / 'wav2lip_gan.pth'}, which is "
                                        "not there (checkpoint not found)")  # fmt: skip


@pytest.mark.parametrize("option", ["--checkpoint", "--restore-checkpoint"])
def test_a_missing_checkpoint_is_named_by_its_option(tmp_path: Path, option: str) -> None:
    """With both given, 'checkpoint X does not exist' did not say which of the two."""
    from heygem_ray.config import RenderConfig
    from heygem_ray.identity import render_weights

    there = write_random_checkpoint(tmp_path / "wav2lip_gan.pth", seed=0)
    gone = tmp_path / "nowhere.pth"
    render = (RenderConfig(pack="wav2lip", checkpoint=gone) if option == "--checkpoint" else
              RenderConfig(pack="wav2lip", checkpoint=there, restore="gfpgan", restore_checkpoint=gone))  # fmt: skip
    with pytest.raises(InputError) as err:
        render_weights(render)
    assert err.value.kind == "missing_file" and err.value.message.startswith(f"{option} {gone} does not exist")
