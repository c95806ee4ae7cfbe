"""The interface a face detector meets."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Detector(Protocol):
    """Finds frontal faces in a greyscale image."""

    @property
    def window(self) -> int:
        """The smallest face, in pixels, it finds at scale 1: search code scales images so
        the faces it wants are at least this big."""
        ...

    def detect(self, grey: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
        """(H, W) uint8 → (k, 4) float32 boxes (x0, y0, x1, y1) of faces whose side is in
        [min_size, max_size] pixels (max_size 0: no upper bound), k ≥ 0."""
        ...
