"""Which reference frame each output frame shows.

The output lasts as long as the audio. A shorter reference is looped: ``pingpong``
(0 1 2 … n−1 n−2 … 1 0 1 …, no jump at the seam), ``forward`` (0 … n−1 0 …), or the
output is cut where the reference ends (``trim``; a still image is never cut). A pack
that keeps the reference's mouth (warp) loops over a talking take's still stretch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from heygem_ray.config import LoopMode


@dataclass(frozen=True)
class Timeline:
    ref_index: np.ndarray  # (frames,) int64 reference frame shown by each output frame
    duration: float  # seconds of output (and of the audio kept)

    @property
    def frames(self) -> int:
        return len(self.ref_index)


def plan(
    audio_seconds: float,
    ref_frames: int,
    fps: Fraction,
    loop: LoopMode,
    is_image: bool,
    span: tuple[int, int] | None = None,
) -> Timeline:
    """The output's frames for ``audio_seconds`` of audio over a reference of ``ref_frames``.

    ``span``: [start, stop) reference frames to loop over instead of the whole reference
    (a talking take's still stretch, for a pack that keeps the reference's mouth); with
    ``trim`` the output is still cut where the whole reference ends."""
    frames = max(1, round(audio_seconds * fps))
    duration = audio_seconds
    if loop == "trim" and not is_image and frames > ref_frames:
        frames = ref_frames
        duration = float(frames / fps)
    if span is not None and loop != "trim":
        start, stop = span
        return Timeline(ref_index=start + loop_indices(frames, stop - start, loop), duration=duration)
    return Timeline(ref_index=loop_indices(frames, ref_frames, loop), duration=duration)


def loop_indices(frames: int, ref_frames: int, loop: LoopMode) -> np.ndarray:
    i = np.arange(frames, dtype=np.int64)
    if ref_frames == 1:
        return np.zeros(frames, np.int64)
    if loop == "pingpong":
        period = 2 * ref_frames - 2
        phase = i % period
        return np.where(phase < ref_frames, phase, period - phase)
    return i % ref_frames
