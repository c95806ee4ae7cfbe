"""Every run ends, and says why: workers that fail or die while starting, workers that keep
dying, a chunk call that hangs, a GPU worker without CUDA, Ctrl-C and SIGTERM (also as the
table is written), an input whose reads stop answering (real Ray, real `heygem-ray submit`). That a healthy run prints no error-level line is checked on the
README's first command (tests/test_submit.py)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from heygem_ray import media
from heygem_ray.driver import resume
from tests.helpers.media import make_excerpt
from tests.helpers.raystart import RayStart, photo_batch

HEYGEM = str(Path(sys.executable).with_name("heygem-ray"))

# `heygem-ray submit` run in-process, joined to the test process's Ray instance (RAY_ADDRESS)
# with a fault on its model workers: Ray runs the hook in each of this job's worker
# processes before any task, and the fault named by HEYGEM_TEST_FAULT is injected there.
# Prints the command's exit status.
FAULTY_SUBMIT = """
import logging, os, sys, time
import ray


def inject():
    import os, signal, time
    from heygem_ray.worker import ModelWorker

    fault = os.environ["HEYGEM_TEST_FAULT"]
    if fault == "start_raises":  # a library's error in the constructor, as diffusers or a tight node raise
        def start(self, *args):
            raise MemoryError("injected: the pack's weights do not fit")
        ModelWorker._start = start
    elif fault == "start_dies":  # the process dies while it loads (a segfault, the OOM killer)
        def start(self, *args):
            os.kill(os.getpid(), signal.SIGKILL)
        ModelWorker._start = start
    elif fault == "third_chunk_kills":  # every worker dies on the third chunk it renders
        run_chunk = ModelWorker.run_chunk
        calls = []
        def dying(self, features, given, *rest):
            calls.append(len(given))
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return run_chunk(self, features, given, *rest)
        ModelWorker.run_chunk = dying
    elif fault == "wedge":  # a chunk of 3 frames hangs its worker, as a wedged GPU call does
        run_chunk = ModelWorker.run_chunk
        def wedged(self, features, given, *rest):
            if len(given) == 3:
                time.sleep(3600)
            return run_chunk(self, features, given, *rest)
        ModelWorker.run_chunk = wedged


ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING,
         runtime_env={"worker_process_setup_hook": inject, "env_vars": {"HEYGEM_TEST_FAULT": sys.argv[1]}})
from heygem_ray.cli import app

if os.environ.get("HEYGEM_TEST_TABLE_SIGTERM"):  # `ray job stop` as this command writes its table
    import signal
    from heygem_ray.driver import resume

    merge = resume.write_merged
    def stopped_as_written(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return merge(*args, **kwargs)
    resume.write_merged = stopped_as_written

try:
    app(sys.argv[2:])
except SystemExit as exc:
    # One write, on a line of its own: print() writes its pieces one by one, and Ray's log
    # thread may write between them (a raylet line and its newline came around "EXIT").
    sys.stdout.write(f"\\nEXIT {exc.code}\\n")
    sys.stdout.flush()
ray.shutdown()
"""


def _faulty_submit(env: dict[str, str], fault: str, folder: Path, *args: str, table_sigterm: bool = False
                   ) -> tuple[int, str]:
    """(exit status, stderr) of the command, which must end within 500 s: far less than a
    run that waited for its workers (--start-timeout, 1800 s by default) would take."""
    command = [sys.executable, "-c", FAULTY_SUBMIT, fault, "submit", str(folder / "m.csv"), "-o", str(folder / "out"),
               "--cache-dir", str(folder / "cache"), "--engines", str(folder / "engines"), *args]
    env = env | {"HEYGEM_TEST_TABLE_SIGTERM": "1"} if table_sigterm else env
    proc = subprocess.run(command, capture_output=True, text=True, timeout=500, env=env)
    found = re.search(r"^EXIT (\S+)$", proc.stdout, flags=re.M)
    assert found, proc.stdout[-2000:] + proc.stderr[-3000:]
    return int(found.group(1)), proc.stderr


def _error_line(stderr: str) -> str:
    """The command's own error line (Ray may stream a job's log lines after it)."""
    return next((line for line in reversed(stderr.splitlines()) if line.startswith("error: ")), "(no error line)")


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("start_raises", "error: a model worker could not start: MemoryError: injected: the pack's weights do not fit "
                         "(its traceback is in the worker's log: the dashboard, or 'ray logs worker-*.err' on its "
                         "node); a MemoryError means its node has too little memory for the pack's models"),
        ("start_dies", "error: model worker model-worker-"),
    ],
)
def test_a_worker_that_fails_or_dies_while_starting_stops_the_run_at_once(tmp_path, examples, ray_join, fault, said):
    """With the default start-up timeout (30 min): the run stops at once (the command must
    end within 500 s), with the worker's own error (its type and message) or how it died,
    and exit 2; nothing rendered."""
    photo_batch(tmp_path, examples, 2, 0.5)
    code, stderr = _faulty_submit(ray_join, fault, tmp_path)
    assert code == 2, stderr[-3000:]
    assert _error_line(stderr).startswith(said), stderr[-3000:]
    if fault == "start_dies":
        assert re.match(r"error: model worker model-worker-\w+-cpu0 died while starting \(ActorDiedError: .+\); "
                        r"the worker logs .* often the OOM killer$", _error_line(stderr)), stderr[-3000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("table_sigterm", [False, True], ids=["alone", "sigterm-as-the-table-is-written"])
def test_workers_that_keep_dying_end_the_run_once_the_restart_budget_is_spent(tmp_path, examples, ray_join,
                                                                              table_sigterm):  # fmt: skip
    """Each worker dies on the third chunk it renders. One worker, --worker-restarts 1:
    the first death is replaced, the second ends the run at once (not a wait per chunk
    for a worker that never comes), exit 2, and the table says which rows ended and which
    did not. A SIGTERM that comes as that table is written (`ray job stop`) waits for it,
    and the run then exits as SIGTERM's (143), saying both."""
    photo_batch(tmp_path, examples, 6, 1.0)  # 25 frames a row: 4 chunks of at most 8
    code, stderr = _faulty_submit(ray_join, "third_chunk_kills", tmp_path, "--workers", "1", "--worker-restarts", "1",
                                  "--chunk-frames", "8", "--start-timeout", "300", table_sigterm=table_sigterm)
    assert code == (143 if table_sigterm else 2), stderr[-3000:]
    last = _error_line(stderr)
    assert re.match(r"error: the run stopped after \d of 6 jobs had ended: no model worker is left: 2 were lost, past "
                    r"the restart budget of 1 \(--worker-restarts 1 × 1 workers\); the last: model-worker-\w+-cpu1 "
                    r"died \(ActorDiedError: ", last), last
    came = " (SIGTERM came too, and waited for it)" if table_sigterm else ""
    assert (f"every row is in {tmp_path / 'out' / 'results.parquet'} (jobs that did not end say 'stopped')"
            f"{came}; run the same manifest again") in last
    assert stderr.count("another takes its place") == 1, stderr[-3000:]
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert sorted(r["job_id"] for r in rows) == [f"job{i}" for i in range(6)]
    for r in rows:
        if r["status"] == "ok":
            assert len(media.read_video(Path(r["output"]))[0]) == r["frames"] == 25
        elif r["error_kind"] == "worker_crash":  # a chunk both workers died on
            assert "its model worker died 2 times while rendering it" in r["error"], r
        else:
            assert (r["status"], r["error_kind"]) == ("failed", "stopped"), r
            assert "the run stopped before this job ended (no model worker is left: " in r["error"]
    assert any(r["error_kind"] == "stopped" for r in rows)


def test_a_chunk_call_that_hangs_is_stopped_and_its_worker_replaced(tmp_path, examples, ray_join):
    """A chunk of 3 frames hangs whichever worker renders it. Past --chunk-timeout (6 s:
    timed from when the worker starts the chunk; a chunk here takes under a second)
    its worker is stopped as wedged and replaced, the chunk is sent again, hangs the new
    worker too, and fails its job (`chunk_timeout`) the second time; the other rows
    render next to it, on the replacements."""
    photo_batch(tmp_path, examples, 1, 1.0)
    make_excerpt(examples / "lesson1.wav", tmp_path / "good.wav", seconds=1.12)  # 28 frames: chunks of 8, 8, 8, 4
    make_excerpt(examples / "lesson1.wav", tmp_path / "wedge.wav", seconds=1.08)  # 27 frames: the last chunk has 3
    photo = examples / "presenter.jpg"
    rows = [f"good1,{tmp_path / 'good.wav'},{photo}", f"wedge,{tmp_path / 'wedge.wav'},{photo}",
            f"good2,{tmp_path / 'good.wav'},{photo}"]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    code, stderr = _faulty_submit(ray_join, "wedge", tmp_path, "--workers", "1", "--chunk-frames", "8",
                                  "--chunk-timeout", "6", "--chunk-timeout-per-frame", "0")
    assert code == 1, stderr[-3000:]
    table = {r["job_id"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    wedge = table["wedge"]
    assert (wedge["status"], wedge["error_kind"], wedge["error_step"], wedge["attempts"]) == (
        "failed", "chunk_timeout", "render", 1), wedge
    assert wedge["error"].startswith("row 2 (job 'wedge'): chunk 3 (frames 24-26): rendering it took longer than "
                                     "its limit 2 times, and each time its model worker was stopped as wedged")
    assert "--chunk-timeout-per-frame" in wedge["error"]
    for job in ("good1", "good2"):
        assert table[job]["status"] == "ok", table[job]
        assert len(media.read_video(Path(table[job]["output"]))[0]) == table[job]["frames"] == 28
    assert len(re.findall(r"took \d+ s on a chunk of 3 frames, past its limit of 6 s .*stopped as wedged", stderr)) == 2
    assert stderr.count("chunk 3 (frames 24-26): its model worker was stopped for taking too long on it "
                        "(ActorDiedError); sending it again") == 1, stderr[-3000:]


@pytest.fixture(scope="module")
def gpu_without_cuda():
    """A `ray start` node that declares a GPU on this machine, where torch has no CUDA."""
    with RayStart() as cluster:
        cluster.head(num_cpus=2, num_gpus=1)
        yield cluster


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch cannot use CUDA")
def test_a_gpu_worker_that_cannot_use_its_gpu_stops_the_run_or_says_why_it_renders_on_the_cpu(
    gpu_without_cuda, tmp_path, examples
):
    """--device gpu: the worker Ray gave a GPU fails to start with the reason, and the run
    stops at once (exit 2), rendering nothing on the CPU. --device auto on the same node:
    it renders on the CPU, and every row's backend_note says why."""
    photo_batch(tmp_path, examples, 2, 0.5)
    base = [HEYGEM, "submit", str(tmp_path / "m.csv"), "--address", gpu_without_cuda.address,
            "--cache-dir", str(tmp_path / "cache"), "--engines", str(tmp_path / "engines")]
    proc = subprocess.run([*base, "-o", str(tmp_path / "gpu"), "--device", "gpu"], env=gpu_without_cuda.env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = _error_line(proc.stderr)
    assert re.match(r"error: the model worker on \S+ was given a GPU by Ray but cannot use it: ", last), last
    if torch.version.cuda is None:  # this machine: a CPU-only wheel
        assert f"this node's PyTorch {torch.__version__} is a CPU-only build (torch.version.cuda is None)" in last
    else:
        assert "CUDA is not available to PyTorch" in last
    assert not (tmp_path / "gpu").exists()

    proc = subprocess.run([*base, "-o", str(tmp_path / "auto"), "--device", "auto"], env=gpu_without_cuda.env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^workers: 1 × CPU, backend \w+ \(fp32\); gpu: ", proc.stderr, flags=re.M)
    for r in pq.read_table(tmp_path / "auto" / "results.parquet").to_pylist():
        assert r["status"] == "ok" and r["gpu"] is None, r
        assert r["backend_note"].startswith("gpu: ") and "; rendering on the CPU" in r["backend_note"], r


def _waiting_for_a_gpu(tmp_path: Path, examples: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """A `submit --device gpu` of three rows on a Ray without GPUs, once it says it waits for
    a model worker; and the file its stderr goes to."""
    photo_batch(tmp_path, examples, 3, 0.5)
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [HEYGEM, "submit", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out"), "--cache-dir",
             str(tmp_path / "cache"), "--device", "gpu", "--start-timeout", "600"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True, env=env,
        )
    deadline = time.monotonic() + 240
    while "waiting for model workers (" not in err.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(err.read_text()[-3000:])
        time.sleep(0.5)
    return proc, err


def test_ctrl_c_twice_stops_at_once_and_says_what_is_kept(tmp_path, examples, ray_join):
    """A second Ctrl-C stops the run at once, with no table written: it says so, and where the
    rows of jobs that ended are kept (not 'before any work': the run had begun)."""
    proc, err = _waiting_for_a_gpu(tmp_path, examples, ray_join)
    try:
        # Ctrl-C, and again every 20 ms until the command says it stopped: one lands while the
        # first stops the run (two sent at once arrive as one; a Ray wait may swallow one).
        deadline = time.monotonic() + 120
        while proc.poll() is None and "error: " not in err.read_text() and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.02)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = err.read_text()
    assert proc.returncode == 130, said[-3000:]
    out = tmp_path / "out"
    assert _error_line(said) == (
        f"error: stopped at once by Ctrl-C, with no results.parquet written; the rows of the jobs that ended are "
        f"kept in {out / '.heygem-results'} ('heygem-ray status {out}' reads them), and running the same command "
        "again renders only the rest"
    ), said[-3000:]
    assert not (out / "results.parquet").exists()


@pytest.mark.parametrize(("signum", "to_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "sigterm"])
def test_a_run_stopped_while_it_waits_for_workers_writes_its_table(tmp_path, examples, ray_join, signum, to_group):
    """`--device gpu` on the test process's Ray instance (no GPUs): the run waits for a GPU worker.
    Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (to the process, as `ray job
    stop` and `kill` send it) stops it: the table is written, every row 'stopped', exit 130 / 143."""
    proc, err = _waiting_for_a_gpu(tmp_path, examples, ray_join)
    try:
        deadline = time.monotonic() + 240
        # SIGUSR1 prints where each thread is, and the run goes on.
        os.kill(proc.pid, signal.SIGUSR1)
        # (the main thread's stack is dumped last, down to the script's <module> frame)
        while " in <module>" not in err.read_text().partition("Current thread")[2]:
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.2)
        assert re.search(r'File ".*heygem_ray/driver/loop\.py", line \d+ in _first_workers', err.read_text())
        assert proc.poll() is None
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # say where it is stuck
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(2)
            pytest.fail(f"still running 120 s after {signal.Signals(signum).name}:\n{err.read_text()[-8000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = err.read_text()
    assert proc.returncode == 128 + signum, said[-3000:]
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"
    table = tmp_path / "out" / "results.parquet"
    assert _error_line(said) == (
        f"error: the run stopped after 0 of 3 jobs had ended: it was sent {name}; every row is in {table} "
        "(jobs that did not end say 'stopped'); run the same manifest again to render the rest"
    ), said[-3000:]
    rows = pq.read_table(table).to_pylist()
    assert sorted(r["job_id"] for r in rows) == ["job0", "job1", "job2"]
    for r in rows:
        assert (r["status"], r["error_kind"]) == ("failed", "stopped"), r
        assert r["error"] == (f"row {r['row']} (job {r['job_id']!r}): the run stopped before this job ended (it was "
                              f"sent {name}); run the same manifest again to render it")


# A submit in a process of its own, where SIGTERM comes as its results table is being merged
# (``ray job stop`` at the end of a night of 100,000 rows, whose merge takes minutes).
_LATE_SIGTERM = """
import os, signal, sys
from heygem_ray.cli import app
from heygem_ray.driver import resume

merge = resume.write_merged

def merged_under_sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return merge(*args, **kwargs)

resume.write_merged = merged_under_sigterm
app(["submit", "m.csv", "-o", "out", "--cache-dir", "cache", "--engines", "engines"])
"""


def test_a_sigterm_as_the_table_is_merged_lets_it_be_written(tmp_path, examples, ray_join):
    """Before, Ray's own SIGTERM handler was back by then: the process exited 15 with no
    table (an earlier run's stayed in its place) and the night's run.json unwritten."""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.0)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    (tmp_path / "m.csv").write_text("job_id,audio,video\none,a.wav,p.jpg\n")
    proc = subprocess.run([sys.executable, "-c", _LATE_SIGTERM], cwd=tmp_path, env=ray_join, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIGTERM came as the run ended: its results table was written first" in proc.stderr
    (row,) = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert row["status"] == "ok"


# A submit in a process of its own, sent SIGTERM just after it kept the first row, once
# the other job's MP4 is published too (its task ended, its row not read yet).
_SIGTERM_AS_ONE_ENDS = """
import os, signal, sys, time
from pathlib import Path
from heygem_ray import metrics
from heygem_ray.cli import app
from heygem_ray.driver import resume

record, counted = resume.record, metrics.record_job

def kept_then_waited(output_dir, result):
    resume.record = record
    other = Path("out") / ("job1.mp4" if result.job_id == "job0" else "job0.mp4")
    deadline = time.monotonic() + 200
    while not other.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(8)  # its task returns (a task ends within a second of publishing; a loaded machine, longer)
    return record(output_dir, result)

def counted_then_stopped(result):
    metrics.record_job = counted
    counted(result)
    os.kill(os.getpid(), signal.SIGTERM)

resume.record, metrics.record_job = kept_then_waited, counted_then_stopped
app(["submit", "m.csv", "-o", "out", "--cache-dir", "cache", "--engines", "engines", "--max-jobs", "2"])
"""


def test_a_job_that_ended_as_the_run_was_stopped_keeps_its_row(tmp_path, examples, ray_join):
    """Before, a job whose task had ended but whose row the driver had not read yet said
    'stopped', though its MP4 was published: the next run rendered it again."""
    photo_batch(tmp_path, examples, 2, 1.0)
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_AS_ONE_ENDS], cwd=tmp_path, env=ray_join,
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert _error_line(proc.stderr) == (
        "error: the run stopped after all 2 jobs had ended: it was sent SIGTERM; every row is in out/results.parquet"
    ), proc.stderr[-3000:]
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert [(r["job_id"], r["status"]) for r in rows] == [("job0", "ok"), ("job1", "ok")], rows
    assert len(media.read_video(Path(rows[1]["output"]))[0]) == rows[1]["frames"] > 0


# A submit in a process of its own whose reads of one input file stop answering when the
# driver hashes it (as a network mount gone dead does: the read blocks in the kernel, for
# ever); its jobs read the file as usual.
_DEAD_MOUNT = """
import threading
from heygem_ray import identity
from heygem_ray.cli import app

identity.READ_STALL_S = 1.0
sha256 = identity._sha256

def hashed(f, read):
    if "stuck" in f.name:
        threading.Event().wait()
    return sha256(f, read)

identity._sha256 = hashed
app(["submit", "m.csv", "-o", "out", "--cache-dir", "cache", "--engines", "engines"])
"""


def test_an_input_whose_reads_stop_answering_does_not_hold_the_driver(tmp_path, examples, ray_join):
    """The driver reads each input to take its identity as its job starts; a read that never
    returned held its loop, and the run, for ever. Now the input gets no identity (a rerun
    renders its row again), the run says why, and goes on."""
    for name in ("a.wav", "stuck.wav"):
        make_excerpt(examples / "lesson1.wav", tmp_path / name, seconds=1.0)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    (tmp_path / "m.csv").write_text("job_id,audio,video\nstuck,stuck.wav,p.jpg\ngood,a.wav,p.jpg\n")
    env = {**ray_join, "XDG_CACHE_HOME": str(tmp_path / "home")}  # no digest kept from another test's run
    proc = subprocess.run([sys.executable, "-c", _DEAD_MOUNT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{tmp_path / 'stuck.wav'}: reading it moved no byte for 1 s" in proc.stderr
    rows = {r["job_id"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    assert rows["stuck"]["status"] == rows["good"]["status"] == "ok"
    assert rows["stuck"]["audio_identity"] == ""  # (and p.jpg's is not read again: the same folder)
    assert rows["good"]["audio_identity"] == rows["good"]["video_identity"] == ""


def test_a_sigterm_while_ray_starts_is_exit_143_saying_so(tmp_path, examples):
    """Ray's own SIGTERM handler is set as a local instance starts, before the run's: a
    SIGTERM then (a pod deleted as its job begins) ended the process with exit 15 and no
    word. Now exit 143 with a line."""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.0)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    (tmp_path / "m.csv").write_text("job_id,audio,video\none,a.wav,p.jpg\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local instance of its own
    proc = subprocess.Popen([HEYGEM, "submit", "m.csv", "-o", "out"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _children(proc.pid, b"gcs_server"):
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert err.rstrip().endswith("error: stopped by SIGTERM while Ray started, before any work"), err[-3000:]
    assert not (tmp_path / "out" / "results.parquet").exists()


def _children(pid: int, name: bytes) -> list[int]:
    """The pids of ``pid``'s children whose program is ``name``."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (proc / "stat").read_bytes()
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid and stat.split(b"(", 1)[1].startswith(name[:15]):
                found.append(int(proc.name))
    return found


def _own_terminal() -> None:
    """In the child: its stdin its controlling terminal, SIGHUP at its default (a runner
    under nohup ignores it, and an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_a_terminal_closed_under_a_run_stops_it_with_its_table_written(tmp_path, examples, ray_join):
    """The submit runs in a terminal of its own (a pseudo-terminal), which is closed once
    the first row is kept, as an ssh session that drops: the process gets SIGHUP, and its
    writes to the terminal fail (EIO). Before, SIGHUP's default ended it at once (exit 129,
    no table, no word, the lock left); now it stops as for SIGTERM, and what it prints
    after goes nowhere."""
    photo_batch(tmp_path, examples, 4, 1.0)
    master, terminal = os.openpty()
    proc = subprocess.Popen(
        [HEYGEM, "submit", "m.csv", "-o", "out", "--cache-dir", "cache", "--engines", "engines", "--max-jobs", "1"],
        cwd=tmp_path, env=ray_join, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
        preexec_fn=_own_terminal,
    )  # fmt: skip
    os.close(terminal)
    said = bytearray()

    def read() -> None:  # what it prints, until the terminal closes
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                said.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    parts = tmp_path / "out" / resume.PARTS_DIR
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and any(parts.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, said.decode(errors="replace")[-3000:]
    os.close(master)  # the terminal closes: SIGHUP
    assert proc.wait(timeout=300) == 129, said.decode(errors="replace")[-3000:]
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert rows[0]["status"] == "ok" and len(rows) == 4
    stopped = [r for r in rows if r["status"] != "ok"]
    assert stopped and all(r["error_kind"] == "stopped" and "SIGHUP (its terminal closed, or kill -HUP)" in r["error"]
                           for r in stopped), stopped  # fmt: skip
    assert not (tmp_path / "out" / ".heygem-run.lock").exists()


def test_a_reader_of_its_output_that_went_away_leaves_the_exit_status_the_runs(tmp_path, examples, ray_join):
    """`heygem-ray submit … | head -c 10`: the summary's print found no reader (EPIPE), and
    click turned that into exit 1, 'some row failed', with every row rendered."""
    photo_batch(tmp_path, examples, 1, 1.0)
    proc = subprocess.Popen([HEYGEM, "submit", "m.csv", "-o", "out", "--cache-dir", "cache", "--engines", "engines"],
                            cwd=tmp_path, env=ray_join, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader goes before the first line
    stderr = proc.communicate(timeout=300)[1].decode(errors="replace")
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    (row,) = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert row["status"] == "ok"


# A driver with a local Ray instance whose process group gets SIGHUP (a terminal that
# closes sends it to the whole group), its own handler set as a run's is; then a task.
_HANGUP_LOCAL = """
import os, signal, time
import ray
from heygem_ray.driver.connect import connect

signal.signal(signal.SIGHUP, lambda *args: None)  # the run's own (driver.stop), as a run sets it
connect(None)
os.killpg(os.getpgrp(), signal.SIGHUP)
time.sleep(2)

@ray.remote
def one():
    return 1

print("answered", ray.get(one.remote(), timeout=30))
ray.shutdown()
"""


def test_a_local_instance_lives_through_the_hangup_of_its_drivers_terminal(tmp_path):
    """The local instance's GCS and raylet are in the driver's process group: a closed
    terminal's SIGHUP killed them, and Ray ended the driver a minute later, as the stopped
    run wrote its table (the review of 2026-12-08). They now start with SIGHUP ignored."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", _HANGUP_LOCAL], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180, start_new_session=True)  # fmt: skip
    assert proc.returncode == 0 and "answered 1" in proc.stdout, proc.stderr[-3000:]
