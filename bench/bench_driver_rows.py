"""Benchmark: what the driver's loop spends on each row as its job starts and ends.

    .venv/bin/python bench/bench_driver_rows.py [--rows 20000] [--inputs 5000]

The driver runs every job's start and end on one thread, between its waits on Ray: time
spent there is time no job is started or ended. Two costs, each side by side in one run:

* keeping a finished row (``resume.record``) in an output folder that holds ``--rows`` MP4s:
  as now (a row whose one attempt published its MP4: its part file only), against the
  same with the folder listed for partials (what every row did before, and a row one of
  whose attempts was killed still does);
* taking an input's identity (``identity.input_identity``) as its job starts, for
  ``--inputs`` local files whose digests are cached (a rerun's case): watched on the
  reader thread as now, against read in the caller's thread (``identity.file_digest``,
  what it was before: a read that stopped answering held the loop for ever).

Writes bench/results/driver-rows-<host>.json and prints a table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.record import write  # noqa: E402

ROWS_TIMED = 200  # rows kept each way (the folder listing grows with the folder, not with these)


def keeping(rows: int, folder: Path) -> dict[str, Any]:
    from heygem_ray.driver import resume
    from heygem_ray.manifest import Job
    from heygem_ray.results import JobResult

    out = folder / "out"
    out.mkdir(parents=True)
    for i in range(rows):
        (out / f"lesson-{i:05d}.mp4").write_bytes(b"")

    def kept(job_id: str, listed: bool) -> None:
        job = Job(row=1, job_id=job_id, audio=folder / "a.wav", video=folder / "p.jpg", output=out / f"{job_id}.mp4")
        result = JobResult.for_job(job, "warp")
        result.status = "ok"
        resume.record(out, result)
        if listed:
            resume.remove_partials([out / f"{job_id}.mp4"])

    times = {}
    for listed in (False, True):
        t0 = time.perf_counter()
        for i in range(ROWS_TIMED):
            kept(f"lesson-{i:05d}", listed)
        times[listed] = (time.perf_counter() - t0) / ROWS_TIMED
    return {"what": "keeping a finished row", "folder_mp4s": rows, "now_ms": times[False] * 1e3,
            "before_ms": times[True] * 1e3, "ratio": times[True] / times[False],
            "night_before_s": times[True] * rows, "night_now_s": times[False] * rows}  # fmt: skip


def identities(inputs: int, folder: Path) -> dict[str, Any]:
    os.environ["XDG_CACHE_HOME"] = str(folder / "home")
    from heygem_ray import identity

    files = []
    for i in range(inputs):
        path = folder / "media" / f"lesson-{i:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096))
        files.append(path)
    for path in files:
        identity.input_identity(path)  # digests cached, as on a rerun
    t0 = time.perf_counter()
    watched = [identity.input_identity(p) for p in files]
    now = (time.perf_counter() - t0) / inputs
    t0 = time.perf_counter()
    direct = [f"sha256:{identity.file_digest(p)}" for p in files]
    before = (time.perf_counter() - t0) / inputs
    assert watched == direct
    return {"what": "an input's identity (digest cached)", "inputs": inputs, "now_ms": now * 1e3,
            "before_ms": before * 1e3, "ratio": before / now}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--inputs", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-driver-rows-") as tmp:
        rows = [keeping(args.rows, Path(tmp) / "k"), identities(args.inputs, Path(tmp) / "i")]
    print("wrote", write("driver-rows", rows))
    print("\n| on the driver's loop, a row | now | before | before ÷ now |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['what']} | {r['now_ms']:.3f} ms | {r['before_ms']:.3f} ms | {r['ratio']:.2f}× |")
    k = rows[0]
    print(f"\na night of {k['folder_mp4s']:,} rows into one folder: {k['night_before_s']:.0f} s of keeping rows before, "
          f"{k['night_now_s']:.0f} s now")


if __name__ == "__main__":
    main()
