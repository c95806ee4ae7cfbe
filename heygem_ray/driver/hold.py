"""One run per output folder: the run lock, held from before anything is written there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from heygem_ray import locks, storage
from heygem_ray.errors import HeygemError, InputError
from heygem_ray.storage import Location

# The run's lock, in its output folder (see locks.py): who runs into the folder, since when.
RUN_LOCK = ".heygem-run.lock"


_ADVICE = "wait for it to end, stop it, or give another output folder"


@contextlib.contextmanager
def hold_output(output_dir: Location, what: str, *, lock_name: str = RUN_LOCK,
                advice: str = _ADVICE) -> Iterator[locks.Lease]:
    """Hold ``output_dir``'s run lock (``lock_name`` in it) for ``what`` (words naming the
    run) while the block runs; an ``InputError`` of kind ``output_locked`` naming the holder
    and giving ``advice`` if another live run holds it. A local folder made only to hold
    the lock is removed again if the run left it empty (a run refused by Ray, say, leaves
    nothing behind)."""
    made = _first_missing(output_dir) if isinstance(output_dir, Path) else None
    lock = output_dir / lock_name
    got = locks.acquire(lock, what)
    if isinstance(got, locks.Held):
        raise InputError(
            f"{output_dir} is in use by another run: {got.describe()}; {advice} "
            f"(if that run is gone, its lock {lock} is taken over by the next run "
            f"{locks.STALE_AFTER_S:.0f} s after its last heartbeat, or at once on the machine it ran on)",
            kind="output_locked",
        )
    try:
        with got:
            if lock_name == RUN_LOCK and (around := _run_around(output_dir)) is not None:
                folder, held = around
                raise InputError(
                    f"{output_dir} is inside {folder}, which another run writes into: {held.describe()}; its rows "
                    f"may write here too: {advice}",
                    kind="output_locked",
                )
            yield got
    finally:
        if made is not None and isinstance(output_dir, Path):
            _remove_empty(output_dir, made)


def _run_around(output_dir: Location) -> tuple[Location, locks.Held] | None:
    """A folder above ``output_dir`` that a live run holds (its rows may write anywhere
    below it), and its holder; None where there is none. Asked once this run holds its own
    folder: of two runs, one into a folder inside the other's, that start together, at
    least one finds the other (both may, and both stop)."""
    folder = storage.resolved(output_dir)
    while (up := folder.parent) != folder:
        folder = up
        if (held := live_run(folder)) is not None:
            return folder, held
    return None


def runs_inside(output_dir: Location, outputs: Iterable[Location]) -> str | None:
    """Where ``outputs`` (inside ``output_dir``) lie in a folder below it that a live run
    holds: which folder, and its holder, in words for the run's refusal; None where none
    does. (That run's outputs and this one's would land in one folder, each writing over
    the other's; each cleaning up the other's unfinished files.)"""
    root = storage.resolved(output_dir)
    folders: list[Location] = []  # the folders below the root that rows write into, and those between
    seen: set[Location] = set()
    for output in outputs:
        folder = output.parent
        while folder != root and storage.is_inside(folder, root) and folder not in seen:
            seen.add(folder)
            folders.append(folder)
            folder = folder.parent
    if folders and not isinstance(root, Path):
        # In a bucket, the prefix's run locks from one listing (a request per 1000 keys), not
        # a request per folder (one for each row, for a manifest of a folder a row).
        locked = {loc.parent for loc in storage.list_files(root, recursive=True) if loc.name == RUN_LOCK}
        folders = [f for f in folders if f in locked]
    for folder in folders:
        if (held := live_run(folder)) is not None:
            return f"{folder} is in use by another run: {held.describe()}; rows of this manifest write there"
    return None


def live_run(folder: Location) -> locks.Held | None:
    """The live run holding ``folder``, if one does (a lock that cannot be read counts as
    none: a folder of someone else's, say)."""
    try:
        found = locks.look(folder / RUN_LOCK)
    except (OSError, HeygemError):
        return None
    return found[0] if found is not None and found[1] else None


def still_held(lease: locks.Lease) -> None:
    """Stop the run if its output folder was taken over (its heartbeat had stopped)."""
    if lease.lost is not None:
        raise InputError(f"{lease.lost}; this run stops here and leaves the folder to it", kind="output_locked")


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet; None if it exists."""
    missing = None
    while not folder.exists():
        missing = folder
        if folder.parent == folder:
            break
        folder = folder.parent
    return missing


def _remove_empty(folder: Path, up_to: Path) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` while they are empty."""
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote there), or gone
            return
        if folder == up_to:
            return
        folder = folder.parent
