"""Media I/O through the real ffmpeg, on tiny files made in each test."""

from __future__ import annotations

import struct
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from heygem_ray import media
from heygem_ray.errors import EngineError, InputError, InternalError
from tests.helpers.media import (
    make_corrupt,
    make_empty_wav,
    make_exif_jpeg,
    make_gif,
    make_image,
    make_silence,
    make_stereo,
    make_tone,
    make_truncated_mp4,
    make_vfr_video,
    make_video,
)

NTSC = Fraction(30000, 1001)


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


@pytest.mark.parametrize("fps", [25, 24, "24000/1001", 15])
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
    assert np.abs(frames[0].astype(int) - expected).mean() < 3


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_variable_frame_rate_becomes_constant(tmp_path: Path, ext: str) -> None:
    clip = make_vfr_video(tmp_path / f"vfr.{ext}", rates=(15, 30), seconds_each=1.0)
    info = media.probe_video(clip)
    assert info.fps == 30  # the nominal rate: no motion of the 30 fps part is dropped
    frames = _frames(info)
    assert len(frames) == info.frames
    assert abs(info.frames - 2.0 * 30) <= 1
    assert info.duration == pytest.approx(2.0, abs=1 / 30)


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
    assert np.abs(frame.astype(int) - upright).mean() < 4


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
    assert np.abs(frames[0].astype(int) - first).mean() < 4


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


def test_audio_decoded_to_a_file_equals_the_audio_in_memory(tmp_path: Path) -> None:
    audio = make_tone(tmp_path / "a.mp3", seconds=1.5, freq=440, sample_rate=44100, channels=2)
    samples = media.decode_audio(audio, tmp_path / "a.f32")
    wav = media.load_audio(audio)
    assert samples == len(wav) == (tmp_path / "a.f32").stat().st_size // 4
    np.testing.assert_array_equal(np.fromfile(tmp_path / "a.f32", dtype="<f4"), wav)


def test_audio_track_of_a_video(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "talk.mp4", seconds=1.2, size=(64, 48), audio=True)
    assert media.probe_audio(clip).duration == pytest.approx(1.2, rel=0.01)
    assert len(media.load_audio(clip, sample_rate=8000)) == pytest.approx(1.2 * 8000, rel=0.01)


def test_stereo_is_averaged(tmp_path: Path) -> None:
    wav = media.load_audio(make_stereo(tmp_path / "lr.wav", seconds=0.5, left=0.5, right=-0.1))
    assert len(wav) == 8000
    np.testing.assert_allclose(wav[100:-100], 0.2, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_silence_is_valid(tmp_path: Path, channels: int) -> None:
    audio = make_silence(tmp_path / "quiet.wav", seconds=0.7, sample_rate=22050, channels=channels)
    assert media.probe_audio(audio).channels == channels
    wav = media.load_audio(audio)
    assert len(wav) == pytest.approx(0.7 * 16000, abs=2)
    assert not wav.any()


@pytest.mark.parametrize(
    ("line", "channels"),
    [
        ("Audio: aac (LC), 48000 Hz, mono, fltp", 1),
        ("Audio: pcm_s16le, 44100 Hz, stereo, s16", 2),
        ("Audio: ac3, 48000 Hz, 5.1(side), fltp", 6),
        ("Audio: eac3, 48000 Hz, 7.1.4, fltp", 12),
        ("Audio: pcm_s16le, 16000 Hz, 3 channels (FL+FR+LFE), s16", 3),
        ("Audio: opus, 48000 Hz, quad(side), fltp", 4),
        ("Audio: opus, 48000 Hz, ambisonic 1, fltp", None),
    ],
)
def test_layout_channels(line: str, channels: int | None) -> None:
    assert media._layout_channels(line) == channels


# --------------------------------------------------------------------------- rate parsing


@pytest.mark.parametrize(
    ("line", "unit", "rate"),
    [
        ("160x120, 29.97 fps, 29.97 tbr, 30k tbn", "fps", NTSC),
        ("23.98 fps, 23.98 tbr", "tbr", Fraction(24000, 1001)),
        ("59.94 fps", "fps", Fraction(60000, 1001)),
        ("12.50 fps, 12.50 tbr", "fps", Fraction(25, 2)),
        ("25 fps, 25 tbr, 1k tbn", "tbr", Fraction(25)),
        ("30 tbr, 1k tbn", "fps", None),
    ],
)
def test_rate_tokens(line: str, unit: str, rate: Fraction | None) -> None:
    assert media._rate_token(line, unit) == rate


@pytest.mark.parametrize(
    ("avg", "tbr", "chosen"),
    [
        (NTSC, NTSC, NTSC),  # constant rate
        (Fraction(25, 2), Fraction(25, 2), Fraction(25, 2)),
        (Fraction("29.81"), Fraction(30), NTSC),  # a phone's variable rate, snapped
        (Fraction("21.77"), Fraction(30), Fraction(30)),  # mixed 15/30 fps: the nominal rate
        (None, Fraction(30), Fraction(30)),  # Matroska prints no average
        (Fraction(25), Fraction(50), Fraction(25)),  # interlaced: tbr is the field rate
        (None, Fraction(1000), Fraction(25)),  # nothing plausible
    ],
)
def test_choose_fps(avg: Fraction | None, tbr: Fraction | None, chosen: Fraction) -> None:
    assert media._choose_fps(avg, tbr) == chosen


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
@pytest.mark.parametrize("maker", [make_corrupt, make_truncated_mp4])
def test_unreadable_media(tmp_path: Path, read, maker) -> None:  # type: ignore[no-untyped-def]
    bad = maker(tmp_path / "bad.mp4")
    assert _error(read, bad).kind == "unreadable_media"


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


def test_no_video_stream(tmp_path: Path) -> None:
    err = _error(media.probe_video, make_tone(tmp_path / "voice.wav", seconds=0.5))
    assert err.kind == "no_video_stream" and "audio" in err.message


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
    decoded, _ = media.read_video(out)
    assert np.abs(decoded.astype(int) - frames).mean() < 6  # colours and order survive
    sound = media.probe_audio(out)
    assert abs(sound.duration - duration) <= 1 / float(fps)
    boxes = _top_level_boxes(out)
    assert boxes["moov"] < boxes["mdat"]  # +faststart


def test_writer_takes_audio_from_a_video(tmp_path: Path) -> None:
    talk = make_video(tmp_path / "talk.mp4", seconds=1.0, size=(64, 48), audio=True)
    out = tmp_path / "out.mp4"
    with media.VideoWriter(out, width=64, height=48, fps=Fraction(25), audio=talk, duration=0.8) as writer:
        writer.write(_pattern(20, 48, 64))
    assert media.probe_audio(out).duration == pytest.approx(0.8, abs=0.04)


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
