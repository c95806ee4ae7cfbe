"""Tiny media files for tests, made with ffmpeg's synthetic sources (testsrc, sine, anullsrc).

Every maker writes ``path`` (its extension picks the container) and returns it. Keep
clips small: 64×48 to 160×120 and a second or two encode in well under a second.
"""

from __future__ import annotations

import os
import struct
import subprocess
import wave
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import cv2
import ffmpeg  # type: ignore[import-untyped]
import numpy as np

from heygem_ray.media import ffmpeg_exe

_QUIET = ("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")


def _run(stream: ffmpeg.nodes.OutputStream) -> None:
    args = stream.overwrite_output().global_args(*_QUIET).compile(cmd=ffmpeg_exe())
    proc = subprocess.run(args, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed making a test file: {args}\n{proc.stderr.decode(errors='replace')}")


def _audio_codec(path: Path) -> dict[str, str]:
    return {
        ".wav": {"acodec": "pcm_s16le"},
        ".mp3": {"acodec": "libmp3lame"},
        ".m4a": {"acodec": "aac"},
        ".aac": {"acodec": "aac"},
        ".ogg": {"acodec": "libvorbis"},
        ".flac": {"acodec": "flac"},
    }.get(path.suffix.lower(), {})


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, f"{channels}c")


def make_video(
    path: str | Path,
    *,
    seconds: float = 1.0,
    fps: Fraction | int | str = 25,
    size: tuple[int, int] = (64, 48),
    rotation: int | None = None,
    audio: bool = False,
    freq: float = 440.0,
) -> Path:
    """An H.264 test-pattern clip, ``size`` = (width, height), ``fps`` frames per second.

    ``rotation``: degrees clockwise a player should turn the stored frames (the
    convention of ``VideoInfo.rotation``), written as display-matrix side data.
    ``audio``: add a sine tone (AAC) as long as the video. Odd sizes are encoded as
    4:4:4, which H.264 allows.
    """
    path = Path(path)
    width, height = size
    odd = width % 2 or height % 2
    source = "testsrc" if odd else "testsrc2"  # testsrc2 rounds odd sizes down to even
    video = ffmpeg.input(f"{source}=size={width}x{height}:rate={fps}:duration={seconds}", format="lavfi")
    streams = [video]
    kwargs: dict[str, object] = {"vcodec": "libx264", "pix_fmt": "yuv444p" if odd else "yuv420p", "g": 10}
    if audio:
        streams.append(ffmpeg.input(f"sine=frequency={freq}:sample_rate=44100:duration={seconds}", format="lavfi"))
        kwargs.update(acodec="aac")
    target = path if rotation is None else path.with_name(f".unrotated.{path.name}")
    _run(ffmpeg.output(*streams, str(target), **kwargs))
    if rotation is not None:
        # display_rotation is counter-clockwise, an input option, applied to a stream copy.
        rotated = ffmpeg.input(str(target), display_rotation=-rotation)
        _run(ffmpeg.output(rotated, str(path), c="copy"))
        target.unlink()
    return path


def make_vfr_video(
    path: str | Path, *, rates: tuple[int, ...] = (15, 30), seconds_each: float = 1.0, size: tuple[int, int] = (64, 48)
) -> Path:
    """A variable-frame-rate clip: one segment per rate in ``rates``, timestamps kept as they are."""
    path = Path(path)
    width, height = size
    parts = [
        ffmpeg.input(f"testsrc2=size={width}x{height}:rate={r}:duration={seconds_each}", format="lavfi") for r in rates
    ]
    joined = ffmpeg.concat(*parts, v=1, a=0)
    _run(joined.output(str(path), vcodec="libx264", pix_fmt="yuv420p", fps_mode="vfr"))
    return path


def make_image(path: str | Path, *, size: tuple[int, int] = (64, 48)) -> Path:
    """A still test-pattern image; the extension (.png, .jpg, .bmp, .webp) picks the format."""
    path = Path(path)
    width, height = size
    _run(ffmpeg.input(f"testsrc=size={width}x{height}:rate=1", format="lavfi").output(str(path), vframes=1))
    return path


def make_exif_jpeg(path: str | Path, *, orientation: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG as phones write them: pixels stored ``size`` = (width, height), with an EXIF
    Orientation tag (6: a viewer turns it 90° clockwise, 8: counter-clockwise, 3: 180°)."""
    path = make_image(Path(path), size=size)
    jpeg = path.read_bytes()
    # TIFF, little-endian: one IFD holding one entry, Orientation (0x0112), SHORT, count 1.
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    path.write_bytes(jpeg[:2] + app1 + jpeg[2:])  # right after the SOI marker
    return path


def make_gif(path: str | Path, *, seconds: float = 1.0, fps: int = 10, size: tuple[int, int] = (64, 48)) -> Path:
    """An animated GIF."""
    path = Path(path)
    width, height = size
    _run(ffmpeg.input(f"testsrc=size={width}x{height}:rate={fps}:duration={seconds}", format="lavfi").output(str(path)))
    return path


def make_tone(
    path: str | Path, *, seconds: float, freq: float = 440.0, sample_rate: int = 16000, channels: int = 1
) -> Path:
    """A sine tone at amplitude 1/8 (ffmpeg's ``sine`` default), the same in every channel;
    the extension picks the codec."""
    path = Path(path)
    tone = ffmpeg.input(f"sine=frequency={freq}:sample_rate={sample_rate}:duration={seconds}", format="lavfi")
    # Copy the channel at full level (ffmpeg's -ac would scale it by √½).
    pan = f"pan={_layout(channels)}|" + "|".join(f"c{i}=c0" for i in range(channels))
    _run(tone.output(str(path), af=pan, **_audio_codec(path)))
    return path


def make_excerpt(src: str | Path, path: str | Path, *, seconds: float, start: float = 0.0) -> Path:
    """``seconds`` of ``src`` (the bundled speech, say) from ``start``, re-encoded for
    ``path``'s extension. The bundled lessons open with 0.3 s of silence: an excerpt
    shorter than half a second that should be heard starts there."""
    subprocess.run([ffmpeg_exe(), *_QUIET, "-y", "-ss", str(start), "-i", str(src), "-t", str(seconds), str(path)],
                   check=True)  # fmt: skip
    return Path(path)


def make_interlaced(folder: Path, *, size: tuple[int, int] = (640, 360), seconds: float = 1.0) -> tuple[Path, Path]:
    """The portrait moving fast across a plain frame (8 px a field), shot at 50 fields a
    second: (the interlaced 25-frame H.264 a broadcast camera writes, field order TFF;
    the same at 25 progressive frames, each the first field's moment)."""
    width, height = size
    portrait = cv2.resize(cv2.imread(str(Path(__file__).resolve().parents[2] / "examples" / "presenter.jpg")),
                          (height // 2, height // 2))  # fmt: skip
    side, top = height // 2, height // 4
    frames = np.full((round(50 * seconds), height, width, 3), 200, np.uint8)
    for i, frame in enumerate(frames):
        x = min(8 * i, width - side)
        frame[top : top + side, x : x + side] = portrait
    shot = folder / "shot-50p.mp4"
    subprocess.run([ffmpeg_exe(), *_QUIET, "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
                    "-r", "50", "-i", "-", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(shot)],
                   input=frames.tobytes(), check=True)  # fmt: skip
    interlaced, progressive = folder / "interlaced.mp4", folder / "progressive.mp4"
    subprocess.run([ffmpeg_exe(), *_QUIET, "-y", "-i", str(shot), "-vf", "tinterlace=mode=interleave_top,setfield=tff",
                    "-c:v", "libx264", "-crf", "12", "-flags", "+ildct+ilme", "-x264-params", "tff=1",
                    "-pix_fmt", "yuv420p", str(interlaced)], check=True)  # fmt: skip
    subprocess.run([ffmpeg_exe(), *_QUIET, "-y", "-i", str(shot), "-vf", "fps=25", "-c:v", "libx264", "-crf", "12",
                    "-pix_fmt", "yuv420p", str(progressive)], check=True)  # fmt: skip
    return interlaced, progressive


def make_anamorphic(src: str | Path, path: str | Path, *, size: tuple[int, int], sample_aspect: str) -> Path:
    """``src`` squeezed into ``size`` stored pixels, declared ``sample_aspect`` ("64/45": a
    16:9 picture on 720×576, as PAL DV stores it)."""
    width, height = size
    subprocess.run([ffmpeg_exe(), *_QUIET, "-y", "-i", str(src), "-an", "-vf", f"scale={width}:{height},setsar={sample_aspect}",
                    "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(path)], check=True)  # fmt: skip
    return Path(path)


def make_heic(path: str | Path, picture: np.ndarray, *, tile: int | None = 512, orientation: int = 1) -> Path:
    """``picture`` (BGR) as a phone writes a photo: HEIC, in ``tile``-pixel tiles (None: one
    picture), to be shown turned as EXIF's ``orientation`` says (6: a quarter turn clockwise),
    which libheif stores as the picture's ``irot``."""
    import pillow_heif  # type: ignore[import-untyped]  # only for these tests
    from PIL import Image

    rgb = np.ascontiguousarray(picture[:, :, ::-1])
    exif = Image.Exif()
    exif[0x0112] = orientation
    heif = pillow_heif.from_bytes(mode="RGB", size=(rgb.shape[1], rgb.shape[0]), data=rgb.tobytes())
    heif.save(str(path), quality=95, exif=exif.tobytes(), **({"tile_size": tile} if tile else {}))
    return Path(path)


# How a phone or a camera would record an SDR picture in HDR or in BT.2020 (ffmpeg's names):
# its white at BT.2408's HDR reference white (203 cd/m²), 10-bit HEVC, tagged.
HDR_TRANSFERS = {"hlg": "arib-std-b67", "pq": "smpte2084", "bt2020": "bt2020-10", "p3": "bt709"}


def make_hdr(src: str | Path, path: str | Path, *, colour: str, seconds: float = 2.0, tag_matrix: bool = True) -> Path:
    """``seconds`` of the SDR video ``src`` as shot in ``colour`` ("hlg", "pq": HDR;
    "bt2020": SDR in BT.2020's gamut; "p3": SDR in Display P3's), BT.2020 primaries (P3's)
    and matrix, 10-bit HEVC (as a phone writes HDR). ``tag_matrix=False`` leaves the matrix
    undeclared."""
    transfer, primaries = HDR_TRANSFERS[colour], "smpte432" if colour == "p3" else "bt2020"
    to_linear = "zscale=tin=bt709:min=bt709:pin=bt709:rin=tv:t=linear:m=bt709:p=bt709:npl=203,format=gbrpf32le"
    shot = f"zscale=t={transfer}:p={primaries}:m=bt2020nc:r=tv:npl=203,format=yuv420p10le"
    matrix = "bt2020nc" if tag_matrix else "unknown"
    subprocess.run([ffmpeg_exe(), *_QUIET, "-y", "-i", str(src), "-t", str(seconds), "-an", "-vf", f"{to_linear},{shot}",
                    "-c:v", "libx265", "-preset", "ultrafast", "-crf", "10", "-x265-params", "log-level=error",
                    "-color_primaries", primaries, "-color_trc", transfer, "-colorspace", matrix, str(path)],
                   check=True)  # fmt: skip
    return Path(path)


def make_channels(
    path: str | Path, *, freqs: tuple[float, ...], layout: str, seconds: float, sample_rate: int = 48000
) -> Path:
    """One sine tone per channel, at amplitude 1/8: channel i of ``layout`` (FFmpeg's
    name: "stereo", "5.1", "5.1(side)") plays ``freqs[i]`` Hz; the extension picks the codec."""
    path = Path(path)
    # Endless tones, cut at the output: join would end with whichever tone ended first,
    # its last block or not (ffmpeg's threads decide).
    tones = [ffmpeg.input(f"sine=frequency={f}:sample_rate={sample_rate}", format="lavfi") for f in freqs]
    joined = ffmpeg.filter(tones, "join", inputs=len(freqs), channel_layout=layout)
    _run(joined.output(str(path), t=seconds, **_audio_codec(path)))
    return path


def make_silence(path: str | Path, *, seconds: float, sample_rate: int = 16000, channels: int = 1) -> Path:
    """Digital silence; the extension picks the codec."""
    path = Path(path)
    quiet = ffmpeg.input(f"anullsrc=channel_layout={_layout(channels)}:sample_rate={sample_rate}", format="lavfi")
    _run(quiet.output(str(path), t=seconds, **_audio_codec(path)))
    return path


def make_stereo(path: str | Path, *, seconds: float, left: float, right: float, sample_rate: int = 16000) -> Path:
    """A 16-bit stereo WAV whose channels are the constants ``left`` and ``right`` in [-1, 1]."""
    path = Path(path)
    n = int(round(seconds * sample_rate))
    samples = np.empty((n, 2), np.int16)  # (N, channels) interleaved
    samples[:, 0] = int(round(left * 32767))
    samples[:, 1] = int(round(right * 32767))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.tobytes())
    return path


def make_empty_wav(path: str | Path, *, sample_rate: int = 16000) -> Path:
    """A valid WAV header with no sample data."""
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
    return path


def make_corrupt(path: str | Path, *, size: int = 8192, seed: int = 0) -> Path:
    """Random bytes that no demuxer accepts, under whatever name (e.g. ``bad.mp4``)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def make_truncated_mp4(path: str | Path) -> Path:
    """An MP4 cut off before its index (``moov`` at the end, as a crashed recorder leaves it)."""
    path = Path(path)
    make_video(path, seconds=1.0, size=(64, 48))
    data = path.read_bytes()
    moov = data.find(b"moov")
    if moov < 0:
        raise RuntimeError(f"no moov atom in {path}")
    path.write_bytes(data[: min(moov - 4, len(data) // 2)])
    return path


def make_damaged_mp4(src: str | Path, path: str | Path, *, frames: int = 100, seed: int = 0) -> Path:
    """The first ``frames`` of the video ``src`` as H.264 (a keyframe every 10) in an MP4
    whose index is whole but whose picture data, from half way, is random bytes (a copy
    broken in transfer, a failing card): it probes as ``frames`` frames and decodes to about half."""
    path = Path(path)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-frames:v", str(frames), "-an", "-c:v",
                    "libx264", "-g", "10", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)],
                   check=True)  # fmt: skip
    data = bytearray(path.read_bytes())
    mdat = data.find(b"mdat")
    start = mdat + (len(data) - mdat) // 2
    data[start:] = np.random.default_rng(seed).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


# A file whose name holds this is one the ffmpeg of ``hanging_ffmpeg`` never gets through.
HANG_MARK = "hang-here"


def hanging_ffmpeg(folder: Path) -> Path:
    """An ffmpeg for ``HEYGEM_FFMPEG`` that is the real one, except on a command naming a
    file with ``HANG_MARK`` in its name: there it moves no byte for 61 s and exits (as one
    whose read is stuck on a dead network file system, or whose GPU stopped answering; a
    test whose stall guard failed ends with nothing read, not waiting for ever)."""
    script = Path(folder) / "ffmpeg"
    script.write_text(f'#!/bin/sh\ncase "$*" in *{HANG_MARK}*) exec sleep 61;; esac\nexec "{ffmpeg_exe()}" "$@"\n')
    script.chmod(0o755)
    return script


def children(running: Callable[[list[bytes]], bool]) -> list[int]:
    """The pids of this process's children whose command line (its words) ``running``
    accepts: its own children only (tests in other processes run theirs at the same time);
    one that has exited has no command line left."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            if ppid == os.getpid() and running((proc / "cmdline").read_bytes().split(b"\0")):
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return found


def sleepers() -> list[int]:
    """The pids of this process's hanging ffmpegs still there."""
    return children(lambda words: words[:2] == [b"sleep", b"61"])
