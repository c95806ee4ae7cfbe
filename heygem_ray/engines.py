"""The engine store: built model artifacts (TensorRT engines, ONNX graphs) kept on disk.

One entry per ``EngineKey`` (pack, weights hash, stage, precision, batch profile, backend
and its version, GPU architecture; for int8, the calibration data's id), laid out readably::

    <root>/warp/render/tensorrt-10.9.0.34-sm_90-fp16-b1-32-64-1a2b3c4d/
        engine.plan     the artifact (``model.onnx`` for onnxruntime entries)
        meta.json       the sidecar: key, built_at, host, build seconds, size, sha256, tools

Writers build into a temporary name and ``os.replace`` it into place, so a reader sees a
complete artifact or none. An ``fcntl`` lock per entry makes two processes that miss the
same entry build it once: the second waits, then finds it built. The lock needs a file
system with working POSIX locks (local disks, NFS with lockd); on object-store mounts
build ahead of time with ``heygem-ray engines build`` instead.

The root may be a bucket prefix (``s3://bucket/engines``). Runtimes load artifacts from
files, so such a store is used through a local mirror on each machine (``root``, by
default ``$XDG_CACHE_HOME/heygem-ray/engine-mirrors/<bucket and hash of the URI>``): an entry missing there
is downloaded from the bucket (artifact, then sidecar, checked as above), else built
locally and uploaded (artifact first, sidecar last, each object appearing whole).
Machines that miss the same entry at once build it once: the builder holds a lock
object in the bucket (``BUCKET_LOCK``, see ``locks.py``), whose heartbeat keeps it for as
long as the build takes (an int8 MuseTalk build on a CPU: the best part of an hour); the
others wait for its upload, up to the lock timeout. A lock whose heartbeat stopped (its
builder died) is taken over, by one waiter; a builder whose lock was taken over (its
heartbeat had stopped) neither uploads nor deletes its successor's lock. In a store
without conditional requests (``gs://`` here) two machines may both build, and the last
upload stays.

An entry is used only if its artifact exists, its size and sha256 match the sidecar and
the sidecar's key is the requested key; anything else is rebuilt (or, with
``rebuild=False``, an ``EngineError`` says what was wrong).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

from heygem_ray import locks, storage
from heygem_ray.config import cache_home
from heygem_ray.errors import EngineError, InputError
from heygem_ray.storage import Location, Uri

log = logging.getLogger(__name__)

# bf16 runs on pytorch only: no artifact is ever keyed by it.
Precision = Literal["fp32", "fp16", "int8", "bf16"]
EngineBackend = Literal["onnxruntime", "tensorrt"]

# Bumped when the key's meaning or the artifact layout changes: every digest changes and
# old entries are rebuilt rather than misread.
STORE_FORMAT = 1
SIDECAR = "meta.json"
ARTIFACT = {"tensorrt": "engine.plan", "onnxruntime": "model.onnx"}
# In a bucket store: the object a machine holds while it builds an entry (see EngineStore._from_bucket).
BUCKET_LOCK = ".build-lock"
# "cpu", "sm_90" (compute capability 9.0); "any" for artifacts that run anywhere (ONNX).
_ARCH = re.compile(r"^(cpu|any|sm_\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STAGES = ("reference", "motion", "render", "restore")
_TOOLS = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt")
_LOCK_POLL_S = 0.2
DEFAULT_LOCK_TIMEOUT_S = 3600.0  # a TensorRT build of a big model takes minutes, not hours


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes an engine accepts: ``min`` ≤ batch ≤ ``max``, tuned for ``opt``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def label(self) -> str:
        return f"b{self.min}-{self.opt}-{self.max}"


@dataclass(frozen=True)
class EngineKey:
    """Everything a built artifact depends on. Equal keys ⇒ interchangeable artifacts."""

    pack: str
    weights_hash: str  # sha256 of the checkpoint file; "none" for packs without weights
    stage: str  # "reference", "motion", "render" (a pack's), or "restore" (pack "gfpgan")
    precision: Precision
    profile: BatchProfile | None  # None where the artifact takes any batch (ONNX)
    backend: EngineBackend
    backend_version: str  # e.g. TensorRT "10.9.0.34"; the exporter's versions for ONNX
    arch: str  # "sm_90", "cpu", or "any"
    # int8 only: the id of the calibration data its activation ranges were measured on
    # (``backends.int8.CalibrationSet.id``); "" for every other precision.
    calibration: str = ""
    # An artifact built from another (a TensorRT engine from its ONNX graph): that one's key
    # digest, so a graph exported again (another exporter, opset or int8 recipe: another
    # key) gets an engine of its own; "" for an artifact made from the weights.
    source: str = ""

    def __post_init__(self) -> None:
        if self.stage not in _STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"unknown precision {self.precision!r}")
        if self.backend not in get_args(EngineBackend):
            raise ValueError(f"unknown engine backend {self.backend!r}")
        if not _ARCH.match(self.arch):
            raise ValueError(f"arch must be 'cpu', 'any' or like 'sm_90', got {self.arch!r}")
        if (self.precision == "int8") != bool(self.calibration):
            raise ValueError(f"a calibration id goes with precision int8 and only with it, got "
                             f"{self.precision!r} and calibration {self.calibration!r}")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profile"] = None if self.profile is None else [self.profile.min, self.profile.opt, self.profile.max]
        if not self.calibration:  # keys without one keep the digests they had before int8
            del d["calibration"]
        if not self.source:  # (likewise: only the artifacts built from another carry one)
            del d["source"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineKey:
        profile = d.get("profile")
        return cls(**{**d, "profile": None if profile is None else BatchProfile(*profile)})

    def digest(self) -> str:
        """sha256 hex of the key's canonical JSON (sorted keys, no spaces) and the store format."""
        text = json.dumps({"format": STORE_FORMAT, **self.to_json()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def dirname(self) -> str:
        """``<pack>/<stage>/<backend>-<version>-<arch>-<precision>[-cal<id8>][-b<min>-<opt>-<max>]-<digest8>``."""
        parts = [self.backend, self.backend_version, self.arch, self.precision]
        if self.calibration:
            parts.append(f"cal{self.calibration[:8]}")
        if self.profile is not None:
            parts.append(self.profile.label())
        leaf = _UNSAFE.sub("_", "-".join(parts)) + "-" + self.digest()[:8]
        return f"{_UNSAFE.sub('_', self.pack)}/{self.stage}/{leaf}"


@dataclass(frozen=True)
class EntryInfo:
    """One row of ``heygem-ray engines list``."""

    pack: str
    stage: str
    precision: str
    backend: str
    backend_version: str
    arch: str
    profile: str  # "b1-32-64", or "" for ONNX
    size: int  # bytes of the artifact as recorded in the sidecar
    built_at: str  # ISO 8601, UTC
    path: Location  # the artifact (in the bucket, for a store in one)
    ok: bool  # artifact present with the recorded size (the sha256 is checked on use)


class EngineStore:
    """Built artifacts under ``root``; see the module docstring for the layout and rules."""

    def __init__(
        self,
        root: str | os.PathLike[str] | Uri,
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        mirror: Path | None = None,
        stale_after_s: float = locks.STALE_AFTER_S,
    ):
        where = storage.location(root)
        # The bucket prefix of a store kept in one; ``root`` is then this machine's mirror.
        self.remote: Uri | None = where if isinstance(where, Uri) else None
        if isinstance(where, Uri):
            digest = hashlib.sha256(str(where).encode()).hexdigest()[:16]
            where = mirror or cache_home() / "engine-mirrors" / f"{where.scheme}-{where.bucket}-{digest}"
        self.root: Path = where
        # The longest a process waits for another to build an entry.
        self.lock_timeout_s = lock_timeout_s
        # A bucket store's build lock is taken over this long after its last heartbeat.
        self.stale_after_s = stale_after_s

    def entry_dir(self, key: EngineKey) -> Path:
        return self.root / key.dirname()

    def artifact_path(self, key: EngineKey) -> Path:
        return self.entry_dir(key) / ARTIFACT[key.backend]

    def get_or_build(self, key: EngineKey, build: Callable[[Path], None], *, rebuild: bool = True) -> Path:
        """Path of a valid artifact for ``key``, calling ``build(tmp_path)`` if there is none.

        ``build`` writes the artifact to the path it is given (a temporary name in the
        entry's folder) and returns. With ``rebuild=False`` a missing or invalid entry
        raises ``EngineError`` saying why, and nothing is built.
        """
        path = self.artifact_path(key)
        if self.problem(key) is None:  # fast path: no lock for an entry that is fine
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            problem = self.problem(key)  # another process may have built it meanwhile
            if problem is None:
                return path
            self._remove_leftovers(key)
            if self.remote is not None:
                self._from_bucket(key, self.remote / key.dirname(), build, rebuild)
                return path
            if not rebuild:
                raise EngineError(f"engine store entry {key.dirname()}: {problem}", kind="engine_missing")
            self._build(key, build)
        return path

    def list(self) -> builtins.list[EntryInfo]:
        """Every entry in the store (in the bucket, for a store in one), sorted by pack,
        stage and folder name."""
        rows: builtins.list[EntryInfo] = []
        top: Location = self.remote or self.root
        files = storage.list_files(top, recursive=True)  # one listing, with sizes
        # <pack>/<stage>/<entry>/meta.json under the top
        sidecars = [f for f in files if f.name == SIDECAR and _depth(f, top) == 4]
        for sidecar in sorted(sidecars, key=str):
            try:
                meta = json.loads(storage.read_bytes(sidecar))
                key = EngineKey.from_json(meta["key"])
                size = int(meta.get("size", -1))
            except (OSError, ValueError, KeyError, TypeError, EngineError, InputError):
                continue  # half-written or foreign: not an entry
            artifact = sidecar.parent / ARTIFACT[key.backend]
            ok = files.get(artifact) == size
            rows.append(
                EntryInfo(
                    pack=key.pack,
                    stage=key.stage,
                    precision=key.precision,
                    backend=key.backend,
                    backend_version=key.backend_version,
                    arch=key.arch,
                    profile="" if key.profile is None else key.profile.label(),
                    size=size,
                    built_at=str(meta.get("built_at", "")),
                    path=artifact,
                    ok=ok,
                )
            )
        return rows

    # -- internals ---------------------------------------------------------------------

    def problem(self, key: EngineKey) -> str | None:
        """None if the entry for ``key`` can be used, else what is wrong with it."""
        entry = self.entry_dir(key)
        artifact, sidecar = self.artifact_path(key), entry / SIDECAR
        if not artifact.is_file():
            return "not built yet"
        try:
            meta = json.loads(sidecar.read_text())
        except FileNotFoundError:
            return f"{SIDECAR} is missing"
        except (OSError, ValueError) as e:
            return f"{SIDECAR} is unreadable ({e})"
        try:
            recorded = EngineKey.from_json(meta["key"])
        except (KeyError, TypeError, ValueError) as e:
            return f"{SIDECAR} has no valid key ({e})"
        if recorded != key:
            diff = {k: v for k, v in recorded.to_json().items() if key.to_json().get(k) != v}
            return f"built for another key ({', '.join(f'{k}={v}' for k, v in sorted(diff.items()))})"
        size = artifact.stat().st_size
        if size != meta.get("size"):
            return f"{artifact.name} is {size} bytes, {meta.get('size')} recorded (truncated or replaced)"
        if _sha256(artifact) != meta.get("sha256"):
            return f"{artifact.name} does not match its recorded sha256 (corrupted or replaced)"
        return None

    def _remove_leftovers(self, key: EngineKey) -> None:
        """Remove what builds (and downloads) of ``key`` killed midway left in its entry: the
        temporary artifact and sidecar, an export's or a quantization's working folder (the
        fp32 graph's copy: gigabytes for MuseTalk). Called under the entry's lock, which
        every builder holds, so none of them is being written."""
        for left in self.entry_dir(key).iterdir():
            if not left.name.startswith(".") or left.name == ".lock":  # (the artifact, its sidecar, the lock)
                continue
            if left.is_dir() and not left.is_symlink():  # .export-*, .quantize-*
                shutil.rmtree(left, ignore_errors=True)
            elif left.name.endswith(".tmp"):
                left.unlink(missing_ok=True)

    def _build(self, key: EngineKey, build: Callable[[Path], None]) -> None:
        entry = self.entry_dir(key)
        artifact, sidecar = self.artifact_path(key), entry / SIDECAR
        token = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp = entry / f".{artifact.name}.{token}.tmp"
        tmp_meta = entry / f".{SIDECAR}.{token}.tmp"
        try:
            t0 = time.perf_counter()
            build(tmp)
            seconds = time.perf_counter() - t0
            if not tmp.is_file():
                raise EngineError(f"engine store entry {key.dirname()}: the build wrote no file", kind="engine_build")
            meta = {
                "key": key.to_json(),
                "digest": key.digest(),
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": socket.gethostname(),
                "build_seconds": round(seconds, 3),
                "size": tmp.stat().st_size,
                "sha256": _sha256(tmp),
                "tools": _tool_versions(),
            }
            tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            # The sidecar goes in last: until then a reader sees a mismatch and waits on the lock.
            sidecar.unlink(missing_ok=True)
            os.replace(tmp, artifact)
            os.replace(tmp_meta, sidecar)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)

    def _from_bucket(self, key: EngineKey, remote: Uri, build: Callable[[Path], None], rebuild: bool) -> None:
        """Make the mirror's entry usable: download the bucket's, or build it here and
        upload it, once for all machines (see the module docstring): the builder holds the
        entry's lock in the bucket; the others wait for its upload, up to the lock timeout."""
        lock = remote / BUCKET_LOCK
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            problem = self._pull(key, remote)
            if problem is None:
                return
            if not rebuild:
                raise EngineError(f"engine store entry {key.dirname()}: {problem}", kind="engine_missing")
            got = locks.acquire(lock, f"a build of {key.dirname()}", stale_after_s=self.stale_after_s)
            if isinstance(got, locks.Lease):
                with got:
                    if self._pull(key, remote) is None:  # the last holder finished just now
                        return
                    self._build(key, build)
                    if got.lost is None:
                        self._push(key, remote)
                    else:  # the successor uploads its own build: two uploads could pair one's sidecar with the other's artifact
                        log.warning("engine store entry %s was built here but not uploaded: %s", key.dirname(), got.lost)
                return
            if time.monotonic() > deadline:
                raise EngineError(
                    f"engine store entry {key.dirname()}: still being built after {self.lock_timeout_s:.0f} s of "
                    f"waiting, by {got.describe()} (lock {lock}); run again later, or build it ahead of time with "
                    "'heygem-ray engines build'",
                    kind="engine_locked",
                )
            time.sleep(_LOCK_POLL_S)

    def _pull(self, key: EngineKey, remote: Uri) -> str | None:
        """Download the bucket's entry for ``key`` into the mirror; None if it is now usable
        here, else what is wrong with it."""
        artifact, sidecar = self.artifact_path(key), self.entry_dir(key) / SIDECAR
        if not storage.is_file(remote / SIDECAR):
            return f"not built yet (in {self.remote} either)"
        sidecar.unlink(missing_ok=True)  # as in _build: the sidecar goes in last
        try:
            storage.download(remote / ARTIFACT[key.backend], artifact)
            storage.download(remote / SIDECAR, sidecar)
        except InputError as exc:
            if exc.kind != "missing_file":  # the bucket cannot be read: say so, rather than build
                raise
            return f"incomplete in {remote} ({exc.message})"
        problem = self.problem(key)
        return None if problem is None else f"{problem} (as downloaded from {remote})"

    def _push(self, key: EngineKey, remote: Uri) -> None:
        """Upload a freshly built entry: the artifact, then the sidecar that vouches for it.
        A failure leaves the entry usable on this machine, so it is only logged."""
        try:
            storage.upload(self.artifact_path(key), remote / ARTIFACT[key.backend])
            storage.upload(self.entry_dir(key) / SIDECAR, remote / SIDECAR)
        except InputError as exc:
            log.warning("engine store entry %s was built here but not uploaded: %s", key.dirname(), exc.message)

    @contextlib.contextmanager
    def _lock(self, key: EngineKey) -> Iterator[None]:
        lock_path = self.entry_dir(key) / ".lock"
        with open(lock_path, "a+") as f:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        f.seek(0)
                        holder = f.read().strip() or "unknown"
                        raise EngineError(
                            f"engine store entry {key.dirname()}: still being built after {self.lock_timeout_s:.0f} s "
                            f"of waiting, by {holder} (the lock {lock_path} is let go when its process ends, so it "
                            "is alive); run again once it is built, or build it ahead of time with 'heygem-ray engines "
                            "build'",
                            kind="engine_locked",
                        ) from None
                    time.sleep(_LOCK_POLL_S)
            try:
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                f.flush()
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _depth(loc: Location, top: Location) -> int:
    """How many names ``loc`` has below ``top``."""
    if isinstance(loc, Path) and isinstance(top, Path):
        return len(loc.relative_to(top).parts)
    return len(str(loc)[len(str(top)) :].strip("/").split("/"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tool_versions() -> dict[str, str]:
    """Installed versions of the tools that shape artifacts, read without importing them."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _TOOLS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions
