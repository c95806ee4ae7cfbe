"""Every backend present gives PyTorch FP32's numbers, for both packs, both stages, any batch.

One parametrized test: backend × device × precision × pack × stage × batch size. The
reference is the stage module itself in float32 on the CPU; inputs are in the ranges the
pipeline feeds (crops in [0, 1] and smooth like faces, warp features in [-4, 0], Wav2Lip
mel windows in [-4, 4], codes computed by the motion stage from such features). The CUDA
cases (marked ``gpu``) skip, saying why, where there is no GPU or no CUDA provider.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heygem_ray.backends import onnx_artifact, open_runners, tensorrt_artifact
from heygem_ray.backends import ort as ort_backend
from heygem_ray.backends import trt as trt_backend
from heygem_ray.backends.ort import OrtRunner
from heygem_ray.backends.pytorch import TorchRunner
from heygem_ray.backends.runner import Runner
from heygem_ray.engines import BatchProfile, EngineStore, Precision
from heygem_ray.errors import EngineError, InternalError
from heygem_ray.packs import PackSpec, get_pack

FP32_MAX_ABS = 1e-4
FP16_MEAN_ABS = 1e-2
# The profile max is the largest batch tested; Wav2Lip's render is the expensive stage
# on a 2-core CPU, so its max is smaller.
PROFILE = {"warp": BatchProfile(1, 8, 32), "wav2lip": BatchProfile(1, 8, 16)}
FEATURE_RANGE = {"warp": (-4.0, 0.0), "wav2lip": (-4.0, 4.0)}

GPU = "cuda:0"

_TRT_OK, _TRT_WHY = trt_backend.available()
_NO_TRT = pytest.mark.skipif(not _TRT_OK, reason=f"tensorrt backend unavailable: {_TRT_WHY}")
_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is false)")
_ORT_CUDA_OK, _ORT_CUDA_WHY = ort_backend.available(GPU)
_NO_ORT_CUDA = pytest.mark.skipif(not _ORT_CUDA_OK, reason=_ORT_CUDA_WHY)

BACKENDS = [
    pytest.param("pytorch", "cpu", "fp32", id="pytorch-fp32"),
    pytest.param("onnxruntime", "cpu", "fp32", id="onnxruntime-fp32"),
    pytest.param("onnxruntime", "cpu", "fp16", id="onnxruntime-fp16"),
    pytest.param("pytorch", GPU, "fp32", id="pytorch-cuda-fp32", marks=[pytest.mark.gpu, _NO_CUDA]),
    pytest.param("pytorch", GPU, "fp16", id="pytorch-cuda-fp16", marks=[pytest.mark.gpu, _NO_CUDA]),
    pytest.param("onnxruntime", GPU, "fp32", id="onnxruntime-cuda-fp32",
                 marks=[pytest.mark.gpu, _NO_CUDA, _NO_ORT_CUDA]),
    pytest.param("onnxruntime", GPU, "fp16", id="onnxruntime-cuda-fp16",
                 marks=[pytest.mark.gpu, _NO_CUDA, _NO_ORT_CUDA]),
    pytest.param("tensorrt", GPU, "fp32", id="tensorrt-fp32", marks=[pytest.mark.gpu, _NO_TRT]),
    pytest.param("tensorrt", GPU, "fp16", id="tensorrt-fp16", marks=[pytest.mark.gpu, _NO_TRT]),
]


@pytest.fixture(scope="module")
def runners(stages: dict[str, dict[str, nn.Module]], store: EngineStore):
    """A cache of opened runners, closed at the end of the module."""
    opened: dict[tuple[str, str, str, str, str], Runner] = {}

    def get(backend: str, device: str, precision: Precision, pack: str, stage: str) -> Runner:
        key = (backend, device, precision, pack, stage)
        if key not in opened:
            opened[key] = _OPEN[backend](store, get_pack(pack), stages[pack], stage, device, precision)
        return opened[key]

    yield get
    for runner in opened.values():
        runner.close()


def _open_pytorch(store: EngineStore, pack: PackSpec, stages: dict[str, nn.Module], stage: str, device: str,
                  precision: Precision) -> Runner:
    # As a worker opens it (fp16: TorchRunner in float16 on the GPU). TorchRunner moves and
    # casts its module in place, so it gets copies: the reference stays float32 on the CPU.
    chosen = open_runners(pack, copy.deepcopy(stages), device=device, store=store, backend="pytorch",
                          precision=precision)
    assert chosen.precision == precision, chosen.note  # fp16 must not quietly fall back to fp32
    for other in set(chosen.runners) - {stage}:
        chosen.runners[other].close()
    runner = chosen.runners[stage]
    assert isinstance(runner, TorchRunner) and str(runner.device) == device
    return runner


def _open_ort(store: EngineStore, pack: PackSpec, stages: dict[str, nn.Module], stage: str, device: str,
              precision: Precision) -> Runner:
    path, _ = onnx_artifact(store, pack, stage, stages[stage], precision)
    return OrtRunner(stage, path, *pack.io(stage), device=device, intra_op_threads=2)


def _open_trt(store: EngineStore, pack: PackSpec, stages: dict[str, nn.Module], stage: str, device: str,
              precision: Precision) -> Runner:
    path, _ = tensorrt_artifact(store, pack, stage, stages[stage], precision, PROFILE[pack.name], device)
    return trt_backend.TrtRunner(stage, path, *pack.io(stage), device=device)


_OPEN: dict[str, Callable[[EngineStore, PackSpec, dict[str, nn.Module], str, str, Precision], Runner]] = {
    "pytorch": _open_pytorch,
    "onnxruntime": _open_ort,
    "tensorrt": _open_trt,
}


def _smooth_crops(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, 3, size, size) float32 BGR in [0, 1]: low-frequency images, like faces, not noise."""
    coarse = torch.from_numpy(rng.random((n, 3, size // 8, size // 8), dtype=np.float32))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).numpy()


@pytest.fixture(scope="module")
def cases(stages: dict[str, dict[str, nn.Module]]):
    """(pack, stage, batch) → (inputs, PyTorch FP32 outputs), made once."""
    made: dict[tuple[str, str, int], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}

    def reference(pack: str, stage: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs_in, specs_out = get_pack(pack).io(stage)
        with torch.inference_mode():
            out = stages[pack][stage](*(torch.from_numpy(inputs[s.name]) for s in specs_in))
        return {specs_out[0].name: out.numpy()}

    def get(pack: str, stage: str, batch: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if (pack, stage, batch) not in made:
            spec = get_pack(pack)
            rng = np.random.default_rng([batch, len(pack), len(stage)])
            lo, hi = FEATURE_RANGE[pack]
            (feature_spec,), _ = spec.io("motion")
            features = rng.uniform(lo, hi, (batch, *feature_spec.shape)).astype(np.float32)
            if stage == "motion":
                inputs = {"features": features}
            else:
                codes = reference(pack, "motion", {"features": features})["codes"]
                inputs = {"crops": _smooth_crops(rng, batch, spec.geometry.size), "codes": codes}
            made[pack, stage, batch] = (inputs, reference(pack, stage, inputs))
        return made[pack, stage, batch]

    return get


def _batches(pack: str) -> list[int]:
    return [1, 2, 5, PROFILE[pack].max]


@pytest.mark.parametrize(("pack", "stage", "batch"), [
    pytest.param(pack, stage, batch, id=f"{pack}-{stage}-b{batch}")
    for pack in ("warp", "wav2lip") for stage in ("motion", "render") for batch in _batches(pack)
])
@pytest.mark.parametrize(("backend", "device", "precision"), BACKENDS)
def test_backend_matches_pytorch_fp32(runners, cases, backend: str, device: str, precision: Precision, pack: str,
                                      stage: str, batch: int) -> None:
    inputs, expected = cases(pack, stage, batch)
    runner = runners(backend, device, precision, pack, stage)
    assert runner.backend == backend

    got = runner.infer({k: v.copy() for k, v in inputs.items()})

    assert got.keys() == expected.keys()
    for name, want in expected.items():
        out = got[name]
        assert out.dtype == np.float32 and out.shape == want.shape, name
        assert np.isfinite(out).all(), name
        diff = np.abs(out - want)
        if precision == "fp32":
            assert diff.max() <= FP32_MAX_ABS, f"{name}: max |diff| {diff.max():.2e} > {FP32_MAX_ABS:.0e}"
        else:
            assert diff.mean() <= FP16_MEAN_ABS, f"{name}: mean |diff| {diff.mean():.2e} > {FP16_MEAN_ABS:.0e}"


# -- input checking (ONNX Runtime) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def warp_render_ort(runners) -> Runner:
    return runners("onnxruntime", "cpu", "fp32", "warp", "render")


def _good_render_inputs(n: int = 2) -> dict[str, np.ndarray]:
    return {"crops": np.zeros((n, 3, 160, 160), np.float32), "codes": np.zeros((n, 1), np.float32)}


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: {"crop": d["crops"], "codes": d["codes"]}, r"'crop'.*given.*'crops'.*declared"),
    (lambda d: {**d, "crops": d["crops"][:, :, :96, :96]}, r"input 'crops' is float32\[2, 3, 96, 96\]"),
    (lambda d: {**d, "codes": d["codes"].astype(np.float64)}, r"input 'codes' is float64\[2, 1\]"),
    (lambda d: {**d, "codes": d["codes"][:1]}, r"disagree on the batch size"),
], ids=["name", "shape", "dtype", "batch"])
def test_ort_runner_names_the_bad_input(warp_render_ort: Runner, change, message: str) -> None:
    with pytest.raises(InternalError, match=message):
        warp_render_ort.infer(change(_good_render_inputs()))


def test_ort_runner_refuses_a_graph_of_another_stage(store: EngineStore, stages) -> None:
    pack = get_pack("warp")
    path, _ = onnx_artifact(store, pack, "motion", stages["warp"]["motion"], "fp32")
    with pytest.raises(EngineError, match=r"declares"):
        OrtRunner("render", path, *pack.io("render"), device="cpu")


def test_ort_runner_on_a_damaged_graph_says_to_remove_it(store: EngineStore, stages, tmp_path) -> None:
    """A graph in the engine store that is damaged (a failing disk, another tool's file in
    its place): ONNX Runtime's words alone ("Protobuf parsing failed") said nothing of
    what to do."""
    pack = get_pack("warp")
    path, _ = onnx_artifact(store, pack, "motion", stages["warp"]["motion"], "fp32")
    damaged = tmp_path / "motion.onnx"
    damaged.write_bytes(b"\x0a\xff\xff\xff" + Path(path).read_bytes()[4:])  # its first field runs past the end
    with pytest.raises(EngineError) as raised:
        OrtRunner("motion", damaged, *pack.io("motion"), device="cpu")
    assert raised.value.message.startswith(f"motion: onnxruntime could not load {damaged} (")
    assert raised.value.message.endswith("a file in the engine store that is damaged, or was written by another "
                                         "onnxruntime; remove it, and the next run (or 'heygem-ray engines build') "
                                         "builds it again")  # fmt: skip


# -- backend choice -----------------------------------------------------------------------------


def test_auto_falls_back_and_says_why(store: EngineStore, stages) -> None:
    # On a CPU, ONNX Runtime is the faster backend for Wav2Lip's convolutions.
    pack = get_pack("wav2lip")
    chosen = open_runners(pack, stages["wav2lip"], device="cpu", store=store, precision="fp16", batch_sizes=[4])
    try:
        assert chosen.backend == "onnxruntime"
        assert chosen.precision == "fp32"  # no fp16 on a CPU
        assert "fp16 needs a CUDA GPU" in chosen.note
        assert f"tensorrt: {_TRT_WHY}" in chosen.note
        assert {k.backend for k in chosen.engine_keys.values()} == {"onnxruntime"}
        (features,), (codes_spec,) = pack.io("motion")
        codes = chosen.runners["motion"].infer({"features": np.zeros((2, *features.shape), np.float32)})["codes"]
        assert codes.shape == (2, *codes_spec.shape) == (2, 512, 1, 1)
    finally:
        chosen.close()


def test_auto_runs_warp_on_pytorch_on_a_cpu(tmp_path: Path, stages) -> None:
    """Warp's grid_sample is 3.4× slower on ONNX Runtime's CPU provider: auto skips it, so no
    graph is exported."""
    store = EngineStore(tmp_path / "engines")
    chosen = open_runners(get_pack("warp"), stages["warp"], device="cpu", store=store)
    try:
        assert (chosen.backend, chosen.note, chosen.engine_keys) == ("pytorch", f"tensorrt: {_TRT_WHY}", {})
        assert store.list() == []
        codes = chosen.runners["motion"].infer({"features": np.full((3, 10), -1.0, np.float32)})["codes"]
        assert codes.shape == (3, 1) and np.allclose(codes, 1.0)  # level -1 → mouth fully open
    finally:
        chosen.close()


def test_named_backend_that_cannot_run_is_an_error(store: EngineStore, stages) -> None:
    with pytest.raises(EngineError, match=r"--backend tensorrt cannot run here"):
        open_runners(get_pack("warp"), stages["warp"], device="cpu", store=store, backend="tensorrt")


def test_pytorch_backend_needs_no_store_entries(tmp_path: Path, stages) -> None:
    store = EngineStore(tmp_path / "engines")
    chosen = open_runners(get_pack("warp"), stages["warp"], device="cpu", store=store, backend="pytorch")
    assert (chosen.backend, chosen.note, chosen.engine_keys) == ("pytorch", "", {})
    assert store.list() == []
    chosen.close()
