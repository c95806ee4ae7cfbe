"""A job that stops progressing does not hold the run: its task is stopped and tried once
more, and a job that stalls again fails `stalled`, naming its step, while the other rows
render (real Ray, a job task's process really paused with SIGSTOP while it analyses a
reference and holds that template's lock: from outside, what a read stuck on a dead network
mount looks like, a process that moves nothing). The job waiting on that lock meanwhile is
not stalled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from heygem_ray import media
from tests.helpers.footage import lecture_clip
from tests.helpers.media import HANG_MARK, hanging_ffmpeg, make_excerpt
from tests.helpers.procs import PROCESSES

# The run, in its own process and its own local Ray (3 CPUs: three jobs at a time beside the
# model worker; its job tasks carry a token, to tell them from any other Ray's on the
# machine). Once one job task builds a template (its frame store open: it holds the
# template's lock) while another waits on that lock (the lock file open, no store), a
# thread pauses the builder; with a fifth argument "every", it pauses every builder it
# finds, waiting or not. Prints the paused and the waiting pid, whether the paused ones
# still exist at the end, and one ROW line per table row.
RUN = PROCESSES + """
import json, logging, os, signal, sys, threading, time
from pathlib import Path
import ray
from heygem_ray import RenderConfig, RunConfig, submit

folder, token, timeout = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
every = sys.argv[4:] == ["every"]
ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level=logging.WARNING,
         runtime_env={"env_vars": {TOKEN_VAR: token}})


def open_files(pid):
    try:
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return []


paused = []


def pause_one():
    while True:
        files = {pid: open_files(pid) for pid in processes("ray::job", token)}
        builders = [p for p, names in files.items() if any(n.endswith(".tmp/frames.bin") for n in names)
                    and p not in paused]
        waiters = [p for p, names in files.items() if p not in builders
                   and any("/cache/" in n and n.endswith(".lock") for n in names)]
        if builders and (waiters or every):
            os.kill(builders[0], signal.SIGSTOP)
            paused.append(builders[0])
            print("PAUSED", builders[0], "WAITING", waiters[0] if waiters else "-", flush=True)
            if not every:
                return
        time.sleep(0.005)


# Pauses the model worker for `seconds` once a job composes (each chunk it composes comes
# from that worker), then lets it go on. The worker is this run's one Ray process with
# PyTorch loaded (its title follows its method; job tasks and the router never load it).
def hold_worker(seconds):
    while not list((folder / "out").glob(".*.part.mp4")):
        time.sleep(0.005)
    (worker,) = [p for p in processes("ray::", token) if "libtorch_cpu" in Path(f"/proc/{p}/maps").read_text()]
    os.kill(worker, signal.SIGSTOP)
    print("HELD", worker, flush=True)
    time.sleep(seconds)
    os.kill(worker, signal.SIGCONT)


threading.Thread(target=pause_one, daemon=True).start()
cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines",
                render=RenderConfig(chunk_frames=8), workers=1, job_stall_timeout_s=timeout)
start = time.monotonic()
summary = submit(folder / "m.csv", cfg)
print("SECONDS", round(time.monotonic() - start, 1), flush=True)



def state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "gone"


for pid in paused:  # killed on its node: gone (or a zombie) within seconds
    deadline = time.monotonic() + 20
    while state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    print("PAUSED_END", pid, state(pid), flush=True)
import pyarrow.parquet as pq
for r in pq.read_table(summary.results_path).to_pylist():
    print("ROW", json.dumps({k: r[k] for k in ("job_id", "status", "error_kind", "error_step", "error", "frames",
                                              "output", "seconds", "attempts")}), flush=True)
ray.shutdown()
"""


def _run(folder: Path, timeout: float, *extra: str) -> tuple[str, dict[str, dict]]:
    proc = subprocess.run([sys.executable, "-c", RUN, str(folder), uuid.uuid4().hex, str(timeout), *extra],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    said = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, said
    assert "PAUSED " in proc.stdout, said
    # The paused processes were stopped for good (killed; a zombie at most until Ray reaps them).
    ends = [line.split() for line in proc.stdout.splitlines() if line.startswith("PAUSED_END")]
    assert ends and all(end[2] in ("gone", "Z") for end in ends), said
    table = {r["job_id"]: r for r in (json.loads(line[4:]) for line in proc.stdout.splitlines()
                                      if line.startswith("ROW "))}  # fmt: skip
    return said, table


def test_a_job_that_stops_moving_is_stopped_and_tried_again_and_the_run_goes_on(tmp_path, examples):
    speech = make_excerpt(examples / "lesson1.wav", tmp_path / "speech.wav", seconds=3.0)
    # A reference that takes seconds to analyse, so that another job comes to wait on its lock.
    clip = lecture_clip(tmp_path / "lecture.mp4", size=(1920, 1080), face=160, seconds=8.0)
    rows = [f"job{i},{speech},{clip.path}" for i in range(3)]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    said, table = _run(tmp_path, 4)
    # The paused job's task was stopped, said so, and its second attempt rendered; the job
    # that waited on the template's lock while it was held (past the timeout: a wait, not a
    # stall) and the third built the template once it was free, and rendered.
    (again,) = [r for r in table.values() if r["attempts"] == 2]
    assert f"(job '{again['job_id']}'): made no progress for" in said and "in step analyze" in said, said
    assert "(attempt 1); trying it again" in said, said
    assert len(table) == 3 and all(r["status"] == "ok" for r in table.values()), said
    for r in table.values():
        assert len(media.read_video(Path(r["output"]))[0]) == r["frames"] == 75, r


def test_a_job_that_stalls_at_each_attempt_fails_stalled_naming_its_step(tmp_path, examples):
    speech = make_excerpt(examples / "lesson1.wav", tmp_path / "speech.wav", seconds=3.0)
    clip = lecture_clip(tmp_path / "lecture.mp4", size=(1920, 1080), face=160, seconds=4.0)
    (tmp_path / "m.csv").write_text(f"job_id,audio,video\nstuck,{speech},{clip.path}\n")
    said, table = _run(tmp_path, 4, "every")
    row = table["stuck"]
    assert (row["status"], row["error_kind"], row["error_step"], row["attempts"]) == ("failed", "stalled",
                                                                                      "analyze", 2), said
    assert row["error"].startswith("row 1 (job 'stuck'): made no progress for "), row
    assert "(--job-stall-timeout 4), as at each of its 2 attempts" in row["error"] and "in step analyze" in row["error"]
    assert said.count("PAUSED_END") == 2, said
    assert not (tmp_path / "out" / "stuck.mp4").exists()


def test_a_job_that_waits_on_its_model_worker_or_works_is_not_stalled(tmp_path, examples):
    """A run of the bundled talking video (decoding, analysis, chunks that wait on the one
    model worker, compose) under a stall timeout of a few seconds, its model worker paused
    for twice that once the jobs compose (a GPU busy with other runs' chunks, or slow):
    the jobs wait on it, their rows render."""
    speech = make_excerpt(examples / "lesson1.wav", tmp_path / "speech.wav", seconds=8.0)
    rows = [f"job{i},{speech},{examples / 'presenter.mp4'}" for i in range(2)]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    timeout, hold = 5, 12
    run = RUN.replace("threading.Thread(target=pause_one, daemon=True).start()",
                      f"threading.Thread(target=hold_worker, args=({hold},), daemon=True).start()")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", run, str(tmp_path), uuid.uuid4().hex, str(timeout)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    said = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, said
    assert "HELD " in proc.stdout, said
    table = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    assert [r["status"] for r in table] == ["ok", "ok"], said
    # Each job waited through the pause for its chunks.
    assert min(r["seconds"] for r in table) > hold, proc.stdout


# A run joined to the test process's Ray instance (RAY_ADDRESS), whose job tasks use the
# ffmpeg that hangs on a file named with HANG_MARK and take ffmpeg as stuck after 2 s.
FFMPEG_STALLS = """
import logging, os, sys
from pathlib import Path
import ray
from heygem_ray import RenderConfig, RunConfig, submit


def short_stall():
    from heygem_ray.media import ffmpeg
    ffmpeg.STALL_S = 2.0


folder = Path(sys.argv[1])
ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING,
         runtime_env={"env_vars": {"HEYGEM_FFMPEG": sys.argv[2]}, "worker_process_setup_hook": short_stall})
cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines")
summary = submit(folder / "m.csv", cfg)
import pyarrow.parquet as pq
for r in pq.read_table(summary.results_path).to_pylist():
    print("ROW", r["job_id"], r["status"], r["attempts"], r["error_kind"], r["error_step"], r["error"] or "")
ray.shutdown()
"""


def test_a_job_whose_ffmpeg_stalls_is_tried_once_more_then_fails_stalled(tmp_path, examples, ray_join):
    """A reference whose decoder hands over nothing (a read stuck on a dead mount, every
    time): its ffmpeg is stopped, the job is tried once more, stalls again, and its row
    fails `stalled` in step analyze after 2 attempts; the row beside it renders at once."""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.0)
    # Other bytes than the good row's reference (whose template it would find cached).
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(examples / "presenter.mp4"), "-t", "2",
                    str(tmp_path / f"{HANG_MARK}.mp4")], check=True)  # fmt: skip
    rows = [f"stuck,a.wav,{HANG_MARK}.mp4", f"good,a.wav,{examples / 'presenter.mp4'}"]
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    proc = subprocess.run([sys.executable, "-c", FFMPEG_STALLS, str(tmp_path), str(hanging_ffmpeg(tmp_path))],
                          capture_output=True, text=True, timeout=300, env=ray_join)  # fmt: skip
    said = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, said
    rows_seen = {parts[1]: parts[2:] for parts in (line.split(maxsplit=6) for line in proc.stdout.splitlines()
                                                   if line.startswith("ROW "))}  # fmt: skip
    assert rows_seen["good"][:2] == ["ok", "1"], said
    status, attempts, kind, step, error = (rows_seen["stuck"] + [""] * 5)[:5]
    assert (status, attempts, kind, step) == ("failed", "2", "stalled", "analyze"), (rows_seen, said)
    assert f"decoding the reference {tmp_path / HANG_MARK}.mp4: ffmpeg handed over no data" in error, error
    assert "(attempt 1); trying it again" in said, said


# A run joined to the test process's Ray instance whose job tasks use an ffmpeg that, where
# it counts a take's frames (its command asks for -progress), reads the take at half its
# speed: a long 4K phone take counted on a busy node, in seconds rather than minutes.
COUNTS_SLOWLY = """
import logging, os, sys
from pathlib import Path
import ray
from heygem_ray import RenderConfig, RunConfig, submit

folder = Path(sys.argv[1])
ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING,
         runtime_env={"env_vars": {"HEYGEM_FFMPEG": sys.argv[2]}})
cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines",
                job_stall_timeout_s=float(sys.argv[3]))
summary = submit(folder / "m.csv", cfg)
import pyarrow.parquet as pq
for r in pq.read_table(summary.results_path).to_pylist():
    print("ROW", r["job_id"], r["status"], r["attempts"], r["error_kind"], r["error"] or "")
ray.shutdown()
"""


def test_a_variable_rate_take_whose_count_outlasts_the_stall_timeout_is_not_stalled(tmp_path, examples, ray_join):
    """A phone's variable-rate take has its frames counted by decoding it whole before
    analysis; that count said nothing while it ran, and one longer than
    --job-stall-timeout was stopped as a stalled job, twice, its row failed `stalled`."""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.0)
    take = tmp_path / "phone.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(examples / "presenter.mp4"), "-filter_complex",
                    "[0:v]trim=0:2,fps=15,setpts=PTS-STARTPTS[a];[0:v]trim=2:4,fps=30,setpts=PTS-STARTPTS[b];"
                    "[a][b]concat=n=2:v=1[v]", "-map", "[v]", "-fps_mode", "vfr", str(take)], check=True)  # fmt: skip
    slow = tmp_path / "ffmpeg"
    slow.write_text(f'#!/bin/sh\ncase "$*" in *-progress*) exec "{media.ffmpeg_exe()}" -readrate 0.5 "$@";; esac\n'
                    f'exec "{media.ffmpeg_exe()}" "$@"\n')  # fmt: skip
    slow.chmod(0o755)
    (tmp_path / "m.csv").write_text("job_id,audio,video\nphone,a.wav,phone.mp4\n")
    proc = subprocess.run([sys.executable, "-c", COUNTS_SLOWLY, str(tmp_path), str(slow), "3"], capture_output=True,
                          text=True, timeout=300, env=ray_join)  # fmt: skip
    said = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, said
    (row,) = [line.split(maxsplit=5)[1:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    assert row[:3] == ["phone", "ok", "1"], said


# Analyses a reference into a template cache, as `preview` does: holds its template's lock.
ANALYSES = """
import sys
from pathlib import Path
from heygem_ray.analyze import analyze
from heygem_ray.config import DetectorConfig
from heygem_ray.packs import get_pack

analyze(Path(sys.argv[1]), get_pack("warp").geometry, DetectorConfig(), Path(sys.argv[2]))
"""

# A run joined to the test process's Ray instance whose job tasks take a lock whose file
# has not changed for 2 s as held by a process that is not running (storage.LOCK_QUIET_S).
QUIET_LOCK = """
import logging, os, sys
from pathlib import Path
import ray
from heygem_ray import RenderConfig, RunConfig, submit


def quiet_soon():
    from heygem_ray import storage
    storage.LOCK_QUIET_S = 2.0


folder = Path(sys.argv[1])
ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING,
         runtime_env={"worker_process_setup_hook": quiet_soon})
cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines",
                job_stall_timeout_s=4)
summary = submit(folder / "m.csv", cfg)
import pyarrow.parquet as pq
for r in pq.read_table(summary.results_path).to_pylist():
    print("ROW", r["job_id"], r["status"], r["attempts"], r["error_kind"], r["error_step"], r["error"] or "")
ray.shutdown()
"""


def test_a_job_waiting_on_a_template_lock_whose_holder_is_paused_fails_stalled_naming_it(
        tmp_path, examples, ray_join):  # fmt: skip
    """A `preview` paused with Ctrl-Z while it analyses a reference holds that template's
    lock: a job of the night on the same reference waited for it for ever, counted as
    waiting. Once the lock's file has not changed for LOCK_QUIET_S, the wait is the job's:
    it is stopped as stalled, tried once more, and its row fails `stalled`, naming the lock
    and its holder; the holder is left as it was (paused: its owner's to stop)."""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.0)
    clip = lecture_clip(tmp_path / "lecture.mp4", size=(1920, 1080), face=160, seconds=8.0)
    (tmp_path / "m.csv").write_text(f"job_id,audio,video\nwaits,a.wav,{clip.path}\n")
    holder = subprocess.Popen([sys.executable, "-c", ANALYSES, str(clip.path), str(tmp_path / "cache")])
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "cache").glob(".*.tmp/frames.bin")):
            assert holder.poll() is None and time.monotonic() < deadline, "the analysis ended before it was paused"
            time.sleep(0.01)
        holder.send_signal(signal.SIGSTOP)
        proc = subprocess.run([sys.executable, "-c", QUIET_LOCK, str(tmp_path)], capture_output=True, text=True,
                              timeout=300, env=ray_join)  # fmt: skip
        assert Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "T"  # still paused
    finally:
        holder.kill()
        holder.wait()
    said = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, said
    (row,) = [line.split(maxsplit=6) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    assert row[1:6] == ["waits", "failed", "2", "stalled", "analyze"], said
    error = row[6]
    assert error.startswith("row 1 (job 'waits'): made no progress for "), error
    (lock,) = (tmp_path / "cache").glob("*.lock")
    assert f"it waited for the lock {lock}, held by pid {holder.pid} on " in error, error
    assert "which was not seen running for 2 s and more (a process paused, with Ctrl-Z say" in error, error
    assert error.endswith("its task was stopped. Then run the same manifest again"), error
