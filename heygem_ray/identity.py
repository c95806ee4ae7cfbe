"""Content identities: what a rerun compares before it trusts an earlier run's MP4.

A row an earlier run rendered counts as complete only if it was rendered from what this
run would render it from (``resume.py``). Names are not enough: new weights copied over
the old checkpoint, or a lesson re-recorded to the same length under the same name, keep
the path, the size and (copied with ``cp -p`` or a sync tool) the modification time. So:

* a local file is identified by the sha256 of its bytes. Hashing a 3 GB MuseTalk folder
  and every lesson's audio each night would cost minutes, so each digest is kept in this
  machine's cache (``<cache home>/digests``) with the file's path, device, inode, size,
  modification and change times, and used while all of them are unchanged. A write to
  the file changes its change time, which no tool can set back: then it is hashed again.
* an object in a bucket is identified by its size and Last-Modified time (whole seconds):
  an upload makes a new object with a new time, and hashing would mean downloading every
  input. (One replaced by another of the same size within the same second is the same.)
* a checkpoint by ``weights_digest``: its file's digest, or for a folder (MuseTalk's
  ``models/``) a digest of the name and digest of each file the pack reads there
  (``PackSpec.weight_files``; a pack that names none: every file); a run's weights by
  ``render_weights``: the pack's, and the restoration stage's when it has one.

These are computed on the driver, which reads the same paths the nodes do. A local input's
is read on a thread of its own and watched (``_watched``): a read that stops answering (a
network mount gone dead) gives no identity and its folder is not read again by this
process, where it would have held the driver's loop, and so the whole run, for ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from heygem_ray import storage
from heygem_ray.config import RenderConfig, cache_home
from heygem_ray.errors import HeygemError, InputError
from heygem_ray.packs import get_pack
from heygem_ray.storage import Location, Stat, Uri

log = logging.getLogger(__name__)

NO_WEIGHTS = "none"  # the weights identity of a pack without weights


def weights_digest(checkpoint: Path | None, files: Sequence[str] = (), option: str = "--checkpoint") -> str:
    """``sha256:<hex>`` of the checkpoint's bytes (a folder: of every file's relative name
    and digest under it, in name order; with ``files``, of those alone, a missing one as
    missing); ``NO_WEIGHTS`` for none. ``option`` names it where it is missing."""
    if checkpoint is None:
        return NO_WEIGHTS
    if not checkpoint.exists():
        raise InputError(
            f"{option} {checkpoint} does not exist on this machine (the run's driver, which checks the weights' "
            "content before trusting an earlier run's outputs): give a path the driver and every node can read",
            kind="missing_file",
        )
    try:
        if checkpoint.is_file():
            return f"sha256:{file_digest(checkpoint)}"
        listing = hashlib.sha256()
        named = [(name, checkpoint / name) for name in files] if files else _files_under(checkpoint)
        for name, path in sorted(named):
            listing.update(f"{name}\0{file_digest(path) if path.is_file() else 'missing'}\n".encode())
    except OSError as exc:
        raise InputError(
            f"checkpoint {checkpoint}: {exc.filename or checkpoint} cannot be read ({exc.strerror or exc}); "
            "check its permissions",
            kind="bad_checkpoint",
        ) from exc
    return f"sha256:{listing.hexdigest()}"


def render_weights(render: RenderConfig) -> str:
    """What a run renders with: the pack's ``weights_digest``, then with ``--restore`` the
    restoration's (``sha256:<pack>;gfpgan=sha256:<restore>``). New weights for either
    render the rows again; without restoration it is the pack's digest alone."""
    pack = weights_digest(render.checkpoint, get_pack(render.pack).weight_files)
    if render.restore == "none":
        return pack
    return f"{pack};{render.restore}={weights_digest(render.restore_checkpoint, option='--restore-checkpoint')}"


def input_identity(loc: Location) -> str:
    """What names the contents of the input file ``loc`` (see the module docstring); "" when
    it cannot be read now (missing, the bucket out of reach, its folder's reads stopped
    answering) or is no regular file (a pipe, whose open waits for a writer, or a device,
    which never ends; its job says so): nothing is trusted on it."""
    if isinstance(loc, Path):
        return _watched(loc)
    try:
        found = storage.stat(loc)
    except HeygemError:
        return ""
    return "" if found is None else _object_identity(found)


class Inputs:
    """``input_identity`` over a whole manifest: each bucket folder is listed once for all
    the objects in it, not looked up once per object. Holds what it listed until dropped."""

    def __init__(self) -> None:
        self._listed: dict[Uri, dict[Location, Stat]] = {}

    def of(self, loc: Location) -> str:
        if isinstance(loc, Path):
            return input_identity(loc)
        folder = loc.parent
        if folder not in self._listed:
            try:
                self._listed[folder] = storage.list_stats(folder)
            except HeygemError:
                self._listed[folder] = {}
        found = self._listed[folder].get(loc)
        return "" if found is None else _object_identity(found)


# Seconds a local input's read may move no byte before its folder counts as not answering
# (a hashing thread reads a MiB at a time: even a slow mount moves within a second).
READ_STALL_S = 60.0
# Folders whose reads stopped answering this process: their files get no identity.
_stuck: set[str] = set()


class _Reading:
    """One file's identity being read by the reader thread: what it found, once ``done``,
    and the bytes read so far (its progress)."""

    def __init__(self, path: Path) -> None:
        self.path, self.identity, self.read, self.done = path, "", [0], threading.Event()

    def __call__(self) -> None:
        try:
            self.identity = f"sha256:{file_digest(self.path, self.read)}" if self.path.is_file() else ""
        except OSError:
            pass
        finally:
            self.done.set()


# The thread that reads local inputs for ``_watched``, one file after another, replaced when
# one is left stuck in a read. An input whose digest is cached takes 0.08 ms so, 0.02 read in
# the caller's thread: 6 s more over a manifest of 100,000 rows (bench/bench_driver_rows.py);
# a thread started for each took 0.3 ms.
_reader: queue.SimpleQueue[_Reading] | None = None


def _read_on_thread(reading: _Reading) -> queue.SimpleQueue[_Reading]:
    global _reader
    if _reader is None:
        _reader = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(_reader,), name="input identities", daemon=True).start()
    _reader.put(reading)
    return _reader


def _serve(work: queue.SimpleQueue[_Reading]) -> None:
    while True:
        work.get()()


def _watched(path: Path) -> str:
    """``sha256:<hex>`` of the local file ``path`` (see ``input_identity``), read on the
    reader thread while the caller waits; where it moves no byte for ``READ_STALL_S``, ""
    and its folder is not read again (the thread, stuck in the kernel, is left: nothing can
    stop it; the next file gets a new one)."""
    global _reader
    folder = os.path.dirname(os.path.abspath(path))
    if folder in _stuck:
        return ""
    reading = _Reading(path)
    on = _read_on_thread(reading)
    seen = 0
    while not reading.done.wait(READ_STALL_S):
        if reading.read[0] == seen:
            _stuck.add(folder)
            if _reader is on:
                _reader = None
            log.warning("%s: reading it moved no byte for %g s (a network mount that stopped answering?); its "
                        "row and those of other files in %s are rendered without an identity, so a rerun "
                        "renders them again", path, READ_STALL_S, folder)  # fmt: skip
            return ""
        seen = reading.read[0]
    return reading.identity


def file_digest(path: Path, read: list[int] | None = None) -> str:
    """sha256 hex of the file's bytes, from this machine's cache while the file is unchanged;
    the bytes read so far counted in ``read[0]`` as it goes."""
    stamp = storage.file_stamp(path)
    where = os.path.abspath(path)
    entry = cache_home() / "digests" / (key := hashlib.sha256(where.encode()).hexdigest())[:2] / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        kept = json.loads(entry.read_text())
        if kept["path"] == where and kept["stat"] == stamp:
            return str(kept["sha256"])
    with open(path, "rb") as f:
        digest = _sha256(f, read or [0])
    if storage.file_stamp(path) == stamp:  # not written to while it was read: worth keeping
        # (a cache not kept costs the next run a hashing, nothing else: a full or read-only
        # disk, which storage.write_bytes says as InputError, stops nothing)
        with contextlib.suppress(OSError, HeygemError):
            storage.write_bytes(entry, json.dumps({"path": where, "stat": stamp, "sha256": digest}).encode(),
                                durable=False)  # fmt: skip
    return digest


def _sha256(f: BinaryIO, read: list[int]) -> str:
    h, buffer = hashlib.sha256(), bytearray(_CHUNK)
    view = memoryview(buffer)
    while n := f.readinto(buffer):  # type: ignore[attr-defined]
        h.update(view[:n])
        read[0] += n
    return h.hexdigest()


_CHUNK = 1 << 20


def _object_identity(found: Stat) -> str:
    # Whole seconds: a listing and a HEAD request give Last-Modified at different precisions.
    return f"size:{found.size};mtime_s:{found.mtime_ns // 1_000_000_000}"


def _files_under(folder: Path) -> list[tuple[str, Path]]:
    """(name relative to ``folder``, path) of every file below it, through symbolic links
    (a Hugging Face snapshot's files are links into its blob store); a folder reached again
    through a link (a link to a folder above it) is not walked again, where the walk went
    round the loop 40 levels deep, hashing the whole folder at each."""
    found = []
    seen: set[tuple[int, int]] = set()
    for root, folders, names in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in names:
            path = Path(root) / name
            if path.is_file():
                found.append((path.relative_to(folder).as_posix(), path))
    return found
