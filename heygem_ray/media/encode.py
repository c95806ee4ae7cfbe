"""Encoding: frames (BGR, or I420 as compose hands them) and an audio track into an
H.264 + AAC MP4."""

from __future__ import annotations

import errno
import os
import signal
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import ffmpeg
import numpy as np

from heygem_ray.errors import EngineError, InternalError, folder_removed, storage_error, storage_error_in
from heygem_ray.media import yuv
from heygem_ray.media.container import require_file
from heygem_ray.media.encoders import Encoder, encoder_env, video_codec_options
from heygem_ray.media.ffmpeg import TO_BT709, FfmpegProcess, PixelFormat, ffmpeg_exe, url

AAC_BITRATE = "128k"
AAC_SAMPLE_RATE = 48000  # every output gets 48 kHz AAC, whatever the input's rate


class VideoWriter:
    """Encode frames and an audio track into an MP4: H.264 yuv420p (BT.709) + AAC.

    ::

        with VideoWriter(out, width=w, height=h, fps=fps, audio=wav, duration=secs) as writer:
            for frame in frames:
                writer.write(frame)  # (H, W, 3) or (N, H, W, 3) uint8 BGR

    With ``pixel_format="yuv420p"`` the frames are I420, (H·3/2, W) or (N, H·3/2, W) uint8
    in BT.709 limited range (``media.yuv``), and go to the encoder as they are: no colour
    conversion, half the bytes through the pipe. ``encoder``: libx264 at ``preset`` and
    ``crf``, or h264_nvenc at the nearest preset and the same constant quality.

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
        preset: str = "lean",
        pixel_format: PixelFormat = "bgr24",
        encoder: Encoder = "libx264",
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
        self.pixel_format, self.encoder = pixel_format, encoder
        # One frame's array: (H, W, 3) BGR or (H·3/2, W) I420.
        self.frame_shape: tuple[int, ...] = (height, width, 3) if pixel_format == "bgr24" else yuv.frame_shape(width, height)
        self.frames_written = 0
        self._proc: FfmpegProcess | None = None

    def _args(self) -> list[str]:
        if self.pixel_format == "bgr24":
            video = ffmpeg.input(
                "pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{self.width}x{self.height}", framerate=str(self.fps)
            ).video.filter("scale", **TO_BT709).filter("format", "yuv420p")  # → BT.709 limited-range YUV
        else:  # already BT.709 limited range: said so, or ffmpeg would take them for BT.601 and convert
            video = ffmpeg.input(
                "pipe:", format="rawvideo", pix_fmt="yuv420p", s=f"{self.width}x{self.height}", framerate=str(self.fps),
                colorspace="bt709", color_range="tv", color_primaries="bt709", color_trc="bt709",
            ).video
        sound = ffmpeg.input(url(self.audio))["a:0"]
        d = f"{self.duration:.6f}"
        out = ffmpeg.output(
            video,
            sound,
            url(self.path),
            format="mp4",
            **video_codec_options(self.encoder, self.preset, self.crf),
            # Tagged as BT.709 limited range, so players convert back alike.
            colorspace="bt709",
            color_primaries="bt709",
            color_trc="bt709",
            color_range="tv",
            # from the file's start, a late sound track's gap filled (as decode_audio reads it)
            af=f"aresample=first_pts=0,apad=whole_dur={d},atrim=end={d}",
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
        self._proc = FfmpegProcess(self._args(), task=f"encoding {self.path}", stdin=True,
                                   env=encoder_env(self.encoder))  # fmt: skip
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append one frame or a batch of them (a leading axis), uint8: BGR (H, W, 3), or
        I420 (H·3/2, W) with ``pixel_format="yuv420p"``."""
        if self._proc is None:
            raise InternalError("VideoWriter.write called outside its `with` block")
        batch = frames[None] if frames.ndim == len(self.frame_shape) else frames
        if batch.shape[1:] != self.frame_shape or batch.dtype != np.uint8:
            raise InternalError(
                f"VideoWriter for {self.path} takes uint8 {self.pixel_format} frames of shape {self.frame_shape}, "
                f"got {frames.dtype} {frames.shape}"
            )
        try:
            self._proc.write_all(np.ascontiguousarray(batch).data)
        except BrokenPipeError:
            proc, self._proc = self._proc, None
            self._fail(proc, f"ffmpeg stopped accepting frames after {self.frames_written}")
        self.frames_written += len(batch)

    def _fail(self, proc: FfmpegProcess, what: str) -> NoReturn:
        proc.close()
        self.path.unlink(missing_ok=True)
        said = proc.stderr_tail()
        refused = storage_error_in(said, self.path.parent)  # ffmpeg could not write: a full disk, say
        if proc.popen.returncode == -signal.SIGXFSZ:  # past a file-size limit (ulimit -f): killed, nothing said
            refused = storage_error(OSError(errno.EFBIG, os.strerror(errno.EFBIG)), self.path)
        if refused is not None:
            raise refused
        if (outside := proc.outside_failure()) is not None:
            raise outside
        if os.strerror(errno.ENOENT) in said and str(self.path.absolute()) in said:
            # Not the media's doing: the file ffmpeg writes, or its folder, went away (another
            # job's staging file may have made the folder again since).
            raise folder_removed(self.path.parent, self.path.name)
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
        self._finish(proc)

    def finish(self) -> None:
        """End the stream and wait for the encoder to write the file (it holds frames in its
        lookahead: at 4K, seconds of work). Leaving the ``with`` block does it otherwise."""
        proc, self._proc = self._proc, None
        if proc is None:
            raise InternalError("VideoWriter.finish called outside its `with` block, or twice")
        self._finish(proc)

    def _finish(self, proc: FfmpegProcess) -> None:
        try:
            rc = proc.wait()
        except EngineError:  # stalled: killed with its file half written
            self.path.unlink(missing_ok=True)
            raise
        if rc != 0 or not self.path.is_file():
            self._fail(proc, f"ffmpeg exited with status {rc} after {self.frames_written} frames")
