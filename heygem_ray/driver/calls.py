"""Calls to the run's actors made from anywhere in the driver, its jobs and its workers:
retried while Ray cannot reach the actor for a moment, and how Ray's errors are told."""

from __future__ import annotations

import re
import time
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, OutOfMemoryError, RayActorError, RayError

from heygem_ray.errors import EngineError, first_line, out_of_memory

# What job tasks and chunk calls are called in the Ray dashboard. The same for every job:
# Ray's dashboard agent keeps state for every task name it has seen (the `ray_tasks`
# metric is labelled by name) for the cluster's life, so a name per job grew it by about
# 50 KiB a row, run after run (BENCHMARKS.md, "Memory"). Log records name the job.
JOB_TASK = "job"
CHUNK_CALL = "render"
# Seconds between progress polls while waiting for jobs.
POLL_S = 0.5
# A call Ray could not deliver or answer for a moment (ActorUnavailableError: a dropped
# connection; it may or may not have run) is made again, to the same actor, up to this
# many times in all, after pauses that double from UNREACHABLE_PAUSE_S: a chunk renders
# the same twice, and the router's methods may run twice.
UNREACHABLE_TRIES = 4
UNREACHABLE_PAUSE_S = 0.5


def node_name() -> str:
    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"


def ask(method: Any, *args: Any) -> Any:
    """``ray.get(method.remote(*args))`` for the run's router, made again while Ray cannot
    reach it for a moment (``UNREACHABLE_TRIES`` in all); then a ``worker_lost`` error, as
    for a router that died (``out_of_memory`` where Ray's memory monitor stopped it)."""
    tries = 0
    while True:
        try:
            return ray.get(method.remote(*args))
        except ActorUnavailableError as exc:
            tries += 1
            if tries == UNREACHABLE_TRIES:
                raise EngineError(
                    f"the run's router (its bookkeeping actor, on the driver's node) could not be reached "
                    f"{tries} times ({first_line(exc)}); check the cluster's network, then run the "
                    "same manifest again",
                    kind="worker_lost",
                ) from exc
            time.sleep(UNREACHABLE_PAUSE_S * 2 ** (tries - 1))
        except OutOfMemoryError as exc:  # Ray's memory monitor stopped it: its node is short of memory
            raise out_of_memory(f"Ray stopped the run's router (its bookkeeping actor, on the driver's node) for want "
                                f"of memory there ({first_line(exc)})") from exc  # fmt: skip
        except RayActorError as exc:
            raise EngineError(f"the run's router (its bookkeeping actor, on the driver's node) died ({death(exc)}); "
                              "check that node's health, then run the same manifest again", kind="worker_lost") from exc  # fmt: skip


def death(exc: RayError) -> str:
    """How Ray says an actor died: its error's first line, and the first sentence of the
    worker's exit detail where Ray gives one (its exit code, a signal, the OOM killer)."""
    detail = re.search(r"Worker exit detail: ([^.]*\.)", str(exc))
    return first_line(exc) + (f" {detail.group(1)}" if detail else "")
