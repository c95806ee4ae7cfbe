"""Choosing a worker's precision: the order it tries them in, and the accuracy gate's
verdict on an int8 set, judged once per engine store and kept there.

``open_first`` is what a model worker calls: ``open_runners`` at the first precision
that opens and, for int8, passes the gate (``backends/int8.py``); a refused int8 set is
closed and the next precision tried, with the figures in the note.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heygem_ray import storage
from heygem_ray.backends import RunnerSet, open_runners, trt
from heygem_ray.backends.int8 import MIN_PSNR_DB, CalibrationSet, GateResult, gate
from heygem_ray.config import PrecisionName
from heygem_ray.engines import EngineStore, Precision
from heygem_ray.errors import EngineError, InternalError
from heygem_ray.hardware import INT8_FLAGS, cpu_flags, device_arch, int8_pays, runtime_version
from heygem_ray.packs import PackSpec


def precision_order(precision: PrecisionName, device: str, pack: PackSpec, *, calibrated: bool) -> tuple[Precision, ...]:
    """The precisions a worker tries, in order. "auto": fp16 on a GPU, fp32 on a CPU, with
    int8 first where it pays (on a GPU, where TensorRT runs), the pack has int8 stages and
    calibration data was given."""
    if precision != "auto":
        return (precision,)
    base: Precision = "fp16" if device.startswith("cuda") else "fp32"
    # On a GPU only TensorRT runs an int8 graph's layers in int8 (ONNX Runtime's CUDA
    # provider runs them in float, with the quantize steps besides): without it, fp16.
    on_gpu_without_trt = device.startswith("cuda") and not trt.available()[0]
    if calibrated and pack.int8_stages and int8_pays(device)[0] and not on_gpu_without_trt:
        return ("int8", base)
    return (base,)


def verdict_path(store: EngineStore, pack: PackSpec, chosen: RunnerSet, device: str,
                 calibration: CalibrationSet) -> Path:
    """Where the gate's verdict on ``chosen`` is kept: it depends on every artifact the set
    runs (their keys: weights, precision, backend, GPU architecture, calibration), the
    runtime, the kind of device, the fp32 reference's PyTorch, the held-out frames and the
    threshold."""
    what = {
        "keys": {stage: key.digest() for stage, key in sorted(chosen.engine_keys.items())},
        "runtime": runtime_version(chosen.backend),
        # (a CPU's int8 instructions decide its kernels, and their rounding: AVX2's saturate)
        "device": device_arch(device) if device.startswith("cuda") else f"cpu-{platform.machine()}-{_int8_flags()}",
        "reference": f"torch{torch.__version__}",
        "calibration": calibration.id,
        "min_db": MIN_PSNR_DB,
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return store.root / "gates" / f"{pack.name}-{digest[:16]}.json"


def _int8_flags() -> str:
    """This CPU's int8 instructions (``hardware.INT8_FLAGS``), as a name: "none" where it has none."""
    return "+".join(sorted(cpu_flags() & set(INT8_FLAGS))) or "none"


def kept_gate(pack: PackSpec, chosen: RunnerSet, modules: dict[str, nn.Module], calibration: CalibrationSet,
              store: EngineStore, device: str) -> GateResult:
    """``gate``'s verdict on ``chosen``, judged once and kept in the store: a worker that
    opens the same int8 set on the same kind of device reads it instead of running the
    held-out frames at fp32 again (seconds for Wav2Lip, minutes for MuseTalk on a CPU)."""
    path = verdict_path(store, pack, chosen, device, calibration)
    try:
        kept = json.loads(path.read_text())
        return GateResult(float(kept["crops_db"]), float(kept["mouth_db"]), int(kept["frames"]), calibration.source)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not judged yet (or a record from elsewhere that does not read): judge it
    result = gate(pack, chosen.runners, modules, calibration, device)
    record = {"crops_db": result.crops_db, "mouth_db": result.mouth_db, "frames": result.frames,
              "passed": result.passed, "source": result.source}
    storage.write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    return result


def open_first(
    pack: PackSpec,
    modules: dict[str, nn.Module],
    precisions: tuple[Precision, ...],
    calibration: CalibrationSet | None,
    *,
    store: EngineStore,
    device: str,
    **open_kwargs: Any,
) -> tuple[RunnerSet, GateResult | None]:
    """``open_runners`` at the first of ``precisions`` that opens and, for int8, passes the
    gate (its result is returned with the runners; ``kept_gate``); each refused one adds to
    the note. The last one's error is raised as it is."""

    notes: list[str] = []
    for i, precision in enumerate(precisions):
        last = i == len(precisions) - 1
        try:
            chosen = open_runners(pack, modules, precision=precision, calibration=calibration, store=store,
                                  device=device, **open_kwargs)
        except EngineError as e:
            if last:
                raise
            notes.append(f"{precision}: {e.message}")
            continue
        result = None
        if chosen.precision == "int8" and calibration is not None:
            result = kept_gate(pack, chosen, modules, calibration, store, device)
            if not result.passed:
                chosen.close()
                message = f"int8 refused by the accuracy gate: {result.describe()}"
                if last:
                    raise EngineError(
                        f"{message}. Calibrate on frames of this presenter (heygem-ray engines build "
                        "--precision int8 --calibrate MANIFEST), or run --precision fp32 or fp16",
                        kind="int8_refused",
                    )
                notes.append(message)
                continue
        note = "; ".join([*notes, chosen.note] if chosen.note else notes)
        return dataclasses.replace(chosen, note=note), result
    raise InternalError("open_first needs at least one precision")
