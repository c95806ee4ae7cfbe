"""The error hierarchy.

Every failure that reaches a user is one of three kinds:

* ``InputError``: something about the user's files or arguments is wrong; the message
  says which file, what is wrong and how to fix it.  A bad manifest row fails only its row.
* ``EngineError``: a backend or engine could not be built, loaded or run.
* ``InternalError``: a bug in heygem-ray; the message asks for a report.

``RunStopped`` is raised by ``submit`` when a run stops after its workers started (an
error while handling a finished row, or no model worker left): some jobs may have
rendered, and the table has a row for every job. ``WorkersUnavailable`` says why a run
cannot go on for want of model workers (none could start, or none is left).
``Interrupted`` is no failure: SIGINT, SIGTERM or SIGHUP stopped the run, and ``submit``
raises it once the table is written.

Each error carries a short ``kind`` (a stable snake_case word written to the results
table as ``error_kind``); the result row says in which step of the job it was raised
(``error_step``).

A disk that is full or read-only, or a folder the run may not write, is the user's to fix,
not a bug: :func:`storage_error` decides, in this one place, which ``OSError``s are such
(kind ``storage``, with the path and what to do), and :func:`storage_errors` applies it
around the code that writes files. So is a node that runs short of memory:
:func:`out_of_memory` (kind ``out_of_memory``), where :func:`says_out_of_memory` finds it.
"""

from __future__ import annotations

import errno
import os
import platform
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class HeygemError(Exception):
    """Base of every error heygem-ray raises on purpose."""

    kind: str = "error"

    def __init__(self, message: str, *, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputError(HeygemError):
    """A user's file, manifest or argument is wrong. The message tells how to fix it."""

    kind = "input"


class PresenterLater(InputError):
    """``no_face`` in the part of a take searched (``--reference-seconds``), where a keyframe
    after it shows a face: ``settings`` the start that uses the take from there, as a
    manifest row's columns take it."""

    def __init__(self, message: str, settings: dict[str, float]):
        super().__init__(message, kind="no_face")
        self.settings = settings


class EngineError(HeygemError):
    """A backend could not build, load or run a model."""

    kind = "engine"


class InternalError(HeygemError):
    """A bug: something heygem-ray should have prevented."""

    kind = "internal"


class WorkersUnavailable(EngineError):
    """The run's model workers cannot serve: one died or failed while starting, none was
    ready in time, or none is left and the restart budget is spent. Nothing the rows can
    fix: the run stops, and the message says what the cluster or the workers lack."""


class RunStopped(HeygemError):
    """A run stopped part-way: the results table holds the rows of the jobs that ended,
    and rows saying ``stopped`` for the others. The message says why, and how to finish.
    ``exit_status``: 2 when its model workers could not go on (``WorkersUnavailable``),
    else 1."""

    kind = "stopped"

    def __init__(self, message: str, *, exit_status: int = 1):
        super().__init__(message)
        self.exit_status = exit_status


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C), SIGTERM (``ray job stop``, ``kill``, a pod being deleted) or SIGHUP
    (a closed terminal) stopped the run. A ``KeyboardInterrupt``, so code that stops on
    Ctrl-C stops on it too. ``exit_status`` is the shell's for the signal: 130 for SIGINT,
    143 for SIGTERM, 129 for SIGHUP."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or signal.Signals(signum).name)
        self.signum = signum

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


# The errors of a machine's storage that its user can fix, and how (by errno).
_STORAGE_FIXES = {
    errno.ENOSPC: "free space on that disk, or choose a folder on another one",
    errno.EDQUOT: "free space in your quota there, or have it raised, or choose a folder elsewhere",
    errno.EACCES: "give the user the run runs as access to it (ls -ld shows its owner and mode), or choose another folder",
    errno.EPERM: "give the user the run runs as access to it (ls -ld shows its owner and mode), or choose another folder",
    errno.EROFS: "remount that file system read-write, or choose a folder on a writable one",
    errno.EIO: "the disk reported an I/O error: check it (dmesg, the storage's health), or choose a folder on another disk",
    # A path whose shape is not what the run writes there: a file where a folder must be made
    # (mkdir's EEXIST), a path through a file, a folder where a file is written.
    errno.EEXIST: "a file is there where the run makes a folder: move it away, or choose another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move it away, or choose another path",
    errno.EISDIR: "a folder is there where the run writes a file: move it away, or choose another path",
    errno.ENAMETOOLONG: "the path is longer than this system takes (4096 bytes in all, 255 a name): give it fewer or "
                        "shorter folder names",
    # A file past the largest this process may write (``ulimit -f``) or its file system holds.
    errno.EFBIG: "the file would be larger than this process may write there (a limit set with ulimit -f, or the "
                 "file system's largest file): raise the limit, or choose a folder on another file system",
    errno.ELOOP: "a symbolic link on that path leads back to itself (a loop of links): fix or remove the link, or "
                 "choose another path",
}
# A network file system (NFS, SMB, a FUSE mount of a bucket) that stopped answering: the
# node's, not the run's, and a later run may find it back.
_NETWORK_FS_FIX = ("the network file system holding it stopped answering ({said}) on node {node}: check that mount "
                   "there (mount, dmesg), then run the same manifest again")  # fmt: skip
_NETWORK_FS_CODES = (errno.ESTALE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.ECONNRESET)


def storage_error(exc: OSError, where: object = None) -> InputError | None:
    """``exc`` as the user's error when the machine's storage refused a read or write
    (full, over quota, not permitted, read-only, failing): kind ``storage``, naming the
    path (``exc``'s file name, else ``where``) and what to do. None for any other error."""
    fix = storage_fix(exc.errno or 0)
    if fix is None:
        return None
    path = exc.filename if exc.filename is not None else where
    said = os.strerror(exc.errno or 0).lower()
    return InputError(f"{path if path is not None else 'a file heygem-ray writes'}: {said}; {fix}", kind="storage")


def storage_fix(code: int) -> str | None:
    """What to do about the storage error ``code`` (an errno), or None where it is none."""
    if code in _NETWORK_FS_CODES:
        return _NETWORK_FS_FIX.format(said=os.strerror(code).lower(), node=platform.node())
    return _STORAGE_FIXES.get(code)


# How running out of memory is said, where it is not Python's MemoryError (a program's or
# a library's words, lower case): the system's ENOMEM ("Cannot allocate memory"), x264's
# "malloc of size N failed", PyTorch's "can't allocate memory" (CPU) and "CUDA out of
# memory", ONNX Runtime's "Failed to allocate memory", OpenCV's "Insufficient memory".
_OUT_OF_MEMORY_WORDS = (
    os.strerror(errno.ENOMEM).lower(), "malloc of size", "can't allocate memory", "out of memory",
    "failed to allocate memory", "insufficient memory",
)  # fmt: skip
# What the user can do about a node short of memory for a job (its process, its ffmpeg).
NODE_MEMORY_FIX = (
    "run fewer jobs at once (--max-jobs N; on a cluster a node runs one per CPU Ray gives it: 'ray start --num-cpus "
    "N'), render a large take smaller (--max-resolution 1080 holds a 4K take's frames in a quarter of the memory), "
    "or give the node more memory; then run the same manifest again"
)


def first_line(exc: BaseException) -> str:
    """``exc`` in a line: its type, and the first line of its message where it has one."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def says_out_of_memory(said: BaseException | str) -> bool:
    """Whether an error (Python's ``MemoryError``, PyTorch's ``OutOfMemoryError``) or a
    program's message says that memory ran out."""
    if isinstance(said, BaseException):
        if isinstance(said, MemoryError) or type(said).__name__ == "OutOfMemoryError":
            return True
        said = str(said)
    text = said.lower()
    return any(words in text for words in _OUT_OF_MEMORY_WORDS)


def out_of_memory(said: str, fix: str = NODE_MEMORY_FIX) -> InputError:
    """The ``out_of_memory`` error: ``said`` (what ran out of memory, and its words), then ``fix``."""
    return InputError(f"{said}: {fix}", kind="out_of_memory")


def folder_removed(folder: object, what: str) -> InputError:
    """The ``storage`` error for a folder that was there when the run began writing ``what``
    into it, and is gone: something outside the run deleted it (a cleanup of the output
    folder, a tmp cleaner)."""
    return InputError(
        f"the folder {folder} was removed while {what} was written into it (was it deleted or cleaned during the "
        "run?); run the same manifest again to render this row",
        kind="storage",
    )


def storage_error_in(
    text: str, where: object, codes: Iterable[int] = (*_STORAGE_FIXES, *_NETWORK_FS_CODES)
) -> InputError | None:
    """The storage error a program's message reports (ffmpeg writes the system's words,
    e.g. "No space left on device"), for a file at ``where``; None when it reports none.
    ``codes``: the errnos looked for (all those ``storage_error`` knows)."""
    for code in codes:
        if os.strerror(code) in text:
            return storage_error(OSError(code, os.strerror(code)), where)
    return None


@contextmanager
def storage_errors(where: object) -> Iterator[None]:
    """Inside the block, an ``OSError`` that :func:`storage_error` takes for the
    storage's refusal is raised as that ``storage`` error (naming ``where`` when the
    error names no file); any other propagates as it is."""
    try:
        yield
    except OSError as exc:
        found = storage_error(exc, where)
        if found is None:
            raise
        raise found from exc
