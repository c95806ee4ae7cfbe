"""The restoration network on a model worker: opened like a pack's stages, run on a
chunk's tiles (the package's docstring has the data flow; ``inputs`` the parts the job shares).

The stage opens on its own backend (``GFPGAN``'s ``cpu_backends``: on a CPU ONNX Runtime
runs it 1.7-2.4× faster than PyTorch, bench/bench_restore.py) through the same runners and
engine store as a pack's stages, under the engine-store name ``gfpgan/restore``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch import nn

from heygem_ray.backends import RunnerSet, open_runners
from heygem_ray.config import BackendName, RenderConfig, RestoreName
from heygem_ray.engines import EngineStore, Precision
from heygem_ray.errors import InternalError
from heygem_ray.face.align import TILE, box_grid, from_tile, to_tile
from heygem_ray.models import gfpgan
from heygem_ray.packs import StageCall, StageIO
from heygem_ray.restore.inputs import Jpegs, RestoreInputs, encode_jpeg

STAGE = "restore"
# Faces per network call: a 512-px face's activations are about 0.3 GB in fp32, and a GPU
# is near its best rate from batch 16 (docs/restoration.md).
MAX_BATCH = 16


@dataclass(frozen=True)
class Restorer:
    """A restoration network as the backends open it: like a pack, declared stage I/O and
    the backends to try on a CPU; unlike one, no crops, features or int8 graphs."""

    name: str  # the engine store's folder for it
    stages: Mapping[str, StageIO]
    # ``--backend auto`` without a GPU: fastest first for this network on a CPU.
    cpu_backends: tuple[str, ...]
    int8_stages: tuple[str, ...] = ()

    def io(self, stage: str) -> StageIO:
        """Declared (inputs, outputs) of ``stage``."""
        if stage not in self.stages:
            raise ValueError(f"{self.name} has no stage {stage!r} (it has {', '.join(self.stages)})")
        return self.stages[stage]

    def load_stages(self, checkpoint: Path) -> dict[str, nn.Module]:
        """The network from its public checkpoint (``InputError`` naming the file if it is not one)."""
        return {STAGE: gfpgan.load(checkpoint)}


GFPGAN = Restorer("gfpgan", {STAGE: gfpgan.STAGE_IO}, cpu_backends=("onnxruntime", "pytorch"))
_RESTORERS = {"gfpgan": GFPGAN}


def get_restorer(name: RestoreName) -> Restorer:
    if name not in _RESTORERS:
        raise ValueError(f"unknown restorer {name!r}")
    return _RESTORERS[name]


def load_restorer(cfg: RenderConfig) -> dict[str, nn.Module]:
    """``cfg.restore``'s network from ``cfg.restore_checkpoint`` (a worker loads it before
    the pack's engines are built: a wrong file stops it at once, not after minutes of them)."""
    if cfg.restore == "none" or cfg.restore_checkpoint is None:
        raise InternalError(f"load_restorer with restore {cfg.restore!r} and checkpoint {cfg.restore_checkpoint}")
    return get_restorer(cfg.restore).load_stages(cfg.restore_checkpoint)


def open_restorer(cfg: RenderConfig, pack_precision: Precision, *, device: str, store: EngineStore,
                  backend: BackendName, stages: dict[str, nn.Module] | None = None) -> RunnerSet:
    """``cfg.restore``'s network (``stages``, else loaded from ``cfg.restore_checkpoint``),
    opened on ``backend`` (auto: the fastest for it here) at the precision the pack's stages
    run at; an int8 pack runs it at fp32 (it has no int8 graph), saying so in the note. Its
    runners take up to ``restore_batch(cfg)`` faces a call (the TensorRT profile's)."""
    stages = stages if stages is not None else load_restorer(cfg)
    restorer = get_restorer(cfg.restore)
    precision: Precision = "fp32" if pack_precision == "int8" else pack_precision
    opened = open_runners(restorer, stages, device=device, store=store,
                          backend=backend, precision=precision, batch_sizes=[restore_batch(cfg)])
    if pack_precision == "int8":
        note = "; ".join(n for n in (f"{restorer.name} has no int8 graph: running fp32", opened.note) if n)
        return dataclasses.replace(opened, note=note)
    return opened


def restore_batch(cfg: RenderConfig) -> int:
    """Faces per restoration call: the pack's batch, at most ``MAX_BATCH``."""
    return min(cfg.batch_size, MAX_BATCH)


def tile_with_crop(tile: np.ndarray, crop: np.ndarray, base: np.ndarray | None, box: np.ndarray,
                   matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference ``tile`` (512, 512, 3) uint8 with the pack's generated ``crop`` (S, S, 3)
    uint8 pasted in, as compose pastes it into the frame: the unrestored output, aligned.

    ``mask`` (S, S) float32 is the pack's paste mask; with ``base`` (the crop the pack was
    given: its "residual" mode) only the change is pasted, else the crop replaces the tile
    under the mask."""
    size = crop.shape[1], crop.shape[0]
    to = box_grid(box, size, matrix)  # crop pixel → tile
    weight = cv2.warpAffine(mask, to, (TILE, TILE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)[..., None]  # fmt: skip
    under = tile.astype(np.float32)
    generated = to_tile(crop, to).astype(np.float32)
    if base is None:
        out = weight * generated + (1 - weight) * under
    else:
        out = under + weight * (generated - to_tile(base, to).astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def restore_chunk(call: StageCall, inputs: RestoreInputs, crops: np.ndarray, base: np.ndarray | None,
                  mask: np.ndarray, batch: int = MAX_BATCH) -> Jpegs:
    """A chunk's generated crops (k, S, S, 3) uint8 (and ``base``, the crops the pack was
    given, for a "residual" pack) → the restored faces over their boxes, k R × R BGR
    images (R = ``inputs.size``) as JPEG files, none (empty) for a frame without the face
    (``inputs.present``); ``batch`` faces at a time through the ``restore`` stage on ``call``."""
    if len(inputs) != len(crops):
        raise InternalError(f"a chunk of {len(crops)} crops came with {len(inputs)} aligned tiles")
    side = inputs.size
    faces = np.flatnonzero(inputs.present)
    out = [b""] * len(crops)
    for start in range(0, len(faces), batch):
        part = faces[start : start + batch]
        tiles = np.stack([
            tile_with_crop(inputs.tile(i), crops[i], None if base is None else base[i], inputs.boxes[i],
                           inputs.matrices[i], mask)
            for i in part
        ])  # fmt: skip
        (output,) = GFPGAN.io(STAGE)[1]
        restored = gfpgan.to_faces(call(STAGE, {"faces": gfpgan.to_network(tiles)})[output.name])
        for j, i in enumerate(part):
            face = from_tile(restored[j], box_grid(inputs.boxes[i], (side, side), inputs.matrices[i]), (side, side))
            out[i] = encode_jpeg(face)
    return Jpegs.of(out)
