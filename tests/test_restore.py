"""The restoration stage's pieces, without Ray or a video: its settings, the aligned tiles a
chunk sends, the worker's paste of the pack's crop into them, the restored face's way
back over the crop box, and the weights a rerun compares."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from heygem_ray import identity
from heygem_ray.config import RenderConfig, RunConfig
from heygem_ray.errors import InputError
from heygem_ray.face import FaceTrack
from heygem_ray.face.align import alignment_points, similarity, to_tile
from heygem_ray.geometry import feathered_ellipse
from heygem_ray.restore.inputs import (
    SAMPLE_HEIGHT,
    Jpegs,
    RestoreInputs,
    encode_jpeg,
    restore_size,
    side_by_side,
)
from heygem_ray.restore.stage import restore_chunk
from tests.helpers.bgr import cut, paste, paste_restored
from tests.helpers.gfpgan_ckpt import write_checkpoint

S = 96  # the pack's crop side in these tests


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "words"), [
    ({"restore": "gfpgan"}, "--restore gfpgan needs its weights: pass --restore-checkpoint PATH (the public GFPGANv1.4.pth"),
    ({"restore_checkpoint": Path("g.pth")}, "--restore-checkpoint is only used with --restore gfpgan"),
    ({"restore": "codeformer", "restore_checkpoint": Path("g.pth")}, "unknown restore 'codeformer': choose one of none, gfpgan"),
    ({"restore": "gfpgan", "restore_checkpoint": Path("g.pth"), "restore_blend": 1.5}, "--restore-blend must be from 0 to 1, not 1.5"),
    ({"restore_blend": 0.5}, "--restore-blend is only used with --restore gfpgan"),
    ({"restore": "gfpgan", "restore_checkpoint": Path("s3://b/g.pth")}, "--restore-checkpoint s3://b/g.pth: give a local path"),
])  # fmt: skip
def test_restore_settings_are_checked_with_what_to_do(settings: dict, words: str) -> None:
    with pytest.raises(InputError, match=None) as caught:
        RenderConfig(**settings)
    assert caught.value.kind == "bad_argument" and words in caught.value.message


def test_config_hash_covers_the_restore_settings_only_when_restoring(tmp_path: Path) -> None:
    plain = RunConfig(output_dir=tmp_path, render=RenderConfig(pack="warp"))
    # Off, the hash is that of the settings without the restore fields (nor --max-resolution,
    # --max-fps, --reference-seconds and --reference-start, at their defaults): what it was before them.
    payload = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(plain.render).items()
               if k not in ("limits", "restore", "restore_checkpoint", "restore_blend", "max_resolution", "max_fps",
                            "reference_seconds", "reference_start")}  # fmt: skip
    assert plain.config_hash() == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    on = RenderConfig(restore="gfpgan", restore_checkpoint=tmp_path / "g.pth")
    hashes = {RunConfig(output_dir=tmp_path, render=r).config_hash()
              for r in (plain.render, on, dataclasses.replace(on, restore_blend=0.5),
                        dataclasses.replace(on, restore_checkpoint=tmp_path / "h.pth"))}
    assert len(hashes) == 4


def test_the_weights_a_rerun_compares_cover_the_restore_checkpoint(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "g.pth", seed=0)
    off = RenderConfig()
    on = RenderConfig(restore="gfpgan", restore_checkpoint=ckpt)
    assert identity.render_weights(off) == identity.weights_digest(None) == "none"  # as before restoration existed
    first = identity.render_weights(on)
    assert first == f"none;gfpgan=sha256:{hashlib.sha256(ckpt.read_bytes()).hexdigest()}"
    write_checkpoint(ckpt, seed=1)  # new weights under the same name
    assert identity.render_weights(on) != first


# -- the data a chunk carries, and the worker's side of it ----------------------------------------


def _frame(h: int = 300, w: int = 360, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(20, 235, (7, 7, 3)).astype(np.float32)
    return np.rint(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)).clip(0, 255).astype(np.uint8)


def _case(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame, a crop box in it and the frame → tile similarity of a face whose box is the
    crop's (its mouth where a frontal box has it)."""
    frame = _frame()
    face = np.array([box], np.float32)
    track = FaceTrack(boxes=face, present=np.ones(1, bool), detected=np.ones(1, bool),
                      mouths=np.array([[0.5, 0.83]], np.float32), chins=np.array([1.08], np.float32))
    matrix = similarity(alignment_points(track)[0])
    assert matrix is not None
    return frame, np.array(box, np.int32), matrix


def _inputs(tiles: list[np.ndarray], boxes: np.ndarray, matrices: np.ndarray,
            present: np.ndarray | None = None) -> RestoreInputs:  # fmt: skip
    here = np.ones(len(tiles), bool) if present is None else present
    return RestoreInputs(Jpegs.of([encode_jpeg(t) if face else b"" for t, face in zip(tiles, here, strict=True)]),
                         boxes, matrices, restore_size(boxes, matrices), here)  # fmt: skip


def _identity(stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A 'restoration' that changes nothing: what it gets is what comes back."""
    assert stage == "restore"
    return {"restored": inputs["faces"]}


@pytest.mark.parametrize("mode", ["replace", "residual"])
def test_an_unchanging_restorer_gives_back_the_unrestored_frame(mode: str) -> None:
    """The whole way: the reference tile, the pack's crop pasted into it on the worker, the
    tile sampled over the box, blended into the frame compose made. With a network that
    changes nothing the frame stays what compose made, give or take the resampling: so
    every transform on the way lines up with the others."""
    frame, box, matrix = _case((120, 80, 240, 200))
    crop = cut(frame, box, S)
    generated = crop.copy()
    generated[S // 2 :] = 255 - generated[S // 2 :]  # the pack redrew the lower half
    mask = feathered_ellipse(S, centre=(0.0, 0.3), radii=(0.8, 0.6), feather=0.2)
    base = crop if mode == "residual" else None
    made = frame.copy()
    paste(made, generated, box, mask, base)  # compose: the unrestored frame

    inputs = _inputs([to_tile(frame, matrix)], box[None], matrix[None])
    restored = restore_chunk(_identity, inputs, generated[None], None if base is None else base[None], mask)
    assert len(restored) == 1 and restored.nbytes < 0.3 * inputs.size**2 * 3  # JPEG, not the pixels
    face = restored.image(0, (inputs.size, inputs.size), "face")
    out = made.copy()
    paste_restored(out, face, box, matrix, mask)

    changed = np.abs(made.astype(np.int16) - frame).max(axis=2) > 40  # where the pack's change shows most
    assert changed.sum() > 2000
    diff = np.abs(out.astype(np.int16) - made)
    assert diff[changed].mean() < 3.0  # a transform 3 px off gives more than 10 here
    outside = np.ones(frame.shape[:2], bool)
    spread = cv2.resize(mask, (120, 120), interpolation=cv2.INTER_LINEAR)
    outside[80:200, 120:240] = spread == 0
    np.testing.assert_array_equal(out[outside], made[outside])


def test_frames_without_the_face_are_not_restored() -> None:
    """A presenter away for part of the chunk: the network gets only the frames with the
    face (they were restored too, and compose threw them away), in batches of those."""
    frame, box, matrix = _case((120, 80, 240, 200))
    crop = cut(frame, box, S)
    present = np.array([False, True, False, True, True])
    inputs = _inputs([to_tile(frame, matrix)] * 5, np.stack([box] * 5), np.stack([matrix] * 5), present)
    batches = []

    def counting(stage: str, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batches.append(len(given["faces"]))
        return _identity(stage, given)

    mask = feathered_ellipse(S, centre=(0.0, 0.3), radii=(0.8, 0.6), feather=0.2)
    restored = restore_chunk(counting, inputs, np.stack([crop] * 5), None, mask, batch=2)
    assert batches == [2, 1]
    assert len(restored) == 5
    ends = np.diff(restored.ends, prepend=0)
    assert [bool(n) for n in ends] == present.tolist()  # nothing for the frames without it
    whole = restore_chunk(_identity, _inputs([to_tile(frame, matrix)], box[None], matrix[None]), crop[None], None,
                          mask)  # fmt: skip
    np.testing.assert_array_equal(restored.image(3, (inputs.size,) * 2, "face"), whole.image(0, (inputs.size,) * 2, "face"))


def test_restored_faces_come_back_at_the_detail_the_frame_can_show() -> None:
    """R is the box's side in frame pixels, unless the tile has fewer over it."""
    boxes = np.array([[0, 0, 100, 120], [0, 0, 80, 80]], np.int32)
    magnify = np.tile(np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), (2, 1, 1))  # small faces: the tile has more
    shrink = np.tile(np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]), (2, 1, 1))  # a 4K close-up: the frame has more
    assert restore_size(boxes, magnify) == 120
    assert restore_size(boxes, shrink) == 60


def test_inputs_carry_each_tile_as_a_jpeg_and_decode_it() -> None:
    frame, box, matrix = _case((120, 80, 240, 200))
    tiles = [to_tile(frame, matrix), to_tile(255 - frame, matrix)]
    inputs = _inputs(tiles, np.stack([box, box]), np.stack([matrix, matrix]))
    assert len(inputs) == 2
    for i, tile in enumerate(tiles):
        assert np.abs(inputs.tile(i).astype(int) - tile).mean() < 1.0  # JPEG quality 95
    assert inputs.nbytes < 0.25 * 2 * tiles[0].nbytes  # a fraction of the pixels' bytes


def test_side_by_side_shows_the_box_before_then_after() -> None:
    before = _frame(seed=1)
    after = before.copy()
    after[80:200, 180:240] = 0  # the box's right half
    jpeg = side_by_side(before, after, np.array([120, 80, 240, 200]))
    assert jpeg is not None
    sample = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert sample.shape == (SAMPLE_HEIGHT, 2 * SAMPLE_HEIGHT, 3)
    left, right = sample[:, :SAMPLE_HEIGHT].astype(int), sample[:, SAMPLE_HEIGHT:].astype(int)
    assert right[:, SAMPLE_HEIGHT // 2 + 8 :].mean() < 8 < left[:, SAMPLE_HEIGHT // 2 + 8 :].mean()
    assert np.abs(right[:, : SAMPLE_HEIGHT // 2 - 8] - left[:, : SAMPLE_HEIGHT // 2 - 8]).mean() < 3
    assert side_by_side(before, after, np.array([400, 10, 500, 100])) is None  # outside the frame
