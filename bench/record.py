"""Where a benchmark's numbers go: ``bench/results/<name>-<host>.json``, with the machine,
the command that made them and the date."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write(name: str, results: list[dict], **machine: str) -> Path:
    """Write ``results`` with this machine's description (plus ``machine``'s fields); returns the file."""
    record = {
        "machine": {
            "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            **machine,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": results,
    }
    dest = RESULTS / f"{name}-{socket.gethostname()}.json"
    dest.write_text(json.dumps(record, indent=2) + "\n")
    return dest
