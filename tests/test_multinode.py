"""A real two-node Ray cluster on this machine (ray.cluster_utils.Cluster), without the dashboard:
nothing here reads it, and its processes cost each cluster seconds of CPU."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from heygem_ray import media
from tests.helpers.gate import GATE_HOOK
from tests.helpers.media import make_excerpt

# The two workers' chunk calls wait at a gate (tests/helpers/gate.py) that opens once both
# serve: the rows whose jobs start after that (more rows than the 4 CPUs run at once) have
# their one chunk sent to the worker with the fewest in flight, so both render, however
# slowly the second worker starts.
SCRIPT = """
import logging, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from heygem_ray import RunConfig, submit
from heygem_ray.driver import RunCallbacks
""" + GATE_HOOK + """

class OpenWhenBothServe(RunCallbacks):
    serving = 0

    def workers(self, infos):
        self.serving += len(infos)
        if self.serving >= 2:
            open_gate.touch()


cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
folder = Path(sys.argv[1])
open_gate = folder / "gate"
ray.init(address=cluster.address, logging_level=logging.WARNING, runtime_env=gated(open_gate))
summary = submit(folder / "m.csv", RunConfig(output_dir=folder / "out", cache_dir=folder / "cache",
                 engines_dir=folder / "engines", workers=2), OpenWhenBothServe())
nodes = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
for r in summary.results:
    print("ROW", r.job_id, r.status, r.node, r.error or "")
print("NODES", len(nodes))
ray.shutdown()
cluster.shutdown()
"""


def test_jobs_render_on_more_than_one_node(tmp_path, examples):
    audio = tmp_path / "a.wav"
    make_excerpt(examples / "lesson1.wav", audio, seconds=1)
    rows = [f"job{i},a.wav,{examples / 'presenter.jpg'}" for i in range(8)]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "NODES 2" in lines
    found = [line.split() for line in lines if line.startswith("ROW")]
    assert len(found) == 8 and all(parts[2] == "ok" for parts in found), lines
    # The `node` column names the worker that rendered each job: both nodes served jobs.
    assert len({parts[3] for parts in found}) == 2
    for parts in found:
        assert len(media.read_video(tmp_path / "out" / f"{parts[1]}.mp4")[0]) == 25


REMOVE_NODE = """
import logging, sys, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from heygem_ray import RenderConfig, RunConfig, submit
from heygem_ray.driver import RunCallbacks

gpus = int(sys.argv[2])  # 1: each node declares a (pretend) GPU, so workers are GPU actors
# A killed node is declared dead (and its actors with it) after 3 failed health checks a
# second apart: Ray's default, 5 three seconds apart, only makes the run wait longer.
health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": gpus, "_system_config": health,
                                                          "include_dashboard": False})
leaving = cluster.add_node(num_cpus=2, num_gpus=gpus)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level=logging.WARNING)


class RemoveNodeAfterFirstJob(RunCallbacks):
    removed = False

    def job_done(self, result):
        if not self.removed:
            cluster.remove_node(leaving, allow_graceful=False)
            self.removed = True
            print("REMOVED after", result.job_id, flush=True)


folder = Path(sys.argv[1])
cb = RemoveNodeAfterFirstJob()
summary = submit(folder / "m.csv", RunConfig(output_dir=folder / "out", cache_dir=folder / "cache",
                 engines_dir=folder / "engines", workers=2, render=RenderConfig(chunk_frames=8)), cb)
deadline = time.monotonic() + 120  # the run may end before Ray declares the node dead
while sum(1 for n in ray.nodes() if n["Alive"]) > 1 and time.monotonic() < deadline:
    time.sleep(1)
print("ALIVE", sum(1 for n in ray.nodes() if n["Alive"]))
for r in summary.results:
    print("ROW", r.job_id, r.status, r.attempts, r.node, r.error or "")
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.parametrize("gpus", [0, 1], ids=["cpu-workers", "gpu-workers"])
def test_a_node_removed_mid_run_loses_no_job(tmp_path, examples, gpus):
    """The second node leaves (killed, not drained) as soon as the first job is done: the
    jobs and model workers it held are lost, and every job still ends ok exactly once.
    With a GPU per node, the lost GPU worker cannot come back anywhere (no GPU is free):
    its chunks must go to the worker that is left (and the run must not hang waiting for it)."""
    audio = tmp_path / "a.wav"
    make_excerpt(examples / "lesson1.wav", audio, seconds=1.2)
    rows = [f"job{i},a.wav,{examples / 'presenter.mp4'}" for i in range(6)]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    proc = subprocess.run(
        [sys.executable, "-c", REMOVE_NODE, str(tmp_path), str(gpus)], capture_output=True, text=True, timeout=500
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("REMOVED") for line in lines) and "ALIVE 1" in lines, lines
    # The chunks the lost worker held (or the crops it had rendered, lost with its node)
    # went to the worker that is left. (A lost GPU worker is replaced by one that waits,
    # pending, for a free GPU; a lost CPU worker is replaced on another node.)
    assert re.search(r"(its model worker died|its rendered crops were lost).*; sending it again", proc.stderr), \
        proc.stderr[-3000:]
    found = [line.split(maxsplit=5) for line in lines if line.startswith("ROW")]
    assert sorted(parts[1] for parts in found) == [f"job{i}" for i in range(6)]  # each exactly once
    assert all(parts[2] == "ok" for parts in found), lines
    for parts in found:
        frames, _ = media.read_video(tmp_path / "out" / f"{parts[1]}.mp4")
        assert len(frames) == 30
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".part.mp4")] == []
