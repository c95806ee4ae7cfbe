"""A template found damaged: the error that says what is not whole (``DamagedTemplate``),
and the mark a reader leaves in its folder (``DAMAGED_FILE``) so that the next analysis of
its reference sets it aside and builds it again."""

from __future__ import annotations

from pathlib import Path

from heygem_ray import storage
from heygem_ray.errors import InputError

# The file a template found damaged while it was read holds (why): the next analysis of
# its reference sets the folder aside and builds it again.
DAMAGED_FILE = "damaged.txt"


class DamagedTemplate(Exception):
    """A cached template that is not whole: which file, and what is wrong with it."""


def damaged_while_read(root: Path, why: str) -> InputError:
    """The error for a template found damaged while read; the template is marked for the
    next analysis of its reference to build again (where the cache can be written)."""
    try:
        storage.write_bytes(root / DAMAGED_FILE, why.encode())
        fix = "it is analysed again the next time a job uses this reference: run the same manifest again"
    except OSError:
        fix = "delete that folder and run again to rebuild it"
    return InputError(f"template {root} is damaged ({why}); {fix}", kind="bad_template")
