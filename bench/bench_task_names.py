"""Benchmark: Ray's dashboard agent over many tasks, with one task name or a name per task.

    .venv/bin/python bench/bench_task_names.py [--tasks 3000]

No heygem-ray job runs here. Each mode is a fresh Python process that starts a local Ray
(with its dashboard, as ``heygem-ray submit`` does) and submits ``--tasks`` tasks of 50 ms,
four in flight, while a thread reads Ray's Prometheus endpoint every 10 s as a Prometheus
server would. Every 500 tasks it reads the resident memory (RSS) of the node's dashboard
agent (``ray::DashboardAgent``, the one this process's Ray started). Reported: how much
the agent grew, as a ratio to one name, and its growth per task over the second half of
the tasks (whether it levels off).

Modes: ``one name`` (every task is ``job``, as ``run_jobs`` names them now) and ``a name
per task`` (``job:<k>``, as it named them before: one per manifest row).

Writes bench/results/task-names-<host>.json and prints a table for BENCHMARKS.md.
"""

from __future__ import annotations

import record

MODES = ("one name", "a name per task")
EVERY = 500  # tasks between two readings

_CHILD = r"""
import json, os, socket, sys, threading, time, urllib.request
from pathlib import Path
import ray
from bench import record

per_task, tasks, every = sys.argv[1] == "a name per task", int(sys.argv[2]), int(sys.argv[3])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
ray.init(address="local", num_cpus=2, logging_level="ERROR", _metrics_export_port=port)


def parent(pid):
    return int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])


def agent_rss_mib():
    # This Ray's agent: its parent is the raylet, whose parent is this process.
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(b"ray::DashboardAgent") and \
                    parent(parent(int(entry))) == os.getpid():
                return int(Path(f"/proc/{entry}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
        except (OSError, IndexError):
            continue
    raise SystemExit("no dashboard agent found under this process")


def scrape():
    while True:
        time.sleep(10)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()


@ray.remote(num_cpus=1)
def job(i):
    time.sleep(0.05)
    return i


threading.Thread(target=scrape, daemon=True).start()
ray.get(job.options(name="job").remote(-1))
time.sleep(5)  # the agent's start-up, before the first reading
readings = [[0, round(agent_rss_mib(), 1)]]
readings += record.in_flight(
    lambda i: job.options(name=f"job:{i}" if per_task else "job", max_retries=0).remote(i), tasks, every, agent_rss_mib
)
time.sleep(12)  # the last tasks' metrics reach the agent, and one more scrape
readings.append([tasks, round(agent_rss_mib(), 1)])
ray.shutdown()
print("RESULT " + json.dumps(readings))
"""


def run_mode(mode: str, tasks: int) -> dict:
    readings, wall = record.run_child(mode, _CHILD, mode, str(tasks), str(EVERY))
    m0, (nh, mh), (n1, m1) = readings[0][1], readings[len(readings) // 2], readings[-1]
    return {
        "mode": mode,
        "tasks": tasks,
        "wall_s": round(wall, 1),
        "agent_rss_mib": readings,
        "grew_mib": round(m1 - m0, 1),
        # The slope over the second half: whether it levels off.
        "kib_per_task_late": round((m1 - mh) * 1024 / (n1 - nh), 2),
    }


def main() -> None:
    results = record.each_mode(__doc__, MODES, run_mode, EVERY)
    dest = record.write("task-names", results)
    print(f"\nwritten to {dest}\n")
    base = results[0]["grew_mib"]
    print("| task names | agent RSS before | after the last task | grew | × one name | KiB per task, second half |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        ratio = r["grew_mib"] / base if base else float("nan")
        first, last = r["agent_rss_mib"][0][1], r["agent_rss_mib"][-1][1]
        print(f"| {r['mode']} | {first} MiB | {last} MiB | {r['grew_mib']} MiB | {ratio:.1f} | {r['kib_per_task_late']} |")


if __name__ == "__main__":
    main()
