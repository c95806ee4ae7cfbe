"""Reading and checking a manifest (CSV, an Excel workbook or Parquet) into a list of jobs.

Problems that make the whole manifest unusable (unreadable file, missing column,
duplicate job ids, two rows writing one file, a row writing a file that a row reads)
stop the run before any work. Problems that concern one row (an output path that would
escape the output folder, an empty cell, a URI with credentials in it) are attached to
that row's job and fail only that row.

The manifest, its files and the output folder may be local paths or bucket URIs
(``s3://…``, ``gs://…``; see ``storage.py``). Relative paths in a manifest resolve against
its folder, whichever it is; a cell may also hold a URI or an absolute local path.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import io
import math
import os
import stat as stat_module
import unicodedata
import zipfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import openpyxl
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from openpyxl.utils.exceptions import InvalidFileException

from heygem_ray import spelling, storage
from heygem_ray.errors import InputError, storage_error, storage_errors
from heygem_ray.storage import Location, Uri

REQUIRED_COLUMNS = ("audio", "video")
OPTIONAL_COLUMNS = ("job_id", "output")
# Render settings a row may give itself, in seconds, over the run's options of the same names
# (--reference-start, --reference-seconds): each lecture recording used as a reference from
# its own start. An empty cell is the run's value.
ROW_SETTINGS = ("reference_start", "reference_seconds")
# A job id names its MP4 (``<job_id>.mp4``, staged beside it as ``.<job_id>.<12>.<8>.part.mp4``:
# 32 bytes more, within the 255 bytes of a file name), so it must be one file name on any
# file system, in a bucket key and on a Windows share: a name in any script, with spaces
# and punctuation, but none of these characters, nothing invisible (Unicode's control and
# format characters), and not hidden or padded (a leading '.' or space, a trailing one).
ID_MAX_BYTES = 200
# An 'output' cell's names: each folder in it one file name (255 bytes on Linux's file
# systems), and the MP4's name without .mp4 short enough for its staged copy's 32 bytes more.
NAME_MAX_BYTES, STAGED_EXTRA_BYTES = 255, 32
_NOT_IN_ID = frozenset('/\\:*?"<>|#%')


@dataclass(frozen=True)
class Job:
    """One manifest row, resolved.

    ``row`` is the 1-based data row (the header is not counted). ``problem`` holds a
    row-level input error found while planning; such a job is reported failed unrendered.
    """

    row: int
    job_id: str
    audio: Location
    video: Location
    output: Location | None  # None only for a row with a problem
    extra: dict[str, Any] = field(default_factory=dict)
    problem: InputError | None = None
    # Its own render settings (ROW_SETTINGS): (name, seconds) pairs, in that order; () for none.
    row_settings: tuple[tuple[str, float], ...] = ()

    @property
    def label(self) -> str:
        return row_label(self.row, self.job_id)


def row_label(row: int, job_id: str) -> str:
    """How messages name a row: ``row 17 (job 'lesson-17')``."""
    return f"row {row} (job {job_id!r})"


def read_manifest(path: Location, output_dir: Location, reserved: frozenset[str] = frozenset(), *,
                  folds_case: bool = False) -> list[Job]:  # fmt: skip
    """Read ``path`` and resolve every row against its folder and ``output_dir``.

    ``reserved`` names result columns; a carried manifest column with such a name is
    renamed ``manifest_<name>`` so it never overwrites a result. ``folds_case``: the
    output folder's file system takes names that differ only in case as one file (macOS's
    and Windows' by default: ``storage.check_writable`` finds out), and so do the checks
    that no two rows write one file and that no row writes an input.
    """
    table = _read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(
            f"manifest {path} has no {' or '.join(repr(c) for c in missing)} column "
            f"(found: {', '.join(table.column_names) or 'none'}); the first line must name "
            "the columns, e.g. 'job_id,audio,video'",
            kind="bad_manifest",
        )
    if not table.num_rows:
        raise InputError(f"manifest {path} has no rows: add one row per video to render", kind="bad_manifest")

    with storage_errors(path):
        base = storage.resolved(path).parent
        out_root = storage.resolved(output_dir)
    ids = _job_ids(path, *(_column(table, name) for name in ("job_id", "audio", "video")))
    # One Location per distinct cell: rows naming the same reference (or the same missing
    # file) share it, so the list of jobs grows by little more than each row's output.
    resolve = functools.lru_cache(maxsize=None)(functools.partial(_resolve_input, base))
    jobs: list[Job] = []
    for batch in table.to_batches():  # rows as dicts a batch at a time, not all at once
        for r in batch.to_pylist():
            jobs.append(_make_job(len(jobs) + 1, ids[len(jobs)], r, base, resolve, out_root, reserved))
    _check_outputs(path, jobs, base, folds_case)
    return jobs


def write_with_settings(path: Location, settings: Mapping[int, Mapping[str, float]], dest: Location) -> None:
    """The manifest ``path`` as a UTF-8 CSV at ``dest`` (written whole), every cell the text
    it was read as, and the rows ``settings`` names (data rows, from 1) given those render
    settings (``ROW_SETTINGS``: their cells replaced, in columns added where it had none).
    An 'audio' or 'video' cell relative to the manifest's folder is written as the path it
    names, so that the copy, in another folder, names the same files (the others, a URI,
    an absolute path or one from '~', as they are)."""
    table = _read_table(path)
    with storage_errors(path):
        base = storage.resolved(path).parent
    names = list(table.column_names)
    names += [n for n in ROW_SETTINGS if n not in names and any(n in given for given in settings.values())]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    for n, row in enumerate(table.to_pylist(), start=1):
        cells = {name: _csv_cell(value) for name, value in row.items()}
        for name in REQUIRED_COLUMNS:
            cell = _text(row.get(name))
            if cell and not storage.is_uri(cell) and not cell.startswith("~") and not Path(cell).is_absolute():
                cells[name] = str(base / cell)
        cells.update({name: format(seconds, ".10g") for name, seconds in settings.get(n, {}).items()})
        writer.writerow([cells.get(name, "") for name in names])
    storage.write_bytes(dest, text.getvalue().encode())


def _csv_cell(value: Any) -> str:
    """A cell as a CSV holds it: empty for none (a Parquet number column's NaN too)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _column(table: pa.Table, name: str) -> list[Any]:
    """A column's cells (None for each row when the manifest lacks the column)."""
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _read_table(path: Location) -> pa.Table:
    if isinstance(path, Path) and path.is_dir():
        raise InputError(f"manifest {path} is a folder: give the manifest file in it (CSV, Excel or Parquet)",
                         kind="missing_file")  # fmt: skip
    if not storage.is_file(path):
        raise InputError(
            f"manifest {path} does not exist: check the "
            + ("URI" if isinstance(path, Uri) else "path (relative paths start from the current folder)"),
            kind="missing_file",
        )
    raw = b"" if isinstance(path, Path) else storage.read_bytes(path)  # an object: read once, here
    data = None if isinstance(path, Path) else pa.py_buffer(raw)

    def source() -> Any:
        return path if data is None else pa.BufferReader(data)

    suffix = path.suffix.lower()
    try:
        if suffix in _WORKBOOKS:
            return _named(path, _read_workbook(path, source()))
        head = _head(path) if isinstance(path, Path) else raw[:_HEAD_BYTES]  # a file unread is said below
        if (unread := _unread_workbook(suffix, head)) is not None:
            raise InputError(
                f"manifest {path} is {unread}, which is not read: save it as an Excel workbook (.xlsx) or as "
                "'CSV UTF-8', or give a Parquet file",
                kind="bad_manifest",
            )
        if suffix == ".parquet":
            return _named(path, pq.read_table(source()))
        read, parse = _csv_dialect(head)
        # Every CSV column is read as text: job ids like 007 keep their zeros, and only an
        # empty cell is empty (a lesson called NA, a file called null.mp4, a title N/A).
        probe = pa_csv.read_csv(source(), read_options=read, parse_options=parse)
        as_text = {name: pa.string() for name in probe.column_names}
        return _named(path, pa_csv.read_csv(
            source(), read_options=read, parse_options=parse,
            convert_options=pa_csv.ConvertOptions(column_types=as_text, null_values=[""], strings_can_be_null=True),
        ))  # fmt: skip
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        if "invalid UTF8" in str(exc):
            raise InputError(
                f"manifest {path} is not UTF-8 text ({_first_line(exc)}): save it as UTF-8 (Excel: 'CSV UTF-8'; "
                "LibreOffice: character set 'Unicode (UTF-8)'; a spreadsheet's plain 'CSV' is often the system's "
                "code page, such as GBK or Windows-1252), or give a Parquet file",
                kind="bad_manifest",
            ) from exc
        ragged = None
        if isinstance(exc, pa.ArrowInvalid) and suffix not in (".parquet", *_WORKBOOKS):  # a CSV's parse error
            with contextlib.suppress(OSError):
                ragged = _ragged_line(path.read_bytes() if isinstance(path, Path) else raw)
        if ragged is not None:
            raise InputError(f"manifest {path} {ragged}", kind="bad_manifest") from exc
        raise InputError(
            f"manifest {path} could not be read ({_first_line(exc)}): give a CSV file with a "
            "header line, or a Parquet file",
            kind="bad_manifest",
        ) from exc


def _ragged_line(content: bytes) -> str | None:
    """Where a CSV manifest's line has more or fewer cells than its header names (which
    pyarrow says without the line): the first such line and what to do; None where none
    does (or it is no text)."""
    read, parse = _csv_dialect(content[:_HEAD_BYTES])
    try:
        text = content.decode("utf-16" if read.encoding == "utf16" else "utf-8-sig")
    except UnicodeDecodeError:
        return None
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=parse.delimiter)
    header = next(rows, [])
    for row in rows:
        if row and len(row) != len(header):
            fix = (f"remove the extra cells, or quote a cell that holds a {parse.delimiter!r} (\"a{parse.delimiter} b\")"
                   if len(row) > len(header) else "add the missing ones (an empty cell is two separators in a row)")  # fmt: skip
            return (f"line {rows.line_num} has {len(row)} cells where its header line names {len(header)} columns: "
                    f"{fix}")  # fmt: skip
    return None


# The columns heygem-ray reads; the others are carried into the results as they are.
_READ_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *ROW_SETTINGS)


def _named(path: Location, table: pa.Table) -> pa.Table:
    """``table`` with the columns heygem-ray reads named as it reads them: a name in other
    case, with spaces around it, or a '-' or a space for '_' (``' Audio'``, ``'Job ID'``,
    typed in a spreadsheet) is that column. A name one edit from one that is missing
    (``refrence_seconds``, ``ouptut``) stops the manifest: its rows would render without
    the column, as if it were not there."""
    names = list(table.column_names)
    for i, name in enumerate(names):
        if (key := _typed(name)) in _READ_COLUMNS and key not in names:
            names[i] = key
    for column in _READ_COLUMNS:
        if column not in names and (near := next((n for n in names if _misspelt(n, column)), None)) is not None:
            raise InputError(
                f"manifest {path} has a column {near!r} and none named {column!r}: if it is that column, rename it "
                f"{column!r} (a column heygem-ray does not read is carried into the results as it is, but one this "
                f"close to {column!r} is taken for it misspelt: to carry it, give it a name less like it)",
                kind="bad_manifest",
            )
    return table.rename_columns(names)


def _typed(name: str) -> str:
    """A header's name as it is compared with the columns heygem-ray reads."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _misspelt(name: str, column: str) -> bool:
    """Whether the header's ``name`` is ``column`` misspelt: one letter added, left out,
    replaced, or two swapped, not counting case, spaces around it, and a '-' or a space
    for '_'. (Two such took columns users carry for ``job_id``: 'row_id', 'job_no'.)"""
    typed = _typed(name)
    return typed not in _READ_COLUMNS and spelling.distance(typed, column) <= 1


# Excel workbooks read as manifests (their first sheet); the other spreadsheet files, told
# by their names or their first bytes, are refused with what to save them as.
_WORKBOOKS = (".xlsx", ".xlsm")
_OLE_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")  # a Compound File: Excel 97–2003's .xls
_ZIP_MAGIC = b"PK\x03\x04"
_OTHER_SHEETS = {".xls": "an Excel 97–2003 workbook (.xls)", ".ods": "an OpenDocument spreadsheet (.ods)",
                 ".numbers": "a Numbers spreadsheet"}  # fmt: skip


def _unread_workbook(suffix: str, head: bytes) -> str | None:
    """What spreadsheet file a manifest that is not read as one is, or None."""
    if suffix in _OTHER_SHEETS:
        return _OTHER_SHEETS[suffix]
    if head.startswith(_OLE_MAGIC):
        return _OTHER_SHEETS[".xls"]
    if head.startswith(_ZIP_MAGIC) and suffix != ".parquet":
        return "a zip archive (a spreadsheet workbook, by its first bytes)"
    return None


def _read_workbook(path: Location, source: Any) -> pa.Table:
    """The first sheet of an Excel workbook: its first row names the columns (unnamed
    columns are left out), every cell as text, as a CSV's would be (a number as the sheet
    shows it without a format: 7, 0.5; a date in ISO 8601), rows with no cell filled left out."""
    try:
        book = openpyxl.load_workbook(source, read_only=True, data_only=True)
        try:
            rows = book.worksheets[0].iter_rows(values_only=True) if book.worksheets else iter(())
            header = [_cell_text(v) for v in next(rows, ())]
            named = [i for i, name in enumerate(header) if name]
            columns: list[list[str | None]] = [[] for _ in named]
            for row in rows:
                cells = [_cell_text(row[i]) if i < len(row) else None for i in named]
                if any(cells):
                    for column, cell in zip(columns, cells, strict=True):
                        column.append(cell)
        finally:
            book.close()
    except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise InputError(
            f"manifest {path} could not be read as an Excel workbook ({type(exc).__name__}: {_first_line(exc)}): "
            "save it again from the spreadsheet as .xlsx or 'CSV UTF-8'",
            kind="bad_manifest",
        ) from exc
    names = [str(header[i]) for i in named]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InputError(
            f"manifest {path}: the first sheet's first row names {', '.join(map(repr, twice))} more than once: "
            "give each column its own name",
            kind="bad_manifest",
        )
    return pa.table({name: pa.array(column, pa.string()) for name, column in zip(names, columns, strict=True)})


def _cell_text(value: object) -> str | None:
    """A workbook cell as a CSV would hold it: None when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


# What is read of a CSV manifest to tell its encoding and delimiter: its header line is in it.
_HEAD_BYTES = 1 << 16
# Delimiters spreadsheets write, in the order tried: where a list separator is ',' in the
# system's locale (as in much of Europe it is ';'), and "Unicode text" exports (tabs).
_DELIMITERS = (",", ";", "\t")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_HEAD_BYTES)


def _csv_dialect(head: bytes) -> tuple[pa_csv.ReadOptions, pa_csv.ParseOptions]:
    """How to read a CSV manifest that begins with ``head``: UTF-8 (a byte-order mark
    allowed), or UTF-16 where it starts with that mark (Excel's "Unicode text"); separated
    by the first of ``_DELIMITERS`` that splits its header line into cells naming both
    required columns (else ',', and the missing columns are reported as such)."""
    encoding = "utf16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf8"
    text = head.decode("utf-16" if encoding == "utf16" else "utf-8-sig", errors="replace")
    header = text.splitlines()[0] if text else ""
    delimiter = next(
        (d for d in _DELIMITERS if set(REQUIRED_COLUMNS) <= {_typed(c.strip().strip('"')) for c in header.split(d)}), ","
    )
    return pa_csv.ReadOptions(block_size=1 << 20, encoding=encoding), pa_csv.ParseOptions(delimiter=delimiter)


def _job_ids(path: Location, job_ids: list[Any], audio: list[Any], video: list[Any]) -> list[str]:
    """Given ids where the manifest has them, derived ones (audio-video stems) elsewhere;
    the arguments are the manifest's columns."""
    given: dict[str, list[int]] = defaultdict(list)
    for n, cell in enumerate(job_ids, start=1):
        if _text(cell):
            given[_text(cell)].append(n)
    dups = {k: v for k, v in given.items() if len(v) > 1}
    if dups:
        shown = "; ".join(f"{k!r} on rows {', '.join(map(str, v))}" for k, v in list(dups.items())[:5])
        raise InputError(
            f"manifest {path} repeats job ids ({shown}): every job_id must be unique, "
            "or leave the column empty to have ids made from the file names",
            kind="bad_manifest",
        )
    ids: list[str] = []
    taken = set(given)
    for n, (cell, a, v) in enumerate(zip(job_ids, audio, video, strict=True), start=1):
        jid = _text(cell)
        if not jid:
            stem = f"{_stem(a)}-{_stem(v)}"
            jid, again = stem, 1
            while jid in taken:  # a given id may be "<stem>-row<n>" too
                jid = f"{stem}-row{n}" + (f"-{again}" if again > 1 else "")
                again += 1
            taken.add(jid)
        ids.append(jid)
    return ids


def _stem(cell: Any) -> str:
    """A cell's file name without its suffix, for a derived job id (credentials hidden), with
    what a job id may not hold replaced by '_' (``_id_problem``)."""
    stem = Path(storage.redact(_text(cell))).stem
    kept = "".join("_" if _unfit(c) else c for c in stem)
    # Each of the two stems within half the bytes a job id may have, cut between characters,
    # then without a '.' or a space at either end (the cut may leave one).
    kept = kept.encode()[: ID_MAX_BYTES // 2 - 1].decode(errors="ignore")
    while kept != (trimmed := kept.strip().strip(".")):
        kept = trimmed
    return kept or "_"


def _unfit(c: str) -> bool:
    """Whether a job id may not hold the character ``c`` (``_NOT_IN_ID``, or invisible)."""
    return c in _NOT_IN_ID or unicodedata.category(c)[0] == "C"


def _id_problem(job_id: str) -> str | None:
    """Why ``job_id`` cannot be a file name (``ID_MAX_BYTES``, ``_NOT_IN_ID``), or None."""
    bad = sorted({c for c in job_id if _unfit(c)})
    if bad:
        return f"it holds {', '.join(repr(c) for c in bad)}"
    if job_id[:1] in (".", "") or job_id[:1].isspace():
        return "it starts with '.' or a space"
    if job_id[-1].isspace() or job_id.endswith("."):
        return "it ends with '.' or a space"
    if len(job_id.encode()) > ID_MAX_BYTES:
        return f"it is {len(job_id.encode())} bytes long in UTF-8, over {ID_MAX_BYTES}"
    return None


def _carried_name(column: str, row: Mapping[str, Any], reserved: frozenset[str]) -> str:
    """The name a manifest column that is also a results column is carried under:
    ``manifest_<name>``, prefixed again while the manifest (or the results) has that name too."""
    name = f"manifest_{column}"
    while name in row or name in reserved:
        name = f"manifest_{name}"
    return name


def _make_job(
    row: int,
    job_id: str,
    r: dict[str, Any],
    base: Location,
    resolve: Callable[[str], Location],
    out_root: Location,
    reserved: frozenset[str],
) -> Job:
    audio, video = _text(r.get("audio")), _text(r.get("video"))
    extra = {
        (_carried_name(k, r, reserved) if k in reserved else k): v
        for k, v in r.items()
        if k not in REQUIRED_COLUMNS and k not in OPTIONAL_COLUMNS and k not in ROW_SETTINGS
    }
    output, problem = _resolve_output(job_id, _text(r.get("output")), out_root)
    settings, bad = _row_settings(r)
    problem = problem or bad
    inputs: dict[str, Location] = {}
    for name, value in (("audio", audio), ("video", video)):
        try:
            inputs[name] = resolve(value) if value else base
        except InputError as exc:  # credentials in the URI: said before anything else, without them
            inputs[name] = base
            problem = InputError(f"the {name!r} cell {exc.message}", kind=exc.kind)
        except ValueError as exc:
            inputs[name] = base
            problem = problem or InputError(f"the {name!r} cell {value!r} is not usable: {exc}", kind="missing_file")
        if problem is None and not value:
            problem = InputError(
                f"the {name!r} cell is empty: give the path of the {name} file",
                kind="missing_file",
            )
    return Job(
        row=row,
        job_id=job_id,
        audio=inputs["audio"],
        video=inputs["video"],
        output=output,
        extra=extra,
        problem=problem,
        row_settings=settings,
    )


def _row_settings(r: dict[str, Any]) -> tuple[tuple[tuple[str, float], ...], InputError | None]:
    """A row's own render settings (``ROW_SETTINGS``: the cells that hold a number), and the
    problem of a cell that holds something else. Their ranges are the run's to check
    (``config.RenderConfig``)."""
    settings: list[tuple[str, float]] = []
    for name in ROW_SETTINGS:
        raw = r.get(name)
        if isinstance(raw, float) and math.isnan(raw):  # a Parquet number column's empty cell (pandas writes NaN)
            continue
        cell = _text(raw)
        if not cell:
            continue
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            option = "--" + name.replace("_", "-")
            return (), InputError(
                f"the {name!r} cell {cell!r} is not a number of seconds: give one, or leave it empty for the run's "
                f"{option}",
                kind="bad_argument",
            )
        settings.append((name, value))
    return tuple(settings), None


def _resolve_input(base: Location, cell: str) -> Location:
    """A cell's file: a URI as given, an absolute path (or one from ``~``) as given, else relative
    to ``base``."""
    if storage.is_uri(cell):
        return storage.location(cell)
    path = storage.from_home(Path(cell))
    return path if path.is_absolute() else base / cell


def _resolve_output(job_id: str, output: str, out_root: Location) -> tuple[Location | None, InputError | None]:
    """Where the job's MP4 goes; a path outside ``out_root`` becomes a row problem."""
    if (why := _id_problem(job_id)) is not None:
        return None, InputError(
            f"this job id cannot be a file name inside the output folder: {why}; give the row a job_id of letters "
            "(any script), digits, spaces and punctuation other than " + " ".join(sorted(_NOT_IN_ID)),
            kind="unsafe_output",
        )
    if not output:
        default = out_root / f"{job_id}.mp4"
        blocked = _blocked(default, out_root)
        return (None, InputError(blocked, kind="unsafe_output")) if blocked else (default, None)
    if storage.is_uri(output):
        try:
            storage.location(output)  # refuses credentials, without showing them
        except InputError as exc:
            return None, InputError(f"the 'output' cell {exc.message}", kind=exc.kind)
        except ValueError:
            pass  # a URI that names no object: outside the output folder, as said below
    try:
        target = None if storage.is_uri(output) else storage.resolved(out_root / output)
    except ValueError:  # a key that would leave the bucket
        target = None
    except OSError as exc:  # a loop of links on its way, a folder this user may not look into
        refused = storage_error(exc, out_root / output)
        return None, InputError(f"output {refused.message if refused is not None else f'{output!r}: {_first_line(exc)}'}",
                                kind="unsafe_output")  # fmt: skip
    if target is None and storage.is_uri(output):
        with contextlib.suppress(ValueError):
            named = storage.location(output)
            if storage.is_inside(named, out_root) and named != out_root:  # a row of a results table, say
                relative = str(named)[len(str(out_root)) + 1 :]
                return None, InputError(
                    f"output {output!r} is a whole URI; give it relative to the output folder {out_root}, as "
                    f"{relative!r}",
                    kind="unsafe_output",
                )
    if target is None or Path(output).is_absolute() or not storage.is_inside(target, out_root) or target == out_root:
        if isinstance(out_root, Path) and target is not None and (link := _link_out(out_root, output)) is not None:
            return None, InputError(
                f"output {output!r} goes through the link {link} → {os.readlink(link)}, which leads outside the "
                f"output folder {out_root}; remove the link, or give the row another output",
                kind="unsafe_output",
            )
        return None, InputError(
            f"output {output!r} would be written outside the output folder "
            f"{out_root}; give a path relative to it, such as 'videos/{job_id}.mp4'",
            kind="unsafe_output",
        )
    if target.suffix.lower() != ".mp4":
        return None, InputError(
            f"output {output!r} must end in .mp4{_as_mp4(output)}",
            kind="unsafe_output",
        )
    # (Format characters stay: a Persian name's zero-width non-joiner is typed as a letter.)
    if hidden := sorted({c for c in output if unicodedata.category(c) in ("Cc", "Zl", "Zp")}):
        return None, InputError(
            f"output {output!r} holds {', '.join(repr(c) for c in hidden)}: a line break, a tab or another control "
            "code, which a file name should not hold; give the row an output without it",
            kind="unsafe_output",
        )
    if (why := _name_problem(output, target)) is not None:
        return None, InputError(f"output {output!r}: {why}; give it shorter names", kind="unsafe_output")
    if (blocked := _blocked(target, out_root)) is not None:
        return None, InputError(blocked, kind="unsafe_output")
    return target, None


def _as_mp4(output: str) -> str:
    """How the 'output' cell ``output``, which names no .mp4, would: ": give it as 'a.mp4'"
    where its last name is one with another ending (or none); "" otherwise (a link named
    .mp4 to a .mov, a name that is '..')."""
    named = PurePath(output)
    if named.name in ("", ".", "..") or named.suffix.lower() == ".mp4":
        return ""
    return f": give it as {str(named.with_suffix('.mp4'))!r}"


def _blocked(target: Location, out_root: Location) -> str | None:
    """Why the local MP4 ``target`` cannot be written where it is (a folder there, or a file
    where one of its folders must be), found before the row renders for nothing; or None."""
    if not isinstance(target, Path):
        return None
    try:
        if target.is_dir():
            return f"output {target} is a folder: give the row another 'output', or move the folder away"
        for folder in target.parents:
            if folder == out_root or not storage.is_inside(folder, out_root):
                break
            if os.path.lexists(folder) and not folder.is_dir():
                return f"output {target} would be written into {folder}, which is a file: move it away, or give the row another 'output'"
    except OSError as exc:  # a path too long, a folder this user may not look into
        refused = storage_error(exc, target)
        return f"output {refused.message if refused is not None else f'{target}: {_first_line(exc)}'}"
    return None


def _link_out(out_root: Path, output: str) -> Path | None:
    """The first symbolic link on the way from ``out_root`` to ``output`` (a relative path
    that stays inside it as written) that leads out of it, if one does."""
    written = Path(os.path.normpath(out_root / output))
    if not storage.is_inside(written, out_root):
        return None
    for step in reversed([written, *written.parents]):
        if storage.is_inside(step, out_root) and step != out_root and step.is_symlink():
            if not storage.is_inside(storage.resolved(step), out_root):
                return step
    return None


def _name_problem(output: str, target: Location) -> str | None:
    """Why the 'output' cell ``output`` (resolved: ``target``) cannot be written under its
    names (``NAME_MAX_BYTES``), or None: found here, rather than as an encoder's "File name
    too long" that reads like a broken encode."""
    longest = max((part.encode() for part in output.split("/")), key=len)
    if isinstance(target, Path) and len(longest) > NAME_MAX_BYTES:  # (a bucket's key has no such parts)
        return (f"its part {longest.decode()[:40]!r}… is {len(longest)} bytes long in UTF-8, over the "
                f"{NAME_MAX_BYTES} a file or folder name holds")  # fmt: skip
    stem = len(target.stem.encode())
    if stem > NAME_MAX_BYTES - STAGED_EXTRA_BYTES:
        return (f"its file name without .mp4 is {stem} bytes long in UTF-8, over {NAME_MAX_BYTES - STAGED_EXTRA_BYTES} "
                f"(the copy written before the MP4 appears adds {STAGED_EXTRA_BYTES} bytes to a name, and a file name "
                f"holds {NAME_MAX_BYTES})")  # fmt: skip
    return None


def _check_outputs(path: Location, jobs: list[Job], base: Location, folds_case: bool = False) -> None:
    """Stop when two rows would write one file, or a row would write the manifest or a file
    that a row reads (its own audio or video, or another's: an --output-dir that is the
    media folder, say), so that inputs are never replaced. Files are compared as the file
    system finds them (symbolic links followed) and buckets by their normalised keys, with
    one lookup per file: it grows with the rows, never with their pairs
    (bench/bench_manifest.py). ``folds_case``: local names are compared as a file system
    that does not tell upper from lower case compares them."""
    real = _RealPaths(folds_case)
    writers: dict[str | Uri, list[Job]] = defaultdict(list)
    for j in jobs:
        if j.output is not None:
            writers[real(j.output)].append(j)
    for file, rows in writers.items():
        if len(rows) > 1:
            names = sorted({str(j.output) for j in rows})
            cased = len({_folded(n) for n in names}) < len(names)
            one = (f"{', '.join(names)}, which this output folder's file system takes as one file (it does not tell "
                   "upper from lower case)") if folds_case and cased else file  # fmt: skip
            raise InputError(
                f"manifest {path}: rows {', '.join(str(j.row) for j in rows)} would all write {one}; "
                "give each row its own job_id or output",
                kind="bad_manifest",
            )
    # An output there already, by the file it is: a folder reached by two paths (a bind mount,
    # a second mount of one share) or by names a file system takes as one (case, Unicode
    # forms) names one file with texts no resolving makes equal.
    present = {found: rows[0] for file, rows in writers.items() if (found := _file_id(file)) is not None}
    # The manifest is an input too: a manifest saved as lesson.mp4 whose row 'lesson' writes it.
    manifest = real(storage.resolved(path))
    if (writer := writers.get(manifest)) is None and (found := _file_id(manifest)) in present:
        writer = [present[found]]
    if writer is not None:
        (j,) = writer
        raise InputError(
            f"manifest {path}: {j.label} would write {j.output}, which is this manifest; rendering would replace "
            "it. Give the row another output or job_id, or choose an --output-dir apart from the manifest",
            kind="bad_manifest",
        )
    read: dict[Location, str | Uri] = {}  # input → its file: rows share their references
    ids: dict[str | Uri, tuple[int, int] | None] = {}  # (and its device and inode, where outputs are there)
    for reader in jobs:
        for what, loc in (("audio", reader.audio), ("video", reader.video)):
            if loc == base:  # the stand-in for an empty or unusable cell: no file
                continue
            if (target := read.get(loc)) is None:
                target = read[loc] = real(loc)
            writer = writers.get(target)
            if writer is None and present:
                if target not in ids:
                    ids[target] = _file_id(target)
                if (found := ids[target]) in present:
                    writer = [present[found]]
            if writer is None:
                continue
            (j,) = writer
            whose = f"its own {what}" if j is reader else f"the {what} of {reader.label}"
            named = "" if str(loc) == str(j.output) else f" ({loc}, the same file)"
            raise InputError(
                f"manifest {path}: {j.label} would write {j.output}, which is {whose}{named}; rendering "
                "would replace an input. Give the row another output or job_id, or choose an --output-dir "
                "apart from the media files",
                kind="bad_manifest",
            )


def _file_id(file: str | Uri) -> tuple[int, int] | None:
    """The local ``file``'s device and inode, where it is a file; else None."""
    if isinstance(file, Uri):
        return None
    try:
        st = os.stat(file)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat_module.S_ISREG(st.st_mode) else None


class _RealPaths:
    """A location → the file it names, as a key to compare: for a local path, the text of
    its folder with symbolic links resolved (once per folder), then of the file itself if
    it is a link; a bucket key as it is (``gcs://`` read as ``gs://``). ``folds_case``: a
    local path's text in one case and one Unicode form, as macOS's and Windows' file systems
    compare names."""

    def __init__(self, folds_case: bool = False) -> None:
        self._folders: dict[str, str] = {}
        self._folds = folds_case

    def __call__(self, loc: Location) -> str | Uri:
        if isinstance(loc, Uri):
            return Uri("gs", loc.key) if loc.scheme == "gcs" else loc
        parent, _, name = str(loc).rpartition(os.sep)  # an absolute path: its folder, its name
        folder = self._folders.get(parent)
        if folder is None:
            folder = self._folders[parent] = os.path.realpath(parent or os.sep).rstrip(os.sep)
        found = f"{folder}{os.sep}{name}"
        real = os.path.realpath(found) if os.path.islink(found) else found
        return _folded(real) if self._folds else real


def _folded(name: str) -> str:
    """``name`` as a file system that does not tell case compares it: one case, one Unicode form."""
    return unicodedata.normalize("NFC", name).casefold()


def _text(value: Any) -> str:
    """A cell as text: none, or a float NaN (an empty cell of a number column pandas wrote to
    Parquet), is empty; a whole float (such a column's numbers) is written as a whole number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
