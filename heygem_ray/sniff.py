"""What a file that should hold media or weights holds instead, told by its first bytes:
a web page saved in its place (a share link that answers with a sign-in or virus-scan
page), a Git LFS pointer (a clone without ``git lfs pull``), plain text, or (in place of
weights) an image, audio or video file."""

from __future__ import annotations

import re
from pathlib import Path

# Bytes read from the start of a file to tell what it is.
HEAD_BYTES = 512

_PAGE = re.compile(rb"\s*(<!doctype html|<html|<\?xml|<head|<body)", re.I)
_LFS_POINTER = re.compile(rb"version https://git-lfs")


def head(path: Path) -> bytes:
    """The first ``HEAD_BYTES`` of the file ``path``."""
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def stand_in(start: bytes, what: str) -> str | None:
    """What a file beginning with ``start`` is, where it is a page or an LFS pointer in
    place of ``what`` ("the weights", "media"), and what to do; None otherwise."""
    if _PAGE.match(start):
        return f"a web page (HTML), not {what}: the download link answered with a page; download the file itself"
    if _LFS_POINTER.match(start):
        return f"a Git LFS pointer, not {what}: fetch the file itself ('git lfs pull' in its clone)"
    return None


# Media files by their first bytes: what is given as weights, a still or a clip picked by mistake.
_MEDIA = (
    (re.compile(rb"\xff\xd8\xff"), "a JPEG image"),
    (re.compile(rb"\x89PNG\r\n\x1a\n"), "a PNG image"),
    (re.compile(rb"GIF8[79]a"), "a GIF image"),
    (re.compile(rb"RIFF....WEBP", re.S), "a WebP image"),
    (re.compile(rb"RIFF....WAVE", re.S), "a WAV audio file"),
    (re.compile(rb"\xff[\xf1\xf9]"), "an AAC audio file"),
    (re.compile(rb"ID3|\xff[\xe2-\xff]"), "an MP3 audio file"),
    (re.compile(rb"....ftyp(heic|heix|heim|heis|hevc|mif1|msf1)", re.S), "a HEIC photo"),
    (re.compile(rb"....ftypavi[fs]", re.S), "an AVIF image"),
    (re.compile(rb"....ftypM4[AB]", re.S), "an M4A audio file"),
    (re.compile(rb"....ftyp", re.S), "an MP4 (or MOV) video"),
    (re.compile(rb"\x1aE\xdf\xa3"), "a Matroska (MKV or WebM) file"),
)


def media(start: bytes) -> str | None:
    """What a file beginning with ``start`` is where it is an image, audio or video file
    ("a JPEG image"); None otherwise."""
    return next((said for pattern, said in _MEDIA if pattern.match(start)), None)


def text(start: bytes) -> str | None:
    """The first line of a file beginning with ``start`` where it is plain text (UTF-8,
    no control characters but line breaks and tabs), up to 40 characters; else None."""
    try:
        said = start.decode()
    except UnicodeDecodeError:
        if len(start) < HEAD_BYTES:
            return None
        said = start[: HEAD_BYTES - 3].decode(errors="ignore")  # a character cut at the end
    if not said.strip() or any(ord(c) < 32 and c not in "\r\n\t" for c in said):
        return None
    line = said.strip().splitlines()[0]
    return line if len(line) <= 40 else line[:40] + "…"
