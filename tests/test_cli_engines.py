"""`heygem-ray doctor`, `engines build`, `engines list`, and --backend on submit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from heygem_ray.backends import trt

REPO = Path(__file__).resolve().parents[1]
TRT_OK, TRT_WHY = trt.available()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("heygem-ray")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_doctor_names_the_device_and_why_each_backend_can_or_cannot_run(tmp_path):
    proc = cli("doctor", cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: ")
    assert any(line.split() == ["onnxruntime", "usable"] for line in lines)
    assert any(line.split() == ["pytorch", "usable"] for line in lines)
    if not TRT_OK:
        assert f"tensorrt     not usable: {TRT_WHY}" in lines
        # On a CPU: each pack's faster backend there (BENCHMARKS.md, "Backends").
        assert lines[-2:] == ["auto for warp: pytorch", "auto for wav2lip: onnxruntime"]


def test_engines_build_then_list(tmp_path):
    built = cli("engines", "build", "--store", "es", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    paths = [line.split(": ", 1)[1] for line in built.stdout.splitlines() if ": " in line and not line.startswith("note")]
    assert len(paths) == 2 and all((tmp_path / p / "model.onnx").is_file() for p in paths)
    listed = cli("engines", "list", "--store", "es", cwd=tmp_path).stdout
    rows = [line for line in listed.splitlines() if "│ warp" in line]
    assert len(rows) == 2
    assert all("onnxruntime" in r and "fp32" in r and "yes" in r for r in rows)
    assert {"motion", "render"} == {r.split("│")[2].strip() for r in rows}


@pytest.mark.skipif(TRT_OK, reason="TensorRT can run here")
def test_asking_for_tensorrt_where_it_cannot_run_stops_before_any_work(tmp_path):
    built = cli("engines", "build", "--backend", "tensorrt", "--store", "es", cwd=tmp_path)
    assert built.returncode == 2 and TRT_WHY in built.stderr
    proc = cli("submit", str(REPO / "examples" / "manifest.csv"), "--backend", "tensorrt", "-o", "o", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"--backend tensorrt cannot run here: {TRT_WHY}" in proc.stderr
    assert not (tmp_path / "o").exists()
