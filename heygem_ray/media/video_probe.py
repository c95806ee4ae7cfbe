"""What a reference video or still image holds, as :func:`decode.iter_frames` will yield it.

PyAV reads the stream's properties from FFmpeg's own structures (never text printed for
people); the file is decoded only where an exact answer needs it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.stream
import av.video.codeccontext
import av.video.stream
import ffmpeg
import numpy as np

from heygem_ray.config import MIN_FPS
from heygem_ray.errors import InputError
from heygem_ray.media.container import contents, opened, reason, require_file
from heygem_ray.media.ffmpeg import (
    DECODER_THREADS,
    LITERAL_NAME,
    FfmpegProcess,
    ffmpeg_exe,
    literal_name,
    url,
    video_filters,
)
from heygem_ray.media.headers import image_size
from heygem_ray.media.isobmff import heif_still, video_samples
from heygem_ray.media.limits import (
    check_reference_size,
    clock,
    decoder_limit,
    decoder_pixels,
    megapixels,
    too_many_frames,
)

IMAGE_FPS = Fraction(25)  # the rate a still image is given (ffmpeg's image2 default)


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


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`iter_frames` will yield for a video or still image.

    ``width``/``height`` are those of the yielded frames: after rotation, cropped down to
    even (the last column/row dropped). ``frames`` is exact: read from the packets of a
    constant-rate stream, else counted by decoding the file once through the same filters
    :func:`iter_frames` uses (see :func:`probe_video`).
    """

    path: Path
    width: int  # pixels, of the yielded frames (even; square: ``sample_aspect``)
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
    demuxer: str = ""  # the file's demuxer, as PyAV names it ("mov,mp4,m4a,3gp,3g2,mj2", "image2")
    video_streams: int = 1  # how many it holds, cover pictures left out (a recording with a camera and a screen)
    # How the stream's pictures reach BT.709 limited-range I420 (iter_frames's
    # pixel_format="yuv420p"): "bt709" (they are that already), "bt601" (4:2:0, limited
    # range, BT.601 or untagged, which every reader takes for BT.601: a change of matrix
    # alone), "hlg" or "pq" (HDR: tone-mapped to SDR, ``ffmpeg.to_sdr``), "bt2020" or "p3"
    # (SDR in a wider gamut: mapped into BT.709's), or "" (anything else: converted whole).
    colour: str = ""
    # For MAPPED_COLOURS: zscale's names of the stream's transfer, primaries,
    # matrix and range, which ``ffmpeg.to_sdr`` converts from.
    colour_source: tuple[tuple[str, str], ...] = ()
    # The width of a stored pixel over its height, as the stream declares it (64:45 for 16:9
    # PAL DV, 4:3 for HDV's 1440×1080; 1 for a photo): the frames are yielded widened or
    # narrowed to square pixels (``width``), as players show them.
    sample_aspect: Fraction = Fraction(1)
    # A HEIF or AVIF still whose picture is a grid of tiles (a phone's .heic photo: 4032×3024
    # in 48 tiles of 512×512, each a stream of its own): FFmpeg puts the tiles together as
    # its first stream group, which iter_frames reads instead of ``video_stream``.
    tile_grid: bool = False
    # The stream is interlaced (its fields shot apart: 1080i from a broadcast or
    # lecture-capture camera): iter_frames deinterlaces it (``ffmpeg.DEINTERLACE``).
    interlaced: bool = False
    # (width, height) of the frames before ``probe_video``'s ``max_resolution`` scaled them
    # down to ``width`` × ``height``; None where it did not.
    scaled_from: tuple[int, int] | None = None
    # The take is longer than ``probe_video``'s ``max_seconds``: ``frames`` are its first
    # ones (from ``start``), and iter_frames stops there.
    cut: bool = False
    # Frames of the take, at ``fps``, before the first one yielded (``probe_video``'s
    # ``start_seconds``): iter_frames decodes and drops them, or those after ``seek``.
    start: int = 0
    # Where iter_frames has the demuxer seek before it decodes (ffmpeg's input ``-ss``:
    # seconds from the file's start), and how many of the ``start`` frames lie before the
    # frame that lands on; (0, 0): decoded from the beginning. Only for a take whose frame
    # times are known exactly (``_seek_point``).
    seek: Fraction = Fraction(0)
    seek_frames: int = 0
    # The stream's codec and its pictures' pixel format as decoded (FFmpeg's names: "h264",
    # "yuv420p"): which decoder takes it (``decoders.pick_decoder``).
    codec: str = ""
    pixel_format: str = ""
    # The take's own frame rate where ``fps`` is another: a whole multiple of it for a take
    # under MIN_FPS, its frames held (``held_rate``), or a whole fraction for one over
    # ``probe_video``'s ``max_fps``, every k-th frame kept (``thinned_rate``); None where
    # ``fps`` is the take's own.
    own_fps: Fraction | None = None


def _video_stream(container: av.container.InputContainer, path: Path, what: str) -> av.video.stream.VideoStream:
    """The first video stream that is not a cover picture (an MP3's album art, say)."""
    stream = next(
        (s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic), None
    )
    if stream is None:
        raise InputError(
            f"{what} {path} has no video stream (it holds: {contents(container)}); "
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


def _animated_webp(path: Path) -> bool:
    """Whether ``path`` is a WebP whose extended header (``VP8X``) says it is animated."""
    with open(path, "rb") as f:
        head = f.read(21)
    return len(head) == 21 and head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


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


def thinned_rate(fps: Fraction, max_fps: int) -> Fraction | None:
    """The rate a take of ``fps`` over ``max_fps`` is read at: every k-th frame kept, k the
    fewest that bring it to ``max_fps`` or under (60 → 30, 59.94 → 29.97 and 120 → 30 for
    30; 50 → 25), or None where that is under MIN_FPS (25 for 24 would be 12.5: the take
    keeps its rate, its motion even)."""
    rate = fps / math.ceil(fps / max_fps)
    return rate if rate >= MIN_FPS else None


def held_rate(fps: Fraction) -> Fraction:
    """The rate a take of ``fps`` under ``MIN_FPS`` is read at: each frame held the fewest
    whole times that reach IMAGE_FPS (15 → 30, 7.5 → 30, 5 → 25, 1/2 → 25, 15000/1001 →
    30000/1001), or IMAGE_FPS where that rate would be no whole or NTSC one (a variable-rate
    take averaging 7.3 fps: 25, not 29.2)."""
    rate = fps * math.ceil(IMAGE_FPS / fps)
    return rate if rate.denominator in (1, 1001) else IMAGE_FPS


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
        stream.codec_context.options = {"max_pixels": str(decoder_pixels(max_pixels))}
    try:
        for packet in container.demux(stream):
            if max_frames is not None and len(pts) > max_frames:
                raise too_many_frames(path, f"holds more than {max_frames:,} frames (counted from its packets)",
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
            f"reference {path} is damaged: reading it failed after {len(pts)} video packets ({reason(exc)}); "
            "copy or export it again",
            kind="unreadable_media",
        ) from exc
    if not decoded and stream.codec_context.name == "webp" and _animated_webp(path):
        raise InputError(
            f"reference {path} is an animated WebP, which FFmpeg {av.ffmpeg_version_info} cannot decode; export the "
            "take as a video (e.g. H.264 MP4), or give one of its pictures as a photo (PNG or JPEG)",
            kind="unreadable_media",
        )
    if not decoded:
        # A picture whose size the header left out, over the limit, reads as undecodable here.
        maybe = "" if stream.codec_context.width or max_pixels is None else (
            f" (damaged, or its pictures are larger than the limit of {megapixels(max_pixels)}: "
            "--max-reference-pixels)"
        )
        raise InputError(
            f"reference {path} could not be decoded ({reason(rejected) if rejected else 'no frames'}){maybe}; "
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
    the end of the last one (its time plus its duration), each the frame nearest its slot's
    start, and a last one where half a slot or more is left. When the N packets are exactly
    one slot apart, the last lasts one slot, and the first presented is the first frame the
    decoder gives (no leading frames it drops), that is N; k slots apart (a take slower
    than ``MIN_FPS``, its frames held), N·k; one k-th of a slot apart (a take over
    ``max_fps``, every k-th frame kept), N/k rounded half up (61 frames at 60 fps make 31
    at 30, found for k of 2 and 4 and starts off the slots). Exactly: the packets' spacing
    in the stream's time base is a whole number of units (an MP4 at 25 fps in 1/12800:
    512 units; slides at 0.5 fps in 1/16384: 32768 units, 50 slots).
    """
    if time_base is None or not scan.timed or scan.first_pts != scan.pts[0]:
        return None
    n = len(scan.pts)
    apart = int(scan.pts[1] - scan.pts[0]) if n > 1 else scan.last_duration  # units between packets
    slots = apart * time_base * fps  # frames at ``fps`` each packet fills
    if apart <= 0 or not (slots.denominator == 1 or slots.numerator == 1):
        return None
    uniform = np.array_equal(scan.pts - scan.pts[0], np.arange(n, dtype=np.int64) * apart)
    if not uniform or scan.last_duration != apart:
        return None
    k = slots.denominator  # packets per frame kept (1 unless thinned)
    return n * slots.numerator if k == 1 else (2 * n + k) // (2 * k)


# Bytes of ffmpeg's -progress lines read at a time (about one report: "frame=…" to "progress=…").
_PROGRESS_CHUNK = 256


def _decoded_frames(
    path: Path,
    video_stream: int,
    fps: Fraction,
    max_frames: int | None,
    max_pixels: int | None,
    first: int | None = None,
    skip: int = 0,
    demuxer: str = "",
) -> int:
    """The frames :func:`iter_frames` yields, counted by decoding the file through the same
    filters into ffmpeg's ``null`` muxer; the count is the last ``frame=`` of the
    key=value lines ``-progress`` writes for programs. The count stops one past
    ``max_frames`` (more is ``too_large``), or one past ``first`` (a cut: the frames after
    it are not used, so not counted) where that comes sooner. ``skip``: the frames before
    a start (``start_seconds``), not counted; 0 where none is left after them."""
    source = ffmpeg.input(url(path), threads=DECODER_THREADS, **decoder_limit(max_pixels),
                          **literal_name(demuxer))[f"v:{video_stream}"]
    decoded = video_filters(source, fps, skip=skip)
    stops = [n + 1 for n in (max_frames, first) if n is not None]
    stop = {"frames:v": min(stops)} if stops else {}
    args = (
        decoded.output("-", format="null", fps_mode="passthrough", **stop)
        .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-progress", "pipe:1",
                     "-filter_threads", str(DECODER_THREADS))
        .compile(cmd=ffmpeg_exe())
    )
    # Watched as every other ffmpeg of a job (the lines -progress writes twice a second are
    # its moves): counting a long 4K phone take can outlast --job-stall-timeout, and a
    # count run to its end without a word was stopped as a stalled job, twice.
    proc = FfmpegProcess(args, task=f"counting the frames of the reference {path}", stdout=True)
    try:
        lines, chunk = bytearray(), bytearray(_PROGRESS_CHUNK)
        while got := proc.read_into(memoryview(chunk)):
            lines += chunk[:got]
        rc = proc.wait()
    finally:
        proc.close()
    progress = dict(line.split("=", 1) for line in lines.decode(errors="replace").splitlines() if "=" in line)
    frames = int(progress.get("frame", "0")) if progress.get("progress") == "end" else 0
    if skip and rc == 0 and progress.get("progress") == "end" and frames == 0:
        return 0  # the take ends before its start
    if rc != 0 or frames == 0:
        raise proc.outside_failure() or InputError(
            f"reference {path} could not be decoded ({proc.stderr_tail(3) if rc else 'no frames'}); "
            "re-export it (e.g. as H.264 MP4) or give a photo instead",
            kind="unreadable_media",
        )
    if max_frames is not None and frames > max_frames:
        raise too_many_frames(path, f"decodes to more than {max_frames:,} frames", max_frames)
    return frames


def probe_video(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = None,
    max_frames: int | None = None,
    max_resolution: int = 0,
    max_fps: int = 0,
    max_seconds: float = 0.0,
    start_seconds: float = 0.0,
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

    ``max_resolution`` (0: none): frames whose shorter side is longer are yielded scaled
    down in proportion to that side (``scaled_to``: 2160p → 1080p, 3840×2160 → 1920×1080,
    a portrait 2160×3840 → 1080×1920); ``VideoInfo.scaled_from`` keeps the size before.

    ``max_fps`` (0: none): a take whose rate is higher is read with every k-th frame kept
    (``thinned_rate``: 60 → 30 for 30); ``VideoInfo.own_fps`` keeps its rate. A take under
    ``MIN_FPS`` is read with its frames held, whatever ``max_fps`` (``held_rate``).

    ``max_seconds`` (0: none): a video longer than that is described by its first
    ``max_seconds`` of frames at the chosen rate (``VideoInfo.cut``), as iter_frames then
    yields it; ``max_frames`` still bounds the file. A variable-rate file is decoded to
    count its frames only as far as the cut.

    ``start_seconds`` (0: none): a video is described from the frame on show at that time
    (``VideoInfo.start``: the frames before it, which iter_frames decodes and drops, from
    the keyframe before it where ``VideoInfo.seek`` says where), and a cut counts from
    there; a still image is used whole. A take that ends before it is ``too_short``.
    """
    p = require_file(path, "reference").absolute()
    st = p.stat()
    info = _probe_video(p, st.st_size, st.st_mtime_ns, max_pixels, max_frames, max_fps, max_seconds, start_seconds)
    width, height = scaled_to(info.width, info.height, max_resolution)
    if (width, height) == (info.width, info.height):
        return info
    return dataclasses.replace(info, width=width, height=height, scaled_from=(info.width, info.height))


def scaled_to(width: int, height: int, max_resolution: int) -> tuple[int, int]:
    """(width, height) of a picture whose shorter side is at most ``max_resolution`` (0:
    as it is), in proportion, each side even."""
    short = min(width, height)
    if max_resolution <= 0 or short <= max_resolution:
        return width, height
    factor = max_resolution / short
    return max(2, 2 * round(width * factor / 2)), max(2, 2 * round(height * factor / 2))


@functools.lru_cache(maxsize=64)
def _probe_video(
    path: Path, _size: int, _mtime_ns: int, max_pixels: int | None, max_frames: int | None, max_fps: int,
    max_seconds: float, start_seconds: float,
) -> VideoInfo:
    if max_frames is not None and (listed := video_samples(path) or 0) > max_frames:  # before FFmpeg indexes them
        raise too_many_frames(path, f"lists {listed:,} frames in its header", max_frames)

    def declared(container: av.container.InputContainer) -> None:
        """Refuse what the header declares over a limit, before its index is read."""
        stream = _video_stream(container, path, "reference")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not (width and height) and _looks_like_image(container, stream):
            width, height = image_size(path) or (0, 0)
        check_reference_size(path, width, height, max_pixels=max_pixels)
        listed = max(stream.frames, len(stream.index_entries))  # the header's count, the index's entries
        if max_frames is not None and listed > max_frames:
            raise too_many_frames(path, f"lists {listed:,} frames in its header", max_frames)

    # A phone's .heic photo: its picture's size, tiling and turn, from its boxes (FFmpeg's
    # streams are its tiles), checked before any tile is decoded.
    still = heif_still(path)
    if still is not None:
        check_reference_size(path, still.width, still.height, max_pixels=max_pixels)
    with opened(path, "reference", max_pixels=max_pixels, check=declared) as container:
        stream = _video_stream(container, path, "reference")
        looks_like_image = still is not None or _looks_like_image(container, stream)
        scan = _scan(container, stream, path, decode=2 if looks_like_image else 1,  # one picture, or an animation?
                     max_frames=max_frames, max_pixels=max_pixels)  # fmt: skip
        video_stream = container.streams.video.index(stream)
        pictures = sum(not s.disposition & av.stream.Disposition.attached_pic for s in container.streams.video)
        file_start = Fraction(container.start_time or 0, 1_000_000)  # ffmpeg counts times from here
        demuxer = container.format.name
        demuxers = set(demuxer.split(","))
        # (a fragmented MP4's header lists no samples: its fragments are indexed as they are found)
        indexed = "matroska" in demuxers or ("mov" in demuxers and stream.frames > 0)
        source_width, source_height = stream.codec_context.width, stream.codec_context.height
        if still is not None:
            source_width, source_height = still.width, still.height
        average_rate, nominal_rate, time_base = stream.average_rate, stream.guessed_rate, stream.time_base
        colour, colour_source = _colour(stream.codec_context)
        interlaced = stream.codec_context.field_order in _INTERLACED
        sample_aspect = _believed(stream.sample_aspect_ratio)
        codec = stream.codec_context.name
        pixel_format = stream.codec_context.format.name if stream.codec_context.format is not None else ""
        if codec in ALPHA_DECODERS and _tag(stream.metadata, "alpha_mode") == "1":
            pixel_format = "yuva420p"  # as libvpx decodes it (iter_frames picks it): the alpha kept
    check_reference_size(path, source_width, source_height, max_pixels=max_pixels)  # as decoded
    is_image = looks_like_image and scan.decoded == 1
    cut, skip, seek, own_fps = False, 0, (Fraction(0), 0), None
    if is_image:
        fps, frames = IMAGE_FPS, 1
    else:
        fps = _choose_fps(average_rate, nominal_rate)
        if fps < MIN_FPS:
            own_fps, fps = fps, held_rate(fps)
        elif max_fps and fps > max_fps and (thinned := thinned_rate(fps, max_fps)) is not None:
            own_fps, fps = fps, thinned
        _check_span(path, scan, time_base, fps, max_frames, start_seconds + max_seconds if max_seconds > 0 else None)
        skip = _frames_in(start_seconds, fps)  # the frames before the one on show at start_seconds
        first = max(1, _frames_in(max_seconds, fps)) if max_seconds > 0 else None  # the frames a cut keeps
        whole = _constant_rate_frames(scan, time_base, fps)  # None (or 0): decoded to count them
        if whole:
            frames = max(0, whole - skip)
            # (not where each packet fills several slots, held: a seek would land slots before
            # the frame wanted)
            if frames and indexed and whole <= len(scan.pts):
                seek = _seek_point(scan, time_base, fps, file_start, skip)
                if seek[1] and not _seek_lands(path, video_stream, seek[0] + file_start,
                                               _slot_pts(scan, time_base, fps, seek[1]), max_pixels):  # fmt: skip
                    seek = (Fraction(0), 0)
        else:
            frames = _decoded_frames(path, video_stream, fps, max_frames, max_pixels, first, skip,
                                     demuxer)
        if frames == 0:
            raise InputError(
                f"reference {path} ends before {start_seconds:g} s (--reference-start {start_seconds:g}"
                + (f"; it lasts {float(whole / fps):.1f} s" if whole else "")
                + "): give a start within the take, or 0 to use it from its beginning",
                kind="too_short",
            )
        if first is not None and frames > first:
            frames, cut = first, True
    rotation = scan.rotation if still is None else still.rotation
    width, height = (source_height, source_width) if rotation % 180 else (source_width, source_height)
    if is_image:
        sample_aspect = Fraction(1)  # a photo is shown as its pixels, whatever its JFIF density says
    if sample_aspect != 1:  # shown in square pixels: the stored width, drawn wider or narrower
        width = round(width / sample_aspect if rotation % 180 else width * sample_aspect)
        check_reference_size(path, width, height, max_pixels=max_pixels)  # as yielded
    if width < 2 or height < 2:  # (its frames are cut to even sizes: nothing would be left)
        raise InputError(
            f"reference {path} is {width}×{height} pixels: too small to hold a face; give a video or photo in which "
            "the presenter's face is at least 40 pixels wide",
            kind="no_face",
        )
    return VideoInfo(
        path=path,
        width=width - width % 2,
        height=height - height % 2,
        fps=fps,
        frames=frames,
        duration=0.0 if is_image else float(frames / fps),
        rotation=rotation,
        is_image=is_image,
        source_width=source_width,
        source_height=source_height,
        video_stream=video_stream,
        demuxer=demuxer,
        video_streams=1 if still is not None else pictures,  # (a .heic photo's streams are its tiles)
        colour=colour,
        colour_source=colour_source,
        sample_aspect=sample_aspect,
        tile_grid=still is not None and still.grid,
        interlaced=interlaced and not is_image,
        cut=cut,
        start=skip,
        seek=seek[0],
        seek_frames=seek[1],
        codec=codec,
        pixel_format=pixel_format,
        own_fps=own_fps,
    )


# Where ffmpeg's seek lands where asked (``_probe_video``'s ``indexed``): an MP4 or MOV whose
# header lists every frame, a Matroska or WebM file. Elsewhere the frames before a start
# are decoded from the beginning and dropped: an MPEG transport stream (.ts, a camcorder's
# .mts) has no index, and its seek guesses from timestamps near a byte offset; a
# fragmented MP4's lands a frame or two off where a fragment begins (both found by
# comparing frames with a decode from the beginning). Where the index lies about its
# keyframes, the seek is tried once (``_seek_lands``).
# Frames decoded after a seek before the first one used: a deinterlacer (``bwdif``) makes a
# frame from its neighbours, and the first one it is given has none.
SEEK_LEAD = 2


def _seek_point(scan: _Scan, time_base: Fraction | None, fps: Fraction, file_start: Fraction,
                skip: int) -> tuple[Fraction, int]:  # fmt: skip
    """(seconds, frames): where iter_frames seeks to skip the first ``skip`` frames of a
    take whose packets are evenly spaced (``_constant_rate_frames``), and how many
    frames lie before the one the seek lands on; (0, 0) where ``skip`` leaves too few to
    seek past. ffmpeg seeks to the keyframe at or before that time, decodes from there,
    and drops the frames shown before it: the time is a quarter of the packets' spacing
    before the frame ``SEEK_LEAD`` frames ahead of the first used, so it lands on that
    frame whatever the rounding to microseconds. On that frame the rate filter starts its
    slots, each holding the next frame (or, where every k-th is kept, the next k-th), so
    the frames used are those a decode from the beginning gives."""
    land = skip - SEEK_LEAD
    if land <= 0 or time_base is None or len(scan.pts) < 2:
        return Fraction(0), 0
    slot = 1 / (fps * time_base)  # time-base units a frame at ``fps`` lasts
    apart = int(scan.pts[1] - scan.pts[0])  # and a packet (``_constant_rate_frames``)
    at = (int(scan.pts[0]) + land * slot - Fraction(apart, 4)) * time_base - file_start
    return at, land


def _slot_pts(scan: _Scan, time_base: Fraction | None, fps: Fraction, frame: int) -> int:
    """Presentation time (time-base units) of ``frame`` at ``fps`` of a take whose packets
    are evenly spaced (``_constant_rate_frames``)."""
    assert time_base is not None  # (a take without one is never sought: ``_seek_point``)
    return int(scan.pts[0] + frame * (1 / (fps * time_base)))


# Packets a decoder is given after a seek before it must have shown a frame: a keyframe's
# comes out after the frames that reorder delays (x264's B-frames: 2 to 4), and those a
# decoder on frame threads holds (16 at most).
SEEK_CHECK_PACKETS = 64


def _seek_lands(path: Path, stream_index: int, at: Fraction, land_pts: int, max_pixels: int | None) -> bool:
    """Whether seeking ``path`` to ``at`` (seconds on ffmpeg's clock) lands where decoding
    can start: the first frame decoded from there is a keyframe shown no later than the frame
    at ``land_pts``, the first one ``iter_frames`` keeps. A file whose index lies (an MP4
    without its sync-sample table says every frame is a keyframe) lands on a frame that
    needs the ones before it: the decoder drops frames up to the next real keyframe, or
    conceals what is missing, and the start is decoded from the beginning instead."""
    options = LITERAL_NAME | ({} if max_pixels is None else {"max_pixels": str(max_pixels)})
    try:
        with av.open(url(path), metadata_errors="ignore", options=options) as container:
            stream = container.streams.video[stream_index]
            container.seek(int(at * 1_000_000), backward=True, any_frame=False)  # as ffmpeg's -ss does
            for n, packet in enumerate(container.demux(stream)):
                for frame in packet.decode():
                    return bool(frame.key_frame) and frame.pts is not None and frame.pts <= land_pts
                if n >= SEEK_CHECK_PACKETS:
                    break
    except av.FFmpegError:  # a seek or a decode that fails from there: the take is read from its beginning
        return False
    return False


def _frames_in(seconds: float, fps: Fraction) -> int:
    """Whole frames at ``fps`` in ``seconds`` as the user wrote them (0.29 s at 100 fps is
    29 frames, which 0.29 as a binary float times 100 falls just short of)."""
    return math.floor(Fraction(seconds).limit_denominator(10**6) * fps)


# A VP8 or VP9 stream with transparency (a WebM whose track says ``alpha_mode`` 1: a
# cut-out presenter as background-removal tools export it) keeps its alpha in a side
# channel that FFmpeg's own decoders drop; libvpx's decode it (``iter_frames``).
ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}


def _tag(metadata: dict[str, str], name: str) -> str:
    """A container tag, whatever the case its muxer wrote it in."""
    return next((value for key, value in metadata.items() if key.lower() == name), "")


# FFmpeg's colour matrices (AVColorSpace) a 4:2:0 limited-range stream may declare, by what
# VideoInfo.colour makes of them; unspecified is BT.601 to FFmpeg's converters.
_MATRICES = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}  # bt709, unspecified, bt470bg, smpte170m
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


# Sample aspect ratios outside these are not believed (no camera writes them; a hostile
# file could ask for frames a hundred times wider): such a stream is read in square pixels.
_SAMPLE_ASPECT_BOUNDS = (Fraction(1, 4), Fraction(4))


def _believed(sample_aspect: Fraction | None) -> Fraction:
    """A stream's sample aspect ratio, 1 where it declares none or one out of bounds."""
    low, high = _SAMPLE_ASPECT_BOUNDS
    return sample_aspect if sample_aspect and low <= sample_aspect <= high else Fraction(1)


# FFmpeg's field orders (AVFieldOrder) of an interlaced stream: TT, BB, TB, BT.
_INTERLACED = (2, 3, 4, 5)
# BT.2100's HDR transfers (AVColorTransferCharacteristic: smpte2084, arib-std-b67), as
# VideoInfo.colour and zscale name them; BT.2020's primaries (AVColorPrimaries).
_HDR = {16: ("pq", "smpte2084"), 18: ("hlg", "arib-std-b67")}
# Wide gamuts an SDR stream may declare (AVColorPrimaries: BT.2020; DCI-P3 and Display P3,
# as an iPhone's photos are), as VideoInfo.colour names them.
_WIDE_GAMUTS = {9: "bt2020", 11: "p3", 12: "p3"}
# What iter_frames maps to SDR BT.709 (``ffmpeg.to_sdr``): HDR (tone-mapped), and SDR in a
# wide gamut.
HDR_COLOURS = tuple(colour for colour, _ in _HDR.values())
MAPPED_COLOURS = (*HDR_COLOURS, *sorted(set(_WIDE_GAMUTS.values())))
# The primaries and matrices a wide-gamut or HDR stream may declare, as zscale names them;
# one that declares none (or another) is taken for BT.2020's, as phones write HDR.
_ZSCALE_PRIMARIES = {1: "709", 9: "2020", 11: "smpte431", 12: "smpte432"}
_ZSCALE_MATRICES = {1: "709", 5: "470bg", 6: "170m", 9: "2020_ncl", 10: "2020_cl"}


def _colour(codec: av.video.codeccontext.VideoCodecContext) -> tuple[str, tuple[tuple[str, str], ...]]:
    """VideoInfo.colour and .colour_source of a stream, from its codec parameters (no decoding)."""
    # SDR in a wide gamut keeps its code values' curve (a photo's sRGB is read as BT.709's,
    # as every JPEG is): only its primaries change.
    wide = _WIDE_GAMUTS.get(int(codec.color_primaries))
    colour, transfer = _HDR.get(int(codec.color_trc)) or ((wide, "709") if wide is not None else ("", ""))
    if colour:
        source = (
            ("tin", transfer),
            ("pin", _ZSCALE_PRIMARIES.get(int(codec.color_primaries), "2020")),
            ("min", _ZSCALE_MATRICES.get(int(codec.colorspace), "2020_ncl")),
            ("rin", "full" if int(codec.color_range) == _FULL_RANGE else "limited"),
        )
        return colour, source
    if codec.format is None or codec.format.name != "yuv420p" or int(codec.color_range) == _FULL_RANGE:
        return "", ()
    return _MATRICES.get(int(codec.colorspace), ""), ()


def _looks_like_image(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """A still-image codec or demuxer: one picture, unless it decodes to more (an animation)."""
    return (
        stream.codec.canonical_name in _IMAGE_CODECS
        or container.format.name in _IMAGE_DEMUXERS
        or container.format.name.endswith("_pipe")
    )


# Seconds between a stream's frames, on average over its timestamps' span, past which a
# span over the frame limit is taken as damaged timestamps (a time scale broken: 100
# frames spread over hours, one every 512 s), not a long take: no camera's take, nor a
# slideshow's (a picture every 15 s is one, which a cut renders), is that sparse.
SPARSE_GAP_S = 300.0


def _check_span(
    path: Path, scan: _Scan, time_base: Fraction | None, fps: Fraction, max_frames: int | None, until_s: float | None
) -> None:
    """Refuse a stream whose timestamps span more than ``max_frames`` frames at ``fps``:
    read at a constant rate, the gaps between a few packets hours apart fill with repeats.
    ``until_s``: where a cut ends the part read (``--reference-seconds`` after the start),
    past which the span does not count (a timestamp damaged hours on is not read)."""
    if max_frames is None or time_base is None or not len(scan.pts):
        return
    whole = float((int(scan.pts[-1]) + scan.last_duration - int(scan.pts[0])) * time_base)  # seconds
    span = whole if until_s is None else min(whole, until_s)
    frames = span * fps
    if frames <= max_frames + 1:  # +1: a rounding's worth
        return
    again = "copy the take again from where it was recorded, or re-export it from its source"
    gaps = np.diff(scan.pts)
    jump = float(gaps.max() * time_base) if gaps.size else 0.0  # seconds
    if jump > whole / 2:  # one jump makes the span
        after = int(np.argmax(gaps)) + 1  # the frames before it
        before = float((scan.pts[after - 1] - scan.pts[0]) * time_base + 1 / fps)  # seconds they show
        cut = "" if before < 1 else \
            f"--reference-seconds {math.floor(before * 10 + 1e-3) / 10:g} uses the take before it, or "  # fmt: skip
        raise InputError(
            f"reference {path} has timestamps that jump {clock(jump)} on after its first "
            f"{after:,} frames ({before:.1f} s): the file is damaged there (a broken copy or remux); {cut}{again}",
            kind="unreadable_media",
        )
    if whole > SPARSE_GAP_S * len(scan.pts):  # its frames spread evenly over hours: no cut helps
        raise InputError(
            f"reference {path} holds {len(scan.pts):,} frames, but its timestamps spread them over {clock(whole)} "
            f"(one every {whole / len(scan.pts):,.0f} s): they are damaged (a broken copy or remux); {again}",
            kind="unreadable_media",
        )
    raise too_many_frames(
        path, f"has timestamps spanning {clock(span)}, {int(frames):,} frames at {float(fps):g} fps", max_frames
    )


def indexed_frames(path: str | os.PathLike[str]) -> int:
    """How many frames the first video stream of an MP4 holds, read from its index (the
    track's sample table) without decoding: for checking that an MP4 written earlier is
    whole. A file that cannot be opened, or that is cut short (its index places samples of
    any stream past its end), raises ``unreadable_media``; a container without a
    frame count (not an MP4) gives 0."""
    p = require_file(path, "video")
    with opened(p, "video") as container:
        return _video_stream(container, p, "video").frames
