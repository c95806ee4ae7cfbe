"""The nightly Ray Job: render a manifest into ``OUTPUT_ROOT/<date>/``.

    ray job submit --address http://HEAD:8265 --submission-id heygem-nightly-$(date -u +%F) \\
        --working-dir . -- python jobs/nightly.py /shared/lessons/manifest.csv /shared/renders

Each night writes its own folder, ``OUTPUT_ROOT/<date>/`` (``--date``, default today in
UTC): the MP4s, ``results.parquet`` and ``run.json`` (when it ran, the counts, the exit
status, the Ray Job's submission id; ``"state": "running"`` and the jobs it set out to
render from when it holds the folder, so that a night killed as it ran says so). Running it again with the same date resumes that
night: rows that finished are skipped, the rest are rendered.

Inside a Ray Job it joins the job's cluster (Ray sets ``RAY_ADDRESS``); run by hand
outside one, it starts a local Ray instance like ``heygem-ray submit`` does.

Exit status, as ``heygem-ray submit``: 0 every row ok (or skipped: complete from an
earlier run of the same date), 1 any row failed (see ``results.parquet``) or the run
stopped part-way (``run.json`` holds the message), 2 the run could not start (unusable
manifest or options, model workers that could not start; nothing was rendered) or could
not go on (no model worker left), or another run holds that night's folder (one line says
whose; nothing in the folder is touched, ``run.json`` included); 130 / 143 stopped by
SIGINT / SIGTERM (``ray job stop``). The table is written whenever rendering began or the
run was waiting for its workers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from heygem_ray import heap, locks, storage
from heygem_ray.cli import describe_workers
from heygem_ray.config import (
    BackendName,
    EncoderName,
    EncoderPreset,
    InputLimits,
    LoopMode,
    PackName,
    PrecisionName,
    RenderConfig,
    RestoreName,
    RunConfig,
    WorkerDevice,
    default_cache_dir,
    default_engines_dir,
)
from heygem_ray.driver import RunCallbacks, submit
from heygem_ray.driver.hold import hold_output, live_run
from heygem_ray.driver.resume import again_lines
from heygem_ray.errors import HeygemError, Interrupted, RunStopped, first_line
from heygem_ray.results import JobResult
from heygem_ray.storage import Location, location
from heygem_ray.template.cache import prune
from heygem_ray.worker import WorkerInfo

RUN_FILE = "run.json"  # what one invocation did, next to results.parquet
# In OUTPUT_ROOT: the night running into it (one at a time; each night's folder has its run lock too).
NIGHTS_LOCK = ".heygem-nights.lock"
# Ray passes a job's metadata (its submission id among it) to the entrypoint in this
# variable; the entrypoint has no other way to learn the id.
_RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="jobs/nightly.py",
        description="Render MANIFEST into OUTPUT_ROOT/<date>/ (resuming a run of the same date).",
        epilog="Exit status: 0 every row ok or skipped, 1 any row failed or the run stopped part-way, 2 the run could not "
               "start (or another run holds the folder) or no model worker is left, 130 / 143 stopped by SIGINT / "
               "SIGTERM.",
    )
    p.add_argument("manifest", type=_location, help="CSV, Excel (.xlsx) or Parquet manifest (columns audio, video; optionally job_id, output).")
    p.add_argument("output_root", type=_location, help="Each night's run goes to OUTPUT_ROOT/<date>/ (a path or s3:// / gs:// URI).")
    p.add_argument("--date", type=_iso_date, default=None,
                   help="The run's date, YYYY-MM-DD (default: today in UTC). Pass it to resume a night after midnight.")
    p.add_argument("--pack", choices=get_args(PackName), default="warp")
    p.add_argument("--checkpoint", type=Path, default=None, help="Wav2Lip generator checkpoint for --pack wav2lip.")
    p.add_argument("--restore", choices=get_args(RestoreName), default="none",
                   help="Face restoration after the pack's render: gfpgan (needs --restore-checkpoint; use it on GPUs).")
    p.add_argument("--restore-checkpoint", type=Path, default=None,
                   help="For --restore gfpgan: the public GFPGANv1.4.pth (a path every node sees).")
    p.add_argument("--restore-blend", type=float, default=RenderConfig.restore_blend,
                   help="How much of the restored face shows where the pack changed the frame, 0 to 1 (default 1).")
    p.add_argument("--loop", choices=get_args(LoopMode), default="pingpong")
    p.add_argument("--backend", choices=get_args(BackendName), default="auto")
    p.add_argument("--precision", choices=get_args(PrecisionName), default="auto")
    p.add_argument("--calibrate", type=Path, default=None,
                   help="For int8: a manifest of the presenter and speech to calibrate on (a path every node sees).")
    p.add_argument("--calibration-frames", type=int, default=RenderConfig.calibration_frames,
                   help="For int8: frames that calibrate the activation ranges (a quarter as many more are held out).")
    p.add_argument("--chunk-frames", type=int, default=128)
    p.add_argument("--preset", choices=get_args(EncoderPreset), default=RenderConfig.preset,
                   help="the encoder's speed: lean (the default: x264's veryfast without its two costliest searches) "
                        "or one of x264's presets (faster: less CPU, larger files).")
    p.add_argument("--max-resolution", type=int, default=0,
                   help="the videos' resolution at most, in lines (1080: a 4K reference renders at 1920x1080); "
                        "0 (the default): the reference's own.")
    p.add_argument("--max-fps", type=int, default=0,
                   help="the videos' frame rate at most (30: a 60 fps reference renders at 30, every other frame "
                        "kept); 0 (the default): the reference's own.")
    p.add_argument("--reference-seconds", type=float, default=0.0,
                   help="use only the first this many seconds of each reference video (a whole recorded lecture: "
                        "analysed and cached only that far); 0 (the default): all of it.")
    p.add_argument("--reference-start", type=float, default=0.0,
                   help="use each reference video from this many seconds in (a lecture that opens without the "
                        "presenter); --reference-seconds counts from it; 0 (the default): from its beginning.")
    p.add_argument("--encoder", choices=get_args(EncoderName), default=RenderConfig.encoder,
                   help="H.264 encoder: auto (h264_nvenc where the node's GPU has NVENC, else libx264).")
    p.add_argument("--engines", type=_location, default=None,
                   help="Engine store (a path every node sees, or a bucket URI; default: $HEYGEM_RAY_ENGINES, else ~/.cache/heygem-ray/engines).")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="Template cache (default: ~/.cache/heygem-ray/templates; on a cluster, a shared path).")
    p.add_argument("--device", choices=get_args(WorkerDevice), default="auto",
                   help="Where model workers run: gpu (a worker that cannot use its GPU stops the run), cpu, or auto (gpu "
                        "when the cluster has or can autoscale to GPUs, cpu when it has CPUs only; on an empty cluster "
                        "the first node to join decides).")
    p.add_argument("--workers", type=int, default=0,
                   help="Model workers (0: one per GPU the cluster has or can autoscale to; on CPUs, from the core count).")
    p.add_argument("--start-timeout", type=float, default=RunConfig.workers_ready_timeout_s,
                   help="Seconds to wait for the first model worker (nodes joining, models loading, engines building).")
    p.add_argument("--chunk-timeout", type=float, default=RunConfig.chunk_timeout_s,
                   help="Seconds a chunk may render, plus --chunk-timeout-per-frame for each of its frames; past that "
                        "its worker is taken as wedged, stopped and replaced, and the chunk sent to another.")
    p.add_argument("--chunk-timeout-per-frame", type=float, default=RunConfig.chunk_timeout_per_frame_s,
                   help="Seconds per frame added to --chunk-timeout (generous for CPUs; on GPUs 1 is plenty).")
    p.add_argument("--job-stall-timeout", type=float, default=RunConfig.job_stall_timeout_s,
                   help="Seconds a job may go without reading or writing anything while not waiting on a model "
                        "worker; past that it is taken as stalled, its task stopped and the job tried once more; stalled "
                        "again, its row fails.")
    p.add_argument("--worker-restarts", type=int, default=RunConfig.worker_restarts,
                   help="Model workers that die or are stopped are replaced up to this many times the workers wanted; "
                        "past that the others go on, and with none left the run stops (exit 2).")
    p.add_argument("--max-jobs", type=int, default=0,
                   help="Jobs rendered at once across the cluster (0: one per CPU Ray has, at least two per model "
                        "worker); fewer hold less memory on each node.")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join; default: the Ray Job's own cluster, or a local Ray outside a job.")
    p.add_argument("--max-reference-pixels", type=int, default=InputLimits.max_reference_pixels,
                   help="A reference with more pixels (width × height) fails its row (default: 8K UHD, 7680×4320).")
    p.add_argument("--max-reference-frames", type=int, default=InputLimits.max_reference_frames,
                   help="A reference video with more frames fails its row (default: an hour at 25 fps).")
    p.add_argument("--max-audio-seconds", type=float, default=InputLimits.max_audio_seconds,
                   help="Audio longer than this fails its row (default: 4 hours).")
    p.add_argument("--allow-silent-audio", action="store_true",
                   help="Render audio with no sound in it; by default such a row fails 'silent_audio'.")
    p.add_argument("--force", action="store_true", help="Render every row again, even rows this date already finished.")
    p.add_argument("--prune-cache-days", type=_days, default=30.0,
                   help="After the night, remove the templates no run has used for this many days, as 'heygem-ray "
                        "cache prune' does (default 30; 0 leaves the cache alone).")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    heap.limit_arenas()  # this process is the run's driver: before Ray starts its threads
    date = args.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    out = args.output_root / date
    run: dict[str, Any] = {
        "date": date,
        "manifest": str(args.manifest.resolve()),
        "output_dir": str(out.resolve()),
        "ray_job_submission_id": ray_job_submission_id(),
        "started_at": _now(),
    }
    _say(date, f"rendering {args.manifest} into {out}")
    try:
        cfg = RunConfig(
            output_dir=out,
            render=RenderConfig(
                pack=args.pack, checkpoint=args.checkpoint, loop=args.loop, chunk_frames=args.chunk_frames,
                restore=args.restore, restore_checkpoint=args.restore_checkpoint, restore_blend=args.restore_blend,
                preset=args.preset, encoder=args.encoder, max_resolution=args.max_resolution, max_fps=args.max_fps,
                reference_seconds=args.reference_seconds, reference_start=args.reference_start,
                backend=args.backend, precision=args.precision, calibration=args.calibrate,
                calibration_frames=args.calibration_frames,
                limits=InputLimits(max_reference_pixels=args.max_reference_pixels,
                                   max_reference_frames=args.max_reference_frames,
                                   max_audio_seconds=args.max_audio_seconds,
                                   allow_silent_audio=args.allow_silent_audio),
            ),
            engines_dir=args.engines or default_engines_dir(),
            cache_dir=args.cache_dir or default_cache_dir(),
            address=args.address,
            device=args.device,
            workers=args.workers,
            workers_ready_timeout_s=args.start_timeout,
            chunk_timeout_s=args.chunk_timeout,
            chunk_timeout_per_frame_s=args.chunk_timeout_per_frame,
            job_stall_timeout_s=args.job_stall_timeout,
            worker_restarts=args.worker_restarts,
            max_jobs_in_flight=args.max_jobs,
            force=args.force,
        )
        run["config_hash"] = cfg.config_hash()
        run["render_settings"] = json.loads(cfg.render_settings())  # what that hash is of
        if not isinstance(out, storage.Uri):  # (a bucket prefix is tried under the run's lock, by submit)
            storage.check_writable(out)  # the night's folder, named in the error, before the lock beside it
        # One night at a time into OUTPUT_ROOT (a night's own folder is the run lock's); a
        # scheduler that starts the next night while one overruns is refused here.
        with hold_output(args.output_root, f"night {date} of {args.manifest}", lock_name=NIGHTS_LOCK,
                         advice=f"this night does not start while another runs; once it has ended, render this "
                                f"one with --date {date}"):
            summary = submit(args.manifest, cfg, _Log(date, out, run))
    except Interrupted as exc:  # SIGTERM (ray job stop) or Ctrl-C: the table is written
        print(f"error: {exc.message}", file=sys.stderr)
        _say(date, f"stopped by {signal.Signals(exc.signum).name}; exit {exc.exit_status}")
        _write_run(out, run | {"exit_code": exc.exit_status, "error": exc.message})
        return exc.exit_status
    except RunStopped as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        _say(date, f"stopped part-way; exit {exc.exit_status}")
        _write_run(out, run | {"exit_code": exc.exit_status, "error": exc.message})
        return exc.exit_status
    except HeygemError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.kind == "output_locked":  # the folder, run.json with it, is the other run's: leave it alone
            return 2
        _say(date, "could not start: nothing was rendered")
        _write_run(out, run | {"exit_code": 2, "error": exc.message})
        return 2
    except Exception as exc:  # heygem-ray's own bug: said in run.json too, then its traceback
        _say(date, f"ended by an internal error ({first_line(exc)}): please report it with the traceback below")
        _write_run(out, run | {"exit_code": 1, "error": f"internal error: {first_line(exc)}"})
        raise
    counts = {"ok": summary.ok, "skipped": summary.skipped, "failed": summary.failed}
    code = 1 if summary.failed else 0
    pruned = _prune_cache(cfg.cache_dir, args.prune_cache_days, date)
    _write_run(out, run | {"exit_code": code, "jobs": summary.total, **counts,
                           "results": str(summary.results_path.resolve()), **pruned})
    _say(date, f"{summary.ok} ok, {summary.skipped} skipped (done earlier), {summary.failed} failed "
               f"of {summary.total} jobs; exit {code}")
    _say(date, f"results: {summary.results_path.resolve()}")
    return code


def _prune_cache(cache_dir: Path, days: float, date: str) -> dict[str, Any]:
    """After a night, the templates no run has used for ``days`` removed (none when 0): what
    was, for run.json. A cache that cannot be pruned is a log line, not the night's error."""
    if days <= 0:
        return {}
    try:
        removed, busy = prune(
            cache_dir, days * 86400,
            waiting=lambda: _say(date, f"template cache {cache_dir}: another prune of it is running; waiting for it"),
        )  # fmt: skip
    except HeygemError as exc:
        _say(date, f"template cache not pruned: {exc.message}")
        return {}
    freed = sum(e.bytes for e in removed)
    if removed or busy:
        _say(date, f"template cache {cache_dir}: removed {len(removed)} unused for {days:g} days, "
                   f"{freed / 2**30:.2f} GiB" + (f"; {len(busy)} in use, left" if busy else ""))  # fmt: skip
    return {"cache_pruned": {"templates": len(removed), "bytes": freed, "in_use": len(busy)}}


def ray_job_submission_id() -> str | None:
    """The submission id of the Ray Job this process is the entrypoint of, else None."""
    try:
        return json.loads(os.environ[_RAY_JOB_CONFIG_ENV])["metadata"]["job_submission_id"]
    except (KeyError, TypeError, ValueError):
        return None


class _Log(RunCallbacks):
    """Job-log lines: every failure (one for the rows that fail at once on a file found
    missing), and progress at each tenth of the manifest."""

    def __init__(self, date: str, out: Location, run: dict[str, Any]) -> None:
        self.date, self.out, self.run = date, out, run
        self.total = 0
        self.done = 0
        self.failed_at_once = 0  # rows that failed without a job (a file another job found missing)

    def started(self, jobs: int) -> None:
        self.total = jobs
        _say(self.date, f"{jobs} jobs in the manifest")
        # The night holds its folder now: run.json says it is under way, so that a night
        # killed as it ran (a node lost, kill -9) leaves one saying so, and how much it meant
        # to do; its end writes it over.
        _write_run(self.out, self.run | {"state": "running", "jobs": jobs}, ended=False)

    def connected(self, dashboard_url: str | None) -> None:
        if dashboard_url:
            _say(self.date, f"Ray dashboard: {dashboard_url}")

    def waiting(self, line: str) -> None:
        _say(self.date, line)

    def workers(self, infos: list[WorkerInfo]) -> None:
        for line in describe_workers(infos):
            _say(self.date, line)

    def again(self, why: dict[str, int]) -> None:
        for line in again_lines(why):
            _say(self.date, line)

    def job_done(self, result: JobResult) -> None:
        self.done += 1
        if result.status == "failed" and (result.attempts or not self.failed_at_once):
            _say(self.date, f"failed {result.job_id}: [{result.error_kind}] {result.error}")
        if result.status == "failed" and not result.attempts:  # failed at once, no job started: one line for all
            if not self.failed_at_once:
                _say(self.date, "rows naming a file that a job of this run found missing fail at once; "
                                "they are counted, not logged")  # fmt: skip
            self.failed_at_once += 1
        step = max(1, self.total // 10)
        if self.done % step == 0 or self.done == self.total:
            _say(self.date, f"{self.done}/{self.total} jobs done")


def _write_run(out: Location, run: dict[str, Any], *, ended: bool = True) -> None:
    """Write ``run.json`` (at the run's end: its state ``ended``, and when); one that cannot
    be written (the folder the run could not write either, say) is a log line, not a second
    error."""
    if ended:
        if (other := _held_by_another(out)) is not None:  # taken over while this night ran: its run.json
            _say(run["date"], f"{RUN_FILE} not written: the folder is another run's now ({other})")
            return
        run = run | {"state": "ended", "ended_at": _now()}
    try:
        storage.write_bytes(out / RUN_FILE, (json.dumps(run, indent=2) + "\n").encode())
    except HeygemError as exc:
        _say(run["date"], f"{RUN_FILE} not written: {exc.message}")


def _held_by_another(out: Location) -> str | None:
    """Who holds the night's folder now, once the night has let it go: another run that took
    it over while the night ran (its heartbeat had stopped), or started since; None."""
    if (held := live_run(out)) is None:
        return None
    me = locks.Holder.me("")
    if held.holder is not None and (held.holder.host, held.holder.pid) == (me.host, me.pid):
        return None  # this night's own, left where its release could not delete it
    return held.describe()


def _say(date: str, message: str) -> None:
    # Ray Job logs carry no timestamps of their own: every line has one, and the run's date.
    print(f"{_now()} nightly {date}: {message}", flush=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _location(text: str) -> Location:
    """An argument that names a folder or file: a path or a bucket URI. argparse shows the
    message alone (never the argument itself: it may hold credentials)."""
    try:
        return location(text)
    except (HeygemError, ValueError) as exc:
        raise argparse.ArgumentTypeError(exc.message if isinstance(exc, HeygemError) else str(exc)) from None


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (0 or more)")
    return days


def _iso_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from None


if __name__ == "__main__":
    sys.exit(main())
