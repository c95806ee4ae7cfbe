"""A job's scratch folder, and the sweep that deletes those of processes that died."""

from __future__ import annotations

import errno
import hashlib
import os
import platform
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heygem_ray.errors import InputError, storage_fix
from heygem_ray.locks import machine, pid_exists

# A job's scratch folder in the temporary directory: ``heygem-job-<pid>@<host>.<space>-<random>``,
# ``space`` naming this boot of the machine and its pid namespace (``_owner``).
SCRATCH_PREFIX = "heygem-job-"


@contextmanager
def job_scratch() -> Iterator[Path]:
    """A job's scratch folder (its decoded audio; an output bound for a bucket, until it is
    uploaded), deleted after the job. Its name holds this process's id and host, so that
    the next job on the machine deletes those of processes that died without cleaning up
    (killed, out of memory: gigabytes of audio a night otherwise)."""
    _sweep_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}@{_owner()}-") as scratch:
        try:
            yield Path(scratch)
        except InputError as exc:
            if exc.kind != "storage" or not exc.message.startswith(scratch):
                raise
            # It named a file in a folder gone with the job, not where it is or how to move it.
            cause = exc.__cause__
            code = cause.errno if isinstance(cause, OSError) and cause.errno else 0
            said = os.strerror(code).lower() if code else exc.message.partition(": ")[2].partition("; ")[0]
            full = code in (errno.ENOSPC, errno.EDQUOT)
            fix = "free space there" if full else storage_fix(code) or "fix it there"
            raise InputError(
                f"this job's scratch folder {scratch} (in the temporary directory of node {platform.node()}): "
                f"{said}; {fix}, or give the jobs another temporary directory{' on a larger disk' if full else ''}: "
                "TMPDIR set where Ray starts (TMPDIR=/data/tmp ray start …; for a local run, where heygem-ray runs)",
                kind="storage",
            ) from exc


def _owner() -> str:
    """``<host>.<space>``: where a scratch folder's pid names the process that made it. The
    host alone is not enough: containers sharing a temporary directory and a host name
    (``--network host``) each count pids of their own, and one deleted another's live job's
    folder, whose pid did not exist in its own count."""
    space = machine()
    return f"{socket.gethostname()}.{hashlib.sha256(space.encode()).hexdigest()[:12] if space else ''}"


def _sweep_scratch() -> None:
    """Delete the scratch folders of this machine's and pid namespace's processes that are
    gone. Others' (a temporary directory shared between containers) are left to them."""
    own = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)@" + re.escape(_owner()) + "-.+")
    try:
        names = os.listdir(tempfile.gettempdir())
    except OSError:
        return
    for name in names:
        if (m := own.fullmatch(name)) and not pid_exists(int(m[1])):
            shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)
