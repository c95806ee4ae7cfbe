"""Results written as they arrive, and skipping what an earlier run finished.

Each finished job's row goes at once to ``DIR/.heygem-results/<hash>.parquet`` (atomic),
so a run killed at any point keeps every row it had (files are named by a hash of the
job id: ids are not always safe file names). At the end the rows of the
manifest's jobs are merged into ``DIR/results.parquet``.

A rerun into the same folder skips a job when its earlier row says ``ok`` (or
``skipped``) for the same inputs, output and render settings, and the MP4 is still there
and decodes to the frames that row recorded. Anything else is rendered again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from heygem_ray import media
from heygem_ray.errors import HeygemError
from heygem_ray.manifest import Job
from heygem_ray.results import JobResult, write_results

PARTS_DIR = ".heygem-results"
_FIELDS = {f.name for f in dataclasses.fields(JobResult)} - {"extra"}


def part_path(output_dir: Path, job_id: str) -> Path:
    """Where a job's row is kept: named by a hash, since a job id may be unsafe as a file name."""
    return output_dir / PARTS_DIR / f"{hashlib.sha256(job_id.encode()).hexdigest()[:24]}.parquet"


def record(output_dir: Path, result: JobResult) -> None:
    """Write one finished job's row now, and delete the temporary MP4s that attempts of
    it lost on the way (a task on a node that left the cluster leaves one behind)."""
    path = part_path(output_dir, result.job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_results([result], path)
    if result.output is not None:
        _remove_partials(Path(result.output))


def split(jobs: list[Job], output_dir: Path, config_hash: str) -> tuple[list[Job], list[JobResult]]:
    """(jobs to render, rows of jobs already complete from an earlier run)."""
    todo: list[Job] = []
    done: list[JobResult] = []
    for job in jobs:
        earlier = _earlier(output_dir, job, config_hash)
        if earlier is None:
            if job.output is not None:
                _remove_partials(job.output)
            todo.append(job)
        else:
            done.append(dataclasses.replace(earlier, status="skipped", attempts=0, row=job.row, extra=job.extra))
    return todo, done


def _remove_partials(output: Path) -> None:
    """Delete temporary MP4s a killed task or run left for ``output`` (see pipeline's
    publish step)."""
    if output.parent.is_dir():
        for partial in output.parent.glob(f".{output.stem}.*.part.mp4"):
            partial.unlink(missing_ok=True)


def _earlier(output_dir: Path, job: Job, config_hash: str) -> JobResult | None:
    path = part_path(output_dir, job.job_id)
    if job.problem is not None or job.output is None or not path.is_file():
        return None
    rows = pq.read_table(path).to_pylist()
    if len(rows) != 1:
        return None
    row = rows[0]
    same = (
        row["status"] in ("ok", "skipped")
        and row["audio"] == str(job.audio)
        and row["video"] == str(job.video)
        and row["output"] == str(job.output)
        and row["config_hash"] == config_hash
    )
    if not same or not job.output.is_file():
        return None
    try:
        if media.probe_video(job.output).frames != row["frames"]:
            return None
    except HeygemError:  # damaged or unreadable: render it again
        return None
    return JobResult(**{k: v for k, v in row.items() if k in _FIELDS})
