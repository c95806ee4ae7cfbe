"""What a job sends the model workers to restore faces: each reference frame's face aligned
to the restoration network's 512-px tile, cut once and kept with the template.

The tile of a reference frame depends on that frame and its face points alone, so it is
made the first time a job uses the frame (decoded from the template's frame store,
warped by the similarity the points fix) and kept as a JPEG (quality 95, 4:4:4, as the
frames are kept): ``restore-tiles-v<N>.bin`` holds the files end to end and
``restore-tiles-v<N>.index.npy`` (frames, 2) int64 where each starts and how long it is
(0: not made yet). Two jobs on one reference make them once, under the template's lock
for them; a job that dies midway leaves bytes no index names, which the next one skips.
Kept tiles that are not whole (an index that does not load, or names bytes the file does
not hold) are removed, with a warning, and made again.

A tile sent as a JPEG is about a tenth of its 768 KiB of pixels (docs/restoration.md has
the measured bytes per frame); the worker decodes it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from heygem_ray import storage
from heygem_ray.errors import InternalError, storage_errors
from heygem_ray.face.align import similarity, to_tile
from heygem_ray.restore.inputs import Jpegs, RestoreInputs, encode_jpeg, restore_size
from heygem_ray.template.files import Template
from heygem_ray.timeline import Timeline

log = logging.getLogger(__name__)

# Bumped when what a kept tile holds changes (the alignment, the tile's encoding).
TILES_VERSION = 1


def frame_matrices(template: Template, frames: np.ndarray) -> np.ndarray:
    """(frames, 2, 3) float64 frame → tile similarities of the template's frames, filled
    for the indices in ``frames`` (NaN elsewhere)."""
    matrices = np.full((template.frames, 2, 3), np.nan)
    for i in frames:
        matrix = similarity(template.points[i])
        if matrix is None:  # the points are a scaled template: never all at one place
            raise InternalError(f"template {template.root}: the face points of frame {i} fix no alignment")
        matrices[i] = matrix
    return matrices


def restore_inputs(template: Template, timeline: Timeline, scratch: Path) -> Callable[[np.ndarray], RestoreInputs]:
    """Reference frame indices (k,) → what a chunk of them sends to be restored: their
    aligned tiles (made and kept first for the frames this timeline uses that the
    template lacks), crop boxes and similarities.

    Where the template's folder cannot be written (a read-only cache, ``analyze._read_only``)
    the tiles kept there are read where they cover every frame this timeline uses; otherwise
    those frames' tiles are made into the job's ``scratch`` folder, for this job only."""
    used = np.unique(timeline.ref_index)
    matrices = frame_matrices(template, used)
    data = template.root / f"restore-tiles-v{TILES_VERSION}.bin"
    index_path = template.root / f"restore-tiles-v{TILES_VERSION}.index.npy"
    with template.keeping("restore-tiles.lock") as here:
        if here:
            return _kept_tiles(template, used, matrices, data, index_path)
    if not template.store.is_at_path():  # set aside or rebuilt since this job opened it
        index = np.zeros((template.frames, 2), np.int64)
    else:  # a cache that cannot be written: what it holds
        index = _kept_index(index_path, data, template.frames, remove=False)
    if not index[used, 1].all():
        log.info("the template folder %s cannot be written (or was set aside since this job opened it) and holds no "
                 "restoration tiles for the frames this job uses: making them for this job only", template.root)
        data, index = scratch / data.name, np.zeros_like(index)
        with storage_errors(scratch):
            _make(template, used, matrices, data, index)
    kept = np.memmap(data, np.uint8, mode="r")
    return _reader(template, matrices, index, kept)


def _kept_tiles(
    template: Template, used: np.ndarray, matrices: np.ndarray, data: Path, index_path: Path
) -> Callable[[np.ndarray], RestoreInputs]:
    """``restore_inputs`` where the tiles are kept with the template (its lock held)."""
    with storage_errors(template.root):
        index = _kept_index(index_path, data, template.frames)
        todo = used[index[used, 1] == 0]
        if todo.size:
            _make(template, todo, matrices, data, index)
            saved = io.BytesIO()
            np.save(saved, index)
            storage.write_bytes(index_path, saved.getbuffer())
        # Mapped once: the tiles this job uses stay readable if the template is replaced meanwhile.
        kept = np.memmap(data, np.uint8, mode="r")
    return _reader(template, matrices, index, kept)


def _make(template: Template, todo: np.ndarray, matrices: np.ndarray, data: Path, index: np.ndarray) -> None:
    """Append the tiles of frames ``todo`` to ``data``, noting where each is in ``index``."""
    with open(data, "ab") as out:
        at = out.tell()  # past any bytes a job that died left
        for i, frame in zip(todo, template.read_frames(todo), strict=True):
            jpeg = encode_jpeg(to_tile(frame, matrices[i]))
            out.write(jpeg)
            index[i] = at, len(jpeg)
            at += len(jpeg)


def _reader(
    template: Template, matrices: np.ndarray, index: np.ndarray, kept: np.ndarray
) -> Callable[[np.ndarray], RestoreInputs]:
    """Frames (k,) → their ``RestoreInputs``: tiles from ``kept`` (the tiles' bytes, mapped)
    where ``index`` says."""

    def read(frames: np.ndarray) -> RestoreInputs:
        present = template.present[frames]
        files = [kept[index[i, 0] : index[i, 0] + index[i, 1]].tobytes() if face else b""
                 for i, face in zip(frames, present, strict=True)]  # fmt: skip
        boxes, chosen = template.boxes[frames], matrices[frames]
        return RestoreInputs(
            tiles=Jpegs.of(files),
            boxes=boxes,
            matrices=chosen,
            size=restore_size(boxes, chosen),
            present=present,
        )

    return read


def _kept_index(index_path: Path, data: Path, frames: int, remove: bool = True) -> np.ndarray:
    """The index of the tiles kept in ``data`` for a template of ``frames`` frames: none kept
    (all zero) where there is none, or where what is kept is not whole (then removed, unless
    not ``remove``)."""
    none = np.zeros((frames, 2), np.int64)
    if not index_path.is_file():
        return none
    try:
        index = np.load(index_path)
        held = data.stat().st_size if data.is_file() else 0
        whole = index.shape == none.shape and index.dtype == np.int64 and bool((index >= 0).all())
        whole = whole and int((index[:, 0] + index[:, 1]).max(initial=0)) <= held
        why = f"its index is {index.dtype} {index.shape}, or names bytes past the {held:,} that {data.name} holds"
    except (OSError, ValueError, EOFError) as exc:
        whole, why = False, f"its index does not load ({type(exc).__name__}: {exc})"
    if whole:
        return index
    log.warning("the restoration tiles kept in %s are damaged (%s): making them again", data.parent, why)
    if remove:
        index_path.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
    return none
