"""The results table: one row per manifest row, written as Parquet.

Column meanings are documented in docs/results.md ("Results"); the schema below is the one
place they are defined.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from heygem_ray import storage
from heygem_ray.errors import storage_errors
from heygem_ray.manifest import Job
from heygem_ray.storage import Location

Status = Literal["ok", "failed", "skipped"]
RESULTS_FILE = "results.parquet"  # the table's name in the output folder

SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("row", pa.int64()),
        ("audio", pa.string()),
        ("video", pa.string()),
        ("output", pa.string()),
        ("status", pa.string()),
        ("error_kind", pa.string()),
        ("error_step", pa.string()),
        ("error", pa.string()),
        ("frames", pa.int64()),
        ("face_lost_frames", pa.int64()),
        # The reference checks' warnings (checks.py), short: "name: figure; …"; "" when none.
        ("reference_notes", pa.string()),
        # Where the mouth is in the output (x0, y0, x1, y1 pixels): the report's zoom.
        ("mouth_box", pa.list_(pa.int64())),
        ("output_bytes", pa.int64()),
        ("audio_seconds", pa.float64()),
        ("seconds", pa.float64()),
        ("realtime_factor", pa.float64()),
        ("audio_s", pa.float64()),
        ("analyze_s", pa.float64()),
        ("features_s", pa.float64()),
        ("motion_s", pa.float64()),
        ("render_s", pa.float64()),
        ("restore_s", pa.float64()),
        ("compose_s", pa.float64()),
        ("pack", pa.string()),
        ("backend", pa.string()),
        ("precision", pa.string()),
        ("backend_note", pa.string()),
        ("engine_key", pa.string()),
        ("calibration", pa.string()),
        # face restoration: the stage ("gfpgan", "none"), its backend, and one frame's face
        # before and after it, side by side (a JPEG, for the report)
        ("restore", pa.string()),
        ("restore_backend", pa.string()),
        ("restore_sample", pa.binary()),
        ("template_cached", pa.bool_()),
        ("node", pa.string()),
        ("gpu", pa.string()),
        ("compute_capability", pa.string()),
        ("encoder", pa.string()),
        ("decoder", pa.string()),
        ("attempts", pa.int64()),
        ("ray_task_id", pa.string()),
        ("config_hash", pa.string()),
        # the settings that hash is of, as JSON (RunConfig.render_settings): what a rerun
        # names when it renders the row again for other settings
        ("render_settings", pa.string()),
        # What a rerun checks before it trusts this row (resume.py, identity.py):
        # the run that rendered the row's MP4 (a skipped row: the earlier run that did);
        ("run_id", pa.string()),
        # the weights it was rendered with ("sha256:…" of the checkpoint's bytes; "none");
        ("weights_digest", pa.string()),
        # its inputs' contents ("sha256:…" of a local file; "size:…;mtime_s:…" of an object);
        ("audio_identity", pa.string()),
        ("video_identity", pa.string()),
        # and the published MP4's modification time (with output_bytes: which file it is).
        ("output_mtime_ns", pa.int64()),
    ]
)
RESULT_COLUMNS = frozenset(SCHEMA.names)
# Rows per Parquet row group when the table is written or read a batch at a time: the
# memory either takes is bounded by this, not by the number of rows.
BATCH_ROWS = 1024


@dataclass
class JobResult:
    job_id: str
    row: int
    audio: str
    video: str
    output: str | None
    status: Status = "failed"
    error_kind: str | None = None
    error_step: str | None = None  # the step it failed in (steps.Step)
    error: str | None = None
    frames: int = 0
    # Output frames left as the reference has them: the face was not there (turned away,
    # out of the frame, a cut to slides), so no mouth was pasted.
    face_lost_frames: int = 0
    # The reference checks' warnings and failures, short (checks.notes); "" when none.
    reference_notes: str | None = None
    # The mouth's box in the output (x0, y0, x1, y1 pixels, median over its frames).
    mouth_box: list[int] | None = None
    output_bytes: int | None = None  # size of the published MP4
    audio_seconds: float | None = None
    seconds: float = 0.0
    realtime_factor: float | None = None
    audio_s: float | None = None
    analyze_s: float | None = None
    features_s: float | None = None
    motion_s: float | None = None
    render_s: float | None = None
    restore_s: float | None = None  # only with --restore
    compose_s: float | None = None
    pack: str = ""
    backend: str | None = None
    precision: str | None = None
    backend_note: str | None = None
    engine_key: str | None = None
    calibration: str | None = None  # int8: the id of the calibration data; "" otherwise
    restore: str | None = None  # config.RestoreName the job ran with; None on rows no job rendered
    restore_backend: str | None = None
    restore_sample: bytes | None = None  # JPEG: one frame's face unrestored | restored
    template_cached: bool | None = None
    node: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    encoder: str | None = None  # the H.264 encoder that wrote the MP4: libx264 or h264_nvenc
    decoder: str | None = None  # what decoded the reference into its template: nvdec or cpu
    attempts: int = 1
    ray_task_id: str | None = None  # the last attempt's task: its logs and state in Ray
    config_hash: str = ""
    render_settings: str = ""  # RunConfig.render_settings(): the JSON config_hash is of
    # Identities a rerun compares (see SCHEMA); empty on rows no job of a run rendered.
    run_id: str = ""
    weights_digest: str = ""
    audio_identity: str = ""
    video_identity: str = ""
    output_mtime_ns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_job(cls, job: Job, pack: str) -> JobResult:
        """A row for ``job`` (failed until the job says otherwise)."""
        return cls(
            job_id=job.job_id,
            row=job.row,
            audio=str(job.audio),
            video=str(job.video),
            output=str(job.output) if job.output else None,
            pack=pack,
            extra=job.extra,
        )

    def to_row(self) -> dict[str, Any]:
        # The fields as they are (``dataclasses.asdict`` deep-copies each one: most of the
        # time a table of 100 000 rows took to write), then the extra columns as text.
        row = {name: getattr(self, name) for name in _FIELD_NAMES}
        return {**row, **{k: (None if v is None else str(v)) for k, v in self.extra.items()}}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobResult:
        """A table row back as a result; columns that are not results go to ``extra``."""
        known = {k: v for k, v in row.items() if k in _FIELDS}
        return cls(**known, extra={k: v for k, v in row.items() if k not in _FIELDS})


_FIELD_NAMES = tuple(f.name for f in fields(JobResult) if f.name != "extra")  # in the table's order
_FIELDS = frozenset(_FIELD_NAMES)


def _schema(extra_names: Iterable[str]) -> pa.Schema:
    return pa.schema(list(SCHEMA) + [(name, pa.string()) for name in sorted(extra_names)])


def write_results(results: list[JobResult], path: Location) -> None:
    """Write a few rows as a table, whole (a file or an object): readers never see a
    half-written one. The run's table is written with ``write_table``."""
    rows = sorted((r.to_row() for r in results), key=lambda r: r["row"])
    table = pa.Table.from_pylist(rows, schema=_schema({k for r in rows for k in r} - RESULT_COLUMNS))
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    storage.write_bytes(path, buf.getvalue().to_pybytes())


def write_table(rows: Iterable[JobResult], extra_names: Collection[str], path: Location) -> None:
    """Write ``rows``, in the order given, as the results table at ``path`` (a file or an
    object), ``BATCH_ROWS`` at a time, so memory does not grow with the table. Every row
    has the result columns, then ``extra_names`` (text). The table appears whole or not
    at all."""
    schema = _schema(extra_names)
    with tempfile.TemporaryDirectory(prefix="heygem-results-") as scratch:
        tmp = storage.staging_file(path, Path(scratch), ".parquet.tmp")
        try:
            with storage_errors(tmp.parent), pq.ParquetWriter(tmp, schema) as writer:
                batch: list[dict[str, Any]] = []
                for r in rows:
                    batch.append(r.to_row())
                    if len(batch) == BATCH_ROWS:
                        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                        batch = []
                if batch:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            storage.publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def read_rows(path: Location, status: Status | None = None) -> Iterator[JobResult]:
    """The rows of the results table at ``path`` in its order (those with ``status`` only,
    if given), read ``BATCH_ROWS`` at a time."""
    source: Any = path if isinstance(path, Path) else pa.BufferReader(storage.read_bytes(path))
    for batch in pq.ParquetFile(source).iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            if status is None or row["status"] == status:
                yield JobResult.from_row(row)
