"""Connecting to Ray: a new local instance, the cluster a Ray Job runs in, or an address;
a token the cluster refuses is one clear error at once."""


from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
from ray._raylet import GcsClient  # type: ignore[attr-defined]  # Ray's own GCS client, untyped
from ray.exceptions import AuthenticationError

from heygem_ray.errors import EngineError, InputError
from heygem_ray.quiet import held_stderr, without_record
from heygem_ray.storage import readable_size

log = logging.getLogger(__name__)


# Ray (2.59+) turns token mode on by itself where RAY_AUTH_MODE is unset (a new local
# instance; a cluster whose token it finds), and says so at every connect, ending with how
# to turn it off: nothing a user of this run needs, above every run's first line.
_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


@contextmanager
def _hangups_ignored(local: bool) -> Iterator[None]:
    """A local instance's processes (its GCS, raylet and agents) start in this process's
    group, and a terminal that closes sends SIGHUP to the whole group: they died at once,
    and Ray ended the driver a minute later, as it wrote the table of the run the signal
    stopped. Started with SIGHUP ignored, they keep it ignored (the driver's own handler,
    ``driver.stop``, is set after)."""
    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)


def connect(address: str | None) -> tuple[bool, str | None]:
    """Connect to Ray. Returns (started here and so to be stopped here, dashboard URL).

    No address: the cluster named by ``RAY_ADDRESS`` (set inside a Ray Job), else a new
    local instance, never whichever cluster another process on this machine started
    last (which a bare ``ray.init()`` would join).
    """
    if ray.is_initialized():
        return False, None
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    _check_token(target)
    temp = _local_temp()
    if target == "local":
        _check_room(temp)
    if not sys.stderr.isatty():  # a log file (a nightly job's): the workers' lines streamed here without colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        with without_record(_TOKEN_NOTICE_LOGGER, _TOKEN_NOTICE), _hangups_ignored(target == "local"):
            ctx = ray.init(address=target, logging_level=logging.WARNING)
    except AuthenticationError as exc:  # token mode on here, and no token found
        raise _token_error(target) from exc
    except ConnectionError as exc:
        raise EngineError(
            f"could not reach the Ray cluster at {target} ({exc}); check --address and that the cluster is up",
            kind="cluster_unreachable",
        ) from exc
    except ValueError as exc:  # an address Ray cannot parse: the dashboard's http:// one, a port that is no number
        given = "--address" if address else "RAY_ADDRESS"
        said = " ".join(str(exc).split()).split(". ")[0] or type(exc).__name__  # Ray's first sentence
        web = " (an http:// address is the dashboard's, which `ray job submit` takes)" if "://" in target else ""
        raise EngineError(
            f"{given} {target!r} is no address of a Ray cluster ({said}){web}; give the head node's GCS address, "
            "HOST:6379 ('ray status' on the head node prints it), or leave --address and RAY_ADDRESS unset "
            "for a local instance",
            kind="cluster_unreachable",
        ) from exc
    except Exception as exc:  # a local instance that did not start (Ray raises a bare Exception)
        if target != "local":
            raise
        raise EngineError(
            f"a local Ray instance could not start ({' '.join(str(exc).split())[:300] or type(exc).__name__}); its "
            f"files go in {temp} ({_free(temp)} free), and its logs there say why: free space there, or give "
            "RAY_TMPDIR another folder, or join a running cluster with --address",
            kind="cluster_unreachable",
        ) from exc
    url = getattr(ctx, "dashboard_url", None)
    return target == "local", (f"http://{url}" if url and "://" not in url else url) or None


# Bytes a local Ray instance's folder needs free to start and keep its workers' logs (it
# fails to start, after 90 s, with a few MiB; a session of a night's run writes tens).
MIN_RAY_TEMP_BYTES = 64 << 20


def _local_temp() -> Path:
    """The folder a local Ray instance keeps its session in, as Ray chooses it: RAY_TMPDIR,
    else (on Linux) TMPDIR, else /tmp; then ``ray`` in it."""
    if "RAY_TMPDIR" in os.environ:
        return Path(os.environ["RAY_TMPDIR"]) / "ray"
    if sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        return Path(os.environ["TMPDIR"]) / "ray"
    return Path("/tmp") / "ray"


def _free_bytes(folder: Path) -> int | None:
    """The free space on ``folder``'s disk (its nearest existing parent's); None unknown."""
    try:
        return shutil.disk_usage(next((p for p in (folder, *folder.parents) if p.exists()), folder)).free
    except OSError:
        return None


def _free(folder: Path) -> str:
    free = _free_bytes(folder)
    return "unknown" if free is None else readable_size(free)


def _check_room(folder: Path) -> None:
    """Refuse at once to start a local Ray instance whose folder's disk has less than
    ``MIN_RAY_TEMP_BYTES`` free: Ray would try for 90 s, then fail with its own traceback."""
    free = _free_bytes(folder)
    if free is not None and free < MIN_RAY_TEMP_BYTES:
        raise InputError(
            f"{folder}: only {readable_size(free)} free, where a local Ray instance keeps its session and its "
            f"workers' logs (it needs {readable_size(MIN_RAY_TEMP_BYTES)} or more): free space on that disk, or give "
            "RAY_TMPDIR a folder on another one (it comes before TMPDIR, which macOS's Ray does not read)",
            kind="storage",
        )


# Seconds to wait for a cluster's port before asking its GCS whether it takes our token.
PROBE_S = 3.0


def _check_token(target: str) -> None:
    """Ask the cluster's GCS once whether it takes this client's token (Ray 2.59+ starts
    clusters in token mode). A refused or missing token is then one clear error at once,
    where ``ray.init`` would retry for 20 s and report the cluster as unreachable. Any
    other failure is left to ``ray.init`` to report."""
    if target == "local" or target.startswith("ray://"):
        return
    try:
        gcs = ray._private.services.canonicalize_bootstrap_address(target)
        host, port = str(gcs).rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=PROBE_S).close()
    except Exception:  # no such address, nothing listening: ray.init says so
        return
    try:
        with held_stderr(lambda line: False):  # Ray's client logs the refusal itself, in its own words
            GcsClient(address=gcs, cluster_id=None)
    except AuthenticationError as exc:
        raise _token_error(target) from exc
    except Exception:
        log.debug("token probe of %s failed", gcs, exc_info=True)


def _token_error(target: str) -> EngineError:
    where = next((name for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH") if os.environ.get(name)), None)
    if where is None and (Path.home() / ".ray" / "auth_token").exists():
        where = "~/.ray/auth_token"
    fix = (
        "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, a file holding it) to the token the cluster's nodes "
        "were started with, and RAY_AUTH_MODE=token"
    )
    if where is None:
        said = "requires a token and none was found"
    elif os.environ.get("RAY_AUTH_MODE", "").lower() != "token":  # Ray sends a token only in token mode
        said = f"requires a token, and this client sends none: RAY_AUTH_MODE is not 'token' here (a token is in {where})"
    else:
        said = f"refused the token from {where}"
    return EngineError(f"the Ray cluster at {target} {said}: {fix}", kind="cluster_auth")
