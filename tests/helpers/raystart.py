"""A Ray cluster started on this machine the way users start one: ``ray start``, in token mode.

Each node is a ``ray start --block`` process in a process group of its own (so stopping
the cluster stops every process it started, and nothing else: ``ray stop`` would also end
other Ray instances on this machine). Every node and every driver gets the same
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``, as Ray 2.59+ requires.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.media import make_excerpt

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = re.compile("Ray runtime started")
HEAD_ADDRESS = re.compile(r"ray start --address='([^']+)'")


class RayStart:
    def __init__(self, token: str | None = None):
        self.token = token or secrets.token_hex(32)
        # Short: Ray's socket paths live under it, and a Unix socket path has ~107 characters.
        self.temp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
        self.address = ""
        self._nodes: list[tuple[subprocess.Popen, Path]] = []

    def __enter__(self) -> RayStart:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, token: str | None = None) -> dict[str, str]:
        """The environment of a process of this cluster (``token`` overrides its own)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token or self.token}

    def head(self, num_cpus: int = 0, num_gpus: int = 0) -> str:
        """Start the head node; returns its address (HOST:PORT)."""
        # The address is in the "Next steps" lines `ray start` prints after STARTED: wait for it.
        log = self._start(["--head", "--port=0", f"--temp-dir={self.temp}", "--include-dashboard=false"],
                          num_cpus, num_gpus, ready=HEAD_ADDRESS)
        found = HEAD_ADDRESS.search(log)
        assert found is not None  # _start waited for it
        self.address = found.group(1)
        return self.address

    def node(self, num_cpus: int = 2, num_gpus: int = 0) -> None:
        """Start a worker node that joins the head."""
        assert self.address, "start the head first"
        self._start([f"--address={self.address}"], num_cpus, num_gpus)

    def _start(self, args: list[str], num_cpus: int, num_gpus: int, ready: re.Pattern[str] = STARTED) -> str:
        """Start a node; its log so far, once ``ready`` matches it."""
        log_path = self.temp / f"node{len(self._nodes)}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [RAY, "start", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
                 "--object-store-memory=200000000", *args],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._nodes.append((proc, log_path))
        deadline = time.monotonic() + 120
        while not ready.search(text := log_path.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                _signal_group(proc, signal.SIGKILL)  # a node half started would outlive the test
                proc.wait()
                raise RuntimeError(f"ray start failed:\n{text[-3000:]}")
            time.sleep(0.2)
        return text

    def stop(self) -> None:
        # SIGTERM to each `ray start` process alone: it stops its node's processes and exits
        # within a second or two. Sent to the whole group, the node's processes got it too
        # and `ray start` outlived them past the wait below (10 s lost a node).
        for proc, _ in reversed(self._nodes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in reversed(self._nodes):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # whatever of its group is left
            proc.wait()
        self._nodes.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def photo_batch(folder: Path, examples: Path, jobs: int, seconds: float) -> Path:
    """A manifest in ``folder`` of ``jobs`` rows, each ``seconds`` of the bundled speech
    over the bundled photo, with absolute paths (any node can read them); returns it."""
    audio = make_excerpt(examples / "lesson1.wav", folder / "a.wav", seconds=seconds)
    rows = [f"job{i},{audio},{examples / 'presenter.jpg'}" for i in range(jobs)]
    (folder / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    return folder / "m.csv"
