"""The musetalk pack's stages against MuseTalk's own pipeline (``heygem_ray.models.musetalk``,
itself checked against the public code's numbers), its chunked speech features, crop and
mask, and each stage on ONNX Runtime."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from heygem_ray import media
from heygem_ray.backends import open_runners
from heygem_ray.config import RenderConfig
from heygem_ray.engines import EngineStore
from heygem_ray.errors import InputError
from heygem_ray.face import FaceTrack
from heygem_ray.features import Pcm, musetalk_audio, musetalk_gather
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.models import musetalk
from heygem_ray.packs import get_pack
from heygem_ray.packs.musetalk import GEOMETRY, jaw_mask
from heygem_ray.template.files import Template
from heygem_ray.worker import ModelWorker
from tests.conftest import EXAMPLES
from tests.helpers.footage import lecture_clip
from tests.helpers.media import make_excerpt
from tests.helpers.readonly import read_only

PACK = get_pack("musetalk")


@pytest.fixture(scope="module")
def stages(musetalk_folder):
    return PACK.load_stages(musetalk_folder)


@pytest.fixture(scope="module")
def models(musetalk_folder):
    return musetalk.load(musetalk_folder)


def speech_like(seconds: float, seed: int = 3) -> np.ndarray:
    """A tone gliding and pulsing in noise, 16 kHz float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * (150 + 60 * np.sin(t)) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (x + 0.03 * rng.standard_normal(len(t))).astype(np.float32)


def crops_and_tokens(k: int = 3, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256]
    crops = np.stack([np.stack([(x + 30 * i) % 256, (y * (i + 1)) % 256, (x + y) // 2], -1) for i in range(k)])
    crops = np.clip(crops + rng.normal(0, 10, crops.shape), 0, 255).astype(np.uint8)
    return crops, rng.standard_normal((k, 50, 384)).astype(np.float32)


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)], ids=["25", "29.97"])
def test_chunked_speech_features_through_the_motion_stage_equal_the_whole_clips(stages, models, fps):
    """33 s of audio (two Whisper segments), chunks of 128 frames: each chunk carries only
    the segments its frames' windows reach, and the windows equal those of the whole clip
    (``musetalk_audio``, the public pipeline's numbers), across the segment boundary too."""
    wav = speech_like(33.0)
    frames = int(len(wav) * fps // 16000)
    whole = musetalk_audio(wav, fps, models, frames)
    chunked = PACK.features(Pcm.from_array(wav), fps, frames)
    parts, segments = [], []
    for start in range(0, frames, 128):
        feats = chunked(range(start, min(frames, start + 128)))
        assert isinstance(feats, dict)
        segments.append(len(feats["mel"]))
        with torch.inference_mode():
            states = stages["motion"](torch.from_numpy(feats["mel"])).numpy()
        parts.append(musetalk_gather(states.reshape(-1, 5, 384), feats["starts"], int(feats["stop"][0])))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # Each chunk carries the one segment its frames' windows (up to 80 ms before, 160 ms after) are in; one that
    # reaches over 30 s, both.
    assert segments == [2 if s / fps - 0.1 < 30 < (s + 127) / fps + 0.16 else 1 for s in range(0, frames, 128)]


def test_the_reference_and_render_stages_make_musetalks_crops(stages, models):
    """Crops through the reference stage, then tokens and latents through the render
    stage, give what MuseTalk's pipeline gives for the same weights (posterior mode)."""
    crops, tokens = crops_and_tokens()
    faces = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)
    with torch.inference_mode():
        latents = stages["reference"](faces)
        out = stages["render"](latents, torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(latents.numpy(), musetalk.reference_latents(models, crops).numpy(), atol=1e-4)
    pixels = np.clip(np.rint(out.transpose(0, 2, 3, 1) * 255), 0, 255).astype(np.uint8)
    want = musetalk.generate(models, crops, tokens)
    diff = np.abs(pixels.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_every_stage_runs_on_onnx_runtime_as_on_pytorch(musetalk_folder, tmp_path):
    """All three networks export with a dynamic batch and ONNX Runtime agrees with PyTorch."""
    crops, tokens = crops_and_tokens(k=2)
    mel = np.random.default_rng(1).uniform(-1, 1, (1, 80, 3000)).astype(np.float32)
    inputs = {
        "reference": {"crops": np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0},
        "motion": {"features": mel},
    }
    outs = {}
    for backend in ("pytorch", "onnxruntime"):
        chosen = open_runners(PACK, PACK.load_stages(musetalk_folder), device="cpu",
                              store=EngineStore(tmp_path / "engines"), backend=backend, intra_op_threads=2)
        run = chosen.runners
        latents = run["reference"].infer(inputs["reference"])["latents"]
        outs[backend] = {
            "latents": latents,
            "codes": run["motion"].infer(inputs["motion"])["codes"],
            "generated": run["render"].infer({"latents": latents, "tokens": tokens})["generated"],
        }
        chosen.close()
        assert sorted(chosen.engine_keys) == ([] if backend == "pytorch" else ["motion", "reference", "render"])
    # Random weights amplify last-bit differences between the backends' kernels: a few of the
    # generated pixels move by up to about one level of 255.
    for name, tol in (("latents", 1e-4), ("codes", 1e-3), ("generated", 5e-3)):
        np.testing.assert_allclose(outs["onnxruntime"][name], outs["pytorch"][name], atol=tol, err_msg=name)
        assert np.abs(outs["onnxruntime"][name] - outs["pytorch"][name]).mean() < 2e-4, name
    assert outs["pytorch"]["codes"].shape == (1, 1500, 5, 384)
    assert outs["pytorch"]["generated"].shape == (2, 3, 256, 256)


def test_the_crop_puts_the_nose_on_the_middle_row_and_ends_below_the_chin():
    faces = np.array([[100, 200, 300, 400]], np.float32)  # a 200 px face box
    track = FaceTrack(boxes=faces, present=np.ones(1, bool), detected=np.ones(1, bool),
                      mouths=np.array([[0.5, 0.83]], np.float32), chins=np.array([1.08], np.float32))
    (box,) = GEOMETRY.crop_boxes(track, 1920, 1080)
    nose, chin = 200 + (0.83 - 0.27) * 200, 200 + 1.08 * 200
    assert box[0] == 100 and box[2] == 300
    assert box[3] == round(chin + 10)  # MuseTalk 1.5's extra 10 px under the chin
    assert abs((box[1] + chin) / 2 - nose) <= 1  # as far above the nose as the chin is below


def test_the_mask_covers_the_lower_face_and_fades_out_at_the_nose_line_and_the_edges():
    mask = jaw_mask()
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert mask[:128].max() == 0.0  # the upper half stays the frame's
    assert mask[190, 128] == 1.0 and mask[150, 60] == 1.0  # mouth, cheek
    border = np.concatenate([mask[-1], mask[:, 0], mask[:, -1]])
    assert border.max() < 0.1  # no seam along the crop's edges
    assert 0.0 < mask[138, 128] < 1.0  # feathered just under the nose line


def test_a_preprocessor_config_other_than_whisper_tinys_is_refused(musetalk_folder, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(musetalk_folder, copy)
    config = copy / "whisper" / "preprocessor_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "hop_length": 320}))
    with pytest.raises(InputError) as err:
        PACK.load_stages(copy)
    assert err.value.kind == "bad_checkpoint"
    assert err.value.message.startswith(f"{config}: hop_length differ")


class _CountingWorker(ModelWorker):
    """A real model worker that notes how many reference frames it was sent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_frames: list[int] = []

    def run_reference(self, crops: np.ndarray) -> np.ndarray:
        self.reference_frames.append(len(crops))
        return super().run_reference(crops)


def test_reference_latents_are_computed_once_per_template_frame_and_kept_with_it(musetalk_folder, tmp_path):
    """A 1 s reference (25 frames): a 0.4 s job needs its first 10 frames' latents, a 1.4 s
    job (ping-pong over all 25) only the other 15, a third none; the outputs are MP4s of
    the audio's length."""
    clip = lecture_clip(tmp_path / "clip.mp4", size=(320, 240), face=90, seconds=1.0, corner="centre")
    cfg = RenderConfig(pack="musetalk", checkpoint=musetalk_folder, chunk_frames=16, batch_size=8)
    worker = _CountingWorker(cfg, tmp_path / "engines")
    service = InProcessService(worker)
    for i, seconds in enumerate((0.4, 1.4, 1.4)):
        audio = make_excerpt(EXAMPLES / "lesson1.wav", tmp_path / f"a{i}.wav", seconds=seconds, start=0.3)
        job = Job(i + 1, f"j{i}", audio, clip.path, tmp_path / f"o{i}.mp4")
        result = render_job(job, cfg, tmp_path / "cache", service)
        assert result.status == "ok", result.error
        assert result.frames == round(seconds * 25)
    assert worker.reference_frames == [10, 15]  # in chunks of up to 16 frames: once each
    (template,) = (tmp_path / "cache").glob("*/meta.json")
    (done,) = template.parent.glob("reference-*-fp32.done.npy")
    assert np.load(done).all() and np.load(done).shape == (25,)


def test_damaged_reference_latents_are_computed_again_and_the_job_renders(musetalk_folder, tmp_path, caplog):
    """The latents kept with a template, cut short (a copy that stopped, a full disk
    elsewhere): the next job on the reference warns, computes them again and renders."""
    clip = lecture_clip(tmp_path / "clip.mp4", size=(320, 240), face=90, seconds=1.0, corner="centre")
    cfg = RenderConfig(pack="musetalk", checkpoint=musetalk_folder, chunk_frames=16, batch_size=8)
    worker = _CountingWorker(cfg, tmp_path / "engines")
    service = InProcessService(worker)
    audio = make_excerpt(EXAMPLES / "lesson1.wav", tmp_path / "a.wav", seconds=1.4, start=0.3)
    first = render_job(Job(1, "j1", audio, clip.path, tmp_path / "o1.mp4"), cfg, tmp_path / "cache", service)
    assert first.status == "ok", first.error
    (kept,) = (tmp_path / "cache").glob("*/reference-*-fp32.npy")
    with open(kept, "r+b") as f:
        f.truncate(kept.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="heygem_ray.job.reference"):
        again = render_job(Job(2, "j2", audio, clip.path, tmp_path / "o2.mp4"), cfg, tmp_path / "cache", service)
    assert again.status == "ok", again.error
    assert worker.reference_frames == [16, 9, 16, 9]  # all 25 frames' latents, twice
    (record,) = caplog.records
    assert str(kept.parent) in record.getMessage() and "computing them again" in record.getMessage()
    assert np.load(kept.with_name(kept.name.replace(".npy", ".done.npy"))).all()


def test_a_cache_that_cannot_be_written_gives_the_latents_it_holds_and_computes_the_rest_per_job(
        musetalk_folder, tmp_path):  # fmt: skip
    """A template cache warmed by a 0.4 s job, then mounted read-only: a 0.4 s job reads the
    10 frames' latents it holds (none computed); a 1.4 s job, which needs all 25, computes
    them for itself (its lock and latents file could not be made: the row failed) and
    renders the video a writable cache gives; the cache is left as it was."""
    clip = lecture_clip(tmp_path / "clip.mp4", size=(320, 240), face=90, seconds=1.0, corner="centre")
    cfg = RenderConfig(pack="musetalk", checkpoint=musetalk_folder, chunk_frames=16, batch_size=8)
    worker = _CountingWorker(cfg, tmp_path / "engines")
    service = InProcessService(worker)
    short, long = (make_excerpt(EXAMPLES / "lesson1.wav", tmp_path / f"a{s}.wav", seconds=s, start=0.3)
                   for s in (0.4, 1.4))  # fmt: skip
    cache = tmp_path / "cache"
    assert render_job(Job(1, "warm", short, clip.path, tmp_path / "warm.mp4"), cfg, cache, service).status == "ok"
    writable = Path(shutil.copytree(cache, tmp_path / "writable"))
    want = render_job(Job(2, "w", long, clip.path, tmp_path / "w.mp4"), cfg, writable, service)
    assert want.status == "ok", want.error
    held = sorted((p.relative_to(cache), p.stat().st_size) for p in cache.rglob("*"))
    worker.reference_frames.clear()
    with read_only(cache):
        again = render_job(Job(3, "again", short, clip.path, tmp_path / "again.mp4"), cfg, cache, service)
        assert again.status == "ok", again.error
        assert worker.reference_frames == []
        got = render_job(Job(4, "long", long, clip.path, tmp_path / "long.mp4"), cfg, cache, service)
        assert got.status == "ok", got.error
        assert worker.reference_frames == [16, 9]  # the 25 frames it uses, for this job
    # The same video, up to the float rounding of latents computed in other batches (25 at
    # once here, 10 then 15 there).
    diff = np.abs(media.read_video(Path(got.output))[0].astype(np.int16) - media.read_video(Path(want.output))[0])
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 8, (diff.mean(), diff.max())
    assert sorted((p.relative_to(cache), p.stat().st_size) for p in cache.rglob("*")) == held


# A job in a process of its own (what the job's task runs), its scratch folder on the disk
# TMPDIR names: prints its row's status, kind and error.
_ONE_JOB = """
import sys
from pathlib import Path
from heygem_ray.config import RenderConfig
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.worker import ModelWorker

models, cache, clip, audio, out = map(Path, sys.argv[1:])
cfg = RenderConfig(pack="musetalk", checkpoint=models, chunk_frames=16, batch_size=8)
result = render_job(Job(1, "long", audio, clip, out), cfg, cache, InProcessService(ModelWorker(cfg, out.parent / "e")))
print(result.status, result.error_kind)
print(result.error)
"""


def test_latents_computed_per_job_on_a_full_scratch_disk_fail_the_row_as_storage(musetalk_folder, tmp_path, mount):
    """A read-only template cache makes a job compute the latents it lacks into its scratch
    folder: written through a memory map, a full scratch disk killed the job's process
    (SIGBUS: a lost task, tried again, then 'worker_lost'); now the row fails ``storage``,
    naming the folder, and nothing of the job is left there."""
    clip = lecture_clip(tmp_path / "clip.mp4", size=(320, 240), face=90, seconds=1.0, corner="centre")
    cfg = RenderConfig(pack="musetalk", checkpoint=musetalk_folder, chunk_frames=16, batch_size=8)
    short, long = (make_excerpt(EXAMPLES / "lesson1.wav", tmp_path / f"a{s}.wav", seconds=s, start=0.3)
                   for s in (0.4, 1.4))  # fmt: skip
    cache = tmp_path / "cache"
    warm = render_job(Job(1, "warm", short, clip.path, tmp_path / "warm.mp4"), cfg, cache,
                      InProcessService(ModelWorker(cfg, tmp_path / "engines")))  # fmt: skip
    assert warm.status == "ok", warm.error
    (kept,) = cache.glob("*/reference-*-fp32.npy")
    assert kept.stat().st_size > 256 << 10  # the 25 frames' latents: more than the scratch disk holds
    scratch = mount("scratch", size="256k")
    with read_only(cache):
        proc = subprocess.run([sys.executable, "-c", _ONE_JOB, str(musetalk_folder), str(cache), str(clip.path),
                               str(long), str(tmp_path / "long.mp4")], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "TMPDIR": str(scratch)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, said = proc.stdout.splitlines()
    assert status == "failed storage", proc.stdout
    assert f"{scratch}/heygem-job-" in said and "no space left on device; free space there, or give the jobs another temporary directory" in said, said
    assert not list(scratch.glob("heygem-*")) and not (tmp_path / "long.mp4").exists()


def test_submit_renders_a_lecture_clip_with_musetalk_through_ray(musetalk_folder, tmp_path, ray_join):
    """``heygem-ray submit --pack musetalk`` on a presenter in a 640×360 lecture frame: the
    row is ok, the lower face (under the jaw mask) is what the model drew, and the rest of
    the frame, the eyes and the slide, is the reference's."""
    lecture_clip(tmp_path / "clip.mp4", size=(640, 360), face=110, seconds=1.0, corner="centre", motion="still")
    make_excerpt(EXAMPLES / "lesson1.wav", tmp_path / "a.wav", seconds=1.2)
    (tmp_path / "m.csv").write_text("job_id,audio,video\nlesson,a.wav,clip.mp4\n")
    exe = Path(sys.executable).with_name("heygem-ray")
    proc = subprocess.run(
        [str(exe), "submit", "m.csv", "-o", "out", "--pack", "musetalk", "--checkpoint", str(musetalk_folder),
         "--cache-dir", "cache", "--engines", "engines", "--device", "cpu", "--workers", "1", "--chunk-frames", "16"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ray_join,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert row["status"] == "ok" and row["pack"] == "musetalk" and row["frames"] == 30 and row["backend"] == "pytorch"
    out, _ = media.read_video(tmp_path / "out" / "lesson.mp4")
    assert out.shape == (30, 360, 640, 3)
    (meta,) = (tmp_path / "cache").glob("*/meta.json")
    template = Template.open(meta.parent)
    (ref,) = template.read_frames(np.array([5]))  # the reference frame as the job composed it
    x0, y0, x1, y1 = (int(v) for v in template.boxes[5])
    diff = np.abs(out[5].astype(np.int16) - ref.astype(np.int16)).max(axis=2)
    mouth = diff[(y0 + y1) // 2 + (y1 - y0) // 6 : y1 - (y1 - y0) // 8, x0 + (x1 - x0) // 4 : x1 - (x1 - x0) // 4]
    assert mouth.mean() > 20  # random weights draw no face: the lower face changed
    outside = diff.copy()
    outside[y0:y1, x0:x1] = 0
    # The frame and the upper face are kept, within the H.264 encoding's noise.
    assert outside.mean() < 2.5 and diff[y0 : (y0 + y1) // 2, x0:x1].mean() < 6
