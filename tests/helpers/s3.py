"""moto's S3 server on loopback, started as a subprocess: a real S3 API for the tests
(``s3_serve.py``: one request at a time, so conditional writes are atomic, as in S3)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from heygem_ray.storage import Uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class S3Server:
    env: dict[str, str]  # the environment that reaches it
    log: Path  # its access log: one line per request


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 server in a subprocess on loopback."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("s3_serve.py")), str(port)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start in 60 s"
                time.sleep(0.2)
        yield S3Server(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            },
            log,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def s3_env(s3_server) -> dict[str, str]:
    """The environment that reaches the module's S3 server."""
    return s3_server.env


@pytest.fixture
def bucket(s3_env, monkeypatch) -> Uri:
    """A new, empty bucket; this process's environment points at the server."""
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")
    fs.create_dir(name)
    return Uri("s3", name)


