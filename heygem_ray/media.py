"""Video and audio in and out: PyAV reads what a file holds, an ffmpeg binary moves it.

Probing reads stream properties from PyAV's container, stream, packet and frame objects
(FFmpeg's own structures, never text printed for people) and decodes only where an exact
answer needs it. Decoding and encoding drive one ffmpeg binary (see :func:`ffmpeg_exe`)
through pipes, with argument lists built by ``ffmpeg-python``; nothing needs ``ffprobe``.

* :func:`probe_video` / :func:`iter_frames`: a reference video (or still image) as a
  stream of (H, W, 3) uint8 BGR frames at a constant frame rate, rotated upright, cropped
  to even width and height.
* :func:`probe_audio` / :func:`load_audio` / :func:`decode_audio`: an audio track (of any
  file ffmpeg reads) as 16 kHz mono float32, in memory or in a raw file.
* :class:`VideoWriter`: BGR frames plus an audio track into an H.264 + AAC MP4;
  :func:`indexed_frames` reads how many frames a finished MP4 holds from its index.

Frames and audio are streamed through pipes, so memory stays flat however long the
media are (except :func:`read_video`, a helper for short clips). Files are opened with
the ``file:`` protocol, so a name containing ``:`` is never taken for a URL.

Errors: a missing file is ``InputError`` kind ``missing_file``; a file ffmpeg cannot read,
or one cut short (its index lists data past its end), ``unreadable_media``; a file without
the stream asked for ``no_video_stream`` / ``no_audio_stream``; audio that decodes to no
samples ``empty_audio``; a failed encode ``EngineError`` kind ``encode``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import shutil
import struct
import subprocess
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn, cast

import av
import av.audio.stream
import av.container
import av.stream
import av.video.stream
import ffmpeg
import numpy as np

from heygem_ray.errors import EngineError, InputError, InternalError, storage_error_in, storage_errors

__all__ = [
    "AudioInfo",
    "VideoInfo",
    "VideoWriter",
    "ffmpeg_exe",
    "indexed_frames",
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

# Codecs (as FFmpeg names them) and demuxers of still-image files. Such a stream that
# decodes to one frame is a still image; an animated GIF/WebP/APNG is a video.
_IMAGE_CODECS = frozenset(
    {"png", "apng", "mjpeg", "jpeg2000", "jpegls", "jpegxl", "bmp", "webp", "gif", "tiff", "ppm", "pgm", "qoi"}
)
_IMAGE_DEMUXERS = frozenset({"image2", "gif", "webp"})  # plus every "*_pipe" demuxer
# Standard frame rates a variable-rate file's average is snapped to (within 2 %).
_COMMON_RATES = tuple(
    Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "50", "60000/1001", "60")
)


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
    even (the last column/row dropped). ``frames`` is exact: read from the packets of a
    constant-rate stream, else counted by decoding the file once through the same filters
    :func:`iter_frames` uses (see :func:`probe_video`).
    """

    path: Path
    width: int  # pixels, of the yielded frames (even)
    height: int
    fps: Fraction  # constant output rate, e.g. 30000/1001 for "29.97"; 25 for a still image
    frames: int  # number of frames iter_frames yields (1 for a still image)
    duration: float  # seconds: frames / fps (0.0 for a still image)
    rotation: int  # degrees clockwise ffmpeg turns the stored frames to show them: 0, 90, 180, 270
    #   (the display matrix of the stream, or of a photo's EXIF orientation)
    is_image: bool
    source_width: int  # pixels, as stored: before rotation and crop
    source_height: int
    video_stream: int = 0  # which video stream of the file (ffmpeg's "0:v:N")


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a file: its layout as the stream declares it, its length
    measured by decoding it."""

    path: Path
    duration: float  # seconds of decoded audio (samples / sample_rate)
    sample_rate: int  # Hz, as decoded
    channels: int
    layout: str = ""  # FFmpeg's name for the channel layout: "mono", "stereo", "5.1(side)", "3 channels"


# --------------------------------------------------------------------------- probing


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


# --------------------------------------------------------------------------- limits
# A file over one of ``config.InputLimits`` is ``too_large``: the message names the file,
# what it declares or holds, the limit and the option that raises it.


def _clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} million pixels"


def _too_large(what: str, path: Path, found: str, limit: str, option: str, fix: str) -> InputError:
    return InputError(
        f"{what} {path} {found}, above the limit of {limit} ({option}); {fix}, or raise the limit",
        kind="too_large",
    )


def check_reference_size(path: Path, width: int, height: int, *, max_pixels: int | None) -> None:
    """Raise ``too_large`` when a reference's frames (``width`` × ``height`` as stored)
    hold more than ``max_pixels`` pixels."""
    if max_pixels is not None and width * height > max_pixels:
        raise _too_large(
            "reference", path, f"is {width}×{height} pixels ({_megapixels(width * height)})",
            _megapixels(max_pixels), f"--max-reference-pixels {max_pixels}",
            f"scale it down first (e.g. ffmpeg -i {path.name} -vf scale=3840:-2 smaller{path.suffix})",
        )  # fmt: skip


def _too_many_frames(path: Path, found: str, max_frames: int) -> InputError:
    return _too_large(
        "reference", path, found, f"{max_frames:,} frames", f"--max-reference-frames {max_frames}",
        f"cut out the part to use (e.g. ffmpeg -i {path.name} -t 60 -c copy short{path.suffix})",
    )  # fmt: skip


def check_reference_frames(path: Path, frames: int, *, max_frames: int | None) -> None:
    """Raise ``too_large`` when a reference has more than ``max_frames`` frames."""
    if max_frames is not None and frames > max_frames:
        raise _too_many_frames(path, f"has {frames:,} frames", max_frames)


def _too_long(path: Path, found: str, max_seconds: float) -> InputError:
    return _too_large(
        "audio", path, found, _clock(max_seconds), f"--max-audio-seconds {max_seconds:g}",
        "split it into shorter files",
    )  # fmt: skip


def _decoder_limit(max_pixels: int | None) -> dict[str, int]:
    """ffmpeg input options that make its decoder refuse pictures over ``max_pixels``."""
    return {} if max_pixels is None else {"max_pixels": max_pixels}


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0 … SOF15), which carry the picture's size; the other
# codes in that range are tables (DHT 0xC4, DAC 0xCC) and a reserved one (JPG 0xC8).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SEGMENTS = 64  # markers read before giving up (EXIF, ICC profiles, tables come first)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG file's header declares, read without decoding (FFmpeg
    learns a still image's size by decoding it, which a pixel limit refuses); None for
    any other file, or one whose header cannot be read."""
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":  # IHDR is the first chunk
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if head[:2] != b"\xff\xd8":  # SOI
            return None
        f.seek(2)
        for _ in range(_JPEG_SEGMENTS):
            marker = f.read(4)  # 0xFF, code, segment length (2 bytes, counting itself)
            while marker[:2] == b"\xff\xff":  # fill bytes before a marker
                marker = marker[1:] + f.read(1)
            if len(marker) < 4 or marker[0] != 0xFF:
                return None
            code, length = marker[1], struct.unpack(">H", marker[2:4])[0]
            if code in _JPEG_SOF:
                sof = f.read(5)  # precision (1), height (2), width (2)
                if len(sof) < 5:
                    return None
                height, width = struct.unpack(">HH", sof[1:5])
                return width, height
            f.seek(length - 2, os.SEEK_CUR)
    return None


# ISO base media files (MP4, MOV, M4A, 3GP): FFmpeg's demuxer allocates an index entry
# (and timing data: about 40 bytes in all) for every sample its tables list when it opens
# the file, and a sample table of constant-size samples is 20 bytes whatever the count: a
# file of 2 kB can make it allocate gigabytes. These counts are read first, box by box.
_ISO_TOP = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx",
                      b"moof", b"mfra", b"meta", b"prft", b"emsg"})  # fmt: skip
_ISO_BOXES = 1_000_000  # boxes read before giving up (the demuxer is then left to judge)


def _iso_boxes(f: IO[bytes], start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload offset, end offset) of the boxes in bytes [start, end) of ``f``;
    stops at the first that does not fit."""
    for _ in range(_ISO_BOXES):
        if start + 8 > end:
            return
        f.seek(start)
        size, kind = struct.unpack(">I4s", f.read(8))
        payload = start + 8
        if size == 1:  # a 64-bit size follows
            if start + 16 > end:
                return
            size = struct.unpack(">Q", f.read(8))[0]
            payload += 8
        elif size == 0:  # to the end
            size = end - start
        if size < payload - start or start + size > end:
            return
        yield kind, payload, start + size
        start += size


def _iso_find(f: IO[bytes], start: int, end: int, path: tuple[bytes, ...]) -> list[tuple[int, int]]:
    """(payload offset, end offset) of the boxes at ``path`` (types, outermost first)
    inside bytes [start, end)."""
    found = []
    for kind, payload, box_end in list(_iso_boxes(f, start, end)):
        if kind == path[0]:
            found += [(payload, box_end)] if len(path) == 1 else _iso_find(f, payload, box_end, path[1:])
    return found


def _iso_u32(f: IO[bytes], offset: int) -> int:
    f.seek(offset)
    data = f.read(4)
    return struct.unpack(">I", data)[0] if len(data) == 4 else 0


def _iso_video_samples(path: Path) -> int | None:
    """The most samples (frames) any video track of an ISO base media file lists, in its
    sample tables plus its fragments' runs, read without FFmpeg; None for other files."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        top = list(_iso_boxes(f, 0, end))
        if not top or top[0][0] not in _ISO_TOP:
            return None
        video: set[int] = set()  # track ids of video tracks
        samples: dict[int, int] = defaultdict(int)  # track id → samples listed
        for kind, payload, box_end in top:
            if kind == b"moov":
                for trak, trak_end in _iso_find(f, payload, box_end, (b"trak",)):
                    # tkhd: version (1), flags (3), two times (4 bytes each, 8 in version 1), track id
                    track = next(
                        (_iso_u32(f, tkhd + (20 if _iso_u32(f, tkhd) >> 24 == 1 else 12))
                         for tkhd, _ in _iso_find(f, trak, trak_end, (b"tkhd",))), 0)  # fmt: skip
                    # hdlr: version and flags (4), pre-defined (4), handler type ("vide", "soun", …)
                    if any(_iso_u32(f, h + 8) == _VIDE for h, _ in _iso_find(f, trak, trak_end, (b"mdia", b"hdlr"))):
                        video.add(track)
                    for table in (b"stsz", b"stz2"):  # version and flags (4), sample size (or field size), count
                        for box, _ in _iso_find(f, trak, trak_end, (b"mdia", b"minf", b"stbl", table)):
                            samples[track] += _iso_u32(f, box + 8)
            elif kind == b"moof":
                for traf, traf_end in _iso_find(f, payload, box_end, (b"traf",)):
                    # tfhd: version and flags (4), track id; trun: version and flags (4), sample count
                    track = next((_iso_u32(f, t + 4) for t, _ in _iso_find(f, traf, traf_end, (b"tfhd",))), 0)
                    for trun, _ in _iso_find(f, traf, traf_end, (b"trun",)):
                        samples[track] += _iso_u32(f, trun + 4)
        return max((n for track, n in samples.items() if track in video), default=0)


_VIDE = struct.unpack(">I", b"vide")[0]


def _url(path: Path) -> str:
    """``file:`` URL for FFmpeg, so names with ``:`` are not taken for protocols."""
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


def _reason(exc: av.FFmpegError) -> str:
    """FFmpeg's words for an error (``Invalid data found when processing input``)."""
    return exc.strerror or type(exc).__name__


@contextlib.contextmanager
def _opened(
    path: Path,
    what: str,
    *,
    max_pixels: int | None = None,
    check: Callable[[av.container.InputContainer], None] | None = None,
) -> Iterator[av.container.InputContainer]:
    """``path`` opened by PyAV's demuxers (which read its header and index, and decode a
    little to fill in what the header leaves out), closed on leaving the block; a file no
    demuxer accepts, or whose index lists data past the end of the file, is
    ``unreadable_media``.

    ``max_pixels``: the decoders that fill in the header refuse a larger picture (then
    leave its size 0) rather than allocate it. ``check`` sees the container before its
    index is read (a limit on what the header declares, say)."""
    options = {} if max_pixels is None else {"max_pixels": str(max_pixels)}
    try:
        container = av.open(_url(path), metadata_errors="ignore", options=options)
    except av.FFmpegError as exc:
        raise InputError(
            f"{what} {path} cannot be read as media ({_reason(exc)}); "
            "check that it is a complete, uncorrupted audio/video file (re-export or re-download it)",
            kind="unreadable_media",
        ) from exc
    with container:
        if check is not None:
            check(container)
        _check_index(container, path, what)
        yield container


def _check_index(container: av.container.InputContainer, path: Path, what: str) -> None:
    """Raise ``unreadable_media`` when the container's index (an MP4's sample tables, a
    Matroska file's cues) places data past the end of the file: a copy or recording cut
    short, which would otherwise read as a shorter file. A file without an index passes.
    Entries are read one at a time: an index may list millions."""
    size = path.stat().st_size
    for stream in container.streams:
        end = max((entry.pos + entry.size for entry in stream.index_entries), default=0)  # bytes
        if end > size:
            raise InputError(
                f"{what} {path} is truncated: its index places {stream.type} data up to byte {end}, "
                f"but the file ends at byte {size}; copy or export it again in full",
                kind="unreadable_media",
            )


def _contents(container: av.container.InputContainer) -> str:
    kinds = sorted({s.type for s in container.streams})
    return ", ".join(kinds) if kinds else "no streams"


def _video_stream(container: av.container.InputContainer, path: Path, what: str) -> av.video.stream.VideoStream:
    """The first video stream that is not a cover picture (an MP3's album art, say)."""
    stream = next(
        (s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic), None
    )
    if stream is None:
        raise InputError(
            f"{what} {path} has no video stream (it holds: {_contents(container)}); "
            "give a video or a photo of the presenter as the reference",
            kind="no_video_stream",
        )
    if stream.codec_context is None:
        raise InputError(
            f"{what} {path}: its video stream is in a format FFmpeg {av.ffmpeg_version_info} cannot decode; "
            "re-export it (e.g. as H.264 MP4)",
            kind="unreadable_media",
        )
    return stream


def _choose_fps(avg: Fraction | None, nominal: Fraction | None) -> Fraction:
    """The constant rate to decode at, from the stream's average rate (frames / duration)
    and its nominal one (FFmpeg's guess: the container's or codec's frame rate).

    A constant-rate file has both alike: the nominal one is exact (30000/1001 rather than
    an average a rounded duration makes 2997/100). A variable-rate file's average is
    snapped to a standard rate when within 2 % (a phone's 29.8 → 30000/1001); otherwise its
    nominal rate is used when plausible, so no motion is dropped.
    """
    if avg is not None and nominal is not None and abs(avg - nominal) <= nominal / 1000:
        return nominal
    if avg is not None:
        near = min(_COMMON_RATES, key=lambda r: abs(r - avg))
        if abs(near - avg) <= near / 50:
            return near
    if nominal is not None and 1 <= nominal <= 120 and (avg is None or nominal >= avg):
        return nominal
    if avg is not None:
        return avg.limit_denominator(1001)
    return IMAGE_FPS


def _rotation_cw(angle: float) -> int:
    """Clockwise degrees ffmpeg applies for a display-matrix angle (given counter-clockwise)."""
    return int(round(-angle / 90.0)) * 90 % 360


@dataclass(frozen=True)
class _Scan:
    """A video stream read packet by packet: demuxed, and decoded only as far as asked."""

    pts: np.ndarray  # (N,) int64: presentation times of its N packets, in the stream's time base, ascending
    last_duration: int  # time-base units the last-presented packet lasts (0: not given)
    timed: bool  # every packet has a presentation time and none is marked for discarding (cut by an edit list)
    decoded: int  # frames decoded, up to the number asked for
    first_pts: int | None  # presentation time of the first frame decoded
    rotation: int  # clockwise degrees, from the first frame's display matrix (a stream's, or EXIF's)


def _scan(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path, *,
          decode: int, max_frames: int | None, max_pixels: int | None) -> _Scan:  # fmt: skip
    """Demux every packet of ``stream``, decoding only until ``decode`` frames came out.
    A packet the decoder rejects is skipped, as ffmpeg skips it. More than ``max_frames``
    packets stop the scan (``too_large``); the decoder refuses pictures over ``max_pixels``."""
    pts: list[int] = []
    durations: list[int] = []
    timed = True
    decoded, first_pts, rotation = 0, None, 0
    rejected: av.FFmpegError | None = None
    if max_pixels is not None:
        stream.codec_context.options = {"max_pixels": str(max_pixels)}
    try:
        for packet in container.demux(stream):
            if max_frames is not None and len(pts) > max_frames:
                raise _too_many_frames(path, f"holds more than {max_frames:,} frames (counted from its packets)",
                                       max_frames)  # fmt: skip
            if decoded < decode:
                try:
                    for frame in packet.decode():
                        if not decoded:
                            first_pts, rotation = frame.pts, _rotation_cw(frame.rotation)
                        decoded += 1
                except av.FFmpegError as exc:
                    rejected = rejected or exc
            if packet.size == 0:  # the empty packet that ends the stream (it flushes the decoder)
                continue
            timed = timed and packet.pts is not None and not packet.is_discard
            pts.append(packet.pts or 0)
            durations.append(packet.duration or 0)
    except av.FFmpegError as exc:
        raise InputError(
            f"reference {path} is damaged: reading it failed after {len(pts)} video packets ({_reason(exc)}); "
            "copy or export it again",
            kind="unreadable_media",
        ) from exc
    if not decoded:
        # A picture whose size the header left out, over the limit, reads as undecodable here.
        maybe = "" if stream.codec_context.width or max_pixels is None else (
            f" (damaged, or its pictures are larger than the limit of {_megapixels(max_pixels)}: "
            "--max-reference-pixels)"
        )
        raise InputError(
            f"reference {path} could not be decoded ({_reason(rejected) if rejected else 'no frames'}){maybe}; "
            "re-export it (e.g. as H.264 MP4) or give a photo instead",
            kind="unreadable_media",
        )
    order = np.argsort(np.asarray(pts, np.int64), kind="stable")
    return _Scan(
        pts=np.asarray(pts, np.int64)[order],
        last_duration=durations[order[-1]],
        timed=timed,
        decoded=decoded,
        first_pts=first_pts,
        rotation=rotation,
    )


def _constant_rate_frames(scan: _Scan, time_base: Fraction | None, fps: Fraction) -> int | None:
    """The frames :func:`iter_frames` yields, read from the packets without decoding, or
    None when only a decode can tell.

    ffmpeg's ``fps`` filter emits one frame per 1/fps slot from the first frame's time to
    the end of the last one (its time plus its duration). When the N packets are exactly
    one slot apart, the last lasts one slot, and the first presented is the first frame the
    decoder gives (no leading frames it drops), that is N. Exactly: in the stream's time
    base, a slot must be a whole number of units (an MP4 at 25 fps in 1/12800: 512).
    """
    if time_base is None or not scan.timed or scan.first_pts != scan.pts[0]:
        return None
    slot = 1 / (fps * time_base)  # time-base units per frame
    if slot.denominator != 1:
        return None
    n = len(scan.pts)
    uniform = np.array_equal(scan.pts - scan.pts[0], np.arange(n, dtype=np.int64) * slot.numerator)
    return n if uniform and scan.last_duration == slot.numerator else None


def _video_filters(stream: Any, fps: Fraction | None) -> Any:
    """Constant rate ``fps`` (duplicating/dropping frames of variable-rate input; None for a
    still image, which stays one frame), then cropped to even width and height.

    ffmpeg has already turned the frames upright (autorotate) before these filters.
    """
    if fps is not None:
        stream = stream.filter("fps", fps=str(fps))
    return stream.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2", 0, 0)


def _decoded_frames(
    path: Path, video_stream: int, fps: Fraction, max_frames: int | None, max_pixels: int | None
) -> int:
    """The frames :func:`iter_frames` yields, counted by decoding the file through the same
    filters into ffmpeg's ``null`` muxer; the count is the last ``frame=`` of the
    key=value lines ``-progress`` writes for programs. The count stops one past
    ``max_frames`` (more is ``too_large``)."""
    source = ffmpeg.input(_url(path), **_decoder_limit(max_pixels))[f"v:{video_stream}"]
    decoded = _video_filters(source, fps)
    stop = {} if max_frames is None else {"frames:v": max_frames + 1}
    args = (
        decoded.output("-", format="null", fps_mode="passthrough", **stop)
        .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-progress", "pipe:1")
        .compile(cmd=ffmpeg_exe())
    )
    proc = _run(args)
    progress = dict(line.split("=", 1) for line in proc.stdout.decode(errors="replace").splitlines() if "=" in line)
    frames = int(progress.get("frame", "0")) if progress.get("progress") == "end" else 0
    if proc.returncode != 0 or frames == 0:
        raise InputError(
            f"reference {path} could not be decoded ({_tail(proc.stderr) or 'no frames'}); "
            "re-export it (e.g. as H.264 MP4) or give a photo instead",
            kind="unreadable_media",
        )
    if max_frames is not None and frames > max_frames:
        raise _too_many_frames(path, f"decodes to more than {max_frames:,} frames", max_frames)
    return frames


def probe_video(
    path: str | os.PathLike[str], *, max_pixels: int | None = None, max_frames: int | None = None
) -> VideoInfo:
    """Describe a reference video or still image as :func:`iter_frames` will yield it.

    PyAV gives the stream's size, rates and time base; its first decoded frame the
    rotation (the display matrix, which also carries a photo's EXIF orientation). Every
    packet is demuxed, not decoded: for a constant-rate stream their count is the frame
    count (see :func:`_constant_rate_frames`); any other stream (variable rate, a time base
    that cannot hold the frame period exactly, frames cut by an edit list) is decoded once
    by ffmpeg through the filters of :func:`iter_frames` to count them. Results are cached
    per (path, size, mtime, limits) within a process. ``path`` in the result is absolute.

    Limits (``too_large``, see ``config.InputLimits``), each checked before the work it
    bounds: ``max_pixels`` on the stored frame size, from the header (a PNG's or JPEG's own
    when FFmpeg would have to decode the picture to learn it), and no decoder is allowed a
    larger picture; ``max_frames`` on the frames the index lists, the packets demuxed (the
    scan stops there), the frames the timestamps span at the chosen rate, and the count.
    """
    p = require_file(path, "reference").absolute()
    st = p.stat()
    return _probe_video(p, st.st_size, st.st_mtime_ns, max_pixels, max_frames)


@functools.lru_cache(maxsize=64)
def _probe_video(path: Path, _size: int, _mtime_ns: int, max_pixels: int | None, max_frames: int | None) -> VideoInfo:
    if max_frames is not None and (listed := _iso_video_samples(path) or 0) > max_frames:  # before FFmpeg indexes them
        raise _too_many_frames(path, f"lists {listed:,} frames in its header", max_frames)

    def declared(container: av.container.InputContainer) -> None:
        """Refuse what the header declares over a limit, before its index is read."""
        stream = _video_stream(container, path, "reference")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not (width and height) and _looks_like_image(container, stream):
            width, height = _image_size(path) or (0, 0)
        check_reference_size(path, width, height, max_pixels=max_pixels)
        listed = max(stream.frames, len(stream.index_entries))  # the header's count, the index's entries
        if max_frames is not None and listed > max_frames:
            raise _too_many_frames(path, f"lists {listed:,} frames in its header", max_frames)

    with _opened(path, "reference", max_pixels=max_pixels, check=declared) as container:
        stream = _video_stream(container, path, "reference")
        looks_like_image = _looks_like_image(container, stream)
        scan = _scan(container, stream, path, decode=2 if looks_like_image else 1,  # one picture, or an animation?
                     max_frames=max_frames, max_pixels=max_pixels)  # fmt: skip
        video_stream = container.streams.video.index(stream)
        source_width, source_height = stream.codec_context.width, stream.codec_context.height
        average_rate, nominal_rate, time_base = stream.average_rate, stream.guessed_rate, stream.time_base
    check_reference_size(path, source_width, source_height, max_pixels=max_pixels)  # as decoded
    is_image = looks_like_image and scan.decoded == 1
    if is_image:
        fps, frames = IMAGE_FPS, 1
    else:
        fps = _choose_fps(average_rate, nominal_rate)
        _check_span(path, scan, time_base, fps, max_frames)
        frames = _constant_rate_frames(scan, time_base, fps) or _decoded_frames(
            path, video_stream, fps, max_frames, max_pixels
        )
    width, height = (source_height, source_width) if scan.rotation % 180 else (source_width, source_height)
    return VideoInfo(
        path=path,
        width=width - width % 2,
        height=height - height % 2,
        fps=fps,
        frames=frames,
        duration=0.0 if is_image else float(frames / fps),
        rotation=scan.rotation,
        is_image=is_image,
        source_width=source_width,
        source_height=source_height,
        video_stream=video_stream,
    )


def _looks_like_image(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """A still-image codec or demuxer: one picture, unless it decodes to more (an animation)."""
    return (
        stream.codec.canonical_name in _IMAGE_CODECS
        or container.format.name in _IMAGE_DEMUXERS
        or container.format.name.endswith("_pipe")
    )


def _check_span(path: Path, scan: _Scan, time_base: Fraction | None, fps: Fraction, max_frames: int | None) -> None:
    """Refuse a stream whose timestamps span more than ``max_frames`` frames at ``fps``:
    read at a constant rate, the gaps between a few packets hours apart fill with repeats."""
    if max_frames is None or time_base is None or not len(scan.pts):
        return
    span = float((int(scan.pts[-1]) + scan.last_duration - int(scan.pts[0])) * time_base)  # seconds
    frames = span * fps
    if frames > max_frames + 1:  # +1: a rounding's worth
        raise _too_many_frames(
            path, f"has timestamps spanning {_clock(span)}, {int(frames):,} frames at {float(fps):g} fps", max_frames
        )


def indexed_frames(path: str | os.PathLike[str]) -> int:
    """How many frames the first video stream of an MP4 holds, read from its index (the
    track's sample table) without decoding: for checking that an MP4 written earlier is
    whole. A file that cannot be opened, or that is cut short (its index places samples of
    any stream past its end), raises ``unreadable_media``; a container without a
    frame count (not an MP4) gives 0."""
    p = require_file(path, "video")
    with _opened(p, "video") as container:
        return _video_stream(container, p, "video").frames


@contextlib.contextmanager
def _audio_stream(
    path: Path, max_seconds: float | None = None
) -> Iterator[tuple[av.container.InputContainer, av.audio.stream.AudioStream]]:
    """The file opened, and its first audio stream, after the checks every audio reader
    makes; one whose header declares more than ``max_seconds`` is ``too_large``."""
    if path.stat().st_size == 0:
        raise InputError(
            f"audio {path} is an empty file (0 bytes); re-export or re-download it", kind="empty_audio"
        )

    def declared(container: av.container.InputContainer) -> None:
        """Refuse a length over the limit that the header declares, before its index is read."""
        if max_seconds is None or not container.streams.audio:
            return
        seconds = _declared_seconds(container, container.streams.audio[0])
        if seconds > max_seconds:
            raise _too_long(path, f"lasts {_clock(seconds)} (as its header declares)", max_seconds)

    with _opened(path, "audio", check=declared) as container:
        if not container.streams.audio:
            raise InputError(
                f"audio {path} has no audio stream (it holds: {_contents(container)}); "
                "give a file with a sound track (wav, mp3, m4a, or a video with sound)",
                kind="no_audio_stream",
            )
        stream = container.streams.audio[0]
        if stream.codec_context is None or stream.codec_context.channels < 1:
            raise InputError(
                f"audio {path}: its audio stream is in a format FFmpeg {av.ffmpeg_version_info} cannot decode "
                "(or declares no channels); re-export it (e.g. as WAV or MP3)",
                kind="unreadable_media",
            )
        yield container, stream


def _declared_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """The longest length the header declares for ``stream``: the container's, the
    stream's, or its index's last entry (0.0 when none is given)."""
    seconds = [0.0]
    if container.duration is not None:
        seconds.append(container.duration / av.time_base)  # µs
    if stream.time_base is not None:
        if stream.duration is not None:
            seconds.append(float(stream.duration * stream.time_base))
        entries = stream.index_entries
        if len(entries):  # sorted by time: the last entry is the latest
            seconds.append(float(entries[len(entries) - 1].timestamp * stream.time_base))
    return max(seconds)


def _empty_audio(path: Path) -> InputError:
    return InputError(
        f"audio {path} decodes to no samples (zero length); re-export it with the intended sound",
        kind="empty_audio",
    )


def probe_audio(path: str | os.PathLike[str]) -> AudioInfo:
    """Channels and layout of the first audio stream as the stream declares them; its
    sample rate and exact duration by decoding it in this process (a header may say
    anything about the length). A packet the decoder rejects is skipped, as ffmpeg skips it.
    """
    p = require_file(path, "audio")
    samples, sample_rate = 0, 0
    rejected: av.FFmpegError | None = None
    with _audio_stream(p) as (container, stream):
        layout = stream.codec_context.layout
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    rejected = rejected or exc
                    continue
                for frame in frames:
                    samples += frame.samples
                    sample_rate = sample_rate or frame.sample_rate
        except av.FFmpegError as exc:
            raise InputError(
                f"audio {p} is damaged: reading it failed ({_reason(exc)}); re-export it (e.g. as WAV or MP3)",
                kind="unreadable_media",
            ) from exc
    if samples == 0 and rejected is not None:
        raise InputError(
            f"audio {p} could not be decoded ({_reason(rejected)}); re-export it (e.g. as WAV or MP3)",
            kind="unreadable_media",
        )
    if samples == 0:
        raise _empty_audio(p)
    return AudioInfo(
        path=p, duration=samples / sample_rate, sample_rate=sample_rate, channels=layout.nb_channels, layout=layout.name
    )


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


def iter_frames(info: VideoInfo, *, max_pixels: int | None = None) -> Generator[np.ndarray, None, None]:
    """Yield the frames of ``info.path`` one at a time: (H, W, 3) uint8 BGR.

    Constant rate ``info.fps`` (variable-rate input is resampled by duplicating or
    dropping frames), upright, cropped to ``info.width`` × ``info.height``; a still image
    yields one frame. Each frame is a new, writable array. ffmpeg is killed and reaped if
    the consumer stops early. ``max_pixels``: ffmpeg's decoder refuses larger pictures (a
    stream that grows midway), which fails the decode.
    """
    fps = None if info.is_image else info.fps
    source = ffmpeg.input(_url(info.path), **_decoder_limit(max_pixels))[f"v:{info.video_stream}"]
    decoded = _video_filters(source, fps)
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


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream of ``path``: (N,) float32 mono in [-1, 1] at ``sample_rate`` Hz.

    Decoded and resampled by ffmpeg, streamed from its pipe; channels are then averaged
    (as librosa's ``to_mono`` does: ffmpeg's own ``-ac 1`` would scale stereo by
    √½ per channel). Silence is valid; no samples is an ``empty_audio`` error.
    """
    parts = list(_audio_blocks(path, sample_rate))  # (n,) float32 mono pieces
    return np.concatenate(parts)


def decode_audio(
    path: str | os.PathLike[str], dst: Path, sample_rate: int = 16000, *, max_seconds: float | None = None
) -> int:
    """As :func:`load_audio`, but written to ``dst`` as raw little-endian float32 (read
    back with ``features.Pcm.from_file``), holding one pipe read in memory at a time.
    Returns the number of samples.

    ``max_seconds``: audio longer than this is ``too_large``, refused from what its header
    declares before decoding, or, when the header says less, as soon as decoding passes it.
    """
    samples = 0
    with storage_errors(dst.parent), open(dst, "wb") as f:  # a full scratch disk: the user's to fix
        for block in _audio_blocks(path, sample_rate, max_seconds):
            block.astype("<f4", copy=False).tofile(f)
            samples += len(block)
    return samples


def _audio_blocks(
    path: str | os.PathLike[str], sample_rate: int, max_seconds: float | None = None
) -> Generator[np.ndarray, None, None]:
    """The decoded audio of ``path`` as consecutive (n,) float32 mono blocks in [-1, 1];
    raises ``empty_audio`` when there are none, ``unreadable_media`` when ffmpeg fails,
    ``too_large`` when there are more than ``max_seconds`` (see :func:`decode_audio`)."""
    p = require_file(path, "audio")
    most = math.inf if max_seconds is None else max_seconds * sample_rate  # samples
    with _audio_stream(p, max_seconds) as (_, stream):
        channels = stream.codec_context.channels
    # ac: the pipe carries exactly this many channels per sample, as ffmpeg is told rather
    # than as we might guess from its output, so the samples cannot be misaligned. It is the
    # stream's own count: nothing is remixed, and every channel weighs the same in the mean.
    args = (
        ffmpeg.input(_url(p))["a:0"]
        .output("pipe:", format="f32le", acodec="pcm_f32le", ar=sample_rate, ac=channels)
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
            if max_seconds is not None and samples > most:  # its header said less
                raise InputError(
                    f"audio {p} is longer than its header declares: decoding passed the limit of "
                    f"{_clock(max_seconds)} (--max-audio-seconds {max_seconds:g}); split it into shorter files, "
                    "or raise the limit",
                    kind="too_large",
                )
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
            # Rounded, from every pixel's chroma (swscale's defaults truncate and skip: written
            # and read back, colours came up to 4 levels low, greys tinted blue).
            vf="scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int,format=yuv420p",
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
        said = proc.stderr_tail()
        refused = storage_error_in(said, self.path.parent)  # ffmpeg could not write: a full disk, say
        if refused is not None:
            raise refused
        raise EngineError(
            f"encoding {self.path} failed: {what} ({said}); check that the audio file plays", kind="encode"
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
