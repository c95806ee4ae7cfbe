"""What a file that should hold media or weights holds instead, told by its first bytes:
a web page saved in its place (a share link that answers with a sign-in or virus-scan
page), a Git LFS pointer (a clone without ``git lfs pull``), or plain text."""

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
