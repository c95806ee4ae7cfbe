"""One job through the real recipe in this process: real ffmpeg, real media, no Ray."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from heygem_ray import media, storage
from heygem_ray.analyze import analyze
from heygem_ray.checks import Reference
from heygem_ray.config import InputLimits, RenderConfig, RunConfig
from heygem_ray.job import InProcessService, render_job, scratch
from heygem_ray.manifest import Job
from heygem_ray.media import decoders, yuv
from heygem_ray.media import ffmpeg as ffmpeg_module
from heygem_ray.packs import get_pack
from heygem_ray.steps import TIMED
from heygem_ray.timeline import loop_indices
from heygem_ray.worker import ModelWorker
from tests.helpers.footage import lecture_clip
from tests.helpers.media import (
    HANG_MARK,
    hanging_ffmpeg,
    make_damaged_mp4,
    make_excerpt,
    make_hdr,
    make_heic,
    make_silence,
    sleepers,
)
from tests.helpers.wav2lip_ckpt import write_random_checkpoint

FPS = 25


@pytest.fixture(scope="module")
def warp_service():
    return InProcessService(ModelWorker(RenderConfig(backend="pytorch"), engines_dir=Path("unused")))


def job(tmp: Path, audio: Path, video: Path, name: str = "j") -> Job:
    return Job(row=1, job_id=name, audio=audio, video=video, output=tmp / "out" / f"{name}.mp4")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The module's template cache: presenter.mp4 is analysed once, by ``rendered``."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, examples, warp_service, cache):
    """lesson1.wav on presenter.mp4 (7 s of speech on a 4 s reference)."""
    tmp = tmp_path_factory.mktemp("render")
    cfg = RenderConfig(chunk_frames=48)
    result = render_job(job(tmp, examples / "lesson1.wav", examples / "presenter.mp4"), cfg, cache, warp_service)
    assert result.status == "ok", result.error
    template, cached = analyze(examples / "presenter.mp4", get_pack("warp").geometry, cfg.detector, cache)
    assert cached  # the job built it; this call found it
    frames, fps = media.read_video(Path(result.output))
    return result, frames, fps, template


@pytest.fixture(scope="module")
def floor(rendered, tmp_path_factory, examples):
    """The reference frames the job showed, through the same encoder: the codec's noise floor."""
    result, frames, _, template = rendered
    refs, index = _ref_frames(template, len(frames))
    path = tmp_path_factory.mktemp("floor") / "floor.mp4"
    with media.VideoWriter(
        path, width=template.width, height=template.height, fps=template.fps,
        audio=examples / "lesson1.wav", duration=len(refs) / FPS,
    ) as w:
        w.write(refs)
    encoded, _ = media.read_video(path)
    return refs, index, encoded


def test_output_matches_reference_format_and_audio_length(rendered, examples):
    result, frames, fps, template = rendered
    audio_s = media.probe_audio(examples / "lesson1.wav").duration
    assert fps == Fraction(FPS)
    assert frames.shape[1:] == (template.height, template.width, 3) == (384, 384, 3)
    assert len(frames) == result.frames == round(audio_s * FPS)
    out = media.probe_video(Path(result.output))
    assert abs(out.duration - audio_s) <= 1 / FPS
    assert abs(media.probe_audio(Path(result.output)).duration - audio_s) <= 1 / FPS
    assert result.template_cached is False and result.backend == "pytorch" and result.realtime_factor > 0
    assert result.encoder == media.pick_encoder("auto")  # libx264 here, h264_nvenc on a GPU with NVENC
    assert result.decoder == template.decoder == media.pick_decoder(media.probe_video(examples / "presenter.mp4"))


def _ref_frames(template, n):
    index = loop_indices(n, template.frames, "pingpong")
    return np.stack(list(template.read_frames(index))), index


def _outside(frames: np.ndarray, boxes: np.ndarray, margin: int = 0) -> np.ndarray:
    """(n, H, W) bool: the pixels of each of ``frames`` outside its crop box (grown by
    ``margin`` pixels on every side)."""
    outside = np.ones(frames.shape[:3], bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        outside[i, max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = False
    return outside


def test_pixels_outside_the_face_box_are_unchanged(rendered, floor):
    result, frames, _, template = rendered
    refs, index, encoded = floor
    outside = _outside(frames, template.boxes[index])
    noise = np.abs(encoded.astype(np.int16) - refs.astype(np.int16))[outside].mean()
    diff = np.abs(frames.astype(np.int16) - refs.astype(np.int16))
    assert diff[outside].mean() <= noise + 0.25
    assert diff[~outside].mean() > noise + 1.0  # while the face region did change


def test_the_frame_store_gives_back_the_reference_as_it_was_decoded(rendered, examples):
    """The template keeps every reference frame losslessly, as the encoder takes it: read
    back, each is the decoder's I420 frame byte for byte."""
    template = rendered[3]
    decoded = list(media.iter_frames(media.probe_video(examples / "presenter.mp4"), pixel_format="yuv420p"))
    stored = list(template.read_i420(np.arange(template.frames)))
    assert len(stored) == len(decoded) == template.frames
    assert all(np.array_equal(a, b) for a, b in zip(stored, decoded, strict=True))


def test_a_take_shot_in_hdr_renders_as_the_sdr_take_and_its_row_says_it_was_tone_mapped(
        tmp_path, examples, warp_service, rendered):  # fmt: skip
    """The bundled presenter recorded as a phone records HDR (HLG, 10-bit HEVC): its video
    is the SDR take's video again, within the codecs' noise (read as SDR, as before, its
    faces came out far too dark: 20 dB), and its row's notes say that it was tone-mapped."""
    sdr_result, sdr_frames, _, sdr_template = rendered
    hdr = make_hdr(examples / "presenter.mp4", tmp_path / "shot in hlg.mp4", colour="hlg",
                   seconds=sdr_template.frames / FPS)  # fmt: skip
    result = render_job(job(tmp_path, examples / "lesson1.wav", hdr), RenderConfig(chunk_frames=48), tmp_path / "cache",
                        warp_service)  # fmt: skip
    assert result.status == "ok", result.error
    assert "colour: shot in HDR (HLG), tone-mapped to SDR BT.709" in result.reference_notes
    assert "colour" not in (sdr_result.reference_notes or "")
    frames, _ = media.read_video(Path(result.output))
    assert frames.shape == sdr_frames.shape
    psnr = 10 * np.log10(255**2 / np.mean((frames.astype(np.float64) - sdr_frames) ** 2))
    assert psnr > 30, psnr
    template, _ = analyze(hdr, get_pack("warp").geometry, RenderConfig().detector, tmp_path / "cache")
    with template:
        assert template.source_colour == "hlg"
        assert json.loads((template.root / "meta.json").read_text())["source_colour"] == "hlg"


def test_without_linux_s_own_calls_a_job_renders_the_same(tmp_path, examples, warp_service, rendered, monkeypatch):
    """Where the system lacks what only Linux has (macOS: no pipe-size fcntl, no
    ``posix_fallocate``, no ``fallocate`` in its C library), the pipes keep their size and no
    space is held ahead: the same job renders the same frames."""
    monkeypatch.setattr(ffmpeg_module, "_SET_PIPE_SIZE", None)
    monkeypatch.delattr(os, "posix_fallocate")
    monkeypatch.setattr(storage, "_libc_fallocate", lambda: None)
    result = render_job(job(tmp_path, examples / "lesson1.wav", examples / "presenter.mp4"), RenderConfig(chunk_frames=48),
                        tmp_path / "cache", warp_service)  # fmt: skip
    assert result.status == "ok", result.error
    frames, _ = media.read_video(Path(result.output))
    assert np.array_equal(frames, rendered[1])


def test_a_take_at_5_fps_renders_at_25_with_each_frame_held_and_says_so(tmp_path, examples, warp_service):
    """The bundled take as a 5-fps screen recording shows it: the video is at 25 fps (each
    of the take's frames held 5 times), as long as the audio, its mouth moving from frame to
    frame where the take's frames stand still, and the row notes the take's rate."""
    slow = tmp_path / "screen.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(examples / "presenter.mp4"), "-vf", "fps=5",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(slow)], check=True)  # fmt: skip
    result = render_job(job(tmp_path, examples / "lesson1.wav", slow), RenderConfig(chunk_frames=48),
                        tmp_path / "cache", warp_service)  # fmt: skip
    assert result.status == "ok", result.error
    frames, fps = media.read_video(Path(result.output))
    assert fps == FPS and len(frames) == round(media.probe_audio(examples / "lesson1.wav").duration * FPS)
    assert "frame_rate: the take's 5 fps, each frame held at 25 fps" in result.reference_notes
    template, _ = analyze(slow, get_pack("warp").geometry, RenderConfig().detector, tmp_path / "cache")
    with template:
        held = [template.read_frames(np.arange(i, i + 5)) for i in range(0, 25, 5)]
        assert all(all(np.array_equal(f, group[0]) for f in group) for group in map(list, held))
        box = template.boxes[0]
        # Each of the take's frames is stored once (20 of the 100 shown), five times in a row.
        stored = np.load(template.root / "stored.npy")
        assert len(np.load(template.root / "offsets.npy")) - 1 == 20 and stored.tolist() == (np.arange(100) // 5).tolist()
    mouth = frames[:, (box[1] + box[3]) // 2 : box[3], box[0] : box[2]].astype(np.int16)
    change = np.abs(np.diff(mouth, axis=0)).mean(axis=(1, 2, 3))  # (n - 1,) frame i to i + 1
    within = change[(np.arange(len(change)) + 1) % 5 != 0]  # where the take's frame stays the same
    assert np.count_nonzero(within > 1) > len(within) / 4, within  # the mouth moves there all the same


def test_a_take_damaged_half_way_renders_from_what_decodes_and_its_row_says_so(tmp_path, examples, warp_service):
    """A copy of the bundled take whose picture data is broken from half way: ffmpeg reads
    on past the errors, and the video loops over the frames before them (it rendered before
    too, with no word of it); the row's notes name the frames decoded of those listed."""
    take = make_damaged_mp4(examples / "presenter.mp4", tmp_path / "broken copy.mp4")
    result = render_job(job(tmp_path, examples / "lesson1.wav", take), RenderConfig(chunk_frames=48),
                        tmp_path / "cache", warp_service)  # fmt: skip
    assert result.status == "ok", result.error
    frames, _ = media.read_video(Path(result.output))
    assert len(frames) == round(media.probe_audio(examples / "lesson1.wav").duration * FPS)
    template, _ = analyze(take, get_pack("warp").geometry, RenderConfig().detector, tmp_path / "cache")
    with template:
        decoded = template.frames
    assert 30 < decoded < 70
    assert f"decoded: {decoded} of the 100 frames the file lists" in result.reference_notes.split("; ")


def test_a_60_fps_take_under_max_fps_30_renders_at_30(tmp_path, examples, warp_service):
    """A phone's 60-fps take with --max-fps 30: analysed, rendered and encoded at 30 fps
    (every other frame of the take), as long as the audio, the mouth following it; its
    template is apart from the take's own, and the run's config hash is another."""
    take = lecture_clip(tmp_path / "phone.mp4", size=(320, 240), face=96, seconds=2, fps=60, corner="centre",
                        talk=lambda t: 0.0).path  # fmt: skip
    cfg = RenderConfig(chunk_frames=48, max_fps=30)
    result = render_job(job(tmp_path, examples / "lesson1.wav", take), cfg, tmp_path / "cache", warp_service)
    assert result.status == "ok", result.error
    frames, fps = media.read_video(Path(result.output))
    assert fps == 30 and len(frames) == round(media.probe_audio(examples / "lesson1.wav").duration * 30)
    assert "frame_rate" not in (result.reference_notes or "")
    template, cached = analyze(take, get_pack("warp").geometry, cfg.detector, tmp_path / "cache", max_fps=30)
    with template:
        assert cached and (template.fps, template.own_fps, template.frames) == (30, 60, 60)
        refs, index = _ref_frames(template, len(frames))
        boxes = template.boxes[index]
    assert _mouth_change(frames, refs, boxes).mean() > 2  # the closed mouth of the take opens with the speech
    own, _ = analyze(take, get_pack("warp").geometry, cfg.detector, tmp_path / "cache")
    with own:
        assert (own.fps, own.frames, own.root != template.root) == (60, 120, True)
    plain = RunConfig(output_dir=tmp_path, render=RenderConfig(chunk_frames=48))
    assert dataclasses.replace(plain, render=cfg).config_hash() != plain.config_hash()


def test_a_reference_above_max_resolution_renders_at_it_with_the_mouth_following_the_audio(
        tmp_path, examples, warp_service):  # fmt: skip
    """A 1280×720 lecture take rendered with max_resolution 360: the video is 640×360, the
    take scaled down everywhere but the mouth, the mouth moves; its template is of that
    size and says what it was scaled from, and the run's config hash is not the one
    without the cap (a resumed run renders its rows again)."""
    take = lecture_clip(tmp_path / "take.mp4", size=(1280, 720), face=128, seconds=2, corner="centre",
                        talk=lambda t: 0.0).path  # fmt: skip
    cfg = RenderConfig(chunk_frames=48, max_resolution=360)
    result = render_job(job(tmp_path, examples / "lesson1.wav", take), cfg, tmp_path / "cache", warp_service)
    assert result.status == "ok", result.error
    frames, fps = media.read_video(Path(result.output))
    assert fps == FPS and frames.shape[1:] == (360, 640, 3)
    assert len(frames) == round(media.probe_audio(examples / "lesson1.wav").duration * FPS)
    template, cached = analyze(take, get_pack("warp").geometry, cfg.detector, tmp_path / "cache", max_resolution=360)
    with template:
        assert cached and (template.width, template.height) == (640, 360)
        assert json.loads((template.root / "meta.json").read_text())["scaled_from"] == [1280, 720]
        assert template.scaled_from == (1280, 720)
        assert Reference.of(template).scaled_from == (1280, 720)
        refs, index = _ref_frames(template, len(frames))
        boxes = template.boxes[index]
    outside = _outside(frames, boxes, margin=8)
    assert np.abs(frames.astype(np.int16) - refs)[outside].mean() < 2.5  # the take, scaled, bar the codec
    assert _mouth_change(frames, refs, boxes).mean() > 2  # the closed mouth of the take opens with the speech
    plain = RunConfig(output_dir=tmp_path, render=RenderConfig(chunk_frames=48))
    assert dataclasses.replace(plain, render=cfg).config_hash() != plain.config_hash()


@pytest.mark.parametrize("start", [0.0, 2.0])
def test_a_take_longer_than_reference_seconds_renders_from_those_seconds_alone(tmp_path, examples, warp_service, start):
    """A 4-s panning take given with reference_seconds 1.5 (and reference_start 2, which
    skips its first 50 frames): its template holds the take's 37 frames from there (and
    says it was cut, and from where), the 7-s video ping-pongs over those alone (the take's
    other frames appear nowhere), and the run's config hash is not the one without the
    options (a resumed run renders its rows again)."""
    take = lecture_clip(tmp_path / "take.mp4", size=(640, 360), face=96, seconds=4, corner="centre",
                        talk=lambda t: 0.0).path  # fmt: skip
    cfg = RenderConfig(chunk_frames=48, reference_seconds=1.5, reference_start=start)
    result = render_job(job(tmp_path, examples / "lesson1.wav", take), cfg, tmp_path / "cache", warp_service)
    assert result.status == "ok", result.error
    frames, fps = media.read_video(Path(result.output))
    assert fps == FPS and len(frames) == round(media.probe_audio(examples / "lesson1.wav").duration * FPS)
    template, cached = analyze(take, get_pack("warp").geometry, cfg.detector, tmp_path / "cache",
                               reference_seconds=1.5, reference_start=start)  # fmt: skip
    first = round(start * FPS)
    with template:
        assert cached and template.frames == 37 and template.cut and template.start == start
        meta = json.loads((template.root / "meta.json").read_text())
        assert (meta["cut_to_seconds"], meta["start_seconds"]) == (37 / FPS, start or None)
        stored = np.stack(list(template.read_i420(np.arange(37))))
        decoded = list(media.iter_frames(media.probe_video(take), pixel_format="yuv420p"))
        assert len(decoded) == 100 and np.array_equal(stored, np.stack(decoded[first : first + 37]))
        whole = [yuv.to_bgr_frame(frame) for frame in decoded]
        refs, index = _ref_frames(template, len(frames))
        boxes = template.boxes[index]
    outside = _outside(frames, boxes, margin=8)
    assert np.abs(frames.astype(np.int16) - refs)[outside].mean() < 2.5  # those 1.5 s, looped, bar the codec
    others = np.stack(whole[:first] + whole[first + 37 :])  # the panned take elsewhere: no output frame is one
    near = [np.abs(others.astype(np.int16) - f).reshape(len(others), -1).mean(axis=1).min() for f in frames[::10]]
    assert min(near) > 1.0, near
    plain = RunConfig(output_dir=tmp_path, render=RenderConfig(chunk_frames=48))
    cut = RenderConfig(chunk_frames=48, reference_seconds=1.5)
    hashes = {dataclasses.replace(plain, render=r).config_hash() for r in (plain.render, cut, cfg)}
    assert len(hashes) == (3 if start else 2)


def test_a_take_that_ends_before_reference_start_fails_its_row_saying_how_long_it_is(tmp_path, examples, warp_service):
    """The bundled 4-s take from 10 s in: the row fails ``too_short`` in analyze, naming the
    file, the option and the take's length; nothing is written; the photo of the same run
    is used whole."""
    cfg = RenderConfig(chunk_frames=48, reference_start=10)
    result = render_job(job(tmp_path, examples / "lesson1.wav", examples / "presenter.mp4"), cfg, tmp_path / "cache",
                        warp_service)  # fmt: skip
    assert (result.status, result.error_kind, result.error_step) == ("failed", "too_short", "analyze"), result.error
    assert f"reference {examples / 'presenter.mp4'} ends before 10 s (--reference-start 10; it lasts 4.0 s): give " \
           "a start within the take, or 0" in result.error  # fmt: skip
    assert not list((tmp_path / "out").glob("*.mp4"))
    photo = render_job(job(tmp_path, examples / "lesson1.wav", examples / "presenter.jpg", "photo"), cfg,
                       tmp_path / "cache", warp_service)  # fmt: skip
    assert photo.status == "ok", photo.error


def test_a_phones_heic_photo_renders_as_a_photo(tmp_path, examples, warp_service):
    """The presenter's photo as a phone saves it (.heic, 512-px tiles, shot in portrait):
    the video is the whole photo, upright, at a photo's 25 frames a second for the whole
    audio (it was the top-left tile, at 1 frame a second)."""
    photo = cv2.resize(cv2.imread(str(examples / "presenter.jpg")), (800, 600), interpolation=cv2.INTER_AREA)
    heic = make_heic(tmp_path / "IMG_0042.HEIC", cv2.rotate(photo, cv2.ROTATE_90_COUNTERCLOCKWISE), orientation=6)
    result = render_job(job(tmp_path, examples / "lesson1.wav", heic), RenderConfig(chunk_frames=48), tmp_path / "cache",
                        warp_service)  # fmt: skip
    assert result.status == "ok", result.error
    frames, fps = media.read_video(Path(result.output))
    assert fps == FPS and frames.shape[1:] == (600, 800, 3)
    assert len(frames) == round(media.probe_audio(examples / "lesson1.wav").duration * FPS)
    assert np.abs(frames[0].astype(np.int16) - photo).mean() < 6  # upright: the photo, bar the mouth and the codec


def test_where_nvdec_fails_on_a_reference_it_is_decoded_again_on_the_cpu_and_the_template_says_so(
        tmp_path, examples, monkeypatch):  # fmt: skip
    """A node whose NVDEC passed its tiny trial and then fails on a reference (here: told
    NVDEC works on a machine without CUDA): the reference is decoded again on the CPU,
    into the same template, and its meta.json says what decoded it and why."""
    if decoders.nvdec_missing() is None:
        pytest.skip("NVDEC decodes on this machine: nothing falls back")
    video, geometry, detector = examples / "presenter.mp4", get_pack("warp").geometry, RenderConfig().detector
    on_cpu, _ = analyze(video, geometry, detector, tmp_path / "cpu")
    monkeypatch.setattr(decoders, "nvdec_missing", lambda: None)
    assert media.pick_decoder(media.probe_video(video)) == "nvdec"
    again, cached = analyze(video, geometry, detector, tmp_path / "fell-back")
    meta = json.loads((again.root / "meta.json").read_text())
    assert not cached and again.decoder == meta["decoder"] == on_cpu.decoder == "cpu"
    assert meta["decoder_note"].startswith("NVDEC failed, decoded on the CPU: ") and str(video) in meta["decoder_note"]
    assert json.loads((on_cpu.root / "meta.json").read_text())["decoder_note"] == ""
    index = np.arange(on_cpu.frames)
    assert again.frames == on_cpu.frames and np.array_equal(again.boxes, on_cpu.boxes)
    assert all(np.array_equal(a, b) for a, b in zip(again.read_i420(index), on_cpu.read_i420(index), strict=True))


def _mouth_change(frames, refs, boxes):
    """Mean absolute change per frame in the box's mouth region."""
    out = []
    for f, r, (x0, y0, x1, y1) in zip(frames, refs, boxes, strict=True):
        h, w = y1 - y0, x1 - x0
        ys = slice(y0 + int(0.5 * h), y0 + int(0.75 * h))
        xs = slice(x0 + int(0.3 * w), x0 + int(0.7 * w))
        out.append(np.abs(f[ys, xs].astype(np.int16) - r[ys, xs].astype(np.int16)).mean())
    return np.array(out)


def test_mouth_moves_with_the_audio_energy_and_without_frame_offset(rendered, floor, examples):
    result, frames, _, template = rendered
    refs, index, encoded = floor
    change = _mouth_change(frames, refs, template.boxes[index])
    noise = _mouth_change(encoded, refs, template.boxes[index]).mean()
    wav = media.load_audio(examples / "lesson1.wav")
    hop = 16000 // FPS
    energy = np.sqrt(np.array([np.mean(wav[i * hop : (i + 1) * hop] ** 2) for i in range(len(frames))]))
    quiet = energy < 1e-3
    # Silence away from speech: the frame and its 2 neighbours each side are quiet.
    silent = np.convolve(quiet, np.ones(5), mode="same") == 5
    assert silent.sum() >= 5
    # Closed in silence (only codec noise), clearly open in speech.
    assert change[silent].mean() < noise + 0.5
    assert change[~quiet].mean() > noise + 5.0
    # Rises and falls with the sound: correlation peaks at lag 0 (±1 frame).
    def corr(lag):
        a, b = (change[lag:], energy[: len(energy) - lag]) if lag >= 0 else (change[:lag], energy[-lag:])
        return np.corrcoef(a, b)[0, 1]
    lags = {lag: corr(lag) for lag in range(-4, 5)}
    assert corr(0) > 0.6
    assert abs(max(lags, key=lags.get)) <= 1


def test_reference_is_looped_ping_pong(tmp_path, examples, warp_service):
    # A 1 s reference of 25 frames, each marked by a different top strip, under 3 s of audio.
    face_ref = _marked_reference(examples / "presenter.jpg", tmp_path / "ref.mp4", frames=25)
    audio = tmp_path / "a.wav"
    make_excerpt(examples / "lesson1.wav", audio, seconds=3)
    result = render_job(job(tmp_path, audio, face_ref), RenderConfig(), tmp_path / "cache", warp_service)
    assert result.status == "ok", result.error
    frames, _ = media.read_video(Path(result.output))
    refs, _ = media.read_video(face_ref)
    # Identify each output frame by its top strip (far from the face, untouched).
    strip = slice(0, 24)
    dist = np.abs(frames[:, None, strip].astype(np.float32) - refs[None, :, strip].astype(np.float32)).mean(axis=(2, 3, 4))
    shown = dist.argmin(axis=1)
    assert len(frames) == 75
    assert shown.tolist() == loop_indices(75, 25, "pingpong").tolist()


def test_a_job_whose_ffmpeg_moves_nothing_fails_stalled_in_its_step_and_leaves_no_output(
        tmp_path, examples, warp_service, monkeypatch):  # fmt: skip
    """A reference whose decoder hands over nothing, and an output whose encoder takes
    nothing, each fail their row (kind ``stalled``, in the step it happened) once ffmpeg has
    moved no byte for ``STALL_S``, instead of holding the job for ever; no MP4 is left."""
    audio = tmp_path / "a.wav"
    make_excerpt(examples / "lesson1.wav", audio, seconds=1)
    reference = tmp_path / f"{HANG_MARK}.mp4"
    shutil.copy(examples / "presenter.mp4", reference)
    monkeypatch.setenv("HEYGEM_FFMPEG", str(hanging_ffmpeg(tmp_path)))
    monkeypatch.setattr(ffmpeg_module, "STALL_S", 2.0)
    media.ffmpeg_exe.cache_clear()
    try:
        cfg = RenderConfig(chunk_frames=16)
        reading = render_job(job(tmp_path, audio, reference, "reading"), cfg, tmp_path / "cache", warp_service)
        writing = render_job(job(tmp_path, audio, examples / "presenter.mp4", HANG_MARK), cfg, tmp_path / "cache",
                             warp_service)  # fmt: skip
    finally:
        media.ffmpeg_exe.cache_clear()
    for result, step, what in ((reading, "analyze", f"decoding the reference {reference}"),
                               (writing, "compose", "encoding ")):  # fmt: skip
        assert (result.status, result.error_kind, result.error_step) == ("failed", "stalled", step), result.error
        assert what in result.error and "for 2 s" in result.error, result.error
        assert not Path(result.output).exists()
    assert sleepers() == []


def test_the_rows_step_seconds_account_for_the_job_the_encoders_tail_included(tmp_path, examples, warp_service):
    """x264 holds the frames of its lookahead (40 at `medium`) and encodes them once the
    stream ends: for 25 frames, all of its work comes after the last frame is written.
    That wait, and the publish, are compose's; the steps add up to the job's time."""
    audio = tmp_path / "a.wav"
    make_excerpt(examples / "lesson1.wav", audio, seconds=1)
    cfg = RenderConfig(backend="pytorch", preset="medium")
    result = render_job(job(tmp_path, audio, examples / "presenter.jpg"), cfg, tmp_path / "cache", warp_service)
    assert result.status == "ok" and result.frames == 25, result.error
    timed = {step: getattr(result, f"{step}_s") or 0.0 for step in TIMED}
    assert sum(timed.values()) > 0.9 * result.seconds, (result.seconds, timed)


def test_silent_audio_fails_its_row_before_analysis_unless_allowed(tmp_path, examples, warp_service):
    """A muted export would render as a presenter whose mouth never moves, and be published
    as ok: its row fails in the audio step instead, naming the file and the way out. With
    --allow-silent-audio it renders, and every frame is the photo."""
    audio = make_silence(tmp_path / "muted.wav", seconds=1)
    refused = render_job(job(tmp_path, audio, examples / "presenter.jpg"), RenderConfig(), tmp_path / "cache",
                         warp_service)  # fmt: skip
    assert (refused.status, refused.error_kind, refused.error_step) == ("failed", "silent_audio", "audio")
    assert refused.error.startswith(f"row 1 (job 'j'): audio {audio} is silent: in its 1.0 s "), refused.error
    assert not (tmp_path / "out" / "j.mp4").exists() and not (tmp_path / "cache").exists()  # not analysed
    allowed = RenderConfig(limits=InputLimits(allow_silent_audio=True))
    rendered = render_job(job(tmp_path, audio, examples / "presenter.jpg"), allowed, tmp_path / "cache", warp_service)
    assert rendered.status == "ok" and rendered.frames == 25, rendered.error
    frames, _ = media.read_video(tmp_path / "out" / "j.mp4")
    assert np.abs(frames.astype(np.int16) - frames[0].astype(np.int16)).mean() < 1.0


def test_a_recording_whose_first_sound_track_is_silent_says_how_to_give_the_other(tmp_path, examples, warp_service):
    """Screen recorders keep the desktop's sound and the microphone's apart; the first track
    is the one read. Silent there, the row says the file has more and how to take one."""
    recording = tmp_path / "recording.mkv"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
                    "-i", str(examples / "lesson1.wav"), "-map", "0:a", "-map", "1:a", "-t", "2", "-c:a", "pcm_s16le",
                    str(recording)], check=True)  # fmt: skip
    assert media.audio_tracks(recording) == 2
    result = render_job(job(tmp_path, recording, examples / "presenter.jpg"), RenderConfig(), tmp_path / "cache",
                        warp_service)  # fmt: skip
    assert (result.error_kind, result.error_step) == ("silent_audio", "audio"), result.error
    assert "it holds 2 sound tracks and the first is the one read" in result.error
    assert f"ffmpeg -i {recording} -map 0:a:1 speech.wav" in result.error


def test_a_recording_whose_first_video_stream_shows_no_face_says_how_to_give_the_other(
    tmp_path, examples, warp_service
):
    """Lecture capture keeps the slides and the camera as two video streams of one file; the
    first is the one read. Without a face there, the row says the file has more and how to
    give another."""
    recording = tmp_path / "capture.mkv"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
                    "-i", str(examples / "presenter.mp4"), "-map", "0:v", "-map", "1:v", "-t", "2", "-c:v", "libx264",
                    str(recording)], check=True)  # fmt: skip
    assert media.probe_video(recording).video_streams == 2
    assert media.probe_video(examples / "presenter.mp4").video_streams == 1
    result = render_job(job(tmp_path, examples / "lesson1.wav", recording), RenderConfig(), tmp_path / "cache",
                        warp_service)  # fmt: skip
    assert (result.error_kind, result.error_step) == ("no_face", "analyze"), result.error
    assert "it holds 2 video streams and the first is the one read" in result.error
    assert f"ffmpeg -i {recording} -map 0:v:1 -c copy presenter.mp4 takes the second" in result.error


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_recording_whose_sound_starts_late_keeps_the_mouth_on_the_speech_and_all_of_it(
    tmp_path, examples, warp_service, container
):
    """A recording given as the audio whose sound track starts 1 s after its picture (a
    camera's or an editor's export): a player plays a second of silence, then the speech.
    The video does too, with the mouth on the speech and the speech's end kept; before,
    the mouth ran a second ahead of the sound and the speech's last second was cut."""
    recording = tmp_path / f"recording.{container}"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "1", "-i", str(examples / "presenter.mp4"),
                    "-itsoffset", "1.0", "-i", str(examples / "lesson1.wav"), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                    "-c:a", "aac", str(recording)], check=True)  # fmt: skip
    speech = len(media.load_audio(examples / "lesson1.wav")) / 16000
    result = render_job(job(tmp_path, recording, examples / "presenter.jpg"), RenderConfig(), tmp_path / "cache",
                        warp_service)  # fmt: skip
    assert result.status == "ok", result.error
    assert abs(result.audio_seconds - (speech + 1.0)) < 0.1, result.audio_seconds
    with av.open(str(result.output)) as out:
        (stream,) = out.streams.audio
        assert float(stream.start_time * stream.time_base) == pytest.approx(0, abs=0.03)  # no gap left to the player
        heard = np.concatenate([f.to_ndarray().mean(axis=0) for f in out.decode(stream)])
        rate = stream.sample_rate
    frames, _ = media.read_video(Path(result.output))
    hop = rate // FPS
    energy = np.sqrt(np.array([np.mean(heard[i * hop : (i + 1) * hop] ** 2) for i in range(len(frames))]))
    assert not (energy[:20] > 1e-3).any()  # the first second is silent (it was the speech's start)
    assert (energy[-25:] > 1e-3).any()  # and the speech's last second is there
    x0, y0, x1, y1 = result.mouth_box
    change = np.abs(frames[:, y0:y1, x0:x1].astype(np.int16) - frames[0, y0:y1, x0:x1]).mean(axis=(1, 2, 3))

    def corr(lag):
        a, b = (change[lag:], energy[: len(energy) - lag]) if lag >= 0 else (change[:lag], energy[-lag:])
        return np.corrcoef(a, b)[0, 1]

    lags = {lag: corr(lag) for lag in range(-30, 31)}
    assert abs(max(lags, key=lags.get)) <= 1 and corr(0) > 0.6, {k: round(v, 2) for k, v in lags.items() if v > 0.4}


def _marked_reference(photo: Path, out: Path, frames: int) -> Path:
    """The photo, 384×384, with frame k's top strip showing a bar at a k-dependent place."""
    still = cv2.resize(cv2.imread(str(photo)), (384, 384), interpolation=cv2.INTER_AREA)
    cmd = [
        media.ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", "384x384",
        "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(out),
    ]
    data = bytearray()
    for k in range(frames):
        f = still.copy()
        f[:24] = 30
        f[:24, 12 + 14 * k : 24 + 14 * k] = 230
        data += f.tobytes()
    subprocess.run(cmd, input=bytes(data), check=True)
    return out


def test_wav2lip_pack_renders_with_a_checkpoint_in_the_public_format(tmp_path, examples):
    ckpt = write_random_checkpoint(tmp_path / "wav2lip_gan.pth", seed=3, module_prefix=True)
    cfg = RenderConfig(pack="wav2lip", checkpoint=ckpt, chunk_frames=16, batch_size=16, backend="pytorch")
    service = InProcessService(ModelWorker(cfg, engines_dir=tmp_path / "engines"))
    audio = tmp_path / "a.wav"
    make_excerpt(examples / "lesson1.wav", audio, seconds=1.5)
    result = render_job(job(tmp_path, audio, examples / "presenter.jpg"), cfg, tmp_path / "cache", service)
    assert result.status == "ok", result.error
    frames, fps = media.read_video(Path(result.output))
    assert len(frames) == round(1.5 * FPS) and frames.shape[1:] == (480, 480, 3)
    template, _ = analyze(examples / "presenter.jpg", get_pack("wav2lip").geometry, cfg.detector, tmp_path / "cache")
    x0, y0, x1, y1 = template.boxes[0]
    still = next(template.read_frames(np.array([0])))
    # Random weights redraw the face box; everything well outside it stays the photo.
    assert np.abs(frames[:, y0:y1, x0:x1].astype(np.int16) - still[y0:y1, x0:x1]).mean() > 10
    assert np.abs(frames[:, :, : max(x0 - 8, 1)].astype(np.int16) - still[:, : max(x0 - 8, 1)]).mean() < 3


def test_onnxruntime_and_pytorch_render_the_same_video(tmp_path, examples, rendered, cache):
    result_pt, frames_pt, _, _ = rendered
    service = InProcessService(ModelWorker(RenderConfig(backend="onnxruntime"), engines_dir=tmp_path / "engines"))
    assert service.worker.info.backend == "onnxruntime"
    assert service.worker.info.engine_key.startswith("warp/render/onnxruntime-")
    result = render_job(
        job(tmp_path, examples / "lesson1.wav", examples / "presenter.mp4"), RenderConfig(chunk_frames=48),
        cache, service,  # the template the PyTorch render used
    )
    assert result.status == "ok" and result.backend == "onnxruntime" and result.template_cached
    assert result.engine_key == service.worker.info.engine_key
    frames, _ = media.read_video(Path(result.output))
    assert frames.shape == frames_pt.shape
    assert np.abs(frames.astype(np.int16) - frames_pt.astype(np.int16)).mean() <= 1.0


class _Held:
    """A chunk rendered only when the job asks for it, so the test sees how many the job
    keeps in flight at once."""

    def __init__(self, service: _CountingService, features: np.ndarray, crops: np.ndarray, restore):
        self.service, self.args = service, (features, crops, restore)
        service.outstanding += 1
        service.most = max(service.most, service.outstanding)

    def result(self):
        self.service.outstanding -= 1
        return self.service.worker.run_chunk(*self.args)


class _CountingService(InProcessService):
    def __init__(self, worker: ModelWorker, workers: int):
        super().__init__(worker)
        self.workers, self.outstanding, self.most = workers, 0, 0

    def submit(self, features, crops, restore=None):
        return _Held(self, features, crops, restore)


@pytest.mark.parametrize(("workers", "in_flight"), [(1, 3), (6, 7)])
def test_a_long_job_keeps_a_chunk_in_flight_for_every_worker(tmp_path, examples, warp_service, workers, in_flight):
    """One long video spreads over all workers: a job keeps one chunk per worker rendering
    (at least two) besides the one it composes, however many chunks the video has."""
    service = _CountingService(warp_service.worker, workers)
    cfg = RenderConfig(chunk_frames=8)  # lesson1: 175 frames, 22 chunks
    result = render_job(job(tmp_path, examples / "lesson1.wav", examples / "presenter.jpg"), cfg, tmp_path / "c", service)
    assert result.status == "ok", result.error
    assert service.most == in_flight and service.outstanding == 0


_HOLD_SCRATCH = """
import os, signal, sys
from heygem_ray.job.scratch import job_scratch
with job_scratch() as scratch:
    (scratch / "audio.f32").write_bytes(bytes(4096))
    print(scratch, flush=True)
    if sys.argv[1] == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a lost node does: no clean-up
    sys.stdin.read()
"""


def _can_unshare_pids() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0


def test_the_next_job_deletes_the_scratch_folders_of_killed_processes_only(tmp_path, monkeypatch) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    killed = subprocess.run([sys.executable, "-c", _HOLD_SCRATCH, "die"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = Path(killed.stdout.strip())
    assert left.parent == tmp_path and (left / "audio.f32").is_file()
    living = subprocess.Popen([sys.executable, "-c", _HOLD_SCRATCH, "wait"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        held = Path(living.stdout.readline().strip())
        # another host's folder with the dead process's id, as in a temporary directory
        # shared between containers
        dead = left.name.removeprefix("heygem-job-").partition("@")[0]
        elsewhere = tmp_path / f"heygem-job-{dead}@not-{socket.gethostname()}-x"
        elsewhere.mkdir()
        # a live job in a container of this host with a pid namespace of its own (its pid is 1
        # there, a pid that is not this namespace's job's)
        if not _can_unshare_pids():
            pytest.skip("unshare --pid is not permitted here (the test needs root): no second pid namespace")
        apart = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _HOLD_SCRATCH,
                                  "wait"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        beside = Path(apart.stdout.readline().strip())  # (its own sweep, before, deleted ``held``)
        assert beside.name.startswith("heygem-job-1@") and (beside / "audio.f32").is_file()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        with scratch.job_scratch() as mine:
            assert mine.parent == tmp_path and mine.is_dir()
            assert not left.exists()  # its process is gone
            assert (held / "audio.f32").is_file() and elsewhere.is_dir()  # alive; not this host's
            assert (beside / "audio.f32").is_file()  # alive in its own namespace
        assert not mine.exists()
        apart.communicate("", timeout=60)
    finally:
        living.communicate("", timeout=60)
    assert not held.exists()  # its own, on the way out


def test_a_full_temporary_directory_names_the_jobs_scratch_folder_and_tmpdir(tmp_path, examples, warp_service,
                                                                              mount, monkeypatch):  # fmt: skip
    """The audit of 2026-12-08: '…/heygem-job-12626@…: no space left on device; … choose a
    folder on another one' named a folder gone with the job, and no way to choose one."""
    disk = mount("tmp", size="64k")
    monkeypatch.setattr(tempfile, "tempdir", str(disk))
    result = render_job(job(tmp_path, examples / "lesson1.wav", examples / "presenter.jpg"), RenderConfig(),
                        tmp_path / "cache", warp_service)  # fmt: skip
    assert result.status == "failed" and result.error_kind == "storage", result.error
    assert f"this job's scratch folder {disk}/heygem-job-" in result.error
    assert ": no space left on device; free space there, or give the jobs another temporary directory on a larger " \
           "disk: TMPDIR set where Ray starts" in result.error  # fmt: skip
    assert not list(disk.iterdir())
