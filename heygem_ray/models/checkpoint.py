"""What every pack's checkpoint check shares: the keys of a state dict against those a
network expects, said as one phrase per kind of mismatch, for the error that names the file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from heygem_ray.errors import InputError

SHOWN_KEYS = 5  # offending keys named in an error message; the rest are counted
# What weights files are called: named when a folder is given where a file is wanted.
_WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar")


def weights_file(path: str | os.PathLike[str], what: str, fix: str) -> Path:
    """``path``, when it is a file; else ``missing_file`` saying what it is instead (not
    there; a folder, with the weights files in it; a pipe or a device), then ``fix``."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(f.name for f in p.iterdir() if f.suffix.lower() in _WEIGHTS_SUFFIXES and f.is_file())
        held = f"; it holds {name_keys(found)}: name one of them" if found else ", and holds no weights file"
        problem = f"is a folder, not the {what} file{held}"
    elif p.exists():
        problem = f"is not a regular file (a pipe, a device or a socket), not the {what} file"
    else:
        problem = f"{what} not found"
    raise InputError(f"{p}: {problem}. {fix}", kind="missing_file")


def name_keys(keys: list[str]) -> str:
    """The first ``SHOWN_KEYS`` of ``keys``, and how many more there are."""
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = len(keys) - SHOWN_KEYS
    return f"{shown} (and {more} more)" if more > 0 else shown


def check_keys(state: Mapping[str, torch.Tensor], module: torch.nn.Module, what: str, fix: str) -> None:
    """Raise ``bad_checkpoint`` unless ``state`` loads into ``module``: the message is
    ``what`` (the file, and what it is not), a phrase each for the missing keys, the
    unexpected keys and the keys of the wrong shape, then ``fix``."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if tuple(state[k].shape) != want[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {name_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {name_keys(unexpected)}")
    if wrong:
        shapes = [f"{k} is {list(state[k].shape)}, expected {list(want[k])}" for k in wrong]
        problems.append(f"{len(wrong)} key(s) with the wrong shape: {name_keys(shapes)}")
    if problems:
        raise InputError(f"{what}: {'; '.join(problems)}. {fix}", kind="bad_checkpoint")
