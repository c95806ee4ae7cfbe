"""Locks that name their holder and go stale when it stops: the one lock mechanism.

Two things must be done by one process at a time, whoever asks and from whichever
machine: a run into an output folder or bucket prefix (``run.py``), and the build of one
engine into a bucket store (``engines.py``). Both take a lock here.

A lock is a small file or object holding its holder's record (JSON): host, pid, what it
is doing, when it took the lock, a random token, and a heartbeat. While the lock is held,
a thread of the holder rewrites the record (every 10 s by default). A lock is *stale*, and
may be taken over, when the record was not rewritten for ``STALE_AFTER_S`` (its holder
was killed, or its machine died), or at once when its holder is a process of this machine
(same boot, same pid namespace) that has ended. A record this code cannot read (an older
heygem-ray's) goes stale by its age alone.

Every change is conditional on the version its maker last read, so of two processes that
find a lock stale at once exactly one takes it, and a holder whose lock was taken over
(its heartbeat had stopped) finds out at its next heartbeat (``Lease.lost``) and never
deletes its successor's lock:

* a local file (also on NFS with working locks): each change is made under an ``flock`` of
  the file, after checking that its name still names the file locked (a waiter on a lock
  just deleted tries again), and compared by content. Its age is its modification time
  against this machine's clock, which on a shared file system is another machine's (the
  server's, or the holder's) clock: a file that looks stale is watched for
  ``CONFIRM_BEATS`` heartbeats more before it is taken over, and one whose record changes
  meanwhile is held (a live holder, with clocks that disagree). So is an object in a
  plain store (below), whose age is its time stamp against this machine's clock too.
* an object in S3 (or an S3 API): ``PutObject`` with ``If-None-Match: *`` creates it,
  ``If-Match: <ETag>`` refreshes or takes it over, ``DeleteObject`` with ``If-Match``
  releases it: the server decides. Its age is its ``Last-Modified`` against the reply's
  ``Date``: the store's clock only, so machines whose clocks disagree agree on staleness.
* an object in another store (``gs://`` here): read, compare, then write. Not atomic: two
  processes that find the lock free or stale within the same moment may both take it.
  It still refuses a second run while the first is alive, which is what happens at night.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from heygem_ray import storage
from heygem_ray.errors import HeygemError, InputError, storage_error
from heygem_ray.storage import Location, Uri

log = logging.getLogger(__name__)

# Seconds without a rewrite after which a lock is stale: many heartbeats, each of which may
# take a slow request or two (storage's S3 client gives up on one within a minute).
STALE_AFTER_S = 120.0
BEATS_PER_STALE = 12  # heartbeats in that time: by default one every 10 s
# Heartbeats (of ``stale_after_s / BEATS_PER_STALE``) a lock aged by this machine's clock
# (``_Record.clock_here``) that looks stale is watched before it is taken over: a holder that
# is alive rewrites it meanwhile.
CONFIRM_BEATS = 2.5
# Rounds of look-then-change a taker tries while others change the lock under it.
_ROUNDS = 100


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its record says."""

    host: str
    pid: int
    what: str  # what the holder is doing, in words: "run 3f2a1c of /data/m.csv"
    started_at: str  # when it took the lock: ISO 8601, UTC
    heartbeat_at: str  # its last rewrite of the record, by its own clock
    beats: int  # rewrites so far: every record a holder writes differs
    token: str  # random, one per taking: tells this holder from a later one of the same pid
    # Where ``pid`` names the holder: this machine's boot id and the holder's pid namespace
    # ("" where unknown), and the process's start time in clock ticks since boot (so a pid
    # reused by another process is not taken for the holder).
    machine: str
    process_start: str

    @classmethod
    def me(cls, what: str) -> Holder:
        now = _utc_now()
        pid = os.getpid()
        return cls(socket.gethostname(), pid, what, now, now, 0, uuid.uuid4().hex, machine(), _process_start(pid))

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """The record in ``data``; None if it is not one (damaged, or another version's)."""
        try:
            fields = json.loads(data)
            return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls)})
        except (ValueError, TypeError, KeyError):
            return None

    def encode(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), indent=1) + "\n").encode()

    def beat(self) -> Holder:
        return dataclasses.replace(self, heartbeat_at=_utc_now(), beats=self.beats + 1)

    def describe(self) -> str:
        since = self.started_at.replace("T", " ").replace("Z", " UTC")
        return f"pid {self.pid} on {self.host} ({self.what}) since {since}"


@dataclass(frozen=True)
class Held:
    """A lock that another live process holds: what ``acquire`` returns instead of a lease."""

    where: Location
    holder: Holder | None  # None: a record this version cannot read
    raw: str  # the record as it is (for one that cannot be read)
    age_s: float  # seconds since its last heartbeat, by the store's clock
    # Its file looked stale by its age, and its record changed while watched: the clocks of
    # this machine and of whoever stamps the file disagree.
    clocks_disagree: bool = False

    def describe(self) -> str:
        """``pid 12 on host-a (run 3f2a1c of m.csv) since 2026-01-02 03:00:00 UTC, last heartbeat 4 s ago``."""
        who = self.holder.describe() if self.holder else f"a holder whose record reads {self.raw[:200]!r}"
        if self.clocks_disagree:
            return (f"{who}, whose heartbeat goes on (its time stamp says {self.age_s:.0f} s ago: this machine's "
                    "clock and the storage's disagree; keep the nodes' clocks in step, with NTP)")  # fmt: skip
        return f"{who}, last heartbeat {self.age_s:.0f} s ago"


class Lease:
    """A lock this process holds. A thread rewrites its record every ``heartbeat_s`` until
    ``release`` (also on leaving a ``with`` block). Should a rewrite find the record changed
    (another process took the lock over after the heartbeat had stopped), ``lost`` says so
    and the thread stops: the lock is no longer this process's to release. Should it find
    the record gone (deleted by hand, or with its folder), it takes the lock again."""

    def __init__(
        self, store: _Store, where: Location, holder: Holder, version: str, heartbeat_s: float, stale_after_s: float
    ):
        self.where = where
        self.holder = holder
        self.lost: str | None = None  # why the lock is no longer held, once it is not
        self.stale_after_s = stale_after_s
        self._store, self._version, self._heartbeat_s = store, version, heartbeat_s
        self._stop = threading.Event()
        self._released = False
        self._thread = threading.Thread(target=self._beat, name=f"heygem-lock {where}", daemon=True)
        self._thread.start()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still this process's (once)."""
        if self._released:
            return
        self._released = True
        self._stop.set()
        self._thread.join()
        if self.lost is not None:
            return
        try:
            if not self._store.delete(self._version):
                self.lost = _taken_over(self._store, self.where)
                log.warning("%s%s", self.lost, "" if self.lost == _removed(self.where) else "; left as it is")
        except (HeygemError, OSError) as exc:
            why = exc.message if isinstance(exc, HeygemError) else str(exc)
            log.warning("could not delete the lock %s (%s); it goes stale %.0f s after its last heartbeat",
                        self.where, why, self.stale_after_s)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            holder = self.holder.beat()
            try:
                version = self._store.replace(self._version, holder.encode()) or _mine(self._store, holder)
            except (HeygemError, OSError) as exc:  # the store is out of reach: try again at the next beat
                why = exc.message if isinstance(exc, HeygemError) else str(exc)
                log.warning("could not refresh the lock %s (%s); trying again in %.0f s", self.where, why,
                            self._heartbeat_s)
                continue
            if version is None:
                version = self._retake(holder)
            if version is None:
                self.lost = _taken_over(self._store, self.where)
                log.error("%s", self.lost)
                return
            self.holder, self._version = holder, version

    def _retake(self, holder: Holder) -> str | None:
        """Take the lock again where it is gone (deleted by hand, or with its folder by a
        cleanup): it is no other process's, and the store's create-if-absent lets one process
        have it. Its version, or None where another process has it (or the store is out of
        reach)."""
        try:
            version = self._store.create(holder.encode()) if self._store.read() is None else None
        except (HeygemError, OSError):
            return None
        if version is not None:
            log.warning("%s; took it again", _removed(self.where))
        return version


def acquire(
    where: Location, what: str, *, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float | None = None
) -> Lease | Held:
    """Take the lock at ``where`` for ``what`` (words naming this holder's work): a ``Lease``
    if it was free or stale (then taken over, logged with its last holder), else ``Held``,
    naming the live holder. Creates a local lock's folder. The lease's heartbeat comes
    every ``heartbeat_s`` (default: ``BEATS_PER_STALE`` times in ``stale_after_s``)."""
    heartbeat_s = stale_after_s / BEATS_PER_STALE if heartbeat_s is None else heartbeat_s
    try:
        return _acquire(_store(where), where, Holder.me(what), stale_after_s, heartbeat_s)
    except OSError as exc:  # a local lock whose folder cannot be made or written (a bucket's raise InputError)
        found = storage_error(exc, where)
        if found is not None:  # full, read-only, not permitted: the storage's own words and fix
            raise found from exc
        raise InputError(
            f"could not take the lock {where} ({exc.strerror or exc}): check that the folder can be created "
            "and written by this user",
            kind="storage",
        ) from exc


def look(where: Location, stale_after_s: float = STALE_AFTER_S) -> tuple[Held, bool] | None:
    """The lock at ``where`` as its record says, read without taking it (``heygem-ray
    status`` asks whether a run is going on): (its holder, whether the holder is alive),
    or None where there is no lock. A holder is not alive once the lock is stale (its
    process on this machine has ended, or its heartbeat is ``stale_after_s`` old): what a
    process killed while it held the lock left."""
    seen = _store(where).read()
    if seen is None:
        return None
    return _held(where, seen), _stale(seen, stale_after_s) is None


def _acquire(store: _Store, where: Location, me: Holder, stale_after_s: float, heartbeat_s: float) -> Lease | Held:
    seen: _Record | None = None
    why = ""
    for _ in range(_ROUNDS):
        seen = store.read()
        if seen is None:
            version = store.create(me.encode())
        else:
            stale = _stale(seen, stale_after_s)
            if stale is None:
                return _held(where, seen)
            why, by_age = stale
            if by_age and seen.clock_here:
                # By two machines' clocks, which nothing keeps in step: watched.
                time.sleep(CONFIRM_BEATS * stale_after_s / BEATS_PER_STALE)
                now = store.read()
                if now is None or now.version != seen.version:
                    if now is not None and now.age_s > stale_after_s:
                        return dataclasses.replace(_held(where, now), clocks_disagree=True)
                    continue  # released, or taken, meanwhile: look again
            version = store.replace(seen.version, me.encode())
        version = version or _mine(store, me)
        if version is not None:
            if seen is not None:
                log.warning("took over the lock %s from %s: %s", where, _held(where, seen).describe(), why)
            return Lease(store, where, me, version, heartbeat_s, stale_after_s)
        # Another process changed it first: look again (its lock is fresh now, or gone).
    if seen is None:  # created and deleted by others every round: as good as held
        seen = _Record(b"", "", 0.0)
    return _held(where, seen)


# -- internals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    data: bytes
    version: str  # what a conditional change names: an ETag, or a hash of the content
    age_s: float  # since the last write
    # ``age_s`` is the record's time stamp against this machine's clock (a file, an object in
    # a plain store), not the store's own clock alone (S3's reply ``Date``).
    clock_here: bool = False


class _Store(Protocol):
    """Where a lock's record lives; each change happens only if the record is ``version``."""

    def read(self) -> _Record | None: ...

    def create(self, data: bytes) -> str | None:
        """Write ``data`` if there is no record: its version, or None."""
        ...

    def replace(self, version: str, data: bytes) -> str | None:
        """Write ``data`` over the record if it is ``version``: the new version, or None."""
        ...

    def delete(self, version: str) -> bool:
        """Delete the record if it is ``version``: whether it was."""
        ...


class _FileStore:
    """A local file, changed under its ``flock`` (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> _Record | None:
        fd = self._locked(create=False)
        if fd is None:
            return None
        try:
            data = _read_all(fd)
            age = max(0.0, time.time() - os.fstat(fd).st_mtime)
            return _Record(data, _digest(data), age, clock_here=True) if data else None
        finally:
            os.close(fd)

    def create(self, data: bytes) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._locked(create=True)
        if fd is None:  # deleted between its creation and our lock on it, every time
            return None
        try:
            if _read_all(fd):  # an empty file is free: a process killed while creating it
                return None
            return self._write(fd, data)
        finally:
            os.close(fd)

    def replace(self, version: str, data: bytes) -> str | None:
        fd = self._locked(create=False)
        if fd is None:
            return None
        try:
            return self._write(fd, data) if _digest(_read_all(fd)) == version else None
        finally:
            os.close(fd)

    def delete(self, version: str) -> bool:
        fd = self._locked(create=False)
        if fd is None:
            return False
        try:
            if _digest(_read_all(fd)) != version:
                return False
            self.path.unlink()  # while still locked: a waiter on it then finds its name gone
            return True
        finally:
            os.close(fd)

    def _locked(self, create: bool) -> int | None:
        """A descriptor of the file, locked, that its name still names; None if there is none."""
        for _ in range(_ROUNDS):
            try:
                fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                return None
            current = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                opened = os.fstat(fd)
                try:
                    named = os.stat(self.path)
                    current = (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
                except FileNotFoundError:
                    current = False
            finally:
                if not current:
                    os.close(fd)  # also unlocks it
            if current:
                return fd
            if not create:
                return None  # deleted while we waited for it
        return None

    @staticmethod
    def _write(fd: int, data: bytes) -> str:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return _digest(data)


class _ObjectStore:
    """An S3 object, changed by conditional requests (see the module docstring)."""

    def __init__(self, uri: Uri):
        self.uri = uri

    def read(self) -> _Record | None:
        found = storage.read_versioned(self.uri)
        return None if found is None else _Record(found.data, found.etag, found.age_s)

    def create(self, data: bytes) -> str | None:
        return storage.put_if(self.uri, data, None)

    def replace(self, version: str, data: bytes) -> str | None:
        return storage.put_if(self.uri, data, version)

    def delete(self, version: str) -> bool:
        return storage.remove_if(self.uri, version)


class _PlainStore:
    """An object in a store without conditional requests: read, compare, write (not atomic)."""

    def __init__(self, uri: Uri):
        self.uri = uri

    def read(self) -> _Record | None:
        found = storage.stat(self.uri)
        if found is None:
            return None
        try:
            data = storage.read_bytes(self.uri)
        except InputError:  # deleted between the two requests
            return None
        return _Record(data, _digest(data), max(0.0, time.time() - found.mtime_ns / 1e9), clock_here=True)

    def create(self, data: bytes) -> str | None:
        if storage.is_file(self.uri):
            return None
        storage.write_bytes(self.uri, data)
        return _digest(data)

    def replace(self, version: str, data: bytes) -> str | None:
        found = self.read()
        if found is None or found.version != version:
            return None
        storage.write_bytes(self.uri, data)
        return _digest(data)

    def delete(self, version: str) -> bool:
        found = self.read()
        if found is None or found.version != version:
            return False
        storage.remove(self.uri)
        return True


def _store(where: Location) -> _Store:
    if isinstance(where, Path):
        return _FileStore(where)
    return _ObjectStore(where) if storage.conditional(where) else _PlainStore(where)


def _mine(store: _Store, holder: Holder) -> str | None:
    """The version of the record if it is exactly ``holder``'s: a change whose condition
    failed only because a retry of the same request found the first try done."""
    found = store.read()
    return found.version if found is not None and found.data == holder.encode() else None


def _stale(seen: _Record, stale_after_s: float) -> tuple[str, bool] | None:
    """Why the lock ``seen`` may be taken over, and whether by its age alone (the clocks'
    say); None while its holder looks alive."""
    holder = Holder.parse(seen.data)
    if holder is not None and holder.machine and holder.machine == machine() and not _running(holder):
        return f"its process {holder.pid} on {holder.host} has ended", False
    if seen.age_s > stale_after_s:
        return f"its last heartbeat was {seen.age_s:.0f} s ago (stale after {stale_after_s:.0f} s)", True
    return None


def _held(where: Location, seen: _Record) -> Held:
    return Held(where, Holder.parse(seen.data), seen.data.decode(errors="replace").strip(), seen.age_s)


def _taken_over(store: _Store, where: Location) -> str:
    try:
        now = store.read()
    except (HeygemError, OSError):
        now = None
    if now is None:
        return _removed(where)
    return (f"the lock {where} was taken over while this process held it: its heartbeat had stopped; it is now "
            f"held by {_held(where, now).describe()}")  # fmt: skip


def _removed(where: Location) -> str:
    return (f"the lock {where} was removed while this process held it (was its folder deleted or cleaned, "
            "or the lock deleted by hand?)")  # fmt: skip


def _running(holder: Holder) -> bool:
    """Whether ``holder``'s process (one of this machine's) is still running."""
    started = _process_start(holder.pid)
    if not holder.process_start:  # recorded where /proc was not readable
        return bool(started) or pid_exists(holder.pid)
    return started == holder.process_start


def _process_start(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field
    22); "" when there is no such live process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return "" if fields[0] in ("Z", "X") else fields[19]  # a zombie has ended


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@functools.cache
def machine() -> str:
    """This boot of this machine and this process's pid namespace: where a pid means the
    same process to every process that reads it. "" where /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
