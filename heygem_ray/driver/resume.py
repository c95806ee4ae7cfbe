"""Results written as they arrive, and skipping what an earlier run finished.

Each finished job's row goes at once to ``DIR/.heygem-results/<hash>.parquet`` (whole or
not at all), so a run killed at any point keeps every row it had (files are named by a
hash of the job id: ids are not always safe file names). At the end the rows of the
manifest's jobs are merged into ``DIR/results.parquet``. ``DIR`` may be a bucket prefix.

A rerun into the same place trusts only what it can prove: it skips a job when the row
an earlier run kept for it says ``ok`` and agrees with this run on

* the inputs, output and render settings (paths, ``config_hash``; where the hashes
  differ only by where the weights are, ``config.WEIGHT_PATHS``, the settings agree: the
  weights are compared by their content next);
* the weights' content (``weights_digest``) and the inputs' (``audio_identity``,
  ``video_identity``; see ``identity.py``): new weights or a re-recorded lesson under the
  old names are rendered again;
* the MP4 itself: the file there now has the size and modification time its job recorded
  when it published it (``output_bytes``, ``output_mtime_ns``), so an MP4 replaced by
  another one, or one published by a later job whose row was never written (a run killed
  between the two), is never paired with an older row; and a local MP4 holds the frames
  that row recorded, as its index (the video track's sample table) counts them, with
  every sample the index lists inside the file (``media.indexed_frames``: nothing decoded;
  an object in a bucket only ever appears complete, see ``storage.upload``).

Anything else, and every row of an older version without these columns, is rendered again;
where the earlier row was ``ok``, the run says why (``split``'s ``on_again``): the render
settings that changed (each row keeps them: ``render_settings``), the weights, a file
changed or replaced, the MP4 replaced or not whole.

The table of a run holds only rows of that run (``run_id``): a job that did not end in
it is ``stopped`` (or, after a normal end, an ``internal`` error), never filled from a row
an earlier run left; rows it skipped are the earlier rows it checked.

The driver keeps no rows in memory: the table is merged from the part files at the end,
a batch at a time, in manifest order.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import logging
import re
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from heygem_ray import media, storage
from heygem_ray.config import WEIGHT_PATHS, RunConfig, settings_change
from heygem_ray.driver.missing import MissingInputs
from heygem_ray.errors import HeygemError
from heygem_ray.identity import Inputs
from heygem_ray.job.compose import PARTIAL_SUFFIX
from heygem_ray.manifest import Job, row_label
from heygem_ray.results import BATCH_ROWS, RESULTS_FILE, JobResult, write_results, write_table
from heygem_ray.storage import Location, Uri

log = logging.getLogger(__name__)

PARTS_DIR = ".heygem-results"
# Part files read at once when merging the table from a bucket (one GET each).
_READERS = 16


def part_path(output_dir: Location, job_id: str) -> Location:
    """Where a job's row is kept: named by a hash, since a job id may be unsafe as a file name."""
    return output_dir / PARTS_DIR / f"{hashlib.sha256(job_id.encode()).hexdigest()[:24]}.parquet"


@dataclass(frozen=True)
class Basis:
    """What a run renders every row from, besides the row's own files: an earlier row is
    trusted only if it was rendered from the same."""

    run_id: str  # this run: every row it writes carries it
    config_hash: str  # RunConfig.config_hash()
    weights: str  # identity.render_weights: the checkpoints' digests
    settings: str = ""  # RunConfig.render_settings(): what config_hash is of
    # The run's configuration, for rows with render settings of their own (Job.row_settings);
    # None: every row is rendered with config_hash's.
    cfg: RunConfig | None = None
    _rows: dict[tuple[tuple[str, float], ...], tuple[str, str]] = field(default_factory=dict, compare=False)

    def of(self, row_settings: tuple[tuple[str, float], ...]) -> tuple[str, str]:
        """(config_hash, render_settings) of a row with these settings of its own (a manifest
        row's ``Job.row_settings``): the run's where it has none."""
        if not row_settings or self.cfg is None:
            return self.config_hash, self.settings
        if row_settings not in self._rows:
            cfg = self.cfg.for_row(row_settings)
            self._rows[row_settings] = (cfg.config_hash(), cfg.render_settings())
        return self._rows[row_settings]

    def stamp(self, result: JobResult, audio_identity: str, video_identity: str,
              row_settings: tuple[tuple[str, float], ...] = ()) -> JobResult:  # fmt: skip
        """``result`` with what this run rendered it from, for ``record`` to keep. The input
        identities are those taken before its job started: a file changed after that does
        not match them at the next run, which renders it again."""
        config_hash, settings = self.of(row_settings)
        return dataclasses.replace(result, run_id=self.run_id, config_hash=config_hash,
                                   render_settings=settings, weights_digest=self.weights,
                                   audio_identity=audio_identity, video_identity=video_identity)  # fmt: skip


def record(output_dir: Location, result: JobResult) -> JobResult:
    """Write one finished job's row now, and delete the temporary MP4s that attempts of
    it lost on the way (a task on a node that left the cluster, or one stopped as stalled,
    leaves one behind). A job whose one attempt ended in its own process left none (its
    MP4 was published, or deleted as it failed), and its folder is not listed: at one
    listing a job, a night of 20,000 MP4s in one folder spent 8 minutes of the driver's
    loop listing it (23 ms a listing on a local disk; more on a network one).

    A local MP4 published and gone by now (its folder deleted by a cleanup during the run,
    then made again for this row) makes the row ``storage``, not ``ok``. Returns the row
    written."""
    if result.status == "ok" and result.output is not None and not storage.is_uri(result.output):
        if not Path(result.output).is_file():
            result = _gone(result, Path(result.output))
    _keep_row(result, part_path(output_dir, result.job_id))
    if result.output is not None and (result.attempts > 1 or result.error_kind in _KILLED):
        remove_partials([storage.location(result.output)])
    return result


# Seconds between the tries of writing a row to a bucket that refused it: about a minute in
# all, ridden out where a store's passing outage (a restart, a network blip) stopped the
# night at the first row that ended in it, its MP4 published but its row called 'stopped'.
# No try starts once the tries themselves have taken that long: against a store that
# stopped answering each takes a minute or so of its own (a write and its clean-up, each
# given up after ``storage.S3_TRIES`` tries of ``storage.S3_IDLE_S`` without a byte), and
# seven of them held a row for 24 minutes.
ROW_RETRIES_S = (1, 2, 4, 8, 16, 32)


def _keep_row(result: JobResult, path: Location) -> None:
    """Write ``result``'s part file at ``path``; in a bucket, tried again for about a minute
    (``ROW_RETRIES_S``) before its error stops the run."""
    start, waited = time.monotonic(), 0.0
    for wait in (*ROW_RETRIES_S, None) if isinstance(path, Uri) else (None,):
        try:
            write_results([result], path)
            return
        except HeygemError as exc:
            if wait is None or time.monotonic() - start - waited > sum(ROW_RETRIES_S):
                raise
            log.warning("%s: its row was not written (%s); trying again in %g s", result.job_id, exc.message, wait)
            time.sleep(wait)
            waited += wait


def _gone(result: JobResult, output: Path) -> JobResult:
    """``result``, an ``ok`` row whose MP4 is gone, as the failed row it is."""
    return dataclasses.replace(
        result, status="failed", error_kind="storage", error_step="compose", output_bytes=None, output_mtime_ns=None,
        error=(f"{row_label(result.row, result.job_id)}: its MP4 {output} was written, then removed before its row "
               "was kept (was the output folder deleted or cleaned during the run?); run the same manifest again "
               "to render it"),
    )  # fmt: skip


# The kinds of a job whose task's process was killed (by the driver, Ray or the kernel),
# which may leave its MP4 half written.
_KILLED = frozenset({"stalled", "worker_lost", "out_of_memory"})


# The hidden files a row or the table is written to before it takes its name
# (``storage.write_bytes``: ``.<name>.<8 hex>.tmp``; ``write_table``: ``storage.staging_file``).
_WRITING = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def remove_leftovers(output_dir: Location) -> None:
    """Delete what a killed run left of its rows and table half written in ``output_dir``
    (a process killed as it wrote one: a table of 100,000 rows is tens of MB). Only this run
    writes them now: it holds the folder. In a bucket they are temporary keys
    (``storage.upload``), which a bucket keeps, and bills, until they are deleted, and the
    write probes of runs killed as they tried the folder (``storage.check_writable``)."""
    try:
        if isinstance(output_dir, Path):
            parts = output_dir / PARTS_DIR
            stale: list[Location] = [p for p in parts.iterdir() if _WRITING.fullmatch(p.name)] if parts.is_dir() else []
            stale += storage.staged_leftovers([output_dir / RESULTS_FILE], ".parquet.tmp")
        else:
            stale = [*storage.abandoned_writes(output_dir / PARTS_DIR), *storage.leftovers([output_dir / RESULTS_FILE]),
                     *storage.abandoned_probes(output_dir)]  # fmt: skip
        for loc in stale:
            storage.remove(loc)
    except (OSError, HeygemError) as exc:
        log.warning("files a killed run left half written in %s were not removed (%s)", output_dir, exc)


def split(
    jobs: list[Job], output_dir: Location, basis: Basis, on_skipped: Callable[[JobResult], None] = lambda r: None,
    on_again: Callable[[Job, str], None] = lambda job, why: None,
) -> tuple[list[Job], set[int]]:
    """(jobs to render, manifest rows of jobs already complete from an earlier run); each
    of the latter's rows is passed to ``on_skipped`` as it is found, and each job an earlier
    run finished (``ok``) that is rendered again to ``on_again``, with why."""
    # One listing of the rows kept, rather than a lookup per job (a request each in a bucket).
    kept = set(storage.list_files(output_dir / PARTS_DIR))
    inputs = Inputs()  # the inputs' identities: one listing per bucket folder
    todo: list[Job] = []
    skipped: set[int] = set()
    for job in jobs:
        if part_path(output_dir, job.job_id) in kept:
            earlier, why = _earlier(output_dir, job, basis, inputs)
        else:
            earlier, why = None, _unkept(job)
        if earlier is None:
            todo.append(job)
            if why:
                on_again(job, why)
        else:
            skipped.add(job.row)
            on_skipped(_as_skipped(earlier, job))
    # One listing per output folder for all of them, not one per job (a request each in a
    # bucket, and a folder of thousands of MP4s read thousands of times on a disk).
    remove_partials([job.output for job in todo if job.output is not None])
    return todo, skipped


def again_lines(why: dict[str, int]) -> list[str]:
    """In words, the jobs an earlier run finished that a run renders again (``split``'s
    ``on_again``, counted by reason), most first."""
    total = sum(why.values())
    lines = [f"{total} row{'s' if total != 1 else ''} an earlier run finished will be rendered again:"]
    return lines + [f"  {n}: {reason}" for reason, n in sorted(why.items(), key=lambda item: -item[1])]


def write_merged(
    jobs: list[Job], output_dir: Location, skipped: Collection[int], pack: str, path: Location, *, run_id: str,
    stopped: str | None = None, missing: MissingInputs | None = None,
) -> collections.Counter[str]:
    """Write the run ``run_id``'s table at ``path``: one row per job, in manifest order,
    read back from the part files (rows of ``skipped`` jobs marked so; any other row only
    if this run wrote it), a batch at a time. ``stopped``: why the run stopped early, for
    the rows of jobs that had not ended. ``missing``: the rows that failed without a job on
    a file another job found missing (they have no part file). Returns how many rows it
    wrote with each status."""
    counts: collections.Counter[str] = collections.Counter()

    def counted(rows: Iterator[JobResult]) -> Iterator[JobResult]:
        for r in rows:
            counts[r.status] += 1
            yield r

    extra_names = sorted({name for job in jobs for name in job.extra})
    write_table(counted(_merged_rows(jobs, output_dir, skipped, pack, run_id, stopped, missing)), extra_names, path)
    return counts


def _merged_rows(
    jobs: list[Job], output_dir: Location, skipped: Collection[int], pack: str, run_id: str, stopped: str | None,
    missing: MissingInputs | None,
) -> Iterator[JobResult]:
    def row_of(job: Job) -> JobResult:
        if missing is not None and (known := missing.row_of(job)) is not None:
            # failed at once: any part file of the job is an earlier run's
            known.run_id = run_id  # a row made for this call
            return known
        found = _read_part(output_dir, job)
        if found is not None and job.row not in skipped and found.get("run_id") != run_id:
            found = None  # an earlier run's row: this run's job did not end
        if found is None:
            lost = JobResult.for_job(job, pack)
            lost.run_id = run_id
            lost.error_step = "plan"
            if stopped is not None:
                lost.error_kind = "stopped"
                lost.error = f"{job.label}: the run stopped before this job ended ({stopped}); run the same manifest again to render it"
            else:  # its job ended and its row was kept, but the row is gone or unreadable now
                lost.error_kind = "storage"
                lost.error = (
                    f"{job.label}: its job ended, but its result row {part_path(output_dir, job.job_id)} is gone or "
                    "cannot be read (was the output folder deleted or cleaned during the run?); run the same manifest "
                    "again to render it"
                )
            return lost
        result = JobResult.from_row(found)
        if job.row in skipped:
            return _as_skipped(result, job)
        result.extra = job.extra
        return result

    if isinstance(output_dir, Path):
        yield from map(row_of, jobs)
        return
    with ThreadPoolExecutor(_READERS, thread_name_prefix="heygem-results") as pool:
        for start in range(0, len(jobs), BATCH_ROWS):  # map() takes all it is given at once
            yield from pool.map(row_of, itertools.islice(jobs, start, start + BATCH_ROWS))


def _as_skipped(earlier: JobResult, job: Job) -> JobResult:
    return dataclasses.replace(earlier, status="skipped", attempts=0, row=job.row, extra=job.extra)


def remove_partials(outputs: list[Location]) -> None:
    """Delete temporary MP4s a killed task or run left for ``outputs``, and no other job's:
    beside a local one (see job/compose.py's publish step), under the temporary keys of an upload
    for one in a bucket. A clean-up: a folder that cannot be listed or a key not deleted (a
    bucket's passing 503) leaves them to the next run, with a warning, and stops nothing."""
    try:
        for partial in storage.staged_leftovers([o for o in outputs if isinstance(o, Path)], PARTIAL_SUFFIX):
            partial.unlink(missing_ok=True)
        for key in storage.leftovers([o for o in outputs if not isinstance(o, Path)]):
            storage.remove(key)
    except (OSError, HeygemError) as exc:
        said = exc.message if isinstance(exc, HeygemError) else f"{type(exc).__name__}: {exc}"
        log.warning("temporary MP4s left by stopped jobs were not removed (%s); the next run tries again", said)


def _read_part(output_dir: Location, job: Job) -> dict[str, Any] | None:
    """The row a job's part file holds; None when it is gone or damaged."""
    try:
        rows = pq.read_table(pa.BufferReader(storage.read_bytes(part_path(output_dir, job.job_id)))).to_pylist()
    except (OSError, pa.ArrowException, HeygemError):
        return None
    return rows[0] if len(rows) == 1 else None


def _unkept(job: Job) -> str:
    """Why a job with no row kept is rendered again over the local MP4 at its output, if one
    is there (a job renamed in the manifest: rows are kept by job id; a run killed between a
    job's MP4 and its row); "" where none is (a bucket's is not looked up: a request a row)."""
    if job.problem is None and isinstance(job.output, Path) and job.output.is_file():
        return "its MP4 is there, but no row was kept for its job id (a job renamed, or a run stopped as it ended)"
    return ""


def _earlier(output_dir: Location, job: Job, basis: Basis, inputs: Inputs) -> tuple[JobResult | None, str]:
    """The row an earlier run kept for ``job`` if it proves the job complete (see the module
    docstring), else None and, where that row was ``ok``, why it does not ("" otherwise).
    The cheap comparisons go first: inputs are hashed last."""
    if job.problem is not None or job.output is None:
        return None, ""
    row = _read_part(output_dir, job)  # gone or damaged: render it again
    if row is None or row["status"] not in ("ok", "skipped"):
        return None, ""
    why = _why_not(job, job.output, row, basis, inputs)
    return (None, why) if why else (JobResult.from_row(row), "")


def _why_not(job: Job, output: Location, row: dict[str, Any], basis: Basis, inputs: Inputs) -> str:
    """Why an earlier ``ok`` row does not prove ``job`` (writing ``output``) complete now, in
    words ("": it does)."""
    for name, column, now in (("audio", "audio", job.audio), ("reference", "video", job.video),
                              ("output", "output", output)):  # fmt: skip
        if row[column] != str(now):
            return f"its {name} is another path now"
    if not all(row.get(name) for name in _RENDERED_FROM):
        return "its earlier row is an older version's, which did not record what it was rendered from"
    config_hash, settings = basis.of(job.row_settings)
    # (weights moved to another path are the same weights: their digest is compared next)
    if row["config_hash"] != config_hash and (
            change := settings_change(row.get("render_settings") or "", settings, ignore=WEIGHT_PATHS)):  # fmt: skip
        return f"the render settings changed ({change})"
    if row["weights_digest"] != basis.weights:
        return "the weights changed"
    if not _published(output, row):
        return "its MP4 was replaced or removed since"
    for name, location, identity in (("audio", job.audio, "audio_identity"), ("reference", job.video, "video_identity")):
        if row[identity] != inputs.of(location):
            # (an object is known by its size and time: the same bytes uploaded again count as changed)
            return f"its {name} file changed" + (" or was uploaded again" if isinstance(location, Uri) else "")
    if isinstance(output, Path) and not _complete(output, row):
        return "its MP4 is not whole"
    return ""


# What a row records of what it was rendered from, which rows of older versions lack.
_RENDERED_FROM = ("weights_digest", "audio_identity", "video_identity")


def _published(output: Location, row: dict[str, Any]) -> bool:
    """Whether the file at ``output`` is the one the row's job published: the size and
    modification time it recorded then (one HEAD request for an object)."""
    found = storage.stat(output)
    return found is not None and (found.size, found.mtime_ns) == (row.get("output_bytes"), row.get("output_mtime_ns"))


def _complete(output: Path, row: dict[str, Any]) -> bool:
    """Whether a local MP4 holds the frames an earlier row describes, whole (see the module docstring)."""
    if not output.is_file():
        return False
    try:
        return media.indexed_frames(output) == row["frames"]
    except HeygemError:  # damaged or unreadable
        return False
