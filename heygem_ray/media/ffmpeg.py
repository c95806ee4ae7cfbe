"""The ffmpeg binary, and ffmpeg processes driven through pipes.

Decoding and encoding run one ffmpeg binary (:func:`ffmpeg_exe`) with argument lists
built by ``ffmpeg-python``; :class:`FfmpegProcess` keeps one running with its stderr
drained, so no pipe fills up and blocks it. Files are named by ``file:`` URLs (:func:`url`),
so a name containing ``:`` is never taken for a protocol.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import threading
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Literal, cast

from heygem_ray.errors import EngineError, InputError, InternalError

_STDERR_LINES = 20  # ffmpeg stderr lines kept for error messages
# Frames through a pipe: (H, W, 3) uint8 BGR, or (H·3/2, W) uint8 I420 (``media.yuv``).
PixelFormat = Literal["bgr24", "yuv420p"]
# The scale filter's options that bring any picture to BT.709 limited-range YUV, rounded,
# from every pixel's chroma (swscale's defaults truncate and skip: written and read back,
# colours came up to 4 levels low, greys tinted blue). A picture already in that form
# passes through unchanged; an untagged one is taken for BT.601, as swscale takes it.
TO_BT709 = {"out_color_matrix": "bt709", "out_range": "tv", "flags": "bicubic+accurate_rnd+full_chroma_int"}


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


def url(path: Path) -> str:
    """``file:`` URL for FFmpeg, so names with ``:`` are not taken for protocols."""
    return f"file:{path.absolute()}"


def gpu_env() -> dict[str, str] | None:
    """The environment that starts an ffmpeg with this node's GPUs visible (None: this
    process's own). A Ray task that asked for no GPU runs with ``CUDA_VISIBLE_DEVICES``
    empty; NVENC and NVDEC are units of their own beside a GPU's cores, which the ffmpeg
    of such a task may use (``encoders``, ``decoders``)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return None


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a short ffmpeg command to completion, capturing its output."""
    try:
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False, env=env)
    except OSError as exc:
        raise EngineError(f"could not run ffmpeg ({args[0]}): {exc}", kind="ffmpeg_missing") from exc


def tail(stderr: str | bytes, lines: int = 3) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def video_filters(stream: Any, fps: Fraction | None) -> Any:
    """Constant rate ``fps`` (duplicating/dropping frames of variable-rate input; None for a
    still image, which stays one frame), then cropped to even width and height.

    ffmpeg has already turned the frames upright (autorotate) before these filters.
    """
    if fps is not None:
        stream = stream.filter("fps", fps=str(fps))
    return stream.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2", 0, 0)


class FfmpegProcess:
    """A running ffmpeg whose stderr a thread drains (so no pipe fills up and blocks it),
    keeping the last lines for error messages. :meth:`close` kills it if still running
    and reaps it."""

    def __init__(
        self, args: list[str], *, stdin: bool = False, stdout: bool = False, env: dict[str, str] | None = None
    ):
        self.args = args
        try:
            self.popen = subprocess.Popen(
                args,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
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
