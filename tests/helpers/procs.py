"""Source text for the scripts tests run with ``python -c`` in a Ray instance of their own
(tests/test_faults_seeded.py, tests/test_stalled_jobs.py), put before each script's own.

It defines ``TOKEN_VAR``, the variable a script passes to its Ray workers (in
``runtime_env``) so that its processes are told from any other Ray's on the machine, and
``processes(title, token)``: the pids of this run's Ray worker processes whose title
starts with ``title`` (``ray::job``, ``ray::ActorWorker``).
"""

PROCESSES = """
import os
from pathlib import Path

TOKEN_VAR = "HEYGEM_TEST_TOKEN"


def processes(title, token):
    found = []
    for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\\0")
        except OSError:
            continue
        if cmdline.startswith(title.encode()) and f"{TOKEN_VAR}={token}".encode() in environ:
            found.append(pid)
    return found
"""
