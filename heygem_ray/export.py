"""Export a pack stage to ONNX: dynamic batch axis, declared names, FP32 or FP16 compute.

The graph's inputs and outputs are the stage's declared ``TensorSpec`` names, each with a
leading symbolic axis named ``batch``. ONNX and TensorRT need every tensor name to be
unique, so a stage's declared names must be (``graph_names`` checks).

FP16 graphs compute in float16 but keep float32 inputs and outputs: the exported module is
a wrapper that casts its inputs to half, runs a half copy of the stage and casts the
outputs back to float, so the graph starts and ends with ``Cast`` nodes and every weight
is stored as float16. TensorRT 10 and 11 build strongly typed networks from such a graph
(see ``backends/trt.py``); ONNX Runtime runs it as it is.
"""

from __future__ import annotations

import copy
import os
import tempfile
import uuid
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from heygem_ray.errors import EngineError, InternalError
from heygem_ray.packs import TensorSpec

BATCH_AXIS = "batch"
DEFAULT_OPSET = 17  # GridSample (warp render) needs opset 16 or later
# Batch of the example inputs traced by the exporter. Not 1: a batch of 1 lets the
# tracer fold batch-dependent shapes into constants.
_EXAMPLE_BATCH = 2

_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# An ONNX file is one protobuf message, which holds at most 2 GiB; the graph and its
# metadata need some of it besides the weights.
MAX_ONNX_WEIGHT_BYTES = 2**31 - 2**26


def graph_names(
    inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of a stage's ONNX graph / TensorRT engine: the declared ones."""
    in_names = tuple(s.name for s in inputs)
    out_names = tuple(s.name for s in outputs)
    if len(set(in_names + out_names)) != len(in_names + out_names):
        raise InternalError(f"a stage's tensor names must be unique: inputs {in_names}, outputs {out_names}")
    return in_names, out_names


class _HalfCompute(nn.Module):
    """float32 inputs → (half copy of ``module``) → float32 outputs."""

    def __init__(self, module: nn.Module):
        super().__init__()
        # A copy: ``.half()`` converts in place and the caller keeps its float32 module.
        self.module = copy.deepcopy(module).half()

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.module(*(a.half() for a in args))
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()


def _example(spec: TensorSpec, generator: torch.Generator) -> torch.Tensor:
    # Values in [0, 1): in range for crops and harmless for features and codes; the
    # traced graph does not depend on them.
    return torch.rand((_EXAMPLE_BATCH, *spec.shape), generator=generator).to(_DTYPES[spec.dtype])


def export_onnx(
    module: nn.Module,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    path: str | os.PathLike[str],
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    external_data: bool = False,
) -> Path:
    """Export ``module`` (a stage taking ``inputs`` in order) to ``path``; return the path.

    The file appears only once it is complete and has passed ``onnx.checker`` (written to
    a temporary name in the same folder, then renamed). ``external_data``: its weights go
    to ``<path>.data`` beside it, whatever their size, so a stage of more than 2 GiB
    exports too (a working copy: ``backends/int8.py`` makes its int8 graph from one).
    """
    path = Path(path)
    in_names, out_names = graph_names(inputs, outputs)
    weights = sum(t.numel() * (2 if fp16 and t.is_floating_point() else t.element_size())
                  for t in module.state_dict().values())
    if weights > MAX_ONNX_WEIGHT_BYTES and not external_data:
        raise EngineError(
            f"its weights are {weights / 2**30:.1f} GiB in {'fp16' if fp16 else 'fp32'}, more than one ONNX file "
            "holds (2 GiB): run it with --backend pytorch, or in fp16 on a GPU"
        )
    # Traced where the module lives (a GPU traces the half copy much faster than a CPU).
    first = next(iter(module.state_dict().values()), None)
    device = first.device if first is not None else torch.device("cpu")
    model = (_HalfCompute(module) if fp16 else module).eval()
    args = tuple(_example(s, torch.Generator().manual_seed(0)).to(device) for s in inputs)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    data = path.with_name(f"{path.name}.data")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # A folder of its own: past 2 GiB the exporter writes each weight to a file beside the graph.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as work, warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False) is deprecated but still the one that
            # handles grid_sample and dynamic_axes for these stages in one call.
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = Path(work) / "stage.onnx"
            torch.onnx.export(
                model,
                args,
                str(traced),
                input_names=list(in_names),
                output_names=list(out_names),
                dynamic_axes={name: {0: BATCH_AXIS} for name in (*in_names, *out_names)},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
            proto = onnx.load(str(traced))
        _declare_shapes(proto, (*inputs, *outputs))
        if external_data:
            onnx.save(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
        else:
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, path)
    except BaseException:
        if external_data:
            data.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _declare_shapes(proto: onnx.ModelProto, specs: tuple[TensorSpec, ...]) -> None:
    """Write the declared per-item shape into every graph input and output.

    The exporter leaves some output axes symbolic (GridSample's output size follows its
    grid), though every stage's shapes are fixed apart from the batch; the full check
    afterwards verifies the declared shapes against ONNX shape inference.
    """
    for value, spec in zip((*proto.graph.input, *proto.graph.output), specs, strict=True):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 1 + len(spec.shape):
            raise EngineError(f"{value.name}: exported with rank {len(dims)}, declared [batch, {spec.shape}]")
        for dim, size in zip(dims[1:], spec.shape, strict=True):
            dim.Clear()
            dim.dim_value = size
