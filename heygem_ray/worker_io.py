"""What a model worker says about itself and returns for a chunk, apart from the worker:
the job tasks and the driver read these without loading the networks' libraries
(``worker.py`` imports PyTorch and the runtimes; this module, none of them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from heygem_ray.hardware import DeviceInfo
from heygem_ray.restore.inputs import Jpegs

# What a worker does about a GPU: "none" (none was given to it), "wanted" (Ray gave it one
# and --device auto: use it, or render on the CPU and say why), "required" (Ray gave it
# one and --device gpu: use it, or fail to start saying why).
GpuUse = Literal["none", "wanted", "required"]


@dataclass(frozen=True)
class WorkerInfo:
    node: str
    device: DeviceInfo
    backend: str
    precision: str
    backend_note: str
    engine_key: str  # the render stage's engine-store entry; "" for pytorch
    # What the pack's reference stage computes (its weights, code and precision); "" for
    # packs without one. Templates keep its outputs under this name.
    reference_key: str = ""
    calibration: str = ""  # int8: the calibration data's id (backends.int8.CalibrationSet.id)
    restore: str = "none"  # the restoration stage it runs (config.RestoreName)
    restore_backend: str = ""  # and on which backend; "" without one


@dataclass(frozen=True)
class ChunkOutput:
    crops: np.ndarray  # (k, S, S, 3) uint8 BGR generated crops
    motion_s: float
    render_s: float
    worker: WorkerInfo
    # With restoration: the k restored faces over the crop boxes, R × R BGR JPEG files
    # (restore.stage.restore_chunk), and the seconds it took.
    restored: Jpegs | None = None
    restore_s: float = 0.0
