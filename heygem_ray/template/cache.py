"""Where templates live in a cache folder, and its housekeeping.

A template is the folder ``cache_dir/<key>``, its key a hash of the reference's bytes (that
hash remembered per file identity under ``HASHES_DIR``: ``reference_hash``), the crop
geometry, the detector and the render settings that change the frames (``template_key``).
Every build, open and removal of a key holds its lock (``lock_path``); what killed builds
left beside it (``LEFTOVER_SUFFIXES``) is removed under that lock. An analysis that found no
face is remembered under ``FAILURES_DIR`` (``remember_failure``), so the other rows of that
reference fail at once.

What the cache holds (``scan``), and removing what no run has used for a while
(``prune``): a template keeps every frame of its reference (about 2.8 GB a minute of
camera-like 1080p), and a cache used night after night gathers the templates of every
presenter ever seen, and those of earlier versions (``files.TEMPLATE_VERSION``), which this
one never reads. Every analysis that finds or builds a template marks it used (its folder's
modification time, ``mark_used``). ``prune`` removes each template unused for longer than it
is told, under its key's lock (a build of that key holds it, as does a job opening it: one
held is skipped, and said so), setting it aside first, so no job ever meets it half
removed; a job that has it open reads on from the files it holds. What killed builds left
goes too, under the same lock. The lock files stay (a process may hold one; they are
empty). One prune of a cache runs at a time (``PRUNE_LOCK``): a second, from another node's
cron or a hand beside it, waits for the first, then finds what is left.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heygem_ray import progress, storage
from heygem_ray.config import DetectorConfig
from heygem_ray.errors import InputError, PresenterLater, storage_errors
from heygem_ray.geometry import CropGeometry
from heygem_ray.template.files import TEMPLATE_VERSION


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
    reference_seconds: float = 0.0, reference_start: float = 0.0, max_fps: int = 0,
) -> str:  # fmt: skip
    """The cache's name for ``video``'s template: its bytes (their hash remembered in
    ``cache_dir``: ``reference_hash``), the crop geometry, the detector and, where they are
    set, ``max_resolution``, ``reference_seconds``, ``reference_start`` and ``max_fps``."""
    wanted: dict[str, Any] = {"v": TEMPLATE_VERSION, "geometry": dataclasses.asdict(geometry),
                              "detector": dataclasses.asdict(detector)}  # fmt: skip
    # (keys made before these options existed stay as they were)
    if max_resolution:
        wanted["max_resolution"] = max_resolution
    if reference_seconds:
        wanted["reference_seconds"] = float(reference_seconds)  # (300 and 300.0: one key)
    if reference_start:
        wanted["reference_start"] = float(reference_start)
    if max_fps:
        wanted["max_fps"] = max_fps
    settings = json.dumps(wanted, sort_keys=True)
    return hashlib.sha256(f"{reference_hash(video, cache_dir)}:{settings}".encode()).hexdigest()[:32]


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


# Where a remembered message names its reference: the next analysis puts its own there.
_REFERENCE = "\0reference\0"


def remember_failure(cache_dir: Path, key: str, video: Path, exc: InputError) -> None:
    """Keep ``exc`` for the next analysis of ``key`` (a cache that cannot be written keeps
    nothing), the reference's path in its message (as given, or made absolute) kept as a
    place for the next one's."""
    message = exc.message
    for said in sorted({str(video.absolute()), str(video)}, key=len, reverse=True):  # (the longer first)
        message = message.replace(said, _REFERENCE)
    record = {"kind": exc.kind, "message": message, "video": str(video.absolute()),
              "at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "settings": exc.settings if isinstance(exc, PresenterLater) else None}  # fmt: skip
    with suppress(OSError, InputError):
        storage.write_bytes(failure_path(cache_dir, key), json.dumps(record).encode())


def failed_before(cache_dir: Path, key: str, video: Path) -> None:
    """Raise again the error an earlier analysis of ``key`` failed with, where one did
    (``remember_failure``), naming ``video`` (absolute, as analysis names it) and saying how
    to have it analysed again."""
    path = failure_path(cache_dir, key)
    try:
        record = json.loads(path.read_text())
        kind, message = str(record["kind"]), str(record["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    mark_used(path)
    said = (f"{message.replace(_REFERENCE, str(video.absolute()))} (as an analysis of these bytes at these settings found at "
            f"{record.get('at', '?')}; it is not analysed again: remove {path} to have it analysed anew)")  # fmt: skip
    if isinstance(settings := record.get("settings"), dict):
        raise PresenterLater(said, {str(k): float(v) for k, v in settings.items()})
    raise InputError(said, kind=kind)


def lock_path(cache_dir: Path, key: str) -> Path:
    """The lock every build, open and removal of template ``key`` holds."""
    return cache_dir / f"{key}.lock"


def mark_used(root: Path) -> None:
    """Note that a run uses the template ``root`` now (its folder's modification time, which
    ``prune`` reads); a cache this process cannot write is left as it is."""
    with suppress(OSError):
        os.utime(root)


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


# A template's folder: its key (``template_key``); what a build of it left beside it: the
# key, a random hex name, and what it is (``LEFTOVER_SUFFIXES``).
_KEY = re.compile(r"[0-9a-f]{32}")
_LEFTOVER = re.compile(r"\.([0-9a-f]{32})\.[0-9a-f]{32}(" + "|".join(re.escape(x) for x in LEFTOVER_SUFFIXES) + ")")
# What the cache remembers (``HASHES_DIR``: a hash's name; ``FAILURES_DIR``: a key's).
_MEMO = {HASHES_DIR: re.compile(r"[0-9a-f]{32}"), FAILURES_DIR: re.compile(r"[0-9a-f]{32}\.json")}
# The cache's tag (the Cache Directory Tagging Specification's: backup tools skip the
# folder), written where an analysis builds (``tag``): what tells ``prune`` that a folder is
# a template cache, never a folder of other files given by mistake.
TAG_FILE = "CACHEDIR.TAG"
_TAG = (b"Signature: 8a477f597d28d172789f06886806bc55\n"
        b"# A heygem-ray template cache (analysed references): 'heygem-ray cache list' shows it.\n")  # fmt: skip
_TAG_MARK = b"heygem-ray template cache"  # (another program's tag does not make a folder ours)
# Held by a prune for all its work: another's would find the templates the first was
# removing, their keys' locks held, and call them in use.
PRUNE_LOCK = ".prune.lock"


@dataclass(frozen=True)
class Entry:
    """A template in the cache, or what a killed build left of one."""

    path: Path
    key: str
    bytes: int
    last_used: float  # seconds since the epoch: when a run last found or built it
    source: str  # the reference it was analysed from, as meta.json names it ("" where unread)
    version: int | None  # its TEMPLATE_VERSION (None where unread)
    leftover: bool  # a killed build's folder, or a template set aside and not yet removed
    busy: bool = False  # its key's lock was held when scanned: being built (a leftover), or being opened
    # Its frames' size, "1920×1080", "scaled from 3840×2160" where --max-resolution made it
    # smaller than its reference, and "first 300 s" where --reference-seconds cut the take,
    # "from 90 s" where --reference-start skipped its opening ("300 s from 90 s": both)
    # ("" where unread).
    size: str = ""


def tag(cache_dir: Path) -> None:
    """Tag ``cache_dir`` as a template cache (``TAG_FILE``) where it is not yet (a cache
    this process cannot write is left as it is)."""
    if not (cache_dir / TAG_FILE).exists():
        with suppress(OSError, InputError):
            storage.write_bytes(cache_dir / TAG_FILE, _TAG)


def check_folder(cache_dir: Path) -> None:
    """Raise ``bad_argument`` unless ``cache_dir`` is a folder (``cache list``, ``prune``)."""
    if not cache_dir.is_dir():
        what = "is not a folder" if cache_dir.exists() else "does not exist"
        raise InputError(f"the template cache {cache_dir} {what}: give the --cache-dir the runs use", kind="bad_argument")


def check_cache(cache_dir: Path) -> None:
    """Raise ``bad_argument`` unless ``cache_dir`` is a template cache: a folder tagged so
    (``tag``), or one an earlier version made (untagged), holding a template. ``prune``
    removes only what a cache holds, but a folder of other files given by mistake (a typo in
    a cron line) is refused whole."""
    check_folder(cache_dir)
    with suppress(OSError):
        if _TAG_MARK in (cache_dir / TAG_FILE).read_bytes()[: len(_TAG)]:
            return
    with storage_errors(cache_dir):
        if any(not e.leftover and e.version is not None for e in scan(cache_dir)):
            return
    raise InputError(
        f"{cache_dir} is not a heygem-ray template cache (no {TAG_FILE} of one, and no analysed reference in it): "
        "nothing there is removed; give the --cache-dir the runs use",
        kind="bad_argument",
    )


def scan(cache_dir: Path) -> list[Entry]:
    """Every template and leftover in ``cache_dir``, least recently used first (none where
    there is no such folder). A template is a folder named as a key holding its meta.json
    or beside its key's lock; a leftover is named as a build names one, beside its key's
    lock: nothing else in the folder is taken for either."""
    if not cache_dir.is_dir():
        return []
    entries = []
    with storage_errors(cache_dir):
        for path in cache_dir.iterdir():
            if found := _LEFTOVER.fullmatch(path.name):
                key, leftover = found[1], True
            elif _KEY.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
                key, leftover = path.name, False
            else:
                continue
            if not lock_path(cache_dir, key).exists() and (leftover or not (path / "meta.json").is_file()):
                continue
            source, version, size = _made_from(path)
            entries.append(Entry(path=path, key=key, bytes=folder_bytes(path), last_used=_mtime(path), source=source,
                                 version=version, leftover=leftover, size=size,
                                 busy=_lock_held(lock_path(cache_dir, key))))  # fmt: skip
    return sorted(entries, key=lambda e: e.last_used)


def _lock_held(lock: Path) -> bool:
    """Whether a process holds ``lock`` now (a build of its key, a job opening the template),
    found without creating it or waiting."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (also lets go of the lock, where it was taken)
    return False


def prune(
    cache_dir: Path, unused_for_s: float, *, dry_run: bool = False, waiting: Callable[[], None] = lambda: None
) -> tuple[list[Entry], list[Entry]]:
    """Remove the templates of ``cache_dir`` no run has used for ``unused_for_s`` seconds,
    and every leftover, each under its key's lock. Returns (removed, busy): ``busy`` were
    due but their key's lock was held (a build, or a job opening the template). With
    ``dry_run``, nothing is removed: ``removed`` is what would be (and ``busy`` what is in
    use now). Where another prune of the cache runs, ``waiting`` is called, and this one
    waits for it (``PRUNE_LOCK``). A folder that is not a cache is refused (``check_cache``)."""
    check_cache(cache_dir)
    if dry_run:
        return _prune(cache_dir, unused_for_s, dry_run)
    with storage.file_lock(cache_dir / PRUNE_LOCK, wait=False) as alone:
        if alone:
            return _prune(cache_dir, unused_for_s, dry_run)
    waiting()
    with storage.file_lock(cache_dir / PRUNE_LOCK):
        return _prune(cache_dir, unused_for_s, dry_run)


def _prune(cache_dir: Path, unused_for_s: float, dry_run: bool) -> tuple[list[Entry], list[Entry]]:
    removed: list[Entry] = []
    busy: list[Entry] = []
    cutoff = time.time() - unused_for_s
    if not dry_run:
        _forget_memos(cache_dir, cutoff)
    for entry in scan(cache_dir):
        if not entry.leftover and entry.last_used > cutoff:
            continue
        if dry_run:
            (busy if entry.busy else removed).append(entry)
            continue
        with storage.file_lock(lock_path(cache_dir, entry.key), wait=False) as held:
            if not held:
                busy.append(entry)
                continue
            if not entry.path.exists():  # removed meanwhile (the next build of its key)
                continue
            with storage_errors(cache_dir):
                if entry.leftover:
                    remove_path(entry.path)
                elif _mtime(entry.path) <= cutoff:  # not used since the scan
                    set_aside(entry.path, cache_dir / f".{entry.key}.{uuid.uuid4().hex}.pruned")
                else:
                    continue
        removed.append(entry)
    return removed, busy


def _forget_memos(cache_dir: Path, cutoff: float) -> None:
    """Remove the reference hashes the cache remembers (``reference_hash``) and the
    analyses' failures (``FAILURES_DIR``) that no job used since ``cutoff`` (a few
    bytes each: not listed; a hash removed while a job reads it costs that job a hash of
    its reference, a failure one more analysis)."""
    for folder in (cache_dir / HASHES_DIR, cache_dir / FAILURES_DIR):
        if not folder.is_dir():
            continue
        with storage_errors(cache_dir):
            for memo in folder.iterdir():
                if _MEMO[folder.name].fullmatch(memo.name) and memo.is_file() and _mtime(memo) <= cutoff:
                    memo.unlink(missing_ok=True)


def _made_from(path: Path) -> tuple[str, int | None, str]:
    """(source, version, size) of the template ``path`` as its meta.json says (see ``Entry``)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        source, version = str(meta.get("source", "")), int(meta["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "", None, ""
    size = f"{meta['width']}×{meta['height']}" if "width" in meta and "height" in meta else ""
    if size and meta.get("scaled_from"):
        size += " scaled from {}×{}".format(*meta["scaled_from"])
    cut, start = meta.get("cut_to_seconds"), meta.get("start_seconds")
    if size and cut and start:
        size += f", {cut:g} s from {start:g} s"
    elif size and cut:
        size += f", first {cut:g} s"
    elif size and start:
        size += f", from {start:g} s"
    return source, version, size


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def folder_bytes(path: Path) -> int:
    """Bytes in ``path`` and under it (what removing it frees); files that vanish meanwhile count 0."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size if path.exists() else 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
