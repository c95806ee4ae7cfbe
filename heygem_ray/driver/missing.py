"""Rows that fail at once, without a job, on a file a job of the run found missing."""

from __future__ import annotations

from heygem_ray.manifest import Job, row_label
from heygem_ray.results import JobResult


class MissingInputs:
    """The audio and reference files jobs of this run found missing, so that later rows
    naming one fail at once, with the same message, without a job: a manifest of 100 000
    rows pointing at one missing file runs one job, not 100 000.

    Learned from the rows of finished jobs (``render_job`` reads the audio in its
    ``audio`` step and the reference in ``analyze``, so the step says which), where the
    job ran: never from a look at the files by whoever holds this. A file that appears
    later in the run still fails the later rows naming it; a rerun renders them.

    It holds one entry per distinct missing file, and a bit per manifest row: the rows it
    failed (they have no part file; an older one of an earlier run must not stand in).
    """

    _INPUT_OF_STEP = {"audio": "audio", "analyze": "video"}

    def __init__(self, pack: str, config_hash: str, rows: int):
        self._pack, self._config_hash = pack, config_hash
        # ("audio" or "video", the file as the results name it) → (step, message): a file found
        # missing as one row's audio fails at once only the rows that name it as audio (the
        # message says "audio"); as another's reference, its own job finds it.
        self._known: dict[tuple[str, str], tuple[str, str]] = {}
        self._failed = bytearray(rows + 1)  # 1 at the (1-based) manifest rows failed here

    def learn(self, result: JobResult) -> None:
        """Note the input a finished job's row says is missing, if any."""
        which = self._INPUT_OF_STEP.get(result.error_step or "")
        if result.error_kind != "missing_file" or which is None or result.error is None:
            return
        message = result.error.removeprefix(f"{row_label(result.row, result.job_id)}: ")
        self._known.setdefault((which, getattr(result, which)), (result.error_step or "", message))

    def fail(self, job: Job) -> JobResult | None:
        """Fail ``job`` at once if a file it names is known to be missing (its audio
        first, as ``render_job`` reads them): its row, or None (a row with a problem of its
        own is left to its job)."""
        if job.problem is not None:
            return None
        result = self._row(job)
        if result is not None:
            self._failed[job.row] = 1
        return result

    def row_of(self, job: Job) -> JobResult | None:
        """The row of a job that :meth:`fail` failed (None for any other)."""
        return self._row(job) if self._failed[job.row] else None

    def _row(self, job: Job) -> JobResult | None:
        for which, where in (("audio", job.audio), ("video", job.video)):
            if (known := self._known.get((which, str(where)))) is not None:
                result = JobResult.for_job(job, self._pack)
                result.error_kind = "missing_file"
                result.error_step, message = known
                result.error = f"{job.label}: {message}"
                result.attempts, result.config_hash = 0, self._config_hash  # no job was started
                return result
        return None
