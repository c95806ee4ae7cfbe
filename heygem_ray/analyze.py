"""The ``analyze`` stage: a reference video or photo → a cached template.

A template holds everything later stages need from the reference, so the reference is
decoded once however many jobs use it:

* ``meta.json``: fps, frame size, frame count, how it was made (the frame store's codec;
  ``decoder``: what decoded the reference, "nvdec" or "cpu" (``media.decoders``), and
  ``decoder_note``: why NVDEC, where it was picked, was not used after all;
  ``source_colour``: the reference's own colour, ``VideoInfo.colour``: "hlg" or "pq"
  for an HDR take its frames were tone-mapped from; ``deinterlaced``: the reference was
  interlaced; ``sample_aspect``: its pixels' width over height, as stored, where the
  frames are square; ``scaled_from``: the frames' size before ``max_resolution`` scaled
  them down, or null; ``cut_to_seconds``: the seconds of the take kept where
  ``reference_seconds`` cut it, or null);
* ``frames.bin`` + ``offsets.npy``: every decoded frame, I420 in BT.709 limited range
  as the encoder takes it (``media.yuv``), compressed losslessly one by one (Zstandard at
  its fastest level), so any frame can be read by index — compose walks the reference
  forwards and backwards (ping-pong) without holding it in memory — and reaches the
  encoder with the bytes it was decoded with; its disk space is held ahead while it is
  written (``StoreWriter._reserve``);
* ``boxes.npy``: (n, 4) int32 crop box per frame (from the smoothed face track);
* ``present.npy``: (n,) bool, whether the face is there; frames without it are left
  as they are in the output;
* ``points.npy``: (n, 5, 2) float32 face points per frame (eyes, nose tip, mouth
  corners: ``face.align.alignment_points``), where face restoration aligns the face;
* ``crops.npy``: (n, S, S, 3) uint8 BGR face crops at the pack's input size;
* ``faces.npz``: the presenter's face track the crops were cut along (``FaceTrack``:
  steady face boxes (n, 4) float32, the frames the detector found it in (n,) bool, mouth
  and chin per frame, its looks per frame (n, LOOKS) float32 (``face/looks.py``) and the
  other faces (k, 5) float32), which the reference checks read (``checks.py``).

Templates live under ``cache_dir/<key>`` where the key hashes the file's content, the
detector settings and the crop geometry. Building one is atomic (a temporary folder,
then a rename) and locked, so two jobs with the same reference build it once.

The cache mends itself: a template is checked when it is opened (every file there, of the
shape ``meta.json`` says), and one that is not whole (a file deleted by a cleaner, cut
short by a copy, a folder left half removed, a frame found not to decompress) is set
aside and built again, with a warning, instead of failing its rows. An opened template
holds its frame store and crops open, so a job reading it goes on reading the same bytes
if another job replaces the folder meanwhile.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, suppress
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa

from heygem_ray import media, progress, storage
from heygem_ray.config import CUT_FILE_FRAMES, DetectorConfig, InputLimits
from heygem_ray.errors import InputError, PresenterLater, storage_errors
from heygem_ray.face.align import alignment_points
from heygem_ray.face.arrival import first_seen
from heygem_ray.face.haar import HaarDetector
from heygem_ray.face.looks import LOOKS
from heygem_ray.face.track import FaceTrack, Tracker, find_presenter
from heygem_ray.geometry import CropGeometry, cut_i420
from heygem_ray.media import yuv

log = logging.getLogger(__name__)

# 4: faces.npz (the reference checks); 5: the I420 frame store and points.npy; 6: both;
# 7: faces.npz holds the whole track; 8: HDR and BT.2020 takes mapped to SDR BT.709
# (``ffmpeg.to_sdr``), which version 7 stored as if they were SDR, and meta.json's
# ``source_colour``; interlaced takes deinterlaced (``ffmpeg.DEINTERLACE``); non-square
# pixels widened to square (``VideoInfo.sample_aspect``).
TEMPLATE_VERSION = 8
# A track found in fewer frames than this is taken for detector noise, not a presenter.
MIN_DETECTED_FRACTION = 0.2
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


# The file a template found damaged while it was read holds (why): the next analysis of
# its reference sets the folder aside and builds it again.
DAMAGED_FILE = "damaged.txt"


class DamagedTemplate(Exception):
    """A cached template that is not whole: which file, and what is wrong with it."""


@dataclass(frozen=True)
class Template:
    """A cached template, open (``Template.open``): its arrays in memory, its frame store
    and crops held open until ``close`` (or until it is collected)."""

    root: Path
    fps: Fraction
    width: int
    height: int
    frames: int
    is_image: bool
    boxes: np.ndarray  # (frames, 4) int32 crop boxes (x0, y0, x1, y1)
    present: np.ndarray  # (frames,) bool: the face is there (else the frame is left as it is)
    points: np.ndarray  # (frames, 5, 2) float32 face points (face.align's order), pixels
    # What decoded the reference: "nvdec" or "cpu" (media.decoders; the frames are the same).
    decoder: media.Decoder
    # The reference's colour as it was shot (VideoInfo.colour): "hlg" and "pq" are HDR,
    # tone-mapped to the SDR frames stored here; "bt2020" was mapped into BT.709's gamut.
    source_colour: str
    # The take was longer than ``reference_seconds``, which cut it to these frames.
    cut: bool
    # Seconds of the take before its first frame here (``reference_start``; 0: none).
    start: float
    store: FrameStore = field(repr=False, compare=False)
    crop_array: np.ndarray = field(repr=False, compare=False)  # (frames, S, S, 3) uint8 BGR, mapped

    @classmethod
    def open(cls, root: Path) -> Template:
        """The template in ``root``, checked whole: ``DamagedTemplate`` says what is not."""
        if not root.is_dir():
            raise DamagedTemplate(f"{root} is not a folder")
        if (root / DAMAGED_FILE).is_file():
            raise DamagedTemplate(f"it was found damaged while read: {_text(root / DAMAGED_FILE)}")
        meta = _meta(root)
        n = meta["frames"]
        boxes = _array(root, "boxes.npy", (n, 4), "i")
        present = _array(root, "present.npy", (n,), "b")
        points = _array(root, "points.npy", (n, 5, 2), "f")
        offsets = _array(root, "offsets.npy", (n + 1,), "i")
        _faces(root, n)
        store = FrameStore(_existing(root / "frames.bin"), offsets, meta["width"], meta["height"])
        try:
            crops = _array(root, "crops.npy", (n, None, None, 3), "u", mmap=True)
        except BaseException:
            store.close()
            raise
        return cls(root=root, fps=meta["fps"], width=meta["width"], height=meta["height"], frames=n,
                   is_image=meta["is_image"], boxes=boxes, present=present, points=points,
                   decoder=meta["decoder"], source_colour=meta["source_colour"], cut=meta["cut"],
                   start=meta["start"], store=store, crop_array=crops)  # fmt: skip

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Template:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def track(self) -> FaceTrack:
        """The presenter's face track the crop boxes were cut along (``faces.npz``)."""
        with np.load(self.root / FACES_FILE) as saved:
            return FaceTrack(
                boxes=saved["boxes"], present=self.present, detected=saved["detected"], mouths=saved["mouths"],
                chins=saved["chins"], looks=saved["looks"], others=saved["others"],
            )  # fmt: skip

    def crops(self, index: np.ndarray) -> np.ndarray:
        """Reference frame indices (k,) → (k, S, S, 3) uint8 BGR crops."""
        return np.asarray(self.crop_array[index])

    def read_i420(self, index: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the reference frame for each index, in order: a new, writable (H·3/2, W)
        uint8 I420 array (``media.yuv``)."""
        for i in index:
            yield self.store.read(int(i))

    def read_frames(self, index: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the (H, W, 3) uint8 BGR reference frame for each index, in order (for
        checks and previews; compose reads ``read_i420``)."""
        for frame in self.read_i420(index):
            yield yuv.to_bgr_frame(frame)


class FrameStore:
    """A template's ``frames.bin`` open for reading: frame ``i`` is the bytes from
    ``offsets[i]`` to ``offsets[i + 1]``, compressed (``FRAME_CODEC``). Reads may come from
    several threads."""

    def __init__(self, path: Path, offsets: np.ndarray | Sequence[int], width: int, height: int):
        self.path = path
        self._offsets = offsets
        self._shape = yuv.frame_shape(width, height)
        self._codec = pa.Codec(FRAME_CODEC)
        self._file = open(path, "rb", buffering=0)  # closed by close()
        try:
            held = os.fstat(self._file.fileno()).st_size
            if held != int(offsets[-1]):
                raise DamagedTemplate(f"{path.name} holds {held:,} bytes, not the {int(offsets[-1]):,} of its frames")
        except BaseException:
            self._file.close()
            raise

    def read(self, i: int) -> np.ndarray:
        """Frame ``i``: a new, writable uint8 I420 array. Bytes that do not decompress are a
        damaged template (``bad_template``), marked to be built again (``DAMAGED_FILE``)."""
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        data = os.pread(self._file.fileno(), end - start, start)
        progress.moved()
        try:
            return _decompress(data, self._codec, self._shape)
        except OSError as exc:  # pyarrow raises it for bytes that do not decompress
            why = f"frame {i} does not decompress: {exc}"
            raise _damaged_while_read(self.path.parent, why) from exc

    def close(self) -> None:
        self._file.close()


def _decompress(data: bytes | pa.Buffer, codec: pa.Codec, shape: tuple[int, int]) -> np.ndarray:
    """One stored frame's bytes → a new, writable ``shape`` uint8 I420 array."""
    frame = np.frombuffer(codec.decompress(data, decompressed_size=shape[0] * shape[1]), np.uint8)
    return frame.reshape(shape)


def _damaged_while_read(root: Path, why: str) -> InputError:
    """The error for a template found damaged while read; the template is marked for the
    next analysis of its reference to build again (where the cache can be written)."""
    try:
        storage.write_bytes(root / DAMAGED_FILE, why.encode())
        fix = "it is analysed again the next time a job uses this reference: run the same manifest again"
    except OSError:
        fix = "delete that folder and run again to rebuild it"
    return InputError(f"template {root} is damaged ({why}); {fix}", kind="bad_template")


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:200]
    except OSError as exc:
        return str(exc)


def _meta(root: Path) -> dict[str, Any]:
    """``meta.json``, with its fields as the template uses them (fps a Fraction)."""
    try:
        meta = json.loads(_existing(root / "meta.json").read_text())
        if meta["version"] != TEMPLATE_VERSION:
            raise DamagedTemplate(f"meta.json is of version {meta['version']!r}, not {TEMPLATE_VERSION}")
        return {
            "fps": Fraction(meta["fps"]),
            "width": _positive(meta["width"]),
            "height": _positive(meta["height"]),
            "frames": _positive(meta["frames"]),
            "is_image": bool(meta["is_image"]),
            "decoder": "nvdec" if meta.get("decoder") == "nvdec" else "cpu",
            "source_colour": str(meta["source_colour"]),
            "cut": bool(meta.get("cut_to_seconds")),  # (templates made before the option have none)
            "start": float(meta.get("start_seconds") or 0.0),  # (nor this one)
        }
    except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
        raise DamagedTemplate(f"meta.json does not read ({type(exc).__name__}: {exc})") from exc


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DamagedTemplate(f"{path.name} is missing")
    return path


def _positive(value: object) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{value!r} is not a positive whole number")
    return value


def _array(root: Path, name: str, shape: tuple[int | None, ...], kind: str, *, mmap: bool = False) -> np.ndarray:
    """``root``/``name``, a .npy file, checked to be of ``shape`` (None: any length) and of
    NumPy dtype ``kind`` ("i", "u", "f", "b")."""
    try:
        array = np.load(_existing(root / name), mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as exc:
        raise DamagedTemplate(f"{name} does not load ({type(exc).__name__}: {exc})") from exc
    if not _fits(array.shape, shape) or array.dtype.kind != kind:
        raise DamagedTemplate(f"{name} holds {array.dtype} {array.shape}, where {shape} of kind {kind!r} belong")
    return array


def _fits(shape: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(shape) == len(want) and all(w is None or s == w for s, w in zip(shape, want, strict=True))


def _faces(root: Path, n: int) -> None:
    """Check ``faces.npz`` (``save_faces``) for a track of ``n`` frames."""
    rows = {"boxes": (n, 4), "detected": (n,), "mouths": (n, 2), "chins": (n,), "looks": (n, len(LOOKS)),
            "others": (None, 5)}  # fmt: skip
    try:
        with np.load(_existing(root / FACES_FILE)) as saved:
            found = {key: saved[key].shape for key in rows}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DamagedTemplate(f"{FACES_FILE} does not load ({type(exc).__name__}: {exc})") from exc
    for key, shape in rows.items():
        if not _fits(found[key], shape):
            raise DamagedTemplate(f"{FACES_FILE} holds {key} of shape {found[key]}, where {shape} belongs")


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            progress.moved()
    return h.hexdigest()


# Where the cache remembers the content hash of each reference file it has seen
# (``reference_hash``): one small file per file identity, removed by ``cache prune`` when
# unused as long as a template.
HASHES_DIR = ".hashes"
# A file changed less than this long ago is hashed but not remembered: its times have a
# clock tick's resolution, so a change in the same tick as the one before would keep them.
HASH_SETTLED_S = 2.0


def reference_hash(video: Path, cache_dir: Path) -> str:
    """``content_hash`` of ``video``, remembered in ``cache_dir`` under the file's identity:
    its absolute path, size, modification and change times and inode. Any write to the file
    changes its change time, and a file put in its place has another inode, so a remembered
    hash is never of other bytes; every job of a reference other than the first is spared
    reading it whole (an hour of 1080p lecture: 3.6 GB, about 3 s of CPU here and more over a
    network mount). A cache that cannot be written remembers nothing, nor is a file that
    changed in the last ``HASH_SETTLED_S`` remembered."""
    st = video.stat()
    identity = f"{video.absolute()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
    memo = cache_dir / HASHES_DIR / hashlib.sha256(identity.encode()).hexdigest()[:32]
    with suppress(OSError, UnicodeDecodeError):
        known = memo.read_text().strip()
        if len(known) == 64 and all(c in "0123456789abcdef" for c in known):
            mark_used(memo)
            return known
    digest = content_hash(video)
    if time.time() - max(st.st_mtime, st.st_ctime) >= HASH_SETTLED_S:
        with suppress(OSError, InputError):  # (storage.write_bytes says a full or read-only disk as InputError)
            storage.write_bytes(memo, digest.encode())
    return digest


def template_key(
    video: Path, geometry: CropGeometry, detector: DetectorConfig, cache_dir: Path, max_resolution: int = 0,
    reference_seconds: float = 0.0, reference_start: float = 0.0,
) -> str:  # fmt: skip
    """The cache's name for ``video``'s template: its bytes (their hash remembered in
    ``cache_dir``: ``reference_hash``), the crop geometry, the detector and, where they are
    set, ``max_resolution``, ``reference_seconds`` and ``reference_start``."""
    wanted: dict[str, Any] = {"v": TEMPLATE_VERSION, "geometry": dataclasses.asdict(geometry),
                              "detector": dataclasses.asdict(detector)}  # fmt: skip
    # (keys made before these options existed stay as they were)
    if max_resolution:
        wanted["max_resolution"] = max_resolution
    if reference_seconds:
        wanted["reference_seconds"] = float(reference_seconds)  # (300 and 300.0: one key)
    if reference_start:
        wanted["reference_start"] = float(reference_start)
    settings = json.dumps(wanted, sort_keys=True)
    return hashlib.sha256(f"{reference_hash(video, cache_dir)}:{settings}".encode()).hexdigest()[:32]


def analyze(
    video: Path,
    geometry: CropGeometry,
    detector: DetectorConfig,
    cache_dir: Path,
    limits: InputLimits | None = None,
    max_resolution: int = 0,
    reference_seconds: float = 0.0,
    reference_start: float = 0.0,
) -> tuple[Template, bool]:
    """The template for ``video``, built unless cached whole. Returns (template, was_cached).
    A cache this process cannot write serves the templates it holds whole (``_read_only``).
    ``max_resolution`` (0: none): a reference whose shorter side is longer is analysed
    scaled down to it (``media.probe_video``), and the template is of that size.
    ``reference_seconds`` (0: all): a longer reference is analysed as far as that, and the
    template holds those frames (``VideoInfo.cut``). ``reference_start`` (0: its beginning):
    a video is used from that many seconds in (``VideoInfo.start``), and a cut counts from
    there.

    A cached template found damaged (``Template.open``) is set aside, with a warning, and
    built again. A reference over ``limits`` (default ``InputLimits()``) is ``too_large``:
    refused by the probe before it is decoded, and a cached template of one (built under
    higher limits) is refused too."""
    limits = limits or InputLimits()
    media.require_file(video, "reference")
    storage.makedirs(cache_dir)
    key = template_key(video, geometry, detector, cache_dir, max_resolution, reference_seconds, reference_start)
    root = cache_dir / key
    if not os.access(cache_dir, os.W_OK):
        return _read_only(video, cache_dir, root, limits), True
    with storage.file_lock(lock_path(cache_dir, key)):
        with storage_errors(cache_dir):
            remove_leftovers(cache_dir, key)
        if os.path.lexists(root):
            try:
                template = Template.open(root)
            except DamagedTemplate as exc:
                log.warning("the cached analysis of %s in %s is damaged (%s): analysing the reference again",
                            video, root, exc)  # fmt: skip
                with storage_errors(cache_dir):
                    set_aside(root, cache_dir / f".{key}.{uuid.uuid4().hex}.damaged")
            else:
                mark_used(root)
                return _within_limits(template, video, limits), True
        _failed_before(cache_dir, key, video)
        # Probed only when building: a reference whose frames the probe cannot count from its
        # packets (variable rate, say) is decoded once for that (as far as a cut, if any).
        # Where reference_seconds cuts it, the frame limit bounds the frames used.
        file_frames = max(limits.max_reference_frames, CUT_FILE_FRAMES if reference_seconds else 0)
        info = media.probe_video(
            video, max_pixels=limits.max_reference_pixels, max_frames=file_frames,
            max_resolution=max_resolution, max_seconds=reference_seconds, start_seconds=reference_start,
        )  # fmt: skip
        media.check_reference_frames(video, info.frames, max_frames=limits.max_reference_frames)
        tmp = cache_dir / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            with storage_errors(cache_dir):  # a full or read-only cache: the user's to fix
                _build(info, geometry, detector, tmp, limits.max_reference_pixels)
                os.replace(tmp, root)
        except InputError as exc:
            if exc.kind not in REMEMBERED_FAILURES:
                raise
            failed = _seen_later(exc, info, detector)
            _remember_failure(cache_dir, key, video, failed)
            if failed is exc:
                raise
            raise failed from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Template.open(root), False


# Analyses that failed for what the reference holds, remembered under the template's key
# (``FAILURES_DIR``/<key>.json): the key is of the file's bytes, the settings and
# TEMPLATE_VERSION, so analysing it again would fail the same way. Fifty rows of a night
# with an hour-long lecture in which no face is found would otherwise analyse it fifty
# times, some 15 minutes each, one after another on the template's lock. Only ``no_face``,
# found once every frame was decoded and searched: a decode that fails may be a decoder
# killed from outside (out of memory), which the next analysis may not meet.
FAILURES_DIR = ".failures"
REMEMBERED_FAILURES = frozenset({"no_face"})


def failure_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / FAILURES_DIR / f"{key}.json"


def _remember_failure(cache_dir: Path, key: str, video: Path, exc: InputError) -> None:
    """Keep ``exc`` for the next analysis of ``key`` (a cache that cannot be written keeps nothing)."""
    record = {"kind": exc.kind, "message": exc.message, "video": str(video),
              "at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "settings": exc.settings if isinstance(exc, PresenterLater) else None}  # fmt: skip
    with suppress(OSError, InputError):
        storage.write_bytes(failure_path(cache_dir, key), json.dumps(record).encode())


def _failed_before(cache_dir: Path, key: str, video: Path) -> None:
    """Raise again the error an earlier analysis of ``key`` failed with, where one did
    (``_remember_failure``), naming ``video`` and saying how to have it analysed again."""
    path = failure_path(cache_dir, key)
    try:
        record = json.loads(path.read_text())
        kind, message, before = str(record["kind"]), str(record["message"]), str(record["video"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    mark_used(path)
    said = (f"{message.replace(before, str(video))} (as an analysis of these bytes at these settings found at "
            f"{record.get('at', '?')}; it is not analysed again: remove {path} to have it analysed anew)")  # fmt: skip
    if isinstance(settings := record.get("settings"), dict):
        raise PresenterLater(said, {str(k): float(v) for k, v in settings.items()})
    raise InputError(said, kind=kind)


def _seen_later(exc: InputError, info: media.VideoInfo, detector: DetectorConfig) -> InputError:
    """``exc`` (no face in the frames analysed), or where the take goes on past a cut
    (``--reference-seconds``) and a keyframe after it shows a face (``arrival.first_seen``),
    a ``PresenterLater`` that names the start finding them."""
    if not info.cut:
        return exc
    try:
        seen = first_seen(info.path, detector, float((info.start + info.frames) / info.fps), info.video_stream,
                          info.rotation, (info.width, info.height))  # fmt: skip
    except (av.FFmpegError, OSError):  # (the take's own error is the one to say)
        return exc
    if seen is None:
        return exc
    start = float(math.floor(seen))
    return PresenterLater(
        f"{exc.message}. After that part, the take's keyframes first show a face {seen:.1f} s in (the presenter "
        f"may come in up to one keyframe interval earlier): --reference-start {start:g} (or the row's "
        "reference_start column) uses it from there",
        {"reference_start": start},
    )


def _read_only(video: Path, cache_dir: Path, root: Path, limits: InputLimits) -> Template:
    """The template ``root`` of a cache this process cannot write (a volume mounted
    read-only, a cache built into an image), opened without its lock: nothing here can
    build or replace it. One not there whole is the user's to add where it can be written."""
    try:
        template = Template.open(root)
    except DamagedTemplate as exc:
        holds = f"holds no whole analysis of it ({exc})" if os.path.lexists(root) else "holds no analysis of it"
        raise InputError(
            f"reference {video}: the template cache {cache_dir} cannot be written here and {holds}: analyse the "
            f"reference into it where it can be written (heygem-ray preview {video} --cache-dir {cache_dir}, with "
            "the same --min-face, --max-resolution, --reference-start, --reference-seconds and pack as the batch), "
            "or give a --cache-dir this node can write",
            kind="storage",
        ) from None
    return _within_limits(template, video, limits)


def lock_path(cache_dir: Path, key: str) -> Path:
    """The lock every build, open and removal of template ``key`` holds."""
    return cache_dir / f"{key}.lock"


def mark_used(root: Path) -> None:
    """Note that a run uses the template ``root`` now (its folder's modification time, which
    ``template_cache.prune`` reads); a cache this process cannot write is left as it is."""
    with suppress(OSError):
        os.utime(root)


def _within_limits(template: Template, video: Path, limits: InputLimits) -> Template:
    """``template``, unless its reference is over ``limits`` (then it is closed, and the
    error raised)."""
    try:
        media.check_reference_size(video, template.width, template.height, max_pixels=limits.max_reference_pixels)
        media.check_reference_frames(video, template.frames, max_frames=limits.max_reference_frames)
    except BaseException:
        template.close()
        raise
    return template


def remove_leftovers(cache_dir: Path, key: str) -> None:
    """Remove what builds of template ``key`` left behind: a temporary folder of one that was
    killed, a damaged or pruned template set aside. Called under the key's lock, which every
    build holds, so no build of this key is writing any of them."""
    for left in cache_dir.glob(f".{key}.*"):
        if left.suffix in LEFTOVER_SUFFIXES:
            remove_path(left)


# What a template's key names beside its folder: a killed build's temporary folder, and
# templates set aside to be removed (damaged, or pruned) that a removal left behind.
LEFTOVER_SUFFIXES = (".tmp", ".damaged", ".pruned")


def set_aside(root: Path, aside: Path) -> None:
    """Move the template ``root`` out of the way (to ``aside``: a damaged or pruned one),
    then remove it (a job that has it open reads on from the files it holds)."""
    os.replace(root, aside)
    remove_path(aside)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _build(
    info: media.VideoInfo, geometry: CropGeometry, detector_cfg: DetectorConfig, out: Path, max_pixels: int
) -> None:
    out.mkdir(parents=True)
    video = info.path

    # Pass 1: decode once, store every frame, follow the faces. Where NVDEC fails on this
    # reference, it is decoded again on the CPU (a damaged file fails there too, and says so).
    decoder, fell_back = media.pick_decoder(info), ""
    try:
        track, offsets = _store_and_track(info, geometry, detector_cfg, max_pixels, out, decoder)
    except InputError as exc:
        if decoder == "cpu" or exc.kind != "unreadable_media":
            raise
        decoder, fell_back = "cpu", f"NVDEC failed, decoded on the CPU: {exc}"
        track, offsets = _store_and_track(info, geometry, detector_cfg, max_pixels, out, decoder)
    frames = len(offsets) - 1
    np.save(out / "offsets.npy", np.asarray(offsets, np.int64))

    # The presenter's steady track; its crop boxes.
    boxes = geometry.crop_boxes(track, info.width, info.height)
    np.save(out / "boxes.npy", boxes)
    np.save(out / "present.npy", track.present)
    save_faces(out, track)
    points = alignment_points(track)
    np.save(out / "points.npy", points)

    # Pass 2: cut the crops from the stored frames.
    crops = np.lib.format.open_memmap(
        out / "crops.npy", mode="w+", dtype=np.uint8, shape=(frames, geometry.size, geometry.size, 3)
    )
    storage.allocate(out / "crops.npy")
    # Closed here also on an error: its thread stops before the folder is removed.
    with closing(FrameStore(out / "frames.bin", offsets, info.width, info.height)) as store, \
            closing(_read_ahead(map(store.read, range(frames)), STORE_AHEAD)) as ahead:  # fmt: skip
        for i, frame in enumerate(ahead):
            crops[i] = cut_i420(frame, boxes[i], geometry.size, geometry.resample)
    crops.flush()
    del crops

    meta = {
        "version": TEMPLATE_VERSION,
        "source": str(video),
        "fps": str(info.fps),
        "width": info.width,
        "height": info.height,
        "frames": frames,
        "is_image": info.is_image,
        "frame_store": f"i420 bt709 tv, {FRAME_CODEC} level {FRAME_LEVEL}",
        "decoder": decoder,
        "decoder_note": fell_back,
        "source_colour": info.colour,
        "deinterlaced": info.interlaced,
        "sample_aspect": str(info.sample_aspect),
        "scaled_from": list(info.scaled_from) if info.scaled_from else None,
        "cut_to_seconds": info.duration if info.cut else None,
        "start_seconds": float(info.start / info.fps) if info.start else None,
        "face_detected_fraction": float(track.detected.mean()),
        "face_present_fraction": float(track.present.mean()),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def _store_and_track(
    info: media.VideoInfo,
    geometry: CropGeometry,
    detector_cfg: DetectorConfig,
    max_pixels: int,
    out: Path,
    decoder: media.Decoder,
) -> tuple[FaceTrack, list[int]]:
    """Decode the reference with ``decoder``, writing each frame to ``out``/frames.bin
    (from its start, its space held ahead: ``StoreWriter._reserve``) as the faces are
    followed: the track, and the store's frame offsets."""
    crops = info.frames * geometry.size * geometry.size * 3
    with StoreWriter(out / "frames.bin", info.width, info.height, info.frames, crops, info.path) as store:
        track = track_reference(info, detector_cfg, max_pixels, store, decoder)
    return track, store.offsets


class StoreWriter:
    """The frame store as analysis writes it: each frame appended (``keep``), and any
    frame kept so far read back (``recall``: the tracker follows a new face back).

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
        self._out = open(path, "wb")
        self._in = open(path, "rb")
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

    def keep(self, frame: np.ndarray) -> None:
        """Append ``frame`` (which is not changed after this call)."""
        self._packing.append(self._pool.submit(self._packer.compress, frame))
        self._write(ahead=STORE_AHEAD)

    def _write(self, ahead: int) -> None:
        """Write the compressed frames in order: all but the last ``ahead`` (waiting for
        them), and any of those already compressed."""
        while self._packing and (len(self._packing) > ahead or self._packing[0].done()):
            packed = self._packing.popleft().result()
            self._out.write(packed)
            self.offsets.append(self.offsets[-1] + packed.size)
            kept = len(self.offsets) - 1
            if kept == RESERVE_FIRST or kept % RESERVE_EVERY == 0:
                self._reserve(kept)

    def _reserve(self, kept: int) -> None:
        """Allocate what the store will take in all, at the bytes a frame of the ``kept``
        so far took (``RESERVE_MARGIN`` more), where the file holds less; a disk that
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
            f"face crops), and that disk has {size(free)} for it, keeping {size(keep)} free for the run's other "
            f"files; free space there (heygem-ray cache prune --cache-dir {folder} removes templates unused for 30 "
            "days and what killed analyses left), give --cache-dir a folder on a larger disk, or use a few minutes of "
            "the reference (--reference-seconds 300 analyses its first five; a shorter reference is looped under "
            "longer audio)",
            kind="storage",
        )

    def recall(self, i: int) -> np.ndarray:
        self._write(ahead=0)
        self._out.flush()
        start, end = self.offsets[i], self.offsets[i + 1]
        return _decompress(os.pread(self._in.fileno(), end - start, start), self._codec, self._shape)


def _read_ahead(frames: Iterator[np.ndarray], depth: int) -> Generator[np.ndarray, None, None]:
    """``frames`` in order, each taken from it (from the store: read and decompressed) on a
    thread beside the caller's, up to ``depth`` frames before it is asked for."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-store") as pool:
        ahead = deque(pool.submit(next, frames, None) for _ in range(depth + 1))
        while (frame := ahead.popleft().result()) is not None:
            ahead.append(pool.submit(next, frames, None))
            yield frame


def _scaled_note(info: media.VideoInfo) -> str:
    """For a message about the faces of a reference scaled down (``max_resolution``)."""
    if info.scaled_from is None:
        return ""
    width, height = info.scaled_from
    return (f"; the reference was scaled down from {width}×{height} to {info.width}×{info.height} by "
            "--max-resolution, which makes its faces smaller too: a higher one, or 0, keeps them at their size")


def _cut_note(info: media.VideoInfo) -> str:
    """For a message about the faces of a reference of which only a part was searched
    (``--reference-seconds``)."""
    if not info.cut:
        return ""
    start = info.start / info.fps
    where = f"its {info.duration:.1f} s from {float(start):.1f} s in" if start else f"its first {info.duration:.1f} s"
    return (f"; only {where} were searched (--reference-seconds): where the presenter comes in later in the take, "
            "--reference-start moves the part used to them")


FACES_FILE = "faces.npz"


def save_faces(root: Path, track: FaceTrack) -> None:
    """Keep ``track`` in ``root``/faces.npz (``present`` is ``present.npy``)."""
    n = len(track.boxes)
    np.savez(
        root / FACES_FILE,
        boxes=track.boxes,
        detected=track.detected,
        mouths=track.mouths,
        chins=track.chins,
        looks=track.looks if track.looks is not None else np.full((n, len(LOOKS)), np.nan, np.float32),
        others=track.others if track.others is not None else np.zeros((0, 5), np.float32),
    )


def track_reference(
    info: media.VideoInfo,
    detector_cfg: DetectorConfig,
    max_pixels: int | None,
    store: StoreWriter,
    decoder: media.Decoder = "cpu",
) -> FaceTrack:
    """The presenter's smoothed face track through the reference ``info`` describes, its
    frames decoded once by ``decoder`` and kept in ``store`` ((H·3/2, W) uint8 I420 in
    BT.709, ``media.yuv``), which the tracker reads back from. It does not depend on the
    pack: every crop geometry is cut along the same track. A reference
    without frames is ``unreadable_media``; one whose presenter is found in too few frames
    is ``no_face``."""
    video = info.path
    tracker = Tracker(
        HaarDetector(min_neighbors=detector_cfg.min_neighbors, scale_factor=detector_cfg.scale_factor),
        detector_cfg,
        float(info.fps),
        store.recall,
    )
    for frame in media.iter_frames(info, max_pixels=max_pixels, pixel_format="yuv420p", decoder=decoder):
        store.keep(frame)
        tracker.add(frame)
    frames = tracker.frames
    if frames == 0:
        raise InputError(
            f"reference {video} decoded to no frames: re-export it (e.g. as H.264 MP4) "
            "or give a photo instead",
            kind="unreadable_media",
        )
    track = find_presenter(tracker, float(info.fps))
    found = 0 if track is None else int(track.detected.sum())
    if track is None or found < MIN_DETECTED_FRACTION * frames:
        raise InputError(
            f"reference {video}: no face found (the presenter's face was detected in {found} of its "
            f"{frames} frame(s)); faces are searched for from {detector_cfg.min_face} pixels wide, "
            "facing the camera. Use a video or photo where the presenter faces the camera and is "
            "well lit, or, for a smaller face, lower the smallest face searched for "
            f"(--min-face, at least 20; analysis is slower){_scaled_note(info)}{_cut_note(info)}",
            kind="no_face",
        )
    return track
