"""``submit``: a manifest in, MP4s and ``results.parquet`` out.

The public entry point for Python callers; the CLI is a thin layer over it.

However a run that started rendering (or waiting for its workers) ends, its table is
written: rows of the jobs that ended, ``stopped`` rows for the others. That includes
Ctrl-C, SIGTERM (what ``ray job stop`` and ``kill`` send) and SIGHUP (its terminal closed):
while a run goes on, each raises ``Interrupted`` in the driver (``driver/stop.py``).
"""


from __future__ import annotations

import collections
import dataclasses
import logging
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray

from heygem_ray import identity, locks, metrics, storage
from heygem_ray.config import RunConfig, row_settings_problem
from heygem_ray.driver import resume
from heygem_ray.driver.connect import connect
from heygem_ray.driver.hold import hold_output, runs_inside, still_held
from heygem_ray.driver.loop import run_jobs
from heygem_ray.driver.missing import MissingInputs
from heygem_ray.driver.stop import StopSignals
from heygem_ray.errors import HeygemError, InputError, Interrupted, RunStopped, WorkersUnavailable, storage_errors
from heygem_ray.manifest import Job, read_manifest
from heygem_ray.results import RESULT_COLUMNS, RESULTS_FILE, JobResult, Status, read_rows
from heygem_ray.storage import Location, Uri
from heygem_ray.worker_io import WorkerInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What a run did: how many rows ended how, and where the table is. The rows stay in
    the table (read back on demand), so a run of 100 000 rows holds none of them."""

    results_path: Location
    total: int  # manifest rows
    ok: int  # rendered by this run
    skipped: int  # complete from an earlier run into the same folder
    failed: int
    run_id: str  # this run's id, in the table's run_id column of the rows it rendered

    def rows(self, status: Status | None = None) -> Iterator[JobResult]:
        """The table's rows in manifest order (only those with ``status``, if given), streamed."""
        return read_rows(self.results_path, status)

    @property
    def results(self) -> list[JobResult]:
        """Every row of the table, in manifest order (reads the whole table)."""
        return list(self.rows())


class RunCallbacks:
    """What a caller sees while a run goes on (the CLI draws a progress bar)."""

    def started(self, jobs: int) -> None: ...

    def connected(self, dashboard_url: str | None) -> None: ...

    def waiting(self, line: str) -> None:
        """Now and then while the run waits for its first model worker (an autoscaler adding nodes)."""

    def workers(self, infos: list[WorkerInfo]) -> None:
        """Model workers that began to serve: the first ones, then any that join later."""

    def job_done(self, result: JobResult) -> None: ...

    def frames_done(self, frames: int) -> None: ...

    def again(self, why: dict[str, int]) -> None:
        """Jobs an earlier run into the folder finished that this run renders again: how many
        for each reason (``resume.again_lines`` puts them in words)."""


def submit(manifest: str | Path | Uri, cfg: RunConfig, callbacks: RunCallbacks | None = None) -> RunSummary:
    """Render every row of ``manifest``; bad rows fail alone, the rest still render.

    ``manifest`` and ``cfg.output_dir`` may be bucket URIs (``s3://bucket/manifest.csv``).
    A run holds its output folder for as long as it runs: another run into it raises an
    ``InputError`` of kind ``output_locked`` at once, having changed nothing.
    """
    cb = callbacks or RunCallbacks()
    # 1. read and check the manifest: a broken one stops here, before any work; so does an
    #    output folder the run cannot write (before Ray is even connected)
    where = storage.location(manifest)
    # (a bucket prefix is tried once the run holds it: its probe, half a minute in a slow
    # store, was written into the prefix of the run that held it, refused or not)
    in_bucket = isinstance(cfg.output_dir, Uri)
    folds_case = False if in_bucket else storage.check_writable(cfg.output_dir)
    _refuse_own_files(where, cfg.output_dir)
    _refuse_cache_file(cfg.cache_dir)
    jobs = [_settings_checked(job, cfg) for job in read_manifest(where, cfg.output_dir, reserved=RESULT_COLUMNS,
                                                                  folds_case=folds_case)]  # fmt: skip
    # 2. hold the output folder: a run into a folder another run holds stops here
    run_id = uuid.uuid4().hex[:12]
    with hold_output(cfg.output_dir, f"run {run_id} of {where}, {len(jobs)} row{'s' * (len(jobs) != 1)}") as lease:
        if in_bucket:
            storage.check_writable(cfg.output_dir)
        if (inside := runs_inside(cfg.output_dir, (job.output for job in jobs if job.output is not None))) is not None:
            raise InputError(f"{inside}: wait for that run to end, stop it, or give those rows outputs elsewhere",
                             kind="output_locked")  # fmt: skip
        cb.started(len(jobs))
        # 3. what this run renders from, besides each row's files (the weights hashed once)
        basis = resume.Basis(run_id, cfg.config_hash(), identity.render_weights(cfg.render), cfg.render_settings(), cfg)
        return _run(jobs, cfg, cb, basis, lease)


def _refuse_cache_file(cache_dir: Path) -> None:
    """Stop where the template cache cannot be made here: a file is where it or a folder
    above it would be (every row would fail so, one by one, once the workers started). The
    cache is local to each node, or shared by them: this machine's says the same. Where
    this machine cannot tell, the run goes on."""
    for at in (cache_dir, *cache_dir.parents):
        try:
            there = at.exists()
        except OSError:  # a folder this user may not look into: the nodes' users may
            return
        if there:
            if not at.is_dir():
                raise InputError(f"the template cache (--cache-dir) {cache_dir} cannot be made: {at} is a file; move "
                                 "it away, or give --cache-dir a folder", kind="storage")  # fmt: skip
            return


def _refuse_own_files(manifest: Location, output_dir: Location) -> None:
    """Stop where the manifest is a file the run writes in its output folder (its results
    table, which the run would replace with its own, or a kept row): a table given back as a
    manifest was overwritten, and its rows' kept results with it."""
    with storage_errors(manifest):
        out, given = storage.resolved(output_dir), storage.resolved(manifest)
    table, parts = out / RESULTS_FILE, out / resume.PARTS_DIR
    if given == table or storage.is_inside(given, parts):
        raise InputError(
            f"the manifest {manifest} is a file this run writes in its output folder {output_dir} (its results "
            "table, or a row it keeps): copy it elsewhere and give that copy, or give another --output-dir",
            kind="bad_argument",
        )


def _settings_checked(job: Job, cfg: RunConfig) -> Job:
    """``job``, or where the render settings its row gives itself are out of range, ``job``
    with that problem (its row fails alone)."""
    if not job.row_settings or job.problem is not None:
        return job
    problem = row_settings_problem(job.row_settings, cfg.render)
    # (its settings dropped: the row fails with the problem, before anything reads them)
    return job if problem is None else dataclasses.replace(job, problem=problem, row_settings=())


def _run(jobs: list[Job], cfg: RunConfig, cb: RunCallbacks, basis: resume.Basis, lease: locks.Lease) -> RunSummary:
    # 4. skip what an earlier run into the same folder completed (unless forced)
    resume.remove_leftovers(cfg.output_dir)
    again: collections.Counter[str] = collections.Counter()  # why jobs an earlier run finished are rendered again
    todo, skipped = (jobs, set()) if cfg.force else resume.split(
        jobs, cfg.output_dir, basis, cb.job_done, lambda job, why: again.update([why])
    )
    if again:
        cb.again(dict(again))
    path = cfg.output_dir / RESULTS_FILE
    # Rows naming a file an earlier job found missing fail at once (no part file: the
    # table is merged from this, which holds one entry per missing file).
    missing = MissingInputs(cfg.render.pack, cfg.config_hash(), rows=len(jobs))
    stop: StopSignals | None = None
    try:
        if todo:
            # 5. connect to Ray (a local instance unless an address is given)
            try:
                started_here, dashboard = connect(cfg.address)
            except SystemExit as exc:  # Ray's SIGTERM handler, set as it starts: it exits with the signal's number
                if exc.code != signal.SIGTERM:
                    raise
                ray.shutdown()  # what of a local instance had started
                raise Interrupted(signal.SIGTERM, "stopped by SIGTERM while Ray started, before any work") from exc
            cb.connected(dashboard)
            ended = 0  # jobs whose rows are on disk
            working = False
            # The identities of the inputs of jobs in flight, taken as each job starts, and the render
            # settings their rows give themselves (manifest row → audio, video, Job.row_settings).
            inputs: dict[int, tuple[str, str, tuple[tuple[str, float], ...]]] = {}
            # Ctrl-C and SIGTERM stop the run, from here until its table is written (set after
            # ray.init, which sets handlers of its own)
            stop = StopSignals()
            try:
                # 6. start the model workers (a bad checkpoint or backend stops here), then
                #    render, keeping each row on disk as soon as its job ends
                def workers_ready(infos: list[WorkerInfo]) -> None:
                    nonlocal working
                    if not working:
                        storage.makedirs(cfg.output_dir)
                        working = True
                    cb.workers(infos)

                def job_done(result: JobResult) -> None:
                    nonlocal ended
                    still_held(lease)
                    result = resume.record(cfg.output_dir, basis.stamp(result, *inputs.pop(result.row, ("", "", ()))))
                    missing.learn(result)
                    ended += 1
                    cb.job_done(result)

                def to_run() -> Iterator[Job]:
                    """The jobs to start, taken one at a time as the run has room for them."""
                    nonlocal ended
                    for job in todo:
                        still_held(lease)
                        if (known := missing.fail(job)) is None:
                            if job.problem is None:
                                inputs[job.row] = (identity.input_identity(job.audio), identity.input_identity(job.video),
                                                   job.row_settings)  # fmt: skip
                            yield job
                            continue
                        metrics.record_job(known)
                        ended += 1
                        cb.job_done(known)

                run_jobs(to_run(), cfg, on_result=job_done, on_frames=cb.frames_done, on_workers=workers_ready,
                         on_waiting=cb.waiting)
            except BaseException as exc:
                signum = stop.stopped_by(exc)
                if not working and signum is None:  # nothing was rendered: the error says why
                    raise
                # The table is written next, whatever stopped the run: a stop signal that comes
                # meanwhile is noted, not raised (it would leave an earlier run's table in place,
                # and say only its own name).
                stop.defer()
                # Jobs may have rendered, or be waiting for workers: the table holds their rows,
                # and says which did not end.
                if signum is not None:
                    why = f"it was sent {_SIGNAL_NAMES[signum]}"
                else:
                    why = exc.message if isinstance(exc, HeygemError) else f"{type(exc).__name__}: {exc}"
                if lease.lost is not None:  # the folder is another run's now: its table is not ours to write
                    table = "the results table was not written (another run holds the folder now)"
                else:
                    try:
                        resume.write_merged(jobs, cfg.output_dir, skipped, cfg.render.pack, path, run_id=basis.run_id,
                                            stopped=why, missing=missing)  # fmt: skip
                        table = f"every row is in {path}"
                        if ended < len(todo):
                            table += " (jobs that did not end say 'stopped')"
                    except HeygemError as failed:  # the cause may be the same: an unwritable output folder
                        table = (f"the results table could not be written either ({failed.message}); the rows of "
                                 f"the jobs that ended are kept in {cfg.output_dir / resume.PARTS_DIR} ('heygem-ray "
                                 f"status {cfg.output_dir}' reads them)")  # fmt: skip
                late = stop.received if signum is None else None  # (or one a Ray call swallowed)
                rest = "" if ended == len(todo) else "; run the same manifest again to render the rest"
                said = (
                    f"the run stopped after {f'all {ended}' if not rest else f'{ended} of {len(todo)}'} jobs had "
                    f"ended: {why}; {table}{f' ({_SIGNAL_NAMES[late]} came too, and waited for it)' if late else ''}"
                    f"{rest}"
                )
                if (asked := signum if signum is not None else late) is not None:  # the shell's status for it
                    raise Interrupted(asked, said) from exc
                if not isinstance(exc, Exception):  # SystemExit: as it was
                    raise
                raise RunStopped(said, exit_status=2 if isinstance(exc, WorkersUnavailable) else 1) from exc
            finally:
                # From here the run has ended: a stop signal is noted, not raised, until its table
                # is written (Ray's own handler, back after restore, exits at once: no table)
                stop.defer()
                if started_here:
                    ray.shutdown()
        # 7. the results table: one row per manifest row, merged from the rows kept on disk;
        #    first, what a killed attempt (or a worker orphaned by an earlier run) left half
        #    written beside the outputs: one listing a folder for all the jobs
        resume.remove_partials([job.output for job in todo if job.output is not None])
        still_held(lease)
        try:
            counts = resume.write_merged(jobs, cfg.output_dir, skipped, cfg.render.pack, path, run_id=basis.run_id,
                                         missing=missing)  # fmt: skip
        except HeygemError as exc:  # every job ended, and its row is kept: only the table is missing
            raise RunStopped(
                f"all {len(todo)} jobs ended and their rows are kept (in {cfg.output_dir / resume.PARTS_DIR}), but the "
                f"results table {path} could not be written: {exc.message}; once that is fixed, run the same manifest "
                "again: it renders nothing again, and writes the table"
            ) from exc
    finally:
        if stop is not None:
            stop.restore()
    if stop is not None and stop.received is not None:
        log.warning("%s came as the run ended: its results table was written first", _SIGNAL_NAMES[stop.received])
    return RunSummary(path, total=len(jobs), ok=counts["ok"], skipped=counts["skipped"], failed=counts["failed"],
                      run_id=basis.run_id)  # fmt: skip


_SIGNAL_NAMES = {int(signal.SIGINT): "SIGINT (Ctrl-C)", int(signal.SIGTERM): "SIGTERM",
                 int(signal.SIGHUP): "SIGHUP (its terminal closed, or kill -HUP)"}


