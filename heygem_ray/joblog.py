"""Log records that name their job.

While a job task runs (``with job_logging(job_id):``), every log record made in its
process carries the attribute ``job``: the manifest row's job id (``-`` outside a job).

* A Ray worker process without logging set up (Ray's default) gets one handler on the
  ``heygem_ray`` logger that writes ``FORMAT`` lines to stderr, e.g.::

      2026-01-05 02:14:07,311 WARNING heygem_ray.driver.task job=lesson-17 status=failed step=analyze ...

  Ray keeps them in the task's log (dashboard → Jobs → a task ``job`` → Logs) and
  streams them to the driver's console, prefixed ``(job pid=…)``; the record itself
  names the job (tasks share one name, see ``driver.calls.JOB_TASK``).
* Where logging is already set up, e.g. ``ray.init(logging_config=ray.LoggingConfig(
  encoding="JSON"))``, nothing is added: Ray's formatters write every extra record
  attribute, so each line has a ``job`` field beside Ray's ``task_name`` and ``node_id``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s job=%(job)s %(message)s"
NO_JOB = "-"

_job: ContextVar[str] = ContextVar("heygem_job", default=NO_JOB)
_installed = False


@contextmanager
def job_logging(job_id: str) -> Iterator[None]:
    """Records made inside the block (in this thread or task) carry ``job=job_id``."""
    install()
    token = _job.set(job_id)
    try:
        yield
    finally:
        _job.reset(token)


def install() -> None:
    """Once per process: stamp records with the current job; a stderr handler if none."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.job = _job.get()
        return record

    logging.setLogRecordFactory(factory)
    package = logging.getLogger("heygem_ray")
    if not logging.getLogger().handlers and not package.handlers:
        handler = logging.StreamHandler()  # stderr
        handler.setFormatter(logging.Formatter(FORMAT))
        package.addHandler(handler)


def fields(**values: object) -> str:
    """``key=value`` pairs for a log message; values with spaces are quoted."""
    return " ".join(f"{k}={_quote(v)}" for k, v in values.items() if v is not None)


def _quote(value: object) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return json.dumps(text, ensure_ascii=False) if (not text or any(c.isspace() or c in "\"'=" for c in text)) else text
