"""A real two-node Ray cluster on this machine (ray.cluster_utils.Cluster)."""

from __future__ import annotations

import subprocess
import sys

from heygem_ray import media

SCRIPT = """
import logging, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from heygem_ray import RunConfig, submit

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level=logging.WARNING)
folder = Path(sys.argv[1])
summary = submit(folder / "m.csv", RunConfig(output_dir=folder / "out", cache_dir=folder / "cache",
                 engines_dir=folder / "engines", cpu_workers=2))
nodes = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
for r in summary.results:
    print("ROW", r.job_id, r.status, r.node, r.error or "")
print("NODES", len(nodes))
ray.shutdown()
cluster.shutdown()
"""


def test_jobs_render_on_more_than_one_node(tmp_path, examples):
    audio = tmp_path / "a.wav"
    subprocess.run(
        [media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(examples / "lesson1.wav"), "-t", "1", str(audio)], check=True
    )
    rows = [f"job{i},a.wav,{examples / 'presenter.jpg'}" for i in range(4)]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "NODES 2" in lines
    found = [line.split() for line in lines if line.startswith("ROW")]
    assert len(found) == 4 and all(parts[2] == "ok" for parts in found), lines
    # The `node` column names the worker that rendered each job: both nodes served jobs.
    assert len({parts[3] for parts in found}) == 2
    for parts in found:
        assert len(media.read_video(tmp_path / "out" / f"{parts[1]}.mp4")[0]) == 25
