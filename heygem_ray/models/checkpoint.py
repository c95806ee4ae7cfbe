"""What every pack's checkpoint check shares: the keys of a state dict against those a
network expects, said as one phrase per kind of mismatch, for the error that names the file."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heygem_ray import sniff
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
    elif p.is_symlink():
        problem = f"is a link to {os.readlink(p)}, which is not there ({what} not found)"
    else:
        problem = f"{what} not found"
    raise InputError(f"{p}: {problem}. {fix}", kind="missing_file")


def name_keys(keys: list[str]) -> str:
    """The first ``SHOWN_KEYS`` of ``keys``, and how many more there are."""
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = len(keys) - SHOWN_KEYS
    return f"{shown} (and {more} more)" if more > 0 else shown


def unwrapped(state: Mapping[Any, Any]) -> dict[Any, Any]:
    """``state`` with the ``module.`` that ``nn.DataParallel`` adds to every key taken off."""
    return {(k.removeprefix("module.") if isinstance(k, str) else k): v for k, v in state.items()}


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


def read_weights(path: Path, fix: str, *, mmap: bool = False, map_location: str | torch.device = "cpu") -> object:
    """``torch.load`` of ``path`` onto ``map_location`` with ``weights_only=True``: no code from the file
    runs, ever (a file the safe unpickler refuses is reported, never loaded otherwise).
    Numpy scalars (a re-saved copy's ``global_step``) are let through on a second try.
    ``mmap``: mapped, not read, where the file is in the zip format. Raises
    ``bad_checkpoint`` saying what the file is where it is no torch checkpoint (a web
    page, an LFS pointer, damaged or cut short), then ``fix``."""
    start = sniff.head(path)
    if (instead := sniff.stand_in(start, "the weights")) is not None:
        raise InputError(f"{path} is {instead}. {fix}", kind="bad_checkpoint")
    if (found := sniff.media(start)) is not None:
        raise InputError(f"{path} is {found}, not the weights. {fix}", kind="bad_checkpoint")
    try:
        try:
            return _load(path, mmap, map_location)
        except pickle.UnpicklingError:
            # The function numpy scalars pickle through (numpy.[_]core.multiarray.scalar), and dtypes.
            numpy_scalars: list[Any] = [np.int64(0).__reduce__()[0], np.dtype,
                                        *(type(np.dtype(t)) for t in ("float32", "float64", "int64"))]  # fmt: skip
            with torch.serialization.safe_globals(numpy_scalars):
                return _load(path, mmap, map_location)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        refused = _REFUSED.search(text)
        if refused:
            raise InputError(f"{path} holds Python objects or code that are not loaded, for safety ({refused[1]}): "
                             f"it is not a plain weights file. {fix}", kind="bad_checkpoint") from exc  # fmt: skip
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", text, re.S)
        raise unreadable(path, (reason[1] if reason else text).splitlines()[0], fix) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged file raises many types (RuntimeError,
        # EOFError, ValueError from the zip reader, ...); all mean the same to the user.
        raise unreadable(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", fix) from exc


# The refused global in torch's words, old ("Unsupported global: GLOBAL posix.system") and
# new ("Trying to load unsupported GLOBAL posix.system whose module posix is blocked").
_REFUSED = re.compile(r"unsupported (?:global: )?global (\S+)", re.I)


def _load(path: Path, mmap: bool, map_location: str | torch.device) -> object:
    if mmap:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # an older file, not in the zip format: read into memory
                raise
    return torch.load(path, map_location=map_location, weights_only=True)


def unreadable(path: Path, reason: str, fix: str) -> InputError:
    """``bad_checkpoint`` for a file torch cannot read as a checkpoint (no torch advice quoted)."""
    reason = reason.split(" Re-running `torch.load`")[0].rstrip()
    return InputError(f"{path}: cannot read as a torch checkpoint ({reason}); is it damaged or incomplete? {fix}",
                      kind="bad_checkpoint")


def check_values(state: Mapping[str, torch.Tensor], what: str, fix: str) -> None:
    """Raise ``bad_checkpoint`` where a floating-point tensor of ``state`` holds NaN or an
    infinity (a diverged training run, a file damaged in transfer), or where every kernel
    (a floating-point tensor of two or more dimensions) holds one value throughout (all
    zeros: a placeholder, a file saved before training, a download whose data never came):
    such weights render a black, grey or still face without a word. ``what``: the file."""
    kernels = constant = zeros = 0
    for name, tensor in state.items():
        if not tensor.is_floating_point() or tensor.is_meta:
            continue
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{what}: its tensor {name} holds NaN or infinite values: these weights cannot render a "
                             f"face. {fix}", kind="bad_checkpoint")  # fmt: skip
        if tensor.dim() >= 2 and tensor.numel():
            kernels += 1
            flat = tensor.reshape(-1)
            if bool((flat == flat[0]).all()):
                constant, zeros = constant + 1, zeros + (float(flat[0]) == 0.0)
    if kernels and constant == kernels:
        each = "is all zeros" if zeros == kernels else "holds one value throughout"
        raise InputError(f"{what}: each of its {kernels} weight tensors {each}: these are no trained weights (a "
                         "placeholder, or a file saved before training), and would render a blank or unchanging "
                         f"face. {fix}", kind="bad_checkpoint")  # fmt: skip
