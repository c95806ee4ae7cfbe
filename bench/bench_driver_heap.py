"""Benchmark: a bare Ray driver's memory over many tasks, with and without heygem_ray.heap.

    .venv/bin/python bench/bench_driver_heap.py [--tasks 3000]

No heygem-ray job runs here: each mode is a fresh Python process that starts a local Ray
and submits ``--tasks`` tasks of 50 ms the way ``run_jobs`` submits jobs (four in
flight; each gets a settings object, the worker actors' handles and a progress actor's
handle, and reports to the progress actor), takes each result and drops it, and reads
its own resident memory (RSS) every 500 tasks. So what grows is Ray's and the C heap's,
not rows kept by the program.

Modes: ``plain``; ``trim`` (``heap.release_free()`` every 2 s, as ``run_jobs`` does);
``trim+arenas`` (also ``heap.limit_arenas()`` before ``ray.init``, as the CLI does).

Writes bench/results/driver-heap-<host>.json and prints a table for BENCHMARKS.md.
"""

from __future__ import annotations

import platform

import record

MODES = ("plain", "trim", "trim+arenas")
EVERY = 500  # tasks between two readings

_CHILD = r"""
import gc, json, sys, time
from bench import record
from heygem_ray import heap
mode, tasks, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if "arenas" in mode:
    heap.limit_arenas()
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")

@ray.remote(num_cpus=0)
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k

@ray.remote(num_cpus=1)
def job(i, settings, workers, progress):
    time.sleep(0.05)
    progress.add.remote(25)
    return {"row": i, "message": "x" * 2000}

settings = {"render": "x" * 1000}
workers, progress = [Counter.remote() for _ in range(2)], Counter.remote()

def rss_mib():
    gc.collect()
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

next_trim = time.monotonic()

def trim():
    global next_trim
    if "trim" in mode and time.monotonic() >= next_trim:
        heap.release_free()
        next_trim = time.monotonic() + 2.0

readings = record.in_flight(
    lambda i: job.options(name="job", max_retries=0).remote(i, settings, workers, progress), tasks, every, rss_mib, trim
)
ray.shutdown()
print("RESULT " + json.dumps(readings))
"""


def run_mode(mode: str, tasks: int) -> dict:
    readings, wall = record.run_child(mode, _CHILD, mode, str(tasks), str(EVERY), unset=("RAY_ADDRESS", "MALLOC_ARENA_MAX"))
    # Growth per task from the second reading on (the first 500 tasks include start-up).
    (n0, m0), (n1, m1) = readings[1], readings[-1]
    return {
        "mode": mode,
        "tasks": tasks,
        "wall_s": round(wall, 1),
        "rss_mib": readings,
        "kib_per_task": round((m1 - m0) * 1024 / (n1 - n0), 2),
    }


def main() -> None:
    results = record.each_mode(__doc__, MODES, run_mode, EVERY)
    dest = record.write("driver-heap", results, libc="-".join(platform.libc_ver()))
    print(f"\nwritten to {dest}\n")
    plain = results[0]["kib_per_task"]
    print("| mode | RSS after 500 tasks | after the last | KiB per task | × plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        ratio = r["kib_per_task"] / plain if plain else float("nan")
        print(f"| {r['mode']} | {r['rss_mib'][0][1]} MiB | {r['rss_mib'][-1][1]} MiB | {r['kib_per_task']} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
