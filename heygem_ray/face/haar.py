"""OpenCV's Haar cascade for frontal faces, as a ``Detector``."""

from __future__ import annotations

import cv2
import numpy as np

# The "alt2" frontal cascade: a 20-pixel window, and in lecture captures (slides full of
# text) far fewer false faces than the default cascade at the same scale.
_CASCADE = "haarcascade_frontalface_alt2.xml"


class HaarDetector:
    def __init__(self, min_neighbors: int = 3, scale_factor: float = 1.1):
        self.min_neighbors = min_neighbors
        self.scale_factor = scale_factor
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + _CASCADE)  # type: ignore[attr-defined]
        if self._cascade.empty():  # the wheel always ships it; a broken install does not
            raise RuntimeError(f"OpenCV could not load {_CASCADE}: reinstall opencv-python-headless<5")
        self.window = int(self._cascade.getOriginalWindowSize()[0])

    def detect(self, grey: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
        found = self._cascade.detectMultiScale(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size),
            maxSize=(max_size, max_size),
        )
        if len(found) == 0:
            return np.zeros((0, 4), np.float32)
        xywh = np.asarray(found, np.float32)
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
