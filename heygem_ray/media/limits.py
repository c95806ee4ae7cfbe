"""Limits on inputs: a file over one of ``config.InputLimits`` is ``too_large``.

The message names the file, what it declares or holds, the limit and the option that
raises it. The probes check each limit before the work it bounds.
"""

from __future__ import annotations

import math
from pathlib import Path

from heygem_ray.errors import InputError


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} million pixels"


def too_large(what: str, path: Path, found: str, limit: str, option: str, fix: str) -> InputError:
    return InputError(
        f"{what} {path} {found}, above the limit of {limit} ({option}); {fix}, or raise the limit",
        kind="too_large",
    )


def check_reference_size(path: Path, width: int, height: int, *, max_pixels: int | None) -> None:
    """Raise ``too_large`` when a reference's frames (``width`` × ``height`` as stored)
    hold more than ``max_pixels`` pixels."""
    if max_pixels is not None and width * height > max_pixels:
        raise too_large(
            "reference", path, f"is {width}×{height} pixels ({megapixels(width * height)})",
            megapixels(max_pixels), f"--max-reference-pixels {max_pixels}",
            f"scale it down first (e.g. ffmpeg -i {path.name} -vf scale=3840:-2 smaller{path.suffix})",
        )  # fmt: skip


def too_many_frames(path: Path, found: str, max_frames: int) -> InputError:
    return too_large(
        "reference", path, found, f"{max_frames:,} frames", f"--max-reference-frames {max_frames}",
        "use only its first minutes (--reference-seconds 300 analyses and renders from its first five)",
    )  # fmt: skip


def check_reference_frames(path: Path, frames: int, *, max_frames: int | None) -> None:
    """Raise ``too_large`` when a reference has more than ``max_frames`` frames."""
    if max_frames is not None and frames > max_frames:
        raise too_many_frames(path, f"has {frames:,} frames", max_frames)


def too_long(path: Path, found: str, max_seconds: float) -> InputError:
    return too_large(
        "audio", path, found, clock(max_seconds), f"--max-audio-seconds {max_seconds:g}",
        "split it into shorter files",
    )  # fmt: skip


def decoder_pixels(max_pixels: int) -> int:
    """What FFmpeg's decoders are told to refuse over (their ``max_pixels``) for a limit of
    ``max_pixels``: they count the picture they allocate, its rows padded to whole blocks
    (a 600×400 picture counts as 640×400), so a take exactly at the limit, which the probe
    lets through by its header, would fail to decode. Room for 128 columns more, on a
    picture as tall as 16 times its width at the limit: the decoders still stop a stream
    that grows past its header (what they are told the limit for)."""
    return max_pixels + 512 * math.isqrt(max_pixels)


def decoder_limit(max_pixels: int | None) -> dict[str, int]:
    """ffmpeg input options that make its decoder refuse pictures over ``max_pixels``
    (``decoder_pixels``)."""
    return {} if max_pixels is None else {"max_pixels": decoder_pixels(max_pixels)}
