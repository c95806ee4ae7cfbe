"""INT8: the calibrated QDQ graph's form, its key, the accuracy gate and the fallback.

The Wav2Lip weights are seeded random ones, so how close int8 comes to fp32 is whatever
it is; the gate tests therefore use a calibration that is bad by construction (constant
frames far outside the crops' range, so every activation range is wrong) and real
held-out frames, which the gate refuses whatever the weights.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from torch import nn

from heygem_ray import calibration as calibration_module
from heygem_ray import hardware, precision
from heygem_ray.backends import int8, onnx_artifact, open_runners
from heygem_ray.backends.int8 import CalibrationSet, Run
from heygem_ray.calibration import calibration_set
from heygem_ray.engines import SIDECAR, EngineKey, EngineStore
from heygem_ray.errors import EngineError, InputError
from heygem_ray.export import export_onnx
from heygem_ray.packs import get_pack
from heygem_ray.template.files import Template

PACK = get_pack("wav2lip")
CALIBRATE, HELD_OUT = 32, 16


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> CalibrationSet:
    """Frames of the bundled examples: presenter.mp4 and presenter.jpg with real speech."""
    return calibration_set(PACK, None, tmp_path_factory.mktemp("templates"), frames=CALIBRATE,
                                    held_out=HELD_OUT)


@pytest.fixture(scope="module")
def bad(calibration: CalibrationSet) -> CalibrationSet:
    """The same held-out frames; calibrated on white crops and features 1000 times too loud."""
    calibrating = tuple(Run(np.full_like(run.crops, 255), np.asarray(run.features) * 1000.0)
                        for run in calibration.part(held_out=False))
    return CalibrationSet(PACK.name, calibrating + calibration.part(held_out=True), calibration.held_out,
                          "constant frames")


def _artifact(store: EngineStore, stages: dict[str, dict[str, nn.Module]], cal: CalibrationSet, *, cpu: bool,
              build: bool = True) -> tuple[onnx.ModelProto, EngineKey]:
    modules = stages["wav2lip"]
    digest = int8.chain_hash(["m", "r"])  # any weights hash: the test compares forms and keys
    path, key = int8.int8_onnx_artifact(store, PACK, "render", modules, cal, weights_hash=digest, cpu=cpu,
                                            build=build)
    return onnx.load(str(path)), key


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def test_qdq_graph_has_per_channel_int8_weights_and_symmetric_int8_activations(stages, store, calibration) -> None:
    model, key = _artifact(store, stages, calibration, cpu=False)
    onnx.checker.check_model(model, full_check=True)
    assert (key.precision, key.calibration, key.arch) == ("int8", calibration.id, "any")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    made_by = _producers(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # every convolution of the face encoder and decoder, the decoder's transposed ones as
    # phase convolutions (one for the stride-1 layer, four for each of the five stride-2 ones)
    assert len(convs) == 32 + 1 + 5 * 4
    assert not [n.name for n in model.graph.node if n.op_type == "ConvTranspose"]
    for conv in convs:
        # weights: int8 initializer → DequantizeLinear, one scale per output channel, zero point 0
        dq = made_by[conv.input[1]]
        weight = inits[dq.input[0]]
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert dq.op_type == "DequantizeLinear" and weight.dtype == np.int8, conv.name
        assert axis == 0 and inits[dq.input[1]].shape == (weight.shape[0],), conv.name  # per output channel
        assert not inits[dq.input[2]].any(), conv.name
        assert conv.input[2] not in made_by or made_by[conv.input[2]].op_type != "DequantizeLinear"  # float bias
    # activations: the convolutions, residual adds, skip concatenations, ReLUs and the
    # upsampling's shuffle read int8 (QuantizeLinear → DequantizeLinear, zero point 0)
    between = [n for n in model.graph.node if n.op_type in PACK.int8_ops]
    assert {n.op_type for n in between} == set(PACK.int8_ops)
    for node in between:
        dq_x = made_by[node.input[0]]
        q_x = made_by[dq_x.input[0]]
        assert (dq_x.op_type, q_x.op_type) == ("DequantizeLinear", "QuantizeLinear"), node.name
        zero = inits[q_x.input[2]]
        assert zero.dtype == np.int8 and zero.shape == () and zero == 0, node.name
    kinds = {TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer}
    assert "UINT8" not in kinds and "INT32" not in kinds  # nothing TensorRT's explicit quantization refuses


def test_the_int8_form_is_todays_fp32_graph_in_convolutions(stages, store, tmp_path) -> None:
    """The render stage as its int8 graph is exported (transposed convolutions as phase
    convolutions, the shuffle as static reshapes) computes, in fp32, what the fp32 graph
    every other precision runs computes."""
    module = stages["wav2lip"]["render"]
    today, _ = onnx_artifact(store, PACK, "render", module, "fp32")
    form = export_onnx(PACK.int8_form("render", module), *PACK.io("render"), tmp_path / "form.onnx")
    ops = {n.op_type for n in onnx.load(str(form)).graph.node}
    assert "ConvTranspose" in {n.op_type for n in onnx.load(str(today)).graph.node}
    assert not ops & {"ConvTranspose", "DepthToSpace", "Pad", "Shape"}  # one Conv a phase, sizes fixed
    rng = np.random.default_rng(0)
    feed = {"crops": rng.random((3, 3, 96, 96), np.float32), "codes": rng.standard_normal((3, 512, 1, 1), np.float32)}
    (want,) = ort.InferenceSession(str(today), providers=["CPUExecutionProvider"]).run(None, feed)
    (got,) = ort.InferenceSession(str(form), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_the_store_keeps_the_int8_graph_alone_in_one_file(stages, store, calibration, tmp_path, monkeypatch) -> None:
    """The fp32 working copy (weights in a file beside it) is gone; the entry is one ONNX
    file and its sidecar; a graph one file cannot hold is refused, saying so."""
    _, key = _artifact(store, stages, calibration, cpu=False)
    entry = store.entry_dir(key)
    assert sorted(p.name for p in entry.iterdir()) == sorted([".lock", store.artifact_path(key).name, SIDECAR])
    monkeypatch.setattr(int8, "MAX_ONNX_WEIGHT_BYTES", 2**20)
    with pytest.raises(EngineError, match=r"its int8 graph's weights are 0\.\d GiB, more than one ONNX file holds"):
        int8.single_file(store.artifact_path(key), tmp_path / "int8.onnx")
    assert not (tmp_path / "int8.onnx").exists()


def test_building_an_int8_graph_writes_nothing_in_the_systems_temporary_folder(stages, calibration, tmp_path,
                                                                               monkeypatch) -> None:  # fmt: skip
    """ONNX Runtime's quantizer writes its calibration copy of the graph (gigabytes for
    MuseTalk's UNet) in the system's temporary folder, a node's /tmp: the build puts it in
    its working folder in the store instead. Here the system's folder is one that does not
    exist, where the build failed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    _, key = _artifact(EngineStore(tmp_path / "engines"), stages, calibration, cpu=False)
    assert key.precision == "int8" and not (tmp_path / "no-such-folder").exists()


def test_the_x86_cpu_form_has_the_same_weights_uint8_activations_and_no_relu(stages, store, calibration) -> None:
    """Same calibration, same int8 weights; activations uint8 with zero points of their own,
    so every ReLU is folded into the quantization of the layer before it (zero point 0)."""
    if not hardware.X86:
        pytest.skip("the x86 CPU form is built on x86 machines")
    portable, _ = _artifact(store, stages, calibration, cpu=False)
    cpu, key = _artifact(store, stages, calibration, cpu=True)
    assert key.arch == "cpu" and key.calibration == calibration.id
    p_inits = {i.name: numpy_helper.to_array(i) for i in portable.graph.initializer}
    c_inits = {i.name: numpy_helper.to_array(i) for i in cpu.graph.initializer}
    weights = [n for n in p_inits if p_inits[n].dtype == np.int8 and p_inits[n].ndim == 4]
    assert len(weights) == 32 + 1 + 5 * 4 and all(np.array_equal(p_inits[n], c_inits[n]) for n in weights)
    zeros = [c_inits[n.input[2]] for n in cpu.graph.node if n.op_type == "QuantizeLinear"]
    assert zeros and all(z.dtype == np.uint8 for z in zeros)
    assert any(z != 0 for z in zeros) and sum(z == 0 for z in zeros) > 30  # asymmetric; ReLU outputs from 0
    assert "Relu" in {n.op_type for n in portable.graph.node}
    assert "Relu" not in {n.op_type for n in cpu.graph.node}


def test_the_engine_key_changes_with_the_calibration_data(stages, store, calibration) -> None:
    first = calibration.runs[0]
    crops = first.crops.copy()
    crops[0, 0, 0, 0] ^= 1  # one pixel's lowest bit
    other = dataclasses.replace(calibration, runs=(Run(crops, first.features), *calibration.runs[1:]))
    assert other.id != calibration.id
    _, key = _artifact(store, stages, calibration, cpu=False)
    with pytest.raises(EngineError, match="not built yet") as missing:
        _artifact(store, stages, other, cpu=False, build=False)
    assert f"-int8-cal{other.id[:8]}-" in missing.value.message
    assert key.dirname() != dataclasses.replace(key, calibration=other.id).dirname()
    with pytest.raises(ValueError, match="calibration"):
        dataclasses.replace(key, calibration="")  # int8 without a calibration id is no key


def test_a_graph_of_an_older_recipe_is_not_taken_for_todays(stages, store, calibration, monkeypatch) -> None:
    """The same weights and calibration under another ``QDQ_RECIPE`` are another entry: a
    store filled before the recipe changed builds its int8 graphs again."""
    _artifact(store, stages, calibration, cpu=False)
    monkeypatch.setattr(int8, "QDQ_RECIPE", int8.QDQ_RECIPE + 1)
    with pytest.raises(EngineError, match="not built yet"):
        _artifact(store, stages, calibration, cpu=False, build=False)


def test_the_gate_refuses_a_bad_calibration_with_its_figures(stages, store, bad) -> None:
    modules = stages["wav2lip"]
    with pytest.raises(EngineError, match="int8 refused by the accuracy gate") as refused:
        precision.open_first(PACK, modules, ("int8",), bad, device="cpu", store=store, backend="onnxruntime",
                            batch_sizes=[16])
    message = refused.value.message
    assert refused.value.kind == "int8_refused"
    assert f"on {HELD_OUT} held-out frames of constant frames" in message and "--calibrate MANIFEST" in message
    chosen = open_runners(PACK, modules, device="cpu", store=store, backend="onnxruntime", precision="int8",
                          calibration=bad, batch_sizes=[16])
    try:
        result = int8.gate(PACK, chosen.runners, modules, bad)
    finally:
        chosen.close()
    assert not result.passed and result.crops_db < int8.MIN_PSNR_DB - 5
    assert f"PSNR against fp32 is {result.crops_db:.1f} dB on the generated crops" in message


def test_auto_falls_back_to_the_next_precision_with_the_reason(stages, store, bad) -> None:
    if hardware.int8_pays("cpu")[0]:
        assert precision.precision_order("auto", "cpu", PACK, calibrated=True) == ("int8", "fp32")
    assert precision.precision_order("auto", "cpu", PACK, calibrated=False) == ("fp32",)
    assert precision.precision_order("auto", "cpu", get_pack("warp"), calibrated=True) == ("fp32",)
    chosen, gated = precision.open_first(PACK, stages["wav2lip"], ("int8", "fp32"), bad, device="cpu", store=store,
                                 backend="onnxruntime", batch_sizes=[16])
    try:
        assert (chosen.backend, chosen.precision, gated) == ("onnxruntime", "fp32", None)
        assert chosen.note.startswith(f"int8 refused by the accuracy gate: on {HELD_OUT} held-out frames")
        assert chosen.engine_keys["render"].calibration == ""
    finally:
        chosen.close()


def test_the_gates_verdict_is_kept_in_the_store_and_read_back(stages, store, bad, tmp_path) -> None:
    """The gate judges an int8 set once per store: a worker opening the same set again reads
    the verdict (figures written into the record are what it reports), a record that does
    not read is judged again, and another calibration is another verdict."""
    # A store of its own, holding the graphs of the session's (the tests above built the
    # int8 graph of `bad` there) but none of its verdicts, so the first open judges.
    shutil.copytree(store.root, tmp_path / "engines", ignore=shutil.ignore_patterns("gates", ".lock"))
    store = EngineStore(tmp_path / "engines")

    def open_note(cal: CalibrationSet) -> str:
        chosen, _ = precision.open_first(PACK, stages["wav2lip"], ("int8", "fp32"), cal, device="cpu", store=store,
                                        backend="onnxruntime", batch_sizes=[16])
        chosen.close()
        return chosen.note

    judged = open_note(bad)
    (kept,) = (store.root / "gates").glob("wav2lip-*.json")
    verdict = json.loads(kept.read_text())
    assert not verdict["passed"] and verdict["frames"] == HELD_OUT
    assert f"PSNR against fp32 is {verdict['crops_db']:.1f} dB on the generated crops" in judged
    kept.write_text(json.dumps({**verdict, "crops_db": 12.5}))
    assert "PSNR against fp32 is 12.5 dB on the generated crops" in open_note(bad)
    kept.write_text("{")
    assert open_note(bad) == judged and json.loads(kept.read_text()) == verdict
    worse = dataclasses.replace(bad, runs=bad.runs[1:], held_out=bad.held_out)
    open_note(worse)
    assert len(list((store.root / "gates").glob("wav2lip-*.json"))) == 2


def test_pytorch_has_no_int8_and_warp_no_int8_stages(stages, store, calibration) -> None:
    with pytest.raises(EngineError, match="pytorch has no int8"):
        open_runners(PACK, stages["wav2lip"], device="cpu", store=store, backend="pytorch", precision="int8",
                     calibration=calibration)
    warp = open_runners(get_pack("warp"), stages["warp"], device="cpu", store=store, backend="pytorch",
                        precision="int8", calibration=calibration)
    warp.close()
    assert warp.precision == "fp32" and "int8 does not pay for the warp pack" in warp.note


def test_a_bad_calibration_manifest_names_the_file_and_the_fix(tmp_path, examples) -> None:
    missing = tmp_path / "presenter.csv"
    with pytest.raises(InputError, match=f"int8 calibration manifest {missing} not found: pass --calibrate MANIFEST"):
        calibration_set(PACK, missing, tmp_path)
    missing.write_text(f"audio,video\n{examples / 'lesson1.wav'},{tmp_path / 'gone.mp4'}\n")
    with pytest.raises(InputError, match=f"calibration manifest {missing}, row 1 .*gone.mp4") as bad_row:
        calibration_set(PACK, missing, tmp_path)
    assert bad_row.value.kind == "missing_file"


def test_calibration_analyses_only_the_first_seconds_of_each_reference(tmp_path, examples, monkeypatch) -> None:
    """A calibration manifest may be the batch's own, of whole recorded lectures: each
    reference is analysed only as far as ``CALIBRATION_REFERENCE_SECONDS`` (lowered here to
    1 s of the 4-s example), and the runs come from those frames."""
    monkeypatch.setattr(calibration_module, "CALIBRATION_REFERENCE_SECONDS", 1.0)
    manifest = tmp_path / "batch.csv"
    manifest.write_text(f"audio,video\n{examples / 'lesson1.wav'},{examples / 'presenter.mp4'}\n")
    found = calibration_set(PACK, manifest, tmp_path / "templates", frames=CALIBRATE, held_out=HELD_OUT)
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "templates").glob("*/meta.json")]
    assert (meta["frames"], meta["cut_to_seconds"]) == (25, 1.0)
    with Template.open(next((tmp_path / "templates").glob("*/meta.json")).parent) as template:
        first = template.crops(np.arange(25))
    for run in found.runs:  # each crop one of the first second's
        assert all(np.abs(first.astype(np.int16) - crop).reshape(25, -1).max(axis=1).min() == 0 for crop in run.crops)


def test_calibration_takes_each_rows_own_reference_start_and_seconds(tmp_path, examples, monkeypatch) -> None:
    """A lecture whose presenter comes in late is calibrated on from its row's
    ``reference_start``, for its ``reference_seconds`` or the calibration's own limit
    (lowered here to 2 s), whichever is shorter; a row whose cell is out of range names it."""
    monkeypatch.setattr(calibration_module, "CALIBRATION_REFERENCE_SECONDS", 2.0)
    manifest = tmp_path / "batch.csv"
    row = f"{examples / 'lesson1.wav'},{examples / 'presenter.mp4'}"
    manifest.write_text(f"audio,video,reference_start,reference_seconds\n{row},2,3\n{row},2.4,1\n")
    found = calibration_set(PACK, manifest, tmp_path / "templates", frames=CALIBRATE, held_out=HELD_OUT)
    metas = {json.loads(p.read_text())["start_seconds"]: p.parent for p in (tmp_path / "templates").glob("*/meta.json")}
    assert sorted(metas) == [2.0, 2.4]
    frames, crops = {}, []
    for start, root in metas.items():
        with Template.open(root) as template:
            assert template.start == start
            frames[start] = template.frames
            crops.append(template.crops(np.arange(template.frames)).astype(np.int16))
    assert frames == {2.0: 50, 2.4: 25}  # 3 s capped at 2; 1 s as the row says
    pool = np.concatenate(crops)
    for run in found.runs:  # each crop one of the stretches' own
        assert all(np.abs(pool - crop).reshape(len(pool), -1).max(axis=1).min() == 0 for crop in run.crops)

    manifest.write_text(f"audio,video,reference_start\n{row},-1\n")
    with pytest.raises(InputError, match=f"calibration manifest {manifest}, row 1 .*its own reference_start -1: "
                                         "must be 0") as bad:  # fmt: skip
        calibration_set(PACK, manifest, tmp_path / "templates", frames=CALIBRATE, held_out=HELD_OUT)
    assert bad.value.kind == "bad_argument"
