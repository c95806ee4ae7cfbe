"""ISO base media files (MP4, MOV, M4A, 3GP): how many frames their sample tables list,
read box by box without FFmpeg.

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
