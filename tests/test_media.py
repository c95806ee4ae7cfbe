"""Media I/O through the real ffmpeg, on tiny files made in each test."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from heygem_ray import media, storage
from heygem_ray.errors import EngineError, InputError, InternalError
from heygem_ray.media import decode, decoders, encoders, video_probe, yuv
from heygem_ray.media import ffmpeg as ffmpeg_module
from tests.helpers.bgr import from_bgr_frame
from tests.helpers.media import (
    HANG_MARK,
    children,
    hanging_ffmpeg,
    make_anamorphic,
    make_channels,
    make_corrupt,
    make_empty_wav,
    make_exif_jpeg,
    make_gif,
    make_hdr,
    make_heic,
    make_image,
    make_interlaced,
    make_silence,
    make_stereo,
    make_tone,
    make_truncated_mp4,
    make_vfr_video,
    make_video,
    sleepers,
)

NTSC = Fraction(30000, 1001)


def _ffmpeg(*args: str) -> None:
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], check=True)


def _cut(path: Path, fraction: float) -> Path:
    """Keep the first ``fraction`` of the file's bytes, as a copy or recording cut short does."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if probe_video counts frames by decoding."""

    def decoded(*args: object) -> int:
        raise AssertionError(f"probe_video decoded {args} to count its frames")

    monkeypatch.setattr(video_probe, "_decoded_frames", decoded)


def _frames(info: media.VideoInfo) -> list[np.ndarray]:
    frames = list(media.iter_frames(info))
    assert all(f.shape == (info.height, info.width, 3) and f.dtype == np.uint8 for f in frames)
    return frames


# --------------------------------------------------------------------------- video probing


def test_ntsc_clip_rate_and_exact_frame_count(tmp_path: Path) -> None:
    # 1 s of 29.97 with a 1.0 s audio track: the container says 1.00 s, the video holds 30 frames.
    clip = make_video(tmp_path / "ntsc.mp4", seconds=1.0, fps="30000/1001", size=(160, 120), audio=True)
    info = media.probe_video(clip)
    assert info.fps == NTSC
    assert (info.width, info.height, info.source_width, info.source_height) == (160, 120, 160, 120)
    assert info.rotation == 0 and not info.is_image
    assert info.frames == len(_frames(info)) == 30
    assert info.duration == pytest.approx(30 / float(NTSC))


@pytest.mark.parametrize("fps", [25, 24, "24000/1001", 20])
def test_constant_rates_round_trip(tmp_path: Path, fps: int | str) -> None:
    clip = make_video(tmp_path / "c.mp4", seconds=0.8, fps=fps)
    info = media.probe_video(clip)
    assert info.fps == Fraction(fps)
    assert info.frames == len(_frames(info))
    assert abs(info.frames - 0.8 * float(info.fps)) <= 1


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied(tmp_path: Path, rotation: int) -> None:
    upright = make_video(tmp_path / "upright.mp4", seconds=0.4, size=(64, 48))
    turned = make_video(tmp_path / "turned.mp4", seconds=0.4, size=(64, 48), rotation=rotation)
    info = media.probe_video(turned)
    assert info.rotation == rotation
    assert (info.source_width, info.source_height) == (64, 48)
    assert (info.width, info.height) == ((48, 64) if rotation % 180 else (64, 48))
    frames = _frames(info)
    assert len(frames) == info.frames == media.probe_video(upright).frames
    # Same encoded pictures (a stream copy): the rotated frame is the upright one turned clockwise.
    expected = np.rot90(next(media.iter_frames(media.probe_video(upright))), k=-rotation // 90)
    assert np.abs(frames[0].astype(np.int16) - expected).mean() < 3


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_variable_frame_rate_becomes_constant(tmp_path: Path, ext: str) -> None:
    clip = make_vfr_video(tmp_path / f"vfr.{ext}", rates=(15, 30), seconds_each=1.0)
    info = media.probe_video(clip)
    assert info.fps == 30  # the nominal rate: no motion of the 30 fps part is dropped
    frames = _frames(info)
    assert len(frames) == info.frames
    assert abs(info.frames - 2.0 * 30) <= 1
    assert info.duration == pytest.approx(2.0, abs=1 / 30)


@pytest.mark.parametrize("rate", ["constant", "variable"])
def test_a_take_longer_than_max_seconds_is_read_as_its_first_seconds(tmp_path: Path, rate: str) -> None:
    """``max_seconds`` keeps a take's first seconds: the probe counts them (a variable-rate
    file is decoded that far to count them), and iter_frames yields those frames, the ones
    the whole take begins with; a take no longer than that, and a photo, are read whole."""
    if rate == "constant":
        clip = make_video(tmp_path / "take.mp4", seconds=3.0, fps=25, size=(64, 48))
    else:
        clip = make_vfr_video(tmp_path / "take.mp4", rates=(15, 30), seconds_each=1.5)
    whole = media.probe_video(clip)
    info = media.probe_video(clip, max_seconds=1.3)
    assert info.cut and not whole.cut and info.fps == whole.fps
    assert info.frames == int(1.3 * whole.fps) < whole.frames
    assert info.duration == pytest.approx(info.frames / float(info.fps))
    for pixel_format in ("bgr24", "yuv420p"):
        first = np.stack(list(media.iter_frames(info, pixel_format=pixel_format)))
        all_of_it = np.stack(list(media.iter_frames(whole, pixel_format=pixel_format)))
        assert len(first) == info.frames and np.array_equal(first, all_of_it[: info.frames])
    for seconds in (0.0, whole.duration, 60.0):
        same = media.probe_video(clip, max_seconds=seconds)
        assert (same.frames, same.cut) == (whole.frames, False)
    photo = media.probe_video(make_image(tmp_path / "photo.png"), max_seconds=1.0)
    assert (photo.frames, photo.cut) == (1, False)


@pytest.mark.parametrize("rate", ["constant", "variable"])
def test_a_take_read_from_start_seconds_is_its_frames_from_the_one_on_show_then(tmp_path: Path, rate: str) -> None:
    """``start_seconds`` drops a take's opening: the probe counts the frames from the one on
    show at that time (a variable-rate file by decoding), iter_frames yields exactly the
    whole take's frames from there, and a cut (``max_seconds``) counts from it. A take that
    ends before the start is ``too_short``, saying how long it lasts where that is known;
    a photo is read whole."""
    if rate == "constant":
        clip = make_video(tmp_path / "take.mp4", seconds=3.0, fps=25, size=(64, 48))
    else:
        clip = make_vfr_video(tmp_path / "take.mp4", rates=(15, 30), seconds_each=1.5)
    whole = media.probe_video(clip)
    skip = int(Fraction(6, 5) * whole.fps)
    for seconds, frames in ((0.0, whole.frames - skip), (0.5, int(0.5 * whole.fps))):
        info = media.probe_video(clip, start_seconds=1.2, max_seconds=seconds)
        assert (info.start, info.frames, info.cut, info.fps) == (skip, frames, seconds > 0, whole.fps)
        for pixel_format in ("bgr24", "yuv420p"):
            used = np.stack(list(media.iter_frames(info, pixel_format=pixel_format)))
            all_of_it = np.stack(list(media.iter_frames(whole, pixel_format=pixel_format)))
            assert len(used) == frames and np.array_equal(used, all_of_it[skip : skip + frames])
    with pytest.raises(InputError) as caught:
        media.probe_video(clip, start_seconds=whole.duration + 0.5)
    assert caught.value.kind == "too_short" and str(clip) in caught.value.message, caught.value.message
    assert "--reference-start" in caught.value.message
    if rate == "constant":
        assert f"it lasts {whole.duration:.1f} s" in caught.value.message
    photo = media.probe_video(make_image(tmp_path / "photo.png"), start_seconds=5.0)
    assert (photo.frames, photo.start) == (1, 0)


# Whether the take is read from a seek (``VideoInfo.seek``): where its container indexes
# its frames and their times are exact.
# An MP4 whose sync-sample table is gone says every frame is a keyframe: a seek lands on
# one that needs those before it, so it is not sought. An all-intra MOV (Motion JPEG) has no
# such table, and every frame is one indeed.
_SEEKS = {"a.mp4": True, "b.mov": True, "c.ts": False, "d.mkv": True, "fragmented.mp4": False, "interlaced": True,
          "no-sync-table.mp4": False, "intra.mov": True}  # fmt: skip


@pytest.mark.parametrize("name", list(_SEEKS))
def test_a_start_gives_the_whole_takes_frames_from_there_in_any_container(tmp_path: Path, name: str) -> None:
    """Whatever the container and its timestamps (an MP4 and a 29.97 fps MOV with sound, a
    Matroska file, a transport stream starting about 1.5 s in, its sound first, a
    fragmented MP4; an interlaced take, deinterlaced; an MP4 that lies about its keyframes,
    a Motion JPEG MOV), the frames read from a start are
    the whole take's from the frame on show then, and as many as the probe counts: read
    after a seek to a keyframe past the take's first (one every 10 frames here) where the
    container indexes its frames, else decoded from the beginning."""
    if name == "interlaced":
        clip, _ = make_interlaced(tmp_path, size=(160, 96), seconds=2.0)
    else:
        fps = "30000/1001" if name.endswith(".mov") else "25"
        source = tmp_path / name.replace("fragmented", "whole").replace("intra", "whole")
        clip = make_video(source, seconds=2.0, fps=fps, size=(64, 48), audio=True)
        if name.startswith("fragmented"):
            clip = _remuxed(clip, tmp_path / name, "-movflags", "frag_keyframe+empty_moov")
        elif name.startswith("no-sync-table"):
            data = clip.read_bytes()
            assert data.count(b"stss") == 1
            clip.write_bytes(data.replace(b"stss", b"free"))  # the box skipped as padding
        elif name.startswith("intra"):
            clip = _remuxed(clip, tmp_path / name, "-c:v", "mjpeg", "-q:v", "5")
            assert b"stss" not in clip.read_bytes()
    whole = media.probe_video(clip)
    info = media.probe_video(clip, start_seconds=1.64)
    skip = video_probe._frames_in(1.64, whole.fps)
    assert info.start == skip > 0 and info.frames == whole.frames - skip
    used, all_of_it = _frames(info), _frames(whole)
    assert len(used) == info.frames and np.array_equal(np.stack(used), np.stack(all_of_it[skip:]))
    assert info.seek_frames == (skip - video_probe.SEEK_LEAD if _SEEKS[name] else 0)


def _remuxed(clip: Path, out: Path, *options: str) -> Path:
    """``clip`` copied into ``out``'s container, with ffmpeg's ``options`` after ``-c copy``."""
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip), "-c", "copy", *options, str(out)],
                   check=True)  # fmt: skip
    return out


def test_seconds_are_counted_in_frames_as_written() -> None:
    """0.29 s at 100 fps is 29 frames (0.29 as a binary float, times 100, is just below)."""
    assert 0.29 * 100 < 29
    assert video_probe._frames_in(0.29, Fraction(100)) == 29
    assert video_probe._frames_in(2.0, Fraction(30000, 1001)) == 59  # the frame on show at 2 s
    assert video_probe._frames_in(1.3, Fraction(25)) == 32


@pytest.mark.parametrize(("name", "fps"), [("a.mp4", "25"), ("b.mov", "30000/1001"), ("c.mkv", "25"), ("d.ts", "25")])
def test_a_constant_rate_stream_is_counted_from_its_packets(tmp_path: Path, no_decoding: None, name: str, fps: str) -> None:
    clip = make_video(tmp_path / name, seconds=1.2, fps=fps, size=(64, 48), audio=True)
    info = media.probe_video(clip)
    assert info.fps == Fraction(fps)
    assert info.frames == len(_frames(info)) == round(1.2 * float(info.fps))


@pytest.mark.parametrize(("name", "fps", "rate", "held"),
                         [("slides.mp4", "1/2", 25, 50), ("screen.mkv", "5", 25, 5), ("webcam.mp4", "15", 30, 2)])
def test_a_take_slower_than_min_fps_is_read_with_each_frame_held(tmp_path: Path, no_decoding: None, name: str,
                                                                 fps: str, rate: int, held: int) -> None:  # fmt: skip
    """Slides at one frame every 2 s, a screen recording at 5 fps, a webcam at 15: each of
    the take's frames held the fewest whole times that reach 25 fps (counted from the
    packets), so the mouth moves 25 times a second or more and the take's own motion stays
    even; its own rate is kept. A start is read from the beginning (a seek would land slots
    before the frame wanted)."""
    clip = make_video(tmp_path / name, seconds=4.0, fps=fps, size=(64, 48))
    info = media.probe_video(clip)
    assert (info.fps, info.own_fps, info.frames) == (rate, Fraction(fps), 4 * rate)
    frames = _frames(info)
    assert len(frames) == 4 * rate and all(np.array_equal(f, frames[i - i % held]) for i, f in enumerate(frames))
    changes = [i for i in range(1, len(frames)) if not np.array_equal(frames[i], frames[i - 1])]
    assert changes and all(i % held == 0 for i in changes)  # (the test pattern's first frames may be alike)
    late = media.probe_video(clip, start_seconds=2.2)
    skip = int(2.2 * rate)
    assert (late.start, late.frames, late.seek_frames) == (skip, 4 * rate - skip, 0)
    assert all(np.array_equal(a, b) for a, b in zip(_frames(late), frames[skip:], strict=True))
    assert media.probe_video(make_video(tmp_path / "steady.mp4", seconds=1.0, fps=20)).own_fps is None


@pytest.mark.parametrize(("fps", "rate"), [("15", "30"), ("15/2", "30"), ("5", "25"), ("1/2", "25"), ("12", "36"),
                                           ("15000/1001", "30000/1001"), ("73/10", "25")])  # fmt: skip
def test_a_slow_takes_frames_are_held_whole_times_reaching_25_fps(fps: str, rate: str) -> None:
    """Whole repeats keep the take's motion even; a rate no camera writes (a variable-rate
    take's average) is read at 25."""
    assert video_probe.held_rate(Fraction(fps)) == Fraction(rate)


@pytest.mark.parametrize(("name", "fps", "max_fps", "kept"), [("phone.mp4", "60", 30, 2), ("ntsc.mov", "60000/1001", 30, 2),
                                                        ("slowmo.mp4", "120", 30, 4), ("pal.mp4", "50", 30, 2)])  # fmt: skip
def test_max_fps_keeps_every_kth_frame(tmp_path: Path, no_decoding: None, name: str, fps: str, max_fps: int,
                                       kept: int) -> None:  # fmt: skip
    """A phone's 60 fps, an NTSC 59.94, a 120-fps take and PAL's 50 under --max-fps 30:
    every 2nd (4th) frame kept, counted from the packets (an odd count rounds up, as ffmpeg
    keeps a last frame for half a slot); a start is read from the keyframe before it and
    gives the same frames."""
    clip = make_video(tmp_path / name, seconds=241 / 120, fps=fps, size=(64, 48))  # 241 frames at 120: 60.25 slots at 30
    whole = media.probe_video(clip)
    info = media.probe_video(clip, max_fps=max_fps)
    assert (info.fps, info.own_fps) == (Fraction(fps) / kept, Fraction(fps))
    assert info.frames == (2 * whole.frames + kept) // (2 * kept)
    # Of the frames nearest a slot's start (half a slot either side), ffmpeg's fps filter keeps the last.
    every, thinned = _frames(whole), _frames(info)
    assert len(thinned) == info.frames == len(every[(kept + 1) // 2 - 1 :: kept])
    assert all(np.array_equal(a, b) for a, b in zip(thinned, every[(kept + 1) // 2 - 1 :: kept], strict=True))
    late = media.probe_video(clip, max_fps=max_fps, start_seconds=1.5)
    assert late.seek_frames > 0 and late.frames == info.frames - late.start
    assert all(np.array_equal(a, b) for a, b in zip(_frames(late), thinned[late.start :], strict=True))


def test_max_fps_leaves_a_rate_it_cannot_divide_evenly(tmp_path: Path, no_decoding: None) -> None:
    """25 fps under --max-fps 24 would be 12.5 (under 20: the mouth would step): kept at 25;
    a take at or under the cap is its own."""
    clip = make_video(tmp_path / "pal.mp4", seconds=1.0, fps=25)
    assert (media.probe_video(clip, max_fps=24).fps, media.probe_video(clip, max_fps=24).own_fps) == (25, None)
    assert media.probe_video(clip, max_fps=30).own_fps is None


def test_a_rotated_phone_video_is_upright(tmp_path: Path, no_decoding: None) -> None:
    # A phone held upright stores landscape pictures plus a display matrix turning them 90°.
    phone = make_video(tmp_path / "IMG_0001.MOV", seconds=1.0, fps="30000/1001", size=(96, 64), rotation=90, audio=True)
    info = media.probe_video(phone)
    assert (info.source_width, info.source_height, info.rotation) == (96, 64, 90)
    assert (info.width, info.height) == (64, 96)  # portrait, as the phone showed it
    frames = _frames(info)
    assert len(frames) == info.frames == 30 and frames[0].shape == (96, 64, 3)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("timescale.mp4", ["-video_track_timescale", "1000"]),  # 1001/30000 s is no whole number of ms
        ("ntsc.mkv", []),  # Matroska keeps milliseconds too
    ],
)
def test_an_odd_time_base_is_counted_by_decoding(tmp_path: Path, name: str, options: list[str]) -> None:
    clip = tmp_path / name
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30000/1001:duration=1", "-c:v", "libx264", *options, str(clip))
    info = media.probe_video(clip)
    assert info.fps == NTSC
    assert info.frames == len(_frames(info)) == 30


def test_frames_an_edit_list_cuts_are_not_counted(tmp_path: Path) -> None:
    # A stream copy from 0.3 s keeps the frames back to the keyframe, marked for the decoder
    # to drop: the packets outnumber the frames shown.
    clip = make_video(tmp_path / "whole.mp4", seconds=2.0, size=(64, 48))  # a keyframe every 10 frames
    cut = tmp_path / "cut.mp4"
    _ffmpeg("-ss", "0.3", "-i", str(clip), "-c", "copy", str(cut))
    info = media.probe_video(cut)
    assert info.frames == len(_frames(info)) == 42  # those shown from 0.3 s on: (2.0 - 0.3) s at 25 fps


def test_a_header_that_lies_about_the_length_is_not_believed(tmp_path: Path) -> None:
    # Matroska writes its duration near the start; a copy cut in half still claims 2 s.
    clip = _cut(make_video(tmp_path / "cut.mkv", seconds=2.0, size=(64, 48), audio=True), 0.5)
    with av.open(str(clip)) as container:
        assert container.duration == pytest.approx(2_000_000, rel=0.05)  # µs
    info = media.probe_video(clip)
    assert info.frames == len(_frames(info)) < 35
    assert info.duration == info.frames / 25


def test_odd_size_is_cropped_to_even(tmp_path: Path) -> None:
    info = media.probe_video(make_video(tmp_path / "odd.mp4", seconds=0.4, size=(161, 121)))
    assert (info.source_width, info.source_height) == (161, 121)
    assert (info.width, info.height) == (160, 120)
    assert len(_frames(info)) == info.frames == 10


@pytest.mark.parametrize("name", ["still.png", "still.jpg", "odd.png"])
def test_still_image_is_one_frame(tmp_path: Path, name: str) -> None:
    size = (65, 49) if name.startswith("odd") else (64, 48)
    info = media.probe_video(make_image(tmp_path / name, size=size))
    assert info.is_image
    assert (info.frames, info.fps, info.duration, info.rotation) == (1, 25, 0.0, 0)
    assert (info.width, info.height) == (64, 48)
    frames = _frames(info)
    assert len(frames) == 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_photo_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    # Phones store portrait photos sideways plus an EXIF tag; OpenCV's imread honours it too.
    cv2 = pytest.importorskip("cv2")
    photo = make_exif_jpeg(tmp_path / "phone.jpg", orientation=orientation, size=(64, 48))
    info = media.probe_video(photo)
    upright = cv2.imread(str(photo))
    assert (info.height, info.width) == upright.shape[:2]
    (frame,) = _frames(info)
    assert np.abs(frame.astype(np.int16) - upright).mean() < 4


def test_animated_gif_is_a_video(tmp_path: Path) -> None:
    info = media.probe_video(make_gif(tmp_path / "wave.gif", seconds=1.0, fps=10))
    assert not info.is_image
    assert info.frames == len(_frames(info))
    assert info.duration == pytest.approx(1.0, abs=0.1)


def test_read_video_and_colour_order(tmp_path: Path) -> None:
    # testsrc2's first frame: compare with OpenCV's decoder, which also gives BGR.
    cv2 = pytest.importorskip("cv2")
    clip = make_video(tmp_path / "c.mp4", seconds=0.4, size=(96, 64))
    frames, fps = media.read_video(clip)
    assert frames.shape == (10, 64, 96, 3) and fps == 25
    ok, first = cv2.VideoCapture(str(clip)).read()
    assert ok
    assert np.abs(frames[0].astype(np.int16) - first).mean() < 4


def test_iter_frames_stopped_early_reaps_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    class Recording(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    info = media.probe_video(make_video(tmp_path / "c.mp4", seconds=2.0, size=(160, 120)))
    monkeypatch.setattr(subprocess, "Popen", Recording)
    frames = media.iter_frames(info)
    next(frames)
    frames.close()
    assert len(started) == 1 and started[0].returncode is not None


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize(
    ("name", "rate", "channels"),
    [("a.wav", 16000, 1), ("a.wav", 44100, 2), ("a.mp3", 44100, 1), ("a.m4a", 48000, 2), ("a.flac", 22050, 1)],
)
def test_audio_decodes_to_16k_mono(tmp_path: Path, name: str, rate: int, channels: int) -> None:
    audio = make_tone(tmp_path / name, seconds=1.5, freq=440, sample_rate=rate, channels=channels)
    info = media.probe_audio(audio)
    assert (info.sample_rate, info.channels) == (rate, channels)
    assert info.duration == pytest.approx(1.5, rel=0.01)
    wav = media.load_audio(audio)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == pytest.approx(1.5 * 16000, rel=0.01)
    # ffmpeg's sine has amplitude 1/8; a downmix that scaled channels would change it.
    assert np.abs(wav).max() == pytest.approx(0.125, rel=0.05)


@pytest.mark.parametrize(
    ("name", "layout", "freqs", "tolerance"),
    [
        ("stereo.flac", "stereo", (440, 660), 1e-3),
        ("stereo.m4a", "stereo", (440, 660), 0.02),  # AAC: lossy
        ("surround.flac", "5.1", (300, 500, 700, 900, 60, 1100), 1e-3),
        ("surround.wav", "5.1(side)", (300, 500, 700, 900, 60, 1100), 1e-3),
    ],
)
def test_every_channel_counts_once_in_the_mono_mix(
    tmp_path: Path, name: str, layout: str, freqs: tuple[int, ...], tolerance: float
) -> None:
    # A tone of its own in each channel: a channel count read wrong would interleave
    # samples of different channels and times, and no tone would survive.
    audio = make_channels(tmp_path / name, freqs=freqs, layout=layout, seconds=1.0)
    info = media.probe_audio(audio)
    assert (info.channels, info.layout, info.sample_rate) == (len(freqs), layout, 48000)
    wav = media.load_audio(audio)
    assert len(wav) == pytest.approx(16000, abs=10)
    t = np.arange(len(wav)) / 16000  # seconds
    expected = np.mean([np.sin(2 * np.pi * f * t) for f in freqs], axis=0) / 8  # ffmpeg's sine: amplitude 1/8
    np.testing.assert_allclose(wav[400:-400], expected[400:-400], atol=tolerance)  # resampler edges left out


def test_an_mp3_header_that_lies_about_the_length_is_not_believed(tmp_path: Path) -> None:
    # An MP3's Xing header gives the length of the whole; a copy cut to a quarter keeps it.
    # Its length is measured, and reading it to render says it was cut short.
    mp3 = _cut(make_tone(tmp_path / "talk.mp3", seconds=4.0, sample_rate=44100), 0.25)
    with av.open(str(mp3)) as container:
        assert container.duration == pytest.approx(4_000_000, rel=0.05)  # µs
    info = media.probe_audio(mp3)
    assert info.duration == pytest.approx(1.0, abs=0.1)
    err = _error(media.load_audio, mp3)
    assert err.kind == "unreadable_media" and "is truncated: it decodes to 1.0 s where its header declares 4.0 s" \
        in err.message, err.message  # fmt: skip


def test_audio_decoded_to_a_file_equals_the_audio_in_memory(tmp_path: Path) -> None:
    audio = make_tone(tmp_path / "a.mp3", seconds=1.5, freq=440, sample_rate=44100, channels=2)
    samples = media.decode_audio(audio, tmp_path / "a.f32")
    wav = media.load_audio(audio)
    assert samples == len(wav) == (tmp_path / "a.f32").stat().st_size // 4
    np.testing.assert_array_equal(np.fromfile(tmp_path / "a.f32", dtype="<f4"), wav)


def _float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 3, 1, rate, min(rate * 4, 2**32 - 1), 4, 32)  # IEEE float, mono, 32-bit
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data"
                     + struct.pack("<I", len(data)) + data)  # fmt: skip
    return path


@pytest.mark.parametrize(("value", "said"), [(math.nan, "nan"), (math.inf, "inf"), (1e9, "1e+09")])
def test_a_float_wav_whose_samples_are_no_sound_is_unreadable_media_at_once(tmp_path: Path, value: float,
                                                                          said: str) -> None:  # fmt: skip
    """A NaN made the speech 'silent' (its loudness never counted), an infinity failed the
    job's encode after its whole render, telling to check that the audio plays; samples of
    a billion held the MP4's AAC encoder for ever."""
    speech = (np.sin(np.arange(32000) * 0.2) * 0.5).astype(np.float32)
    speech[20000] = value
    wav = _float_wav(tmp_path / "broken.wav", speech)
    with pytest.raises(InputError) as err:
        media.decode_audio(wav, tmp_path / "a.f32")
    assert err.value.kind == "unreadable_media"
    assert err.value.message.startswith(f"audio {wav} holds a sample of {said} at 0:00:01: ")
    assert "re-export it, as 16-bit PCM WAV for instance" in err.value.message
    loud = speech.copy()
    loud[20000] = 4.0  # past full scale, as float exports may be: sound, clipped
    assert media.decode_audio(_float_wav(tmp_path / "loud.wav", loud), tmp_path / "b.f32") == 32000


def test_a_wav_declaring_an_impossible_sample_rate_is_unreadable_media_not_out_of_memory(tmp_path: Path) -> None:
    """Resampling from 2³¹ Hz asked for memory no node has: the row said out_of_memory, and
    advised fewer jobs and a smaller resolution."""
    wav = _float_wav(tmp_path / "rate.wav", np.zeros(16000, np.float32), rate=2**31 - 1)
    with pytest.raises(InputError) as err:
        media.decode_audio(wav, tmp_path / "a.f32")
    assert (err.value.kind, err.value.message) == ("unreadable_media", f"audio {wav} declares a sample rate of "
            "2147483647 Hz, which no recording has (its header is damaged); re-export it (e.g. as WAV or MP3)")


def test_audio_decoded_onto_a_full_disk_is_a_storage_error_naming_it(tmp_path: Path, mount) -> None:
    """A node's full scratch disk: numpy's tofile said "requested and written" with no errno,
    and every row that node ran failed as an internal error (a bug to report)."""
    audio = make_tone(tmp_path / "a.wav", seconds=3.0, freq=440)  # 192 kB decoded
    scratch = mount("scratch", size="64k")
    with pytest.raises(InputError) as err:
        media.decode_audio(audio, scratch / "a.f32")
    assert err.value.kind == "storage"
    assert err.value.message.startswith(f"{scratch}") and "no space left on device; free space" in err.value.message


def test_audio_track_of_a_video(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "talk.mp4", seconds=1.2, size=(64, 48), audio=True)
    assert media.probe_audio(clip).duration == pytest.approx(1.2, rel=0.01)
    assert len(media.load_audio(clip, sample_rate=8000)) == pytest.approx(1.2 * 8000, rel=0.01)


def test_stereo_is_averaged(tmp_path: Path) -> None:
    wav = media.load_audio(make_stereo(tmp_path / "lr.wav", seconds=0.5, left=0.5, right=-0.1))
    assert len(wav) == 8000
    np.testing.assert_allclose(wav[100:-100], 0.2, atol=1e-3)


@pytest.mark.parametrize("right", [-1.0, -0.95])
def test_channels_that_cancel_in_the_mix_are_read_from_the_loudest(tmp_path: Path, examples: Path, right: float) -> None:
    """A microphone wired with one channel's polarity reversed: loud in stereo, silence
    when summed. The speech is read from its loudest channel (before: a silent mix, and
    the row failed ``silent_audio``, "check that it is the lesson's audio")."""
    wired = tmp_path / "wired.wav"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(examples / "lesson1.wav"), "-af",
                    f"pan=stereo|c0=c0|c1={right}*c0", "-c:a", "pcm_f32le", str(wired)], check=True)  # fmt: skip
    speech = media.load_audio(examples / "lesson1.wav")
    np.testing.assert_allclose(media.load_audio(wired), speech, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_silence_is_valid(tmp_path: Path, channels: int) -> None:
    audio = make_silence(tmp_path / "quiet.wav", seconds=0.7, sample_rate=22050, channels=channels)
    assert media.probe_audio(audio).channels == channels
    wav = media.load_audio(audio)
    assert len(wav) == pytest.approx(0.7 * 16000, abs=2)
    assert not wav.any()


# --------------------------------------------------------------------------- choosing the rate


@pytest.mark.parametrize(
    ("avg", "nominal", "chosen"),
    [
        (NTSC, NTSC, NTSC),  # constant rate
        (Fraction(25, 2), Fraction(25, 2), Fraction(25, 2)),
        (Fraction("29.81"), Fraction(30), NTSC),  # a phone's variable rate, snapped
        (Fraction("21.77"), Fraction(30), Fraction(30)),  # mixed 15/30 fps: the nominal rate
        (Fraction(2997, 100), NTSC, NTSC),  # an average a rounded duration made inexact
        (None, Fraction(30), Fraction(30)),  # Matroska without a default duration has no average
        (Fraction(25), Fraction(50), Fraction(25)),  # interlaced: the nominal rate is the field rate
        (None, Fraction(1000), Fraction(25)),  # nothing plausible
    ],
)
def test_choose_fps(avg: Fraction | None, nominal: Fraction | None, chosen: Fraction) -> None:
    assert video_probe._choose_fps(avg, nominal) == chosen


# --------------------------------------------------------------------------- errors


def _error(call, path: Path) -> InputError:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as caught:
        call(path)
    assert str(path) in caught.value.message  # every message names the file
    return caught.value


READERS = [media.probe_video, media.probe_audio, media.load_audio]


@pytest.mark.parametrize("read", READERS)
def test_missing_file(tmp_path: Path, read) -> None:  # type: ignore[no-untyped-def]
    assert _error(read, tmp_path / "nope.mp4").kind == "missing_file"
    err = _error(read, tmp_path)  # a directory
    assert err.kind == "missing_file" and "directory" in err.message


@pytest.mark.parametrize("read", READERS)
def test_a_pipe_or_a_device_is_refused_at_once_not_read(tmp_path: Path, read) -> None:  # type: ignore[no-untyped-def]
    """A manifest may name a FIFO (reading it would wait for a writer forever) or a device
    (/dev/zero never ends): each is refused before it is opened, saying what it is."""
    fifo = tmp_path / "lesson.wav"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        err = _error(read, path)
        assert err.kind == "missing_file" and "is not a regular file (a pipe, a device or a socket)" in err.message


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("maker", [make_corrupt, make_truncated_mp4])
def test_unreadable_media(tmp_path: Path, read, maker) -> None:  # type: ignore[no-untyped-def]
    bad = maker(tmp_path / "bad.mp4")
    assert _error(read, bad).kind == "unreadable_media"


def test_a_reference_removed_after_its_probe_is_gone_not_unreadable(tmp_path: Path) -> None:
    """An operator's cleanup moves the take away between its probe and its decode: the row
    says the file went away and to put it back, not that the take does not decode."""
    clip = _written(tmp_path / "talk.mp4", frames=10)
    info = media.probe_video(clip)
    clip.rename(tmp_path / "elsewhere.mp4")
    with pytest.raises(InputError) as raised:
        list(media.iter_frames(info, pixel_format="yuv420p"))
    assert raised.value.kind == "missing_file", raised.value.message
    assert raised.value.message.startswith(f"reference {clip} is gone: it was moved or deleted while the job read it (")
    assert raised.value.message.endswith("put it back, then run the same manifest again")


@pytest.mark.parametrize("read", [*READERS, media.indexed_frames])
@pytest.mark.parametrize("keep", [0.5, 0.9999])  # of the bytes: half, or all but the last few
def test_an_mp4_cut_short_is_truncated(tmp_path: Path, read, keep: float) -> None:  # type: ignore[no-untyped-def]
    # +faststart puts the index first: a copy cut short keeps it whole, listing samples it lacks.
    clip = _written(tmp_path / "talk.mp4", frames=50)
    assert media.indexed_frames(clip) == 50
    err = _error(read, _cut(clip, keep))
    assert err.kind == "unreadable_media" and "truncated" in err.message


@pytest.mark.parametrize("name", ["lesson.wav", "lesson.mp3"])
def test_audio_cut_short_is_truncated_where_its_header_declares_its_length(tmp_path: Path, name: str) -> None:
    """A lesson's WAV or MP3 whose copy stopped 40 % of the way rendered a 40 % video,
    `ok`, with no word (found by an audit): each declares its length (the WAV's data chunk
    its bytes, the MP3's Xing frame its frames), so the cut is found and said."""
    whole = make_tone(tmp_path / name, seconds=6.0)
    assert len(media.load_audio(whole)) == 6 * 16000
    cut = _cut(whole, 0.4)
    err = _error(media.load_audio, cut)
    assert err.kind == "unreadable_media", err.message
    assert re.fullmatch(rf"audio {re.escape(str(cut))} is truncated: it decodes to [12]\.[0-9] s where its header "
                        r"declares 6\.0 s \(a copy or download that stopped early\); copy or export it again in full",
                        err.message), err.message  # fmt: skip


def test_audio_whose_header_cannot_know_its_length_is_not_taken_for_cut_short(tmp_path: Path) -> None:
    """What a pipe is given: FFmpeg's WAV (sizes 0xFFFFFFFF) and MP3 (no Xing frame) on
    stdout, espeak-ng's WAV on stdout (0x7FFFF000); and an MP3 without a Xing frame cut
    short, whose length FFmpeg guesses from its size. All decode whole, as they are."""
    tone = make_tone(tmp_path / "tone.wav", seconds=3.0)
    for fmt, codec in (("wav", "pcm_s16le"), ("mp3", "libmp3lame")):
        out = tmp_path / f"piped.{fmt}"
        with open(out, "wb") as f:
            subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(tone), "-c:a", codec, "-f", fmt, "-"],
                           stdout=f, check=True)  # fmt: skip
        assert abs(len(media.load_audio(out)) / 16000 - 3.0) < 0.1, fmt
    spoken = tmp_path / "espeak.wav"
    with open(spoken, "wb") as f:
        subprocess.run(["espeak-ng", "--stdout", "water falls as rain"], stdout=f, check=True)
    assert spoken.read_bytes()[40:44] == (0x7FFFF000).to_bytes(4, "little")  # its data chunk's size
    assert len(media.load_audio(spoken)) > 16000 // 2
    no_xing = tmp_path / "no-xing.mp3"
    _ffmpeg("-i", str(tone), "-c:a", "libmp3lame", "-write_xing", "0", str(no_xing))
    assert abs(len(media.load_audio(_cut(no_xing, 0.5))) / 16000 - 1.5) < 0.2
    # A FLAC cut with -c copy keeps the whole's STREAMINFO (found by a review): read as it is.
    flac, trimmed = make_tone(tmp_path / "whole.flac", seconds=3.0), tmp_path / "first.flac"
    _ffmpeg("-i", str(flac), "-t", "1", "-c", "copy", str(trimmed))
    assert abs(len(media.load_audio(trimmed)) / 16000 - 1.0) < 0.1
    # A WAV whose fmt chunk's byte rate is wrong (some writers put a nominal one): its bytes
    # are all there, and it is read whole.
    pcm = tone.read_bytes()
    at = pcm.index(b"fmt ") + 16  # the byte rate, after the chunk's size, format, channels and rate
    nominal = tmp_path / "nominal.wav"
    nominal.write_bytes(pcm[:at] + (16000).to_bytes(4, "little") + pcm[at + 4 :])  # half of 16-bit mono's
    assert abs(len(media.load_audio(nominal)) / 16000 - 3.0) < 0.1


@pytest.mark.parametrize(("content", "said"), [
    (b"", "is an empty file (0 bytes): copy or export it again"),
    (b"this is just a note about the lesson\n", "is text, not media (it begins 'this is just a note about the "
     "lesson'): give the audio or video file itself"),
    (b"<!DOCTYPE html><html><body>Sign in to download</body></html>", "is a web page (HTML), not media: the download "
     "link answered with a page; download the file itself"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n", "is a Git LFS pointer, not media: fetch "
     "the file itself ('git lfs pull' in its clone)"),
])  # fmt: skip
def test_a_reference_that_is_no_media_says_what_it_is(tmp_path: Path, content: bytes, said: str) -> None:
    """An empty take, or a note, a sign-in page or an LFS pointer saved as `talk.mp4`, got
    FFmpeg's "Invalid data found when processing input" (found by an audit)."""
    clip = tmp_path / "talk.mp4"
    clip.write_bytes(content)
    err = _error(media.probe_video, clip)
    assert (err.kind, err.message) == ("unreadable_media", f"reference {clip} {said}")


@pytest.mark.parametrize("read", [media.probe_audio, media.load_audio])
def test_no_audio_stream(tmp_path: Path, read) -> None:  # type: ignore[no-untyped-def]
    mute = make_video(tmp_path / "mute.mp4", seconds=0.4)
    assert _error(read, mute).kind == "no_audio_stream"
    assert _error(read, make_image(tmp_path / "face.png")).kind == "no_audio_stream"


@pytest.mark.parametrize("read", [media.probe_audio, media.load_audio])
def test_empty_audio(tmp_path: Path, read) -> None:  # type: ignore[no-untyped-def]
    assert _error(read, make_empty_wav(tmp_path / "header_only.wav")).kind == "empty_audio"
    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    assert _error(read, zero).kind == "empty_audio"


def test_no_video_stream(tmp_path: Path, examples: Path) -> None:
    err = _error(media.probe_video, make_tone(tmp_path / "voice.wav", seconds=0.5))
    assert err.kind == "no_video_stream" and "audio" in err.message
    # An MP3 with album art: its picture is no video (it said 'has no video stream (it holds: audio, video)')
    song = tmp_path / "song.mp3"
    _ffmpeg("-i", str(tmp_path / "voice.wav"), "-i", str(examples / "presenter.jpg"), "-map", "0", "-map", "1",
            "-c:a", "libmp3lame", "-c:v", "copy", "-disposition:v", "attached_pic", str(song))  # fmt: skip
    err = _error(media.probe_video, song)
    assert err.kind == "no_video_stream"
    assert f"{song} has no video stream (it holds: a cover picture, audio); give a video" in err.message


def test_ffmpeg_exe_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = media.ffmpeg_exe()
    try:
        media.ffmpeg_exe.cache_clear()
        monkeypatch.setenv("HEYGEM_FFMPEG", real)
        assert media.ffmpeg_exe() == real
        media.ffmpeg_exe.cache_clear()
        monkeypatch.setenv("HEYGEM_FFMPEG", str(tmp_path / "no-ffmpeg"))
        with pytest.raises(InputError, match="HEYGEM_FFMPEG"):
            media.ffmpeg_exe()
    finally:
        media.ffmpeg_exe.cache_clear()


# --------------------------------------------------------------------------- writing


def _top_level_boxes(path: Path) -> dict[str, int]:
    """Byte offset of each top-level MP4 box (first occurrence)."""
    data, pos = path.read_bytes(), 0
    offsets: dict[str, int] = {}
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        offsets.setdefault(kind.decode("latin-1"), pos)
        pos += size
    return offsets


def _pattern(n: int, height: int, width: int) -> np.ndarray:
    """(n, H, W, 3) uint8 BGR: flat blue frames brightening over time, with a moving bar."""
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[..., 0] = 200  # blue
    frames[..., 2] = np.linspace(0, 120, n, dtype=np.uint8)[:, None, None]  # red ramps up
    for i in range(n):
        frames[i, :, (i * 4) % width : (i * 4) % width + 8] = 255
    return frames


def _written(path: Path, frames: int, fps: Fraction = Fraction(25)) -> Path:
    """An MP4 as the pipeline writes it: ``frames`` frames at ``fps`` and a tone as long."""
    duration = frames / float(fps)
    audio = make_tone(path.with_suffix(".wav"), seconds=duration, sample_rate=44100)
    with media.VideoWriter(path, width=64, height=48, fps=fps, audio=audio, duration=duration) as writer:
        writer.write(_pattern(frames, 48, 64))
    return path


@pytest.mark.parametrize(("fps", "audio_s"), [(Fraction(25), 1.5), (NTSC, 0.5)])
def test_writer_round_trip(tmp_path: Path, fps: Fraction, audio_s: float) -> None:
    n = 30
    duration = n / float(fps)  # 1.2 s / 1.001 s: the audio is cut, or padded with silence
    audio = make_tone(tmp_path / "voice.wav", seconds=audio_s, sample_rate=44100)
    out = tmp_path / "sub" / "out.mp4"
    frames = _pattern(n, 48, 64)
    with media.VideoWriter(out, width=64, height=48, fps=fps, audio=audio, duration=duration) as writer:
        writer.write(frames[:10])  # a batch
        for frame in frames[10:]:
            writer.write(frame)  # single frames
    info = media.probe_video(out)
    assert (info.width, info.height, info.fps, info.frames) == (64, 48, fps, n)
    assert media.indexed_frames(out) == n  # what a rerun checks
    decoded, _ = media.read_video(out)
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 6  # colours and order survive
    sound = media.probe_audio(out)
    assert abs(sound.duration - duration) <= 1 / float(fps)
    boxes = _top_level_boxes(out)
    assert boxes["moov"] < boxes["mdat"]  # +faststart


def test_flat_colours_come_back_as_they_were_written(tmp_path: Path) -> None:
    """Greys, a skin tone, a saturated blue: written and read back within two levels (the
    reader's conversion truncates; with swscale's default flags on the writer too they came
    back up to 4 levels low, greys tinted blue)."""
    colours = [(128, 128, 128), (200, 200, 200), (150, 170, 210), (200, 60, 30), (16, 16, 16)]  # BGR
    frame = np.zeros((48, 160, 3), np.uint8)
    for i, bgr in enumerate(colours):
        frame[:, i * 32 : (i + 1) * 32] = bgr
    audio = make_tone(tmp_path / "a.wav", seconds=0.4)
    with media.VideoWriter(tmp_path / "o.mp4", width=160, height=48, fps=Fraction(25), audio=audio, duration=0.4) as w:
        w.write(np.repeat(frame[None], 10, axis=0))
    decoded, _ = media.read_video(tmp_path / "o.mp4")
    for i, bgr in enumerate(colours):
        got = decoded[5, 8:40, i * 32 + 8 : i * 32 + 24].reshape(-1, 3).astype(int)
        assert np.abs(got - bgr).max() <= 2, (bgr, got.mean(axis=0))


def _lossless(path: Path, frames: np.ndarray, pixel_format: Any = "yuv420p") -> Path:
    """``frames`` written as compose writes them, at CRF 0 (x264's lossless mode)."""
    width, height = (frames.shape[2], frames.shape[1]) if pixel_format == "bgr24" else yuv.size_of(frames[0])
    audio = make_tone(path.with_suffix(".wav"), seconds=len(frames) / 25)
    with media.VideoWriter(path, width=width, height=height, fps=Fraction(25), audio=audio, duration=len(frames) / 25,
                           crf=0, pixel_format=pixel_format) as w:  # fmt: skip
        w.write(frames)
    return path


def test_i420_frames_reach_the_file_and_come_back_byte_for_byte(tmp_path: Path) -> None:
    """An I420 frame goes through the writer's pipe and the reader's I420 output without a
    colour conversion: lossless x264 in between, every byte comes back (the writer tags
    the file BT.709 limited range, so the reader passes it through; untagged, it would be
    taken for BT.601 and converted)."""
    frames = np.stack([from_bgr_frame(f) for f in _pattern(6, 48, 64)])
    out = _lossless(tmp_path / "o.mp4", frames)
    back = np.stack(list(media.iter_frames(media.probe_video(out), pixel_format="yuv420p")))
    assert back.shape == frames.shape and np.array_equal(back, frames)


def test_i420_conversions_agree_with_ffmpegs(tmp_path: Path) -> None:
    """media.yuv converts as ffmpeg does: flat colours written as BGR (ffmpeg converts) and
    read back as I420 are yuv's I420 of those colours within a level, and yuv's BGR of them
    within two levels of the colours written."""
    colours = [(128, 128, 128), (200, 200, 200), (150, 170, 210), (200, 60, 30), (16, 16, 16), (40, 200, 90)]  # BGR
    frame = np.zeros((48, 192, 3), np.uint8)
    for i, bgr in enumerate(colours):
        frame[:, i * 32 : (i + 1) * 32] = bgr
    out = _lossless(tmp_path / "o.mp4", np.repeat(frame[None], 3, axis=0), pixel_format="bgr24")
    (got, *_) = media.iter_frames(media.probe_video(out), pixel_format="yuv420p")
    inner = (slice(8, 40), slice(None))
    for plane, want, step in zip(yuv.planes(got), yuv.planes(from_bgr_frame(frame)), (1, 2, 2), strict=True):
        for i in range(len(colours)):
            cols = slice((i * 32 + 8) // step, (i * 32 + 24) // step)
            rows = slice(inner[0].start // step, inner[0].stop // step)
            assert np.abs(plane[rows, cols].astype(int) - want[rows, cols]).max() <= 1, colours[i]
    bgr = yuv.to_bgr_frame(got)
    for i, colour in enumerate(colours):
        assert np.abs(bgr[8:40, i * 32 + 8 : i * 32 + 24].reshape(-1, 3).astype(int) - colour).max() <= 2, colour


def test_the_probe_says_how_each_reference_reaches_bt709(tmp_path: Path) -> None:
    frames = np.stack([from_bgr_frame(f) for f in _pattern(3, 48, 64)])
    assert media.probe_video(_lossless(tmp_path / "tagged.mp4", frames)).colour == "bt709"
    assert media.probe_video(make_video(tmp_path / "untagged.mp4", seconds=0.2)).colour == "bt601"
    assert media.probe_video(make_video(tmp_path / "odd.mp4", seconds=0.2, size=(63, 47))).colour == ""  # 4:4:4
    assert media.probe_video(make_image(tmp_path / "photo.jpg")).colour == ""  # full range


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.parametrize(
    ("colour", "tag_matrix"), [("hlg", True), ("pq", True), ("bt2020", True), ("p3", True), ("hlg", False)],
    ids=["hlg", "pq", "bt2020", "display-p3", "hlg-matrix-undeclared"],
)
def test_an_hdr_or_wide_gamut_take_is_read_as_the_sdr_picture_it_was_shot_from(
    tmp_path: Path, examples: Path, colour: str, tag_matrix: bool
) -> None:
    """The bundled SDR presenter recorded as a phone records HDR (its white at HDR's
    reference white, 10-bit HEVC, BT.2020): read back, as I420 and as BGR, it is the SDR
    picture again (read as if it were SDR, as before, 15–21 dB: far too dark)."""
    sdr = media.probe_video(examples / "presenter.mp4")
    info = media.probe_video(make_hdr(examples / "presenter.mp4", tmp_path / "shot.mp4", colour=colour,
                                      tag_matrix=tag_matrix))  # fmt: skip
    assert info.colour == colour and info.pixel_format == "yuv420p10le"
    assert dict(info.colour_source)["min"] == "2020_ncl"  # undeclared: taken for BT.2020's, as phones write it
    for pixel_format, floor in (("yuv420p", 34.0), ("bgr24", 31.0)):
        got = np.stack(list(media.iter_frames(info, pixel_format=pixel_format)))
        want = np.stack(list(media.iter_frames(sdr, pixel_format=pixel_format))[: len(got)])
        assert got.shape == want.shape and _psnr(got, want) > floor, (pixel_format, _psnr(got, want))


@pytest.mark.parametrize("colour", ["hlg", "bt2020"])
def test_an_hdr_take_read_scaled_down_is_the_sdr_picture_scaled(tmp_path: Path, examples: Path, colour: str) -> None:
    """A wide-colour take read at half its size (``max_resolution``): resized in the first
    step of its mapping to SDR (tone-mapping a 4K take read at 1080p then costs a 1080p
    frame's work: 91 against 224 ms of CPU a frame here), it is the SDR picture scaled."""
    sdr = media.probe_video(examples / "presenter.mp4", max_resolution=192)
    info = media.probe_video(make_hdr(examples / "presenter.mp4", tmp_path / "shot.mp4", colour=colour),
                             max_resolution=192)  # fmt: skip
    assert (info.width, info.height, info.scaled_from) == (192, 192, (384, 384))
    got = np.stack(list(media.iter_frames(info, pixel_format="yuv420p")))
    want = np.stack(list(media.iter_frames(sdr, pixel_format="yuv420p"))[: len(got)])
    assert got.shape == want.shape and _psnr(got, want) > 33, _psnr(got, want)


def _combing(frames: np.ndarray) -> float:
    """How far each row is from the mean of the rows above and below it: two fields shot
    apart comb wherever the picture moved."""
    rows = frames.astype(np.float32)
    return float(np.abs(rows[:, 1:-1] - (rows[:, :-2] + rows[:, 2:]) / 2).mean())


def test_an_interlaced_take_is_deinterlaced_and_a_progressive_one_left_as_it_is(tmp_path: Path) -> None:
    """A presenter moving fast, shot interlaced (1080i-style, 50 fields a second): read, its
    frames comb no more than the same scene shot progressive (read as they were decoded,
    as before, they combed 5.5× as much), at the same rate and count."""
    interlaced, progressive = make_interlaced(tmp_path)
    woven, plain = media.probe_video(interlaced), media.probe_video(progressive)
    assert (woven.interlaced, plain.interlaced) == (True, False)
    assert (woven.fps, woven.frames) == (plain.fps, plain.frames) == (25, 25)
    got = np.stack([yuv.planes(f)[0] for f in media.iter_frames(woven, pixel_format="yuv420p")])
    shot = np.stack([yuv.planes(f)[0] for f in media.iter_frames(plain, pixel_format="yuv420p")])
    as_decoded = np.stack([yuv.planes(f)[0] for f in media.iter_frames(dataclasses.replace(woven, interlaced=False),
                                                                       pixel_format="yuv420p")])  # fmt: skip
    assert _combing(got) <= _combing(shot) < _combing(as_decoded) / 3, (_combing(got), _combing(shot),
                                                                        _combing(as_decoded))  # fmt: skip


def test_a_take_with_non_square_pixels_is_read_as_players_show_it(tmp_path: Path, examples: Path) -> None:
    """A 16:9 picture stored on 720×576 pixels drawn 64:45 wide (PAL DV, anamorphic) is read
    at 1024×576 square pixels: the picture as shown, not the presenter squeezed to 70 % of
    their width. A ratio no camera writes (100:1) is not believed."""
    shown = tmp_path / "shown.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(examples / "presenter.mp4"), "-vf", "scale=1024:576",
                    "-c:v", "libx264", "-crf", "12", str(shown)], check=True)  # fmt: skip
    info = media.probe_video(make_anamorphic(examples / "presenter.mp4", tmp_path / "pal.mp4", size=(720, 576),
                                             sample_aspect="64/45"))  # fmt: skip
    assert (info.width, info.height, info.source_width, info.sample_aspect) == (1024, 576, 720, Fraction(64, 45))
    for pixel_format in ("bgr24", "yuv420p"):
        want = np.stack(list(media.iter_frames(media.probe_video(shown), pixel_format=pixel_format))[::10])
        got = np.stack(list(media.iter_frames(info, pixel_format=pixel_format))[::10])
        assert got.shape == want.shape and _psnr(got, want) > 30, (pixel_format, _psnr(got, want))
    odd = media.probe_video(make_anamorphic(examples / "presenter.mp4", tmp_path / "odd.mp4", size=(64, 64),
                                            sample_aspect="100/1"))  # fmt: skip
    assert (odd.width, odd.height, odd.sample_aspect) == (64, 64, 1)
    assert next(media.iter_frames(odd)).shape == (64, 64, 3)


@pytest.mark.parametrize("size", [(640, 360), (360, 640)], ids=["landscape", "portrait"])
def test_a_reference_above_the_resolution_asked_for_is_read_scaled_down_in_proportion(
        tmp_path: Path, examples: Path, size: tuple[int, int]) -> None:  # fmt: skip
    """``max_resolution`` caps the shorter side: 640×360 at 180 lines is 320×180, a
    portrait 360×640 is 180×320, each frame the picture scaled down (as ffmpeg's own scale
    gives it); at or above the reference's own it is read as it is."""
    width, height = size
    take = tmp_path / f"{width}x{height}.mp4"
    fit = f"scale={width}:{height}:force_original_aspect_ratio=decrease,pad={width}:{height}:(ow-iw)/2:(oh-ih)/2"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(examples / "presenter.mp4"), "-vf", fit,
                    "-c:v", "libx264", "-crf", "12", str(take)], check=True)  # fmt: skip
    small = tmp_path / "small.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(take), "-vf", f"scale={width // 2}:{height // 2}",
                    "-c:v", "libx264", "-crf", "6", str(small)], check=True)  # fmt: skip
    info = media.probe_video(take, max_resolution=180)
    assert (info.width, info.height, info.scaled_from) == (width // 2, height // 2, (width, height))
    assert (info.source_width, info.frames) == (width, 100)
    for pixel_format in ("bgr24", "yuv420p"):
        want = np.stack(list(media.iter_frames(media.probe_video(small), pixel_format=pixel_format))[::10])
        got = np.stack(list(media.iter_frames(info, pixel_format=pixel_format))[::10])
        assert got.shape == want.shape and _psnr(got, want) > 35, (pixel_format, _psnr(got, want))
    for cap in (0, 360, 1080):
        whole = media.probe_video(take, max_resolution=cap)
        assert (whole.width, whole.height, whole.scaled_from) == (width, height, None)
    assert video_probe.scaled_to(3840, 2160, 1080) == (1920, 1080)
    assert video_probe.scaled_to(1080, 1920, 720) == (720, 1280)
    assert video_probe.scaled_to(1440, 1080, 720) == (960, 720)  # HDV's 4:3, widened or not


@pytest.mark.parametrize(
    "kind", ["rgba.png", "grey-alpha.png", "palette.png", "rgba.webp", "prores-4444.mov", "vp9-alpha.webm",
             "vp8-alpha.webm"],
)  # fmt: skip
def test_a_cut_out_picture_is_shown_on_black_not_on_what_its_transparent_pixels_hold(
        tmp_path: Path, examples: Path, kind: str) -> None:  # fmt: skip
    """A presenter cut out of their background (transparent around them, red stored under
    the transparent pixels, as a cut-out tool may leave), as a PNG (RGBA, grey and alpha, a
    palette with a transparent colour), a WebP, a ProRes 4444 take, and VP9 and VP8 WebM
    takes with an alpha channel (which FFmpeg's own decoders drop): the background reads
    black, as BGR and as I420 (it read red); the presenter as the picture has them."""
    photo = cv2.imread(str(examples / "presenter.jpg"))
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    cut = (xx - w / 2) ** 2 / (0.35 * w) ** 2 + (yy - h / 2) ** 2 / (0.45 * h) ** 2 > 1
    if kind.startswith("grey"):
        photo = cv2.cvtColor(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    rgba = np.dstack([photo, np.where(cut, 0, 255).astype(np.uint8)])
    rgba[cut, :3] = 0 if kind.startswith("grey") else (0, 0, 255)
    rgba[cut, 2] = 255  # red, or for grey a light level
    path = tmp_path / kind
    picture = Image.fromarray(cv2.cvtColor(rgba, cv2.COLOR_BGRA2RGBA), "RGBA")
    if kind == "grey-alpha.png":
        picture.convert("LA").save(path)
    elif kind == "palette.png":
        picture.quantize(colors=255, method=Image.Quantize.FASTOCTREE).save(path)
    elif kind == "rgba.webp":
        picture.save(path, lossless=True)
    else:
        png = tmp_path / "rgba.png"
        picture.save(png)
        codec = {"prores-4444.mov": ["prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le"],
                 "vp9-alpha.webm": ["libvpx-vp9", "-lossless", "1", "-pix_fmt", "yuva420p"],
                 "vp8-alpha.webm": ["libvpx", "-crf", "4", "-b:v", "20M", "-auto-alt-ref", "0", "-pix_fmt", "yuva420p"]}
        if kind in codec:
            subprocess.run([media.ffmpeg_exe(), "-v", "error", "-loop", "1", "-i", str(png), "-t", "0.2", "-r", "25",
                            "-c:v", *codec[kind], str(path)], check=True)  # fmt: skip
    info = media.probe_video(path)
    assert decode.has_alpha(info.pixel_format), info.pixel_format
    bgr = next(media.iter_frames(info))
    lossy = 4 if kind == "vp8-alpha.webm" else 2  # VP8 has no lossless mode: its alpha is off by a level or two
    assert bgr[cut].max() <= lossy, np.percentile(bgr[cut], 99)  # black (it was red, or light)
    tolerance = 8 if kind == "palette.png" else 2  # a palette of 255 colours
    assert np.abs(bgr[~cut].astype(np.int16) - photo[~cut]).mean() < tolerance
    luma = yuv.planes(next(media.iter_frames(info, pixel_format="yuv420p")))[0]
    assert np.abs(luma[cut].astype(np.int16) - 16).max() <= 1  # limited range's black
    assert not decode.has_alpha("yuv420p") and not decode.has_alpha("rgb24") and not decode.has_alpha("")


@pytest.fixture
def photo(examples: Path) -> np.ndarray:
    """The bundled portrait at a phone photo's 4:3, 1200×900."""
    return cv2.resize(cv2.imread(str(examples / "presenter.jpg")), (1200, 900), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("tile", [512, None], ids=["tiled", "one-picture"])
def test_a_phones_heic_photo_is_read_as_one_picture(tmp_path: Path, photo: np.ndarray, tile: int | None) -> None:
    """A .heic photo as a phone writes it: a grid of 512-px tiles, each a stream to FFmpeg.
    It is read as the photo, whole, at a photo's rate (it was the top-left tile alone, as
    a one-frame video at 1 frame a second: a video of 1 fps)."""
    info = media.probe_video(make_heic(tmp_path / "IMG_0001.HEIC", photo, tile=tile))
    assert (info.width, info.height, info.is_image, info.fps, info.frames) == (1200, 900, True, 25, 1)
    assert info.tile_grid == (tile is not None)
    (frame,) = media.iter_frames(info)
    assert frame.shape == photo.shape and _psnr(frame, photo) > 33, _psnr(frame, photo)
    (i420,) = media.iter_frames(info, pixel_format="yuv420p")
    assert i420.shape == yuv.frame_shape(1200, 900)


def test_a_photo_whose_name_holds_percent_d_is_that_photo_not_the_numbered_files_beside_it(
    tmp_path: Path, examples: Path
) -> None:
    """FFmpeg's still-image reader takes ``teacher%d.jpg`` for the sequence teacher1.jpg,
    teacher2.jpg, …: the take was those three pictures, a 3-frame video, cached under the
    photo's own bytes for every row with that photo. A video's name with ``%d`` is its own too."""
    photo = tmp_path / "teacher%d.jpg"
    shutil.copy(examples / "presenter.jpg", photo)
    for n in (1, 2, 3):
        cv2.imwrite(str(tmp_path / f"teacher{n}.jpg"), np.full((64, 64, 3), (0, 0, 255), np.uint8))
    info = media.probe_video(photo)
    assert (info.is_image, info.frames) == (True, 1)
    (frame,) = media.iter_frames(info)
    assert _psnr(frame, cv2.imread(str(examples / "presenter.jpg"))[: info.height, : info.width]) > 30
    clip = tmp_path / "take%d.mp4"
    shutil.copy(examples / "presenter.mp4", clip)
    assert media.probe_video(clip).frames == media.probe_video(examples / "presenter.mp4").frames


def test_a_heic_whose_boxes_end_short_is_unreadable_media_not_a_bug(tmp_path: Path) -> None:
    """A 200-byte file whose last box, the rotation, holds no byte: reading it was an
    IndexError, and its row an internal error."""
    def box(kind: bytes, payload: bytes = b"") -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    ipma = box(b"ipma", bytes(4) + struct.pack(">IH", 1, 1) + bytes([2, 1, 2]))
    ipco = box(b"ipco", box(b"ispe", bytes(4) + struct.pack(">II", 64, 48)) + box(b"irot"))
    meta = box(b"meta", bytes(4) + box(b"pitm", bytes(4) + struct.pack(">H", 1)) + box(b"iprp", ipma + ipco))
    short = tmp_path / "short.heic"
    short.write_bytes(box(b"ftyp", b"heic" + bytes(4) + b"mif1heic") + meta)
    with pytest.raises(InputError) as err:
        media.probe_video(short)
    assert err.value.kind == "unreadable_media" and str(short) in err.value.message


def test_a_turned_heic_photo_is_read_upright_and_one_over_the_limit_refused_before_decoding(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """A photo shot in portrait (EXIF orientation 6: its tiles stored sideways, with a
    quarter turn to show them) is read turned, 900×1200; one whose boxes declare a picture
    over the pixel limit is refused from its header, as a PNG's or JPEG's is."""
    info = media.probe_video(make_heic(tmp_path / "portrait.heic", photo, orientation=6))
    assert (info.width, info.height, info.rotation % 180) == (900, 1200, 90)
    (frame,) = media.iter_frames(info)
    assert _psnr(frame, cv2.rotate(photo, cv2.ROTATE_90_CLOCKWISE)) > 33
    big = make_heic(tmp_path / "big.heic", photo)
    data = bytearray(big.read_bytes())
    (at,) = [m.start() + 8 for m in re.finditer(b"ispe", data) if data[m.start() + 8 : m.start() + 16] ==
             struct.pack(">II", 1200, 900)]  # the whole picture's size (after version and flags), not a tile's
    data[at : at + 8] = struct.pack(">II", 60000, 40000)
    lying = tmp_path / "lying.heic"
    lying.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"lying\.heic is 60000×40000 pixels") as err:
        media.probe_video(lying, max_pixels=7680 * 4320)
    assert err.value.kind == "too_large"


def test_an_animated_webp_says_so_and_a_still_one_is_a_photo(tmp_path: Path, examples: Path) -> None:
    """A short loop exported as an animated WebP: FFmpeg's decoder takes still WebP only,
    and its header gives no size, which read as "damaged, or larger than the pixel limit"."""
    moving, still = tmp_path / "loop.webp", tmp_path / "still.webp"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(examples / "presenter.mp4"), "-t", "0.5",
                    "-c:v", "libwebp", "-loop", "0", str(moving)], check=True)  # fmt: skip
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(examples / "presenter.jpg"), "-c:v", "libwebp",
                    str(still)], check=True)  # fmt: skip
    with pytest.raises(InputError) as err:
        media.probe_video(moving)
    assert err.value.kind == "unreadable_media"
    assert err.value.message.startswith(f"reference {moving} is an animated WebP, which FFmpeg ")
    assert "export the take as a video (e.g. H.264 MP4), or give one of its pictures as a photo" in err.value.message
    info = media.probe_video(still)
    assert info.is_image and info.frames == 1


def test_an_hdr_take_on_an_ffmpeg_without_zscale_says_which_ffmpeg_and_what_to_do(
    tmp_path: Path, examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ffmpeg built without zimg (here: the bundled one behind a script that hides its
    zscale) cannot tone-map: the take fails as ``ffmpeg_missing``, naming that ffmpeg, before
    it decodes a frame; an SDR take still reads."""
    info = media.probe_video(make_hdr(examples / "presenter.mp4", tmp_path / "shot.mp4", colour="pq", seconds=0.2))
    real = media.ffmpeg_exe()
    script = tmp_path / "ffmpeg-without-zimg"
    script.write_text(f'#!/bin/sh\nif [ "$2" = "-filters" ]; then "{real}" "$@" | grep -v zscale; exit 0; fi\n'
                      f'exec "{real}" "$@"\n')  # fmt: skip
    script.chmod(0o755)
    monkeypatch.setenv("HEYGEM_FFMPEG", str(script))
    media.ffmpeg_exe.cache_clear()
    ffmpeg_module.missing_filters.cache_clear()
    try:
        with pytest.raises(EngineError, match="ffmpeg-without-zimg.* has no zscale filter, which maps a take shot in HDR") \
                as raised:  # fmt: skip
            next(media.iter_frames(info, pixel_format="yuv420p"))
        assert raised.value.kind == "ffmpeg_missing" and "export the take as SDR" in str(raised.value)
        assert next(media.iter_frames(media.probe_video(examples / "presenter.mp4"))).shape == (384, 384, 3)
    finally:
        media.ffmpeg_exe.cache_clear()
        ffmpeg_module.missing_filters.cache_clear()


def _bt601_to_bt709(stored: np.ndarray) -> np.ndarray:
    """An I420 frame in BT.601 limited range → BT.709, computed in floats: each pixel's
    Y, Cb, Cr (the chroma sample that covers it) → BGR (unclipped) → BT.709 luma per pixel,
    chroma the mean of its four pixels'."""
    kr, kb = 0.299, 0.114
    kg = 1 - kr - kb
    to_yuv601 = np.array([
        [219 / 255 * kb, 219 / 255 * kg, 219 / 255 * kr],
        [112 / 255, -112 / 255 * kg / (1 - kb), -112 / 255 * kr / (1 - kb)],
        [-112 / 255 * kb / (1 - kr), -112 / 255 * kg / (1 - kr), 112 / 255],
    ])  # fmt: skip
    luma, cb, cr = (p.astype(np.float32) for p in yuv.planes(stored))
    up = [np.repeat(np.repeat(c, 2, axis=0), 2, axis=1) - 128 for c in (cb, cr)]
    bgr = np.stack([luma - 16, *up], axis=-1) @ np.linalg.inv(to_yuv601).T.astype(np.float32)
    out = yuv.bgr_to_yuv(bgr)
    frame = np.empty_like(stored)
    y, u, v = yuv.planes(frame)
    chroma = yuv.halve(out[..., 1:])
    yuv.put(y, out[..., 0])
    yuv.put(u, chroma[..., 0])
    yuv.put(v, chroma[..., 1])
    return frame


def test_an_untagged_reference_becomes_bt709_exactly(tmp_path: Path) -> None:
    """An untagged (BT.601) 4:2:0 reference changes matrix on its planes as decoded:
    within a level of the exact conversion, every sample."""
    clip = make_video(tmp_path / "c.mp4", seconds=0.2, size=(320, 240))
    with av.open(str(clip)) as container:
        raw = [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]  # planes as stored
    got = list(media.iter_frames(media.probe_video(clip), pixel_format="yuv420p"))
    assert len(got) == len(raw) == 5
    for frame, stored in zip(got, raw, strict=True):
        assert np.abs(frame.astype(int) - _bt601_to_bt709(stored)).max() <= 1


def test_an_untagged_reference_reads_alike_as_i420_and_as_bgr(tmp_path: Path) -> None:
    """A reference in BT.601 (untagged, as the test pattern is) is converted to BT.709 I420
    on the way in; away from edges (where the two readers interpolate chroma differently)
    its BGR picture is the BGR reader's within a few levels (that reader truncates)."""
    info = media.probe_video(make_video(tmp_path / "c.mp4", seconds=0.2, size=(320, 240)))
    as_bgr = np.stack(list(media.iter_frames(info)))
    as_i420 = np.stack([yuv.to_bgr_frame(f) for f in media.iter_frames(info, pixel_format="yuv420p")])
    assert as_i420.shape == as_bgr.shape
    for got, want in zip(as_i420, as_bgr, strict=True):
        flat = cv2.dilate(cv2.Canny(want, 10, 30), np.ones((7, 7), np.uint8)) == 0
        diff = np.abs(got.astype(int) - want)[flat]
        assert flat.mean() > 0.3 and diff.mean() < 1 and np.percentile(diff, 99) <= 3


def test_writer_takes_audio_from_a_video(tmp_path: Path) -> None:
    talk = make_video(tmp_path / "talk.mp4", seconds=1.0, size=(64, 48), audio=True)
    out = tmp_path / "out.mp4"
    with media.VideoWriter(out, width=64, height=48, fps=Fraction(25), audio=talk, duration=0.8) as writer:
        writer.write(_pattern(20, 48, 64))
    assert media.probe_audio(out).duration == pytest.approx(0.8, abs=0.04)


def test_a_folder_removed_while_its_mp4_is_written_is_named_not_blamed_on_the_media(tmp_path: Path) -> None:
    """A cleanup that deletes the output folder during a run: ffmpeg cannot open its file
    there. The job says the folder was removed (``storage``), not that its audio may not play."""
    audio = make_tone(tmp_path / "voice.wav", seconds=1.0)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(InputError) as caught:
        with media.VideoWriter(folder / "o.mp4", width=64, height=48, fps=Fraction(25), audio=audio,
                               duration=1.0) as writer:  # fmt: skip
            folder.rmdir()
            writer.write(_pattern(25, 48, 64))
            writer.finish()
    assert caught.value.kind == "storage"
    assert caught.value.message.startswith(f"the folder {folder} was removed while o.mp4 was written into it (")


def test_publishing_into_a_removed_folder_says_the_folder_was_removed(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    staged = storage.staging_file(folder / "lesson.mp4", tmp_path, ".part.mp4")
    staged.write_bytes(b"mp4")
    shutil.rmtree(folder)
    with pytest.raises(InputError) as caught:
        storage.publish(staged, folder / "lesson.mp4")
    assert caught.value.kind == "storage" and f"the folder {folder} was removed while lesson.mp4" in caught.value.message


def test_writer_aborted_leaves_no_file(tmp_path: Path) -> None:
    audio = make_tone(tmp_path / "voice.wav", seconds=1.0)
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="stop"):
        with media.VideoWriter(out, width=64, height=48, fps=Fraction(25), audio=audio, duration=1.0) as writer:
            writer.write(_pattern(5, 48, 64))
            raise RuntimeError("stop")
    assert not out.exists()


def test_writer_ffmpeg_failure_is_an_encode_error(tmp_path: Path) -> None:
    mute = make_video(tmp_path / "mute.mp4", seconds=0.4)  # no audio stream to take
    out = tmp_path / "out.mp4"
    with pytest.raises(EngineError) as caught:
        with media.VideoWriter(out, width=64, height=48, fps=Fraction(25), audio=mute, duration=0.4) as writer:
            writer.write(_pattern(10, 48, 64))
    assert caught.value.kind == "encode" and str(out) in caught.value.message
    assert not out.exists()


def test_writer_rejects_wrong_frames(tmp_path: Path) -> None:
    audio = make_tone(tmp_path / "voice.wav", seconds=1.0)
    with pytest.raises(InternalError, match="even"):
        media.VideoWriter(tmp_path / "o.mp4", width=63, height=48, fps=Fraction(25), audio=audio, duration=1.0)
    with pytest.raises(InternalError, match="shape"):
        with media.VideoWriter(tmp_path / "o.mp4", width=64, height=48, fps=Fraction(25), audio=audio, duration=1.0) as w:
            w.write(np.zeros((48, 64), np.uint8))
    assert not (tmp_path / "o.mp4").exists()


# --------------------------------------------------------------------------- encoder choice


def test_the_encoder_is_nvenc_only_where_it_encodes_and_asking_for_it_elsewhere_says_what_to_do() -> None:
    """``auto`` takes h264_nvenc exactly where a tiny encode with it works (here, a machine
    without an NVIDIA driver: libx264); asking for h264_nvenc where it does not work is an
    ``encode`` error that names the fix."""
    missing = encoders.nvenc_missing()
    assert media.pick_encoder("libx264") == "libx264"
    assert media.pick_encoder("auto") == ("h264_nvenc" if missing is None else "libx264")
    if missing is None:
        assert media.pick_encoder("h264_nvenc") == "h264_nvenc"
        return
    if not Path("/dev/nvidiactl").exists():
        assert missing == "no NVIDIA driver on this machine"
    with pytest.raises(EngineError) as caught:
        media.pick_encoder("h264_nvenc")
    assert caught.value.kind == "encode"
    assert missing in caught.value.message and "--encoder auto" in caught.value.message


def test_nvenc_sees_the_nodes_gpus_from_a_task_ray_gave_none() -> None:
    """Ray empties CUDA_VISIBLE_DEVICES for a task without GPUs (the job tasks that encode);
    NVENC's ffmpeg gets the node's GPUs back, x264's environment is left alone."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        env = encoders.encoder_env("h264_nvenc")
        assert env is not None and "CUDA_VISIBLE_DEVICES" not in env and env["PATH"]
        assert encoders.encoder_env("libx264") is None
        mp.setenv("CUDA_VISIBLE_DEVICES", "1")
        assert encoders.encoder_env("h264_nvenc") is None


# --------------------------------------------------------------------------- stalls


@pytest.fixture
def stalling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """ffmpeg is ``hanging_ffmpeg``'s (files named with ``HANG_MARK`` never get through),
    and a stall is declared after 2 s of no byte moved (``STALL_S``; 600 s in a run)."""
    script = hanging_ffmpeg(tmp_path)
    monkeypatch.setenv("HEYGEM_FFMPEG", str(script))
    monkeypatch.setattr(ffmpeg_module, "STALL_S", 2.0)
    media.ffmpeg_exe.cache_clear()
    yield
    media.ffmpeg_exe.cache_clear()  # before HEYGEM_FFMPEG is restored: looked up afresh next time


def _hanging(tmp_path: Path, made: Path) -> Path:
    hang = tmp_path / f"{HANG_MARK}{made.suffix}"
    made.rename(hang)
    return hang


def test_a_decoder_that_hands_over_nothing_is_stopped_and_says_what_it_was_reading(tmp_path: Path, stalling) -> None:
    """Neither a reference's nor an audio file's decode waits for ever on an ffmpeg that moves
    no byte: it is killed, and the error (kind ``stalled``) names the file and what to check."""
    video = _hanging(tmp_path, make_video(tmp_path / "a.mp4", size=(64, 48)))
    audio = _hanging(tmp_path, make_tone(tmp_path / "a.wav", seconds=0.4))
    for read, path in ((lambda: list(media.iter_frames(media.probe_video(video), pixel_format="yuv420p")), video),
                       (lambda: media.decode_audio(audio, tmp_path / "a.f32", 16000), audio)):  # fmt: skip
        start = time.monotonic()
        with pytest.raises(EngineError) as caught:
            read()
        assert 2.0 <= time.monotonic() - start < 30
        assert caught.value.kind == "stalled", caught.value
        assert str(path) in caught.value.message and "handed over no data and used no CPU for 2 s" in caught.value.message
        assert "network file system" in caught.value.message and "run the same manifest again" in caught.value.message
        assert sleepers() == []  # killed and reaped


# Computes for 3 s of wall time (not of CPU time: on a loaded machine 3 CPU-seconds took
# over 6 s, past the six spans of STALL_S a process may spin for, and the test failed).
_BUSY = "import sys, time\nt = time.monotonic()\nwhile time.monotonic() - t < 3: pass\n"


def test_an_ffmpeg_that_works_long_on_one_picture_is_not_stalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Silent but using CPU (a long x264 flush at 8K, say) is working, not stuck: a process
    that computes for 3 s before its output, or before it exits, outlasts a 1-s ``STALL_S``."""
    monkeypatch.setattr(ffmpeg_module, "STALL_S", 1.0)
    late = ffmpeg_module.FfmpegProcess([sys.executable, "-c", _BUSY + "sys.stdout.buffer.write(b'done')"],
                                       task="a busy one", stdout=True)  # fmt: skip
    buffer = bytearray(16)
    assert late.read_into(memoryview(buffer)) == 4 and bytes(buffer[:4]) == b"done"
    assert late.wait() == 0
    slow = ffmpeg_module.FfmpegProcess([sys.executable, "-c", "import sys\nsys.stdin.buffer.read()\n" + _BUSY],
                                       task="a busy one", stdin=True)  # fmt: skip
    slow.write_all(memoryview(b"frames"))
    start = time.monotonic()
    assert slow.wait() == 0 and time.monotonic() - start >= 2.5


def test_an_ffmpeg_that_spins_without_a_byte_is_stopped_after_six_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Using CPU is not working for ever: a CUDA wait spins on a core while its GPU hangs.
    (The process spins for 30 s: were it let run, the read would end with nothing read.)"""
    monkeypatch.setattr(ffmpeg_module, "STALL_S", 0.5)
    spin = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 30: pass"  # ends: a broken guard fails
    spinning = ffmpeg_module.FfmpegProcess([sys.executable, "-c", spin], task="a spinning one", stdout=True)
    start = time.monotonic()
    with pytest.raises(EngineError) as caught:
        spinning.read_into(memoryview(bytearray(4)))
    assert 3.0 <= time.monotonic() - start < 20
    assert caught.value.kind == "stalled" and "handed over no data for 3 s (using CPU all along)" in caught.value.message
    assert spinning.popen.poll() is not None  # killed


def test_an_encoder_that_takes_nothing_is_stopped_and_its_half_file_removed(tmp_path: Path, stalling) -> None:
    audio = make_tone(tmp_path / "a.wav", seconds=2.0)
    out = tmp_path / f"{HANG_MARK}.mp4"
    start = time.monotonic()
    with pytest.raises(EngineError) as caught:
        with media.VideoWriter(out, width=640, height=480, fps=Fraction(25), audio=audio, duration=2.0) as w:
            for _ in range(50):  # 46 MB: more than the pipe holds
                w.write(np.zeros((480, 640, 3), np.uint8))
    assert 2.0 <= time.monotonic() - start < 30
    assert caught.value.kind == "stalled" and f"encoding {out}" in caught.value.message
    assert "took no data and used no CPU for 2 s" in caught.value.message
    assert not out.exists() and sleepers() == []


def test_nvdec_takes_8_bit_4_2_0_h264_and_hevc_where_a_tiny_decode_with_it_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reference goes to NVDEC where it decodes (here, a machine without an NVIDIA driver:
    nowhere) and only the streams it takes: not 4:4:4 H.264, not MPEG-4 Part 2, not a photo."""
    h264 = make_video(tmp_path / "a.mp4", size=(64, 48))
    full_chroma = make_video(tmp_path / "b.mp4", size=(63, 48))  # odd: encoded as 4:4:4
    mpeg4 = tmp_path / "c.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=0.4",
                    "-c:v", "mpeg4", str(mpeg4)], check=True)  # fmt: skip
    photo = make_image(tmp_path / "p.png")
    infos = {p.name: media.probe_video(p) for p in (h264, full_chroma, mpeg4, photo)}
    assert (infos["a.mp4"].codec, infos["a.mp4"].pixel_format) == ("h264", "yuv420p")
    assert (infos["b.mp4"].codec, infos["b.mp4"].pixel_format) == ("h264", "yuv444p")
    assert infos["c.mp4"].codec == "mpeg4"
    missing = decoders.nvdec_missing()
    if not Path("/dev/nvidiactl").exists():
        assert missing == "no NVIDIA driver on this machine"
    assert media.pick_decoder(infos["a.mp4"]) == ("nvdec" if missing is None else "cpu")
    monkeypatch.setattr(decoders, "nvdec_missing", lambda: None)  # as on a node where it works
    assert [media.pick_decoder(info) for info in infos.values()] == ["nvdec", "cpu", "cpu", "cpu"]


def test_nvdec_sees_the_nodes_gpus_from_a_task_ray_gave_none(tmp_path: Path) -> None:
    """The decoder's ffmpeg is started as NVENC's is: with the node's GPUs visible. Without
    CUDA (here) it fails, and says so: what analysis falls back from."""
    if decoders.nvdec_missing() is None:
        pytest.skip("NVDEC decodes on this machine")
    clip = make_video(tmp_path / "a.mp4", size=(64, 48))
    with pytest.raises(InputError) as caught:
        list(media.iter_frames(media.probe_video(clip), pixel_format="yuv420p", decoder="nvdec"))
    assert caught.value.kind == "unreadable_media" and str(clip) in caught.value.message


@pytest.mark.parametrize("preset", ["ultrafast", "veryfast", "veryslow", "lean", None])
def test_the_preset_reaches_x264(tmp_path: Path, preset: str | None) -> None:
    audio = make_tone(tmp_path / "a.wav", seconds=0.4)
    out = tmp_path / "o.mp4"
    chosen = {} if preset is None else {"preset": preset}  # None: the writer's default
    with media.VideoWriter(out, width=64, height=48, fps=Fraction(25), audio=audio, duration=0.4, **chosen) as w:
        w.write(_pattern(10, 48, 64))
    # x264 writes its settings into the stream: ultrafast turns CABAC off, the others keep it;
    # veryfast refines motion to subme 2 and splits inter blocks, lean (the default) refines to
    # subme 1 on whole 16×16 inter blocks (``analyse=<intra>:0``: the intra splits stay) and
    # is veryfast otherwise (one reference frame).
    settings = out.read_bytes().split(b"x264 - core", 1)[1][:2000].split(b" ")
    assert (b"cabac=0" in settings) == (preset == "ultrafast") and (b"cabac=1" in settings) != (preset == "ultrafast")
    lean = preset in ("lean", None)
    assert (b"subme=1" in settings and b"analyse=0x3:0" in settings) == lean
    assert (b"subme=2" in settings and b"ref=1" in settings) == (preset == "veryfast")
    assert (b"ref=1" in settings) == (preset in ("veryfast", "ultrafast") or lean)
    assert f"threads={encoders.X264_THREADS}".encode() in settings  # not x264's 1.5 a core


def _ffmpeg_children() -> list[int]:
    """This process's running ffmpeg children (pids)."""
    return children(lambda words: b"ffmpeg" in words[0].rsplit(b"/", 1)[-1])


def test_the_reference_decoder_runs_its_own_thread_count_not_one_per_core(tmp_path: Path, monkeypatch) -> None:
    """FFmpeg's H.264 decoder left alone runs a thread per core and one more (17 on a
    16-core node, each holding frames) in every job that analyses a reference; it runs
    ``DECODER_THREADS``. Told 16 instead, the same decode runs 14 more threads: the setting
    reaches the decoder (left out, both would be FFmpeg's own count)."""
    clip = make_video(tmp_path / "c.mp4", seconds=2.0, size=(320, 240))

    def threads_while_decoding() -> int:
        """The most threads the decoding ffmpeg ran, looked at after each frame read (under
        load, not all of its threads are up by the first)."""
        before = set(_ffmpeg_children())  # an earlier test's, if any is still going
        frames = media.iter_frames(media.probe_video(clip), pixel_format="yuv420p")
        next(frames)
        (pid,) = set(_ffmpeg_children()) - before
        most = 0
        for _ in frames:
            try:
                most = max(most, len(list(Path(f"/proc/{pid}/task").iterdir())))
            except OSError:  # it has exited: every frame is out
                break
        return most

    ours = threads_while_decoding()
    monkeypatch.setattr(decode, "DECODER_THREADS", 16)
    assert threads_while_decoding() - ours >= 12


def test_a_missing_file_names_what_is_there_instead(tmp_path):
    """A row's file named with a slip (found by an audit: the message named the path alone,
    the user left to list the folder): the files beside it it may be meant by, or the first
    folder on its way that does not exist. Another lesson (another number) is never offered."""
    for name in ("Lesson1.wav", "lesson1.mp3", "lesson2.wav", "lesson10.wav", "lesosn1.wav", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputError) as err:
        media.require_file(tmp_path / "lesson1.wav", "audio")
    assert err.value.kind == "missing_file" and err.value.message == (
        f"audio {tmp_path / 'lesson1.wav'} does not exist (beside it: Lesson1.wav, lesson1.mp3, lesosn1.wav); "
        "check the path")  # fmt: skip
    with pytest.raises(InputError) as err:
        media.require_file(tmp_path / "lesons" / "day1" / "lesson1.wav", "audio")
    assert err.value.message == (f"audio {tmp_path / 'lesons/day1/lesson1.wav'} does not exist: there is no folder "
                                 f"{tmp_path / 'lesons'}; check the path")  # fmt: skip
    with pytest.raises(InputError) as err:  # a file where a folder would be (not "there is no folder")
        media.require_file(tmp_path / "notes.txt" / "lesson1.wav", "audio")
    assert err.value.message.endswith(f"does not exist: {tmp_path / 'notes.txt'} is a file, not a folder; check the "
                                      "path")  # fmt: skip
    with pytest.raises(InputError) as err:
        media.require_file(tmp_path / "intro.wav", "audio")
    assert err.value.message == f"audio {tmp_path / 'intro.wav'} does not exist; check the path"
