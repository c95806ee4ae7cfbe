"""Face restoration through whole renders: every pack through Ray with ``--restore gfpgan``
on the seeded narrow GFPGAN checkpoint, against the same render without it; no flicker on
a still; ``engines build --restore``.

The MP4s are encoded losslessly here (``crf`` 0: H.264's lossless mode of the 4:2:0
picture), so a decoded frame is the composed frame up to the colour conversion: pixels
outside the pack's mask (and a margin of ``CHROMA_MARGIN`` pixels for the half-resolution
colour planes, which mix neighbouring pixels) must decode bit for bit as in the unrestored
render.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from heygem_ray import media
from heygem_ray.analyze import analyze
from heygem_ray.config import InputLimits, RenderConfig, RunConfig
from heygem_ray.driver import submit
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.packs import get_pack
from heygem_ray.restore.inputs import SAMPLE_HEIGHT
from heygem_ray.worker import ModelWorker
from tests.helpers.gfpgan_ckpt import write_checkpoint
from tests.helpers.media import make_silence
from tests.helpers.wav2lip_ckpt import write_random_checkpoint

FPS = 25
SIDE = 256  # the reference's side, pixels
# Pixels from the mask's edge whose decoded colour may mix in the mask's: the 4:2:0 colour
# planes are half resolution, so a changed pixel changes its 2 × 2 block's colour sample,
# and decoding interpolates each pixel's colour from the samples around it: a change shows
# up to 4 pixels away (measured: 3 and 4 px, by 1-2 levels, on wav2lip's mask).
CHROMA_MARGIN = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, examples) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("restore-inputs")
    still = cv2.resize(cv2.imread(str(examples / "presenter.jpg")), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(d / "still.png"), still)
    speech = d / "speech.wav"  # 0.4 s: 10 frames, speaking
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-ss", "1.0", "-t", "0.4", "-i",
                    str(examples / "lesson1.wav"), str(speech)], check=True)  # fmt: skip
    return {
        "still": d / "still.png",
        "speech": speech,
        "silence": make_silence(d / "silence.wav", seconds=0.4),
        "gfpgan": write_checkpoint(d / "gfpgan-narrow.pth"),
        "wav2lip": write_random_checkpoint(d / "wav2lip.pth", seed=3),
        "engines": d / "engines",
        "cache": d / "cache",
    }


def _mask_region(pack_name: str, video: Path, cache: Path, frames: int) -> np.ndarray:
    """(frames, H, W) bool: where the pack's paste mask is above 0 in each output frame
    (a still reference: the same every frame), grown by ``CHROMA_MARGIN``."""
    pack = get_pack(pack_name)
    template, _ = analyze(video, pack.geometry, RenderConfig().detector, cache)
    x0, y0, x1, y1 = template.boxes[0]
    region = np.zeros((template.height, template.width), np.uint8)
    spread = cv2.resize(pack.paste_mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0
    full = np.zeros((y1 - y0, x1 - x0), bool)
    full[:] = spread
    ys, xs = np.nonzero(full)
    keep = (ys + y0 >= 0) & (ys + y0 < template.height) & (xs + x0 >= 0) & (xs + x0 < template.width)
    region[ys[keep] + y0, xs[keep] + x0] = 1
    size = 2 * CHROMA_MARGIN + 1
    grown = cv2.dilate(region, np.ones((size, size), np.uint8)).astype(bool)
    return np.broadcast_to(grown, (frames, *grown.shape))


# -- every pack through Ray ------------------------------------------------------------------------


def _render(inputs: dict[str, Path], folder: Path, pack: str, checkpoint: Path | None, restore: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.csv").write_text(f"job_id,audio,video\nj,{inputs['speech']},{inputs['still']}\n")
    extra = {"restore": "gfpgan", "restore_checkpoint": inputs["gfpgan"]} if restore else {}
    render = RenderConfig(pack=pack, checkpoint=checkpoint, chunk_frames=4, batch_size=4, crf=0, **extra)
    cfg = RunConfig(output_dir=folder / "out", render=render, cache_dir=inputs["cache"],
                    engines_dir=inputs["engines"], workers=1)  # fmt: skip
    summary = submit(folder / "m.csv", cfg)
    (row,) = pq.read_table(summary.results_path).to_pylist()
    return row


@pytest.mark.parametrize("pack", ["warp", "wav2lip", "musetalk"])
def test_every_pack_renders_restored_through_ray_and_only_inside_its_mask(pack, inputs, musetalk_folder,
                                                                          tmp_path, ray_local) -> None:
    checkpoint = {"warp": None, "wav2lip": inputs["wav2lip"], "musetalk": musetalk_folder}[pack]
    plain = _render(inputs, tmp_path / "plain", pack, checkpoint, restore=False)
    restored = _render(inputs, tmp_path / "restored", pack, checkpoint, restore=True)
    for row in (plain, restored):
        assert row["status"] == "ok", row["error"]
    assert (plain["restore"], plain["restore_backend"], plain["restore_s"], plain["restore_sample"]) == (
        "none", None, None, None)
    # auto on a CPU: ONNX Runtime for the restoration, whatever runs the pack; and a warning
    assert restored["restore"] == "gfpgan" and restored["restore_backend"] == "onnxruntime"
    assert restored["backend"] == plain["backend"] and restored["restore_s"] > 0
    assert "restore: it takes seconds a frame on a CPU" in restored["backend_note"]
    assert restored["weights_digest"].startswith(plain["weights_digest"] + ";gfpgan=sha256:")
    sample = cv2.imdecode(np.frombuffer(restored["restore_sample"], np.uint8), cv2.IMREAD_COLOR)
    assert sample.shape[0] == SAMPLE_HEIGHT and sample.shape[1] >= SAMPLE_HEIGHT

    a, _ = media.read_video(Path(plain["output"]))
    b, _ = media.read_video(Path(restored["output"]))
    assert a.shape == b.shape and len(a) == restored["frames"] == 10
    inside = _mask_region(pack, inputs["still"], inputs["cache"], len(a))
    np.testing.assert_array_equal(b[~inside], a[~inside])  # outside the mask: the unrestored render
    assert np.abs(b[inside].astype(np.int16) - a[inside]).mean() > 5  # inside it, restored


# -- no flicker -------------------------------------------------------------------------------------


def _frame_to_frame(frames: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute change from each frame to the next inside ``region`` (H, W)."""
    steps = np.abs(np.diff(frames.astype(np.int16), axis=0))  # (n - 1, H, W, 3)
    return float(steps[:, region].mean())


def test_a_still_face_on_silence_does_not_flicker_when_restored(inputs, tmp_path) -> None:
    """A still reference and silent audio: the pack draws the same face every frame. The
    restored face must change from frame to frame no more than the unrestored one does,
    across frames in different chunks and batch positions."""
    outputs = {}
    for restore in (False, True):
        extra = {"restore": "gfpgan", "restore_checkpoint": inputs["gfpgan"]} if restore else {}
        cfg = RenderConfig(pack="wav2lip", checkpoint=inputs["wav2lip"], chunk_frames=4, batch_size=3, crf=0,
                           limits=InputLimits(allow_silent_audio=True), **extra)  # fmt: skip
        service = InProcessService(ModelWorker(cfg, engines_dir=inputs["engines"]))
        job = Job(row=1, job_id=f"still-{restore}", audio=inputs["silence"], video=inputs["still"],
                  output=tmp_path / f"{restore}.mp4")  # fmt: skip
        result = render_job(job, cfg, inputs["cache"], service)
        assert result.status == "ok", result.error
        outputs[restore], _ = media.read_video(Path(result.output))
    region = _mask_region("wav2lip", inputs["still"], inputs["cache"], 1)[0]
    plain, restored = _frame_to_frame(outputs[False], region), _frame_to_frame(outputs[True], region)
    assert np.abs(outputs[True][:, region].astype(np.int16) - outputs[False][:, region]).mean() > 5  # it did restore
    assert restored <= plain + 0.05, (restored, plain)


# -- engines --------------------------------------------------------------------------------------


def test_engines_build_with_restore_builds_the_restore_graph(inputs, tmp_path) -> None:
    exe = Path(sys.executable).with_name("heygem-ray")
    built = subprocess.run([str(exe), "engines", "build", "--restore", "gfpgan", "--restore-checkpoint",
                            str(inputs["gfpgan"]), "--engines", "es"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr
    paths = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in built.stdout.splitlines()
             if line.startswith(("motion", "render", "restore"))}  # fmt: skip
    assert sorted(paths) == ["motion", "render", "restore"]
    assert paths["restore"].startswith(str(Path("es") / "gfpgan" / "restore" / "onnxruntime-"))
    assert all((tmp_path / p / "model.onnx").is_file() for p in paths.values())
    refused = subprocess.run([str(exe), "engines", "build", "--restore", "gfpgan", "--engines", "es"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert refused.returncode == 2 and "--restore gfpgan needs its weights: pass --restore-checkpoint" in refused.stderr
