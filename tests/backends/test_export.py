"""ONNX export of the packs' stages: names, a symbolic batch axis, FP16 compute with FP32 I/O, size."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, shape_inference
from torch import nn

from heygem_ray.backends import onnx_artifact
from heygem_ray.engines import EngineStore
from heygem_ray.errors import EngineError, InternalError
from heygem_ray.export import BATCH_AXIS, export_onnx, graph_names
from heygem_ray.packs import TensorSpec, get_pack

PACKS = ("warp", "wav2lip")
STAGES = ("motion", "render")




def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: v for v in (*g.input, *g.output, *g.value_info)}


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("pack", PACKS)
def test_export_declares_names_and_a_symbolic_batch(
    stages: dict[str, dict[str, nn.Module]], store: EngineStore, pack: str, stage: str, fp16: bool
) -> None:
    spec = get_pack(pack)
    inputs, outputs = spec.io(stage)
    path, key = onnx_artifact(store, spec, stage, stages[pack][stage], "fp16" if fp16 else "fp32")

    assert (key.pack, key.stage, key.precision, key.arch) == (pack, stage, "fp16" if fp16 else "fp32", "any")
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "meta.json", "model.onnx"]  # no temporary
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)

    in_names, out_names = graph_names(inputs, outputs)
    assert [v.name for v in model.graph.input] == list(in_names) == [s.name for s in inputs]
    assert [v.name for v in model.graph.output] == list(out_names)
    for value, spec in zip((*model.graph.input, *model.graph.output), (*inputs, *outputs), strict=True):
        tensor = value.type.tensor_type
        assert tensor.elem_type == TensorProto.FLOAT, f"{value.name}: I/O stays float32 even in fp16"
        dims = tensor.shape.dim
        assert dims[0].dim_param == BATCH_AXIS and not dims[0].HasField("dim_value"), value.name
        assert tuple(d.dim_value for d in dims[1:]) == spec.shape, value.name

    weights = {TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer}
    float_weights = weights & {"FLOAT", "FLOAT16"}
    assert float_weights == ({"FLOAT16"} if fp16 else {"FLOAT"})
    if fp16:
        casts = [n for n in model.graph.node if n.op_type == "Cast"]
        assert len(casts) >= len(inputs) + len(outputs)  # float ↔ half at every boundary


def test_warp_render_grid_sample_runs_in_fp16(stages: dict[str, dict[str, nn.Module]], tmp_path: Path) -> None:
    """GridSample exports in half precision (opset 16+), not behind a float32 island."""
    inputs, outputs = get_pack("warp").io("render")
    model = onnx.load(str(export_onnx(stages["warp"]["render"], inputs, outputs, tmp_path / "r.onnx", fp16=True)))
    infos = _value_infos(model)
    grid_samples = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(grid_samples) == 1
    for name in (*grid_samples[0].input, *grid_samples[0].output):
        assert infos[name].type.tensor_type.elem_type == TensorProto.FLOAT16, name


def test_render_output_gets_a_graph_name_distinct_from_its_input() -> None:
    spec = TensorSpec("crops", (3, 8, 8))
    codes = TensorSpec("codes", (1,))
    assert graph_names((codes,), (spec,)) == (("codes",), ("crops",))
    with pytest.raises(InternalError, match="unique"):
        graph_names((spec, codes), (spec,))


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_failed_export_leaves_no_file(tmp_path: Path) -> None:
    spec = TensorSpec("x", (4,))
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(_Broken(), (spec,), (TensorSpec("y", (4,)),), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


class _TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, x + 2


def test_export_refuses_clashing_names_before_exporting(tmp_path: Path) -> None:
    """Two outputs declared with one name: the exporter would silently call one ``y.1``."""
    x, y = TensorSpec("x", (4,)), TensorSpec("y", (4,))
    with pytest.raises(InternalError, match="unique"):
        export_onnx(_TwoOutputs(), (x,), (y, y), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_stage_too_big_for_one_onnx_file_is_refused_with_its_size(tmp_path):
    """The full-size MuseTalk UNet is 3.4 GB in fp32: its export stops with the figure and
    what to do (an EngineError: auto falls back to PyTorch with it in backend_note)."""
    with torch.device("meta"):
        big = nn.Linear(2**15, 2**14 + 2**13)  # 805 M weights: 3.0 GiB fp32, 1.5 GiB fp16
    spec_in, spec_out = TensorSpec("x", (2**15,)), TensorSpec("y", (2**14 + 2**13,))
    with pytest.raises(EngineError) as err:
        export_onnx(big, (spec_in,), (spec_out,), tmp_path / "big.onnx")
    assert "are 3.0 GiB in fp32, more than one ONNX file holds (2 GiB)" in err.value.message
    assert "--backend pytorch" in err.value.message and not (tmp_path / "big.onnx").exists()
