"""A node short of memory is said to be (``out_of_memory``): the row names what ran out, where
and what to lower. It is never called a bug in heygem-ray (``internal``), an encoder's fault
(``encode``), nor a take that does not decode (``unreadable_media``).

Memory runs out for real here: a job run under an address-space limit (``RLIMIT_AS``) a little
above what its process holds, where NumPy, OpenCV and PyTorch allocations fail as on a node
whose memory is spent; an encoder started with too little memory for a 4K frame; and a
decoding ffmpeg killed with SIGKILL from outside, as the kernel's out-of-memory killer does
(which is told from another's SIGKILL by the node's count of OOM kills).
"""

from __future__ import annotations

import os
import platform
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from heygem_ray import media
from heygem_ray.errors import InputError
from heygem_ray.media.ffmpeg import oom_kills, outside_failure
from tests.helpers.footage import lecture_clip
from tests.helpers.media import make_excerpt

# One job of a 1-s 4K take, its address space limited to what the process holds once its
# model is loaded plus ``argv[2]`` MiB, the template cache ``argv[3]`` (one made under the
# limit, or one made before it).
JOB = """
import resource, sys
from pathlib import Path
from heygem_ray.config import RenderConfig
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.worker import ModelWorker

folder, headroom, cache = Path(sys.argv[1]), int(sys.argv[2]) * 2**20, Path(sys.argv[3])
cfg = RenderConfig(backend="pytorch")
service = InProcessService(ModelWorker(cfg, engines_dir=folder / "engines"))
if headroom:
    held = int(next(x for x in open("/proc/self/status") if x.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (held + headroom, held + headroom))
job = Job(row=1, job_id=f"take-{sys.argv[2]}", audio=folder / "speech.wav", video=folder / "take.mp4",
          output=folder / "out" / f"take-{sys.argv[2]}.mp4")
r = render_job(job, cfg, cache, service)
print("ROW", r.status, r.error_kind, r.error_step, r.error or "")
"""


def _job(folder: Path, headroom_mib: int, cache: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", JOB, str(folder), str(headroom_mib), str(cache)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).parents[1])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [line.split(maxsplit=4) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    return row[1:]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, examples) -> Path:
    folder = tmp_path_factory.mktemp("memory")
    lecture_clip(folder / "take.mp4", size=(3840, 2160), face=200, seconds=1.0)
    make_excerpt(examples / "lesson1.wav", folder / "speech.wav", seconds=1.0)
    return folder


@pytest.mark.parametrize("cache", ["analysed under the limit", "analysed before"])
def test_a_job_that_runs_out_of_memory_says_so_in_its_step(folder, cache):
    """Under less and less memory (the analysis of a 4K take, the model and the encoder fail
    in turn as it shrinks), each row either renders or is ``out_of_memory``, naming the node,
    the step and the library's words and what to lower; a failed one leaves no MP4."""
    before = folder / "cache-before"
    if cache == "analysed before" and not before.exists():
        assert _job(folder, 0, before)[0] == "ok"
    rows = {}
    for headroom in (300, 150, 60):
        where = before if cache == "analysed before" else folder / f"cache-{headroom}"
        rows[headroom] = _job(folder, headroom, where)
        output = folder / "out" / f"take-{headroom}.mp4"
        status, kind, step, error = (rows[headroom] + [""])[:4]
        if status == "ok":
            assert output.is_file()
            output.unlink()
            continue
        assert (status, kind) == ("failed", "out_of_memory"), rows[headroom]
        assert error.startswith(f"row 1 (job 'take-{headroom}'): ")
        assert f"ran out of memory on node {platform.node()} in step {step} (" in error or (
            step == "compose" and f": ffmpeg ran out of memory on node {platform.node()} (x264 [error]: malloc" in error
        ), error
        assert "'ray start --num-cpus N'" in error and "--max-resolution 1080" in error and "bug" not in error
        assert not output.exists() and not list((folder / "out").glob(".*.part.mp4"))
    assert rows[60][0] == "failed", rows


def test_an_encoder_short_of_memory_is_told_from_a_failed_encode(tmp_path):
    """x264 given too little memory for a 4K frame says so in its own words ("malloc of size
    … failed", lines before ffmpeg's last), which are found and quoted; an encoder that fails
    for another reason is not taken for it."""
    out = tmp_path / "out.mp4"
    encode = [media.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=25", "-frames:v",
              "5", "-c:v", "libx264", "-threads", "2", "-y", str(out)]  # fmt: skip

    def little_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (600 * 2**20, 600 * 2**20))

    short = subprocess.run(encode, capture_output=True, preexec_fn=little_memory)
    assert short.returncode != 0
    found = outside_failure("encoding out.mp4", short.returncode, short.stderr.decode())
    assert isinstance(found, InputError) and found.kind == "out_of_memory", short.stderr.decode()
    assert found.message.startswith(f"encoding out.mp4: ffmpeg ran out of memory on node {platform.node()} "
                                    "(x264 [error]: malloc of size ")
    assert "--num-cpus" in found.message
    bad = subprocess.run([*encode[:-3], "-preset", "no-such-preset", "-y", str(out)], capture_output=True)
    assert bad.returncode != 0 and outside_failure("encoding out.mp4", bad.returncode, bad.stderr.decode()) is None


def _children() -> set[int]:
    return {int(pid) for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()}  # fmt: skip


def test_a_decoder_killed_from_outside_is_said_to_be_stopped_not_out_of_memory_nor_unreadable(folder):
    """A decoding ffmpeg ended by SIGKILL from outside while the node counted no OOM kill
    (the kernel's out-of-memory killer counts each in /proc/vmstat) fails the reference as
    stopped by something else, naming the signal and the node: not out of memory (the old
    guess from the signal alone), not an unreadable take. One this process stops itself (a
    reader that stops early) is nothing of the kind."""
    info = media.probe_video(folder / "take.mp4")
    before = _children()
    kills = oom_kills()
    assert kills is not None  # Linux 4.13 on: the test's premise
    frames = media.iter_frames(info, pixel_format="yuv420p")
    next(frames)
    (decoder,) = _children() - before
    os.kill(decoder, signal.SIGKILL)
    with pytest.raises(InputError) as raised:
        for _ in frames:
            pass
    assert oom_kills() == kills  # (no OOM kill anywhere on this machine meanwhile)
    assert raised.value.kind == "stopped"
    assert raised.value.message.startswith(f"decoding the reference {info.path}: ffmpeg was killed (SIGKILL) on node ")
    assert "not by this job nor by the kernel's out-of-memory killer" in raised.value.message
    assert raised.value.message.endswith("run the same manifest again to render this row")
    stopped = media.iter_frames(info, pixel_format="yuv420p")
    next(stopped)
    stopped.close()  # killed by its own reader: no error at all


@pytest.mark.parametrize("counted", [True, None])
def test_a_sigkill_is_out_of_memory_where_the_node_counted_an_oom_kill_or_cannot_say(counted):
    """A SIGKILL while the node's OOM-kill count rose is the OOM killer's, said so; where
    the count cannot be read (no /proc/vmstat), the signal alone is taken for it, as the
    kernel's killer is what sends it unasked."""
    found = outside_failure("encoding out.mp4", -signal.SIGKILL, "", counted)
    assert found is not None and found.kind == "out_of_memory"
    assert found.message.startswith(f"encoding out.mp4: ffmpeg was killed (SIGKILL) on node {platform.node()}, ")
    said = "the node counted an OOM kill meanwhile" if counted else "'dmesg' on the node says whether it did"
    assert said in found.message
    assert outside_failure("encoding out.mp4", None, "", True) is None  # killed by this process: nothing to say


def test_a_node_ray_finds_short_of_memory_ends_the_run_saying_so(tmp_path, examples):
    """Ray's memory monitor, its threshold set below what this machine uses already, stops
    whatever of the run it finds (the router, a model worker, a job's task; which one
    varies): the run ends by itself with exit 1 or 2, saying that memory ran out, without a
    traceback; a results table, where one is written, has no row that claims more."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(meminfo[k].split()[0]) for k in ("MemTotal", "MemAvailable"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_memory_usage_threshold": f"{(total - available) / total / 2:.4f}", "RAY_memory_monitor_refresh_ms": "100",
    }  # fmt: skip
    (tmp_path / "m.csv").write_text(f"job_id,audio,video\na,{examples / 'lesson1.wav'},{examples / 'presenter.mp4'}\n")
    exe = Path(sys.executable).with_name("heygem-ray")
    proc = subprocess.run([str(exe), "submit", "m.csv", "--output-dir", "out", "--cache-dir", "cache"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    said = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2) and "Traceback" not in said and "memory" in said, said[-3000:]
    table = tmp_path / "out" / "results.parquet"
    if table.exists():
        rows = pq.read_table(table).to_pylist()
        assert [r["status"] for r in rows] != ["ok"] and all(r["error"] for r in rows), rows
