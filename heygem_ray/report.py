"""What a run did, for people: ``heygem-ray status`` (text) and ``heygem-ray report`` (HTML).

1. :func:`load_run` reads the results of an output folder: ``results.parquet`` after a
   run ended; the per-job part files (``.heygem-results/*.parquet``, see
   :mod:`heygem_ray.driver.resume`) while a run is going or after one was stopped; both when a
   later run into the same folder has finished jobs since the table was written.
2. :func:`summarize` turns the rows into a :class:`Summary` (counts, frames, times,
   the slowest jobs, failures by kind). Pure.
3. :func:`format_status` prints it; :func:`build_html` makes one self-contained page
   (no JavaScript, no external files but the outputs its players link to, loaded only
   when played: thumbnails are inline JPEG data URIs). Pure.
4. :func:`previews` is the one step that touches the MP4s: a few small frames of each
   output and a zoom on its mouth, read through PyAV (seeking: an MP4 in a bucket is
   read in ranges).

The summary tells the folder's state (which rows have their video, rendered by this run
or an earlier one into the folder) apart from what this run did (rendered, skipped,
failed), and counts the rows whose reference the checks warned about
(``reference_notes``, ``checks.py``).

Everything that comes from the table (job ids, row numbers, paths, error messages,
manifest columns) is user data: its columns are read as the results schema declares
them (a table whose ``row`` holds text is refused), and every value is escaped in the
HTML.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import posixpath
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import quote

import av
import cv2
import pyarrow as pa
import pyarrow.parquet as pq

from heygem_ray import locks, storage
from heygem_ray.config import DetectorConfig
from heygem_ray.driver.hold import RUN_LOCK
from heygem_ray.driver.resume import PARTS_DIR
from heygem_ray.errors import HeygemError, InputError, first_line, storage_error
from heygem_ray.results import RESULTS_FILE, SCHEMA, JobResult
from heygem_ray.steps import TIMED
from heygem_ray.storage import Location, Uri

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SLOWEST = 5  # jobs listed as the slowest
RETRIED_SHOWN = 10  # jobs named on the status line of those tried more than once
MESSAGES_PER_KIND = 5  # failure messages printed per error kind by `status` (the report shows all)
THUMB_COUNT = 4  # frames per output in the report
THUMB_HEIGHT = 160  # pixels
MOUTH_ZOOM = 2.0  # the mouth's zoom shown THUMB_HEIGHT tall: the mouth box, this many times its size around it
_THUMB_QUALITY = 85  # JPEG quality, 0-100
_REQUIRED = {"job_id", "row", "audio", "video", "output", "status"}  # what every results table has had
_NOT_NULL = ("job_id", "row", "status")  # every row names its job, its manifest row and how it ended

RunState = Literal["complete", "unfinished"]


# --------------------------------------------------------------------------- 1. load


@dataclass(frozen=True)
class Run:
    """The rows of one output folder and where they came from."""

    output_dir: Location
    results: list[JobResult]  # sorted by manifest row, then job id
    state: RunState  # complete: results.parquet is the newest word on every row
    newer_parts: int  # rows taken from part files newer than results.parquet (a later, unfinished run)
    updated: datetime  # when the newest file read was written (local time)
    # The run that holds the folder now (its lock's holder, ``locks.Held.describe``); "": no
    # run is going on there; None: not known (its lock could not be read: ``running_now``).
    running: str | None = None
    # Where no run is going on: the run whose lock is still there, stale (it was killed as
    # it ran, or its storage failed as it stopped: its holder, in words), or "".
    killed: str = ""
    # job id → where its MP4 is in ``output_dir`` (``in_folder``: the folder may have been
    # moved or copied since the rows were written), for rows with a video (ok, skipped).
    outputs: dict[str, Location] = field(default_factory=dict)
    # The rows with a video (ok, skipped) whose MP4 is not there (moved or deleted since).
    gone: frozenset[str] = frozenset()


def load_run(output_dir: Location) -> Run:
    """Read the results of ``output_dir`` (a folder, or a prefix in a bucket: only the
    results files are read); an ``InputError`` (kind ``no_results``) when there are none."""
    output_dir = storage.location(output_dir)
    if isinstance(output_dir, Path) and not output_dir.is_dir():
        what = "is a file, not a folder" if output_dir.exists() else "does not exist"
        raise InputError(
            f"output folder {output_dir} {what}; give the folder a run wrote (its --output-dir)", kind="no_results"
        )
    table_path = output_dir / RESULTS_FILE
    table = storage.stat(table_path)
    parts = sorted(
        ((loc, st) for loc, st in storage.list_stats(output_dir / PARTS_DIR).items() if loc.name.endswith(".parquet")),
        key=lambda found: str(found[0]),
    )
    if table is None and not parts:
        raise InputError(
            f"no results in {output_dir}: neither {RESULTS_FILE} nor {PARTS_DIR}/*.parquet is there; "
            "give the folder a run wrote (its --output-dir), or wait until its first job ends",
            kind="no_results",
        )
    by_id: dict[str, JobResult] = {}
    newest = 0
    table_mtime = -1
    if table is not None:
        table_mtime = newest = table.mtime_ns
        by_id = {r.job_id: r for r in _read(table_path)}
    newer = 0
    for part, st in parts:
        if st.mtime_ns > table_mtime:  # a row the table does not have yet (or an older version of it)
            for r in _read(part):
                by_id[r.job_id] = r
                newer += 1
            newest = max(newest, st.mtime_ns)
    running, killed = running_now(output_dir)
    videos = [r for r in by_id.values() if r.status != "failed" and r.output]
    outputs = {r.job_id: in_folder(r.output, output_dir) for r in videos if r.output}
    there = _present([outputs[r.job_id] for r in videos])
    return Run(
        output_dir=output_dir,
        outputs=outputs,
        gone=frozenset(r.job_id for r in videos if _gone(r, outputs[r.job_id], there)),
        results=sorted(by_id.values(), key=lambda r: (r.row, r.job_id)),
        state="complete" if table_mtime >= 0 and newer == 0 else "unfinished",
        newer_parts=newer if table_mtime >= 0 else 0,
        updated=datetime.fromtimestamp(newest / 1e9),
        running=running,
        killed=killed,
    )


def in_folder(recorded: str, folder: Location) -> Location:
    """Where the output a row recorded (``recorded``, inside the folder the run wrote) is in
    ``folder``: where it was, if that is in ``folder``; else, the folder moved, copied or
    mounted elsewhere since, the same path inside ``folder`` (the longest end of the
    recorded path that names a file there: outputs may be in subfolders), or, where none
    does, its name in ``folder`` (not there: never the file where it was, which may be
    another folder's now, or an original the folder was copied from)."""
    loc = storage.location(recorded)
    if storage.is_inside(loc, folder.absolute() if isinstance(folder, Path) else folder):  # (rows record absolute paths)
        return loc
    parts = PurePosixPath(loc.key).parts[1:] if isinstance(loc, Uri) else loc.parts[1:]  # (no bucket, no root)
    for k in range(len(parts), 0, -1):
        candidate = folder / "/".join(parts[-k:]) if isinstance(folder, Uri) else folder.joinpath(*parts[-k:])
        if storage.is_file(candidate):
            return candidate
    return folder / loc.name


def _gone(r: JobResult, output: Location, there: dict[Location, int | None]) -> bool:
    """Whether the row's video is not at ``output``: no file there, or one of another size
    than the row recorded (cut short, or another written in its place)."""
    if output not in there:
        return True
    size = there[output]
    return size is not None and r.output_bytes is not None and size != r.output_bytes


def _present(outputs: list[Location]) -> dict[Location, int | None]:
    """Which of ``outputs`` are there, with their sizes: one listing per folder (a request
    per 1000 objects in a bucket), none of them read. Those of a folder that cannot be
    listed are taken to be there, of a size not known (None)."""
    found: dict[Location, int | None] = {}
    for folder in {loc.parent for loc in outputs}:
        try:
            found.update(storage.list_files(folder))
        except (OSError, HeygemError) as exc:  # (a folder out of reach: its rows are not said to be gone)
            log.info("could not list %s (%s): its videos are taken to be there", folder, exc)
            found.update({loc: None for loc in outputs if loc.parent == folder})
    return found


def running_now(output_dir: Location) -> tuple[str | None, str]:
    """(who runs into ``output_dir`` now, as its run lock's record says (``hold.RUN_LOCK``),
    or "" where no live run holds it; the holder of the stale lock a run left, killed as
    it ran or stopped by its storage, or ""). A lock that cannot be read (a folder this user may not write, whose lock
    cannot be opened to be locked; a bucket out of reach for a moment) says nothing either
    way: (None, "")."""
    try:
        found = locks.look(output_dir / RUN_LOCK)
    except (OSError, HeygemError) as exc:
        log.info("could not read the run lock of %s (%s): whether a run is going on there is not known", output_dir,
                 exc)  # fmt: skip
        return None, ""
    if found is None:
        return "", ""
    held, alive = found
    return (held.describe(), "") if alive else ("", held.describe())


def _read(path: Location) -> list[JobResult]:
    try:
        source = path if isinstance(path, Path) else pa.BufferReader(storage.read_bytes(path))
        table = pq.read_table(source)
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, OSError) and (refused := storage_error(exc, path)) is not None:
            raise refused from exc
        raise InputError(
            f"results file {path} could not be read as a Parquet table ({first_line(exc)}): it is damaged, or no "
            "table a run wrote; running the same manifest into its folder again writes it anew, keeping the rows "
            "already rendered",
            kind="no_results",
        ) from exc
    # Columns added in later versions (e.g. output_bytes) may be missing from older tables.
    missing = sorted(_REQUIRED - set(table.column_names))
    if missing:
        raise InputError(
            f"{path} is not a heygem-ray results table: it has no {', '.join(missing)} column(s)", kind="no_results"
        )
    return [JobResult.from_row(row) for row in _typed(table, path).to_pylist()]


def _typed(table: pa.Table, path: Location) -> pa.Table:
    """``table`` with each results column as the schema declares it (an older writer's
    int32 ``row`` is widened, say); a column whose cells cannot be that (text in ``row``),
    or an empty job id, row or status, is refused: the page would show what it is not."""
    for i, name in enumerate(table.column_names):
        if name not in SCHEMA.names:
            continue  # a manifest's column, carried: any value, shown as text
        want, column = SCHEMA.field(name).type, table.column(i)
        if column.type != want:
            try:
                table = table.set_column(i, name, column.cast(want))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(
                    f"{path} is not a heygem-ray results table: its column {name!r} holds {column.type}, "
                    f"not {want}, and not every value converts",
                    kind="no_results",
                ) from exc
        if name in _NOT_NULL and table.column(i).null_count:
            raise InputError(
                f"{path} is not a heygem-ray results table: {table.column(i).null_count} row(s) have no {name}",
                kind="no_results",
            )
    return table



# --------------------------------------------------------------------------- 2. summarize


@dataclass(frozen=True)
class Failure:
    job_id: str
    row: int
    step: str  # the step it failed in (steps.Step: "plan", "audio", "analyze", …); "?" when unknown
    message: str


@dataclass(frozen=True)
class Summary:
    """A run in figures. Times are wall seconds of jobs; jobs run side by side, so their
    sum is the work done, not how long the run took."""

    output_dir: Location
    state: RunState
    newer_parts: int
    updated: datetime
    running: str | None  # the run going on there now (``Run.running``)
    killed: str  # the run that left its lock there (``Run.killed``)
    total: int  # rows
    ok: int
    failed: int
    skipped: int
    frames: int  # frames rendered by the jobs that ended ok (skipped rows' outputs not counted)
    video_seconds: float  # seconds of video those jobs made
    job_seconds: float  # their summed wall time
    step_seconds: dict[str, float]  # steps.TIMED that any of those jobs timed → summed seconds over them
    realtime_factor: float | None  # video_seconds / job_seconds; None when nothing was rendered
    slowest: list[JobResult]  # the longest of the jobs that ended ok, longest first
    failures: dict[str, list[Failure]]  # error kind → its rows, the most frequent kind first
    backends: dict[str, int]  # backend → jobs rendered on it
    nodes: dict[str, int]  # Ray node → jobs rendered on it
    # The folder, whichever run rendered it: rows whose video is there (ok or skipped),
    # of those the rows an earlier run rendered, and the seconds of video they hold; and
    # the rows whose video is not there any more (moved or deleted since: ``Run.gone``).
    complete: int = 0
    earlier: int = 0
    folder_video_seconds: float = 0.0
    gone: int = 0
    # Rows with a video whose reference the checks warned about, and check → such rows.
    warned: int = 0
    warnings: dict[str, int] | None = None
    # The render settings of the rows (``describe_settings``) → rows, most first.
    settings: dict[str, int] | None = None
    # The rows of this run whose job needed more than one attempt (its task or node lost, a
    # stall): (job id, attempts, status, error kind), in row order.
    retried: tuple[tuple[str, int, str, str], ...] = ()


def video_seconds(r: JobResult) -> float:
    """Seconds of video in the row's output (frames / fps, kept as realtime factor × wall time)."""
    if r.realtime_factor is not None and r.seconds:
        return r.realtime_factor * r.seconds
    return 0.0


def summarize(run: Run) -> Summary:
    rs = run.results
    done = [r for r in rs if r.status == "ok"]
    failed = [r for r in rs if r.status == "failed"]
    job_seconds = sum(r.seconds or 0.0 for r in done)
    video = sum(video_seconds(r) for r in done)
    groups: dict[str, list[Failure]] = {}
    for r in failed:
        groups.setdefault(r.error_kind or "unknown", []).append(
            Failure(r.job_id, r.row, r.error_step or "?", r.error or "(no message)")
        )
    return Summary(
        output_dir=run.output_dir,
        state=run.state,
        newer_parts=run.newer_parts,
        updated=run.updated,
        running=run.running,
        killed=run.killed,
        total=len(rs),
        ok=len(done),
        failed=len(failed),
        skipped=sum(r.status == "skipped" for r in rs),
        frames=sum(r.frames or 0 for r in done),
        video_seconds=video,
        job_seconds=job_seconds,
        # (a step no rendered row timed, restore without --restore, is left out)
        step_seconds={s: sum(getattr(r, f"{s}_s") or 0.0 for r in done) for s in TIMED
                      if any(getattr(r, f"{s}_s") is not None for r in done)},  # fmt: skip
        realtime_factor=video / job_seconds if job_seconds > 0 else None,
        slowest=sorted(done, key=lambda r: -(r.seconds or 0.0))[:SLOWEST],
        failures=dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))),
        backends=_count(r.backend for r in done),
        nodes=_count(r.node for r in done),
        complete=sum(r.status != "failed" and r.job_id not in run.gone for r in rs),
        earlier=sum(r.status == "skipped" and r.job_id not in run.gone for r in rs),
        folder_video_seconds=sum(video_seconds(r) for r in rs if r.status != "failed" and r.job_id not in run.gone),
        gone=len(run.gone),
        warned=sum(bool(r.reference_notes) for r in rs if r.status != "failed"),
        warnings=_count(name for r in rs if r.status != "failed" for name in note_names(r.reference_notes)),
        settings=_settings(rs),
        retried=tuple((r.job_id, r.attempts, r.status, r.error_kind or "") for r in rs
                      if r.status != "skipped" and (r.attempts or 0) > 1),  # fmt: skip
    )


def _settings(rs: list[JobResult]) -> dict[str, int]:
    """``Summary.settings``: rows of a version that kept no settings take those another row
    of the same ``config_hash`` kept (one hash, one set of settings)."""
    known = {r.config_hash: r.render_settings for r in rs if r.render_settings}
    # Counted per (settings, hash) first, so each distinct one is read and described once.
    rendered = Counter((r.render_settings or known.get(r.config_hash, ""), r.config_hash) for r in rs if r.config_hash)
    return {describe_settings(settings, config_hash): n for (settings, config_hash), n in rendered.most_common()}


# The render settings ``describe_settings`` names, then any of OPTIONAL_SETTINGS a run set.
MAIN_SETTINGS = ("pack", "loop", "preset", "encoder", "backend", "precision")
OPTIONAL_SETTINGS = ("max_resolution", "max_fps", "reference_start", "reference_seconds", "restore")


def describe_settings(settings: str, config_hash: str) -> str:
    """A row's render settings (its ``render_settings`` JSON) in a line: "pack warp, loop
    pingpong, …, reference_start 90.0 (config 1a2b…)"; rows of versions that did not keep
    them, their ``config_hash`` alone."""
    try:
        found = json.loads(settings)
    except ValueError:
        return f"not recorded (config {config_hash})"
    named = [f"{k} {found[k]}" for k in MAIN_SETTINGS if k in found]
    named += [f"{k} {found[k]}" for k in OPTIONAL_SETTINGS if found.get(k) not in (None, "none")]
    if found.get("detector", {}).get("min_face") not in (None, DetectorConfig().min_face):
        named.append(f"min_face {found['detector']['min_face']}")
    return ", ".join(named) + f" (config {config_hash})"


def note_names(notes: str | None) -> list[str]:
    """The checks a row's ``reference_notes`` names ("name: figure; …" → [name, …])."""
    return [note.split(":", 1)[0] for note in (notes or "").split("; ") if note]


def describe_folder(s: Summary) -> str:
    """The folder's state, whichever run made it: "3 of 3 rows have their video (3 from an
    earlier run), 12.0 s of video"."""
    earlier = f" ({s.earlier} from an earlier run)" if s.earlier else ""
    gone = (f"; {s.gone} row(s) whose video is not there any more (moved or deleted since: rerunning the same command "
            "renders them again)") if s.gone else ""  # fmt: skip
    return f"{s.complete} of {s.total} rows have their video{earlier}, {s.folder_video_seconds:.1f} s of video{gone}"


def describe_warnings(s: Summary) -> str:
    """Rows whose reference the checks warned about, and how many per check."""
    if not s.warned:
        return "no warnings about the references"
    each = ", ".join(f"{name} × {n}" for name, n in (s.warnings or {}).items())
    return f"{s.warned} row(s) with warnings about their reference: {each} ('heygem-ray preview' on it says what to do)"


def _count(values: Iterable[str | None]) -> dict[str, int]:
    return dict(Counter(v or "?" for v in values).most_common())


# --------------------------------------------------------------------------- 3. text


def describe_state(s: Summary) -> str:
    """Whether the folder's rows are final, and whether a run is going on there (its run
    lock's live holder) or the last one stopped before it wrote its table (where the lock
    could be read: ``Run.running``)."""
    when = s.updated.strftime("%Y-%m-%d %H:%M:%S")
    going = f"a run is going on: {s.running}" if s.running else ""
    if s.state == "complete":
        return f"complete ({RESULTS_FILE} written {when})" + (f"; {going}" if going else "")
    stopped = s.running == ""
    # (the run whose lock is left, as the lock says: its manifest and rows, its process;
    # killed as it ran, or stopped by a store that then took no deletion of the lock either)
    which = f"ended leaving its lock (it was killed, or its storage failed): {s.killed}" if s.killed else "stopped"
    if s.newer_parts:
        newer = f"{s.newer_parts} row(s) are newer than {RESULTS_FILE} (last written {when})"
        if going:
            return f"unfinished: {going}; {newer}"
        if stopped:
            return (f"unfinished: a later run into this folder {which}, before it wrote its table (no run holds the "
                    f"folder now); {newer}. Rerunning the same command finishes it")  # fmt: skip
        return f"unfinished: a later run into this folder is going on or was stopped; {newer}"
    if going:
        return f"unfinished: {going}; no {RESULTS_FILE} yet, rows of the jobs that ended so far (last written {when})"
    if stopped:
        return (f"unfinished: the run {which}, before it wrote {RESULTS_FILE} (no run holds the folder now); rows of "
                f"the jobs that ended (last written {when}). Rerunning the same command finishes it")  # fmt: skip
    return (
        f"unfinished: no {RESULTS_FILE} yet, so the run is still going or was stopped; "
        f"rows of the jobs that ended so far (last written {when}). Rerunning the same command finishes it"
    )


def format_status(s: Summary) -> str:
    """The text ``heygem-ray status`` prints."""
    lines = [
        f"run       {s.output_dir}",
        f"state     {describe_state(s)}",
        f"folder    {describe_folder(s)}",
        f"rows      {s.total}: {s.ok} ok, {s.failed} failed, {s.skipped} skipped"
        + (" (complete from an earlier run)" if s.skipped else ""),
    ]
    # The settings the rows were rendered with (one line each where rows differ: resumed runs).
    many = len(s.settings or {}) > 1
    lines += [f"{'settings' if i == 0 else '':10s}{line}" + (f": {n} row(s)" if many else "")
              for i, (line, n) in enumerate((s.settings or {}).items())]  # fmt: skip
    if s.ok:
        lines += [
            f"frames    {s.frames} rendered, {s.video_seconds:.1f} s of video",
            f"time      {s.job_seconds:.1f} s of job time over {s.ok} rendered job(s) "
            "(summed: jobs run side by side, so not the run's length)",
            f"realtime  {s.realtime_factor or 0:.2f}× (seconds of video per second of job time)",
            *(
                f"{'steps' if i == 0 else '':10s}{name:9s}{t:7.2f} s total {t / s.ok:7.2f} s per job"
                for i, (name, t) in enumerate(s.step_seconds.items())
            ),
            "backends  " + ", ".join(f"{k} × {n}" for k, n in s.backends.items()),
            "nodes     " + ", ".join(f"{k} × {n}" for k, n in s.nodes.items()),
        ]
    else:
        lines.append("frames    none rendered by this run")
    lines.append(f"reference {describe_warnings(s)}")
    if s.retried:
        shown = ", ".join(f"{job} ({n} attempts, {kind or status})" for job, n, status, kind in s.retried[:RETRIED_SHOWN])
        more = f", and {len(s.retried) - RETRIED_SHOWN} more" if len(s.retried) > RETRIED_SHOWN else ""
        lines.append(f"retried   {len(s.retried)} job(s) needed more than one attempt (a task or node lost, a stall: "
                     f"look at their nodes): {shown}{more}")  # fmt: skip
    if s.slowest:
        width = max(len(r.job_id) for r in s.slowest)
        lines.append("slowest")
        for r in s.slowest:
            lines.append(
                f"  {r.job_id:<{width}s}  {r.seconds or 0:7.2f} s  {r.frames or 0:6d} frames  "
                f"{r.realtime_factor or 0:5.2f}×  {r.node or ''}"
            )
    if s.failures:
        lines.append(f"failures  {s.failed} row(s), by kind:")
        for kind, items in s.failures.items():
            lines.append(f"  {kind} ({len(items)})")
            for f in items[:MESSAGES_PER_KIND]:
                lines.append(f"    [{f.step}] {f.message}")  # the message names the row and job
            if len(items) > MESSAGES_PER_KIND:
                lines.append(f"    … and {len(items) - MESSAGES_PER_KIND} more (heygem-ray report shows every one)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- 4. previews


@dataclass(frozen=True)
class Preview:
    jpegs: tuple[bytes, ...]  # JPEG files THUMB_HEIGHT px tall, in time order
    note: str = ""  # why there are fewer than asked (missing file, ffmpeg's complaint)
    mouth: bytes | None = None  # JPEG THUMB_HEIGHT px tall: the mouth, zoomed, in the middle frame


def previews(results: list[JobResult], count: int = THUMB_COUNT, where: dict[str, Location] | None = None
             ) -> dict[str, Preview]:  # fmt: skip
    """job id → a few frames of its MP4, for every row with an output (ok or skipped),
    read where ``where`` says it is (``Run.outputs``; default: where the row says)."""
    todo = [r for r in results if r.status != "failed" and r.output]
    if count <= 0 or not todo:
        return {}
    where = where or {}
    with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1, 8)) as pool:
        found = pool.map(lambda r: _preview(r, count, where.get(r.job_id) or storage.location(r.output or "")), todo)
        return dict(zip((r.job_id for r in todo), found, strict=True))


def _preview(r: JobResult, count: int, target: Location) -> Preview:
    if not storage.is_file(target):
        return Preview((), f"{target} is not there any more")
    # Seek to each time rather than decode every frame: a long lesson's four thumbnails
    # cost four short decodes, and an output in a bucket is read in ranges (its index and
    # the stretch before each frame), never downloaded whole.
    duration = video_seconds(r) or (r.audio_seconds or 0.0)
    jpegs: list[bytes] = []
    mouth = None
    try:
        with storage.open_input(target) as f, av.open(f) as container:
            stream = container.streams.video[0]
            for i in range(count):
                at = duration * (i + 0.5) / count  # the middle of each of `count` equal spans
                frame = _frame_at(container, stream, at)
                if frame is None:
                    return Preview(tuple(jpegs), f"frame at {at:.1f} s of {target}: no frame there")
                height = THUMB_HEIGHT
                width = max(2, round(frame.width * height / frame.height / 2) * 2)
                bgr = frame.reformat(width=width, height=height, format="bgr24", interpolation="AREA").to_ndarray()
                jpegs.append(_jpeg(bgr))
                if i == count // 2 and r.mouth_box:
                    mouth = _mouth_zoom(frame.to_ndarray(format="bgr24"), r.mouth_box)
    except (av.FFmpegError, OSError, IndexError, InputError) as exc:
        why = exc.message if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        return Preview(tuple(jpegs), f"{target}: {why}", mouth)
    return Preview(tuple(jpegs), mouth=mouth)


def _jpeg(bgr: Any) -> bytes:
    return bytes(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _THUMB_QUALITY])[1].tobytes())


def _mouth_zoom(bgr: Any, box: list[int]) -> bytes | None:
    """The region ``MOUTH_ZOOM`` times the mouth box (x0, y0, x1, y1 pixels) around its
    centre, of a (H, W, 3) uint8 BGR frame, THUMB_HEIGHT px tall; None when it is off the frame."""
    h, w = bgr.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = MOUTH_ZOOM * (box[2] - box[0]) / 2, MOUTH_ZOOM * (box[3] - box[1]) / 2
    x0, y0 = max(0, round(cx - half_w)), max(0, round(cy - half_h))
    x1, y1 = min(w, round(cx + half_w)), min(h, round(cy + half_h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    region = bgr[y0:y1, x0:x1]
    width = max(2, round((x1 - x0) * THUMB_HEIGHT / (y1 - y0)))
    return _jpeg(cv2.resize(region, (width, THUMB_HEIGHT), interpolation=cv2.INTER_CUBIC))


def _frame_at(container: Any, stream: Any, at: float) -> Any:
    """The first frame shown at or after ``at`` seconds (the last one, past the end)."""
    container.seek(int(at / stream.time_base), stream=stream)  # the keyframe at or before it
    last = None
    for frame in container.decode(stream):
        last = frame
        if frame.time is not None and frame.time >= at - 0.5 / float(stream.average_rate or 25):
            return frame
    return last


# --------------------------------------------------------------------------- 5. HTML


def write_report(output_dir: Location, out: Location | None = None, thumbnails: int = THUMB_COUNT) -> Location:
    """Write the HTML report of the run in ``output_dir`` (default ``output_dir/report.html``).
    ``out`` must name an HTML file: a page written over a row's MP4, its audio, the
    manifest or the results table (a slip of the shell's completion) would lose it."""
    out = storage.location(out) if out is not None else None  # (a URI that went through pathlib: s3:/…)
    if out is not None and out.suffix.lower() not in (".html", ".htm"):
        raise InputError(
            f"--out {out} is no HTML file's name: the report is written there, over what is there; give a name "
            "ending in .html (nothing was written)",
            kind="bad_argument",
        )
    if thumbnails < 0:
        raise InputError(f"--thumbnails must be 0 or more, got {thumbnails}", kind="bad_argument")
    run = load_run(output_dir)
    out = out if out is not None else run.output_dir / REPORT_FILE
    shots = previews(run.results, thumbnails, run.outputs)
    page = build_html(summarize(run), run.results, shots, out.parent, run.outputs)
    storage.write_bytes(out, page.encode("utf-8"))
    return out


def build_html(s: Summary, results: list[JobResult], shots: dict[str, Preview], report_dir: Location,
               where: dict[str, Location] | None = None) -> str:  # fmt: skip
    """The report page. ``report_dir`` is where it will be written (links to the MP4s are
    relative to it); ``where``: where each job's MP4 is (``Run.outputs``; default: where its
    row says)."""
    e = _esc
    tiles = [
        ("rows", str(s.total)), ("ok", str(s.ok)), ("failed", str(s.failed)), ("skipped", str(s.skipped)),
        ("frames", str(s.frames)), ("video", f"{s.video_seconds:.1f} s"), ("job time", f"{s.job_seconds:.1f} s"),
        ("realtime", f"{s.realtime_factor:.2f}×" if s.realtime_factor is not None else "–"),
        ("warned", str(s.warned)),
    ]  # fmt: skip
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>heygem-ray report: {e(s.output_dir.name or str(s.output_dir))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>heygem-ray run report</h1><p class=path>{e(s.output_dir.resolve())}</p>",
        f'<p class="state {e(s.state)}">{e(describe_state(s))}</p>',
        f"<p class=folder><b>This folder:</b> {e(describe_folder(s))}. <b>This run:</b> {e(s.ok)} rendered, "
        f"{e(s.skipped)} skipped (complete already), {e(s.failed)} failed.</p>",
        f'<p class="refs{" warned" if s.warned else ""}">{e(describe_warnings(s))}</p>',
        *(f"<p class=settings><b>Settings:</b> {e(line)}" + (f" ({e(n)} rows)" if len(s.settings or {}) > 1 else "")
          + "</p>" for line, n in (s.settings or {}).items()),
        "</header>",
        "<section class=tiles>",
        *(f'<div class="tile t-{k.replace(" ", "-")}"><b>{e(v)}</b><span>{e(k)}</span></div>' for k, v in tiles),
        "</section>",
        _step_bar(s),
        _failures_html(s),
        f"<h2>Outputs ({len(results)})</h2>",
        "<section class=jobs>",
        *(_job_html(r, shots.get(r.job_id), report_dir, (where or {}).get(r.job_id)) for r in results),
        "</section>",
        f"<footer>written {e(datetime.now().strftime('%Y-%m-%d %H:%M:%S'))} by heygem-ray report</footer>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _step_bar(s: Summary) -> str:
    total = sum(s.step_seconds.values())
    if total <= 0:
        return ""
    segments = "".join(
        f'<div class="seg {_esc(name)}" style="width:{100 * t / total:.2f}%" title="{_esc(name)} {t:.2f} s"></div>'
        for name, t in s.step_seconds.items()
        if t > 0
    )
    legend = "".join(
        f'<span><i class="seg {_esc(name)}"></i>{_esc(name)} {t:.2f} s ({100 * t / total:.0f}%)</span>'
        for name, t in s.step_seconds.items()
    )
    return f"<h2>Time per step</h2><div class=bar>{segments}</div><p class=legend>{legend}</p>"


def _failures_html(s: Summary) -> str:
    if not s.failures:
        return ""
    e = _esc
    out = [f"<h2>Failures ({s.failed})</h2>"]
    for kind, items in s.failures.items():
        out.append(f"<h3>{e(kind)} <small>{e(len(items))}</small></h3><table class=failures>")
        out.append("<tr><th>row</th><th>job</th><th>step</th><th>message</th></tr>")
        out += [
            f"<tr><td>{e(f.row)}</td><td>{e(f.job_id)}</td><td>{e(f.step)}</td><td class=msg>{e(f.message)}</td></tr>"
            for f in items
        ]
        out.append("</table>")
    return "\n".join(out)


def _job_html(r: JobResult, shot: Preview | None, report_dir: Location, output: Location | None = None) -> str:
    e = _esc
    badge = f'<span class="badge {e(r.status)}">{e(r.status)}</span>'
    head = f"<div class=head>{badge} <b>{e(r.job_id)}</b> <small>row {e(r.row)}</small></div>"
    strip = note = link = player = ""
    if r.output and r.status != "failed":
        shown = str(output) if output is not None else r.output
        href = e(_href(shown, report_dir))
        link = f'<a class=path href="{href}">{e(shown)}</a>'
        # Nothing is fetched until it is played: a page of a thousand rows stays light. Its
        # poster, the first thumbnail, shows what it is and gives it the video's shape.
        first = shot.jpegs[0] if shot is not None and shot.jpegs else None
        poster = f' poster="data:image/jpeg;base64,{base64.b64encode(first).decode("ascii")}"' if first else ""
        player = f'<video controls preload=none height={THUMB_HEIGHT}{poster} src="{href}"></video>'
        strip = f"<div class=strip>{player}</div>"
    if r.status == "failed":
        note = (
            f"<p class=error><b>{e(r.error_kind or 'unknown')}</b> in step <b>{e(r.error_step or '?')}</b></p>"
            f"<p class=msg>{e(r.error or '(no message)')}</p>"
        )
    elif shot is not None:
        imgs = "".join(
            f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}" height={THUMB_HEIGHT} '
            f'alt="frame {i + 1} of {e(r.job_id)}">'
            for i, jpeg in enumerate(shot.jpegs)
        )
        if shot.mouth is not None:  # first, after the player; not <img src=…: the thumbnails are the frames only
            imgs = (f'<img class=mouth src="data:image/jpeg;base64,{base64.b64encode(shot.mouth).decode("ascii")}" '
                     f'height={THUMB_HEIGHT} alt="the mouth of {e(r.job_id)}, zoomed" title="the mouth, zoomed">') + imgs  # fmt: skip
        strip = f"<div class=strip>{player}{imgs}</div>"
        note = f"<p class=note>no preview: {e(shot.note)}</p>" if shot.note else ""
    if r.status != "failed" and r.restore_sample:
        strip += _restore_html(r)
    if r.status == "failed":  # no output: only what the attempt cost and where it ran
        figures = [("job", f"{r.seconds or 0:.2f} s"), ("attempts", str(r.attempts))]
        figures += [("node", r.node)] if r.node else []
        # Its log lines: ray logs task --id <this> --err
        figures += [("ray task", r.ray_task_id)] if r.ray_task_id else []
    else:
        figures = [
            ("frames", str(r.frames or 0)),
            ("video", f"{video_seconds(r):.1f} s"),
            ("job", f"{r.seconds or 0:.2f} s"),
            ("realtime", f"{r.realtime_factor:.2f}×" if r.realtime_factor is not None else "–"),
            ("backend", f"{r.backend or '–'}" + (f" {r.precision}" if r.precision else "")),
            *([("restore", f"{r.restore} on {r.restore_backend or '–'}")] if r.restore not in (None, "", "none") else []),
            ("node", r.node or "–"),
            ("gpu", r.gpu or "CPU"),
            ("attempts", str(r.attempts)),
        ]
    figs = "".join(f"<span><i>{e(k)}</i> {e(v)}</span>" for k, v in figures)
    extras = "".join(f"<div><i>{e(k)}</i> {e(v)}</div>" for k, v in r.extra.items() if v not in (None, ""))
    warned = ""
    if r.reference_notes and r.status != "failed":
        items = "".join(f"<li>{e(n)}</li>" for n in r.reference_notes.split("; "))
        warned = f"<ul class=warnings title=\"the reference checks: heygem-ray preview says what to do\">{items}</ul>"
    info = f"<div class=info>{head}{note}{warned}<div class=figs>{figs}</div>{extras}{link}</div>"
    return f'<article class="job {e(r.status)}">{strip}{info}</article>'


def _restore_html(r: JobResult) -> str:
    """The row's restoration sample (results' ``restore_sample``: one frame's face as the
    job composed it, without and with restoration), captioned. The job made it from the
    frame it had in hand; the report decodes and re-renders nothing."""
    jpeg = base64.b64encode(r.restore_sample or b"").decode("ascii")
    return (
        f'<figure class=restore><img src="data:image/jpeg;base64,{jpeg}" height={THUMB_HEIGHT} '
        f'alt="{_esc(r.job_id)}: one face without and with {_esc(r.restore)} restoration">'
        f"<figcaption>without | with {_esc(r.restore)}</figcaption></figure>"
    )


def _href(output: str, report_dir: Location) -> str:
    """The link from the page in ``report_dir`` to an output: relative where both are in
    the same place (a folder, or one bucket), else the output's full URI (``file:`` for a
    local one: never text a browser could take for another scheme, ``javascript:``)."""
    target = storage.location(output)
    if isinstance(target, Path) and isinstance(report_dir, Path):
        return quote(os.path.relpath(target, report_dir.resolve()))
    if isinstance(target, Uri) and isinstance(report_dir, Uri) and (target.scheme, target.bucket) == (
        report_dir.scheme, report_dir.bucket
    ):
        return quote(posixpath.relpath(target.key, report_dir.key))
    return target.absolute().as_uri() if isinstance(target, Path) else str(target)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}h3{font-size:14px;margin:14px 0 6px}
.path{color:#5b6475;font-family:ui-monospace,monospace;font-size:12px;word-break:break-all;margin:2px 0}
.state{display:inline-block;padding:4px 10px;border-radius:4px;margin:8px 0 0}
.state.complete{background:#e3f4e8;color:#1b6b34}.state.unfinished{background:#fff3d6;color:#7a5400}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-top:16px}
.tile{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px 14px;min-width:84px}
.tile b{display:block;font-size:20px}.tile span{color:#5b6475;font-size:12px}
.t-failed b{color:#b3261e}.t-ok b{color:#1b6b34}
.bar{display:flex;height:18px;border-radius:4px;overflow:hidden;background:#e4e7ec;max-width:900px}
.legend span{margin-right:14px;font-size:12px;white-space:nowrap}
.seg{display:inline-block}.legend .seg{width:10px;height:10px;margin-right:4px;border-radius:2px}
.seg.analyze{background:#6c8ebf}.seg.features{background:#9bc27a}.seg.motion{background:#e0b34c}
.seg.render{background:#d9734e}.seg.compose{background:#8e6cbf}
table.failures{border-collapse:collapse;background:#fff;max-width:1100px}
table.failures td,table.failures th{border:1px solid #e4e7ec;padding:4px 8px;text-align:left;vertical-align:top}
.msg{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,monospace;font-size:12px}
.jobs{display:flex;flex-direction:column;gap:12px}
.job{display:flex;flex-wrap:wrap;gap:6px 18px;align-items:flex-start;background:#fff;border:1px solid #dde1e8;
border-left:5px solid #1b6b34;border-radius:6px;padding:10px 14px}.info{flex:1 1 340px;min-width:0}
.job.failed{border-left-color:#b3261e}.job.skipped{border-left-color:#7d8696}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff;background:#1b6b34}
.badge.failed{background:#b3261e}.badge.skipped{background:#7d8696}
.strip{display:flex;gap:4px;overflow-x:auto;max-width:100%}.strip img{border-radius:3px;background:#000}
.restore{margin:0;text-align:center;font-size:12px;color:#5b6475}.restore img{display:block;border-radius:3px}
.figs{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:13px;margin:6px 0}.figs i,.job div i{color:#5b6475;font-style:normal}
.error{color:#b3261e;margin:8px 0 2px}.note{color:#7a5400}
.folder{margin:8px 0 0}.refs,.settings{margin:4px 0 0;color:#5b6475}.refs.warned{color:#7a5400}.t-warned b{color:#7a5400}
.warnings{margin:6px 0;padding:4px 8px 4px 24px;background:#fff3d6;color:#7a5400;border-radius:4px;font-size:13px}
.strip img.mouth{outline:2px solid #e0b34c}video{border-radius:3px;background:#000}
footer{margin-top:28px;color:#7d8696;font-size:12px}
"""
