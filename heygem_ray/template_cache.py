"""The template cache's housekeeping: what it holds (``scan``), and removing what no run
has used for a while (``prune``).

A template keeps every frame of its reference (about 2.8 GB a minute of camera-like 1080p),
and a cache used night after night gathers the templates of every presenter ever seen, and
those of earlier versions (``analyze.TEMPLATE_VERSION``), which this one never reads. Every
analysis that finds or builds a template marks it used (its folder's modification time,
``analyze.mark_used``). ``prune`` removes each template unused for longer than it is told,
under its key's lock (a build of that key holds it, as does a job opening it: one held is
skipped, and said so), setting it aside first, so no job ever meets it half removed; a job
that has it open reads on from the files it holds. What killed builds left
(``analyze.LEFTOVER_SUFFIXES``) goes too, under the same lock. The lock files stay (a process may
hold one; they are empty). One prune of a cache runs at a time (``PRUNE_LOCK``): a second,
from another node's cron or a hand beside it, waits for the first, then finds what is left.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from heygem_ray import analyze, storage
from heygem_ray.errors import storage_errors

# A template's folder: its key (``analyze.template_key``).
_KEY = re.compile(r"[0-9a-f]{32}")
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
    # Its frames' size, "1920×1080", "scaled from 3840×2160" where --max-resolution made it
    # smaller than its reference, and "first 300 s" where --reference-seconds cut the take,
    # "from 90 s" where --reference-start skipped its opening ("300 s from 90 s": both)
    # ("" where unread).
    size: str = ""


def scan(cache_dir: Path) -> list[Entry]:
    """Every template and leftover in ``cache_dir``, least recently used first (none where
    there is no such folder)."""
    if not cache_dir.is_dir():
        return []
    entries = []
    with storage_errors(cache_dir):
        for path in cache_dir.iterdir():
            key = path.name.split(".")[1] if path.name.startswith(".") and path.name.count(".") >= 2 else path.name
            leftover = path.suffix in analyze.LEFTOVER_SUFFIXES and path.name.startswith(".")
            if not _KEY.fullmatch(key) or not (leftover or path.is_dir()):
                continue
            source, version, size = _made_from(path)
            entries.append(Entry(path=path, key=key, bytes=_size(path), last_used=_mtime(path), source=source,
                                 version=version, leftover=leftover, size=size))  # fmt: skip
    return sorted(entries, key=lambda e: e.last_used)


def prune(
    cache_dir: Path, unused_for_s: float, *, dry_run: bool = False, waiting: Callable[[], None] = lambda: None
) -> tuple[list[Entry], list[Entry]]:
    """Remove the templates of ``cache_dir`` no run has used for ``unused_for_s`` seconds,
    and every leftover, each under its key's lock. Returns (removed, busy): ``busy`` were
    due but their key's lock was held (a build, or a job opening the template). With
    ``dry_run``, nothing is removed: ``removed`` is what would be. Where another prune of
    the cache runs, ``waiting`` is called, and this one waits for it (``PRUNE_LOCK``)."""
    if dry_run or not cache_dir.is_dir():
        return _prune(cache_dir, unused_for_s, dry_run)
    with storage.file_lock(cache_dir / PRUNE_LOCK, wait=False) as alone:
        if alone:
            return _prune(cache_dir, unused_for_s, dry_run)
    waiting()
    with storage.file_lock(cache_dir / PRUNE_LOCK):
        return _prune(cache_dir, unused_for_s, dry_run)


def _prune(cache_dir: Path, unused_for_s: float, dry_run: bool) -> tuple[list[Entry], list[Entry]]:
    removed, busy = [], []
    cutoff = time.time() - unused_for_s
    if not dry_run:
        _forget_memos(cache_dir, cutoff)
    for entry in scan(cache_dir):
        if not entry.leftover and entry.last_used > cutoff:
            continue
        if dry_run:
            removed.append(entry)
            continue
        with storage.file_lock(analyze.lock_path(cache_dir, entry.key), wait=False) as held:
            if not held:
                busy.append(entry)
                continue
            if not entry.path.exists():  # removed meanwhile (the next build of its key)
                continue
            with storage_errors(cache_dir):
                if entry.leftover:
                    analyze.remove_path(entry.path)
                elif _mtime(entry.path) <= cutoff:  # not used since the scan
                    analyze.set_aside(entry.path, cache_dir / f".{entry.key}.{uuid.uuid4().hex}.pruned")
                else:
                    continue
        removed.append(entry)
    return removed, busy


def _forget_memos(cache_dir: Path, cutoff: float) -> None:
    """Remove the reference hashes the cache remembers (``analyze.reference_hash``) and the
    analyses' failures (``analyze.FAILURES_DIR``) that no job used since ``cutoff`` (a few
    bytes each: not listed; a hash removed while a job reads it costs that job a hash of
    its reference, a failure one more analysis)."""
    for folder in (cache_dir / analyze.HASHES_DIR, cache_dir / analyze.FAILURES_DIR):
        if not folder.is_dir():
            continue
        with storage_errors(cache_dir):
            for memo in folder.iterdir():
                if _mtime(memo) <= cutoff:
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


def _size(path: Path) -> int:
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
