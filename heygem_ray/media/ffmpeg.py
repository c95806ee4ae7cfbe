"""The ffmpeg binary, and ffmpeg processes driven through pipes.

Decoding and encoding run one ffmpeg binary (:func:`ffmpeg_exe`) with argument lists
built by ``ffmpeg-python``; :class:`FfmpegProcess` keeps one running with its stderr
drained, so no pipe fills up and blocks it, and never waits on it for ever: an ffmpeg that
hands over or takes no byte, and uses no CPU, for ``STALL_S`` (or moves none for
``_SPINNING`` times as long) is killed, and the job fails as ``stalled``.
Files are named by ``file:`` URLs (:func:`url`), so a name containing ``:`` is never taken
for a protocol.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import platform
import select
import shutil
import signal
import subprocess
import threading
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Literal, NoReturn

from heygem_ray import progress
from heygem_ray.errors import EngineError, InputError, InternalError, out_of_memory, says_out_of_memory

log = logging.getLogger(__name__)

_STDERR_LINES = 20  # ffmpeg stderr lines kept for error messages
# An ffmpeg that hands over or takes no byte, and uses no CPU, for this long is stuck, not
# slow: the slowest picture decodes or encodes in seconds, and one that is working uses CPU
# (x264 flushing a long lookahead at 8K, say), while a read stuck on a network file system,
# or a GPU's decoder or encoder that stopped answering, waits without it. It is killed and
# the job fails (kind ``stalled``). One that uses CPU without moving a byte for 6 × as long
# is stuck too (a CUDA wait spins on a core while a GPU hangs).
STALL_S = 600.0
_SPINNING = 6
# A wait on a pipe first polls this many milliseconds before it starts watching ffmpeg's CPU.
_QUICK_MS = 1000
# The size asked for the frame pipes' buffers (Linux's default limit for a process).
_PIPE_BYTES = 1 << 20
_SET_PIPE_SIZE: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux's fcntl only
# How long a killed ffmpeg is waited for. One stuck in the kernel (a read from a dead
# network file system) cannot die until that read returns: it is left behind, and said so.
_REAP_S = 10.0
# Frames through a pipe: (H, W, 3) uint8 BGR, or (H·3/2, W) uint8 I420 (``media.yuv``).
PixelFormat = Literal["bgr24", "yuv420p"]
# The scale filter's options that bring any picture to BT.709 limited-range YUV, rounded,
# from every pixel's chroma (swscale's defaults truncate and skip: written and read back,
# colours came up to 4 levels low, greys tinted blue). A picture already in that form
# passes through unchanged; an untagged one is taken for BT.601, as swscale takes it.
TO_BT709 = {"out_color_matrix": "bt709", "out_range": "tv", "flags": "bicubic+accurate_rnd+full_chroma_int"}
# HDR to SDR (``to_sdr``): HDR's reference white (BT.2408's 203 cd/m², where HLG puts 75 %
# of its signal and a phone exposes a face or a sheet of paper) becomes SDR's white. What is
# darker keeps its tones; what is brighter rolls off (Möbius, linear up to TONE_KNEE of
# white) instead of clipping. An SDR take made HDR this way comes back within 37–45 dB PSNR;
# read as SDR, as it was before this, 14–23 dB (its faces far too dark: docs/results.md).
HDR_WHITE_NITS = 203
TONE_KNEE = 0.8


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


# FFmpeg's reader of still images (the image2 demuxer) takes a name with ``%d`` in it for a
# numbered sequence (``teacher%d.jpg``: teacher1.jpg, teacher2.jpg, … beside it, read as a
# video). Its option that reads the file named, and only it: PyAV leaves an option no
# demuxer takes unused; the ffmpeg command refuses one (``literal_name``).
LITERAL_NAME = {"pattern_type": "none"}


def literal_name(demuxer: str) -> dict[str, str]:
    """ffmpeg input options that read a file ``demuxer`` opens (its name, as PyAV's
    ``container.format.name`` gives it) as the one file its name names."""
    return LITERAL_NAME if "image2" in demuxer.split(",") else {}


# Present on a machine with an NVIDIA driver loaded (NVENC and NVDEC need one).
NVIDIA_DEVICE = "/dev/nvidiactl"


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


def tail(stderr: str | bytes, lines: int = 2) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def video_filters(stream: Any, fps: Fraction | None, interlaced: bool = False, skip: int = 0) -> Any:
    """Deinterlaced (``interlaced``: ``DEINTERLACE``), at constant rate ``fps``
    (duplicating/dropping frames of variable-rate input; None for a still image, which
    stays one frame), less its first ``skip`` frames at that rate (decoded and dropped),
    then cropped to even width and height.

    ffmpeg has already turned the frames upright (autorotate) before these filters.
    """
    if interlaced:
        stream = stream.filter("bwdif", **DEINTERLACE)
    if fps is not None:
        stream = stream.filter("fps", fps=str(fps))
    if skip:
        stream = stream.filter("trim", start_frame=skip)
    return stream.filter("crop", "trunc(iw/2)*2", "trunc(ih/2)*2", 0, 0)


# An interlaced reference's frames, each woven from two fields shot 1/50 or 1/60 s apart,
# comb wherever the presenter moves: a frame from each pair of fields, motion-adaptive
# (bwdif: where nothing moved the frame is kept whole), for frames flagged interlaced only.
DEINTERLACE = {"mode": "send_frame", "parity": "auto", "deint": "interlaced"}
# The filters ``to_sdr`` needs: FFmpeg's ``zscale`` is there only where it was built with
# zimg (the bundled one, Debian's and Ubuntu's are; a minimal build may not be).
SDR_FILTERS = ("zscale", "tonemap")


@functools.lru_cache(maxsize=1)
def missing_filters() -> tuple[str, ...]:
    """Which of ``SDR_FILTERS`` the ffmpeg in use lacks (asked once per process)."""
    listed = run([ffmpeg_exe(), "-hide_banner", "-filters"]).stdout.decode(errors="replace").split()
    return tuple(name for name in SDR_FILTERS if name not in listed)


def to_sdr(
    stream: Any, colour: str, source: tuple[tuple[str, str], ...], hdr: bool, size: tuple[int, int] | None = None
) -> Any:
    """The pictures of ``stream``, HDR (``hdr``: ``colour`` "hlg" or "pq", tone-mapped) or
    SDR in a wide gamut ("bt2020", "p3"), described by ``source``
    (``VideoInfo.colour_source``), as SDR BT.709 limited-range 4:2:0, tagged so; at
    ``size`` (width, height) where given, resized in the first step, so the rest works on
    that many pixels (a 4K take read at 1080p is tone-mapped at 1080p). An ffmpeg without
    the filters for it is ``ffmpeg_missing``."""
    if missing := missing_filters():
        raise EngineError(
            f"the ffmpeg in use ({ffmpeg_exe()}) has no {' or '.join(missing)} filter, which maps a take shot "
            f"in {'HDR' if hdr else 'a wide gamut'} to SDR BT.709: point HEYGEM_FFMPEG at an ffmpeg built "
            "with zimg (Debian's and Ubuntu's are), or unset it and take ffmpeg off PATH to use the bundled one; "
            "or export the take as SDR (BT.709)",
            kind="ffmpeg_missing",
        )
    resize = {} if size is None else {"w": size[0], "h": size[1], "f": "bicubic"}
    if not hdr:
        mapped = stream.filter("zscale", **dict(source), **resize, t="709", p="709")
    else:
        linear = stream.filter("zscale", **dict(source), **resize, t="linear", npl=HDR_WHITE_NITS).filter(
            "format", "gbrpf32le"
        )
        mapped = linear.filter("zscale", p="709").filter("tonemap", "mobius", param=TONE_KNEE).filter("zscale", t="709")
    return mapped.filter("zscale", m="709", r="limited").filter("format", "yuv420p")


# FFmpeg's threads per reference decoder. Left alone, its H.264 decoder runs a frame thread
# per core and one more (17 on a 16-core node), each holding frames, in every job that
# analyses a reference, while a node runs a job per core. Reading noisy 4K as analysis does
# with 17 decoder threads on 2 cores (the ratio of sixteen such decoders on 16 cores), the
# ffmpeg peaked at 704 MB and took 1.08× the CPU of 2 threads (335 MB); at 1080p, 212
# against 118 MB and 1.13× (bench/bench_decoder_threads.py). As for x264
# (``encoders.X264_THREADS``), two let a job alone on a machine decode on two cores. Its
# filters (an HDR take's tone mapping, ``ffmpeg.to_sdr``) run as many threads.
DECODER_THREADS = 2


class FfmpegProcess:
    """A running ffmpeg whose stderr a thread drains (so no pipe fills up and blocks it),
    keeping the last lines for error messages. Frames go in with :meth:`write_all` and come
    out with :meth:`read_into`; either raises ``EngineError`` kind ``stalled`` (ffmpeg
    killed, the message naming ``task``) when ffmpeg moves no byte and uses no CPU for
    ``STALL_S`` seconds, or moves none for ``_SPINNING`` times as long. :meth:`close` kills
    it if still running and reaps it."""

    def __init__(
        self,
        args: list[str],
        *,
        task: str,
        stdin: bool = False,
        stdout: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.args, self.task = args, task  # task: what it does, for messages ("decoding the reference …")
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
        # Our ends of the frame pipes do not block: each wait is a poll with a deadline. On
        # Linux their buffers are made as large as the system lets (1 MiB by default, from
        # 64 KiB), so a frame crosses in a few calls; elsewhere (macOS) they stay as they are.
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                if _SET_PIPE_SIZE is not None:
                    with contextlib.suppress(OSError):  # over the system's limit (fs/pipe-max-size): the default stays
                        fcntl.fcntl(pipe.fileno(), _SET_PIPE_SIZE, _PIPE_BYTES)
        self._pollers: dict[int, select.poll] = {}  # our pipe ends' (fd → its poll, for what we wait on there)
        self._lines: deque[str] = deque(maxlen=_STDERR_LINES)
        self._drainer = threading.Thread(target=self._drain, name="ffmpeg-stderr", daemon=True)
        self._drainer.start()
        self._killed = False  # by this process (``close``)
        self._oom_kills = oom_kills()  # the node's count when it started (``outside_failure``)

    def _drain(self) -> None:
        for raw in self.popen.stderr or ():
            line = raw.decode(errors="replace").strip()
            if line:
                self._lines.append(line)

    def _pipe(self, pipe: IO[bytes] | None, name: str) -> int:
        if pipe is None or pipe.closed:
            raise InternalError(f"this ffmpeg has no open {name} pipe")
        return pipe.fileno()

    def read_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` from ffmpeg's stdout: the bytes read, fewer only where ffmpeg's
        output ended (0: nothing was left)."""
        fd, got = self._pipe(self.popen.stdout, "stdout"), 0
        while got < len(buffer):
            try:
                n = os.readv(fd, [buffer[got:]])
            except BlockingIOError:
                self._await(fd, select.POLLIN, "handed over no data")
                continue
            if n == 0:
                break
            got += n
            progress.moved()
        return got

    def write_all(self, data: memoryview) -> None:
        """Write all of ``data`` to ffmpeg's stdin. ``BrokenPipeError`` when ffmpeg has
        stopped reading (it exited: its status says why)."""
        fd, view, sent = self._pipe(self.popen.stdin, "stdin"), data.cast("B"), 0
        while sent < len(view):
            try:
                sent += os.write(fd, view[sent:])
                progress.moved()
            except BlockingIOError:
                self._await(fd, select.POLLOUT, "took no data")

    def _await(self, fd: int, event: int, what: str) -> None:
        """Wait until ``fd`` is ready for ``event`` (or closed), while ffmpeg is working."""
        if (poller := self._pollers.get(fd)) is None:
            poller = self._pollers[fd] = select.poll()
            poller.register(fd, event)
        # Most waits end within milliseconds: ffmpeg's CPU time is read only for one that
        # does not (a frame's few waits would otherwise cost more than the writes).
        if poller.poll(_QUICK_MS):
            return
        ticks, waited = _cpu_ticks(self.popen.pid), 0
        while not poller.poll(STALL_S * 1000):
            waited += 1
            ticks = self._working(ticks, waited, what)

    def _working(self, ticks: int | None, waited: int, what: str) -> int | None:
        """After ``waited`` spans of ``STALL_S`` in which ffmpeg ``what`` (moved no byte, or did
        not end): ``stalled`` where it used no CPU in the last one (``ticks``: its CPU time
        before it) or ``waited`` is ``_SPINNING``; else its CPU time now."""
        now = _cpu_ticks(self.popen.pid)
        if now is None or ticks is None or now <= ticks:
            self._stalled(f"{what} and used no CPU for {STALL_S:g} s")
        if waited >= _SPINNING:
            self._stalled(f"{what} for {waited * STALL_S:g} s (using CPU all along)")
        progress.moved()  # working: its own guard watches it from here
        return now

    def _stalled(self, what: str) -> NoReturn:
        self.close()
        raise EngineError(
            f"{self.task}: ffmpeg {what}, and was stopped ({self.stderr_tail()}): a read stuck on a "
            "network file system, or a GPU's decoder or encoder that stopped answering; check the "
            "node's storage and GPU, then run the same manifest again",
            kind="stalled",
        )

    def stderr_tail(self, lines: int = 5) -> str:
        return " | ".join(list(self._lines)[-lines:]) or "no message"

    def outside_failure(self) -> InputError | None:
        """Once ffmpeg has failed, why, where the media is not the cause (``outside_failure``):
        the ``out_of_memory`` error where it ended for want of memory, its own words saying
        so (x264's "malloc of size N failed", the system's "Cannot allocate memory"), or
        killed by a SIGKILL this process did not send (what the kernel's out-of-memory
        killer sends) while the node counted an OOM kill; where the node counted none, the
        ``stopped`` error that says something else killed it; else None."""
        try:
            rc = self.popen.wait(_REAP_S)
        except subprocess.TimeoutExpired:
            return None
        self._reap_stderr()
        now = oom_kills()
        counted = None if now is None or self._oom_kills is None else now > self._oom_kills
        return outside_failure(self.task, None if self._killed else rc, "\n".join(self._lines), counted)

    def wait(self) -> int:
        """Close our ends of the pipes, wait for ffmpeg to exit while it is working (else
        ``stalled``), return its exit status."""
        self._close_pipes()
        ticks, waited = _cpu_ticks(self.popen.pid), 0
        while True:
            try:
                rc = self.popen.wait(STALL_S)
                break
            except subprocess.TimeoutExpired:
                waited += 1
                ticks = self._working(ticks, waited, "did not end after its input did")
        self._reap_stderr()
        return rc

    def close(self) -> None:
        """Kill ffmpeg if it is still running, and reap it (one that will not die within
        ``_REAP_S`` is left behind, with a warning)."""
        if self.popen.poll() is None:
            self._killed = True
            self.popen.kill()
        self._close_pipes()
        try:
            self.popen.wait(_REAP_S)
        except subprocess.TimeoutExpired:
            log.warning("ffmpeg (pid %d) did not exit %g s after it was killed; left behind", self.popen.pid, _REAP_S)
            return
        self._reap_stderr()

    def _reap_stderr(self) -> None:
        """Once ffmpeg has exited: the drainer has its last lines; close the pipe."""
        self._drainer.join(_REAP_S)
        if self.popen.stderr is not None and not self._drainer.is_alive():
            self.popen.stderr.close()

    def _close_pipes(self) -> None:
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:  # ffmpeg already exited: its status says why
                    pass


def outside_failure(task: str, returncode: int | None, stderr: str, oom_killed: bool | None = None) -> InputError | None:
    """Why an ffmpeg that failed doing ``task`` failed, where the cause is not the media: the
    ``out_of_memory`` error where it ran out of memory, naming the line of its ``stderr``
    that says so, or where a SIGKILL ended it (``returncode``; None where this process
    killed it), as the kernel's out-of-memory killer does; unless ``oom_killed`` is False
    (the node counted no OOM kill while it ran: ``oom_kills``), then the ``stopped`` error
    that says something else on the node killed it. ``oom_killed`` None: the count could not
    be read. None for any other failure."""
    node = platform.node()
    if returncode == -signal.SIGKILL:
        if oom_killed is False:
            return InputError(
                f"{task}: ffmpeg was killed (SIGKILL) on node {node}, not by this job nor by the kernel's "
                "out-of-memory killer (the node counted no OOM kill meanwhile): something else there stopped it (a "
                "person, a process cleaner, the run cancelling this job); run the same manifest again to render this "
                "row",
                kind="stopped",
            )
        how = ("the kernel's out-of-memory killer did (the node counted an OOM kill meanwhile; 'dmesg' on the node "
               "names the process)" if oom_killed else
               "as the kernel kills the largest process of a node that ran out of memory ('dmesg' on the node says "
               "whether it did)")  # fmt: skip
        return out_of_memory(f"{task}: ffmpeg was killed (SIGKILL) on node {node}, {how}")
    said = next((line.strip() for line in stderr.splitlines() if says_out_of_memory(line)), None)
    if said is not None:
        return out_of_memory(f"{task}: ffmpeg ran out of memory on node {node} ({said})")
    return None


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed on this node since it
    started (``oom_kill`` in /proc/vmstat, Linux 4.13 on; a container's memory limit's kills
    count too), or None where it cannot be read (another system, an older kernel)."""
    try:
        with open("/proc/vmstat", "rb") as stats:
            for line in stats:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _cpu_ticks(pid: int) -> int | None:
    """The CPU time process ``pid`` has used, in clock ticks (/proc; None where unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command's name, which may hold spaces
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
