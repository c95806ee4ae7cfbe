"""ISO base media files (MP4, MOV, M4A, 3GP): how many frames their sample tables list;
and HEIF or AVIF stills (a phone's .heic photo): their primary picture's size, tiling and
turn. Read box by box without FFmpeg.

FFmpeg's demuxer allocates an index entry (and timing data: about 40 bytes in all) for
every sample its tables list when it opens the file, and a sample table of constant-size
samples is 20 bytes whatever the count: a file of 2 kB can make it allocate gigabytes.
These counts are read first.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_ISO_TOP = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx",
                      b"moof", b"mfra", b"meta", b"prft", b"emsg"})  # fmt: skip
_ISO_BOXES = 1_000_000  # boxes read before giving up (the demuxer is then left to judge)


def _iso_boxes(f: IO[bytes], start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload offset, end offset) of the boxes in bytes [start, end) of ``f``;
    stops at the first that does not fit."""
    for _ in range(_ISO_BOXES):
        if start + 8 > end:
            return
        f.seek(start)
        size, kind = struct.unpack(">I4s", f.read(8))
        payload = start + 8
        if size == 1:  # a 64-bit size follows
            if start + 16 > end:
                return
            size = struct.unpack(">Q", f.read(8))[0]
            payload += 8
        elif size == 0:  # to the end
            size = end - start
        if size < payload - start or start + size > end:
            return
        yield kind, payload, start + size
        start += size


def _iso_find(f: IO[bytes], start: int, end: int, path: tuple[bytes, ...]) -> list[tuple[int, int]]:
    """(payload offset, end offset) of the boxes at ``path`` (types, outermost first)
    inside bytes [start, end)."""
    found = []
    for kind, payload, box_end in list(_iso_boxes(f, start, end)):
        if kind == path[0]:
            found += [(payload, box_end)] if len(path) == 1 else _iso_find(f, payload, box_end, path[1:])
    return found


def _iso_u32(f: IO[bytes], offset: int) -> int:
    f.seek(offset)
    data = f.read(4)
    return struct.unpack(">I", data)[0] if len(data) == 4 else 0


def video_samples(path: Path) -> int | None:
    """The most samples (frames) any video track of an ISO base media file lists, in its
    sample tables plus its fragments' runs, read without FFmpeg; None for other files."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        top = list(_iso_boxes(f, 0, end))
        if not top or top[0][0] not in _ISO_TOP:
            return None
        video: set[int] = set()  # track ids of video tracks
        samples: dict[int, int] = defaultdict(int)  # track id → samples listed
        for kind, payload, box_end in top:
            if kind == b"moov":
                for trak, trak_end in _iso_find(f, payload, box_end, (b"trak",)):
                    # tkhd: version (1), flags (3), two times (4 bytes each, 8 in version 1), track id
                    track = next(
                        (_iso_u32(f, tkhd + (20 if _iso_u32(f, tkhd) >> 24 == 1 else 12))
                         for tkhd, _ in _iso_find(f, trak, trak_end, (b"tkhd",))), 0)  # fmt: skip
                    # hdlr: version and flags (4), pre-defined (4), handler type ("vide", "soun", …)
                    if any(_iso_u32(f, h + 8) == _VIDE for h, _ in _iso_find(f, trak, trak_end, (b"mdia", b"hdlr"))):
                        video.add(track)
                    for table in (b"stsz", b"stz2"):  # version and flags (4), sample size (or field size), count
                        for box, _ in _iso_find(f, trak, trak_end, (b"mdia", b"minf", b"stbl", table)):
                            samples[track] += _iso_u32(f, box + 8)
            elif kind == b"moof":
                for traf, traf_end in _iso_find(f, payload, box_end, (b"traf",)):
                    # tfhd: version and flags (4), track id; trun: version and flags (4), sample count
                    track = next((_iso_u32(f, t + 4) for t, _ in _iso_find(f, traf, traf_end, (b"tfhd",))), 0)
                    for trun, _ in _iso_find(f, traf, traf_end, (b"trun",)):
                        samples[track] += _iso_u32(f, trun + 4)
        return max((n for track, n in samples.items() if track in video), default=0)


_VIDE = struct.unpack(">I", b"vide")[0]


@dataclass(frozen=True)
class HeifStill:
    """The primary picture of a HEIF or AVIF still (a phone's .heic photo)."""

    width: int  # as stored (``ispe``), before ``rotation``
    height: int
    grid: bool  # a grid of tiles (as phones write photos): FFmpeg puts it together as a stream group
    rotation: int  # degrees the picture is turned to be shown (``irot``): 0, 90, 180 or 270


def heif_still(path: Path) -> HeifStill | None:
    """The primary picture of a HEIF or AVIF still image, read from its boxes without
    FFmpeg; None for any other file (an image sequence, which has a movie box, too)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        top = {kind: (payload, box_end) for kind, payload, box_end in _iso_boxes(f, 0, end)}
        if b"ftyp" not in top or b"meta" not in top or b"moov" in top:
            return None
        start, stop = top[b"ftyp"]
        f.seek(start)
        brands = f.read(min(stop - start, 256))
        if not any(brands[i : i + 4] in _HEIF_BRANDS for i in range(0, len(brands) - 3, 4)):
            return None
        meta, meta_end = top[b"meta"]
        boxes = {kind: (payload, box_end) for kind, payload, box_end in _iso_boxes(f, meta + 4, meta_end)}
        if not {b"pitm", b"iprp"} <= boxes.keys():
            return None
        pitm = boxes[b"pitm"][0]
        primary = _iso_u32(f, pitm + 4) if _iso_u32(f, pitm) >> 24 else _iso_u16(f, pitm + 4)
        properties = [(kind, payload) for kind, payload, _ in _iso_find_all(f, *boxes[b"iprp"], b"ipco")]
        size, rotation = None, 0
        for index in _associations(f, *boxes[b"iprp"], primary):
            if not 1 <= index <= len(properties):
                continue
            kind, payload = properties[index - 1]
            if kind == b"ispe":  # version and flags (4), width, height
                size = (_iso_u32(f, payload + 4), _iso_u32(f, payload + 8))
            elif kind == b"irot":  # the low two bits: quarter turns anticlockwise (an empty box: none)
                rotation = (360 - 90 * (_iso_u8(f, payload) & 3)) % 360
        if size is None or not all(size):
            return None
        return HeifStill(width=size[0], height=size[1], grid=_item_type(f, boxes.get(b"iinf"), primary) == b"grid",
                         rotation=rotation)  # fmt: skip


# ftyp brands of HEIF and AVIF stills (ISO/IEC 23008-12, the AV1 image format).
_HEIF_BRANDS = frozenset({b"mif1", b"mif2", b"heic", b"heix", b"heim", b"heis", b"avif", b"miaf"})


def _iso_u16(f: IO[bytes], offset: int) -> int:
    f.seek(offset)
    data = f.read(2)
    return struct.unpack(">H", data)[0] if len(data) == 2 else 0


def _iso_find_all(f: IO[bytes], start: int, end: int, container: bytes) -> list[tuple[bytes, int, int]]:
    """Every box inside the ``container`` boxes found in bytes [start, end), in order."""
    return [box for payload, box_end in _iso_find(f, start, end, (container,)) for box in _iso_boxes(f, payload, box_end)]


def _associations(f: IO[bytes], start: int, end: int, item: int) -> list[int]:
    """The property indices (1-based, into ipco) ``ipma`` associates with ``item``."""
    found: list[int] = []
    for ipma, ipma_end in _iso_find(f, start, end, (b"ipma",)):
        head = _iso_u32(f, ipma)
        version, wide_index = head >> 24, head & 1
        at, entries = ipma + 8, _iso_u32(f, ipma + 4)
        for _ in range(min(entries, _ISO_BOXES)):
            if at >= ipma_end:
                break
            entry = _iso_u32(f, at) if version >= 1 else _iso_u16(f, at)
            at += 4 if version >= 1 else 2
            count = _iso_u8(f, at) if at < ipma_end else 0
            at += 1
            for _ in range(count):
                index = (_iso_u16(f, at) & 0x7FFF) if wide_index else (_iso_u8(f, at) & 0x7F)
                at += 2 if wide_index else 1
                if entry == item:
                    found.append(index)
    return found


def _iso_u8(f: IO[bytes], offset: int) -> int:
    f.seek(offset)
    data = f.read(1)
    return data[0] if data else 0


def _item_type(f: IO[bytes], iinf: tuple[int, int] | None, item: int) -> bytes | None:
    """The four-character type of ``item`` in ``iinf`` (e.g. b"grid", b"hvc1")."""
    if iinf is None:
        return None
    start, end = iinf
    first = start + (8 if _iso_u32(f, start) >> 24 else 6)  # version and flags, entry count (2 or 4 bytes)
    for kind, payload, _ in _iso_boxes(f, first, end):
        if kind != b"infe":
            continue
        version = _iso_u32(f, payload) >> 24
        if version < 2:
            continue
        at = payload + 4
        entry = _iso_u32(f, at) if version >= 3 else _iso_u16(f, at)
        at += (4 if version >= 3 else 2) + 2  # the item id, its protection index
        if entry == item:
            f.seek(at)
            return f.read(4)
    return None
