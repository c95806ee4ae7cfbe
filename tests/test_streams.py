"""streams.py: a reader that went away is no failure; any other write error still is."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from heygem_ray.streams import _Forgiving, reader_gone


def _text(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=True), line_buffering=True)


def test_a_pipe_whose_reader_went_away_takes_every_write_into_dev_null() -> None:
    read, write = os.pipe()
    os.close(read)  # `| head` has ended
    stream = _Forgiving(_text(write))  # type: ignore[arg-type]
    stream.write("1 of 1 jobs rendered\n")  # EPIPE, passed over
    stream.writelines(["results: …\n", "  out/a.mp4\n"])
    stream.flush()
    assert os.fstat(write).st_rdev == os.stat(os.devnull).st_rdev  # pointed at /dev/null
    stream.close()


def test_a_full_disk_under_the_stream_is_still_an_error(tmp_path: Path) -> None:
    """/dev/full answers ENOSPC: a log file on a full disk, which must not pass unseen."""
    stream = _Forgiving(_text(os.open("/dev/full", os.O_WRONLY)))  # type: ignore[arg-type]
    with pytest.raises(OSError) as err:
        stream.write("a line\n")
    assert err.value.errno == errno.ENOSPC
    with open(tmp_path / "log", "w") as f:  # EIO from a file is its disk's error, a terminal's is its hang-up
        assert not reader_gone(OSError(errno.EIO, "I/O error"), f.fileno())
    with open(os.devnull, "w") as f:
        assert reader_gone(OSError(errno.EIO, "I/O error"), f.fileno())
        assert reader_gone(OSError(errno.EPIPE, "Broken pipe"), f.fileno())
        assert not reader_gone(OSError(errno.ENOSPC, "No space left on device"), f.fileno())
