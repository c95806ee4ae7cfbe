"""Encoding: BGR frames and an audio track into an H.264 + AAC MP4."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import ffmpeg
import numpy as np

from heygem_ray.errors import EngineError, InternalError, storage_error_in
from heygem_ray.media.container import require_file
from heygem_ray.media.ffmpeg import FfmpegProcess, ffmpeg_exe, url

AAC_BITRATE = "128k"
AAC_SAMPLE_RATE = 48000  # every output gets 48 kHz AAC, whatever the input's rate


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
        self._proc: FfmpegProcess | None = None

    def _args(self) -> list[str]:
        video = ffmpeg.input(
            "pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{self.width}x{self.height}", framerate=str(self.fps)
        )
        sound = ffmpeg.input(url(self.audio))["a:0"]
        d = f"{self.duration:.6f}"
        out = ffmpeg.output(
            video.video,
            sound,
            url(self.path),
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
        self._proc = FfmpegProcess(self._args(), stdin=True)
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

    def _fail(self, proc: FfmpegProcess, what: str) -> NoReturn:
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
