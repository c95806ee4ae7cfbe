"""Monitoring: custom Ray metrics on the Prometheus endpoint, the Grafana dashboard that
reads them, and log records that name their job."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import types
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from heygem_ray import metrics
from heygem_ray.joblog import FORMAT, fields, job_logging
from heygem_ray.steps import TIMED
from tests.helpers.media import make_excerpt

DASHBOARD = Path(__file__).resolve().parents[1] / "jobs" / "grafana" / "heygem-ray.json"

# Runs a small manifest on its own local Ray instance (this test needs the instance's
# metrics port, and counts that no other test adds to), then, while Ray is still up,
# scrapes Ray's Prometheus endpoint until every job is counted and asks the dashboard's
# state API for the names of the run's tasks and actors.
SCRIPT = """
import json, logging, socket, sys, time, urllib.request
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from ray.util.state import get_log, list_actors, list_tasks
from heygem_ray import RunConfig, submit
from heygem_ray.cli import engines_build

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

folder = Path(sys.argv[1])
port = free_port()
# A new instance even if another Ray runs on this machine, with ports of its own: its
# dashboard agent's too (Ray's default port may be taken by the other instance's agent,
# and an agent without it cannot serve logs).
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 2, "include_dashboard": True, "dashboard_port": free_port(), "metrics_export_port": port,
    "dashboard_agent_listen_port": free_port()})
ctx = ray.init(address=cluster.address, logging_level=logging.WARNING)
summary = submit(folder / "m.csv", RunConfig(output_dir=folder / "out", cache_dir=folder / "cache",
                 engines_dir=folder / "engines", workers=1))
# 'heygem-ray engines build' on a node of the cluster: its exports count as builds.
engines_build(pack="warp", checkpoint=None, backend="onnxruntime", precision="fp32", batch_size=32,
              store=folder / "engines")
# Every process exports on its own clock (the driver, job tasks, model workers): wait
# until the jobs and their frames are all counted and the workers' counters are in.
expected = {"ray_heygem_jobs_finished_total": len(summary.results),
            "ray_heygem_frames_rendered_total": sum(r.frames for r in summary.results),
            "ray_heygem_engine_builds_total": 2, "ray_heygem_backend_fallbacks_total": 1}
deadline, text = time.monotonic() + 90, ""
while time.monotonic() < deadline:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    totals = {name: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith(name + "{")) for name in expected}
    if all(totals[name] >= n for name, n in expected.items()):
        break
    time.sleep(1)
(folder / "metrics.txt").write_text(text)
state = "http://" + ctx.dashboard_url
while time.monotonic() < deadline:  # task events reach the dashboard a few seconds late
    listed = {t.task_id: t.name for t in list_tasks(address=state, limit=10_000, raise_on_missing_output=False)}
    tasks = sorted(listed.values())
    if tasks.count("job") >= 3 and tasks.count("render") >= 2:
        break
    time.sleep(1)
actors = sorted(a.name for a in list_actors(address=state, limit=1_000, raise_on_missing_output=False))
# Each row's ray_task_id, as the dashboard lists it, and the failed row's task log.
bad = next(r for r in summary.results if r.job_id == "bad")
log_deadline, bad_log = time.monotonic() + 60, ""
while time.monotonic() < log_deadline and "job=bad" not in bad_log:
    try:
        bad_log = "".join(get_log(address=ctx.address_info["gcs_address"], task_id=bad.ray_task_id, suffix="err",
                                  filter_ansi_code=True))
    except Exception as exc:  # the task's log offsets reach the state API a moment late
        bad_log = f"get_log failed: {exc!r}"
    if "job=bad" not in bad_log:
        time.sleep(1)
print("NAMES", json.dumps({"tasks": tasks, "actors": actors, "bad_log": bad_log,
                           "row_tasks": {r.job_id: listed.get(r.ray_task_id) for r in summary.results}}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, examples):
    """(scraped metric samples by name, results.parquet rows by job id, the driver's output, task and
    actor names)."""
    folder = tmp_path_factory.mktemp("metrics")
    for name, src in (("a.wav", "lesson1.wav"), ("b.wav", "lesson2.mp3")):
        make_excerpt(examples / src, folder / name, seconds=1)
    jpg = examples / "presenter.jpg"
    (folder / "m.csv").write_text(f"job_id,audio,video\none,a.wav,{jpg}\ntwo,b.wav,{jpg}\nbad,missing.wav,{jpg}\n")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(folder)], capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = next(json.loads(x.removeprefix("NAMES ")) for x in proc.stdout.splitlines() if x.startswith("NAMES "))
    rows = {r["job_id"]: r for r in pq.read_table(folder / "out" / "results.parquet").to_pylist()}
    samples = defaultdict(list)
    for family in text_string_to_metric_families((folder / "metrics.txt").read_text()):
        for sample in family.samples:
            samples[sample.name].append(sample)
    return samples, rows, proc.stdout + proc.stderr, names


def _total(samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over Ray's per-worker series whose labels include ``labels``."""
    return sum(s.value for s in samples.get(name, []) if labels.items() <= s.labels.items())


def test_prometheus_endpoint_has_the_run_s_metrics(run):
    samples, rows, _, _ = run
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert sorted(r["job_id"] for r in ok) == ["one", "two"] and rows["bad"]["status"] == "failed"

    assert _total(samples, "ray_heygem_jobs_finished_total", status="ok", pack="warp") == 2
    assert _total(samples, "ray_heygem_jobs_finished_total", status="failed") == 1
    assert _total(samples, "ray_heygem_jobs_finished_total", status="failed", error_kind="none") == 0
    assert _total(samples, "ray_heygem_frames_rendered_total") == sum(r["frames"] for r in ok) > 0

    # One observation per rendered job, under the backend that ran it, in the bucket its
    # row says: each cumulative bucket counts the rows at or below its bound.
    backend = ok[0]["backend"]
    for step in TIMED:
        if step == "restore":  # timed only in runs with --restore (restore_s empty): none here
            assert _total(samples, "ray_heygem_step_seconds_count", step=step) == 0
            assert {r["restore_s"] for r in ok} == {None}
            continue
        assert _total(samples, "ray_heygem_step_seconds_count", step=step, backend=backend) == 2, step
        for bound in metrics.STEP_SECONDS_BOUNDARIES:
            below = sum(r[f"{step}_s"] <= bound for r in ok)
            assert _total(samples, "ray_heygem_step_seconds_bucket", step=step, le=str(bound)) == below, step
    assert _total(samples, "ray_heygem_job_realtime_factor_count", backend=backend) == 2
    for bound in metrics.REALTIME_FACTOR_BOUNDARIES:
        below = sum(r["realtime_factor"] <= bound for r in ok)
        assert _total(samples, "ray_heygem_job_realtime_factor_bucket", le=str(bound)) == below, bound

    # The one CPU worker could not use tensorrt here and ran warp on pytorch (which needs no
    # engine); 'engines build' then exported both ONNX graphs into the empty store.
    assert ok[0]["backend"] == "pytorch"
    assert _total(samples, "ray_heygem_backend_fallbacks_total", from_backend="tensorrt", to_backend="pytorch") == 1
    assert _total(samples, "ray_heygem_backend_fallbacks_total") == 1
    for stage in ("motion", "render"):
        assert _total(samples, "ray_heygem_engine_builds_total", backend="onnxruntime", stage=stage) == 1


def test_tasks_and_actors_are_named_for_what_they_do(run):
    names = run[3]
    # A task per job, a call per chunk (motion and render on a model worker; one chunk
    # for each of the two rendered jobs). Names say what a call does, never which job:
    # Ray's dashboard agent keeps state for every name it has seen.
    tasks = Counter(names["tasks"])
    assert tasks["job"] == 3 and tasks["render"] == 2, tasks
    assert not [name for name in tasks if re.search(r"one|two|bad", name)], tasks
    # The rest is the actors' start: the router's calls keep no task events.
    rest = {re.sub(r"-[0-9a-f]{6}", "-<run>", name) for name in tasks} - {"job", "render"}
    assert rest == {"model-worker-<run>-cpu0:ActorWorker.__init__", "ActorWorker.ready",
                    "router-<run>:Router.__init__"}, tasks
    actors = [re.sub(r"-[0-9a-f]{6}", "-<run>", name) for name in names["actors"]]
    assert sorted(actors) == ["model-worker-<run>-cpu0", "router-<run>"]


def test_each_row_names_its_ray_task_and_its_log_can_be_read_by_it(run):
    _, rows, _, names = run
    assert names["row_tasks"] == {"one": "job", "two": "job", "bad": "job"}  # listed by the dashboard
    assert len({r["ray_task_id"] for r in rows.values()}) == 3
    # `ray logs task --id <ray_task_id> --err` shows the job's own log line and no other job's.
    assert "job=bad status=failed" in names["bad_log"], names["bad_log"][-2000:]
    assert "job=one" not in names["bad_log"] and "job=two" not in names["bad_log"]


def test_the_failed_job_s_log_line_names_it(run):
    _, rows, output, _ = run
    lines = [line for line in output.splitlines() if "job=bad " in line]
    assert any("status=failed" in line and f"step={rows['bad']['error_step']}" in line for line in lines), output[-3000:]
    # Streamed to the driver under the task's name.
    assert any(re.sub(r"\x1b\[[0-9;]*m", "", line).startswith("(job pid=") for line in lines), lines


# Words in a PromQL expression that are not metric names.
_PROMQL_WORDS = {"sum", "rate", "increase", "histogram_quantile", "by", "without", "on", "ignoring", "and", "or",
                 "unless", "offset", "clamp_min", "max", "min", "avg", "count", "topk", "vector"}


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in _PROMQL_WORDS}


def test_the_grafana_dashboard_queries_only_exported_metrics(run):
    samples, _, _, _ = run
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len(panels) >= 6 and all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    used = set().union(*(_metric_names(e) for e in exprs))
    for variable in dashboard["templating"]["list"][1:]:
        used |= set(re.findall(r"label_values\((\w+),", variable["definition"]))
    assert used <= set(samples), used - set(samples)
    # Every metric this package exports is on the dashboard.
    ours = {name for name in samples if name.startswith("ray_heygem_")}
    assert {re.sub(r"_(bucket|count|sum)$", "", n) for n in ours} <= {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}


def test_recording_without_ray_does_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))
    monkeypatch.setattr(metrics, "_make", lambda: pytest.fail("metrics made without Ray"))
    metrics.record_frames(25, "warp")
    metrics.record_engine_build("onnxruntime", "render", "fp32")
    metrics.record_backend_fallback("tensorrt", "onnxruntime")


def test_log_records_carry_the_job_they_were_made_in():
    captured: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.emit = lambda record: captured.append(handler.format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("heygem_ray.test_metrics")
    logger.addHandler(handler)
    try:
        with job_logging("lesson-7"):
            logger.warning("%s", fields(status="failed", step="analyze", error="no face in p.jpg"))
        logger.warning("between jobs")
    finally:
        logger.removeHandler(handler)
    assert captured[0].endswith('WARNING heygem_ray.test_metrics job=lesson-7 status=failed step=analyze '
                                'error="no face in p.jpg"')
    assert captured[1].endswith("job=- between jobs")


def test_fields_quote_values_that_would_break_key_value_parsing():
    assert fields(frames=25, seconds=1.23456, note=None) == "frames=25 seconds=1.23"
    assert fields(error='a "b" c', empty="") == 'error="a \\"b\\" c" empty=""'
