"""Decoding through ffmpeg's pipes: a reference's frames, an audio track's samples.

Streamed, so memory stays flat however long the media are (except :func:`read_video`, a
helper for short clips).
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Generator
from fractions import Fraction
from pathlib import Path

import av
import ffmpeg
import numpy as np

from heygem_ray.errors import InputError, storage_error_in, storage_errors
from heygem_ray.media import yuv
from heygem_ray.media.audio_probe import CUT_SHORT_S, audio_stream, cut_short, declared_length, empty_audio, late_start
from heygem_ray.media.container import require_file
from heygem_ray.media.decoders import Decoder
from heygem_ray.media.ffmpeg import (
    DECODER_THREADS,
    TO_BT709,
    FfmpegProcess,
    PixelFormat,
    ffmpeg_exe,
    gpu_env,
    literal_name,
    to_sdr,
    url,
    video_filters,
)
from heygem_ray.media.limits import clock, decoder_limit
from heygem_ray.media.video_probe import ALPHA_DECODERS, HDR_COLOURS, MAPPED_COLOURS, VideoInfo, probe_video

_READ_CHUNK = 1 << 20  # bytes per read from an audio pipe


def iter_frames(
    info: VideoInfo, *, max_pixels: int | None = None, pixel_format: PixelFormat = "bgr24", decoder: Decoder = "cpu"
) -> Generator[np.ndarray, None, None]:
    """Yield the frames of ``info.path`` one at a time: (H, W, 3) uint8 BGR, or with
    ``pixel_format="yuv420p"`` (H·3/2, W) uint8 I420 frames in BT.709 limited range
    (``media.yuv``; ``info.colour`` says how: a reference already in that form, as HD
    H.264 usually is, comes out as decoded; a 4:2:0 BT.601 or untagged one, as the BGR
    path takes it, changes matrix only; any other is converted whole).

    Constant rate ``info.fps`` (variable-rate input is resampled by duplicating or
    dropping frames), deinterlaced (a frame per pair of fields), upright, cropped to
    ``info.width`` × ``info.height`` (in square pixels), ``info.frames`` of them where the
    probe cut the take (``VideoInfo.cut``), from ``info.start`` (the frames before it decoded
    and dropped, from ``info.seek`` where the probe found where to seek); a still image
    yields one frame. Each frame is a new, writable array.
    ffmpeg is killed and reaped if the consumer stops early.
    ``max_pixels``: ffmpeg's decoder refuses larger pictures (a stream that grows midway),
    which fails the decode. ``decoder="nvdec"``: decoded on this node's GPU (``decoders``;
    the frames are the same), filtered on the CPU as otherwise.
    """
    fps = None if info.is_image else info.fps
    on_gpu = {"hwaccel": "cuda"} if decoder == "nvdec" else {}
    picture = "g:0" if info.tile_grid else f"v:{info.video_stream}"  # a .heic photo's tiles, put together
    # A VP8 or VP9 take with transparency, by libvpx (FFmpeg's own decoders drop the alpha).
    libvpx = info.codec in ALPHA_DECODERS and has_alpha(info.pixel_format)
    alpha = {"c:v": ALPHA_DECODERS[info.codec]} if libvpx else {}
    seek = {"ss": f"{float(info.seek):.6f}"} if info.seek_frames else {}  # (``VideoInfo.seek``)
    source = ffmpeg.input(url(info.path), threads=DECODER_THREADS, **seek, **on_gpu, **alpha,
                          **decoder_limit(max_pixels), **literal_name(info.demuxer))  # fmt: skip
    source = source[picture]
    decoded = video_filters(source, fps, info.interlaced, info.start - info.seek_frames)
    if info.colour in MAPPED_COLOURS:
        # At the size yielded (``max_resolution``; for non-square pixels the scale below widens it).
        size = (info.width, info.height) if info.scaled_from is not None and info.sample_aspect == 1 else None
        decoded = to_sdr(decoded, info.colour, info.colour_source, hdr=info.colour in HDR_COLOURS, size=size)
    if has_alpha(info.pixel_format):
        # A picture with transparency (a cut-out presenter: a PNG or WebP with an alpha
        # channel or a palette with a transparent colour, a ProRes 4444 take, a VP8 or VP9
        # WebM with an alpha channel) is shown on black: its colours multiplied by its alpha.
        # What a file stores under its transparent pixels is what the tool that cut it out
        # left there (the old background, a colour), which the video showed as it was;
        # dropping the alpha below shows it again.
        decoded = decoded.filter("premultiply", inplace=1)
    # A guard for streams that change size midway: every frame comes out width × height.
    if pixel_format == "yuv420p":
        if info.colour == "bt601":
            # A change of matrix on the planes as they are (exact: every luma pixel with the
            # chroma sample that covers it), tagged BT.709, so the scale below passes it
            # through: a 1080p frame in 2 ms, where swscale's exact path takes 17.
            decoded = decoded.filter("colormatrix", "bt601", "bt709")
        decoded = decoded.filter("scale", info.width, info.height, **TO_BT709).filter("format", "yuv420p")
        shape: tuple[int, ...] = yuv.frame_shape(info.width, info.height)
    else:
        decoded = decoded.filter("scale", info.width, info.height)
        shape = (info.height, info.width, 3)
    first = {"frames:v": info.frames} if info.cut else {}  # a take cut at max_seconds (probe_video)
    args = (
        decoded.output("pipe:", format="rawvideo", pix_fmt=pixel_format, fps_mode="passthrough", **first)
        .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error",
                     "-filter_threads", str(DECODER_THREADS))
        .compile(cmd=ffmpeg_exe())
    )
    frame_bytes = int(np.prod(shape))
    proc = FfmpegProcess(args, task=f"decoding the reference {info.path}", stdout=True,
                         env=gpu_env() if decoder == "nvdec" else None)  # fmt: skip
    try:
        while True:
            frame = np.empty(shape, np.uint8)  # (H, W, 3) BGR or (H·3/2, W) I420
            got = proc.read_into(frame.data.cast("B"))  # a whole frame, less only at the end
            if not got:
                break
            if got < frame_bytes:
                raise _failed(proc, info.path, "reference", "{name}: the decoder stopped in the middle of a frame "
                              "({said}); re-export the video", decoder)  # fmt: skip
            yield frame
        rc = proc.wait()
        if rc != 0:
            raise _failed(proc, info.path, "reference",
                          "{name} could not be decoded ({said}); re-export it (e.g. as H.264 MP4)", decoder)
    finally:
        proc.close()


# What a decoding ffmpeg says, in the system's words, when the file's storage refuses a read
# (a failing disk or network mount, a permission taken away, a network mount that stopped
# answering). Not EPERM ("Operation not permitted"): a GPU decoder that cannot start says
# that of the device, not the file.
_READ_REFUSED = (errno.EIO, errno.EACCES, errno.ESTALE, errno.ENOTCONN, errno.ETIMEDOUT)


def _failed(proc: FfmpegProcess, path: Path, what: str, unreadable: str, decoder: Decoder = "cpu") -> InputError:
    """Why ``proc``, decoding the ``what`` ("reference", "audio") ``path`` with ``decoder``,
    failed: memory ran out (``out_of_memory``), something on the node killed ffmpeg
    (``stopped``: ``FfmpegProcess.outside_failure``), the file went away after it was probed
    (moved or deleted: ``missing_file``), its storage refused the read on the CPU decoder
    (``storage``: ``_READ_REFUSED``); else ``unreadable_media`` (which analysis falls back to
    the CPU from, where NVDEC failed), ``unreadable`` its words ("{name}": the file,
    "{said}": ffmpeg's)."""
    if (outside := proc.outside_failure()) is not None:
        return outside
    said = proc.stderr_tail()
    if not path.exists():
        return InputError(f"{what} {path} is gone: it was moved or deleted while the job read it ({said}); put it "
                          "back, then run the same manifest again", kind="missing_file")  # fmt: skip
    if decoder == "cpu" and (refused := storage_error_in(said, path, _READ_REFUSED)) is not None:
        return refused
    return InputError(unreadable.format(name=f"{what} {path}", said=said), kind="unreadable_media")


def has_alpha(pixel_format: str) -> bool:
    """Whether pictures in FFmpeg's ``pixel_format`` ("rgba", "yuva444p12le", "ya8", "pal8")
    may be transparent: an alpha component, or a palette (whose colours may carry one)."""
    if pixel_format == "pal8":
        return True
    try:
        return len(av.VideoFormat(pixel_format).components) in (2, 4)
    except (ValueError, TypeError):  # unknown to this PyAV, or none given
        return False


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000, *, whole: bool = True) -> np.ndarray:
    """The first audio stream of ``path``: (N,) float32 mono in [-1, 1] at ``sample_rate`` Hz.

    Decoded and resampled by ffmpeg, streamed from its pipe; channels are then averaged
    (as librosa's ``to_mono`` does: ffmpeg's own ``-ac 1`` would scale stereo by
    √½ per channel). Silence is valid; no samples is an ``empty_audio`` error. Audio cut
    short is ``unreadable_media`` unless ``whole`` is False (what it holds is wanted).
    """
    parts = list(_audio_blocks(path, sample_rate, whole=whole))  # (n,) float32 mono pieces
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
            # (a file's own write: ndarray.tofile's error on a full disk has no errno to tell it by)
            f.write(np.ascontiguousarray(block, "<f4").data)
            samples += len(block)
    return samples


# A float recording's samples may pass full scale (1.0) a little; past a thousand times
# it (+60 dBFS) they are no sound but a broken file, and the MP4's AAC encoder, given its
# samples, worked on for ever on those of a billion.
_LOUDEST = 1000.0


def _not_sound(path: Path, block: np.ndarray, before: int, sample_rate: int) -> InputError:
    """The ``unreadable_media`` error of audio whose ``block`` (after ``before`` samples)
    holds samples that are no numbers, or past ``_LOUDEST``."""
    bad = int(np.flatnonzero(~(np.abs(block) <= _LOUDEST))[0])
    value = float(block[bad])
    return InputError(
        f"audio {path} holds a sample of {value:g} at {clock((before + bad) / sample_rate)}: "
        f"{'no number' if not math.isfinite(value) else 'far past full scale (1.0)'}, so not sound but a damaged "
        "file (a float WAV written by a broken export, say); re-export it, as 16-bit PCM WAV for instance",
        kind="unreadable_media",
    )


def _audio_blocks(
    path: str | os.PathLike[str], sample_rate: int, max_seconds: float | None = None, *, whole: bool = True
) -> Generator[np.ndarray, None, None]:
    """The decoded audio of ``path`` as consecutive (n,) float32 mono blocks in [-1, 1];
    raises ``empty_audio`` when there are none, ``unreadable_media`` when ffmpeg fails or
    (where ``whole``) the file decodes to less than its header declares (``cut_short``),
    ``too_large`` when there are more than ``max_seconds`` (see :func:`decode_audio`)."""
    p = require_file(path, "audio")
    most = math.inf if max_seconds is None else max_seconds * sample_rate  # samples
    with audio_stream(p, max_seconds) as (container, stream):
        channels = stream.codec_context.channels
        demuxer = container.format.name
        declared, late = declared_length(p, container, stream), late_start(container, stream)
    # FFmpeg's WAV demuxer hands out 4 KiB packets unless told otherwise, and each costs
    # it a trip through the kernel and its filters: ten hours of 16 kHz mono took 25 s,
    # most of it system time; in 1 MiB packets, 2 s (bench/bench_wav.py). The samples are
    # the same. The option is the WAV demuxer's alone (FFmpeg refuses it for any other),
    # so that demuxer is named with it: the one the probe above found.
    packets = {"format": "wav", "max_size": _READ_CHUNK} if demuxer == "wav" else {}
    # ac: the pipe carries exactly this many channels per sample, as ffmpeg is told rather
    # than as we might guess from its output, so the samples cannot be misaligned. It is the
    # stream's own count: nothing is remixed, and every channel weighs the same in the mean.
    # first_pts: the samples as a player plays them from the file's start. A recording whose
    # sound track starts after its picture (a camera's, an editor's export: its stream's
    # start time later than the file's) begins with that much silence, as the MP4 written
    # from it does (``VideoWriter``); without it, the mouth ran ahead of the speech by the
    # gap, and the speech's last part of that length was cut.
    args = (
        ffmpeg.input(url(p), **packets)["a:0"]
        .filter("aresample", first_pts=0)
        .output("pipe:", format="f32le", acodec="pcm_f32le", ar=sample_rate, ac=channels)
        .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "error")
        .compile(cmd=ffmpeg_exe())
    )
    frame_bytes = 4 * channels  # one float32 per channel per sample
    proc = FfmpegProcess(args, task=f"decoding the audio {p}", stdout=True)
    samples = 0
    try:
        buffer = bytearray(_READ_CHUNK // frame_bytes * frame_bytes)
        while got := proc.read_into(memoryview(buffer)):
            usable = got // frame_bytes * frame_bytes  # a full read is whole samples
            block = _mono(np.frombuffer(buffer, "<f4", count=usable // 4).reshape(-1, channels))
            if not np.all(np.abs(block) <= _LOUDEST):  # (NaN fails it too)
                raise _not_sound(p, block, samples, sample_rate)
            np.clip(block, -1.0, 1.0, out=block)
            samples += len(block)
            if max_seconds is not None and samples > most:  # its header said less
                raise InputError(
                    f"audio {p} is longer than its header declares: decoding passed the limit of "
                    f"{clock(max_seconds)} (--max-audio-seconds {max_seconds:g}); split it into shorter files, "
                    "or raise the limit",
                    kind="too_large",
                )
            yield block
        rc = proc.wait()
    finally:
        proc.close()
    if rc != 0:
        raise _failed(proc, p, "audio", "{name} could not be decoded ({said}); re-export it (e.g. as WAV or MP3)")
    if samples == 0:
        raise empty_audio(p)
    if declared is not None and whole:
        heard = samples / sample_rate - late
        if heard < (promised := declared.seconds_for(heard)) - CUT_SHORT_S:
            raise cut_short(p, heard, promised)


# A mix this much quieter (in RMS) than its loudest channel: channels that cancel.
CANCELLED_MIX = 0.1


def _mono(samples: np.ndarray) -> np.ndarray:
    """(n, channels) float32 samples as (n,) mono: their mean, where every channel weighs
    the same, or the loudest channel alone where the mean cancels them (a microphone
    wired with one channel's polarity reversed: loud in stereo, silence when summed, and
    the row failed ``silent_audio``). Channels that are merely different (two voices, a
    stereo room) lose a third of their level in the mean at most, far from cancelling."""
    mixed = samples.mean(axis=1, dtype=np.float32)
    if samples.shape[1] == 1:
        return mixed
    levels = np.sqrt(np.mean(np.square(samples, dtype=np.float64), axis=0))
    loudest = int(np.argmax(levels))
    if np.sqrt(np.mean(np.square(mixed, dtype=np.float64))) < CANCELLED_MIX * levels[loudest]:
        return np.ascontiguousarray(samples[:, loudest])
    return mixed


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, Fraction]:
    """All frames of a video, (N, H, W, 3) uint8 BGR, and its fps. For short clips only:
    it holds the whole video in memory (use :func:`iter_frames` for anything else)."""
    info = probe_video(path)
    frames = list(iter_frames(info))
    if not frames:
        return np.zeros((0, info.height, info.width, 3), np.uint8), info.fps
    return np.stack(frames), info.fps
