"""The model worker: owns one device and a pack's two stages; knows nothing about jobs.

Lifecycle: detect the device → load the stages → warm up → serve ``run_chunk`` calls.
The Ray actor in ``ray_exec.py`` and the in-process service both wrap this class.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from heygem_ray.packs import PackSpec, get_pack
from heygem_ray.runners import Runner, TorchRunner


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "cpu" or "cuda:0"
    gpu: str | None  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str | None  # e.g. "9.0"

    @classmethod
    def detect(cls) -> DeviceInfo:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return cls("cuda:0", torch.cuda.get_device_name(0), f"{major}.{minor}")
        return cls("cpu", None, None)


@dataclass(frozen=True)
class WorkerInfo:
    node: str
    device: DeviceInfo
    backend: str
    backend_note: str


@dataclass(frozen=True)
class ChunkOutput:
    crops: np.ndarray  # (k, S, S, 3) uint8 BGR generated crops
    motion_s: float
    render_s: float
    worker: WorkerInfo


class ModelWorker:
    def __init__(self, pack: str, checkpoint: Path | None, batch_size: int, node: str | None = None):
        self.pack: PackSpec = get_pack(pack)
        self.batch_size = batch_size
        # 1. detect the device
        device = DeviceInfo.detect()
        # 2. load the stages
        stages = self.pack.load_stages(checkpoint)
        self.runners: dict[str, Runner] = {
            name: TorchRunner(name, module, *self.pack.io(name), device=torch.device(device.device))
            for name, module in stages.items()
        }
        self.info = WorkerInfo(
            node=node or socket.gethostname(),
            device=device,
            backend="pytorch",
            backend_note="",
        )
        # 3. warm up: the first call pays for allocation and kernel selection.
        size = self.pack.geometry.size
        self.run_chunk(
            np.zeros((1, *self.pack.feature_shape), np.float32), np.zeros((1, size, size, 3), np.uint8)
        )

    def run_chunk(self, features: np.ndarray, crops: np.ndarray) -> ChunkOutput:
        """(k, *F) float32 features and (k, S, S, 3) uint8 BGR crops → generated crops."""
        t0 = time.perf_counter()
        codes = self._batched("motion", {"features": features})["codes"]
        t1 = time.perf_counter()
        # (k, S, S, 3) uint8 → (k, 3, S, S) float32 BGR in [0, 1]
        faces = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        out = self._batched("render", {"crops": faces, "codes": codes})["crops"]
        pixels = np.clip(np.rint(out.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)
        t2 = time.perf_counter()
        return ChunkOutput(pixels, t1 - t0, t2 - t1, self.info)

    def _batched(self, stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        parts = [
            self.runners[stage].infer({k: v[s : s + self.batch_size] for k, v in inputs.items()})
            for s in range(0, n, self.batch_size)
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
