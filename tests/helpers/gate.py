"""A gate on a run's model workers, for tests whose work must still be there when a second
worker starts serving: however fast the first one renders, a chunk renders only once the
test has opened the gate (created a file).

``GATE_HOOK`` is source text for the ``python -c`` script that runs the job. It defines
there ``gate``, a ``worker_process_setup_hook`` (so that Ray sends the function itself to
the job's worker processes, where it wraps ``ModelWorker.run_chunk`` to wait for the file
named by ``HEYGEM_TEST_GATE``), and ``gated(path)``, the job's ``runtime_env`` with the
gate at ``path``. ``GATED_CLI`` is such a script for ``heygem-ray``'s commands, and
``open_once_serving`` opens the gate once a run has announced its workers.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

GATE_HOOK = '''
def gate():
    import os, time
    from heygem_ray.worker import ModelWorker

    run_chunk = ModelWorker.run_chunk
    def waiting(self, *args, **kwargs):
        while not os.path.exists(os.environ["HEYGEM_TEST_GATE"]):
            time.sleep(0.1)
        return run_chunk(self, *args, **kwargs)
    ModelWorker.run_chunk = waiting


def gated(path):
    return {"worker_process_setup_hook": gate, "env_vars": {"HEYGEM_TEST_GATE": str(path)}}
'''

# `heygem-ray` run in this process on the cluster at argv[1], its model workers behind the
# gate argv[2]; argv[3:]: the command line (Ray is connected already, so the command's
# own --address is not used to connect).
GATED_CLI = """
import logging, sys
import ray
""" + GATE_HOOK + """

ray.init(address=sys.argv[1], logging_level=logging.WARNING, runtime_env=gated(sys.argv[2]))
from heygem_ray.cli import app

app(sys.argv[3:])
"""


def open_once_serving(stderr: Path, gate: Path, workers: int, timeout_s: float = 180) -> None:
    """Create ``gate`` once the run writing ``stderr`` has announced ``workers`` model
    workers (its ``workers: N × …`` lines), or after ``timeout_s`` (so that the run ends
    and the test's assertions say what went wrong)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(int(n) for n in re.findall(r"^workers: (\d+) × ", stderr.read_text(), flags=re.M)) >= workers:
            break
        time.sleep(0.2)
    gate.touch()
