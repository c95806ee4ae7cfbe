"""One job, start to finish: the numbered recipe, free of Ray.

``render_job`` is called by the Ray job task (``ray_exec.py``) and, in tests and for
debugging, directly with an in-process model service. Whatever goes wrong becomes the
job's result row; nothing escapes to stop the batch.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from heygem_ray import media, storage
from heygem_ray.analyze import Template, analyze
from heygem_ray.config import RenderConfig, default_download_dir
from heygem_ray.errors import HeygemError, InputError, InternalError, storage_error, storage_errors
from heygem_ray.features import SAMPLE_RATE, Pcm
from heygem_ray.geometry import paste
from heygem_ray.manifest import Job, row_label
from heygem_ray.packs import ChunkFeatures, Features, PackSpec, get_pack
from heygem_ray.results import JobResult
from heygem_ray.storage import Location
from heygem_ray.timeline import Timeline, plan
from heygem_ray.worker import ChunkOutput, ModelWorker, WorkerInfo

log = logging.getLogger(__name__)

# Chunks rendered ahead of the one being composed, at least: keeps the workers busy
# while the job composes. A job sends as many ahead as there are workers, so one long
# video spreads over every GPU; the crops it holds are bounded by that, not by its length.
LOOKAHEAD = 2
# The MP4 being written, beside its output (resume.py deletes those of lost attempts).
PARTIAL_SUFFIX = ".part.mp4"
# A job's scratch folder in the temporary directory: ``heygem-job-<pid>@<host>-<random>``.
SCRATCH_PREFIX = "heygem-job-"


class ChunkFuture(Protocol):
    def result(self) -> ChunkOutput: ...


class ReferenceFuture(Protocol):
    def result(self) -> np.ndarray: ...


class ModelService(Protocol):
    """Where the pack's stages run: in this process, or on Ray worker actors."""

    @property
    def workers(self) -> int:
        """How many chunks can render at once."""
        ...

    def submit(self, features: Features, given: np.ndarray) -> ChunkFuture:
        """A chunk: its features and, per frame, its crops or reference-stage outputs."""
        ...

    def submit_reference(self, crops: np.ndarray) -> ReferenceFuture:
        """Reference frames' crops through the pack's reference stage."""
        ...

    def reference_key(self) -> str:
        """What the workers' reference stage computes (``WorkerInfo.reference_key``)."""
        ...


class _Done:
    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


class InProcessService:
    """Runs chunks at once on a worker in this process (tests, debugging)."""

    workers = 1

    def __init__(self, worker: ModelWorker):
        self.worker = worker

    def submit(self, features: Features, given: np.ndarray) -> ChunkFuture:
        return _Done(self.worker.run_chunk(features, given))

    def submit_reference(self, crops: np.ndarray) -> ReferenceFuture:
        return _Done(self.worker.run_reference(crops))

    def reference_key(self) -> str:
        return self.worker.ready().reference_key


class _Stages:
    """Wall seconds per stage, and which stage is running (for error rows)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = "plan"

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current = name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def render_job(
    job: Job,
    cfg: RenderConfig,
    cache_dir: Path,
    models: ModelService,
    on_frames: Callable[[int], None] = lambda n: None,
) -> JobResult:
    """Render ``job`` to its MP4 and describe what happened."""
    t_start = time.perf_counter()
    pack = get_pack(cfg.pack)
    result = JobResult.for_job(job, cfg.pack)
    stages = _Stages()
    try:
        if job.problem is not None:
            raise job.problem
        if job.output is None:
            raise InternalError(f"{job.label} has neither an output nor a problem")
        with job_scratch() as scratch:
            # 1. decode the audio to 16 kHz mono, into a file (a missing, empty, unreadable
            #    or too long file stops here; one in a bucket is downloaded first)
            with stages("probe"):
                audio = storage.fetch(job.audio, "audio", default_download_dir())
                media.decode_audio(audio, Path(scratch) / "audio.f32", SAMPLE_RATE,
                                   max_seconds=cfg.limits.max_audio_seconds)  # fmt: skip
                pcm = Pcm.from_file(Path(scratch) / "audio.f32")
            # 2. analyze the reference (a cached template when seen before)
            with stages("analyze"):
                video = storage.fetch(job.video, "reference", default_download_dir())
                template, result.template_cached = analyze(video, pack.geometry, cfg.detector, cache_dir, cfg.limits)
            # 3. plan the output frames; features are computed a chunk at a time in step 5
            with stages("features"):
                timeline = plan(pcm.samples / SAMPLE_RATE, template.frames, template.fps, cfg.loop, template.is_image)
                features = pack.features(pcm, template.fps, timeline.frames)
            # 4. what the render stage gets per reference frame: its crop, or the pack's
            #    reference-stage output for it (computed on the workers once per template)
            with stages("analyze"):
                given = _given(template, pack, models, timeline, cfg.chunk_frames)
            # 5+6. motion and render per chunk on the workers, composed and encoded here
            last = _render_and_compose(
                job.output, audio, template, timeline, features, given, pack, cfg, models, stages, on_frames,
                Path(scratch),
            )
        # Which file was published, for a rerun to tell it from any other put there later.
        published = storage.stat(job.output)
        if published is None:
            raise InputError(f"{job.output} was gone right after it was written: check what else writes to "
                             "the output folder", kind="missing_file")  # fmt: skip
        result.output_bytes, result.output_mtime_ns = published.size, published.mtime_ns
        result.status = "ok"
        result.frames = timeline.frames
        result.face_lost_frames = int(np.count_nonzero(~template.present[timeline.ref_index]))
        result.audio_seconds = pcm.samples / SAMPLE_RATE
        result.backend, result.precision, result.backend_note = last.backend, last.precision, last.backend_note
        result.engine_key, result.calibration = last.engine_key, last.calibration
        result.node, result.gpu = last.node, last.device.gpu
        result.compute_capability = last.device.compute_capability
    except Exception as exc:
        known = exc if isinstance(exc, HeygemError) else storage_error(exc) if isinstance(exc, OSError) else None
        if known is not None:  # the user's to fix: a bad file, a full disk, a read-only folder, …
            result.error_kind, result.error_stage = known.kind, stages.current
            result.error = f"{job.label}: {known.message}"
        else:  # a bug: keep the batch going, keep the evidence
            log.error("%s failed in %s:\n%s", job.label, stages.current, traceback.format_exc())
            result.error_kind, result.error_stage = "internal", stages.current
            result.error = (
                f"{job.label}: internal error in stage {stages.current}: {type(exc).__name__}: {exc} "
                "(a bug in heygem-ray; please report it with this message)"
            )
    result.seconds = time.perf_counter() - t_start
    for name in ("analyze", "features", "motion", "render", "compose"):
        setattr(result, f"{name}_s", stages.seconds.get(name))
    if result.status == "ok" and result.seconds > 0:
        result.realtime_factor = result.frames / float(template.fps) / result.seconds
    return result


@contextmanager
def job_scratch() -> Iterator[Path]:
    """A job's scratch folder (its decoded audio; an output bound for a bucket, until it is
    uploaded), deleted after the job. Its name holds this process's id and host, so that
    the next job on the machine deletes those of processes that died without cleaning up
    (killed, out of memory: gigabytes of audio a night otherwise)."""
    _sweep_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}@{socket.gethostname()}-") as scratch:
        yield Path(scratch)


def _sweep_scratch() -> None:
    """Delete the scratch folders of this host's processes that are gone. Another host's
    (a temporary directory shared between containers) are left to it."""
    own = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)@" + re.escape(socket.gethostname()) + "-.+")
    try:
        names = os.listdir(tempfile.gettempdir())
    except OSError:
        return
    for name in names:
        if (m := own.fullmatch(name)) and not _alive(int(m[1])):
            shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class MissingInputs:
    """The audio and reference files jobs of this run found missing, so that later rows
    naming one fail at once, with the same message, without a job: a manifest of 100 000
    rows pointing at one missing file runs one job, not 100 000.

    Learned from the rows of finished jobs (``render_job`` reads the audio in its
    ``probe`` stage and the reference in ``analyze``, so the stage says which), where the
    job ran: never from a look at the files by whoever holds this. A file that appears
    later in the run still fails the later rows naming it; a rerun renders them.

    It holds one entry per distinct missing file, and a bit per manifest row: the rows it
    failed (they have no part file; an older one of an earlier run must not stand in).
    """

    _INPUT_OF_STAGE = {"probe": "audio", "analyze": "video"}

    def __init__(self, pack: str, config_hash: str, rows: int):
        self._pack, self._config_hash = pack, config_hash
        self._known: dict[str, tuple[str, str]] = {}  # the file (as the results name it) → (stage, message)
        self._failed = bytearray(rows + 1)  # 1 at the (1-based) manifest rows failed here

    def learn(self, result: JobResult) -> None:
        """Note the input a finished job's row says is missing, if any."""
        which = self._INPUT_OF_STAGE.get(result.error_stage or "")
        if result.error_kind != "missing_file" or which is None or result.error is None:
            return
        message = result.error.removeprefix(f"{row_label(result.row, result.job_id)}: ")
        self._known.setdefault(getattr(result, which), (result.error_stage or "", message))

    def fail(self, job: Job) -> JobResult | None:
        """Fail ``job`` at once if a file it names is known to be missing (its audio
        first, as ``render_job`` reads them): its row, or None (a row with a problem of its
        own is left to its job)."""
        if job.problem is not None:
            return None
        result = self._row(job)
        if result is not None:
            self._failed[job.row] = 1
        return result

    def row_of(self, job: Job) -> JobResult | None:
        """The row of a job that :meth:`fail` failed (None for any other)."""
        return self._row(job) if self._failed[job.row] else None

    def _row(self, job: Job) -> JobResult | None:
        for where in (job.audio, job.video):
            if (known := self._known.get(str(where))) is not None:
                result = JobResult.for_job(job, self._pack)
                result.error_kind = "missing_file"
                result.error_stage, message = known
                result.error = f"{job.label}: {message}"
                result.attempts, result.config_hash = 0, self._config_hash  # no job was started
                return result
        return None


def _render_and_compose(
    output: Location,
    audio: Path,
    template: Template,
    timeline: Timeline,
    features: ChunkFeatures,
    given: Callable[[np.ndarray], np.ndarray],
    pack: PackSpec,
    cfg: RenderConfig,
    models: ModelService,
    stages: _Stages,
    on_frames: Callable[[int], None],
    scratch: Path,
) -> WorkerInfo:
    """Submit chunks ahead, compose them in order into a temporary MP4, then publish it:
    renamed into place beside a local output, uploaded whole to one in a bucket.

    Returns the description of the worker that rendered the last chunk.
    """
    partial = storage.staging_file(output, scratch, PARTIAL_SUFFIX)
    size = cfg.chunk_frames
    chunks = [range(s, min(s + size, timeline.frames)) for s in range(0, timeline.frames, size)]
    pending: deque[tuple[range, np.ndarray, ChunkFuture]] = deque()
    last: ChunkOutput | None = None
    try:
        with media.VideoWriter(
            partial,
            width=template.width,
            height=template.height,
            fps=template.fps,
            audio=audio,
            duration=timeline.duration,
            crf=cfg.crf,
            preset=cfg.preset,
        ) as writer:

            def compose_next() -> ChunkOutput:
                sl, sent, future = pending.popleft()
                stages.current = "render"
                chunk = future.result()
                stages.add("motion", chunk.motion_s)
                stages.add("render", chunk.render_s)
                ref = timeline.ref_index[sl.start : sl.stop]
                with stages("compose"):
                    frames = template.read_frames(ref)
                    bases = sent if pack.paste_mode == "residual" else [None] * len(ref)
                    here = template.present[ref]
                    for frame, crop, base, box, face in zip(
                        frames, chunk.crops, bases, template.boxes[ref], here, strict=True
                    ):
                        if face:  # else the face is gone: the frame stays as it is
                            paste(frame, crop, box, pack.paste_mask, base)
                        writer.write(frame)
                on_frames(len(ref))
                return chunk

            for sl in chunks:
                with stages("features"):
                    chunk_features = features(sl)
                stages.current = "render"
                inputs = given(timeline.ref_index[sl.start : sl.stop])
                pending.append((sl, inputs, models.submit(chunk_features, inputs)))
                if len(pending) > max(LOOKAHEAD, models.workers):
                    last = compose_next()
            while pending:
                last = compose_next()
            stages.current = "compose"
        storage.publish(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    if last is None:
        raise InternalError("a timeline without frames reached compose")
    return last.worker


def _given(
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
