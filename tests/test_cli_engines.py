"""`heygem-ray doctor`, `engines build`, `engines list`, and --backend on submit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from heygem_ray.backends import trt

REPO = Path(__file__).resolve().parents[1]
TRT_OK, TRT_WHY = trt.available()


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("heygem-ray")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_doctor_names_the_device_and_why_each_backend_can_or_cannot_run(tmp_path):
    proc = cli("doctor", cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: ")
    assert any(line.split() == ["onnxruntime", "usable"] for line in lines)
    assert any(line.split() == ["pytorch", "usable"] for line in lines)
    assert any(line.startswith("ffmpeg: ") and line.endswith("; HDR references: tone-mapped to SDR") for line in lines)
    if not os.path.exists("/dev/nvidiactl"):
        assert "references decoded by: the CPU (no NVIDIA driver on this machine)" in lines
        assert "videos encoded by: libx264 (no NVIDIA driver on this machine)" in lines
    if not TRT_OK:
        assert f"tensorrt     not usable: {TRT_WHY}" in lines
        # On a CPU: each pack's faster backend there (BENCHMARKS.md, "Backends").
        assert lines[-3:] == ["auto for warp: pytorch", "auto for wav2lip: onnxruntime", "auto for musetalk: pytorch"]


def test_doctor_says_when_the_ffmpeg_in_use_cannot_tone_map_hdr(tmp_path):
    """An ffmpeg built without zimg (here: the bundled one behind a script that hides zscale)."""
    from heygem_ray.media import ffmpeg_exe

    script = tmp_path / "ffmpeg-without-zimg"
    script.write_text(f'#!/bin/sh\nif [ "$2" = "-filters" ]; then "{ffmpeg_exe()}" "$@" | grep -v zscale; exit 0; fi\n'
                      f'exec "{ffmpeg_exe()}" "$@"\n')  # fmt: skip
    script.chmod(0o755)
    proc = cli("doctor", cwd=tmp_path, env={**os.environ, "HEYGEM_FFMPEG": str(script)})
    assert proc.returncode == 0, proc.stderr
    assert f"ffmpeg: {script}; HDR references: refused (this ffmpeg has no zscale filter)" in proc.stdout.splitlines()


def test_engines_build_then_list(tmp_path):
    built = cli("engines", "build", "--engines", "es", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    paths = [line.split(": ", 1)[1] for line in built.stdout.splitlines() if ": " in line and not line.startswith("note")]
    assert len(paths) == 2 and all((tmp_path / p / "model.onnx").is_file() for p in paths)
    listed = cli("engines", "list", "--store", "es", cwd=tmp_path).stdout  # the old spelling of --engines
    rows = [line for line in listed.splitlines() if "│ warp" in line]
    assert len(rows) == 2
    assert all("onnxruntime" in r and "fp32" in r and "yes" in r for r in rows)
    assert {"motion", "render"} == {r.split("│")[2].strip() for r in rows}


def test_a_wrong_restoration_checkpoint_stops_the_build_before_any_engine_of_the_pack(tmp_path):
    """Found after the pack's engines were built (minutes of TensorRT on a GPU): now first."""
    (tmp_path / "GFPGANv1.4.pth").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    built = cli("engines", "build", "--engines", "es", "--restore", "gfpgan", "--restore-checkpoint",
                "GFPGANv1.4.pth", cwd=tmp_path)  # fmt: skip
    assert built.returncode == 2, built.stderr
    assert built.stderr.startswith(f"error: {tmp_path / 'GFPGANv1.4.pth'} is a web page (HTML), not the weights")
    assert not list((tmp_path / "es").rglob("*.onnx"))


def test_engines_build_exports_each_of_musetalks_three_networks(tmp_path, musetalk_folder):
    built = cli("engines", "build", "--pack", "musetalk", "--checkpoint", str(musetalk_folder), "--engines", "es",
                cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    paths = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in built.stdout.splitlines()
             if line.startswith(("reference", "motion", "render"))}  # fmt: skip
    assert sorted(paths) == ["motion", "reference", "render"]
    assert all((tmp_path / p / "model.onnx").is_file() for p in paths.values())


@pytest.mark.skipif(TRT_OK, reason="TensorRT can run here")
def test_asking_for_tensorrt_where_it_cannot_run_stops_before_any_work(tmp_path, ray_join):
    built = cli("engines", "build", "--backend", "tensorrt", "--engines", "es", cwd=tmp_path)
    assert built.returncode == 2 and TRT_WHY in built.stderr
    proc = cli("submit", str(REPO / "examples" / "manifest.csv"), "--backend", "tensorrt", "-o", "o", cwd=tmp_path,
               env=ray_join)
    assert proc.returncode == 2
    assert f"--backend tensorrt cannot run here: {TRT_WHY}" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_the_default_store_is_a_per_user_cache_and_the_variable_overrides_it(tmp_path):
    """Without --store/--engines, engines go to the user's cache folder, wherever the
    command runs; HEYGEM_RAY_ENGINES names another store."""
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HEYGEM_RAY_ENGINES"} | {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    built = cli("engines", "build", cwd=work, env=env)
    assert built.returncode == 0, built.stderr
    paths = [Path(line.split(": ", 1)[1]) for line in built.stdout.splitlines() if line.startswith(("motion", "render"))]
    assert len(paths) == 2 and all(p.is_relative_to(tmp_path / "xdg" / "heygem-ray" / "engines") for p in paths), paths
    assert list(work.iterdir()) == []
    listed = cli("engines", "list", cwd=tmp_path, env=env).stdout
    assert len([line for line in listed.splitlines() if "│ warp" in line]) == 2

    env["HEYGEM_RAY_ENGINES"] = str(tmp_path / "shared")
    assert "│ warp" not in cli("engines", "list", cwd=work, env=env).stdout
    built = cli("engines", "build", cwd=work, env=env)
    assert built.returncode == 0, built.stderr
    assert all(line.split(": ", 1)[1].startswith(str(tmp_path / "shared")) for line in built.stdout.splitlines()
               if line.startswith(("motion", "render")))
