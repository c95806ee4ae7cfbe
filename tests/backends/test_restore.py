"""The GFPGAN restoration network through the project's export path, on every backend here.

The narrow test network (tests/helpers/gfpgan_ckpt.py) exported by ``export_onnx`` with
its declared I/O (``models.gfpgan.STAGE_IO``), run by ONNX Runtime against PyTorch fp32;
and the TensorRT builder on the graph's dynamic-batch profile where TensorRT and a GPU are
(skipped elsewhere, saying why).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from heygem_ray.backends import trt as trt_backend
from heygem_ray.backends.ort import OrtRunner
from heygem_ray.engines import BatchProfile
from heygem_ray.export import BATCH_AXIS, export_onnx
from heygem_ray.models.gfpgan import STAGE_IO, GFPGANv1Clean, load, restore, to_faces, to_network
from tests.helpers.gfpgan_ckpt import seeded_faces, write_checkpoint

FP32_MAX_ABS = 1e-3
FP16_MEAN_ABS = 1e-2
STAGE = "restore"

_TRT_OK, _TRT_WHY = trt_backend.available()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> GFPGANv1Clean:
    torch.set_num_threads(2)
    return load(write_checkpoint(tmp_path_factory.mktemp("gfpgan") / "narrow.pth"))


@pytest.fixture(scope="module")
def graph(net: GFPGANv1Clean, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(net, *STAGE_IO, tmp_path_factory.mktemp("onnx") / "restore.onnx")


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return seeded_faces(3, seed=7)


def _torch(net: GFPGANv1Clean, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


def test_graph_declares_the_stage_io_with_a_dynamic_batch(net: GFPGANv1Clean, graph: Path) -> None:
    model = onnx.load(str(graph))
    (faces_in,), (restored_out,) = STAGE_IO
    assert [v.name for v in model.graph.input] == [faces_in.name]
    assert [v.name for v in model.graph.output] == [restored_out.name]
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == BATCH_AXIS
        assert tuple(d.dim_value for d in dims[1:]) == (3, 512, 512)
    # Fixed weights only: no convolution takes its weight from a computed tensor (the public
    # per-sample weights would need a batch-sized group count).
    weights = {i.name for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in weights for n in convs)
    assert all(a.i == 1 for n in convs for a in n.attribute if a.name == "group")
    # Each weight stored once (the demodulation's Σ w² folded to a small constant, not kept
    # beside a second copy of the weights), so v1.4's fp32 graph stays about 340 MB.
    stored = sum(math.prod(i.dims) for i in model.graph.initializer)
    assert stored < 1.05 * sum(t.numel() for t in net.state_dict().values())


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(net: GFPGANv1Clean, graph: Path, faces: np.ndarray, batch: int) -> None:
    runner = OrtRunner(STAGE, graph, *STAGE_IO, device="cpu", intra_op_threads=2)
    try:
        x = to_network(faces[:batch])
        got = runner.infer({"faces": x})["restored"]
    finally:
        runner.close()
    want = _torch(net, x)
    assert got.shape == want.shape == (batch, 3, 512, 512) and got.dtype == np.float32
    assert np.abs(got - want).max() <= FP32_MAX_ABS
    # As faces: what restore gives, give or take a grey level where rounding tips.
    assert np.abs(to_faces(got).astype(np.int16) - restore(net, faces[:batch])).max() <= 1


def test_onnxruntime_runs_the_fp16_graph(net: GFPGANv1Clean, faces: np.ndarray, tmp_path: Path) -> None:
    """The fp16 graph (what TensorRT's fp16 engine is built from) keeps float32 I/O and
    stays close to fp32."""
    path = export_onnx(net, *STAGE_IO, tmp_path / "restore-fp16.onnx", fp16=True)
    runner = OrtRunner(STAGE, path, *STAGE_IO, device="cpu", intra_op_threads=2)
    try:
        x = to_network(faces[:2])
        got = runner.infer({"faces": x})["restored"]
    finally:
        runner.close()
    diff = np.abs(got - _torch(net, x))
    assert np.isfinite(got).all() and diff.mean() <= FP16_MEAN_ABS


# -- TensorRT: needs tensorrt and a CUDA GPU ------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not _TRT_OK, reason=f"tensorrt backend unavailable: {_TRT_WHY}")
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_tensorrt_builds_the_dynamic_batch_profile(net: GFPGANv1Clean, faces: np.ndarray, tmp_path: Path,
                                                   fp16: bool) -> None:
    onnx_path = export_onnx(net, *STAGE_IO, tmp_path / "restore.onnx", fp16=fp16)
    profile = BatchProfile(1, 2, 4)
    engine = trt_backend.build_engine(onnx_path, tmp_path / "restore.plan", profile=profile, fp16=fp16,
                                      timing_cache=tmp_path / "timing.cache")
    runner = trt_backend.TrtRunner(STAGE, engine, *STAGE_IO)
    try:
        assert runner.max_batch == profile.max
        x = to_network(np.concatenate([faces, faces[:3]]))  # 6 > max: run as 4 + 2
        got = runner.infer({"faces": x})["restored"]
    finally:
        runner.close()
    diff = np.abs(got - _torch(net, x))
    if fp16:
        assert diff.mean() <= FP16_MEAN_ABS
    else:
        assert diff.max() <= FP32_MAX_ABS
