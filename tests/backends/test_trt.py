"""The TensorRT backend: pure parts everywhere, build and run where tensorrt and a GPU exist."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from heygem_ray.backends import trt as trt_backend
from heygem_ray.backends.trt import (
    INSTALL_HINT,
    BatchProfile,
    available,
    choose_profile,
    parse_version,
    version_problem,
)
from heygem_ray.errors import EngineError
from heygem_ray.export import export_onnx
from heygem_ray.packs import get_pack

TRT_SOURCE = Path(trt_backend.__file__)


@pytest.mark.parametrize(("sent", "profile"), [
    ([32] * 10 + [7], BatchProfile(1, 32, 32)),  # full batches and a tail
    ([30], BatchProfile(1, 30, 32)),  # max rounded up to a multiple of 8
    ([5, 5, 3], BatchProfile(1, 5, 8)),
    ([4, 8], BatchProfile(1, 8, 8)),  # a tie: the larger is opt
    ([1], BatchProfile(1, 1, 8)),
    ([64, 64, 65], BatchProfile(1, 64, 72)),
])
def test_choose_profile(sent: list[int], profile: BatchProfile) -> None:
    assert choose_profile(sent) == profile


@pytest.mark.parametrize("sent", [[], [0], [4, -1]])
def test_choose_profile_rejects_nonsense(sent: list[int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        choose_profile(sent)


@pytest.mark.parametrize(("text", "version"), [
    ("10.9.0.34", (10, 9, 0)),
    ("11.0.0", (11, 0, 0)),
    ("10.13", (10, 13, 0)),
    ("10.8.0.43.post1", (10, 8, 0)),
])
def test_parse_version(text: str, version: tuple[int, int, int]) -> None:
    assert parse_version(text) == version


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a TensorRT version"):
        parse_version("tensorrt")


@pytest.mark.parametrize(("text", "problem"), [
    ("10.0.1.6", None),
    ("11.2.0", None),
    ("8.6.1", "too old"),
    ("12.0.0", "newer than"),
])
def test_supported_versions(text: str, problem: str | None) -> None:
    found = version_problem(text)
    assert found is None if problem is None else (problem in (found or "") and "10 or 11" in (found or ""))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_available_says_tensorrt_is_missing() -> None:
    ok, why = available()
    assert not ok and why == INSTALL_HINT and "tensorrt" in why


def test_module_imports_without_tensorrt() -> None:
    """Importing the backend (and the package that picks backends) loads no tensorrt."""
    code = "import sys, heygem_ray.backends.trt, heygem_ray.backends; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


# Calls and flags TensorRT 10 removed or 11 removes; none may appear in the code.
REMOVED = {
    "max_workspace_size", "platform_has_fast_fp16", "platform_has_fast_int8", "EXPLICIT_BATCH",
    "execute_v2", "execute_async_v2", "build_engine", "get_binding_shape", "binding_is_input",
    "set_binding_shape", "max_batch_size", "FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS",
}


def test_no_removed_tensorrt_api_is_used() -> None:
    tree = ast.parse(TRT_SOURCE.read_text())
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert attributes & REMOVED == set()
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("pycuda" in (m or "") for m in imported | modules)


# -- build and run: needs tensorrt and a CUDA GPU -------------------------------------------------


@pytest.fixture(scope="module")
def trt():
    module = pytest.importorskip("tensorrt", reason="tensorrt is not installed (NVIDIA's index); GPU-only test")
    ok, why = available()
    if not ok:
        pytest.skip(why)
    return module


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_build_and_run_warp_render(trt, tmp_path: Path, fp16: bool) -> None:
    pack = get_pack("warp")
    module = pack.load_stages(None)["render"]
    inputs, outputs = pack.io("render")
    onnx_path = export_onnx(module, inputs, outputs, tmp_path / "render.onnx", fp16=fp16)
    cache = tmp_path / "timing.cache"
    profile = BatchProfile(1, 4, 8)

    engine = trt_backend.build_engine(onnx_path, tmp_path / "render.plan", profile=profile, fp16=fp16,
                                      timing_cache=cache)
    assert engine.stat().st_size > 0 and cache.stat().st_size > 0

    runner = trt_backend.TrtRunner("render", engine, inputs, outputs)
    try:
        assert runner.max_batch == 8
        rng = np.random.default_rng(0)
        n = 19  # > max: split into 8 + 8 + 3
        feed = {"crops": rng.random((n, 3, 160, 160), dtype=np.float32),
                "codes": rng.random((n, 1), dtype=np.float32)}
        got = runner.infer(feed)["generated"]
        with torch.inference_mode():
            want = module(torch.from_numpy(feed["crops"]), torch.from_numpy(feed["codes"])).numpy()
        diff = np.abs(got - want)
        if fp16:
            assert diff.mean() <= 1e-2
        else:
            assert diff.max() <= 1e-4
    finally:
        runner.close()
    # A second build reuses (and keeps) the timing cache.
    trt_backend.build_engine(onnx_path, tmp_path / "again.plan", profile=profile, fp16=fp16, timing_cache=cache)
    assert cache.stat().st_size > 0


# -- tensorrt_artifact's key, without TensorRT: the version and the GPU are patched in ----------


def test_tensorrt_artifacts_key_names_the_version_the_arch_and_its_source(tmp_path: Path, monkeypatch) -> None:
    from heygem_ray.backends import artifacts
    from heygem_ray.engines import EngineKey, EngineStore
    from heygem_ray.models.warp import WarpRender

    monkeypatch.setattr(trt_backend, "trt_version", lambda: "10.9.0.34")
    monkeypatch.setattr(artifacts, "device_arch", lambda device: "sm_90")
    pack, store, profile = get_pack("warp"), EngineStore(tmp_path / "engines"), BatchProfile(1, 32, 32)
    source = (tmp_path / "int8.onnx", EngineKey("warp", "ab" * 32, "render", "int8", None, "onnxruntime",
                                                "opset17", "any", calibration="0123456789abcdef"))
    expected = EngineKey("warp", "ab" * 32, "render", "int8", profile, "tensorrt", "10.9.0.34", "sm_90",
                         "0123456789abcdef", source=source[1].digest())
    # The engine the key names, as a build would have left it: found without TensorRT.
    store.get_or_build(expected, lambda tmp: tmp.write_bytes(b"plan"))
    path, key = artifacts.tensorrt_artifact(store, pack, "render", WarpRender(), "int8", profile, "cuda:0",
                                            build=False, source=source)
    assert key == expected and path == store.artifact_path(expected) and path.read_bytes() == b"plan"
    assert key.dirname().startswith("warp/render/tensorrt-10.9.0.34-sm_90-int8-cal01234567-b1-32-32-")
    # The same weights' graph exported again (another exporter, opset, int8 recipe: another
    # key): its engine is another, never the one built from the graph before it.
    again = (tmp_path / "int8.onnx", dataclasses.replace(source[1], backend_version="opset17-qdq3"))
    with pytest.raises(EngineError) as missing:
        artifacts.tensorrt_artifact(store, pack, "render", WarpRender(), "int8", profile, "cuda:0", build=False,
                                    source=again)  # fmt: skip
    assert missing.value.kind == "engine_missing"


def test_an_int8_engine_without_its_calibrated_graph_is_a_bug_said_plainly(tmp_path: Path, monkeypatch) -> None:
    from heygem_ray.backends import artifacts
    from heygem_ray.engines import EngineStore
    from heygem_ray.errors import InternalError
    from heygem_ray.models.warp import WarpRender

    monkeypatch.setattr(trt_backend, "trt_version", lambda: "10.9.0.34")
    monkeypatch.setattr(artifacts, "device_arch", lambda device: "sm_90")
    with pytest.raises(InternalError, match="an int8 engine is built from its calibrated QDQ graph"):
        artifacts.tensorrt_artifact(EngineStore(tmp_path), get_pack("warp"), "render", WarpRender(), "int8",
                                    BatchProfile(1, 32, 32), "cuda:0")
