"""Benchmark: peak memory against video length and manifest size, and the chunk pipeline's overlap.

    .venv/bin/python bench/bench_memory.py [--rows 10,1000] [--minutes 1,10] [--backend onnxruntime]

Each scenario is one `heygem-ray submit` on a fresh local Ray instance (the CLI, as a
user runs it). While it runs, every process in its tree is read from /proc four times
a second; a process's peak is its kernel high-water mark (VmHWM), so nothing between
two reads is missed. Processes are grouped by what they are: the driver (the CLI), job
tasks (Ray workers that ran a `job` task), model workers (the worker actors) and
the rest (Ray's own gcs_server, raylet and agents, idle workers, and the jobs' ffmpeg
processes); the largest of the rest is named.

Scenarios: one job of 1 and of 10 minutes of speech (the bundled lesson looped) on the
bundled 3-second reference video; 10 and 1000 rows of 1 second each on the bundled
photo. The long jobs' results also give the overlap figure: a job's wall time against
the sum and the maximum of its stage times (motion and render run on the model worker
while the job composes earlier chunks, so the sum can exceed the wall time).

The model workers run ``--backend`` (default onnxruntime: the recorded results ran it,
when ``auto`` still chose it for warp on a CPU; ``auto`` now picks PyTorch there).

Writes bench/results/memory-<host>.json and prints the tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import record

from heygem_ray import media
from heygem_ray.driver.calls import JOB_TASK

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
STEPS = ("audio_s", "analyze_s", "features_s", "motion_s", "render_s", "compose_s")
SAMPLE_S = 0.25
ROLES = ("driver", "job tasks", "model workers", "other")


def _proc(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, command line, peak RSS in KiB) of a live process, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    hwm = int(fields.get("VmHWM", "0 kB").split()[0])
    return int(fields["PPid"]), cmdline, hwm


def _tree(root: int) -> dict[int, tuple[str, int]]:
    """Every live process under ``root`` (itself included): pid → (command line, peak KiB)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _proc(int(entry))) is not None:
            procs[int(entry)] = info
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in procs:
            found[pid] = (procs[pid][1], procs[pid][2])
            frontier += [p for p, info in procs.items() if info[0] == pid]
    return found


def _program(cmd: str) -> str:
    """A short name for a process: ``ray::Name`` for Ray workers, the script for Python ones."""
    words = cmd.split()
    if not words:
        return "?"
    if words[0].startswith(("ray::", "ray-")):
        return words[0]
    program = Path(words[0]).name
    if program.startswith("python"):
        for i, word in enumerate(words[1:], 1):
            if word in ("-c", "-m"):
                return f"{program} {word} {words[i + 1] if word == '-m' and i + 1 < len(words) else ''}".strip()
            if not word.startswith("-"):
                return Path(word).name
    return program


def run_scenario(folder: Path, manifest: Path, name: str, backend: str) -> dict:
    out = folder / f"out-{name}"
    exe = str(Path(sys.executable).with_name("heygem-ray"))
    args = [exe, "submit", str(manifest), "-o", str(out), "--cache-dir", str(folder / "cache"),
            "--engines", str(folder / "engines"), "--backend", backend]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local instance
    t0 = time.perf_counter()
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peaks: dict[int, int] = {}  # pid → peak KiB
    roles: dict[int, str] = {}
    names: dict[int, str] = {}  # pid → program name
    driver_cmd = " ".join(args)
    while driver.poll() is None:
        for pid, (cmd, hwm) in _tree(driver.pid).items():
            if pid != driver.pid and cmd == driver_cmd:
                continue  # the driver forked it (Ray starting a process) and it has not exec'd yet: the driver's pages
            peaks[pid] = max(peaks.get(pid, 0), hwm)
            names[pid] = _program(cmd)
            if pid == driver.pid:
                roles[pid] = "driver"
            elif cmd.startswith(f"ray::{JOB_TASK}"):
                roles[pid] = "job tasks"
            elif cmd.startswith("ray::ActorWorker"):
                roles[pid] = "model workers"
            else:
                roles.setdefault(pid, "other")
        time.sleep(SAMPLE_S)
    wall = time.perf_counter() - t0
    stderr = driver.stderr.read().decode() if driver.stderr else ""
    if driver.returncode != 0:
        raise SystemExit(f"{name}: heygem-ray exited {driver.returncode}:\n{stderr[-3000:]}")
    rows = pq.read_table(out / "results.parquet").to_pylist()
    if any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"{name}: failed rows: {[r['error'] for r in rows if r['status'] != 'ok'][:3]}")
    by_role = {role: [peaks[p] for p in peaks if roles[p] == role] for role in ROLES}
    result = {
        "scenario": name,
        "rows": len(rows),
        "frames": sum(r["frames"] for r in rows),
        "video_s": sum(r["frames"] for r in rows) / 25.0,
        "wall_s": round(wall, 2),
        # The largest single process of each kind, and how many there were (MiB).
        "peak_mib": {role: round(max(v) / 1024, 1) if v else None for role, v in by_role.items()},
        "processes": {role: len(v) for role, v in by_role.items()},
        "largest_other": max((p for p in peaks if roles[p] == "other"), key=lambda p: peaks[p], default=None),
    }
    if result["largest_other"] is not None:
        result["largest_other"] = names[result["largest_other"]]
    # Ray's own processes by name (gcs_server, raylet, ray::DashboardAgent, …): the largest five, MiB.
    by_program: dict[str, int] = {}
    for pid in (p for p in peaks if roles[p] == "other"):
        by_program[names[pid]] = max(by_program.get(names[pid], 0), peaks[pid])
    top = sorted(by_program.items(), key=lambda kv: -kv[1])[:5]
    result["other_by_program"] = {name: round(kib / 1024, 1) for name, kib in top}
    if len(rows) == 1:
        r = rows[0]
        stages = {s[:-2]: r[s] or 0.0 for s in STEPS}
        result["overlap"] = {
            "job_wall_s": round(r["seconds"], 2),
            "stages_s": {k: round(v, 2) for k, v in stages.items()},
            "sum_of_stages_s": round(sum(stages.values()), 2),
            "max_stage_s": round(max(stages.values()), 2),
            "chunks": -(-r["frames"] // 128),
        }
    for mp4 in out.glob("*.mp4"):  # the outputs are not needed, and 1000 of them add up
        mp4.unlink()
    return result


def _speech(dst: Path, seconds: float) -> Path:
    """The bundled lesson, looped to ``seconds``."""
    src = EXAMPLES / "lesson1.wav"
    subprocess.run(
        [media.ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-t", str(seconds), str(dst)],
        check=True,
    )
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", default="1,10", help="lengths of the single-job scenarios")
    parser.add_argument("--rows", default="10,1000", help="row counts of the many-row scenarios")
    parser.add_argument("--backend", default="onnxruntime", help="the model workers' --backend")
    opts = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="heygem-bench-mem-") as tmp:
        folder = Path(tmp)
        for minutes in [float(m) for m in opts.minutes.split(",") if m]:
            audio = _speech(folder / f"speech-{minutes:g}min.wav", minutes * 60)
            manifest = folder / f"long-{minutes:g}.csv"
            manifest.write_text(f"job_id,audio,video\nlong,{audio},{EXAMPLES / 'presenter.mp4'}\n")
            results.append(run_scenario(folder, manifest, f"1 job, {minutes:g} min", opts.backend))
            print(json.dumps(results[-1]), flush=True)
        short = _speech(folder / "short.wav", 1.0)
        for rows in [int(n) for n in opts.rows.split(",") if n]:
            manifest = folder / f"rows-{rows}.csv"
            lines = [f"row{i},{short},{EXAMPLES / 'presenter.jpg'}" for i in range(rows)]
            manifest.write_text("job_id,audio,video\n" + "\n".join(lines) + "\n")
            results.append(run_scenario(folder, manifest, f"{rows} rows of 1 s", opts.backend))
            print(json.dumps(results[-1]), flush=True)
    dest = record.write("memory", results)
    print(f"\nwritten to {dest}\n")
    print("| scenario | video | wall | driver | job task (largest) | model worker (largest) | largest other |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        p = r["peak_mib"]
        print(
            f"| {r['scenario']} | {r['video_s']:.0f} s | {r['wall_s']:.0f} s | {p['driver']} MiB | {p['job tasks']} MiB "
            f"| {p['model workers']} MiB | {p['other']} MiB ({r['largest_other']}) |"
        )
    print("\n| scenario | Ray's processes and the rest, largest first (peak) |")
    print("| --- | --- |")
    for r in results:
        print(f"| {r['scenario']} | " + ", ".join(f"{n} {m} MiB" for n, m in r["other_by_program"].items()) + " |")
    print("\n| job | chunks | job wall | sum of stages | max stage | sum / wall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        if (o := r.get("overlap")) is not None:
            ratio = o["sum_of_stages_s"] / o["job_wall_s"]
            print(f"| {r['scenario']} | {o['chunks']} | {o['job_wall_s']} s | {o['sum_of_stages_s']} s | {o['max_stage_s']} s | {ratio:.2f} |")


if __name__ == "__main__":
    main()
