"""Benchmark: writing the results table of a large manifest.

    .venv/bin/python bench/bench_table.py [--rows 100000] [--repeat 3]

At the end of a run the driver writes ``results.parquet``, a batch of rows at a time
(``results.write_table``), each row from its ``JobResult`` (``JobResult.to_row``). That
used to start from ``dataclasses.asdict``, which copies every field deeply; it now reads
the fields as they are. Both are timed here side by side on ``--rows`` failed rows with
an extra manifest column (what a 100 000-row manifest on one missing file leaves), best
of ``--repeat``, interleaved; both tables must read back equal. Writes
bench/results/table-<host>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import record

sys.path.insert(0, str(record.REPO))
from heygem_ray.results import JobResult, write_table  # noqa: E402


def asdict_row(self: JobResult) -> dict[str, Any]:
    """``to_row`` as it was: ``dataclasses.asdict``, then the extra columns as text."""
    row = dataclasses.asdict(self)
    extra = row.pop("extra")
    return {**row, **{k: (None if v is None else str(v)) for k, v in extra.items()}}


def rows(n: int) -> list[JobResult]:
    made = []
    for i in range(1, n + 1):
        r = JobResult(job_id=f"lesson-{i}", row=i, audio="/data/gone.wav", video="/data/presenter.mp4",
                      output=f"/out/lesson-{i}.mp4", pack="warp", extra={"course": "physics"})
        r.error_kind, r.error_step, r.error = "missing_file", "audio", f"row {i}: audio /data/gone.wav does not exist"
        made.append(r)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = rows(args.rows)
    today = JobResult.to_row
    ways = {"dataclasses.asdict (before)": asdict_row, "the fields as they are (now)": today}
    best = {name: float("inf") for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        tables = {}
        for _ in range(args.repeat):
            for name, to_row in ways.items():
                JobResult.to_row = to_row  # type: ignore[method-assign]
                path = Path(tmp) / f"{len(tables)}.parquet"
                t0 = time.perf_counter()
                write_table(results, ["course"], path)
                best[name] = min(best[name], time.perf_counter() - t0)
                tables[name] = pq.read_table(path)
        JobResult.to_row = today  # type: ignore[method-assign]
    before, after = tables.values()
    if not before.equals(after):
        raise SystemExit("the two ways wrote different tables")
    (b, a) = best.values()
    out = [{"way": name, "seconds": round(s, 3)} for name, s in best.items()]
    out.append({"rows": args.rows, "same_table": True, "ratio": round(b / a, 2)})
    dest = record.write("table", out)
    print("| way | seconds |\n| --- | ---: |")
    for name, s in best.items():
        print(f"| {name} | {s:.2f} |")
    print(f"ratio (before / after): {b / a:.2f}× on {args.rows} rows; same table. → {dest}")


if __name__ == "__main__":
    main()
