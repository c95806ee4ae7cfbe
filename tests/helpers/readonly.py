"""A folder made read-only to this process, as a cache mounted read-only on the nodes is."""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only to this process: a read-only bind mount of it over itself when
    running as root (whom permissions do not stop), else its write permission taken away."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount as root here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield
    finally:
        gc.collect()  # a template's mapped crops hold the mount until collected
        subprocess.run(["umount", "--lazy", str(folder)], check=True)
