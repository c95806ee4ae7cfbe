"""What a job sends the model workers per reference frame: its crop, or the pack's
reference-stage output for it, computed on the workers once per template and kept there
(MuseTalk's VAE latents)."""

from __future__ import annotations

import io
import os
import uuid
from collections import deque
from collections.abc import Callable

import numpy as np

from heygem_ray import storage
from heygem_ray.analyze import Template
from heygem_ray.errors import storage_errors
from heygem_ray.job.service import LOOKAHEAD, ModelService, ReferenceFuture
from heygem_ray.packs import PackSpec
from heygem_ray.timeline import Timeline


def reference_inputs(
    template: Template, pack: PackSpec, models: ModelService, timeline: Timeline, chunk_frames: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Reference frame indices (k,) → what the job sends the workers for them: their crops,
    or, for a pack with a reference stage, that stage's outputs, kept with the template.

    The outputs are computed for the frames this timeline uses that the template lacks,
    on the workers, under the template's lock for them (two jobs on one reference compute
    them once), and kept in ``reference-<key>.npy`` (one item per template frame) with
    ``reference-<key>.done.npy`` (which items are there); the key names the workers'
    reference stage (weights, code, precision). An item counts as there only once written:
    a job that dies midway leaves the rest to the next.
    """
    if pack.reference is None:
        return template.crops
    key = models.reference_key()
    (spec,) = pack.io(pack.reference)[1]
    data, done_path = template.root / f"reference-{key}.npy", template.root / f"reference-{key}.done.npy"
    with storage.file_lock(template.root / f"reference-{key}.lock"), storage_errors(template.root):
        if not data.is_file():
            tmp = data.with_name(f".{data.name}.{uuid.uuid4().hex}.tmp")
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(template.frames, *spec.shape)).flush()
            storage.allocate(tmp)
            os.replace(tmp, data)
        done = np.load(done_path) if done_path.is_file() else np.zeros(template.frames, bool)
        todo = np.flatnonzero(~done & np.isin(np.arange(template.frames), timeline.ref_index))
        if todo.size:
            store = np.load(data, mmap_mode="r+")
            pending: deque[tuple[np.ndarray, ReferenceFuture]] = deque()
            for s in range(0, todo.size, chunk_frames):
                part = todo[s : s + chunk_frames]
                pending.append((part, models.submit_reference(template.crops(part))))
                if len(pending) > max(LOOKAHEAD, models.workers):
                    index, future = pending.popleft()
                    store[index] = future.result()
            for index, future in pending:
                store[index] = future.result()
            store.flush()
            del store
            done[todo] = True
            bitmap = io.BytesIO()
            np.save(bitmap, done)
            storage.write_bytes(done_path, bitmap.getbuffer())

    def read(index: np.ndarray) -> np.ndarray:
        return np.asarray(np.load(data, mmap_mode="r")[index])

    return read
