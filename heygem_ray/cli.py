"""The ``heygem-ray`` command line. Options map onto the config dataclasses here, once."""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import itertools
import math
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO, cast, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from heygem_ray import heap, storage
from heygem_ray.config import (
    BackendName,
    DetectorConfig,
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
from heygem_ray.driver import RunCallbacks
from heygem_ray.driver import submit as run_submit
from heygem_ray.driver.resume import PARTS_DIR, again_lines
from heygem_ray.errors import HeygemError, InputError, Interrupted, RunStopped
from heygem_ray.results import RESULTS_FILE, JobResult
from heygem_ray.streams import forgive_gone_readers
from heygem_ray.worker_io import WorkerInfo

if TYPE_CHECKING:
    from heygem_ray.template.cache import Entry

LISTED = 20  # outputs and failures printed at the end of a run; results.parquet holds them all

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown", help="Batch lip-synced talking-head videos on Ray.")
err = Console(stderr=True)


_RESTORE_HELP = "Face restoration after the pack's render: 'none' (default) or 'gfpgan' (GFPGAN v1.4; needs --restore-checkpoint; seconds a frame on a CPU, see docs/restoration.md)."
_RESTORE_CHECKPOINT_HELP = "For --restore gfpgan: the public GFPGANv1.4.pth (or GFPGANv1.3.pth)."
_RESTORE_BLEND_HELP = "How much of the restored face shows where the pack changed the frame: 0 (none) to 1 (all, the default)."

_ENGINES_HELP = (
    "The engine store: exported ONNX graphs and TensorRT engines (default: $HEYGEM_RAY_ENGINES, else "
    "~/.cache/heygem-ray/engines; on a cluster, a path every node sees or a bucket)."
)


def _folder(text: str | Path) -> Path:
    """A folder option as typed; empty is refused (``-o "$OUT"`` with OUT unset in a nightly
    script wrote the MP4s and the table into whatever folder it ran in; ``cache prune
    --cache-dir "$CACHE"`` would have taken that folder for the cache)."""
    if isinstance(text, Path):  # (a default: typer parses those too)
        return text
    if not text.strip():
        raise typer.BadParameter("is empty: give a folder")
    return Path(text)


def _home(path: Path | None) -> Path | None:
    """``path`` with a leading ``~`` expanded, as a shell leaves it in ``--option=~/x``."""
    return None if path is None else storage.from_home(path)


def _engine_store(engines: Path | None, store: Path | None) -> storage.Location:
    """--engines, or its old spelling --store (kept, hidden, for a release), else the default."""
    named = engines or store
    return storage.location(named) if named else default_engines_dir()



@app.callback()
def _main() -> None:
    """Batch lip-synced talking-head videos on Ray."""
    # A pipe's reader that ended, or a terminal closed under a run: the command goes on and
    # ends with the status of what it did (streams.py).
    forgive_gone_readers()
    # `kill -USR1 <pid>` prints where every thread of this process is, to stderr, and the
    # command goes on: for a run that seems stuck (docs/operations-faults.md).
    if sys.__stderr__ is not None:  # None, or without a file descriptor: embedded, nowhere to print
        with contextlib.suppress(OSError):
            faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)


class _Bar(RunCallbacks):
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = progress.add_task("jobs", total=None, frames=0, failed=0)
        self.failed = 0
        self.failed_at_once = 0  # rows that failed without a job (MissingInputs)
        self.began = False  # connected to Ray: jobs may have run

    def started(self, jobs: int) -> None:
        self.progress.update(self.task, total=jobs)

    def connected(self, dashboard_url: str | None) -> None:
        self.began = True
        self.progress.start()  # only now: a run that cannot connect prints its error alone
        if dashboard_url:
            self.progress.console.print(f"Ray dashboard: {escape(dashboard_url)}", soft_wrap=True)

    def waiting(self, line: str) -> None:
        self.progress.console.print(escape(line), soft_wrap=True)

    def workers(self, infos: list[WorkerInfo]) -> None:
        for line in describe_workers(infos):
            self.progress.console.print(escape(line), soft_wrap=True)

    def again(self, why: dict[str, int]) -> None:
        for line in again_lines(why):
            self.progress.console.print(escape(line), soft_wrap=True)

    def job_done(self, result: JobResult) -> None:
        if result.status == "failed":
            self.failed += 1
            if result.attempts or not self.failed_at_once:  # each failure as it happens, …
                self.progress.console.print(f"[red]failed[/red] {escape(result.error or '')}", soft_wrap=True)
            if not result.attempts:  # … but one of the rows that fail at once (no job started) stands for all
                if not self.failed_at_once:
                    self.progress.console.print(
                        "  (rows naming a file that a job of this run found missing fail at once; "
                        "they are counted, not printed)", soft_wrap=True,
                    )  # fmt: skip
                self.failed_at_once += 1
        self.progress.update(self.task, advance=1, failed=self.failed)

    def frames_done(self, frames: int) -> None:
        self.progress.update(self.task, frames=frames)


def describe_workers(infos: list[WorkerInfo]) -> list[str]:
    """One line per kind of worker: how many, where, which backend and why."""
    groups: dict[tuple, int] = {}
    for i in infos:
        key = (i.device.gpu or "CPU", i.backend, i.precision, i.backend_note)
        groups[key] = groups.get(key, 0) + 1
    return [
        # (the note: why faster backends, the precision asked for or the GPU were not used, and
        # the restoration's notes: each says what it is about)
        f"workers: {n} × {dev}, backend {backend} ({precision})" + (f"; {note}" if note else "")
        for (dev, backend, precision, note), n in groups.items()
    ]


@app.command()
def submit(
    manifest: Annotated[Path, typer.Argument(help="CSV or Parquet file with columns audio and video (and optionally job_id, output).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", parser=_folder, help="Folder for the MP4s and results.parquet.")] = Path("out"),
    pack: Annotated[str, typer.Option(help="Model pack: 'warp' (no weights, default), 'wav2lip' or 'musetalk' (both need --checkpoint).")] = "warp",
    checkpoint: Annotated[Path | None, typer.Option(help="The pack's weights: for wav2lip the public generator checkpoint (wav2lip.pth or wav2lip_gan.pth); for musetalk MuseTalk's models/ folder.")] = None,
    restore: Annotated[str, typer.Option(help=_RESTORE_HELP)] = "none",
    restore_checkpoint: Annotated[Path | None, typer.Option(help=_RESTORE_CHECKPOINT_HELP)] = None,
    restore_blend: Annotated[float, typer.Option(help=_RESTORE_BLEND_HELP)] = RenderConfig.restore_blend,
    loop: Annotated[str, typer.Option(help="When the audio outlasts the reference: 'pingpong' (default), 'forward', or 'trim' (cut the output where the reference ends).")] = "pingpong",
    address: Annotated[str | None, typer.Option(help="Ray cluster to use: 'auto', HOST:PORT or ray://HOST:PORT. Without it a local Ray instance starts.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(parser=_folder, help="Where analysed references are cached (default: ~/.cache/heygem-ray/templates).")] = None,
    chunk_frames: Annotated[int, typer.Option(help="Frames per chunk sent to the model workers.")] = 128,
    preset: Annotated[str, typer.Option(help="x264's speed preset, from 'ultrafast' to 'veryslow', or 'lean' (the default: 'veryfast' without its two costliest searches, about two thirds of its CPU on camera footage for files of about the same size): faster encodes cost less CPU and give larger files at the same quality.")] = RenderConfig.preset,
    encoder: Annotated[str, typer.Option(help="H.264 encoder: 'auto' (h264_nvenc where the node's GPU has NVENC, else libx264), 'libx264' or 'h264_nvenc'.")] = RenderConfig.encoder,
    min_face: Annotated[int, typer.Option(help="Smallest face searched for in the reference, in pixels wide (at least 20; smaller costs more analysis time).")] = DetectorConfig().min_face,
    max_resolution: Annotated[int, typer.Option(help="The videos' resolution at most, in lines (their shorter side): 1080 renders a 4K reference at 1920×1080, about a quarter of the analysis, cache, compose and encoding cost. A larger reference is scaled down before it is analysed, so --min-face counts pixels at that size. 0 (the default): the reference's own.")] = 0,
    max_fps: Annotated[int, typer.Option(help="The videos' frame rate at most: a faster reference (a phone's 60 fps) is read with every k-th frame kept, k the fewest that bring it under (60 → 30 for 30, 50 → 25), which for a 60-fps take costs each row about 1.7× less CPU and its template half the disk. At least 20; a rate no whole k brings between 20 and it stays as it is. 0 (the default): the reference's own.")] = 0,
    reference_seconds: Annotated[float, typer.Option(help="Use only the first this many seconds of each reference video (at least 1): a longer take, such as a whole recorded lecture, is analysed and cached only that far, and looped under longer audio like any take. 0 (the default): all of it. --max-reference-frames then bounds the frames used; the file may hold up to twelve hours at 60 fps.")] = 0.0,
    reference_start: Annotated[float, typer.Option(help="Use each reference video from this many seconds in: a recorded lecture that opens without the presenter (setting up, a title) is used from where they are there; --reference-seconds counts from it. An MP4, MOV or MKV is read from the keyframe before it; the frames before it are not analysed or cached. 0 (the default): from its beginning. A photo is used whole.")] = 0.0,
    max_reference_pixels: Annotated[int, typer.Option(help="A reference with more pixels (width × height) fails its row before it is decoded (default: 8K UHD, 7680×4320).")] = InputLimits.max_reference_pixels,
    max_reference_frames: Annotated[int, typer.Option(help="A reference video with more frames fails its row before it is decoded (default: an hour at 25 fps); with --reference-seconds, the frames used.")] = InputLimits.max_reference_frames,
    max_audio_seconds: Annotated[float, typer.Option(help="Audio longer than this fails its row, from its header before it is decoded (default: 4 hours).")] = InputLimits.max_audio_seconds,
    allow_silent_audio: Annotated[bool, typer.Option("--allow-silent-audio", help="Render audio with no sound in it (nothing louder than -60 dBFS for 0.2 s): by default such a row fails 'silent_audio', as a muted or wrong file would give a presenter whose mouth never moves.")] = False,
    backend: Annotated[str, typer.Option(help="Inference backend: 'auto' (TensorRT, then ONNX Runtime, then PyTorch: the first that works), 'tensorrt', 'onnxruntime' or 'pytorch'.")] = "auto",
    precision: Annotated[str, typer.Option(help="'auto' (fp16 on a GPU, fp32 on a CPU; int8 first where it pays when --calibrate is given), 'fp32', 'fp16', 'int8' (calibrated, used only if it passes the accuracy gate) or 'bf16' (PyTorch; on CPUs with AVX-512 BF16 or AMX).")] = "auto",
    calibrate: Annotated[Path | None, typer.Option(help="For int8: a manifest (columns audio and video) of your presenter and their speech to calibrate on (default: the bundled examples).")] = None,
    calibration_frames: Annotated[int, typer.Option(help="For int8: frames that calibrate the activation ranges; a quarter as many more are held out for the accuracy gate.")] = RenderConfig.calibration_frames,
    engines: Annotated[Path | None, typer.Option(parser=_folder, help=_ENGINES_HELP)] = None,
    device: Annotated[str, typer.Option(help="Where model workers run: 'gpu' (one GPU each; a worker that cannot use its GPU stops the run), 'cpu', or 'auto' (gpu when the cluster has GPUs or its autoscaler can add them, cpu when it has CPUs only; on an empty cluster the first node to join decides).")] = "auto",
    workers: Annotated[int, typer.Option(help="Model workers to start (0: one per GPU the cluster has or can autoscale to; on CPUs, from the core count).")] = 0,
    start_timeout: Annotated[float, typer.Option(help="Seconds to wait for the first model worker: nodes joining, models loading, engines building.")] = RunConfig.workers_ready_timeout_s,
    chunk_timeout: Annotated[float, typer.Option(help="Seconds a chunk may render, plus --chunk-timeout-per-frame for each of its frames; past that its worker is taken as wedged, stopped and replaced, and the chunk sent to another.")] = RunConfig.chunk_timeout_s,
    chunk_timeout_per_frame: Annotated[float, typer.Option(help="Seconds per frame added to --chunk-timeout (generous for CPUs; on GPUs 1 is plenty).")] = RunConfig.chunk_timeout_per_frame_s,
    job_stall_timeout: Annotated[float, typer.Option(help="Seconds a job may go without reading or writing anything (its files, ffmpeg, its template, buckets) while not waiting on a model worker; past that it is taken as stalled (a network file system that stopped answering), its task stopped and the job tried once more; stalled again, its row fails.")] = RunConfig.job_stall_timeout_s,
    worker_restarts: Annotated[int, typer.Option(help="Model workers that die or are stopped are replaced up to this many times the workers wanted; past that the others go on, and with none left the run stops (exit 2).")] = RunConfig.worker_restarts,
    max_jobs: Annotated[int, typer.Option(help="Jobs rendered at once across the cluster (0, the default: one per CPU Ray has, at least two per model worker; a node runs at most one per CPU Ray gives it). Fewer hold less memory: where rows fail 'out_of_memory' on a machine of your own, lower it.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Render every row again, even those an earlier run into OUTPUT_DIR completed (by default they are skipped).")] = False,
) -> None:
    """Render every row of MANIFEST to an MP4 and write OUTPUT_DIR/results.parquet.

    Exit status: 0 when every row succeeded, 1 when any row failed or the run stopped
    part-way, 2 when the command line or the manifest is unusable, or another run holds
    OUTPUT_DIR (nothing was rendered), or the model workers could not start or none is
    left (the table, if any job began, says which rows ended), 130 on Ctrl-C, 143 on
    SIGTERM and 129 on SIGHUP (its terminal closed; not under nohup): the table is written.
    """
    heap.limit_arenas()  # this process is the run's driver: before Ray starts its threads
    bar: _Bar | None = None  # the progress callbacks, once made
    try:
        cfg = RunConfig(
            output_dir=output_dir,
            render=RenderConfig(
                # RenderConfig checks the choices and names the wrong one.
                pack=cast(PackName, pack),
                checkpoint=checkpoint,
                restore=cast(RestoreName, restore),
                restore_checkpoint=restore_checkpoint,
                restore_blend=restore_blend,
                loop=cast(LoopMode, loop),
                chunk_frames=chunk_frames,
                preset=cast(EncoderPreset, preset),
                encoder=cast(EncoderName, encoder),
                backend=cast(BackendName, backend),
                precision=cast(PrecisionName, precision),
                calibration=calibrate,
                calibration_frames=calibration_frames,
                detector=DetectorConfig(min_face=min_face),
                max_resolution=max_resolution,
                max_fps=max_fps,
                reference_seconds=reference_seconds,
                reference_start=reference_start,
                limits=InputLimits(
                    max_reference_pixels=max_reference_pixels,
                    max_reference_frames=max_reference_frames,
                    max_audio_seconds=max_audio_seconds,
                    allow_silent_audio=allow_silent_audio,
                ),
            ),
            engines_dir=engines or default_engines_dir(),
            device=cast(WorkerDevice, device),
            workers=workers,
            workers_ready_timeout_s=start_timeout,
            chunk_timeout_s=chunk_timeout,
            chunk_timeout_per_frame_s=chunk_timeout_per_frame,
            job_stall_timeout_s=job_stall_timeout,
            worker_restarts=worker_restarts,
            max_jobs_in_flight=max_jobs,
            force=force,
            cache_dir=cache_dir or default_cache_dir(),
            address=address,
        )
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[frames]} frames · {task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        progress = Progress(*columns, console=err, transient=False)
        bar = _Bar(progress)
        try:
            summary = run_submit(manifest, cfg, bar)
        finally:
            if progress.live.is_started:
                progress.stop()
    except Interrupted as exc:  # Ctrl-C, SIGTERM or SIGHUP once the run began: the table is written
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(exc.exit_status) from None
    except KeyboardInterrupt:  # Ctrl-C before the run began (reading the manifest, connecting), or a second one
        if bar is not None and bar.began:  # at once, with no table written: what ended is kept all the same
            print(f"error: stopped at once by Ctrl-C, with no {RESULTS_FILE} written; the rows of the jobs that ended "
                  f"are kept in {output_dir / PARTS_DIR} ('heygem-ray status {output_dir}' reads them), and running "
                  "the same command again renders only the rest", file=sys.stderr)  # fmt: skip
        else:
            print("error: stopped by Ctrl-C before any work", file=sys.stderr)
        raise typer.Exit(128 + signal.SIGINT) from None
    except RunStopped as exc:  # after work began: some rows may be rendered
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(exc.exit_status) from None
    except HeygemError as exc:
        # Plain text, never wrapped: messages name files that users copy and grep for.
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    done_before = f" ({summary.skipped} skipped: complete from an earlier run)" if summary.skipped else ""
    print(f"{summary.ok} of {summary.total} jobs rendered{done_before} into {cfg.output_dir.resolve()}")
    print(f"results: {summary.results_path.resolve()}")
    outputs = (f"  {r.output}" for r in summary.rows() if r.status != "failed")
    _print_some(outputs, summary.ok + summary.skipped, "outputs", sys.stdout)
    if summary.failed:
        print(f"{summary.failed} job(s) failed:", file=sys.stderr)
        failures = (f"  [{r.error_kind}] {r.error}" for r in summary.rows("failed"))
        _print_some(failures, summary.failed, "failures", sys.stderr)
        raise typer.Exit(1)


def _print_some(lines: Iterator[str], count: int, what: str, stream: TextIO) -> None:
    """The first ``LISTED`` of ``count`` lines, then one line for the rest."""
    for line in itertools.islice(lines, LISTED):
        print(line, file=stream)
    if count > LISTED:
        more = f"  … and {count - LISTED} more {what}: every row is in results.parquet ('heygem-ray status' sums it up)"
        print(more, file=stream)



@app.command()
def preview(
    reference: Annotated[Path | None, typer.Argument(help="The presenter's take: a video (or a photo) as a manifest's video column names it (or --manifest).")] = None,
    audio: Annotated[Path | None, typer.Argument(help="Speech to render the first --seconds of (default: the bundled lesson, examples/lesson1.wav).")] = None,
    manifest: Annotated[str | None, typer.Option(help="Check every reference tonight's manifest names instead (with each row's own reference_start and reference_seconds, and the longest of its rows' audio), and write OUTPUT_DIR/<manifest>-previewed.csv with the settings the checks advise filled in.", show_default=False)] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", parser=_folder, help="Folder for the contact sheet (PNG), the side-by-side video (MP4) and the checks (JSON).")] = Path("preview"),
    pack: Annotated[str, typer.Option(help="Model pack, as for submit: 'warp' (default), 'wav2lip' or 'musetalk' (both need --checkpoint).")] = "warp",
    checkpoint: Annotated[Path | None, typer.Option(help="The pack's weights (see submit --help).")] = None,
    seconds: Annotated[float, typer.Option(help="Seconds of the audio rendered into the side-by-side video.")] = 5.0,
    loop: Annotated[str, typer.Option(help="The loop mode tonight's batch uses (see submit --help): the length check reads it.")] = "pingpong",
    min_face: Annotated[int, typer.Option(help="As for submit: use tonight's value, so the template this analyses is the one the batch finds.")] = DetectorConfig().min_face,
    max_resolution: Annotated[int, typer.Option(help="As for submit (0: the reference's own): use tonight's value, so the template this analyses is the one the batch finds.")] = 0,
    max_fps: Annotated[int, typer.Option(help="As for submit (0: the reference's own): use tonight's value, so the template this analyses is the one the batch finds.")] = 0,
    reference_seconds: Annotated[float, typer.Option(help="As for submit (0: all of each reference): use tonight's value, so the template this analyses is the one the batch finds.")] = 0.0,
    reference_start: Annotated[float, typer.Option(help="As for submit (0: from its beginning): use tonight's value, so the template this analyses is the one the batch finds.")] = 0.0,
    cache_dir: Annotated[Path | None, typer.Option(parser=_folder, help="Where analysed references are cached (default: ~/.cache/heygem-ray/templates): tonight's, to warm it.")] = None,
    backend: Annotated[str, typer.Option(help="Inference backend, as for submit (default 'auto').")] = "auto",
    max_reference_pixels: Annotated[int, typer.Option(help="As for submit: a reference with more pixels is refused before it is decoded (default: 8K UHD).")] = InputLimits.max_reference_pixels,
    max_reference_frames: Annotated[int, typer.Option(help="As for submit: a reference video with more frames is refused before it is decoded (default: an hour at 25 fps).")] = InputLimits.max_reference_frames,
    allow_silent_audio: Annotated[bool, typer.Option("--allow-silent-audio", help="As for submit: audio with no sound in it (the AUDIO given, or with --manifest a row's) is said to fail 'silent_audio' unless tonight's batch allows it.")] = False,
    engines: Annotated[Path | None, typer.Option(parser=_folder, help=_ENGINES_HELP)] = None,
) -> None:
    """Check REFERENCE before a batch uses it, on this machine (no cluster): prints one
    line per check (ok, warn or fail, the figure and what to do), and writes a contact
    sheet, the first --seconds of AUDIO rendered beside the reference, and the checks as JSON.
    With --manifest, every reference of tonight's manifest is checked so, and a copy of the
    manifest with the settings the checks advise is written.

    Exit status: 0 when no check failed (warnings may be printed), 1 when a check failed
    (the videos would plainly be wrong; with --manifest, also a reference or a row that
    cannot be used), 2 when REFERENCE, AUDIO or the manifest cannot be used or the options
    are wrong (nothing is checked).
    """
    from heygem_ray.driver.stop import StopSignals
    from heygem_ray.preview import preview as run_preview

    # SIGTERM (a job scheduler's stop, ``kill``) as Ctrl-C: the analysis being built is
    # removed, where the process died with it left half built in the cache.
    stops = StopSignals()
    try:
        cfg = RenderConfig(
            pack=cast(PackName, pack), checkpoint=checkpoint, loop=cast(LoopMode, loop),
            backend=cast(BackendName, backend), detector=DetectorConfig(min_face=min_face),
            max_resolution=max_resolution, max_fps=max_fps, reference_seconds=reference_seconds,
            reference_start=reference_start,
            limits=InputLimits(max_reference_pixels=max_reference_pixels, max_reference_frames=max_reference_frames,
                               allow_silent_audio=allow_silent_audio),
        )  # fmt: skip
        if (reference is None) == (manifest is None) or (manifest is not None and audio is not None):
            raise InputError("give a REFERENCE (and its AUDIO, if you like), or --manifest MANIFEST, not both",
                             kind="bad_argument")  # fmt: skip
        cache_dir, output_dir = _home(cache_dir) or default_cache_dir(), storage.from_home(output_dir)
        if manifest is not None:
            _preview_manifest(storage.location(manifest), cfg, cache_dir, _engine_store(engines, None), output_dir,
                              seconds)  # fmt: skip
            return
        assert reference is not None
        found = run_preview(storage.from_home(reference), _home(audio), cfg, cache_dir, _engine_store(engines, None),
                            output_dir, seconds)  # fmt: skip
    except HeygemError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    except Interrupted as exc:
        print(f"error: stopped by {exc.message}; nothing half done is left", file=sys.stderr)
        raise typer.Exit(exc.exit_status) from None
    finally:
        stops.restore()
    for check in found.checks:
        print(check.line())
    print(f"verdict: {found.verdict}")
    for path in (found.sheet, found.video, found.report):
        print(f"  {path.resolve()}")
    if found.verdict == "fail":
        raise typer.Exit(1)


def _preview_manifest(
    manifest: storage.Location, cfg: RenderConfig, cache_dir: Path, engines: storage.Location, output_dir: Path,
    seconds: float,
) -> None:
    """``preview --manifest``: each reference's checks as they are done, then the rows that
    cannot be rendered, the settings filled in, and a line of counts; exit 1 where any failed."""
    from heygem_ray.manifest import ROW_SETTINGS
    from heygem_ray.preview import Checked, preview_manifest

    def checked(ref: Checked) -> None:
        rows = ", ".join(map(str, ref.rows))
        own = [f"{name} {getattr(ref.cfg, name):g}" for name in ROW_SETTINGS if getattr(ref.cfg, name)]
        print(f"reference {ref.video} (row{'s' if len(ref.rows) > 1 else ''} {rows}{'; ' if own else ''}"
              f"{', '.join(own)})")  # fmt: skip
        if ref.found is None:
            print(f"  fail  {ref.error.message if ref.error else 'not checked'}")
        else:
            for check in ref.found.checks:
                print(f"  {check.line()}")
            print(f"  verdict: {ref.verdict}  ({ref.found.report.resolve()})")

    found = preview_manifest(manifest, cfg, cache_dir, engines, output_dir, seconds, checked)
    for job, problem in found.problems:
        print(f"{job.label}: cannot be rendered: {problem.message}")
    counts = collections.Counter(ref.verdict for ref in found.references)
    print(f"{len(found.references)} reference{'s' if len(found.references) != 1 else ''} checked: "
          + ", ".join(f"{counts[level]} {level}" for level in ("ok", "warn", "fail") if counts[level])
          + (f"; {len(found.problems)} row{'s' if len(found.problems) != 1 else ''} cannot be rendered"
             if found.problems else ""))  # fmt: skip
    if found.manifest is not None:
        by_settings: dict[str, list[int]] = {}
        for row, settings in found.filled.items():
            said = ", ".join(f"{name} {value:g}" for name, value in settings.items())
            by_settings.setdefault(said, []).append(row)
        for said, rows in by_settings.items():
            print(f"row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))}: {said}")
        print(f"  {found.manifest.resolve()}: the manifest with these settings (submit it, or preview it again)")
    print(f"verdict: {found.verdict}")
    if found.verdict == "fail":
        raise typer.Exit(1)


engines_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Build and inspect the engine store (ONNX graphs, TensorRT engines).")
app.add_typer(engines_app, name="engines")


@engines_app.command("build")
def engines_build(
    pack: Annotated[str, typer.Option(help="Model pack: 'warp', 'wav2lip' or 'musetalk'.")] = "warp",
    checkpoint: Annotated[Path | None, typer.Option(help="The pack's weights (see submit --help).")] = None,
    restore: Annotated[str, typer.Option(help="Also build the restoration stage's: 'none' (default) or 'gfpgan' (needs --restore-checkpoint).")] = "none",
    restore_checkpoint: Annotated[Path | None, typer.Option(help=_RESTORE_CHECKPOINT_HELP)] = None,
    backend: Annotated[str, typer.Option(help="'onnxruntime' (ONNX graphs) or 'tensorrt' (engines for this GPU).")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="'auto' (fp16 on a GPU, fp32 on a CPU), 'fp32', 'fp16' or 'int8' (calibrated QDQ graphs, checked by the accuracy gate).")] = "auto",
    calibrate: Annotated[Path | None, typer.Option(help="For int8: a manifest (columns audio and video) of your presenter and their speech to calibrate on (default: the bundled examples).")] = None,
    calibration_frames: Annotated[int, typer.Option(help="For int8: frames that calibrate the activation ranges; a quarter as many more are held out for the accuracy gate.")] = RenderConfig.calibration_frames,
    batch_size: Annotated[int, typer.Option(help="Frames per model call the workers will send (sets the TensorRT batch profile).")] = 32,
    engines: Annotated[Path | None, typer.Option(parser=_folder, help=_ENGINES_HELP)] = None,
    store: Annotated[Path | None, typer.Option(hidden=True, help="The old spelling of --engines.")] = None,
) -> None:
    """Build the pack's engines (and, with --restore, the restoration stage's) ahead of
    time for the GPU (or CPU) this runs on.

    Exit status: 0 when built, 2 when the options are wrong or the engines cannot be
    built or used here (an int8 set the accuracy gate refuses, with its figures)."""
    from heygem_ray.calibration import calibration_for
    from heygem_ray.engines import EngineStore
    from heygem_ray.hardware import DeviceInfo
    from heygem_ray.packs import get_pack
    from heygem_ray.precision import open_first, precision_order
    from heygem_ray.restore.stage import load_restorer, open_restorer

    try:
        where = _engine_store(engines, store)
        if backend not in ("onnxruntime", "tensorrt"):
            raise HeygemError(f"unknown backend {backend!r}: choose onnxruntime or tensorrt", kind="bad_argument")
        cfg = RenderConfig(
            pack=cast(PackName, pack), checkpoint=checkpoint, precision=cast(PrecisionName, precision),
            calibration=calibrate, calibration_frames=calibration_frames, batch_size=batch_size,
            restore=cast(RestoreName, restore), restore_checkpoint=restore_checkpoint,
        )
        spec = get_pack(cfg.pack)
        restore_stages = load_restorer(cfg) if cfg.restore != "none" else None  # a wrong file: before any build
        device = DeviceInfo.detect()
        engine_store = EngineStore(where)
        precisions = precision_order(cfg.precision, device.device, spec, calibrated=calibrate is not None)
        calibration = calibration_for(spec, precisions, calibrate, engine_store.root / "calibration",
                                      cfg.calibration_frames)
        chosen, gated = open_first(
            spec, spec.load_stages(cfg.checkpoint), precisions, calibration, device=device.device,
            store=engine_store, backend=cast(BackendName, backend), batch_sizes=[batch_size],
        )
        sets = [chosen]
        if cfg.restore != "none":
            try:
                sets.append(open_restorer(cfg, chosen.precision, device=device.device, store=engine_store,
                                          backend=cast(BackendName, backend), stages=restore_stages))
            except BaseException:
                chosen.close()
                raise
    except HeygemError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    for built in sets:
        for stage, key in built.engine_keys.items():
            print(f"{stage}: {where / key.dirname()}")
    if gated is not None and calibration is not None:
        print(f"int8: calibration {calibration.id}; accepted by the accuracy gate: {gated.describe()}")
    for built in sets:
        if built.note:
            print(f"note: {built.note}")
        built.close()


@engines_app.command("list")
def engines_list(
    engines: Annotated[Path | None, typer.Option(parser=_folder, help=_ENGINES_HELP)] = None,
    store: Annotated[Path | None, typer.Option(hidden=True, help="The old spelling of --engines.")] = None,
) -> None:
    """Print what the engine store holds.

    Exit status: 0 when listed, 2 when the store cannot be read."""
    from rich.table import Table

    from heygem_ray.engines import EngineStore

    table = Table("pack", "stage", "precision", "backend", "version", "arch", "profile", "size", "built", "ok")
    try:
        entries = EngineStore(_engine_store(engines, store)).list()
    except HeygemError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    for e in entries:
        table.add_row(
            e.pack, e.stage, e.precision, e.backend, e.backend_version, e.arch, e.profile or "-",
            f"{e.size / 2**20:.1f} MiB", e.built_at, "yes" if e.ok else "NO",
        )
    Console(width=200).print(table)


@app.command()
def doctor() -> None:
    """Print this machine's device, for each backend whether it can run here and why not,
    and which one ``--backend auto`` picks for each pack."""
    from heygem_ray.backends import auto_order, ort, trt
    from heygem_ray.hardware import BF16_FLAGS, DeviceInfo, cpu_flags, int8_pays
    from heygem_ray.packs import get_pack

    device = DeviceInfo.detect()
    print(f"device: {device.device}" + (f" ({device.gpu}, compute capability {device.compute_capability})" if device.gpu else ""))
    checks = {
        "tensorrt": trt.available(),
        "onnxruntime": ort.available(device.device),
        "pytorch": (True, ""),
    }
    for name, (ok, why) in checks.items():
        print(f"{name:12s} {'usable' if ok else 'not usable: ' + why}")
    for where in ("cpu", device.device) if device.gpu else ("cpu",):
        fast, why = int8_pays(where)
        print(f"int8 on {'the GPU' if where != 'cpu' else 'this CPU'}: {'fast' if fast else 'not fast'} ({why})")
    bf16 = sorted(cpu_flags() & set(BF16_FLAGS))
    print(f"bf16 on this CPU: {'fast (' + ', '.join(bf16) + ')' if bf16 else 'not fast (no ' + ', '.join(BF16_FLAGS) + '); --precision bf16 runs fp32'}")
    for line in _media_lines():
        print(line)
    for pack in get_args(PackName):
        picked = next((name for name in auto_order(get_pack(pack), device.device) if checks[name][0]), "none")
        print(f"auto for {pack}: {picked}")


def _media_lines() -> list[str]:
    """doctor's lines on the ffmpeg in use: where it is, whether it can tone-map HDR
    references, and what decodes references and encodes the videos on this machine."""
    from heygem_ray.media import decoders, encoders, ffmpeg_exe
    from heygem_ray.media.ffmpeg import missing_filters

    try:
        exe = ffmpeg_exe()
    except HeygemError as exc:
        return [f"ffmpeg: not usable: {exc.message}"]
    missing = missing_filters()
    hdr = "tone-mapped to SDR" if not missing else f"refused (this ffmpeg has no {' or '.join(missing)} filter)"
    nvdec, nvenc = decoders.nvdec_missing(), encoders.nvenc_missing()
    return [
        f"ffmpeg: {exe}; HDR references: {hdr}",
        f"references decoded by: {'NVDEC' if nvdec is None else 'the CPU (' + nvdec + ')'}",
        f"videos encoded by: {'h264_nvenc' if nvenc is None else 'libx264 (' + nvenc + ')'}",
    ]


@app.command()
def status(
    output_dir: Annotated[Path, typer.Argument(help="The folder a run wrote (its --output-dir): a path, or a bucket URI (s3://…, gs://…).")],
) -> None:
    """Summarise the run in OUTPUT_DIR: rows ok / failed / skipped, frames, time per stage,
    realtime factor, the slowest jobs and the failures by kind. Works while the run is
    still going (or after it was stopped) from the rows of the jobs that ended, and says
    which.

    Exit status: 0 when the run ended and no row failed, 1 when it ended and a row failed,
    2 when OUTPUT_DIR holds no results, 3 when the run is unfinished (going on, or stopped
    before it wrote its table: rows may be missing).
    """
    from heygem_ray import report

    try:
        summary = report.summarize(report.load_run(storage.location(output_dir)))
    except HeygemError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(report.format_status(summary))
    if summary.state == "unfinished":
        raise typer.Exit(3)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def report(
    output_dir: Annotated[Path, typer.Argument(help="The folder a run wrote (its --output-dir): a path, or a bucket URI (s3://…, gs://…).")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the page: a name ending in .html (default: OUTPUT_DIR/report.html).")] = None,
    thumbnails: Annotated[int, typer.Option(help="Frames shown per output (0: none, for a small page).")] = 4,
) -> None:
    """Write one self-contained HTML page about the run in OUTPUT_DIR: thumbnails of every
    output with its status and figures, and the failures. Prints the page's path.

    Exit status: 0 when the page was written, 2 when OUTPUT_DIR holds no results.
    """
    from heygem_ray import report as report_mod

    try:
        path = report_mod.write_report(storage.location(output_dir), out, thumbnails)
    except HeygemError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(path.resolve())


cache_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Inspect and prune the template cache (analysed references).")
app.add_typer(cache_app, name="cache")
_CACHE_HELP = "The template cache (--cache-dir of submit and preview; default: ~/.cache/heygem-ray/templates)."


@cache_app.command("list")
def cache_list(
    cache_dir: Annotated[Path | None, typer.Option(parser=_folder, help=_CACHE_HELP)] = None,
) -> None:
    """Print the templates in the cache, least recently used first: size, when a run last
    used it, its template version, the reference it was analysed from and its frames' size;
    then their total, and the space free on the cache's disk (a new analysis holds what it
    needs there before it goes on).

    Exit status: 0 when listed, 2 when the cache cannot be read."""
    from heygem_ray.template.cache import check_folder, scan

    folder = _home(cache_dir) or default_cache_dir()
    try:
        if cache_dir is not None:  # (the default is made by the first analysis)
            check_folder(folder)
        entries = scan(folder)
    except HeygemError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    for e in entries:
        print(_cache_line(e))
    free = f"; its disk has {storage.readable_size(shutil.disk_usage(folder).free)} free" if folder.is_dir() else ""
    print(f"{len(entries)} in {folder}, {storage.readable_size(sum(e.bytes for e in entries))}{free}")


@cache_app.command("prune")
def cache_prune(
    unused_days: Annotated[float, typer.Option(help="Remove the templates no run has used for this many days.")] = 30.0,
    cache_dir: Annotated[Path | None, typer.Option(parser=_folder, help=_CACHE_HELP)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be removed; remove nothing.")] = False,
) -> None:
    """Remove the templates no run has used for --unused-days (default 30), among them those
    of earlier versions, which this one never reads, and what killed builds left. A template
    in use (being built, or a job opening it) is left, and said so; a job reading one reads
    on. Safe while runs go on (a job marks its template used when it starts: give
    --unused-days longer than a job runs); a pruned reference is analysed again when next used.
    A second prune of the same cache waits for the first.

    Exit status: 0 when pruned (or nothing was due), 2 when the cache cannot be read or written."""
    from heygem_ray.template.cache import prune

    folder = _home(cache_dir) or default_cache_dir()
    if not math.isfinite(unused_days) or unused_days < 0:
        print("error: --unused-days must be a number of days, 0 or more", file=sys.stderr)
        raise typer.Exit(2)
    if cache_dir is None and not folder.exists():
        print(f"nothing to prune: no analysis has made {folder} yet")
        return
    try:
        removed, busy = prune(
            folder, unused_days * 86400, dry_run=dry_run,
            waiting=lambda: print(f"another prune of {folder} is running: waiting for it to finish", file=sys.stderr),
        )  # fmt: skip
    except HeygemError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        print(f"{verb} {_cache_line(e)}")
    for e in busy:
        print(f"in use, left {_cache_line(e)}")
    print(f"{verb} {len(removed)} from {folder}, {storage.readable_size(sum(e.bytes for e in removed))}"
          + (f"; {len(busy)} in use, left" if busy else ""))


def _cache_line(e: Entry) -> str:
    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
    if e.leftover:
        what = "being built" if e.busy and e.path.suffix == ".tmp" else "left by a killed build"
    else:
        what = f"v{e.version if e.version is not None else '?'} {e.source or '(unreadable meta.json)'}"
        if e.size:
            what += f" ({e.size})"
        if e.busy:
            what += ", in use"
    return f"{e.path}  {storage.readable_size(e.bytes)}  used {used}  {what}"
