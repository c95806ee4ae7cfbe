"""Face detection and the single face track of a reference video.

Pure functions over arrays; no files, no Ray. Boxes are float ``(x0, y0, x1, y1)`` in
pixels of the decoded frame unless said otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from heygem_ray.config import DetectorConfig

_CASCADE = "haarcascade_frontalface_default.xml"
# A detection belongs to the track when it overlaps the previous box at least this much.
_LINK_IOU = 0.3
# The main face is chosen from at most this many evenly spaced frames.
_ANCHOR_SAMPLE = 300


class FaceDetector:
    """OpenCV's Haar cascade on a downscaled, equalised grey frame."""

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + _CASCADE)  # type: ignore[attr-defined]
        if self._cascade.empty():  # the wheel always ships it; a broken install does not
            raise RuntimeError(f"OpenCV could not load {_CASCADE}: reinstall opencv-python-headless<5")

    def detect(self, frame_bgr: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR → (k, 4) float32 boxes (x0, y0, x1, y1), k ≥ 0."""
        h, w = frame_bgr.shape[:2]
        scale = min(1.0, self.cfg.max_side / max(h, w))
        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        side = max(12, int(min(grey.shape) * self.cfg.min_face_fraction))
        found = self._cascade.detectMultiScale(
            grey, scaleFactor=self.cfg.scale_factor, minNeighbors=self.cfg.min_neighbors, minSize=(side, side)
        )
        if len(found) == 0:
            return np.zeros((0, 4), np.float32)
        xywh = np.asarray(found, np.float32) / scale
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes a (n, 4) and b (m, 4) → (n, m)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


@dataclass(frozen=True)
class Track:
    boxes: np.ndarray  # (n, 4) float32 per frame, misses filled, not yet smoothed
    detected: np.ndarray  # (n,) bool: the detector found the face in this frame


def track_main_face(detections: list[np.ndarray]) -> Track | None:
    """One box per frame for the main face, or None when no frame has a face.

    The main face is the detection with the largest area × persistence (the number of
    sampled frames holding a detection overlapping it). From its frame the track follows,
    forwards and backwards, the detection that overlaps the previous box best; frames
    where none overlaps are misses, filled by linear interpolation between neighbours.
    """
    n = len(detections)
    anchor = _anchor(detections)
    if anchor is None:
        return None
    a_frame, a_box = anchor
    boxes = np.zeros((n, 4), np.float32)
    detected = np.zeros(n, bool)
    for order in (range(a_frame, n), range(a_frame - 1, -1, -1)):
        last = a_box
        for f in order:
            cands = detections[f]
            if len(cands):
                overlap = iou(last[None], cands)[0]
                best = int(np.argmax(overlap))
                if overlap[best] >= _LINK_IOU:
                    last = cands[best]
                    boxes[f], detected[f] = last, True
    hits = np.flatnonzero(detected)
    frames = np.arange(n)
    for c in range(4):
        boxes[:, c] = np.interp(frames, hits, boxes[hits, c])
    return Track(boxes=boxes, detected=detected)


def _anchor(detections: list[np.ndarray]) -> tuple[int, np.ndarray] | None:
    n = len(detections)
    sampled = np.unique(np.linspace(0, n - 1, min(n, _ANCHOR_SAMPLE)).astype(int))
    # Faces may sit only between the sampled frames: then look at every frame.
    for sample in (sampled, np.arange(n)):
        owners = [f for f in sample for _ in range(len(detections[f]))]
        if owners:
            break
    else:
        return None
    cands = np.concatenate([detections[f] for f in sample if len(detections[f])])
    overlap = iou(cands, cands) >= _LINK_IOU
    owner = np.asarray(owners)
    # Persistence: how many distinct sampled frames hold an overlapping detection.
    support = np.array([len(np.unique(owner[row])) for row in overlap])
    area = (cands[:, 2] - cands[:, 0]) * (cands[:, 3] - cands[:, 1])
    best = int(np.argmax(area * support))
    return int(owner[best]), cands[best]


def smooth(boxes: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of each coordinate over ``window`` frames (edges held)."""
    if window <= 1 or len(boxes) == 1:
        return boxes.astype(np.float32)
    half = window // 2
    padded = np.pad(boxes, ((half, window - 1 - half), (0, 0)), mode="edge")
    kernel = np.ones(window, np.float32) / window
    return np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(4)], axis=1).astype(np.float32)
