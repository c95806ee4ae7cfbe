"""A cached template, as files in its folder, and ``Template``, which opens one checked whole.

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
  ``reference_seconds`` cut it, or null; ``own_fps``: the take's own frame rate where
  ``fps`` is another, a whole multiple (a take under ``MIN_FPS``, each frame held) or a
  whole fraction (``max_fps``, every k-th frame kept), or null; ``listed_frames``: the
  frames the probe counted, which a take damaged past its index decodes fewer of);
* ``frames.bin`` + ``offsets.npy``: every decoded frame, I420 in BT.709 limited range
  as the encoder takes it (``media.yuv``), compressed losslessly one by one (Zstandard at
  its fastest level), so any frame can be read by index — compose walks the reference
  forwards and backwards (ping-pong) without holding it in memory — and reaches the
  encoder with the bytes it was decoded with; its disk space is held ahead while it is
  written (``store.StoreWriter``). A frame that repeats the one before it (a take under
  ``MIN_FPS``, each frame held; a still screen) is stored once: ``stored.npy`` (n,) int64
  then says which stored frame each frame is (``offsets.npy`` has one entry per stored
  frame, and one more);
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

Templates live under ``cache_dir/<key>`` (``cache.template_key``); ``analyze`` builds
them. The cache mends itself: a template is checked when it is opened (every file there, of the
shape ``meta.json`` says), and one that is not whole (a file deleted by a cleaner, cut
short by a copy, a folder left half removed, a frame found not to decompress) is set
aside and built again, with a warning, instead of failing its rows. An opened template
holds its frame store and crops open, so a job reading it goes on reading the same bytes
if another job replaces the folder meanwhile.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from heygem_ray import media, storage
from heygem_ray.config import MIN_FPS
from heygem_ray.face.looks import LOOKS
from heygem_ray.face.track import FaceTrack
from heygem_ray.media import yuv
from heygem_ray.template.damage import DAMAGED_FILE, DamagedTemplate
from heygem_ray.template.store import FrameStore

# 4: faces.npz (the reference checks); 5: the I420 frame store and points.npy; 6: both;
# 7: faces.npz holds the whole track; 8: HDR and BT.2020 takes mapped to SDR BT.709
# (``ffmpeg.to_sdr``), which version 7 stored as if they were SDR, and meta.json's
# ``source_colour``; interlaced takes deinterlaced (``ffmpeg.DEINTERLACE``); non-square
# pixels widened to square (``VideoInfo.sample_aspect``); 9: a presenter gone at the take's
# first or last frames is not taken to be there (``track.finish``), and the presenter's head
# tilted far is not another face (``Tracker.presenter``).
TEMPLATE_VERSION = 9


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
    # The take's own frame rate where ``fps`` is another (``VideoInfo.own_fps``: frames held
    # under MIN_FPS, or every k-th kept for ``max_fps``); None where ``fps`` is its own.
    own_fps: Fraction | None
    # The take's own size (width, height) where ``max_resolution`` scaled it down to
    # ``width`` × ``height``; None where that is its own.
    scaled_from: tuple[int, int] | None
    # The frames the probe counted (its index, or a count decoded), of which ``frames`` were
    # decoded: fewer where the take is damaged; None in templates made before it was kept.
    listed_frames: int | None
    store: FrameStore = field(repr=False, compare=False)
    crop_array: np.ndarray = field(repr=False, compare=False)  # (frames, S, S, 3) uint8 BGR, mapped
    # faces.npz's arrays (``track``), read when it was opened: the folder may be set aside
    # and built again while a job holds it open, and reads on from what it opened.
    faces: dict[str, np.ndarray] = field(repr=False, compare=False)

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
        stored = _stored(root, n)
        offsets = _array(root, "offsets.npy", ((n if stored is None else int(stored[-1]) + 1) + 1,), "i")
        faces = _faces(root, n)
        store = FrameStore(_existing(root / "frames.bin"), offsets, meta["width"], meta["height"], stored)
        try:
            crops = _array(root, "crops.npy", (n, None, None, 3), "u", mmap=True)
        except BaseException:
            store.close()
            raise
        return cls(root=root, fps=meta["fps"], width=meta["width"], height=meta["height"], frames=n,
                   is_image=meta["is_image"], boxes=boxes, present=present, points=points,
                   decoder=meta["decoder"], source_colour=meta["source_colour"], cut=meta["cut"],
                   start=meta["start"], own_fps=meta["own_fps"], scaled_from=meta["scaled_from"],
                   listed_frames=meta["listed_frames"], store=store, crop_array=crops, faces=faces)  # fmt: skip

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Template:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def keeping(self, lock_name: str) -> Iterator[bool]:
        """Hold the lock ``lock_name`` in the template's folder for a job to keep what it
        computes there (a pack's reference-stage outputs, restoration tiles), while that
        folder is the one this template was opened from: True. False, and nothing held,
        where it cannot be written, or is not that folder any more (another job set it aside
        as damaged and built it again, or it was pruned, since this one opened it: what is
        kept there is the new template's, and a write would make a folder set aside again):
        the job then computes for itself."""
        if not os.access(self.root, os.W_OK) or not self.store.is_at_path():
            yield False
            return
        with ExitStack() as held:
            try:
                held.enter_context(storage.file_lock(self.root / lock_name))
            except FileNotFoundError:  # set aside or removed just now
                yield False
                return
            yield self.store.is_at_path()  # (not replaced while the lock was waited for)

    def track(self) -> FaceTrack:
        """The presenter's face track the crop boxes were cut along (``faces.npz``, as read
        when the template was opened)."""
        faces = self.faces
        return FaceTrack(
            boxes=faces["boxes"], present=self.present, detected=faces["detected"], mouths=faces["mouths"],
            chins=faces["chins"], looks=faces["looks"], others=faces["others"],
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
        fps = Fraction(meta["fps"])
        if fps < MIN_FPS and not meta["is_image"]:  # (a version before takes that slow were held)
            raise DamagedTemplate(f"it holds the take at its own {float(fps):g} fps, where a take under "
                                  f"{MIN_FPS} fps is now read with each frame held")  # fmt: skip
        return {
            "fps": fps,
            "width": _positive(meta["width"]),
            "height": _positive(meta["height"]),
            "frames": _positive(meta["frames"]),
            "is_image": bool(meta["is_image"]),
            "decoder": "nvdec" if meta.get("decoder") == "nvdec" else "cpu",
            "source_colour": str(meta["source_colour"]),
            "cut": bool(meta.get("cut_to_seconds")),  # (templates made before the option have none)
            "start": float(meta.get("start_seconds") or 0.0),  # (nor this one)
            "own_fps": Fraction(meta["own_fps"]) if meta.get("own_fps") else None,  # (nor this one)
            "scaled_from": (_positive(meta["scaled_from"][0]), _positive(meta["scaled_from"][1]))
            if meta.get("scaled_from") else None,  # (nor this one)
            "listed_frames": _positive(meta["listed_frames"]) if meta.get("listed_frames") else None,  # (nor this)
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


def _faces(root: Path, n: int) -> dict[str, np.ndarray]:
    """``faces.npz`` (``save_faces``), checked for a track of ``n`` frames: its arrays."""
    rows = {"boxes": (n, 4), "detected": (n,), "mouths": (n, 2), "chins": (n,), "looks": (n, len(LOOKS)),
            "others": (None, 5)}  # fmt: skip
    try:
        with np.load(_existing(root / FACES_FILE)) as saved:
            found = {key: saved[key] for key in rows}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DamagedTemplate(f"{FACES_FILE} does not load ({type(exc).__name__}: {exc})") from exc
    for key, shape in rows.items():
        if not _fits(found[key].shape, shape):
            raise DamagedTemplate(f"{FACES_FILE} holds {key} of shape {found[key].shape}, where {shape} belongs")
    return found


FACES_FILE = "faces.npz"
# (n,) int64: the stored frame each frame is, where frames repeat the one before them
# (``store.StoreWriter``); absent where every frame is stored.
STORED_FILE = "stored.npy"


def _stored(root: Path, n: int) -> np.ndarray | None:
    """``STORED_FILE``, checked: from stored frame 0, each frame the one before or the next."""
    if not (root / STORED_FILE).exists():
        return None
    stored = _array(root, STORED_FILE, (n,), "i")
    if stored[0] != 0 or not np.isin(np.diff(stored), (0, 1)).all():
        raise DamagedTemplate(f"{STORED_FILE} does not count the stored frames up from 0 in steps of 0 or 1")
    return stored


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
