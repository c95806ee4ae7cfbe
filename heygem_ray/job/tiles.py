"""What a job sends the model workers to restore faces: each reference frame's face aligned
to the restoration network's 512-px tile, cut once and kept with the template.

The tile of a reference frame depends on that frame and its face points alone, so it is
made the first time a job uses the frame (decoded from the template's frame store,
warped by the similarity the points fix) and kept as a JPEG (quality 95, 4:4:4, as the
frames are kept): ``restore-tiles-v<N>.bin`` holds the files end to end and
``restore-tiles-v<N>.index.npy`` (frames, 2) int64 where each starts and how long it is
(0: not made yet). Two jobs on one reference make them once, under the template's lock
for them; a job that dies midway leaves bytes no index names, which the next one skips.

A tile sent as a JPEG is about a tenth of its 768 KiB of pixels (docs/restoration.md has
the measured bytes per frame); the worker decodes it.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from heygem_ray import storage
from heygem_ray.analyze import Template
from heygem_ray.errors import InternalError, storage_errors
from heygem_ray.face.align import similarity, to_tile
from heygem_ray.restore import Jpegs, RestoreInputs, encode_jpeg, restore_size
from heygem_ray.timeline import Timeline

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


def restore_inputs(template: Template, timeline: Timeline) -> Callable[[np.ndarray], RestoreInputs]:
    """Reference frame indices (k,) → what a chunk of them sends to be restored: their
    aligned tiles (made and kept first for the frames this timeline uses that the
    template lacks), crop boxes and similarities."""
    used = np.unique(timeline.ref_index)
    matrices = frame_matrices(template, used)
    data = template.root / f"restore-tiles-v{TILES_VERSION}.bin"
    index_path = template.root / f"restore-tiles-v{TILES_VERSION}.index.npy"
    with storage.file_lock(template.root / "restore-tiles.lock"), storage_errors(template.root):
        index = np.load(index_path) if index_path.is_file() else np.zeros((template.frames, 2), np.int64)
        todo = used[index[used, 1] == 0]
        if todo.size:
            with open(data, "ab") as out:
                at = out.tell()  # past any bytes a job that died left
                for i, frame in zip(todo, template.read_frames(todo), strict=True):
                    jpeg = encode_jpeg(to_tile(frame, matrices[i]))
                    out.write(jpeg)
                    index[i] = at, len(jpeg)
                    at += len(jpeg)
            saved = io.BytesIO()
            np.save(saved, index)
            storage.write_bytes(index_path, saved.getbuffer())

    def read(frames: np.ndarray) -> RestoreInputs:
        with open(data, "rb") as f:
            files = []
            for i in frames:
                f.seek(int(index[i, 0]))
                files.append(f.read(int(index[i, 1])))
        boxes, chosen = template.boxes[frames], matrices[frames]
        return RestoreInputs(
            tiles=Jpegs.of(files),
            boxes=boxes,
            matrices=chosen,
            size=restore_size(boxes, chosen),
        )

    return read
