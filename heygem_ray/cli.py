"""The ``heygem-ray`` command line. Options map onto the config dataclasses here, once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from heygem_ray.config import LoopMode, PackName, RenderConfig, RunConfig, default_cache_dir
from heygem_ray.errors import HeygemError
from heygem_ray.results import JobResult
from heygem_ray.run import RunCallbacks, submit as run_submit

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Batch lip-synced talking-head videos on Ray.")
err = Console(stderr=True)


@app.callback()
def _main() -> None:
    """Batch lip-synced talking-head videos on Ray."""


class _Bar(RunCallbacks):
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = progress.add_task("jobs", total=None, frames=0, failed=0)
        self.failed = 0

    def started(self, jobs: int) -> None:
        self.progress.update(self.task, total=jobs)

    def connected(self, dashboard_url: str | None) -> None:
        if dashboard_url:
            self.progress.console.print(f"Ray dashboard: {dashboard_url}", soft_wrap=True)

    def job_done(self, result: JobResult) -> None:
        if result.status == "failed":
            self.failed += 1
            self.progress.console.print(f"[red]failed[/red] {result.error}", soft_wrap=True)
        self.progress.update(self.task, advance=1, failed=self.failed)

    def frames_done(self, frames: int) -> None:
        self.progress.update(self.task, frames=frames)


@app.command()
def submit(
    manifest: Annotated[Path, typer.Argument(help="CSV or Parquet file with columns audio and video (and optionally job_id, output).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the MP4s and results.parquet.")] = Path("out"),
    pack: Annotated[str, typer.Option(help="Model pack: 'warp' (no weights, default) or 'wav2lip' (needs --checkpoint).")] = "warp",
    checkpoint: Annotated[Path | None, typer.Option(help="Public Wav2Lip generator checkpoint (wav2lip.pth or wav2lip_gan.pth) for --pack wav2lip.")] = None,
    loop: Annotated[str, typer.Option(help="When the audio outlasts the reference: 'pingpong' (default), 'forward', or 'trim' (cut the output where the reference ends).")] = "pingpong",
    address: Annotated[str | None, typer.Option(help="Ray cluster to use: 'auto', HOST:PORT or ray://HOST:PORT. Without it a local Ray instance starts.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Where analysed references are cached (default: ~/.cache/heygem-ray/templates).")] = None,
    chunk_frames: Annotated[int, typer.Option(help="Frames per chunk sent to the model workers.")] = 128,
) -> None:
    """Render every row of MANIFEST to an MP4 and write OUTPUT_DIR/results.parquet.

    Exit status: 0 when every row succeeded, 1 when any row failed, 2 when the command
    line or the manifest is unusable (nothing was rendered).
    """
    try:
        cfg = RunConfig(
            output_dir=output_dir,
            render=RenderConfig(
                # RenderConfig checks the choices and names the wrong one.
                pack=cast(PackName, pack),
                checkpoint=checkpoint,
                loop=cast(LoopMode, loop),
                chunk_frames=chunk_frames,
            ),
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
        with Progress(*columns, console=err, transient=False) as progress:
            summary = run_submit(manifest, cfg, _Bar(progress))
    except HeygemError as exc:
        # Plain text, never wrapped: messages name files that users copy and grep for.
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(2) from None
    ok = sum(r.status == "ok" for r in summary.results)
    print(f"{ok} of {len(summary.results)} jobs rendered into {cfg.output_dir.resolve()}")
    print(f"results: {summary.results_path.resolve()}")
    for r in summary.results:
        if r.status == "ok":
            print(f"  {r.output}")
    if summary.failed:
        print(f"{len(summary.failed)} job(s) failed:", file=sys.stderr)
        for r in summary.failed:
            print(f"  [{r.error_kind}] {r.error}", file=sys.stderr)
        raise typer.Exit(1)

