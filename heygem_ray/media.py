"""Video and audio in and out, through ffmpeg.

Everything here drives one ffmpeg binary (see :func:`ffmpeg_exe`) with argument lists built
by ``ffmpeg-python``; nothing needs ``ffprobe``. Probing parses what ``ffmpeg -i FILE``
prints on stderr and then decodes where an exact answer needs it.

* :func:`probe_video` / :func:`iter_frames`: a reference video (or still image) as a
  stream of (H, W, 3) uint8 BGR frames at a constant frame rate, rotated upright, cropped
  to even width and height.
* :func:`probe_audio` / :func:`load_audio` / :func:`decode_audio`: an audio track (of any
  file ffmpeg reads) as 16 kHz mono float32, in memory or in a raw file.
* :class:`VideoWriter`: BGR frames plus an audio track into an H.264 + AAC MP4.

Frames and audio are streamed through pipes, so memory stays flat however long the
media are (except :func:`read_video`, a helper for short clips). Files are opened with
the ``file:`` protocol, so a name containing ``:`` is never taken for a URL.

Errors: a missing file is ``InputError`` kind ``missing_file``; a file ffmpeg cannot read
``unreadable_media``; a file without the stream asked for ``no_video_stream`` /
``no_audio_stream``; audio that decodes to no samples ``empty_audio``; a failed encode
``EngineError`` kind ``encode``.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn, cast

import ffmpeg
import numpy as np

from heygem_ray.errors import EngineError, InputError, InternalError

__all__ = [
    "AudioInfo",
    "VideoInfo",
    "VideoWriter",
    "ffmpeg_exe",
    "iter_frames",
    "decode_audio",
    "load_audio",
    "probe_audio",
    "probe_video",
    "read_video",
]

IMAGE_FPS = Fraction(25)  # the rate a still image is given (ffmpeg's image2 default)
AAC_BITRATE = "128k"
AAC_SAMPLE_RATE = 48000  # every output gets 48 kHz AAC, whatever the input's rate
_STDERR_LINES = 20  # ffmpeg stderr lines kept for error messages
_READ_CHUNK = 1 << 20  # bytes per read from an audio pipe

# Codecs (as ffmpeg names them) and demuxers of still-image files. Such a stream that
# decodes to one frame is a still image; an animated GIF/WebP/APNG is a video.
_IMAGE_CODECS = frozenset(
    {"png", "apng", "mjpeg", "jpeg2000", "jpegls", "jpegxl", "bmp", "webp", "gif", "tiff", "ppm", "pgm", "qoi"}
)
_IMAGE_DEMUXERS = frozenset({"image2", "gif", "webp"})  # plus every "*_pipe" demuxer
# Standard frame rates a variable-rate file's average is snapped to (within 2 %).
_COMMON_RATES = tuple(
    Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "50", "60000/1001", "60")
)
_NTSC_BASES = (24, 30, 48, 60, 120, 240)  # N*1000/1001 is printed as e.g. "23.98", "29.97"
# Channel layouts ffmpeg names by word (numbered ones like "5.1" are counted digit by digit).
_NAMED_LAYOUTS = {
    "mono": 1, "stereo": 2, "downmix": 2, "binaural": 2, "quad": 4,
    "hexagonal": 6, "octagonal": 8, "cube": 8, "hexadecagonal": 16,
}  # fmt: skip


# --------------------------------------------------------------------------- the binary


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$HEYGEM_FFMPEG``, else ``ffmpeg`` on PATH, else imageio-ffmpeg's.

    Looked up once per process (later changes to the environment are not seen).
    """
    configured = os.environ.get("HEYGEM_FFMPEG")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise InputError(
                f"HEYGEM_FFMPEG={configured!r} is not an executable file; "
                "point it at an ffmpeg binary or unset it to use the bundled one",
                kind="ffmpeg_missing",
            )
        return configured
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg  # only needed without a system ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`iter_frames` will yield for a video or still image.

    ``width``/``height`` are those of the yielded frames: after rotation, cropped down to
    even (the last column/row dropped). ``frames`` is exact: :func:`probe_video` counts
    them by decoding the file once through the same filters :func:`iter_frames` uses.
    """

    path: Path
    width: int  # pixels, of the yielded frames (even)
    height: int
    fps: Fraction  # constant output rate, e.g. 30000/1001 for "29.97"; 25 for a still image
    frames: int  # number of frames iter_frames yields (1 for a still image)
    duration: float  # seconds: frames / fps (0.0 for a still image)
    rotation: int  # degrees clockwise ffmpeg turns the stored frames to show them: 0, 90, 180, 270
    #   (from the stream's display matrix; a photo's EXIF orientation is applied too, reported as 0)
    is_image: bool
    source_width: int  # pixels, as stored: before rotation and crop
    source_height: int
    video_stream: int = 0  # which video stream of the file (ffmpeg's "0:v:N")


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a file, measured by decoding it."""

    path: Path
    duration: float  # seconds of decoded audio (samples / sample_rate)
    sample_rate: int  # Hz, as decoded
    channels: int


# --------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class _Stream:
    """One stream line of ``ffmpeg -i`` output."""

    kind: str  # "video", "audio", "subtitle", "data", "attachment"
    type_index: int  # N of "0:v:N" / "0:a:N": its position among streams of its kind
    codec: str
    line: str
    rotation: float | None  # the display matrix angle ffmpeg prints (counter-clockwise), if any


@dataclass(frozen=True)
class _Header:
    demuxer: str  # e.g. "mov,mp4,m4a,3gp,3g2,mj2", "image2", "png_pipe", "wav"
    streams: tuple[_Stream, ...]

    def first(self, kind: str) -> _Stream | None:
        return next((s for s in self.streams if s.kind == kind), None)

    def contents(self) -> str:
        kinds = sorted({s.kind for s in self.streams})
        return ", ".join(kinds) if kinds else "no streams"


_INPUT_RE = re.compile(r"^Input #0, (.+?), from ")
_STREAM_RE = re.compile(r"^\s*Stream #0:\d+\S*: (\w+): (\w+)(.*)$")
_ROTATION_RE = re.compile(r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)
_SIZE_RE = re.compile(r"\b([1-9]\d*)x([1-9]\d*)\b")
_RATE_RE = r"(\d+(?:\.\d+)?)(k?) {}\b"
_FRAME_RE = re.compile(r"frame=\s*(\d+)")


def require_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path, or an InputError naming it (missing, or a folder) and the fix."""
    p = Path(path)
    if p.is_dir():
        raise InputError(
            f"{what} {p} is a directory, not a file; give the path of the {what} file itself",
            kind="missing_file",
        )
    if not p.is_file():
        hint = "" if p.is_absolute() else f" (relative paths are resolved against {Path.cwd()})"
        raise InputError(f"{what} {p} does not exist; check the path{hint}", kind="missing_file")
    return p


def _url(path: Path) -> str:
    """``file:`` URL for ffmpeg, so names with ``:`` are not taken for protocols."""
    return f"file:{path.absolute()}"


def _run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run a short ffmpeg command to completion, capturing its output."""
    try:
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except OSError as exc:
        raise EngineError(f"could not run ffmpeg ({args[0]}): {exc}", kind="ffmpeg_missing") from exc


def _tail(stderr: str | bytes, lines: int = 3) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def _read_header(path: Path, what: str) -> _Header:
    """Parse ``ffmpeg -i FILE`` (which exits 1: no output given) into streams."""
    proc = _run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", _url(path)])
    text = proc.stderr.decode(errors="replace")
    demuxer: str | None = None
    streams: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(("Output #", "Stream mapping")):
            break
        if demuxer is None:
            if m := _INPUT_RE.match(line):
                demuxer = m.group(1)
            continue
        if m := _STREAM_RE.match(line):
            kind = m.group(1).lower()
            streams.append(
                {"kind": kind, "type_index": counts.get(kind, 0), "codec": m.group(2), "line": line, "rotation": None}
            )
            counts[kind] = counts.get(kind, 0) + 1
        elif (m := _ROTATION_RE.search(line)) and streams:
            streams[-1]["rotation"] = float(m.group(1))
    if demuxer is None:
        raise InputError(
            f"{what} {path} cannot be read as media ({_tail(text, 1) or 'ffmpeg gave no reason'}); "
            "check that it is a complete, uncorrupted audio/video file (re-export or re-download it)",
            kind="unreadable_media",
        )
    return _Header(demuxer, tuple(_Stream(**s) for s in streams))


def _rate_token(line: str, unit: str) -> Fraction | None:
    """The rate ffmpeg prints before ``unit`` ("fps", "tbr"), NTSC rates made exact."""
    m = re.search(_RATE_RE.format(unit), line)
    if m is None:
        return None
    value = Fraction(m.group(1)) * (1000 if m.group(2) else 1)
    if "." in m.group(1):  # printed with 2 decimals: 29.97 is 30000/1001, 23.98 is 24000/1001
        for base in _NTSC_BASES:
            ntsc = Fraction(base * 1000, 1001)
            if round(float(ntsc), 2) == float(m.group(1)):
                return ntsc
    return value if value > 0 else None


def _choose_fps(avg: Fraction | None, tbr: Fraction | None) -> Fraction:
    """The constant rate to decode at, from ffmpeg's average rate and its ``tbr`` guess.

    Constant-rate files print the same value for both. A variable-rate file's average is
    snapped to a standard rate when within 2 % (a phone's 29.8 → 30000/1001); otherwise its
    nominal ``tbr`` is used when plausible, so no motion is dropped.
    """
    if avg is not None and tbr is not None and abs(avg - tbr) <= tbr / 1000:
        return avg
    if avg is not None:
        near = min(_COMMON_RATES, key=lambda r: abs(r - avg))
        if abs(near - avg) <= near / 50:
            return near
    if tbr is not None and 1 <= tbr <= 120 and (avg is None or tbr >= avg):
        return tbr
    if avg is not None:
        return avg.limit_denominator(1001)
    return IMAGE_FPS


def _rotation_cw(angle: float | None) -> int:
    """Clockwise degrees ffmpeg applies for a display-matrix angle (printed counter-clockwise)."""
    if angle is None:
        return 0
    return int(round(-angle / 90.0)) * 90 % 360


def _video_filters(stream: Any, fps: Fraction | None) -> Any:
    """Constant rate ``fps`` (duplicating/dropping frames of variable-rate input; None for a
    still image, which stays one frame), then cropped to even width and height.

    ffmpeg has already turned the frames upright (autorotate) before these filters.
    """
    if fps is not None:
        stream = stream.filter("fps", fps=str(fps))
    return stream.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2", 0, 0)


def _count_frames(path: Path, stream: _Stream, fps: Fraction | None) -> tuple[int, int, int]:
    """(frames, width, height) that :func:`iter_frames` will yield, found by decoding the
    file through the same filters into ffmpeg's ``null`` muxer."""
    decoded = _video_filters(ffmpeg.input(_url(path))[f"v:{stream.type_index}"], fps)
    args = (
        decoded.output("-", format="null", fps_mode="passthrough")
        .global_args("-nostdin", "-hide_banner", "-nostats")
        .compile(cmd=ffmpeg_exe())
    )
    proc = _run(args)
    text = proc.stderr.decode(errors="replace")
    counts = _FRAME_RE.findall(text)  # the last one is the final report
    output_stream = text.partition("Output #0")[2].partition("Stream #0:0")[2]
    size = _SIZE_RE.search(output_stream)
    if "partial file" in text:
        raise InputError(
            f"reference {path} is truncated (the file ends before its last frame: "
            f"{_tail(text, 1)}); copy or export it again in full",
            kind="unreadable_media",
        )
    if proc.returncode != 0 or not counts or int(counts[-1]) == 0 or size is None:
        raise InputError(
            f"reference {path} could not be decoded ({_tail(text) or 'no frames'}); "
            "re-export it (e.g. as H.264 MP4) or give a photo instead",
            kind="unreadable_media",
        )
    return int(counts[-1]), int(size.group(1)), int(size.group(2))


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Describe a reference video or still image as :func:`iter_frames` will yield it.

    Decodes the file once (``-f null``, no pixels cross a pipe) to count the frames and
    read their size after rotation and crop, so the numbers are exact. A long reference
    takes a few seconds; results are cached per (path, size, mtime) within a process.
    ``path`` in the result is absolute.
    """
    p = require_file(path, "reference").absolute()
    st = p.stat()
    return _probe_video(p, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _probe_video(path: Path, _size: int, _mtime_ns: int) -> VideoInfo:
    header = _read_header(path, "reference")
    stream = next((s for s in header.streams if s.kind == "video" and "(attached pic)" not in s.line), None)
    if stream is None:
        raise InputError(
            f"reference {path} has no video stream (it holds: {header.contents()}); "
            "give a video or a photo of the presenter as the reference",
            kind="no_video_stream",
        )
    size = _SIZE_RE.search(stream.line)
    if size is None:
        raise InternalError(f"could not find the frame size of {path} in ffmpeg's line {stream.line.strip()!r}")
    looks_like_image = (
        stream.codec in _IMAGE_CODECS or header.demuxer in _IMAGE_DEMUXERS or header.demuxer.endswith("_pipe")
    )
    is_image = False
    if looks_like_image:  # one picture, or an animation (GIF, APNG, WebP)?
        frames, width, height = _count_frames(path, stream, None)
        is_image = frames == 1
    if is_image:
        fps = IMAGE_FPS
    else:
        fps = _choose_fps(_rate_token(stream.line, "fps"), _rate_token(stream.line, "tbr"))
        frames, width, height = _count_frames(path, stream, fps)
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        fps=fps,
        frames=frames,
        duration=0.0 if is_image else float(frames / fps),
        rotation=_rotation_cw(stream.rotation),
        is_image=is_image,
        source_width=int(size.group(1)),
        source_height=int(size.group(2)),
        video_stream=stream.type_index,
    )


def _audio_stream(path: Path) -> _Stream:
    """The first audio stream, after the checks every audio reader makes."""
    if path.stat().st_size == 0:
        raise InputError(
            f"audio {path} is an empty file (0 bytes); re-export or re-download it", kind="empty_audio"
        )
    header = _read_header(path, "audio")
    stream = header.first("audio")
    if stream is None:
        raise InputError(
            f"audio {path} has no audio stream (it holds: {header.contents()}); "
            "give a file with a sound track (wav, mp3, m4a, or a video with sound)",
            kind="no_audio_stream",
        )
    return stream


def _empty_audio(path: Path) -> InputError:
    return InputError(
        f"audio {path} decodes to no samples (zero length); re-export it with the intended sound",
        kind="empty_audio",
    )


def probe_audio(path: str | os.PathLike[str]) -> AudioInfo:
    """Sample rate, channels and exact duration of the first audio stream, by decoding it.

    The decode goes to ffmpeg's ``framecrc`` (one small line per packet of unsigned
    8-bit PCM), so nothing large crosses the pipe: total samples are the sum of packet
    durations and channels are bytes / samples.
    """
    p = require_file(path, "audio")
    stream = _audio_stream(p)
    args = (
        ffmpeg.input(_url(p))[f"a:{stream.type_index}"]
        .output("-", format="framecrc", acodec="pcm_u8")
        .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")
        .compile(cmd=ffmpeg_exe())
    )
    proc = _run(args)
    if proc.returncode != 0:
        raise InputError(
            f"audio {p} could not be decoded ({_tail(proc.stderr)}); re-export it (e.g. as WAV or MP3)",
            kind="unreadable_media",
        )
    sample_rate, samples, nbytes = 0, 0, 0
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("#sample_rate"):
            sample_rate = int(line.rsplit(":", 1)[1])
        elif line and not line.startswith("#"):
            # stream, dts, pts, duration (samples), size (bytes), crc
            fields = [f.strip() for f in line.split(",")]
            samples += int(fields[3])
            nbytes += int(fields[4])
    if samples == 0:
        raise _empty_audio(p)
    if sample_rate <= 0 or nbytes % samples:
        raise InternalError(f"unexpected framecrc output from ffmpeg for {p}: rate {sample_rate}, {nbytes} B / {samples}")
    return AudioInfo(path=p, duration=samples / sample_rate, sample_rate=sample_rate, channels=nbytes // samples)


# --------------------------------------------------------------------------- streaming


class _Ffmpeg:
    """A running ffmpeg whose stderr a thread drains (so no pipe fills up and blocks it),
    keeping the last lines for error messages. :meth:`close` kills it if still running
    and reaps it."""

    def __init__(self, args: list[str], *, stdin: bool = False, stdout: bool = False):
        self.args = args
        try:
            self.popen = subprocess.Popen(
                args,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise EngineError(f"could not run ffmpeg ({args[0]}): {exc}", kind="ffmpeg_missing") from exc
        self._lines: deque[str] = deque(maxlen=_STDERR_LINES)
        self._drainer = threading.Thread(target=self._drain, name="ffmpeg-stderr", daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        for raw in self.popen.stderr or ():
            line = raw.decode(errors="replace").strip()
            if line:
                self._lines.append(line)

    @property
    def stdin(self) -> IO[bytes]:
        if self.popen.stdin is None:
            raise InternalError("this ffmpeg was started without a stdin pipe")
        return self.popen.stdin

    @property
    def stdout(self) -> io.BufferedReader:
        if self.popen.stdout is None:
            raise InternalError("this ffmpeg was started without a stdout pipe")
        return cast(io.BufferedReader, self.popen.stdout)  # Popen's default bufsize=-1 gives one

    def stderr_tail(self, lines: int = 5) -> str:
        return " | ".join(list(self._lines)[-lines:]) or "no message"

    def wait(self) -> int:
        """Close our ends of the pipes, wait for ffmpeg to exit, return its exit status."""
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:  # ffmpeg already exited: its status says why
                    pass
        rc = self.popen.wait()
        self._drainer.join()
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        return rc

    def close(self) -> None:
        """Kill ffmpeg if it is still running, and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.wait()


def iter_frames(info: VideoInfo) -> Generator[np.ndarray, None, None]:
    """Yield the frames of ``info.path`` one at a time: (H, W, 3) uint8 BGR.

    Constant rate ``info.fps`` (variable-rate input is resampled by duplicating or
    dropping frames), upright, cropped to ``info.width`` × ``info.height``; a still image
    yields one frame. Each frame is a new, writable array. ffmpeg is killed and reaped if
    the consumer stops early.
    """
    fps = None if info.is_image else info.fps
    decoded = _video_filters(ffmpeg.input(_url(info.path))[f"v:{info.video_stream}"], fps)
    # A guard for streams that change size midway: every frame comes out width × height.
    decoded = decoded.filter("scale", info.width, info.height)
    args = (
        decoded.output("pipe:", format="rawvideo", pix_fmt="bgr24", fps_mode="passthrough")
        .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")
        .compile(cmd=ffmpeg_exe())
    )
    frame_bytes = info.width * info.height * 3
    proc = _Ffmpeg(args, stdout=True)
    try:
        while True:
            frame = np.empty((info.height, info.width, 3), np.uint8)  # (H, W, 3) BGR
            buffer = frame.data.cast("B")
            got = proc.stdout.readinto(buffer)
            while got and got < frame_bytes:  # in case of a short read
                more = proc.stdout.readinto(buffer[got:])
                if not more:
                    break
                got += more
            if not got:
                break
            if got < frame_bytes:
                raise InputError(
                    f"reference {info.path}: the decoder stopped in the middle of a frame "
                    f"({proc.stderr_tail()}); re-export the video",
                    kind="unreadable_media",
                )
            yield frame
        rc = proc.wait()
        if rc != 0:
            raise InputError(
                f"reference {info.path} could not be decoded ({proc.stderr_tail()}); "
                "re-export it (e.g. as H.264 MP4)",
                kind="unreadable_media",
            )
    finally:
        proc.close()


def _layout_channels(stream_line: str) -> int | None:
    """Channel count from the layout ffmpeg prints ("mono", "stereo", "5.1(side)",
    "7.1.4", "3 channels"), or None if the name is not one we know."""
    m = re.search(r"\b\d+ Hz, ([^,]+)", stream_line)
    if m is None:
        return None
    name = m.group(1).strip()
    if n := re.match(r"(\d+) channels\b", name):
        return int(n.group(1))
    name = name.split("(", 1)[0]
    if re.fullmatch(r"\d+(\.\d+){1,2}", name):  # "5.1" is 6 channels, "7.1.4" is 12
        return sum(int(d) for d in name.split("."))
    return _NAMED_LAYOUTS.get(name)


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream of ``path``: (N,) float32 mono in [-1, 1] at ``sample_rate`` Hz.

    Decoded and resampled by ffmpeg, streamed from its pipe; channels are then averaged
    (as librosa's ``to_mono`` does: ffmpeg's own ``-ac 1`` would scale stereo by
    √½ per channel). Silence is valid; no samples is an ``empty_audio`` error.
    """
    parts = list(_audio_blocks(path, sample_rate))  # (n,) float32 mono pieces
    return np.concatenate(parts)


def decode_audio(path: str | os.PathLike[str], dst: Path, sample_rate: int = 16000) -> int:
    """As :func:`load_audio`, but written to ``dst`` as raw little-endian float32 (read
    back with ``features.Pcm.from_file``), holding one pipe read in memory at a time.
    Returns the number of samples."""
    samples = 0
    with open(dst, "wb") as f:
        for block in _audio_blocks(path, sample_rate):
            block.astype("<f4", copy=False).tofile(f)
            samples += len(block)
    return samples


def _audio_blocks(path: str | os.PathLike[str], sample_rate: int) -> Generator[np.ndarray, None, None]:
    """The decoded audio of ``path`` as consecutive (n,) float32 mono blocks in [-1, 1];
    raises ``empty_audio`` when there are none, ``unreadable_media`` when ffmpeg fails."""
    p = require_file(path, "audio")
    stream = _audio_stream(p)
    channels = _layout_channels(stream.line)
    # An unknown layout is first mixed down to stereo by ffmpeg's standard matrix.
    layout = {} if channels is not None else {"ac": 2}
    channels = channels or 2
    args = (
        ffmpeg.input(_url(p))[f"a:{stream.type_index}"]
        .output("pipe:", format="f32le", acodec="pcm_f32le", ar=sample_rate, **layout)
        .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")
        .compile(cmd=ffmpeg_exe())
    )
    frame_bytes = 4 * channels  # one float32 per channel per sample
    proc = _Ffmpeg(args, stdout=True)
    samples = 0
    try:
        while chunk := proc.stdout.read(_READ_CHUNK // frame_bytes * frame_bytes):
            usable = len(chunk) // frame_bytes * frame_bytes  # a full read is whole samples
            block = np.frombuffer(chunk[:usable], "<f4").reshape(-1, channels).mean(axis=1, dtype=np.float32)
            np.clip(block, -1.0, 1.0, out=block)
            samples += len(block)
            yield block
        rc = proc.wait()
    finally:
        proc.close()
    if rc != 0:
        raise InputError(
            f"audio {p} could not be decoded ({proc.stderr_tail()}); re-export it (e.g. as WAV or MP3)",
            kind="unreadable_media",
        )
    if samples == 0:
        raise _empty_audio(p)


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, Fraction]:
    """All frames of a video, (N, H, W, 3) uint8 BGR, and its fps. For short clips only:
    it holds the whole video in memory (use :func:`iter_frames` for anything else)."""
    info = probe_video(path)
    frames = list(iter_frames(info))
    if not frames:
        return np.zeros((0, info.height, info.width, 3), np.uint8), info.fps
    return np.stack(frames), info.fps


# --------------------------------------------------------------------------- writing


class VideoWriter:
    """Encode BGR frames and an audio track into an MP4: H.264 yuv420p (BT.709) + AAC.

    ::

        with VideoWriter(out, width=w, height=h, fps=fps, audio=wav, duration=secs) as writer:
            for frame in frames:
                writer.write(frame)  # (H, W, 3) or (N, H, W, 3) uint8 BGR

    The audio is the first audio stream of ``audio`` (any file ffmpeg reads, a video
    too), cut to ``duration`` seconds, or padded with silence up to it. The file is
    written with ``+faststart`` (index before the data, for streaming). If the block
    raises, or ffmpeg fails, ffmpeg is killed and the partial file deleted; an ffmpeg
    failure raises ``EngineError`` kind ``encode`` with its last messages.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        fps: Fraction,
        audio: Path,
        duration: float,
        crf: int = 18,
        preset: str = "veryfast",
    ):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise InternalError(f"VideoWriter needs even, positive width and height for yuv420p, got {width}x{height}")
        if duration <= 0 or fps <= 0:
            raise InternalError(f"VideoWriter needs a positive duration and fps, got {duration} s at {fps}")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, Fraction(fps)
        self.audio = require_file(audio, "audio")
        self.duration = float(duration)
        self.crf, self.preset = crf, preset
        self.frames_written = 0
        self._proc: _Ffmpeg | None = None

    def _args(self) -> list[str]:
        video = ffmpeg.input(
            "pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{self.width}x{self.height}", framerate=str(self.fps)
        )
        sound = ffmpeg.input(_url(self.audio))["a:0"]
        d = f"{self.duration:.6f}"
        out = ffmpeg.output(
            video.video,
            sound,
            _url(self.path),
            format="mp4",
            vcodec="libx264",
            preset=self.preset,
            crf=self.crf,
            # BGR → BT.709 limited-range YUV, tagged as such so players convert back alike.
            vf="scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
            colorspace="bt709",
            color_primaries="bt709",
            color_trc="bt709",
            color_range="tv",
            af=f"apad=whole_dur={d},atrim=end={d}",
            acodec="aac",
            ar=AAC_SAMPLE_RATE,
            movflags="+faststart",
            **{"b:a": AAC_BITRATE},
        )
        return out.overwrite_output().global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error").compile(
            cmd=ffmpeg_exe()
        )

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._proc = _Ffmpeg(self._args(), stdin=True)
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or a batch (N, H, W, 3), uint8 BGR."""
        if self._proc is None:
            raise InternalError("VideoWriter.write called outside its `with` block")
        batch = frames[None] if frames.ndim == 3 else frames
        if batch.ndim != 4 or batch.shape[1:] != (self.height, self.width, 3) or batch.dtype != np.uint8:
            raise InternalError(
                f"VideoWriter for {self.path} takes uint8 BGR frames of shape ({self.height}, {self.width}, 3), "
                f"got {frames.dtype} {frames.shape}"
            )
        try:
            self._proc.stdin.write(np.ascontiguousarray(batch).data)
        except BrokenPipeError:
            proc, self._proc = self._proc, None
            self._fail(proc, f"ffmpeg stopped accepting frames after {self.frames_written}")
        self.frames_written += len(batch)

    def _fail(self, proc: _Ffmpeg, what: str) -> NoReturn:
        proc.close()
        self.path.unlink(missing_ok=True)
        raise EngineError(
            f"encoding {self.path} failed: {what} ({proc.stderr_tail()}); "
            "check free disk space and that the audio file plays",
            kind="encode",
        )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if exc_type is not None:
            proc.close()
            self.path.unlink(missing_ok=True)
            return  # the exception propagates
        rc = proc.wait()
        if rc != 0 or not self.path.is_file():
            self._fail(proc, f"ffmpeg exited with status {rc} after {self.frames_written} frames")
