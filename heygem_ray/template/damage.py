"""A template found damaged: the error that says what is not whole (``DamagedTemplate``),
and the mark a reader leaves in its folder (``DAMAGED_FILE``) so that the next analysis of
its reference sets it aside and builds it again."""

from __future__ import annotations

import os
from pathlib import Path

from heygem_ray.errors import InputError

# The file a template found damaged while it was read holds (why): the next analysis of
# its reference sets the folder aside and builds it again.
DAMAGED_FILE = "damaged.txt"


class DamagedTemplate(Exception):
    """A cached template that is not whole: which file, and what is wrong with it."""


def damaged_while_read(store: Path, opened: os.stat_result, why: str) -> InputError:
    """The error for a template found damaged while its frame store ``store`` was read (the
    file ``opened``, as it was opened); the template is marked for the next analysis of its
    reference to build again (where the cache can be written). Only the folder this job
    read is marked: one another job has set aside and built again meanwhile, or removed,
    is left as it is (marking it would throw a whole one away), and the mark never makes a
    folder that is gone."""
    root = store.parent
    try:
        folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # set aside or removed meanwhile: the next analysis builds it
        return _damaged(root, why, _AGAIN)
    except OSError:  # a folder this user may not read
        return _damaged(root, why, _DELETE)
    try:
        now = os.stat(store.name, dir_fd=folder)
        if not os.path.samestat(now, opened):
            return _damaged(root, why, "another job found it so and analysed the reference again meanwhile: run "
                                       "the same manifest again")  # fmt: skip
        mark = os.open(DAMAGED_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=folder)
        try:
            os.write(mark, why.encode())
        finally:
            os.close(mark)
    except FileNotFoundError:  # set aside or removed meanwhile, and another built in its place
        return _damaged(root, why, _AGAIN)
    except OSError:  # a cache this user cannot write (read-only, another's, full)
        return _damaged(root, why, _DELETE)
    finally:
        os.close(folder)
    return _damaged(root, why, _AGAIN)


# What the row's message says to do: where the template is marked (or gone), and where not.
_AGAIN = "it is analysed again the next time a job uses this reference: run the same manifest again"
_DELETE = "delete that folder and run again to rebuild it"


def _damaged(root: Path, why: str, fix: str) -> InputError:
    return InputError(f"template {root} is damaged ({why}); {fix}", kind="bad_template")
