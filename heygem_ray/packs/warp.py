"""The ``warp`` pack: deterministic lips, no weights.

* features: per output frame, the speech-band loudness of the 10 mel columns (125 ms)
  centred on the frame's time, after normalising the whole clip's loudness; (N, 10).
* motion and render: the two networks of ``models/warp.py`` (a mouth opening per frame,
  and a warp of the crop's lower face).

The square crop (geometry below) is centred across on the mouth and puts it at y = 0.2
in grid_sample's coordinates (x and y in [-1, 1], y pointing down).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from heygem_ray.features import MAX_ABS, MEL_FPS, SILENCE_RMS, Pcm, mel_column_count, mel_columns
from heygem_ray.geometry import CropGeometry, feathered_ellipse
from heygem_ray.models.sizes import WARP_CROP as CROP_SIZE
from heygem_ray.models.sizes import WARP_MOUTH_Y as MOUTH_Y
from heygem_ray.models.sizes import WARP_WINDOW as WINDOW
from heygem_ray.packs.spec import ChunkFeatures, PackSpec, frame_stages

SPEECH_BANDS = slice(8, 64)  # mel bands of most speech energy (~150 Hz – 3.5 kHz)

# Loudness normalisation: the 95th percentile of 20 ms RMS is brought to TARGET_RMS.
# Below SILENCE_RMS the clip is treated as silence and left as it is.
TARGET_RMS = 0.1
MAX_GAIN = 100.0


GEOMETRY = CropGeometry(size=CROP_SIZE, mode="mouth", scale=1.5, mouth_y=MOUTH_Y)


def loudness_gain(pcm: Pcm) -> float:
    """The gain that brings the clip's speech to a fixed level (1.0 for silence), from
    one pass over the waveform a block at a time."""
    levels = pcm.levels()
    if len(levels) == 0:
        return 1.0
    level = float(np.percentile(levels, 95))
    if level < SILENCE_RMS:
        return 1.0
    return min(MAX_GAIN, TARGET_RMS / level)


def warp_features(pcm: Pcm, fps: Fraction, frames: int) -> ChunkFeatures:
    """16 kHz mono waveform → per chunk of frames, (n, WINDOW) float32 band levels
    centred on each frame, the clip's loudness normalised first."""
    scaled = pcm.scaled(loudness_gain(pcm))
    n_cols = mel_column_count(pcm.samples)

    def chunk(span: range) -> np.ndarray:
        # Frame i is on screen from i/fps to (i+1)/fps; its window is centred on the middle.
        idx = np.arange(span.start, span.stop)
        centre = np.floor((idx + 0.5) * MEL_FPS / float(fps)).astype(int)
        cols = (centre - WINDOW // 2)[:, None] + np.arange(WINDOW)[None, :]  # (n, WINDOW) mel columns
        inside = (cols >= 0) & (cols < n_cols)  # columns past either end read as silence
        if not inside.any():
            return np.full(cols.shape, -MAX_ABS, np.float32)
        first, stop = int(cols[inside].min()), int(cols[inside].max()) + 1
        level = mel_columns(scaled, first, stop)[SPEECH_BANDS].mean(axis=0)  # (stop - first,)
        out = np.full(cols.shape, -MAX_ABS, np.float32)
        out[inside] = level[cols[inside] - first]
        return out

    return chunk


PACK = PackSpec(
    name="warp",
    geometry=GEOMETRY,
    features=warp_features,
    stages=frame_stages(CROP_SIZE, (WINDOW,), (1,)),
    paste_mask=feathered_ellipse(CROP_SIZE, centre=(0.0, MOUTH_Y + 0.12), radii=(0.5, 0.38), feather=0.25),
    paste_mode="residual",
    networks="heygem_ray.packs.warp_networks",
    # ONNX Runtime's CPU GridSample runs the render stage 3.4× slower than torch's.
    cpu_backends=("pytorch", "onnxruntime"),
    keeps_reference_mouth=True,
)
