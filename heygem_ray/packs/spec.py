"""What a pack is: its stages' declared I/O, its features, geometry and paste mask
(``PackSpec``), and the frame-per-frame stage layout most packs share. Light: no weights."""


from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast

import numpy as np

from heygem_ray.features import Pcm
from heygem_ray.geometry import CropGeometry

if TYPE_CHECKING:  # a spec is read where no network runs (the driver, the job tasks)
    import torch

# What the model worker gets for a span of output frames [start, stop): most packs, an
# array (stop − start, *F) float32; a pack with its own ``chunk`` function, named arrays.
Features = np.ndarray | Mapping[str, np.ndarray]
ChunkFeatures = Callable[[range], Features]
# Per job: 16 kHz mono waveform, output fps, output frame count → its ChunkFeatures.
# Whatever needs the whole clip (e.g. a loudness level) is measured here, once; each
# chunk then reads only the samples it covers.
FeatureFn = Callable[[Pcm, Fraction, int], ChunkFeatures]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # without the leading dynamic batch axis
    dtype: str = "float32"


# A stage's declared (inputs, outputs).
StageIO = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]
# Runs a stage on a worker's runner, batched: (stage, name → (n, ...) array) → outputs.
StageCall = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
# One chunk on a worker: (stage call, the chunk's features, what the job sent per frame:
# crops (k, S, S, 3) uint8 BGR, or a reference stage's outputs) → (k, 3, S, S) float32
# BGR in [0, 1].
ChunkFn = Callable[[StageCall, Features, np.ndarray], np.ndarray]


def frame_stages(size: int, feature_shape: tuple[int, ...], code_shape: tuple[int, ...]) -> dict[str, StageIO]:
    """The I/O of a pack with the two per-frame stages (motion, then render on the crops)."""
    crops = TensorSpec("crops", (3, size, size))
    codes = TensorSpec("codes", code_shape)
    return {
        "motion": ((TensorSpec("features", feature_shape),), (codes,)),
        "render": ((crops, codes), (TensorSpec("generated", crops.shape),)),
    }


def crop_inputs(crops: np.ndarray) -> np.ndarray:
    """(k, S, S, 3) uint8 BGR crops → a stage's ``crops`` input, (k, 3, S, S) float32 in [0, 1]."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def frame_chunk(call: StageCall, features: Features, crops: np.ndarray) -> np.ndarray:
    """A chunk through the per-frame stages: (k, *F) features and (k, S, S, 3) uint8 BGR
    crops → (k, 3, S, S) float32 BGR in [0, 1]."""
    codes = call("motion", {"features": np.asarray(features)})["codes"]
    return call("render", {"crops": crop_inputs(crops), "codes": codes})["generated"]


class StageSet(Protocol):
    """What the backends and the engine store need of a set of networks: a name for the
    store, each stage's declared I/O, the backends to try on a CPU and the stages that have
    int8 graphs. A pack (``PackSpec``) is one; the restoration stage (``restore.stage.Restorer``)
    another."""

    @property
    def name(self) -> str: ...

    @property
    def stages(self) -> Mapping[str, StageIO]: ...

    @property
    def cpu_backends(self) -> tuple[str, ...]: ...

    @property
    def int8_stages(self) -> tuple[str, ...]: ...

    def io(self, stage: str) -> StageIO: ...


@dataclass(frozen=True)
class PackSpec:
    name: str
    geometry: CropGeometry
    features: FeatureFn
    # Each stage's declared I/O, in the order a chunk runs them.
    stages: Mapping[str, StageIO]
    paste_mask: np.ndarray  # (S, S) float32 in [0, 1], 0 on the border
    # "residual": paste only what the render stage changed (keeps the frame's detail
    # where the crop is unchanged); "replace": paste the generated crop itself.
    paste_mode: Literal["residual", "replace"]
    # The module that builds the stages' networks (PyTorch, imported only by ``load_stages``
    # and ``int8_form``, on a worker): its ``load_stages(checkpoint)`` gives the stages'
    # modules; an ``int8_form(stage, module)`` there gives the module an int8 stage's
    # graph is exported from (the same function, to float rounding, in layers the int8
    # runtimes quantize); without one a stage quantizes as it is.
    networks: str
    # ``--backend auto`` on a worker without a GPU: the backends to try, fastest first for
    # this pack's layers on a CPU (measured in bench/bench_backends.py).
    cpu_backends: tuple[str, ...] = ("onnxruntime", "pytorch")
    chunk: ChunkFn = frame_chunk
    # The stage whose output for a reference frame depends on that frame alone
    # (``reference``: crops (B, 3, S, S) BGR in [0, 1] → one output): run once per
    # template frame and cached with the template; the job then sends those outputs to
    # ``chunk`` instead of crops. None: the job sends the crops.
    reference: str | None = None
    # ``--precision int8``: the stages run as calibrated int8 QDQ graphs (backends/int8.py);
    # the others stay fp32. Empty: int8 does not pay for this pack (it runs fp32).
    int8_stages: tuple[str, ...] = ()
    # The ONNX operators quantized in them (MatMul: those with a weight); the rest stay float.
    int8_ops: tuple[str, ...] = ("Conv",)
    # The render stage moves the reference's own mouth (warp) rather than drawing a new one:
    # whatever the reference's mouth does shows through, so a talking take is looped over
    # its still stretch where it has one (``checks.still_span``).
    keeps_reference_mouth: bool = False
    # A checkpoint that is a folder: the files (relative to it) the networks read, which
    # alone make the weights' identity (``identity.weights_digest``), so that a file beside
    # them the pack never reads, removed or changed, renders nothing again. Empty: all.
    weight_files: tuple[str, ...] = ()

    def load_stages(self, checkpoint: Path | None) -> dict[str, torch.nn.Module]:
        """The stages' modules, in eval mode, from the pack's checkpoint (``InputError``
        naming the file where it is not one)."""
        built = importlib.import_module(self.networks).load_stages(checkpoint)
        return cast("dict[str, torch.nn.Module]", built)

    def int8_form(self, stage: str, module: torch.nn.Module) -> torch.nn.Module:
        """The module ``stage``'s int8 graph is exported from (see ``networks``)."""
        form = getattr(importlib.import_module(self.networks), "int8_form", None)
        return module if form is None else cast("torch.nn.Module", form(stage, module))

    def run_reference(self, call: StageCall, crops: np.ndarray) -> np.ndarray:
        """(k, S, S, 3) uint8 BGR crops of reference frames through the ``reference`` stage
        on ``call`` → its output for them."""
        if self.reference is None:
            raise ValueError(f"the {self.name} pack has no reference stage")
        (output,) = self.io(self.reference)[1]
        return call(self.reference, {"crops": crop_inputs(crops)})[output.name]

    def io(self, stage: str) -> StageIO:
        """Declared (inputs, outputs) of ``stage``."""
        if stage not in self.stages:
            raise ValueError(f"the {self.name} pack has no stage {stage!r} (it has {', '.join(self.stages)})")
        return self.stages[stage]
