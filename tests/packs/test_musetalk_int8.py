"""``--precision int8`` for the musetalk pack: the render stage (UNet and VAE decoder) as a
calibrated QDQ graph, calibrated on what it receives in a job (the reference stage's
latents of real crops, the speech tokens of real speech gathered from Whisper's states),
gated on held-out runs, and picked by ``auto`` on a CPU although the pack's float stages
run on PyTorch there.

The weights are the small seeded random ones (``musetalk_folder``): how close int8 comes
to fp32 on them says nothing of the real checkpoint, so the tests hold the graph's form,
the calibration data and the gate's arithmetic, not a figure.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from heygem_ray import hardware
from heygem_ray.backends import int8 as int8_artifacts
from heygem_ray.backends import open_runners
from heygem_ray.backends.int8 import CalibrationSet, Run
from heygem_ray.calibration import DEFAULT_CALIBRATION, calibration_set, held_out_frames
from heygem_ray.config import RenderConfig
from heygem_ray.engines import EngineStore
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.packs import get_pack
from heygem_ray.worker import ModelWorker
from tests.conftest import EXAMPLES
from tests.helpers.media import make_excerpt

PACK = get_pack("musetalk")
CALIBRATE = 16
HELD_OUT = held_out_frames(CALIBRATE)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> EngineStore:
    """One engine store for the module: the int8 graph built once is the one a worker finds."""
    return EngineStore(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def calibration(store: EngineStore) -> CalibrationSet:
    """Runs of the bundled examples (presenter.mp4 and presenter.jpg with their speech), as a
    worker with ``calibration_frames=CALIBRATE`` gathers them (templates kept in its store)."""
    return calibration_set(PACK, DEFAULT_CALIBRATION, store.root / "calibration", frames=CALIBRATE,
                           held_out=HELD_OUT)


@pytest.fixture(scope="module")
def stages(musetalk_folder):
    return PACK.load_stages(musetalk_folder)


@pytest.fixture(scope="module")
def int8(stages, calibration, store):
    """The pack's runners at int8 on this CPU, ``auto`` backend; closed after the module."""
    chosen = open_runners(PACK, stages, device="cpu", store=store, backend="auto", precision="int8",
                          calibration=calibration, intra_op_threads=2)
    yield chosen, store
    chosen.close()


def test_calibration_runs_carry_the_chunk_features_and_their_id_covers_them(calibration) -> None:
    assert len(calibration.runs) == (CALIBRATE + HELD_OUT) // int8_artifacts.RUN_FRAMES
    assert calibration.held_out == HELD_OUT // int8_artifacts.RUN_FRAMES
    run = calibration.runs[0]
    assert run.crops.shape == (int8_artifacts.RUN_FRAMES, 256, 256, 3) and run.crops.dtype == np.uint8
    assert isinstance(run.features, dict) and run.features["mel"].shape[1:] == (80, 3000)
    assert len(run.features["starts"]) == int8_artifacts.RUN_FRAMES
    assert all(np.array_equal(np.diff(r.features["starts"]), [2, 2, 2]) for r in calibration.runs)  # 50 states/s, 25 fps
    changed = {**run.features, "mel": run.features["mel"] + np.float32(1e-3)}
    other = dataclasses.replace(calibration, runs=(Run(run.crops, changed), *calibration.runs[1:]))
    assert other.id != calibration.id


def test_auto_runs_the_render_stage_at_int8_on_onnx_runtime_and_the_others_fp32(int8, calibration) -> None:
    chosen, _ = int8
    assert (chosen.backend, chosen.precision) == ("onnxruntime", "int8")  # the pack's CPU backends: pytorch alone
    keys = chosen.engine_keys
    assert (keys["render"].precision, keys["render"].calibration, keys["render"].arch) == ("int8", calibration.id, "cpu")
    assert [keys[s].precision for s in ("reference", "motion")] == ["fp32", "fp32"]


def test_the_unets_and_decoders_convolutions_and_projections_are_int8_attention_products_float(
        int8, stages, calibration) -> None:  # fmt: skip
    _, store = int8
    (built,) = [e for e in store.list() if e.stage == "render" and e.precision == "int8"]  # the form this CPU runs
    model = onnx.load(str(built.path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    made_by = {out: node for node in model.graph.node for out in node.output}

    def int8_weight(name: str) -> bool:
        dq = made_by.get(name)
        return dq is not None and dq.op_type == "DequantizeLinear" and inits.get(dq.input[0], np.empty(0)).dtype == np.int8

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert {n.name.split("/")[1] for n in convs} == {"unet", "post_quant_conv", "decoder"}
    assert all(int8_weight(n.input[1]) for n in convs)
    projections = [n for n in model.graph.node if n.op_type == "MatMul" and int8_weight(n.input[1])]
    products = [n for n in model.graph.node if n.op_type == "MatMul" and not int8_weight(n.input[1])]
    assert any("/attn2/to_k/" in n.name for n in projections)  # the speech tokens' cross-attention
    assert any("/ff/" in n.name for n in projections)
    assert products and not any(made_by[n.input[1]].op_type == "DequantizeLinear" for n in products)
    # every weight of the UNet's and decoder's convolutions and projections is stored int8
    # (the render module holds the whole VAE; its encoder is the reference stage's)
    used = [m for name, m in stages["render"].named_modules() if not name.startswith(("vae.encoder", "vae.quant_conv"))
            and (isinstance(m, torch.nn.Conv2d) or (isinstance(m, torch.nn.Linear) and "time_emb" not in name))]
    quantized = sum(m.weight.numel() for m in used)
    assert sum(a.size for name, a in inits.items() if a.dtype == np.int8 and name.endswith("_quantized")) == quantized


def test_the_gate_judges_the_held_out_runs_through_the_reference_stage(int8, stages, calibration) -> None:
    chosen, store = int8
    result = int8_artifacts.gate(PACK, chosen.runners, stages, calibration)
    assert result.frames == HELD_OUT and result.source.endswith("examples/manifest.csv")
    fp32 = open_runners(PACK, stages, device="cpu", store=store, backend="onnxruntime", precision="fp32")
    try:
        exact = int8_artifacts.gate(PACK, fp32.runners, stages, calibration)
    finally:
        fp32.close()
    # fp32 on another backend is the same picture; int8 is measurably not
    assert exact.crops_db > 50 and result.crops_db < exact.crops_db - 10
    assert result.passed == (min(result.crops_db, result.mouth_db) >= int8_artifacts.MIN_PSNR_DB)


def test_a_calibrated_auto_job_falls_back_to_fp32_when_the_gate_refuses_int8(musetalk_folder, int8, store,
                                                                              tmp_path) -> None:
    """``--precision auto --calibrate MANIFEST`` on a CPU with VNNI: the worker tries int8
    first. On these random weights int8 is some 20 dB off fp32, so the gate refuses it; the
    row renders at fp32 on the pack's CPU backend and says why. The worker calibrates as the
    module's fixture did, so it finds the int8 graph the fixture built in the store."""
    if not hardware.int8_pays("cpu")[0]:
        pytest.skip("auto tries int8 only where it pays: this CPU has no VNNI or AMX")
    speech = tmp_path / "speech.wav"
    make_excerpt(EXAMPLES / "lesson1.wav", speech, seconds=2)
    manifest = DEFAULT_CALIBRATION
    cfg = RenderConfig(pack="musetalk", checkpoint=musetalk_folder, calibration=manifest, calibration_frames=CALIBRATE,
                       chunk_frames=16, batch_size=8)
    int8_entries = sorted(str(e.path) for e in store.list() if e.precision == "int8")
    worker = ModelWorker(cfg, store.root)
    try:
        job = Job(1, "lesson", speech, EXAMPLES / "presenter.mp4", tmp_path / "out" / "lesson.mp4")
        result = render_job(job, cfg, tmp_path / "templates", InProcessService(worker))
    finally:
        worker.close()
    assert result.status == "ok", result.error
    assert (result.frames, result.precision, result.backend, result.calibration) == (50, "fp32", "pytorch", "")
    assert sorted(str(e.path) for e in store.list() if e.precision == "int8") == int8_entries  # found, not built
    refused = re.match(rf"int8 refused by the accuracy gate: on {HELD_OUT} held-out frames of "
                       rf"{re.escape(str(manifest))}, PSNR against fp32 is ([\d.]+) dB on the generated crops",
                       result.backend_note)
    assert refused and float(refused[1]) < int8_artifacts.MIN_PSNR_DB, result.backend_note
