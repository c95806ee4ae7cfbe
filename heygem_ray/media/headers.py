"""A still image's size from its PNG or JPEG header, read without decoding.

FFmpeg learns a still image's size by decoding it, which a pixel limit refuses: the
header says it first.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0 … SOF15), which carry the picture's size; the other
# codes in that range are tables (DHT 0xC4, DAC 0xCC) and a reserved one (JPG 0xC8).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SEGMENTS = 64  # markers read before giving up (EXIF, ICC profiles, tables come first)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG file's header declares, read without decoding (FFmpeg
    learns a still image's size by decoding it, which a pixel limit refuses); None for
    any other file, or one whose header cannot be read."""
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":  # IHDR is the first chunk
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if head[:2] != b"\xff\xd8":  # SOI
            return None
        f.seek(2)
        for _ in range(_JPEG_SEGMENTS):
            marker = f.read(4)  # 0xFF, code, segment length (2 bytes, counting itself)
            while marker[:2] == b"\xff\xff":  # fill bytes before a marker
                marker = marker[1:] + f.read(1)
            if len(marker) < 4 or marker[0] != 0xFF:
                return None
            code, length = marker[1], struct.unpack(">H", marker[2:4])[0]
            if code in _JPEG_SOF:
                sof = f.read(5)  # precision (1), height (2), width (2)
                if len(sof) < 5:
                    return None
                height, width = struct.unpack(">HH", sof[1:5])
                return width, height
            f.seek(length - 2, os.SEEK_CUR)
    return None


# ISO base media files (MP4, MOV, M4A, 3GP): FFmpeg's demuxer allocates an index entry
# (and timing data: about 40 bytes in all) for every sample its tables list when it opens
