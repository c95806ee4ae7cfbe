"""A template's frame store (``frames.bin`` + ``offsets.npy``, and ``stored.npy`` where frames
repeat): every reference frame, I420 in BT.709 limited range as the encoder takes it
(``media.yuv``), compressed losslessly one by one, so any frame can be read by index; a frame
that repeats the one before it (a take under 20 fps, each frame held; a still screen) is
stored once. ``StoreWriter`` writes it while analysis follows the faces (its disk space held
ahead), ``FrameStore`` reads it back (compose, the crops, checks), ``read_ahead``
decompresses a few frames ahead on a thread of its own.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from bisect import bisect_right
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from heygem_ray import progress, storage
from heygem_ray.errors import InputError
from heygem_ray.media import yuv
from heygem_ray.template.damage import DamagedTemplate, damaged_while_read

# The frame store's codec and level: lossless, and cheap both ways (1080p, 2 cores: a frame
# is stored in 3–8 ms and read back in 1.5–3 ms, where the JPEG store of version 3 took
# about 9 ms each way; bench/bench_compose.py).
FRAME_CODEC, FRAME_LEVEL = "zstd", 1
# Frames the store compresses (while analysis writes it) or decompresses (for the crops)
# ahead of the one in hand, on a thread beside the caller's: at most this many frames more
# in memory (3 MB each at 1080p).
STORE_AHEAD = 2


# The frame store holds its disk space ahead (``StoreWriter._reserve``): once its first
# RESERVE_FIRST frames are stored, and again every RESERVE_EVERY, what the whole reference
# will take at the bytes a frame stored so far, with RESERVE_MARGIN to spare (a take gets
# busier or noisier later), is allocated in the file. A reference whose template will not
# fit fails there, within a second of frames, instead of filling the disk under the
# node's other jobs and failing them too; two analyses at once cannot both count on the
# same free space.
RESERVE_FIRST, RESERVE_EVERY, RESERVE_MARGIN = 25, 250, 1.2
# Space a template leaves free on its disk for the run's other files (outputs being
# encoded, other templates, logs): a twentieth of the disk, at most 1 GiB.
KEEP_FREE_SHARE, KEEP_FREE_MAX = 0.05, 2**30


def same_frame(frame: np.ndarray, before: np.ndarray) -> bool:
    """Whether two frames of a take are the same pixels: a frame held (each of a slow take's
    frames shown several times) or a still screen. A middle row first, so a frame that
    differs costs next to nothing; a whole 1080p frame is compared in about 0.2 ms."""
    row = frame.shape[0] // 3  # (a row of the luma, which is the top two thirds of I420)
    return bool(np.array_equal(frame[row], before[row]) and np.array_equal(frame, before))


class FrameStore:
    """A template's ``frames.bin`` open for reading: stored frame ``j`` is the bytes from
    ``offsets[j]`` to ``offsets[j + 1]``, compressed (``FRAME_CODEC``); frame ``i`` is stored
    frame ``stored[i]`` (``StoreWriter.stored``; None: every frame is stored, ``i`` itself).
    Reads may come from several threads."""

    def __init__(self, path: Path, offsets: np.ndarray | Sequence[int], width: int, height: int,
                 stored: np.ndarray | Sequence[int] | None = None):  # fmt: skip
        self.path = path
        self._offsets = offsets
        self._stored = stored
        self._shape = yuv.frame_shape(width, height)
        self._codec = pa.Codec(FRAME_CODEC)
        # The stored frame read last and its pixels, where frames repeat: a frame held five
        # times is decompressed once and copied four times (0.3 ms a 1080p frame, not 2).
        self._last: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._file = open(path, "rb", buffering=0)  # closed by close()
        try:
            self._opened = os.fstat(self._file.fileno())  # which file: the folder may be replaced meanwhile
            held = self._opened.st_size
            if held != int(offsets[-1]):
                raise DamagedTemplate(f"{path.name} holds {held:,} bytes, not the {int(offsets[-1]):,} of its frames")
        except BaseException:
            self._file.close()
            raise

    def read(self, i: int) -> np.ndarray:
        """Frame ``i``: a new, writable uint8 I420 array. Bytes that do not decompress are a
        damaged template (``bad_template``), marked to be built again (``DAMAGED_FILE``)."""
        if self._stored is None:
            return self._read(i)
        j = int(self._stored[i])
        with self._lock:
            last = self._last
        if last is not None and last[0] == j:
            progress.moved()
            return last[1].copy()
        frame = self._read(j)
        with self._lock:
            self._last = j, frame.copy()
        return frame

    def _read(self, j: int) -> np.ndarray:
        """Stored frame ``j``, read and decompressed."""
        start, end = int(self._offsets[j]), int(self._offsets[j + 1])
        data = os.pread(self._file.fileno(), end - start, start)
        progress.moved()
        try:
            return _decompress(data, self._codec, self._shape)
        except OSError as exc:  # pyarrow raises it for bytes that do not decompress
            why = f"frame {j} does not decompress: {exc}"
            raise damaged_while_read(self.path, self._opened, why) from exc

    def is_at_path(self) -> bool:
        """Whether ``path`` still names the file this store opened (not one built in its
        place since, nor nothing: the folder set aside or removed)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        return os.path.samestat(now, self._opened)

    def close(self) -> None:
        self._file.close()


def _decompress(data: bytes | pa.Buffer, codec: pa.Codec, shape: tuple[int, int]) -> np.ndarray:
    """One stored frame's bytes → a new, writable ``shape`` uint8 I420 array."""
    frame = np.frombuffer(codec.decompress(data, decompressed_size=shape[0] * shape[1]), np.uint8)
    return frame.reshape(shape)


class StoreWriter:
    """The frame store as analysis writes it: each frame appended (``keep``; one that
    repeats the frame before it is not stored again), and any frame kept so far read back
    (``recall``: the tracker follows a new face back). ``offsets`` are the stored frames'
    (``FrameStore``), ``stored`` the stored frame each kept frame is.

    Frames are compressed on a thread of the writer's own, up to ``STORE_AHEAD`` frames
    ahead of the file (Zstandard releases the GIL: the tracker works on the next frame
    meanwhile), and written in order from the caller's thread."""

    def __init__(self, path: Path, width: int, height: int, frames: int = 0, then: int = 0, source: object = None):
        """``path``: frames.bin in a template's folder in the cache (messages name the cache).
        ``frames``: how many frames will be kept (0: unknown, no space held ahead);
        ``then``: the bytes the template's other files will take once the store is written
        (its crops); ``source``: the reference, as messages name it."""
        self._path, self._frames, self._then, self._source = path, frames, then, source
        self._reserved = 0  # bytes of the file allocated ahead (``_reserve``)
        self._codec = pa.Codec(FRAME_CODEC)  # reads back (recall)
        self._packer = pa.Codec(FRAME_CODEC, compression_level=FRAME_LEVEL)
        self._shape = yuv.frame_shape(width, height)
        self.offsets = [0]
        self.stored: list[int] = []
        self._before: np.ndarray | None = None  # the frame kept last
        self._out = open(path, "wb")
        try:
            self._in = open(path, "rb")
        except BaseException:  # (out of descriptors, say: the first is not left open)
            self._out.close()
            raise
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-store")
        self._packing: deque[Future[pa.Buffer]] = deque()  # compressed, or being compressed, in frame order

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self._write(ahead=0)
                self._out.flush()
                if self._reserved > self.offsets[-1]:  # the space held ahead and not used
                    os.ftruncate(self._out.fileno(), self.offsets[-1])
        finally:
            self._pool.shutdown(cancel_futures=True)
            self._out.close()
            self._in.close()

    def keep(self, frame: np.ndarray) -> bool:
        """Append ``frame`` (which is not changed after this call). True where it is the
        frame kept before it again (``same_frame``), which is not stored a second time."""
        if self._before is not None and same_frame(frame, self._before):
            self.stored.append(self.stored[-1])
            return True
        self.stored.append(self.stored[-1] + 1 if self.stored else 0)
        self._before = frame
        self._packing.append(self._pool.submit(self._packer.compress, frame))
        self._write(ahead=STORE_AHEAD)
        return False

    def _write(self, ahead: int) -> None:
        """Write the compressed frames in order: all but the last ``ahead`` (waiting for
        them), and any of those already compressed."""
        while self._packing and (len(self._packing) > ahead or self._packing[0].done()):
            packed = self._packing.popleft().result()
            self._out.write(packed)
            self.offsets.append(self.offsets[-1] + packed.size)
            written = len(self.offsets) - 1
            if written == RESERVE_FIRST or written % RESERVE_EVERY == 0:
                # The frames kept so far that these bytes show (those held count, with none).
                self._reserve(bisect_right(self.stored, written - 1))

    def _reserve(self, kept: int) -> None:
        """Allocate what the store will take in all, at the bytes a frame of the first
        ``kept`` took (``RESERVE_MARGIN`` more), where the file holds less; a disk that
        cannot hold it and the crops after it, and keep ``KEEP_FREE_SHARE`` of itself free,
        is the ``storage`` error that says so (``_space_error``)."""
        if kept >= self._frames:
            return
        per_frame = self.offsets[-1] / kept
        need = int(per_frame * self._frames * RESERVE_MARGIN)
        if need <= self._reserved:
            return
        disk = shutil.disk_usage(self._path)
        if disk.total == 0:  # a file system that reports no sizes (some FUSE mounts): nothing to go by
            return
        room = disk.free + max(self._reserved, self.offsets[-1])  # the disk's free space, and what the store holds
        keep = min(KEEP_FREE_MAX, int(KEEP_FREE_SHARE * disk.total))
        if room - need < self._then + keep:
            raise self._space_error(need, per_frame, kept, room, keep)
        self._out.flush()
        try:
            held = storage.hold_space(self._out.fileno(), need)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # taken meanwhile (another job's template)
                raise self._space_error(need, per_frame, kept, room, keep) from exc
            raise
        # A file system that cannot allocate ahead is checked again at the next count.
        self._reserved = need if held else 0

    def _space_error(self, need: int, per_frame: float, kept: int, free: int, keep: int) -> InputError:
        """The ``storage`` error of a template that will not fit on its disk."""
        folder, size = self._path.parent.parent, storage.readable_size
        return InputError(
            f"reference {self._source}: its analysis would take about {size(need + self._then)} in {folder} "
            f"({self._frames} frames at {size(per_frame)} a frame as its first {kept} were stored, and their "
            f"face crops), and that disk has {size(free)} for it, of which {size(max(0, free - keep))} may be used: "
            f"{size(keep)} is kept free for the run's other files; free space there (heygem-ray cache prune "
            f"--cache-dir {folder} removes templates unused for 30 days and what killed analyses left), give --cache-dir a folder on a larger disk, or use a few minutes of "
            "the reference (--reference-seconds 300 analyses its first five; a shorter reference is looped under "
            "longer audio)",
            kind="storage",
        )

    def recall(self, i: int) -> np.ndarray:
        self._write(ahead=0)
        self._out.flush()
        j = self.stored[i]
        start, end = self.offsets[j], self.offsets[j + 1]
        return _decompress(os.pread(self._in.fileno(), end - start, start), self._codec, self._shape)


def read_ahead(frames: Iterator[np.ndarray], depth: int) -> Generator[np.ndarray, None, None]:
    """``frames`` in order, each taken from it (from the store: read and decompressed) on a
    thread beside the caller's, up to ``depth`` frames before it is asked for."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-store") as pool:
        ahead = deque(pool.submit(next, frames, None) for _ in range(depth + 1))
        while (frame := ahead.popleft().result()) is not None:
            ahead.append(pool.submit(next, frames, None))
            yield frame
