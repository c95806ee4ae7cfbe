"""A cluster that starts empty, as an autoscaling one does: a head with no CPUs or GPUs for
work, started with `ray start` in token mode, and GPU or CPU-only nodes that join after
the submit. No autoscaler reports node types here: with --device auto, the first node to
join decides between GPU and CPU workers."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from heygem_ray import media
from tests.helpers.gate import GATED_CLI, open_once_serving
from tests.helpers.raystart import RayStart, photo_batch

HEYGEM = str(Path(sys.executable).with_name("heygem-ray"))
JOBS = 8


@pytest.fixture(scope="module")
def empty_cluster():
    with RayStart() as cluster:
        cluster.head(num_cpus=0, num_gpus=0)
        yield cluster


@pytest.fixture(scope="module")
def batch(tmp_path_factory, examples) -> Path:
    return photo_batch(tmp_path_factory.mktemp("batch"), examples, JOBS, 1).parent


def _command(cluster: RayStart, folder: Path, out: Path, *args: str) -> list[str]:
    return [HEYGEM, "submit", str(folder / "m.csv"), "-o", str(out), "--address", cluster.address,
            "--cache-dir", str(folder / "cache"), "--engines", str(folder / "engines"), *args]


# Defined first: it runs while the cluster is still empty. Both use --device auto: on a
# cluster with nothing to run on yet, the run waits for a node before it asks for workers.
def test_with_no_node_joining_the_run_stops_within_its_timeout_saying_what_is_missing(empty_cluster, batch):
    t0 = time.monotonic()
    proc = subprocess.run(_command(empty_cluster, batch, batch / "never", "--start-timeout", "5"),
                          env=empty_cluster.env(), capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    assert took < 5 + 45, took  # the timeout, plus connecting and starting up
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "error: no model worker was ready after 5 s: no node with CPUs or GPUs joined the cluster, and no autoscaler "
        "reported the node types it adds (with --device auto the first node to join decides between GPU and CPU "
        "workers). Check that nodes can join ('ray status'), or choose with --device gpu or --device cpu"
    ), proc.stderr[-3000:]
    assert "waiting for a node to join (" in proc.stderr, proc.stderr[-3000:]
    assert not (batch / "never").exists()


def test_gpu_nodes_that_join_after_the_submit_render_every_row(empty_cluster, batch):
    """Nothing can run when the run starts; it waits, saying so. A node with a GPU joins
    once the run says it waits; a second one joins once the first one's worker serves:
    its worker joins a run that is already rendering (the first worker holds chunks at
    the gate until then), and takes chunks too: when the gate opens, the first chunk
    sent goes to the worker with the fewest in flight, the new one."""
    stderr, gate = batch / "stderr.txt", batch / "gate"
    # One chunk a row (25 frames), so that a row's node is the one whose worker rendered it.
    submit = _command(empty_cluster, batch, batch / "out", "--chunk-frames", "32")[1:]
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", GATED_CLI, empty_cluster.address, str(gate), *submit],
                                env=empty_cluster.env(), stdout=subprocess.PIPE, stderr=err, text=True)

    def said(words: str) -> bool:
        """Whether the run has said ``words`` yet; waits for it while the run goes on."""
        while words not in stderr.read_text():
            if proc.poll() is not None:
                return False
            time.sleep(0.2)
        return True

    def join() -> None:
        if said("waiting for a node to join ("):
            empty_cluster.node(num_cpus=2, num_gpus=1)
        if said("workers: "):
            empty_cluster.node(num_cpus=1, num_gpus=1)
        open_once_serving(stderr, gate, 2)

    joiner = threading.Thread(target=join, daemon=True)
    joiner.start()
    stdout, _ = proc.communicate(timeout=600)
    proc.stderr = stderr.read_text()
    assert proc.returncode == 0, stdout[-2000:] + proc.stderr[-3000:]
    assert "waiting for a node to join (" in proc.stderr, proc.stderr[-3000:]
    assert "a node with GPUs joined: rendering on GPU workers" in proc.stderr, proc.stderr[-3000:]
    rows = pq.read_table(batch / "out" / "results.parquet").to_pylist()
    assert sorted(r["job_id"] for r in rows) == sorted(f"job{i}" for i in range(JOBS))
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in rows), rows
    # The second worker was announced as it joined, and both nodes' workers rendered.
    announced = [int(n) for n in re.findall(r"^workers: (\d+) × CPU, backend", proc.stderr, flags=re.M)]
    assert announced == [1, 1], proc.stderr[-3000:]
    assert len({r["node"] for r in rows}) == 2, [r["node"] for r in rows]
    for r in rows:
        assert len(media.read_video(Path(r["output"]))[0]) == r["frames"] == 25
    assert not [p for p in (batch / "out").iterdir() if p.name.endswith(".part.mp4")]


def test_a_cpu_only_node_that_joins_an_empty_cluster_gets_cpu_workers(tmp_path, examples):
    """--device auto on a head with no CPUs or GPUs and no autoscaler: once a node with
    CPUs only joins, the run puts CPU workers on it (not a GPU worker that would wait the
    whole start-up timeout next to an idle node), says so, and every row renders."""
    with RayStart() as cluster:
        cluster.head(num_cpus=0, num_gpus=0)
        folder = photo_batch(tmp_path, examples, 3, 0.5).parent
        stderr = folder / "stderr.txt"
        with open(stderr, "w") as err:
            proc = subprocess.Popen(_command(cluster, folder, folder / "out", "--start-timeout", "600"),
                                    env=cluster.env(), stdout=subprocess.PIPE, stderr=err, text=True)
        deadline = time.monotonic() + 240
        while "waiting for a node to join (" not in stderr.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()[-3000:]
            time.sleep(0.5)
        cluster.node(num_cpus=2, num_gpus=0)
        stdout, _ = proc.communicate(timeout=400)
        said = stderr.read_text()
        assert proc.returncode == 0, stdout[-2000:] + said[-3000:]
        assert "a CPU-only node joined: rendering on CPU workers" in said, said[-3000:]
        assert re.search(r"^workers: 1 × CPU, backend \w+ \(fp32\); tensorrt: ", said, flags=re.M), said[-3000:]
        assert "GPU workers asked for" not in said
        rows = pq.read_table(folder / "out" / "results.parquet").to_pylist()
        assert sorted(r["job_id"] for r in rows) == ["job0", "job1", "job2"]
        for r in rows:
            assert r["status"] == "ok", r
            assert len(media.read_video(Path(r["output"]))[0]) == r["frames"] > 0
