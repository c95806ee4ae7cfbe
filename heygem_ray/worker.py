"""The model worker: owns one device, a pack's stages and, with ``--restore``, the
restoration stage; knows nothing about jobs.

Lifecycle: detect the device → load the stages and open them on the chosen backend
(building engines once, through the store); the same for the restoration stage, on the
backend fastest for it → smoke-test → serve ``run_chunk`` calls.
The Ray actor in ``driver/actor.py`` and the in-process service both wrap this class.

A worker that cannot start (bad checkpoint, a backend that cannot run here, too little
memory, a GPU it was given and cannot use) keeps the error and raises it from ``ready()``
and every call, so the driver can stop the run before any job with the worker's own
words, on a cluster as well as here; an error that is not heygem-ray's own (a
``MemoryError``, a library's) is kept too, with its type and message.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
from pathlib import Path

import numpy as np

from heygem_ray.backends import stage_digest
from heygem_ray.backends.runner import Runner, infer_batched
from heygem_ray.calibration import calibration_for
from heygem_ray.config import RenderConfig
from heygem_ray.engines import EngineStore
from heygem_ray.errors import EngineError, HeygemError, InternalError, storage_error
from heygem_ray.hardware import DeviceInfo, cuda_unusable
from heygem_ray.packs import Features, get_pack
from heygem_ray.precision import open_first, precision_order
from heygem_ray.restore.inputs import RestoreInputs
from heygem_ray.restore.stage import load_restorer, open_restorer, restore_batch, restore_chunk
from heygem_ray.worker_io import ChunkOutput, GpuUse, WorkerInfo

log = logging.getLogger(__name__)

def _start_error(exc: Exception) -> EngineError:
    """A start-up error that is not heygem-ray's own, as the worker's error: its type and
    first line (the traceback goes to the worker's log)."""
    log.error("the model worker could not start:\n%s", traceback.format_exc())
    text = str(exc).strip()
    return EngineError(
        f"a model worker could not start: {type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'} "
        "(its traceback is in the worker's log: the dashboard, or 'ray logs worker-*.err' on its node); "
        "a MemoryError means its node has too little memory for the pack's models",
        kind="worker_start",
    )


class ModelWorker:
    def __init__(self, cfg: RenderConfig, engines_dir: Path, node: str | None = None, gpu: GpuUse = "none"):
        self.error: HeygemError | None = None
        try:
            self._start(cfg, engines_dir, node or socket.gethostname(), gpu)
        except HeygemError as exc:
            self.error = exc
        except OSError as exc:  # the engine store's disk full or read-only: the user's to fix, not a bug
            self.error = storage_error(exc, engines_dir) or _start_error(exc)
        except Exception as exc:  # not ours (MemoryError, a library's error): kept in its own words
            self.error = _start_error(exc)

    def _start(self, cfg: RenderConfig, engines_dir: Path, node: str, gpu: GpuUse) -> None:
        self.pack = get_pack(cfg.pack)
        self.batch_size = cfg.batch_size
        # 1. detect the device; a GPU this worker was given and cannot use fails it (gpu
        #    "required"), or leaves it on the CPU saying why (gpu "wanted")
        device = DeviceInfo.detect()
        device_note = ""
        if gpu != "none" and device.gpu is None:
            why = cuda_unusable()
            if gpu == "required":
                raise EngineError(
                    f"the model worker on {node} was given a GPU by Ray but cannot use it: {why}; "
                    "or render on CPUs with --device cpu (--device auto renders on the CPU where CUDA is missing)",
                    kind="no_cuda",
                )
            device_note = f"gpu: {why}; rendering on the CPU"
        # 2. load the stages and open them on a backend (auto: the fastest that runs here),
        #    at the first precision that opens (int8: and passes the accuracy gate)
        stages = self.pack.load_stages(cfg.checkpoint)
        # the restoration's weights too, before any engine is built: a wrong file stops here
        restore_stages = load_restorer(cfg) if cfg.restore != "none" else None
        # What the reference stage computes, hashed before a runner takes the module over.
        reference = self.pack.reference
        reference_digest = stage_digest(stages[reference])[:16] if reference else ""
        store = EngineStore(engines_dir)
        precisions = precision_order(cfg.precision, device.device, self.pack, calibrated=cfg.calibration is not None)
        # int8's calibration frames; their templates are kept beside the engines they shape
        calibration = calibration_for(self.pack, precisions, cfg.calibration, store.root / "calibration",
                                      cfg.calibration_frames)
        chosen, _ = open_first(
            self.pack,
            stages,
            precisions,
            calibration,
            device=device.device,
            store=store,
            backend=cfg.backend,
            batch_sizes=[cfg.batch_size],
        )
        self.runners = chosen.runners
        # 3. the restoration stage, on the backend fastest for it here, at the pack's
        #    precision (it has no int8 graphs: fp32 then)
        self.restoring = cfg.restore != "none"
        self.restore_runners: dict[str, Runner] = {}
        self.restore_batch = restore_batch(cfg)
        restore_note = restore_backend = ""
        if self.restoring:
            try:
                restoring = open_restorer(cfg, chosen.precision, device=device.device, store=store,
                                          backend=cfg.backend, stages=restore_stages)
            except BaseException:
                chosen.close()  # a worker that cannot start holds no device memory
                raise
            self.restore_runners, restore_backend = restoring.runners, restoring.backend
            # what the pack's note says already (tensorrt not installed, say) is not said twice
            said = chosen.note.split("; ")
            notes = [n for n in restoring.note.split("; ") if n and n not in said]
            if device.gpu is None:
                notes.append("it takes seconds a frame on a CPU (docs/restoration.md: use it on GPUs)")
            restore_note = "; ".join(f"restore: {note}" for note in notes)
        render_key = chosen.engine_keys.get("render")
        self.info = WorkerInfo(
            node=node,
            device=device,
            backend=chosen.backend,
            precision=chosen.precision,
            backend_note="; ".join(note for note in (device_note, chosen.note, restore_note) if note),
            engine_key=render_key.dirname() if render_key else "",
            reference_key=f"{reference_digest}-{chosen.precision}" if reference else "",
            calibration=calibration.id if calibration is not None and chosen.precision == "int8" else "",
            restore=cfg.restore,
            restore_backend=restore_backend,
        )
        # 4. warm up: open_runners ran one item through every stage already.

    def ready(self) -> WorkerInfo:
        """The worker's description once it serves; its start-up error otherwise."""
        if self.error is not None:
            raise self.error
        return self.info

    def run_chunk(self, features: Features, given: np.ndarray, restore: RestoreInputs | None = None) -> ChunkOutput:
        """A chunk's features and what the job gives per frame (its crops, (k, S, S, 3)
        uint8 BGR, or a pack's reference-stage outputs) → its generated crops; with
        ``restore`` (the frames' aligned reference tiles) also the restored faces."""
        info = self.ready()
        spent: dict[str, float] = {}

        def call(stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            t = time.perf_counter()
            out = self._batched(stage, inputs)
            spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - t
            return out

        t0 = time.perf_counter()
        out = self.pack.chunk(call, features, given)  # (k, 3, S, S) float32 BGR in [0, 1]
        pixels = np.clip(np.rint(out.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)
        total = time.perf_counter() - t0
        motion = spent.get("motion", 0.0)
        if restore is None:
            return ChunkOutput(pixels, motion, total - motion, info)
        if not self.restoring:
            raise InternalError("a chunk with aligned tiles reached a worker without a restoration stage")
        t1 = time.perf_counter()
        base = given if self.pack.paste_mode == "residual" else None  # compose pastes only the change then
        restored = restore_chunk(self._restore_call, restore, pixels, base, self.pack.paste_mask, self.restore_batch)
        return ChunkOutput(pixels, motion, total - motion, info, restored, time.perf_counter() - t1)

    def run_reference(self, crops: np.ndarray) -> np.ndarray:
        """(k, S, S, 3) uint8 BGR crops of reference frames → the pack's reference stage
        outputs for them, float32 (its ``reference`` stage; see ``PackSpec.reference``)."""
        self.ready()
        if self.pack.reference is None:
            raise InternalError(f"the {self.pack.name} pack has no reference stage")
        return self.pack.run_reference(self._batched, crops)

    def _batched(self, stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return infer_batched(self.runners[stage], inputs, self.batch_size)

    def _restore_call(self, stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return infer_batched(self.restore_runners[stage], inputs, self.restore_batch)

    def close(self) -> None:
        if self.error is None:
            for runner in (*self.runners.values(), *self.restore_runners.values()):
                runner.close()
