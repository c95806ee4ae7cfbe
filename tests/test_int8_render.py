"""``--precision int8`` end to end: ``engines build --precision int8 --calibrate MANIFEST``
builds the calibrated render graph ahead of time, a worker then finds it by the same
calibration id, and a job renders with it (real speech on the bundled presenter)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from heygem_ray import media
from heygem_ray.config import RenderConfig
from heygem_ray.engines import EngineStore
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.worker import ModelWorker
from tests.helpers.wav2lip_ckpt import write_random_checkpoint

# Frames that calibrate (a quarter as many more judge): enough for the gate's figures, a
# quarter of the default's build time.
CALIBRATE = 32


def test_engines_build_then_render_a_job_at_int8(tmp_path: Path, examples: Path) -> None:
    ckpt = write_random_checkpoint(tmp_path / "wav2lip.pth", seed=0)
    manifest = tmp_path / "presenter.csv"
    manifest.write_text(f"audio,video\n{examples / 'lesson1.wav'},{examples / 'presenter.mp4'}\n")
    store = tmp_path / "engines"
    exe = Path(sys.executable).with_name("heygem-ray")
    built = subprocess.run(
        [str(exe), "engines", "build", "--pack", "wav2lip", "--checkpoint", str(ckpt), "--precision", "int8",
         "--calibrate", str(manifest), "--calibration-frames", str(CALIBRATE), "--engines", str(store)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert built.returncode == 0, built.stderr
    found = re.search(rf"^int8: calibration ([0-9a-f]{{16}}); accepted by the accuracy gate: on {CALIBRATE // 4} held-out frames "
                      rf"of {re.escape(str(manifest))}, PSNR against fp32 is [\d.]+ dB", built.stdout, re.M)
    assert found, built.stdout
    calibration = found[1]
    assert re.search(rf"^render: .*-cpu-int8-cal{calibration[:8]}-", built.stdout, re.M), built.stdout
    entries = sorted(str(e.path) for e in EngineStore(store).list())

    cfg = RenderConfig(pack="wav2lip", checkpoint=ckpt, precision="int8", calibration=manifest, calibration_frames=CALIBRATE)
    worker = ModelWorker(cfg, engines_dir=store)
    try:
        info = worker.ready()
        assert (info.backend, info.precision, info.calibration) == ("onnxruntime", "int8", calibration)
        assert sorted(str(e.path) for e in EngineStore(store).list()) == entries  # found, not built again
        job = Job(row=1, job_id="lesson1", audio=examples / "lesson1.wav", video=examples / "presenter.mp4",
                  output=tmp_path / "out" / "lesson1.mp4")
        result = render_job(job, cfg, tmp_path / "templates", InProcessService(worker))
    finally:
        worker.close()
    assert result.status == "ok", result.error
    assert (result.precision, result.calibration) == ("int8", calibration)
    assert result.engine_key and f"int8-cal{calibration[:8]}" in result.engine_key
    probe = media.probe_video(tmp_path / "out" / "lesson1.mp4")
    assert probe.frames == result.frames > 150  # 7 s of speech at 25 fps
