"""Where files live: local paths, or objects in a bucket (``s3://``, ``gs://``).

A *location* is a ``Path`` or a ``Uri``. Both have the few naming operations the rest of
the package uses (``/``, ``name``, ``stem``, ``suffix``, ``parent``, ``with_name``,
``resolve()``, ``is_relative_to``), so code that only builds names works on either;
reading, writing and listing go through the functions below.

Buckets are reached through ``pyarrow.fs``, and on S3 through boto3 as well where one
request must decide (an input's download: one GET of the version looked up; a lock's
conditional writes). Both take credentials and the endpoint from each process's
environment, as the AWS and Google tools do: ``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, an
instance role; ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for an S3-compatible
server (MinIO, Ceph, moto); ``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server
for GCS. On a cluster every node reads its own. Credentials written inside a URI
(``s3://KEY:SECRET@bucket/…``, ``?secret_key=…``), which pyarrow would accept, are refused
wherever a URI is read: the URI would be copied into the results table, logs, messages
and reports.

Writes are whole or nothing:

* a local file is written under a temporary name beside it, flushed to its disk, then
  renamed, and the rename flushed too (``_durable``): once a write returns, a crash of
  the machine (power lost, a kernel panic) leaves the file whole under its name, where
  without the flushes a finished MP4 or a kept row could come back empty (a cache's
  entries, which a crash may lose at no cost, are not flushed);
* an object is written under a temporary key (``<folder>/.heygem-tmp/<name>.<token>.tmp``),
  then copied to its key by the server (S3 ``CopyObject``: the object appears complete or
  not at all), and the temporary key is deleted, also when the write failed. Writing
  straight to the key would not do: pyarrow has no way to abort an upload, and closing
  a stream whose writer failed half-way still completes it as a partial object. (S3's
  single copy takes objects up to 5 GB: far above a talking-head MP4.)
"""

from __future__ import annotations

import contextlib
import ctypes
import email.utils
import errno
import fcntl
import functools
import hashlib
import io
import os
import posixpath
import re
import socket
import stat as stat_module
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeAlias, TypeVar, cast

import pyarrow.fs as pafs

from heygem_ray import progress, spelling
from heygem_ray.errors import InputError, first_line, folder_removed, storage_error, storage_errors, storage_fix

_URI = re.compile(r"^(s3|gs|gcs)://(.*)$", re.IGNORECASE)  # (a scheme is any case: RFC 3986)
# A URI that went through pathlib (an argparse or typer option of type Path) has lost a
# slash: Path("s3://b/k") is "s3:/b/k". No one means a local folder named "s3:".
_FOLDED = re.compile(r"^(s3|gs|gcs):/([^/].*)$", re.IGNORECASE)
# Credentials as a URI can carry them: user information before the bucket (bucket names
# hold neither ":" nor "@"), or pyarrow's query options.
_QUERY_SECRET = re.compile(r"\?.*\b(access_key|secret_key|session_token|credentials)\b", re.IGNORECASE)
_CREDENTIAL_CHAIN = (
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE and ~/.aws, or the instance's role) for s3://; "
    "GOOGLE_APPLICATION_CREDENTIALS (or the metadata server) for gs://"
)
TMP_DIR = ".heygem-tmp"  # temporary keys of writes in progress, beside their targets
_BLOCK = 8 << 20  # bytes per read/write while copying a stream
# Environment variables that choose an object store's endpoint and credentials: a
# filesystem is made once per bucket for each set of their values.
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "STORAGE_EMULATOR_HOST", "CLOUD_STORAGE_EMULATOR_ENDPOINT")


@dataclass(frozen=True)
class Uri:
    """An object (or a folder of objects) in a bucket: ``s3://bucket/key``."""

    scheme: str  # "s3", "gs" or "gcs"
    key: str  # "bucket/folder/name": the bucket first, no leading or trailing "/"

    @classmethod
    def parse(cls, text: str) -> Uri:
        """``s3://bucket/a/../b`` → ``Uri("s3", "bucket/b")``; an ``InputError`` (kind
        ``credentials_in_uri``, the secret left out) for one that holds credentials;
        ValueError for anything else."""
        m = _URI.match(text) or _FOLDED.match(text)
        if m is None:
            raise ValueError(f"{text!r} is not a bucket URI (s3://BUCKET/KEY or gs://BUCKET/KEY)")
        _refuse_credentials(m.group(1), m.group(2))
        bucket, _, rest = m.group(2).partition("/")
        rest = posixpath.normpath(rest) if rest.strip("/") else ""
        if not bucket or bucket in (".", "..") or rest == ".." or rest.startswith("../"):
            raise ValueError(f"{text!r} names no object inside a bucket")
        rest = "" if rest == "." else rest.strip("/")
        return cls(m.group(1).lower(), f"{bucket}/{rest}" if rest else bucket)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"Uri({str(self)!r})"

    def __truediv__(self, part: str) -> Uri:
        if _URI.match(part):
            return Uri.parse(part)
        if part.startswith("/"):
            raise ValueError(f"{part!r} is an absolute local path, not a key inside {self}")
        return Uri.parse(f"{self}/{part}")

    @property
    def bucket(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return posixpath.basename(self.key) if "/" in self.key else ""

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem if self.name else ""

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix if self.name else ""

    @property
    def parent(self) -> Uri:
        return Uri(self.scheme, posixpath.dirname(self.key)) if "/" in self.key else self

    def with_name(self, name: str) -> Uri:
        return self.parent / name

    def resolve(self) -> Uri:
        """Itself: a URI is absolute (for code written for ``Path``)."""
        return self

    def is_relative_to(self, other: Location) -> bool:
        return isinstance(other, Uri) and other.scheme == self.scheme and (
            self.key == other.key or self.key.startswith(other.key + "/")
        )


def redact(text: str) -> str:
    """``text`` as messages may show it: a bucket URI that holds credentials with them
    replaced by ``***``; anything else as it is."""
    m = _URI.match(text) or _FOLDED.match(text)
    shown = _without_credentials(m.group(1), m.group(2)) if m else None
    return text if shown is None else shown


def _without_credentials(scheme: str, rest: str) -> str | None:
    """The URI ``<scheme>://<rest>`` with its credentials hidden; None when it holds none."""
    authority = rest.partition("/")[0]
    if "@" in authority or ":" in authority:
        # A secret may hold "/" (AWS's do): hide all up to the last "@", or all of it.
        return f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else f"{scheme}://***"
    if _QUERY_SECRET.search(rest):
        return f"{scheme}://{rest.partition('?')[0]}?***"
    return None


def _refuse_credentials(scheme: str, rest: str) -> None:
    """Raise for a URI ``<scheme>://<rest>`` that holds credentials, showing it without them."""
    shown = _without_credentials(scheme, rest)
    if shown is None:
        return
    raise InputError(
        f"{shown}: credentials inside a URI are refused (they would be copied into results.parquet, logs "
        f"and reports); remove them and give them the usual way: {_CREDENTIAL_CHAIN}",
        kind="credentials_in_uri",
    )


Location: TypeAlias = "Path | Uri"
_L = TypeVar("_L", Path, Uri)  # a destination, and the folder its leftovers are in


def is_uri(value: object) -> bool:
    """Whether ``value`` names an object in a bucket (a ``Uri``, or text like ``s3://…``)."""
    if isinstance(value, Uri):
        return True
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return isinstance(text, str) and bool(_URI.match(text) or _FOLDED.match(text))
    return False


def location(value: str | os.PathLike[str] | Uri) -> Location:
    """A ``Uri`` for ``s3://`` / ``gs://`` text (also after ``Path`` folded its ``//``), else a ``Path``
    with a leading ``~`` expanded (a shell leaves ``--option=~/x`` and a job's entrypoint text as
    written). Raises as ``Uri.parse`` does (credentials inside the URI, a URI that names no object)."""
    if isinstance(value, Uri):
        return value
    if is_uri(value):
        return Uri.parse(os.fspath(value))
    return from_home(Path(value))


def from_home(path: Path) -> Path:
    """``path`` with a leading ``~`` or ``~/`` as the home folder (``$HOME``, else this
    user's); any other name, ``~lesson.wav`` among them, as it is, and ``~/…`` too where
    no home folder is known (a container's user without one)."""
    if path.parts[:1] != ("~",):
        return path
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def is_inside(loc: Location, folder: Location) -> bool:
    """Whether ``loc`` is ``folder`` or below it (by name: nothing is resolved)."""
    if isinstance(loc, Path):
        return isinstance(folder, Path) and loc.is_relative_to(folder)
    return loc.is_relative_to(folder)


def resolved(loc: Location) -> Location:
    """``loc`` made absolute, a local path with its symbolic links followed
    (``Path.resolve``), where a loop of links is the ``OSError`` ELOOP (``storage_error``
    says what to do) on every Python (3.11 and 3.12 raise a ``RuntimeError``)."""
    try:
        return loc.resolve()
    except RuntimeError as exc:  # "Symlink loop from '…'"
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(loc)) from exc


# -- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    size: int  # bytes
    mtime_ns: int


def stat(loc: Location) -> Stat | None:
    """Size and modification time of the file at ``loc``; None when no file is there."""
    if isinstance(loc, Path):
        if not loc.is_file():
            return None
        st = loc.stat()
        return Stat(st.st_size, st.st_mtime_ns)
    fs = _filesystem(loc)
    try:
        info = fs.get_file_info(loc.key)
    except OSError as exc:
        raise _error("could not look up", loc, exc) from exc
    if info.type != pafs.FileType.File:
        return None
    return Stat(int(info.size or 0), int(info.mtime_ns or 0))


def is_file(loc: Location) -> bool:
    return stat(loc) is not None


def file_stamp(path: Path) -> list[int]:
    """What changes when the local file ``path`` is written or replaced: its device, inode,
    size, and modification and change times (any write sets the change time, which no tool
    sets back: a copy that keeps the old modification time is seen too)."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def is_dir(loc: Location) -> bool:
    """A local folder, or a prefix with objects under it."""
    if isinstance(loc, Path):
        return loc.is_dir()
    try:
        return _filesystem(loc).get_file_info(loc.key).type == pafs.FileType.Directory
    except OSError as exc:
        raise _error("could not look up", loc, exc) from exc


def readable_size(n: float) -> str:
    """``n`` bytes as people read them: ``2.4 GiB``, ``310 MiB``, ``12 KiB``."""
    unit, scale = next(((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20)) if n >= s), ("KiB", 2**10))
    value = n / scale
    return f"{value:.3g} {unit}" if value < 999.5 else f"{value:.0f} {unit}"  # (1000 MiB, not 1e+03 MiB)


def read_bytes(loc: Location) -> bytes:
    if isinstance(loc, Path):
        return loc.read_bytes()
    try:
        with _filesystem(loc).open_input_stream(loc.key) as f:
            return bytes(f.read())
    except OSError as exc:
        raise _error("could not read", loc, exc) from exc


def open_input(loc: Location) -> BinaryIO:
    """A file to read and seek in: a local file, or an object read in ranges as it is read."""
    if isinstance(loc, Path):
        return loc.open("rb")
    try:
        return cast(BinaryIO, _filesystem(loc).open_input_file(loc.key))
    except OSError as exc:
        raise _error("could not read", loc, exc) from exc


def list_files(folder: Location, *, recursive: bool = False) -> dict[Location, int]:
    """Every file in ``folder`` (and below it, if ``recursive``) with its size in bytes;
    empty when the folder does not exist. One listing request per 1000 objects."""
    return {loc: st.size for loc, st in list_stats(folder, recursive=recursive).items()}


def list_stats(folder: Location, *, recursive: bool = False) -> dict[Location, Stat]:
    """``list_files`` with each file's modification time as well."""
    if isinstance(folder, Path):
        if not folder.is_dir():
            return {}
        found = folder.rglob("*") if recursive else folder.iterdir()
        files: dict[Location, Stat] = {}
        for path in found:
            try:
                st = path.stat()
            except FileNotFoundError:  # removed as the folder was listed (a build's temporary)
                continue
            if stat_module.S_ISREG(st.st_mode):
                files[path] = Stat(st.st_size, st.st_mtime_ns)
        return files
    selector = pafs.FileSelector(folder.key, allow_not_found=True, recursive=recursive)
    try:
        infos = _filesystem(folder).get_file_info(selector)
    except OSError as exc:
        raise _error("could not list", folder, exc) from exc
    return {
        Uri(folder.scheme, i.path): Stat(int(i.size or 0), int(i.mtime_ns or 0))
        for i in infos
        if i.type == pafs.FileType.File
    }


def download(src: Uri, dest: Path, version: str | None = None) -> None:
    """Copy the object ``src`` to the local file ``dest``: written under a temporary name,
    then renamed. With ``version`` (from ``head``), only that version, whole: ``Changed``
    where the object is another one now, is gone, or its bytes came short (a connection cut
    mid-way). Without, pyarrow's ranged reads, each tried again where it fails (an engine
    store's artifacts, which their sidecar's size and sha256 check)."""
    makedirs(dest.parent)
    tmp = dest.with_name(f".{dest.name}.{_token()}.tmp")
    try:
        with open(tmp, "wb") as out:
            if src.scheme == "s3" and version is not None:
                _get_s3(src, out, version)
            else:
                _get_pyarrow(src, out, version)
        os.replace(tmp, dest)
    except FileNotFoundError as exc:
        if version is not None:  # (looked up a moment ago: the caller looks again, and says so)
            raise Changed("it was deleted as it was read") from exc
        raise InputError(f"{src} does not exist; check the URI", kind="missing_file") from exc
    except OSError as exc:  # this machine's disk (errors with an errno), else the bucket
        raise (storage_error(exc, dest.parent) or _error("could not download", src, exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)


class Changed(Exception):
    """An object's download did not get the version asked for, whole (``download``)."""


def _get_s3(src: Uri, out: BinaryIO, version: str) -> None:
    """One GET of the whole object (through boto3: one response is one version of it,
    where pyarrow reads a stream in ranges of the size a HEAD gave, each of which may come
    from another version, and pads a short one with zeros), its bytes counted."""
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError

    bucket, _, key = src.key.partition("/")
    # (a weak ETag, W/"…", which some S3-compatible stores give, is matched by no If-Match)
    condition = {} if version.startswith("W/") else {"IfMatch": version}
    try:
        got = _s3().get_object(Bucket=bucket, Key=key, **condition)
    except ClientError as exc:
        if _code(exc) in ("NoSuchKey", "404"):
            raise Changed("it was deleted as it was read") from exc
        if _code(exc) in ("PreconditionFailed", "412"):
            raise Changed("it was written again as it was read") from exc
        raise _error("could not download", src, exc) from exc
    except BotoCoreError as exc:  # no credentials, no endpoint: nothing came
        raise _error("could not download", src, exc) from exc
    if got.get("ETag") != version:
        raise Changed("it was written again as it was read")
    size, moved = int(got["ContentLength"]), 0
    try:
        for block in got["Body"].iter_chunks(_BLOCK):
            out.write(block)
            moved += len(block)
            progress.moved()
    except (BotoCoreError, HTTPError) as exc:  # a body cut short (botocore counts it), a TLS error in it
        raise Changed(f"its bytes stopped coming after {moved} of {size} ({first_line(exc)})") from exc
    if moved != size:
        raise Changed(f"{moved} of its {size} bytes came")


def _get_pyarrow(src: Uri, out: BinaryIO, version: str | None) -> None:
    """The object read to its end as one stream; with ``version`` (its size and
    modification time), checked against the object's as the stream ends."""
    fs = _filesystem(src)
    with fs.open_input_stream(src.key) as f:
        _copy(f, out)
    if version is not None:
        info = fs.get_file_info(src.key)
        if info.type != pafs.FileType.File or _version(Stat(int(info.size or 0), int(info.mtime_ns or 0))) != version:
            raise Changed("it was written again as it was read")
        if out.tell() != info.size:
            raise Changed(f"{out.tell()} of its {info.size} bytes came")


def _copy(reader: Any, writer: Any) -> None:
    """Copy ``reader`` to its end into ``writer``, a block at a time (each a move: ``progress``)."""
    while block := reader.read(_BLOCK):
        writer.write(block)
        progress.moved()


def head(src: Uri) -> tuple[int, str] | None:
    """An object's size, and the version it is (S3's ETag, else its size and modification
    time); None when no object is there."""
    if src.scheme != "s3":
        found = stat(src)
        return None if found is None else (found.size, _version(found))
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = src.key.partition("/")
    try:
        got = _s3().head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise _error("could not look up", src, exc) from exc
    except BotoCoreError as exc:
        raise _error("could not look up", src, exc) from exc
    return int(got["ContentLength"]), str(got["ETag"])


def _bucket_exists(loc: Uri) -> bool:
    """Whether ``loc``'s bucket is there (True where this cannot tell: a gs:// bucket, or
    credentials that may not ask)."""
    if loc.scheme != "s3":
        return True
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _s3().head_bucket(Bucket=loc.bucket)
    except ClientError as exc:
        return _code(exc) not in ("NoSuchBucket", "404", "NotFound")
    except BotoCoreError:
        return True
    return True


def _what_is_there(src: Uri) -> str:
    """The objects beside the missing ``src`` it may be a slip for (``spelling.beside``); ""
    where none is found. One listing of up to 1000 keys (S3 only)."""
    if src.scheme != "s3":
        return ""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = src.key.partition("/")
    folder = posixpath.dirname(key)
    try:
        listed = _s3().list_objects_v2(Bucket=bucket, Prefix=f"{folder}/" if folder else "", Delimiter="/")
    except (BotoCoreError, ClientError):
        return ""
    return spelling.beside(src.name, (posixpath.basename(o["Key"]) for o in listed.get("Contents", [])))


def _version(found: Stat) -> str:
    return f"{found.size}:{found.mtime_ns}"


# Downloads of one input that found it written again (or cut short) before one came whole.
FETCH_TRIES = 3


def fetch(src: Location, what: str, cache: Path) -> Path:
    """A local file with the bytes of ``src``: ``src`` itself when it is local, else a copy
    downloaded into ``cache`` (a folder on this machine).

    Copies are named by the URI and version of the object (``head``), so one used by many
    jobs is downloaded once per machine, and one that changed is downloaded again. Only a
    whole copy of the version looked up is kept (``download``): an object written again
    while it was read is read again, up to ``FETCH_TRIES`` times. A file lock makes
    concurrent jobs on one machine wait for a single download.
    """
    if isinstance(src, Path):
        return src
    why = ""
    for _ in range(FETCH_TRIES):
        found = head(src)
        if found is None:
            if is_dir(src):
                said = f"is a folder, not an object; give the URI of the {what} file itself"
            elif not _bucket_exists(src):
                said = f"does not exist: there is no bucket {src.bucket!r} at this endpoint; check the URI"
            else:
                said = (f"does not exist{_what_is_there(src)}; check the URI (and that these credentials may list "
                        "the bucket)")  # fmt: skip
            raise InputError(f"{what} {src} {said}", kind="missing_file")
        size, version = found
        digest = hashlib.sha256(f"{src}\0{size}\0{version}".encode()).hexdigest()[:32]
        dest = cache / digest[:2] / f"{digest}{src.suffix}"
        if dest.is_file() and dest.stat().st_size == size:
            return dest
        makedirs(dest.parent)
        with file_lock(dest.with_name(f".{dest.name}.lock")):
            if dest.is_file() and dest.stat().st_size == size:
                return dest
            try:
                download(src, dest, version)
                return dest
            except Changed as exc:
                why = str(exc)
    raise InputError(
        f"{what} {src} did not download whole in {FETCH_TRIES} tries (the last time, {why}): something is writing it "
        "now, or the connection to the store breaks; run the same manifest again once it is written",
        kind="storage",
    )


# -- writing ----------------------------------------------------------------------------


def makedirs(loc: Location) -> None:
    """Create a local folder and its parents; nothing for a bucket (keys need no folders)."""
    if isinstance(loc, Path):
        with storage_errors(loc):
            loc.mkdir(parents=True, exist_ok=True)


def write_bytes(dest: Location, data: bytes | memoryview, *, durable: bool = True) -> None:
    """Write ``data`` to ``dest`` whole or not at all (see the module docstring). Not
    ``durable``: a local file is renamed without flushing it first (a cache entry, which a
    crash may lose at no cost, written for thousands of files in a night)."""
    if isinstance(dest, Uri):
        upload(io.BytesIO(data), dest)
        return
    makedirs(dest.parent)
    tmp = dest.with_name(f".{dest.name}.{_token()}.tmp")
    try:
        with storage_errors(dest.parent):
            tmp.write_bytes(data)
            if durable:
                _durable(tmp, dest)
            else:
                os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):  # (a read-only file system refuses this too: its error is said above)
            tmp.unlink(missing_ok=True)


def _durable(tmp: Path, dest: Path) -> None:
    """Rename the local file ``tmp`` to ``dest``, its data flushed to the disk first and the
    rename after (``fsync`` of the file, then of ``dest``'s folder), so that a crash of the
    machine cannot leave ``dest`` empty or short. A file system that cannot flush (some
    network and FUSE ones say EINVAL) is left as it is; the folder's flush is the rename's,
    after it is done: its failure (a folder this user may not read) is no failed write."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # (a network file system may report a failed write only here)
    except OSError as exc:
        if exc.errno not in _NO_FLUSH:
            raise
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    with contextlib.suppress(OSError):
        fd = os.open(dest.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# What fsync says on a file system that cannot flush a file.
_NO_FLUSH = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)


def allocate(path: Path) -> None:
    """Give the local file at ``path`` all its blocks now (a memory map is about to fill
    it): a full disk is then an ``OSError`` here, where a page written through the map
    would get SIGBUS, which kills the process. A file system that cannot allocate ahead,
    or a system without ``posix_fallocate`` (macOS), leaves it as it is."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise


def hold_space(fd: int, length: int) -> bool:
    """Allocate the first ``length`` bytes of the open local file ``fd`` (its size grows to
    that where it was less) with the file system's own ``fallocate``: True, or False where
    the file system has none. glibc's ``posix_fallocate`` would then write a byte into
    every block instead (over NFS, one write per 4 KiB of gigabytes). A C library without
    ``fallocate`` (macOS's) holds nothing: False. A full disk is an ``OSError`` (ENOSPC)."""
    fallocate = _libc_fallocate()
    if fallocate is None:
        return False
    if fallocate(fd, 0, 0, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code))


@functools.cache
def _libc_fallocate() -> Any:
    """The C library's ``fallocate`` (Linux's), or None where it has none."""
    fallocate = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
    if fallocate is None:
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


def check_writable(folder: Location) -> bool:
    """Write a small file into ``folder`` (a local folder, made if missing, or a bucket
    prefix) and delete it, so that a folder the run cannot write stops it at once, with a
    ``storage`` error naming it as the output folder and saying what to do, rather than
    after its workers started. Folders it had to make are removed again. Returns
    whether the folder's file system takes names that differ only in case as one file
    (macOS's and Windows' by default; never a bucket's): the file is found under its name
    in upper case."""
    probe = folder / f"{_PROBE_PREFIX}{_token()}"
    try:
        made = [] if isinstance(folder, Uri) else [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            # bytes, not an empty file: a full disk refuses them
            write_bytes(probe, b"heygem-ray write probe\n", durable=False)
            folds = isinstance(probe, Path) and probe.with_name(probe.name.upper()).exists()
            remove(probe)
        finally:
            for p in made:  # the deepest first
                with contextlib.suppress(OSError):
                    p.rmdir()
    except (OSError, InputError) as exc:
        refused = exc if isinstance(exc, OSError) else exc.__cause__
        if isinstance(folder, Uri) or not isinstance(refused, OSError):  # a bucket's refusal: said in its own words
            raise
        said = os.strerror(refused.errno) if refused.errno else first_line(refused)
        fix = storage_fix(refused.errno or 0) or "choose another folder"
        raise InputError(f"cannot write into the output folder {folder}: {said.lower()}; {fix}", kind="storage") from exc
    return folds


def upload(source: Path | BinaryIO, dest: Uri) -> None:
    """Write the bytes of ``source`` (a local file, or a binary stream read to its end) to
    the object ``dest``: the object appears complete, or is left as it was."""
    fs = _filesystem(dest)
    tmp = f"{dest.parent.key}/{TMP_DIR}/{dest.name}.{_token()}.tmp"
    moved = False
    try:
        with contextlib.ExitStack() as stack:
            reader = stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
            with fs.open_output_stream(tmp) as out:
                _copy(reader, out)
        fs.move(tmp, dest.key)  # a server-side copy, then the temporary key's deletion
        moved = True
    except OSError as exc:
        raise _error("could not write", dest, exc, "nothing was left under that name") from exc
    finally:
        if not moved:
            with contextlib.suppress(OSError):
                fs.delete_file(tmp)


# -- conditional writes: S3 ----------------------------------------------------------------
# One request each, decided by the server: what two machines need to agree on who holds a
# lock (locks.py). S3 and stores that speak its API (MinIO, Ceph, moto) take If-None-Match
# and If-Match on PutObject and If-Match on DeleteObject; pyarrow sends neither, so these go
# through boto3. Other stores (gs://) have none of them here: ``conditional`` says so.

# Codes of a request whose condition did not hold: 412 (the object is another version, or
# is there), 409 (a concurrent write to it won), 404 (none is there to match).
_CONDITION_FAILED = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409"})


@dataclass(frozen=True)
class Versioned:
    """An object's bytes, the version they are (its ETag), and how long ago it was last
    written by the store's own clock (its Last-Modified against the response's Date), so
    that machines whose clocks disagree still agree on its age (to a second)."""

    data: bytes
    etag: str
    age_s: float


def conditional(loc: Location) -> bool:
    """Whether writes to ``loc`` can be conditional here: objects in S3 (or an S3 API)."""
    return isinstance(loc, Uri) and loc.scheme == "s3"


def read_versioned(src: Uri) -> Versioned | None:
    """The object ``src`` with its version and age (one GET); None when there is none."""
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError

    bucket, _, key = src.key.partition("/")
    try:
        got = _s3().get_object(Bucket=bucket, Key=key)
        data = got["Body"].read()
    except ClientError as exc:
        if _code(exc) in ("NoSuchKey", "404"):
            return None
        raise _error("could not read", src, exc) from exc
    except (BotoCoreError, HTTPError) as exc:  # (HTTPError: urllib3's, a TLS error in the body)
        raise _error("could not read", src, exc) from exc
    now = email.utils.parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"])
    return Versioned(data, got["ETag"], max(0.0, (now - got["LastModified"]).total_seconds()))


def put_if(dest: Uri, data: bytes, etag: str | None) -> str | None:
    """Write ``data`` to ``dest`` only if the object there is still version ``etag`` (None:
    only if there is none), in one request. Returns the new version; None when the
    condition did not hold and nothing was written."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = dest.key.partition("/")
    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    try:
        return str(_s3().put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"])
    except ClientError as exc:
        if _code(exc) in _CONDITION_FAILED:
            return None
        raise _error("could not write", dest, exc) from exc
    except BotoCoreError as exc:
        raise _error("could not write", dest, exc) from exc


def remove_if(dest: Uri, etag: str) -> bool:
    """Delete ``dest`` only if it is still version ``etag``, in one request: whether it was."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = dest.key.partition("/")
    try:
        _s3().delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    except ClientError as exc:
        if _code(exc) in _CONDITION_FAILED:
            return False
        raise _error("could not delete", dest, exc) from exc
    except BotoCoreError as exc:
        raise _error("could not delete", dest, exc) from exc
    return True


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


_S3_MADE = threading.Lock()


def _s3() -> Any:
    """A boto3 S3 client for this process's environment (see the module docstring), made
    once per set of its values. Short timeouts, as pyarrow's (``S3_IDLE_S``): a lock's
    heartbeat must not hang for minutes on one request (botocore's default is a minute per
    try), nor an input's download on a store that stopped answering."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    with _S3_MADE:  # boto3's default session is not safe to make clients from in parallel
        return _s3_for(env)


@functools.lru_cache(maxsize=8)
def _s3_for(env: tuple[tuple[str, str], ...]) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=S3_CONNECT_S, read_timeout=S3_IDLE_S,
                    retries={"total_max_attempts": S3_TRIES, "mode": "standard"})  # (the same limits as pyarrow's)
    return boto3.session.Session().client("s3", config=config)


def staging_file(dest: Location, scratch: Path, suffix: str) -> Path:
    """A local file to write before ``publish`` puts it at ``dest``, named
    ``.<dest's stem>.<owner>.<token><suffix>`` (``owner`` a hash of ``dest``'s name, ``token``
    random): beside a local ``dest`` (its folder made; one file system, so publishing is a
    rename), else in ``scratch``. ``staged_leftovers`` finds these names of one ``dest``."""
    name = f".{dest.stem}.{_owner(dest)}.{_token()}{suffix}"
    if isinstance(dest, Path):
        makedirs(dest.parent)
        return dest.with_name(name)
    return scratch / name


def staged_leftovers(dests: Iterable[Path], suffix: str) -> list[Path]:
    """The staging files (``staging_file``) of the local ``dests`` still beside them, as a
    killed writer leaves them, and no other file's; each folder is listed once. Matched
    whole: job ids may hold dots, and a pattern like ``.lesson1.*`` would take the files of
    ``lesson1.v2`` being written."""
    staged = re.compile(r"\.(.*)\.([0-9a-f]{12})\." + _TOKEN + re.escape(suffix))
    found: list[Path] = []
    for folder, group in _by_folder(dests, lambda d: d.parent).items():
        if not folder.is_dir():
            continue
        mine = {(d.stem, _owner(d)) for d in group}
        found.extend(p for p in folder.iterdir() if (m := staged.fullmatch(p.name)) and (m[1], m[2]) in mine)
    return found


def publish(local: Path, dest: Location) -> None:
    """Put the finished local file ``local`` at ``dest``: a rename for a local ``dest`` (on
    the same file system), an upload otherwise; ``local`` is gone afterwards."""
    if isinstance(dest, Path):
        with storage_errors(dest.parent):
            try:
                _durable(local, dest)
            except FileNotFoundError as exc:  # the file staged beside ``dest`` is gone with its folder
                if dest.parent.is_dir():
                    raise
                raise folder_removed(dest.parent, dest.name) from exc
        return
    upload(local, dest)
    local.unlink()


def remove(loc: Location) -> None:
    """Delete the file at ``loc`` if it is there."""
    if isinstance(loc, Path):
        with storage_errors(loc.parent):
            loc.unlink(missing_ok=True)
        return
    try:
        _filesystem(loc).delete_file(loc.key)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _error("could not delete", loc, exc) from exc


def leftovers(dests: Iterable[Uri]) -> list[Uri]:
    """Temporary keys of writes to ``dests`` that were interrupted (a killed process); one
    listing per folder."""
    temporary = re.compile(r"(.*)\." + _TOKEN + re.escape(".tmp"))  # whole: see staged_leftovers
    found: list[Uri] = []
    for folder, group in _by_folder(dests, lambda d: d.parent / TMP_DIR).items():
        names = {d.name for d in group}
        found.extend(u for u in list_files(folder) if isinstance(u, Uri) and (m := temporary.fullmatch(u.name))
                     and m[1] in names)
    return found


def abandoned_writes(folder: Uri) -> list[Uri]:
    """Every temporary key of a write into ``folder`` (``TMP_DIR``): for a folder only one
    process writes (its lock held), what processes killed as they wrote left. One listing."""
    temporary = re.compile(r".+\." + _TOKEN + re.escape(".tmp"))
    return [u for u in list_files(folder / TMP_DIR) if isinstance(u, Uri) and temporary.fullmatch(u.name)]


def abandoned_probes(folder: Uri) -> list[Uri]:
    """What runs killed as they tried ``folder`` (``check_writable``) left there: a probe, or
    the temporary key of one (``upload``). For a folder whose lock this process holds (a
    bucket's is tried under it). On S3, listings of those names alone, not of the folder's
    outputs."""
    temporary = re.compile(_PROBE.pattern + r"\." + _TOKEN + re.escape(".tmp"))
    return [*(u for u in _listed(folder, _PROBE_PREFIX) if _PROBE.fullmatch(u.name)),
            *(u for u in _listed(folder / TMP_DIR, _PROBE_PREFIX) if temporary.fullmatch(u.name))]  # fmt: skip


def _listed(folder: Uri, start: str) -> list[Uri]:
    """The objects in ``folder`` whose names begin with ``start``."""
    if folder.scheme != "s3":
        return [u for u in list_files(folder) if isinstance(u, Uri) and u.name.startswith(start)]
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = folder.key.partition("/")
    try:
        pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/{start}" if key else start,
                                                                Delimiter="/")  # fmt: skip
        return [Uri("s3", f"{bucket}/{o['Key']}") for page in pages for o in page.get("Contents", [])]
    except (BotoCoreError, ClientError) as exc:
        raise _error("could not list", folder, exc) from exc


# -- internals ----------------------------------------------------------------------------

_TOKEN = "[0-9a-f]{8}"  # what _token() returns, as a pattern
_PROBE_PREFIX = ".heygem-probe-"
_PROBE = re.compile(re.escape(_PROBE_PREFIX) + _TOKEN)


def _token() -> str:
    return uuid.uuid4().hex[:8]


def _by_folder(dests: Iterable[_L], folder_of: Callable[[_L], _L]) -> dict[_L, list[_L]]:
    """``dests`` grouped by their folder."""
    groups: dict[_L, list[_L]] = {}
    for dest in dests:
        groups.setdefault(folder_of(dest), []).append(dest)
    return groups


def _owner(dest: Location) -> str:
    """Names a destination's staging files: two outputs in one folder may share a stem
    (``a.mp4``, ``a.mov``), never a name."""
    return hashlib.sha256(dest.name.encode()).hexdigest()[:12]


def _filesystem(uri: Uri) -> pafs.FileSystem:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    return _filesystem_for(uri.scheme, uri.bucket, env)


# Seconds Google's client retries a request that fails (unreachable, no credentials, a
# 503) before it says so: its own default is 15 minutes, in which the run sat in one call,
# deaf to Ctrl-C (an S3 request gives up after 3 attempts, in seconds).
GCS_RETRY_S = 60
# Seconds an S3 request waits for its connection, and then with no byte moving either way,
# before that try is given up; tries of one request in all. The filesystem from_uri makes
# gives up a try after 3 s without a byte but tries about 30 times: against a store that
# stopped answering each call held its caller 99 s, and a write twice that (its clean-up
# waited again). Here a try waits longer for a slow answer (a server-side copy of a large
# MP4 sends nothing until it is done), and a call gives up within about half a minute.
S3_CONNECT_S = 5.0
S3_IDLE_S = 10.0
S3_TRIES = 3


@functools.lru_cache(maxsize=32)
def _filesystem_for(scheme: str, bucket: str, env: tuple[tuple[str, str], ...]) -> pafs.FileSystem:
    # from_uri (unlike the S3FileSystem constructor) reads AWS_ENDPOINT_URL[_S3] and
    # finds the bucket's region. ``env`` is only the cache key.
    options = f"?retry_limit_seconds={GCS_RETRY_S:g}" if scheme in ("gs", "gcs") else ""
    try:
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}{options}")
        if isinstance(fs, pafs.S3FileSystem):  # the same, with the limits above (from_uri takes none)
            found = fs.__reduce__()[1][0]  # (how pickling remakes it: every option from_uri chose)
            fs = pafs.S3FileSystem(**{**found, "connect_timeout": S3_CONNECT_S, "request_timeout": S3_IDLE_S,
                                      "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_TRIES)})
    except (OSError, ValueError) as exc:
        raise _error("could not open", Uri(scheme, bucket), exc) from exc
    return fs


def _error(action: str, loc: Uri, exc: BaseException, after: str = "") -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(
        f"{action} {loc} ({first}){'; ' + after if after else ''}: check the URI, that the bucket exists, "
        "and the credentials (AWS_* / GOOGLE_* variables, or the instance's role) and endpoint "
        "(AWS_ENDPOINT_URL) on this machine",
        kind="storage",
    )


# A process holding a ``file_lock`` touches its file every ``LOCK_BEAT_S`` (from a thread
# of its own); one waiting for it takes a file that has not changed for ``LOCK_QUIET_S``
# (timed on its own clock: a shared disk's clock may differ) as held by a process that is
# not running: paused (Ctrl-Z on a ``preview``), or stuck on a dead mount.
LOCK_BEAT_S = 10.0
LOCK_QUIET_S = 60.0
_LOCK_POLL_S = 0.5


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing) across processes on this
    machine (and others, on a shared disk that keeps ``flock``); yields True. With
    ``wait=False``, one held elsewhere is not waited for: the block runs without it, given
    False.

    A wait counts as the job's progress (``progress.waiting``) while the holder is seen
    running; once its file stops changing, the wait is the job's own, and the driver's watch
    on stalled jobs stops it (``--job-stall-timeout``), saying what it waited for."""
    with storage_errors(path.parent):
        f = open(path, "a")
    with f:
        if wait:
            _wait_for(f, path)
        else:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        try:
            with contextlib.suppress(OSError):  # who holds it, for a waiter's message (unbuffered: nothing left to flush)
                os.ftruncate(f.fileno(), 0)
                os.write(f.fileno(), _holder().encode())
            stop = _beating(f.fileno())
            try:
                yield True
            finally:
                stop.set()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wait_for(f: Any, path: Path) -> None:
    """Take the lock on open file ``f`` (at ``path``), waiting for its holder: see ``file_lock``."""
    with contextlib.ExitStack() as waiting:
        waiting.enter_context(progress.waiting())  # on a holder that runs
        seen, changed, quiet = _lock_stamp(f), time.monotonic(), False
        try:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    pass
                stamp = _lock_stamp(f)
                if stamp != seen:  # its holder runs (again)
                    seen, changed = stamp, time.monotonic()
                    if quiet:
                        quiet = False
                        progress.block(None)
                        waiting.enter_context(progress.waiting())
                elif not quiet and time.monotonic() - changed > LOCK_QUIET_S:
                    quiet = True
                    waiting.close()  # from here the driver's stall watch counts
                    progress.block(
                        f"the lock {path}, held by {_read_holder(path)}, which was not seen running for "
                        f"{LOCK_QUIET_S:g} s and more (a process paused, with Ctrl-Z say, or stuck on a disk that "
                        "stopped answering): stop that process, or let it go on"
                    )
                time.sleep(_LOCK_POLL_S)
        finally:
            if quiet:
                progress.block(None)


def _lock_stamp(f: Any) -> int | None:
    """The modification time of the lock file open as ``f``: the file locked, whatever its
    path names now."""
    try:
        return os.fstat(f.fileno()).st_mtime_ns
    except OSError:
        return None


def _holder() -> str:
    """This process, as a lock's waiter names it: pid, machine, command line."""
    try:
        # (on one line: an argument may hold line breaks, a `python -c` script's, say)
        command = " ".join(Path("/proc/self/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
    except OSError:
        command = ""
    return f"pid {os.getpid()} on {socket.gethostname()}" + (f" ({command[:160]})" if command else "")


def _read_holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its holder wrote it (``_holder``). (By its path: the
    waiter's own descriptor is open to append only.)"""
    try:
        said = path.read_text(errors="replace").strip()
    except OSError:
        said = ""
    return said[:240] or "another process"


def _beating(fd: int) -> threading.Event:
    """Touch the lock file open as ``fd`` every ``LOCK_BEAT_S`` until the event returned is
    set. From a thread of its own, on a duplicate of ``fd`` it closes itself: a lock file on
    a disk that stopped answering holds up only its own beats, never another lock's, nor
    the release of any (its holder goes on, and unlocks with ``fd``). A process out of
    descriptors or threads holds the lock without beats (its waiters take it as paused
    after ``LOCK_QUIET_S``)."""
    stop = threading.Event()
    try:
        own = os.dup(fd)
    except OSError:
        return stop

    def beat() -> None:
        try:
            while not stop.wait(LOCK_BEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(own)
        finally:
            os.close(own)

    try:
        threading.Thread(target=beat, name="lock-heartbeat", daemon=True).start()
    except RuntimeError:  # no thread to be had: held without beats, as without descriptors
        os.close(own)
    return stop
