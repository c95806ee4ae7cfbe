"""A job's scratch folder, and the sweep that deletes those of processes that died."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heygem_ray.locks import pid_exists

# A job's scratch folder in the temporary directory: ``heygem-job-<pid>@<host>-<random>``.
SCRATCH_PREFIX = "heygem-job-"


@contextmanager
def job_scratch() -> Iterator[Path]:
    """A job's scratch folder (its decoded audio; an output bound for a bucket, until it is
    uploaded), deleted after the job. Its name holds this process's id and host, so that
    the next job on the machine deletes those of processes that died without cleaning up
    (killed, out of memory: gigabytes of audio a night otherwise)."""
    _sweep_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}@{socket.gethostname()}-") as scratch:
        yield Path(scratch)


def _sweep_scratch() -> None:
    """Delete the scratch folders of this host's processes that are gone. Another host's
    (a temporary directory shared between containers) are left to it."""
    own = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)@" + re.escape(socket.gethostname()) + "-.+")
    try:
        names = os.listdir(tempfile.gettempdir())
    except OSError:
        return
    for name in names:
        if (m := own.fullmatch(name)) and not pid_exists(int(m[1])):
            shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)
