"""What a job sends the model workers per reference frame: its crop, or the pack's
reference-stage output for it, computed on the workers once per template and kept there
(MuseTalk's VAE latents)."""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from heygem_ray import storage
from heygem_ray.errors import storage_errors
from heygem_ray.job.service import LOOKAHEAD, ModelService, ReferenceFuture
from heygem_ray.packs import PackSpec
from heygem_ray.template.files import Template
from heygem_ray.timeline import Timeline

log = logging.getLogger(__name__)


def reference_inputs(
    template: Template, pack: PackSpec, models: ModelService, timeline: Timeline, chunk_frames: int, scratch: Path
) -> Callable[[np.ndarray], np.ndarray]:
    """Reference frame indices (k,) → what the job sends the workers for them: their crops,
    or, for a pack with a reference stage, that stage's outputs, kept with the template.

    The outputs are computed for the frames this timeline uses that the template lacks,
    on the workers, under the template's lock for them (two jobs on one reference compute
    them once), and kept in ``reference-<key>.npy`` (one item per template frame) with
    ``reference-<key>.done.npy`` (which items are there); the key names the workers'
    reference stage (weights, code, precision). An item counts as there only once written:
    a job that dies midway leaves the rest to the next. Kept outputs that are not whole (a
    file that does not load, or is not of the template's length) are removed, with a
    warning, and computed again.

    Where the template's folder cannot be written (a read-only cache, ``analyze._read_only``)
    nothing is kept: ``_for_this_job``, in the job's ``scratch`` folder.
    """
    if pack.reference is None:
        return template.crops
    key = models.reference_key()
    (spec,) = pack.io(pack.reference)[1]
    data, done_path = template.root / f"reference-{key}.npy", template.root / f"reference-{key}.done.npy"
    shape = (template.frames, *spec.shape)
    with template.keeping(f"reference-{key}.lock") as here:
        if here:
            return _kept_outputs(template, models, timeline, chunk_frames, (data, done_path), shape)
    return _for_this_job(template, models, timeline, chunk_frames, (data, done_path), shape, scratch)


def _kept_outputs(
    template: Template, models: ModelService, timeline: Timeline, chunk_frames: int, paths: tuple[Path, Path],
    shape: tuple[int, ...],
) -> Callable[[np.ndarray], np.ndarray]:  # fmt: skip
    """``reference_inputs`` where the outputs are kept with the template (its lock held)."""
    data, done_path = paths
    with storage_errors(template.root):
        for left in template.root.glob(f".{data.name}.*.tmp"):  # from a job killed while making one
            left.unlink(missing_ok=True)
        done = _kept(data, done_path, shape)
        if done is None:
            tmp = data.with_name(f".{data.name}.{uuid.uuid4().hex}.tmp")
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape).flush()
            storage.allocate(tmp)
            os.replace(tmp, data)
            done = np.zeros(template.frames, bool)
        todo = np.flatnonzero(~done & np.isin(np.arange(template.frames), timeline.ref_index))
        if todo.size:
            store = np.load(data, mmap_mode="r+")  # (its blocks allocated when it was made)
            _compute(store.__setitem__, todo, template, models, chunk_frames)
            store.flush()
            del store
            done[todo] = True
            bitmap = io.BytesIO()
            np.save(bitmap, done)
            storage.write_bytes(done_path, bitmap.getbuffer())
        # Mapped once: the outputs this job uses stay readable if the template is replaced meanwhile.
        kept = np.load(data, mmap_mode="r")

    def read(index: np.ndarray) -> np.ndarray:
        return np.asarray(kept[index])

    return read


def _compute(store: Callable[[np.ndarray, np.ndarray], None], todo: np.ndarray, template: Template,
             models: ModelService, chunk_frames: int) -> None:  # fmt: skip
    """Give ``store`` (template frames (k,), their outputs (k, ...)) the workers'
    reference-stage outputs for the crops of the frames ``todo``, a chunk at a time, a few
    in flight."""
    pending: deque[tuple[np.ndarray, ReferenceFuture]] = deque()
    for s in range(0, todo.size, chunk_frames):
        part = todo[s : s + chunk_frames]
        pending.append((part, models.submit_reference(template.crops(part))))
        if len(pending) > max(LOOKAHEAD, models.workers):
            index, future = pending.popleft()
            store(index, future.result())
    for index, future in pending:
        store(index, future.result())


def _for_this_job(
    template: Template,
    models: ModelService,
    timeline: Timeline,
    chunk_frames: int,
    kept_in: tuple[Path, Path],
    shape: tuple[int, ...],
    scratch: Path,
) -> Callable[[np.ndarray], np.ndarray]:
    """``reference_inputs`` where the template's folder cannot be written: the outputs kept
    there (``kept_in``: data, done) are read where they cover every frame the timeline uses;
    otherwise those frames' outputs are computed into the job's ``scratch`` folder, for this
    job only (warm the cache where it can be written to keep them)."""
    used = np.unique(timeline.ref_index)
    done = _kept(*kept_in, shape, remove=False)
    if done is not None and done[used].all():
        kept = np.load(kept_in[0], mmap_mode="r")
    else:
        log.info("the template cache cannot be written at %s and holds no reference-stage outputs for the frames "
                 "this job uses: computing them for this job only", template.root)  # fmt: skip
        path = scratch / kept_in[0].name
        with storage_errors(scratch):
            # Sparse: only the frames used get blocks (holding the whole template's, 32 KiB a frame for
            # MuseTalk, would cost a job gigabytes of scratch for minutes of audio). Written with
            # plain writes, not through a memory map: a full disk is then an error here (the row
            # fails ``storage``), where a page written through the map would kill the process (SIGBUS).
            header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            start, item = header.offset, header[0].nbytes
            del header
            with open(path, "r+b") as f:
                def store(index: np.ndarray, outputs: np.ndarray) -> None:
                    for i, out in zip(index, np.ascontiguousarray(outputs, np.float32), strict=True):
                        f.seek(start + int(i) * item)
                        f.write(out.tobytes())

                _compute(store, used, template, models, chunk_frames)
        kept = np.load(path, mmap_mode="r")

    def read(index: np.ndarray) -> np.ndarray:
        return np.asarray(kept[index])

    return read


def _kept(data: Path, done_path: Path, shape: tuple[int, ...], remove: bool = True) -> np.ndarray | None:
    """Which of the ``shape[0]`` items ``data`` holds (``done_path``): None where there is no
    ``data``, or where what is kept is not whole (then removed, unless not ``remove``)."""
    if not data.is_file():
        if remove:
            done_path.unlink(missing_ok=True)  # names items of a store that is gone
        return None
    try:
        store = np.load(data, mmap_mode="r")
        done = np.load(done_path) if done_path.is_file() else np.zeros(shape[0], bool)
        whole = store.shape == shape and store.dtype == np.float32 and done.shape == shape[:1] and done.dtype == bool
        why = f"{data.name} is {store.dtype} {store.shape} and {done_path.name} {done.dtype} {done.shape}"
    except (OSError, ValueError, EOFError) as exc:
        whole, why = False, f"{type(exc).__name__}: {exc}"
    if whole:
        return done
    log.warning("the reference-stage outputs kept in %s are damaged (%s): computing them again", data.parent, why)
    if remove:
        data.unlink(missing_ok=True)
        done_path.unlink(missing_ok=True)
    return None
