"""Model packs: ``features → motion → render`` plus the face-crop geometry.

A ``PackSpec`` is light (no weights): CPU stages use it for geometry, audio features and
the paste mask. ``load_stages`` builds its ``torch.nn.Module`` stages on a worker, each
with declared, name-keyed float32 I/O and a leading batch axis (``PackSpec.io``). Most
packs have two, per output frame (``frame_stages``):

* motion: ``features`` (B, *F) → ``codes`` (B, *C)
* render: ``crops`` (B, 3, S, S) BGR in [0, 1], ``codes`` (B, *C) → ``generated``
  (B, 3, S, S) BGR in [0, 1]

A pack whose stages take other inputs (musetalk: speech segments, cached reference
latents) says how a chunk runs through them (``PackSpec.chunk``) and, with a
``reference`` stage, what the job sends for each reference frame. Runners, exporters and
the engine store work per declared stage and never branch on the pack.
"""

from __future__ import annotations

import importlib

from heygem_ray.packs.spec import (
    ChunkFeatures,
    ChunkFn,
    FeatureFn,
    Features,
    PackSpec,
    StageCall,
    StageIO,
    StageSet,
    TensorSpec,
    crop_inputs,
    frame_chunk,
    frame_stages,
)

__all__ = [
    "ChunkFeatures",
    "ChunkFn",
    "FeatureFn",
    "Features",
    "PackSpec",
    "StageCall",
    "StageIO",
    "StageSet",
    "TensorSpec",
    "crop_inputs",
    "frame_chunk",
    "frame_stages",
    "get_pack",
]

# The packs by name: each module defines ``PACK``. Imported when asked for, so a pack's
# model code (diffusers and transformers for musetalk) loads only where it runs.
_MODULES = {"warp": "heygem_ray.packs.warp", "wav2lip": "heygem_ray.packs.wav2lip", "musetalk": "heygem_ray.packs.musetalk"}


def get_pack(name: str) -> PackSpec:
    if name not in _MODULES:
        raise ValueError(f"unknown pack {name!r}")
    pack: PackSpec = importlib.import_module(_MODULES[name]).PACK
    return pack
