"""The ``musetalk`` pack: MuseTalk 1.5 from its public ``models/`` folder (``--checkpoint DIR``).

Three stages, each a network of its own:

* reference: the VAE encoder. A reference frame's 256 × 256 crop → (8, 32, 32): the
  latent of the crop with its lower half blanked, then of the whole crop (the posterior's
  mode, scaled). It depends on the reference alone, so it runs once per template frame
  on a model worker and is cached with the template (``job/reference.py``).
* motion: the Whisper-tiny encoder. The log-mel of a 30 s segment of speech (80, 3000) →
  its 5 hidden states stacked, (1500, 5, 384). A chunk sends the one or two segments its
  frames' windows reach; on the worker each frame then takes its window of 10 states,
  (50, 384) (``features.musetalk_gather``).
* render: the UNet, once at t = 0, on [masked latent ‖ reference latent] with the
  frame's speech tokens plus their position code, then the VAE decoder → the 256 × 256
  face, BGR in [0, 1].

The crop (``halves``) spans the face's width, from as far above the nose as the chin is
below it down to 10 px under the chin, resized with Lanczos: MuseTalk's crop, placed from
the face track rather than from landmarks. The generated lower face replaces the frame
under a feathered mask that follows the jaw and ends at the nose line; MuseTalk draws its
mask with a face-parsing network, which this pack does without.

Weights: MuseTalk's own download (``models/musetalkV15``, ``sd-vae``, ``whisper``); see
README for where and under which licences.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from heygem_ray.features import (
    SAMPLE_RATE,
    WHISPER_FPS,
    WHISPER_SEGMENT,
    WHISPER_WINDOW,
    Pcm,
    musetalk_gather,
    musetalk_window_starts,
    whisper_log_mel,
)
from heygem_ray.geometry import CropGeometry, feathered_ellipse
from heygem_ray.models.sizes import MUSETALK_CROP as CROP
from heygem_ray.models.sizes import MUSETALK_FILES
from heygem_ray.models.sizes import MUSETALK_POSITIONS as POSITIONS
from heygem_ray.packs.spec import ChunkFeatures, Features, PackSpec, StageCall, TensorSpec

LATENT = (8, CROP // 8, CROP // 8)  # [masked ‖ whole] latents of a reference crop
STATES = (1500, 5, 384)  # Whisper-tiny's hidden states of a 30 s segment, stacked
MEL = (80, 3000)  # Whisper's log-mel input of a 30 s segment
TOKENS = (POSITIONS, STATES[2])  # one frame's speech tokens
SEGMENT_STATES = STATES[0]
GEOMETRY = CropGeometry(size=CROP, mode="halves", pad=(0, 10, 0, 0), resample="lanczos")
# Whisper's feature extractor settings the pack computes log-mels with (its defaults,
# which are whisper-tiny's); a checkpoint whose preprocessor config differs is refused.
EXTRACTOR_SETTINGS = ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft")


def whisper_extractor() -> Any:  # transformers' WhisperFeatureExtractor, imported when a job needs it
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor()


def musetalk_features(pcm: Pcm, fps: Fraction, frames: int) -> ChunkFeatures:
    """16 kHz mono waveform → per chunk of frames: ``mel`` (n, 80, 3000) float32, the log-mel
    of the n 30 s segments the chunk's windows reach; ``starts`` (k,) int64, each frame's
    first state counted from the first of those segments; ``stop`` (1,) int64, where the
    audio's states end in that count (zeros from there)."""
    extractor = whisper_extractor()
    length = pcm.samples * WHISPER_FPS // SAMPLE_RATE  # encoder states the audio has
    last: dict[int, np.ndarray] = {}  # chunks come in order: the last segment is often the next one's

    def segment(i: int) -> np.ndarray:
        if i not in last:
            last.clear()
            last[i] = whisper_log_mel(pcm.read(i * WHISPER_SEGMENT, (i + 1) * WHISPER_SEGMENT), extractor)[0]
        return last[i]

    def chunk(span: range) -> dict[str, np.ndarray]:
        starts = musetalk_window_starts(np.arange(span.start, span.stop), fps)
        first = max(0, int(starts[0])) // SEGMENT_STATES
        final = max(first, (min(int(starts[-1]) + WHISPER_WINDOW, length) - 1) // SEGMENT_STATES)
        mel = np.stack([segment(i) for i in range(first, final + 1)])
        offset = first * SEGMENT_STATES
        return {"mel": mel, "starts": starts - offset, "stop": np.array([length - offset], np.int64)}

    return chunk


def musetalk_chunk(call: StageCall, features: Features, latents: np.ndarray) -> np.ndarray:
    """A chunk on a worker: its speech segments through the encoder, each frame's window
    of states, then the UNet and decoder on the cached reference latents (k, 8, 32, 32)
    → (k, 3, 256, 256) float32 BGR in [0, 1]."""
    if not isinstance(features, dict):
        raise TypeError(f"musetalk chunks carry named arrays, not {type(features).__name__}")
    states = call("motion", {"features": features["mel"]})["codes"]  # (n, 1500, 5, 384)
    tokens = musetalk_gather(states.reshape(-1, *STATES[1:]), features["starts"], int(features["stop"][0]))
    return call("render", {"latents": np.ascontiguousarray(latents, np.float32), "tokens": tokens})["generated"]


def jaw_mask(size: int = CROP) -> np.ndarray:
    """(size, size) float32: 1 over the lower face, inside an ellipse through the crop's
    sides at the nose line and the chin at the bottom, fading over the nose line and the
    jaw; 0 on the crop's border and above the nose."""
    jaw = feathered_ellipse(size, centre=(0.0, 0.0), radii=(0.85, 0.85), feather=0.15)
    y = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    t = np.clip(y / 0.16, 0.0, 1.0)  # 0 at the nose line (y = 0), 1 from 8 % of the crop below it
    return (jaw * (t * t * (3 - 2 * t))[:, None]).astype(np.float32)


PACK = PackSpec(
    name="musetalk",
    geometry=GEOMETRY,
    features=musetalk_features,
    stages={
        "reference": ((TensorSpec("crops", (3, CROP, CROP)),), (TensorSpec("latents", LATENT),)),
        "motion": ((TensorSpec("features", MEL),), (TensorSpec("codes", STATES),)),
        "render": ((TensorSpec("latents", LATENT), TensorSpec("tokens", TOKENS)),
                   (TensorSpec("generated", (3, CROP, CROP)),)),
    },  # fmt: skip
    paste_mask=jaw_mask(),
    # The model redraws the whole lower face, as Wav2Lip does.
    paste_mode="replace",
    networks="heygem_ray.packs.musetalk_networks",
    # Its full-size UNet is 3.4 GB in fp32: more than one ONNX file holds (2 GB).
    cpu_backends=("pytorch",),
    chunk=musetalk_chunk,
    reference="reference",
    # The UNet and the VAE decoder are nearly all of a frame's time; Whisper runs once per
    # 30 s of speech and the encoder once per reference frame, and both stay fp32.
    int8_stages=("render",),
    # Convolutions, and the projections of attention and feed-forward layers (MatMul with a
    # weight): the linear layers hold a third of the UNet's weights.
    int8_ops=("Conv", "MatMul"),
    weight_files=tuple(MUSETALK_FILES.values()),
)
