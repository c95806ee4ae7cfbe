"""Results written as they arrive, and skipping what an earlier run finished.

Each finished job's row goes at once to ``DIR/.heygem-results/<hash>.parquet`` (whole or
not at all), so a run killed at any point keeps every row it had (files are named by a
hash of the job id: ids are not always safe file names). At the end the rows of the
manifest's jobs are merged into ``DIR/results.parquet``. ``DIR`` may be a bucket prefix.

A rerun into the same place skips a job when its earlier row says ``ok`` (or
``skipped``) for the same inputs, output and render settings, and the MP4 is still there:

* a local MP4 must hold the frames that row recorded, as its index (the video track's
  sample table) counts them, with every sample the index lists inside the file: a copy or
  write cut short fails, and nothing is decoded (``media.indexed_frames``);
* an MP4 in a bucket must have the size that row recorded (one HEAD request; decoding
  would mean downloading every video). An object only ever appears complete (see
  ``storage.upload``), so one that is there with the recorded size is the one that run
  wrote, unless someone replaced it with another of the same size.

Anything else is rendered again.

The driver keeps no rows in memory: the table is merged from the part files at the end,
a batch at a time, in manifest order.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from heygem_ray import media, storage
from heygem_ray.errors import HeygemError
from heygem_ray.manifest import Job
from heygem_ray.pipeline import PARTIAL_SUFFIX, MissingInputs
from heygem_ray.results import BATCH_ROWS, JobResult, write_results, write_table
from heygem_ray.storage import Location

PARTS_DIR = ".heygem-results"
# Part files read at once when merging the table from a bucket (one GET each).
_READERS = 16


def part_path(output_dir: Location, job_id: str) -> Location:
    """Where a job's row is kept: named by a hash, since a job id may be unsafe as a file name."""
    return output_dir / PARTS_DIR / f"{hashlib.sha256(job_id.encode()).hexdigest()[:24]}.parquet"


def record(output_dir: Location, result: JobResult) -> None:
    """Write one finished job's row now, and delete the temporary MP4s that attempts of
    it lost on the way (a task on a node that left the cluster leaves one behind)."""
    write_results([result], part_path(output_dir, result.job_id))
    if result.output is not None:
        _remove_partials([storage.location(result.output)])


def split(
    jobs: list[Job], output_dir: Location, config_hash: str, on_skipped: Callable[[JobResult], None] = lambda r: None
) -> tuple[list[Job], set[int]]:
    """(jobs to render, manifest rows of jobs already complete from an earlier run); each
    of the latter's rows is passed to ``on_skipped`` as it is found."""
    # One listing of the rows kept, rather than a lookup per job (a request each in a bucket).
    kept = set(storage.list_files(output_dir / PARTS_DIR))
    todo: list[Job] = []
    skipped: set[int] = set()
    for job in jobs:
        earlier = _earlier(output_dir, job, config_hash) if part_path(output_dir, job.job_id) in kept else None
        if earlier is None:
            todo.append(job)
        else:
            skipped.add(job.row)
            on_skipped(_as_skipped(earlier, job))
    # One listing per output folder for all of them, not one per job (a request each in a
    # bucket, and a folder of thousands of MP4s read thousands of times on a disk).
    _remove_partials([job.output for job in todo if job.output is not None])
    return todo, skipped


def write_merged(
    jobs: list[Job], output_dir: Location, skipped: Collection[int], pack: str, path: Location,
    stopped: str | None = None, missing: MissingInputs | None = None,
) -> collections.Counter[str]:
    """Write the run's table at ``path``: one row per job, in manifest order, read back from
    the part files (rows of ``skipped`` jobs marked so), a batch at a time. ``stopped``:
    why the run stopped early, for the rows of jobs that had not ended. ``missing``: the
    rows that failed without a job on a file another job found missing (they have no part
    file). Returns how many rows it wrote with each status."""
    counts: collections.Counter[str] = collections.Counter()

    def counted(rows: Iterator[JobResult]) -> Iterator[JobResult]:
        for r in rows:
            counts[r.status] += 1
            yield r

    extra_names = sorted({name for job in jobs for name in job.extra})
    write_table(counted(_merged_rows(jobs, output_dir, skipped, pack, stopped, missing)), extra_names, path)
    return counts


def _merged_rows(
    jobs: list[Job], output_dir: Location, skipped: Collection[int], pack: str, stopped: str | None,
    missing: MissingInputs | None,
) -> Iterator[JobResult]:
    def row_of(job: Job) -> JobResult:
        if missing is not None and (known := missing.row_of(job)) is not None:
            return known  # failed at once: any part file of the job is an earlier run's
        found = _read_part(output_dir, job)
        if found is None:
            lost = JobResult.for_job(job, pack)
            lost.error_stage = "plan"
            if stopped is not None:
                lost.error_kind = "stopped"
                lost.error = f"{job.label}: the run stopped before this job ended ({stopped}); run the same manifest again to render it"
            else:  # its job ended, but its row could not be read back
                lost.error_kind = "internal"
                lost.error = (
                    f"{job.label}: its result row {part_path(output_dir, job.job_id)} could not be read back; "
                    "run the same manifest again to render it"
                )
            return lost
        result = JobResult.from_row(found)
        return _as_skipped(result, job) if job.row in skipped else dataclasses.replace(result, extra=job.extra)

    if isinstance(output_dir, Path):
        yield from map(row_of, jobs)
        return
    with ThreadPoolExecutor(_READERS, thread_name_prefix="heygem-results") as pool:
        for start in range(0, len(jobs), BATCH_ROWS):  # map() takes all it is given at once
            yield from pool.map(row_of, itertools.islice(jobs, start, start + BATCH_ROWS))


def _as_skipped(earlier: JobResult, job: Job) -> JobResult:
    return dataclasses.replace(earlier, status="skipped", attempts=0, row=job.row, extra=job.extra)


def _remove_partials(outputs: list[Location]) -> None:
    """Delete temporary MP4s a killed task or run left for ``outputs``, and no other job's:
    beside a local one (see pipeline's publish step), under the temporary keys of an upload
    for one in a bucket."""
    for partial in storage.staged_leftovers([o for o in outputs if isinstance(o, Path)], PARTIAL_SUFFIX):
        partial.unlink(missing_ok=True)
    for key in storage.leftovers([o for o in outputs if not isinstance(o, Path)]):
        storage.remove(key)


def _read_part(output_dir: Location, job: Job) -> dict[str, Any] | None:
    """The row a job's part file holds; None when it is gone or damaged."""
    try:
        rows = pq.read_table(pa.BufferReader(storage.read_bytes(part_path(output_dir, job.job_id)))).to_pylist()
    except (OSError, pa.ArrowException, HeygemError):
        return None
    return rows[0] if len(rows) == 1 else None


def _earlier(output_dir: Location, job: Job, config_hash: str) -> JobResult | None:
    if job.problem is not None or job.output is None:
        return None
    row = _read_part(output_dir, job)  # gone or damaged: render it again
    if row is None:
        return None
    same = (
        row["status"] in ("ok", "skipped")
        and row["audio"] == str(job.audio)
        and row["video"] == str(job.video)
        and row["output"] == str(job.output)
        and row["config_hash"] == config_hash
    )
    if not same or not _complete(job.output, row):
        return None
    return JobResult.from_row(row)


def _complete(output: Location, row: dict) -> bool:
    """Whether the MP4 an earlier row describes is still there, whole (see the module docstring)."""
    if isinstance(output, Path):
        if not output.is_file():
            return False
        try:
            return media.indexed_frames(output) == row["frames"]
        except HeygemError:  # damaged or unreadable
            return False
    found = storage.stat(output)
    return found is not None and found.size == row.get("output_bytes")
