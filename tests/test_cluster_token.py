"""Token authentication end to end: a two-node cluster started with `ray start` in token
mode (as Ray 2.59+ starts every `ray start` cluster), every node given the same token.
A client with the token renders on it; one with a wrong or no token is refused at once,
with one line that says so and what to set."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from heygem_ray import media
from tests.helpers.gate import GATED_CLI, open_once_serving
from tests.helpers.raystart import RayStart, photo_batch

HEYGEM = str(Path(sys.executable).with_name("heygem-ray"))
FIX = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, a file holding it) to the token the cluster's nodes were "
       "started with, and RAY_AUTH_MODE=token")


@pytest.fixture(scope="module")
def cluster():
    with RayStart() as c:
        c.head(num_cpus=1)
        c.node(num_cpus=2)
        yield c


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, examples) -> Path:
    # More rows than the cluster's 3 CPUs run at once: see the first test.
    return photo_batch(tmp_path_factory.mktemp("token"), examples, 6, 1)


def _args(cluster: RayStart, manifest: Path, out: Path) -> list[str]:
    folder = manifest.parent
    return ["submit", str(manifest), "-o", str(out), "--address", cluster.address,
            "--cache-dir", str(folder / "cache"), "--engines", str(folder / "engines"), "--workers", "2"]


def _submit(cluster: RayStart, manifest: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([HEYGEM, *_args(cluster, manifest, out)], env=env, capture_output=True, text=True,
                          timeout=400)


def test_a_client_with_the_token_renders_on_both_nodes(cluster, manifest):
    """With the token, the run renders, and on both nodes: the two workers go to the two
    nodes, and their chunk calls wait at a gate (tests/helpers/gate.py) until both serve,
    so the rows whose jobs start after that (one chunk each) go to the worker with the
    fewest in flight, whichever was slower to start. (The gate's script connects before
    the command does; the command's own connection with the token is the one
    test_cluster_start.py's runs make, with --address.)"""
    folder = manifest.parent
    stderr, gate = folder / "stderr.txt", folder / "gate"
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", GATED_CLI, cluster.address, str(gate),
                                 *_args(cluster, manifest, folder / "out")],
                                env=cluster.env(), stdout=subprocess.PIPE, stderr=err, text=True)
    threading.Thread(target=open_once_serving, args=(stderr, gate, 2), daemon=True).start()
    stdout, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, stdout[-2000:] + stderr.read_text()[-3000:]
    rows = pq.read_table(folder / "out" / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 6, rows
    assert len({r["node"] for r in rows}) == 2, [r["node"] for r in rows]
    for r in rows:
        assert len(media.read_video(Path(r["output"]))[0]) == 25


def test_a_wrong_token_is_refused_at_once_in_one_line(cluster, manifest, tmp_path):
    proc = _submit(cluster, manifest, tmp_path / "out", cluster.env(token="0" * 64))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"error: the Ray cluster at {cluster.address} refused the token from RAY_AUTH_TOKEN: {FIX}"
    ], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_no_token_at_all_is_refused_saying_none_was_found(cluster, manifest, tmp_path):
    env = {k: v for k, v in cluster.env().items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
    proc = _submit(cluster, manifest, tmp_path / "out", env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"error: the Ray cluster at {cluster.address} requires a token and none was found: {FIX}"
    ], proc.stderr[-3000:]


def test_a_token_without_token_mode_is_not_sent_and_the_line_says_so(cluster, manifest, tmp_path):
    """The right token, but RAY_AUTH_MODE unset: Ray's client sends no token at all (as a
    user finds after `ray start` wrote ~/.ray/auth_token), so the line must not say that
    the cluster refused it."""
    env = {k: v for k, v in cluster.env().items() if k != "RAY_AUTH_MODE"}
    proc = _submit(cluster, manifest, tmp_path / "out", env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"error: the Ray cluster at {cluster.address} requires a token, and this client sends none: RAY_AUTH_MODE "
        f"is not 'token' here (a token is in RAY_AUTH_TOKEN): {FIX}"
    ], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()

