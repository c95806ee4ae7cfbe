"""Opening a media file with PyAV, and the checks every reader makes first.

A missing file is ``missing_file``; a file no demuxer accepts, or one cut short (its index
lists data past its end), ``unreadable_media``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import av.container

from heygem_ray import sniff, spelling
from heygem_ray.errors import InputError
from heygem_ray.media.ffmpeg import LITERAL_NAME, url
from heygem_ray.media.limits import decoder_pixels


def require_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path, or an InputError naming it (missing, a folder, or not a regular
    file: a pipe, a device) and the fix."""
    p = Path(path)
    if p.is_dir():
        raise InputError(
            f"{what} {p} is a directory, not a file; give the path of the {what} file itself",
            kind="missing_file",
        )
    if p.exists() and not p.is_file():  # read, it could block (a pipe) or never end (a device)
        raise InputError(
            f"{what} {p} is not a regular file (a pipe, a device or a socket); give the path of the {what} file itself",
            kind="missing_file",
        )
    if not p.is_file():
        hint = "" if p.is_absolute() else f" (relative paths are resolved against {Path.cwd()})"
        raise InputError(f"{what} {p} does not exist{_what_is_there(p)}; check the path{hint}", kind="missing_file")
    return p


# Entries of a missing file's folder looked at for names it may have been meant by: one
# listing, only as a row fails (a folder of a night's 20,000 lessons lists in tens of ms).
_LOOKED_AT = 100_000


def _what_is_there(p: Path) -> str:
    """Where ``p`` is missing, what is there instead, in words for its message: a folder on
    the way that does not exist, or the files beside it it may be a slip for
    (``spelling.beside``); "" where neither is found."""
    folder = p.parent
    try:
        if not folder.is_dir():
            while not folder.parent.is_dir() and folder.parent != folder:
                folder = folder.parent
            if folder.is_symlink() and not folder.exists():
                return f": {folder} is a broken link"
            return f": {folder} is a file, not a folder" if folder.exists() else f": there is no folder {folder}"
        with os.scandir(folder) as entries:
            names = [e.name for e in itertools.islice(entries, _LOOKED_AT) if e.is_file()]
    except OSError:  # a folder this user may not list: the message names the file alone
        return ""
    return spelling.beside(p.name, names)


def reason(exc: av.FFmpegError) -> str:
    """FFmpeg's words for an error (``Invalid data found when processing input``)."""
    return exc.strerror or type(exc).__name__


@contextlib.contextmanager
def opened(
    path: Path,
    what: str,
    *,
    max_pixels: int | None = None,
    check: Callable[[av.container.InputContainer], None] | None = None,
) -> Iterator[av.container.InputContainer]:
    """``path`` opened by PyAV's demuxers (which read its header and index, and decode a
    little to fill in what the header leaves out), closed on leaving the block; a file no
    demuxer accepts, or whose index lists data past the end of the file, is
    ``unreadable_media``.

    ``max_pixels``: the decoders that fill in the header refuse a larger picture (then
    leave its size 0) rather than allocate it. ``check`` sees the container before its
    index is read (a limit on what the header declares, say)."""
    options = LITERAL_NAME | ({} if max_pixels is None else {"max_pixels": str(decoder_pixels(max_pixels))})
    try:
        container = av.open(url(path), metadata_errors="ignore", options=options)
    except av.FFmpegError as exc:
        raise InputError(f"{what} {path} {_not_media(path, reason(exc))}", kind="unreadable_media") from exc
    with container:
        if check is not None:
            check(container)
        _check_index(container, path, what)
        yield container


def _not_media(path: Path, said: str) -> str:
    """What the file ``path``, which no demuxer took (FFmpeg's words: ``said``), is instead,
    and what to do."""
    start = sniff.head(path)
    if not start:
        return "is an empty file (0 bytes): copy or export it again"
    if (instead := sniff.stand_in(start, "media")) is not None:
        return f"is {instead}"
    if (line := sniff.text(start)) is not None:
        return f"is text, not media (it begins {line!r}): give the audio or video file itself"
    return (f"cannot be read as media ({said}); check that it is a complete, uncorrupted audio/video file "
            "(re-export or re-download it)")  # fmt: skip


def _check_index(container: av.container.InputContainer, path: Path, what: str) -> None:
    """Raise ``unreadable_media`` when the container's index (an MP4's sample tables, a
    Matroska file's cues) places data past the end of the file: a copy or recording cut
    short, which would otherwise read as a shorter file. A file without an index passes.
    Entries are read one at a time: an index may list millions."""
    size = path.stat().st_size
    for stream in container.streams:
        end = max((entry.pos + entry.size for entry in stream.index_entries), default=0)  # bytes
        if end > size:
            raise InputError(
                f"{what} {path} is truncated: its index places {stream.type} data up to byte {end}, "
                f"but the file ends at byte {size}; copy or export it again in full",
                kind="unreadable_media",
            )


def contents(container: av.container.InputContainer) -> str:
    """The kinds of stream ``container`` holds, in words: ``audio, video``; a still
    attached as cover art (an MP3's album picture) is ``a cover picture``, no video."""
    kinds = sorted({"a cover picture" if s.type == "video" and s.disposition & av.stream.Disposition.attached_pic
                    else s.type for s in container.streams})  # fmt: skip
    return ", ".join(kinds) if kinds else "no streams"
