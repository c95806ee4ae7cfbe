"""Hostile media for tests: files whose size, length or frame count is huge, or whose
header claims it is, while they stay small on disk (and cheap to make).

* :func:`make_huge_png`: a valid PNG of any size, compressed a row at a time.
* :func:`make_jpeg_claiming`: a small JPEG whose frame header claims another size.
* :func:`make_mp4_claiming_frames`: an MP4 whose sample tables list millions of frames.
* :func:`make_mkv_claiming_duration`: a one-second Matroska file whose header says it lasts hours.
* :func:`make_timestamp_gap_video`: three frames, the last one hours after the others.
* :func:`make_long_wav`: a WAV of hours of silence, a sparse file (no disk blocks).
* :func:`make_flac_claiming`: a FLAC file whose header says it is shorter than it is.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import ffmpeg  # type: ignore[import-untyped]
import numpy as np

from tests.helpers.media import _run

# --------------------------------------------------------------------------- images


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def make_huge_png(path: str | Path, *, width: int, height: int) -> Path:
    """A valid ``width`` × ``height`` mid-grey RGB PNG. Its rows are compressed one at a
    time, so making it holds one row (a 20 000 × 20 000 one: 5 MB on disk, about 2 s)."""
    path = Path(path)
    row = b"\x00" + b"\x80" * (3 * width)  # filter type 0, then RGB bytes
    compressor = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        idat = bytearray()
        for _ in range(height):
            idat += compressor.compress(row)
        idat += compressor.flush()
        f.write(_png_chunk(b"IDAT", bytes(idat)) + _png_chunk(b"IEND", b""))
    return path


def make_jpeg_claiming(path: str | Path, *, width: int, height: int) -> Path:
    """A 64 × 48 JPEG whose frame header (SOF0) says ``width`` × ``height``: a decoder
    believing it would allocate a picture of that size."""
    path = Path(path)
    ok, encoded = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode a test JPEG")
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- video

_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in data[start:end] (32-bit sizes only)."""
    found = []
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        found.append((kind, start, size))
        start += size
    return found


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full_box(kind: bytes, payload: bytes) -> bytes:
    return _box(kind, b"\x00\x00\x00\x00" + payload)  # version 0, no flags


def make_mp4_claiming_frames(path: str | Path, *, frames: int, every_frame_in_file: bool = False) -> Path:
    """An MP4 (64 × 48 H.264, 25 fps) whose sample tables list ``frames`` frames: millions
    of them in a file of a few kilobytes.

    By default the index places them one after another from the one real frame on, so
    all but the first lie past the end of the file (a lying header). With
    ``every_frame_in_file`` every entry points at that same real frame (4 bytes each in
    the chunk table): an index that is consistent, of a video that really decodes to
    ``frames`` frames.
    """
    path = Path(path)
    source = path.with_name(f".one-frame.{path.name}")
    clip = ffmpeg.input("testsrc2=size=64x48:rate=25:duration=0.04", format="lavfi")
    _run(clip.output(str(source), vcodec="libx264", pix_fmt="yuv420p", bf=0, use_editlist=0))
    data = source.read_bytes()
    source.unlink()
    top = {kind: (off, size) for kind, off, size in _boxes(data, 0, len(data))}
    mdat_off, mdat_size = top[b"mdat"]
    if top[b"moov"][0] < mdat_off:
        raise RuntimeError("expected the index (moov) after the data (mdat)")
    sample_off, sample_size = mdat_off + 8, mdat_size - 8  # the one frame fills the data box
    delta = 512  # time-base units per frame: 1/25 s in ffmpeg's 1/12800
    stbl_children = {
        b"stts": _full_box(b"stts", struct.pack(">III", 1, frames, delta)),
        b"stsz": _full_box(b"stsz", struct.pack(">II", sample_size, frames)),
    }
    if every_frame_in_file:
        stbl_children[b"stsc"] = _full_box(b"stsc", struct.pack(">IIII", 1, 1, 1, 1))
        stbl_children[b"stco"] = _full_box(b"stco", struct.pack(">I", frames) + struct.pack(">I", sample_off) * frames)
    else:
        stbl_children[b"stsc"] = _full_box(b"stsc", struct.pack(">IIII", 1, 1, frames, 1))
        stbl_children[b"stco"] = _full_box(b"stco", struct.pack(">II", 1, sample_off))

    def rebuilt(start: int, end: int) -> bytes:
        out = b""
        for kind, off, size in _boxes(data, start, end):
            if kind in _MP4_CONTAINERS:
                out += _box(kind, rebuilt(off + 8, off + size))
            elif kind == b"stss":
                continue  # no sync-sample table: every frame is a key frame
            elif kind in stbl_children:
                out += stbl_children[kind]
            elif kind == b"mdhd":  # version 0: flags, created, modified, time scale, duration, …
                box = bytearray(data[off : off + size])
                struct.pack_into(">I", box, 24, min(frames * delta, 0xFFFFFFFF))
                out += bytes(box)
            else:
                out += data[off : off + size]
        return out

    moov_off, moov_size = top[b"moov"]
    path.write_bytes(data[:moov_off] + _box(b"moov", rebuilt(moov_off + 8, moov_off + moov_size)))
    return path


def make_mkv_claiming_duration(path: str | Path, *, seconds: float, source: Path | None = None) -> Path:
    """A Matroska file whose segment header says it lasts ``seconds``: ``source``'s video
    stream copied, or a one-second 64 × 48 clip."""
    path = Path(path)
    if source is None:
        clip = ffmpeg.input("testsrc2=size=64x48:rate=25:duration=1", format="lavfi")
        _run(clip.output(str(path), vcodec="libx264", pix_fmt="yuv420p"))
    else:
        _run(ffmpeg.input(str(source))["v:0"].output(str(path), c="copy"))
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89")  # the Duration element: ID, size (one byte: 0x80 | n), float
    width = data[at + 2] & 0x7F
    value = seconds * 1000  # in the default timestamp scale, milliseconds
    data[at + 3 : at + 3 + width] = struct.pack(">d", value) if width == 8 else struct.pack(">f", value)
    path.write_bytes(bytes(data))
    return path


def make_timestamp_gap_video(path: str | Path, *, gap_seconds: float) -> Path:
    """Three 64 × 48 frames in Matroska: at 0 and 0.04 s, and the third ``gap_seconds`` later:
    a few packets whose timestamps span hours (a constant-rate reading fills the gap)."""
    path = Path(path)
    clip = ffmpeg.input("testsrc2=size=64x48:rate=25:duration=0.12", format="lavfi")
    moved = clip.filter("setpts", f"if(eq(N,2),{gap_seconds}/TB,PTS)")
    _run(moved.output(str(path), vcodec="libx264", pix_fmt="yuv420p", fps_mode="passthrough"))
    return path


def make_broken_timing_video(path: str | Path, *, box: str) -> Path:
    """A 4-s H.264 MP4 (100 frames, B-frames) whose timing in its index is broken as a bad
    remux leaves it: ``box="ctts"``, the first frame's composition offset set to 2³¹ − 1
    (that frame shown 46 hours on); ``box="mdhd"``, the track's time scale set to 1 (its
    frames spread over hours, one every 512 s)."""
    path = Path(path)
    _run(ffmpeg.input("testsrc2=size=64x48:rate=25:duration=4", format="lavfi")
         .output(str(path), vcodec="libx264", pix_fmt="yuv420p", g=10, bf=2))  # fmt: skip
    data = bytearray(path.read_bytes())
    at = data.find(box.encode())
    # 16 bytes past the box's name, both: ctts's version and flags, entry count and first
    # entry's count, then its offset; mdhd's (version 0) version and flags, creation and
    # modification times, then its time scale.
    field = at + 16
    data[field : field + 4] = struct.pack(">I", 2**31 - 1 if box == "ctts" else 1)
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- audio


def make_long_wav(path: str | Path, *, seconds: float, sample_rate: int = 16000) -> Path:
    """A 16-bit mono WAV of ``seconds`` of digital silence: a sparse file, so ten hours
    (1.1 GB to read) take no disk space and no time to make."""
    path = Path(path)
    data_bytes = int(round(seconds * sample_rate)) * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data_bytes)  # the samples: a hole that reads as zeros
    return path


def make_flac_claiming(path: str | Path, *, seconds: float, declared: float, sample_rate: int = 16000) -> Path:
    """A FLAC file of ``seconds`` of a tone whose header (STREAMINFO's total samples) says
    it holds ``declared`` seconds: a header that understates the length."""
    path = Path(path)
    tone = ffmpeg.input(f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}", format="lavfi")
    _run(tone.output(str(path), acodec="flac"))
    data = bytearray(path.read_bytes())
    if data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        raise RuntimeError(f"{path}: expected STREAMINFO as the first metadata block")
    # STREAMINFO from byte 8: block sizes (4), frame sizes (6), then 64 bits: sample rate
    # (20), channels (3), bits per sample (5), total samples (36).
    packed = struct.unpack(">Q", data[18:26])[0]
    packed = packed & ~((1 << 36) - 1) | int(round(declared * sample_rate))
    data[18:26] = struct.pack(">Q", packed)
    path.write_bytes(bytes(data))
    return path
