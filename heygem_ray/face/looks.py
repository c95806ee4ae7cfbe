"""What a face looks like in one frame: where its mouth is, how open, whether it is seen.

Measured once per frame the face is detected in (the tracker calls ``look``), kept with
the template, and read by the packs' geometry (the mouth's place) and by the reference
checks (``heygem_ray/checks.py``: a talking take, a covered mouth, a dark or blurred one).
One ``look`` is a (``LOOKS``,) float32 vector; NaN where a measure could not be taken:

* ``mouth_u``, ``mouth_v``: where the lips meet, in face-box units (u across from the
  box's left edge, v down from its top; ``face/mouth.py``), from the face mesh's inner lip
  points, both lips (``face/landmarks.py``); NaN on faces under ``mouth.MIN_SIDE`` pixels.
* ``opening``: the gap between the lips' inner edges, in face heights (forehead to chin
  on the mesh): about 0 for a closed mouth, 0.05–0.1 for a mouth open in speech. A mouth
  that shows its teeth in a smile reads as a little open; what the checks read is how
  much it changes over the take.
* ``mouth_detail``: the spread (standard deviation) of brightness inside the outer lip
  contour over the spread across the whole face: lips, teeth and the dark between them
  give 0.6–1.5; a hand, a phone or a microphone in front of the mouth is flat: under 0.3.
* ``luma``: the face's mean brightness, 0–255 (BT.601 luma).
* ``sharpness``: the mean absolute Laplacian of the face's brightness at a fixed
  ``SHARP_SIDE`` pixels across, over the brightness's spread (so a dark face is not taken
  for a blurred one): 0.35–0.5 in focus, under 0.2 out of focus or blurred by motion.
"""

from __future__ import annotations

import cv2
import numpy as np

from heygem_ray.face import landmarks

LOOKS = ("mouth_u", "mouth_v", "opening", "mouth_detail", "luma", "sharpness")
MOUTH_U, MOUTH_V, OPENING, MOUTH_DETAIL, LUMA, SHARPNESS = range(len(LOOKS))
# The side, in pixels, the face is resized to for ``sharpness``: small enough that every
# face searched for (from 20 px) is compared at one scale, large enough to see an eyelid.
SHARP_SIDE = 48
# The mouth is measured on faces at least this wide (pixels); below, its lips are a few pixels.
MIN_SIDE = 36


def empty() -> np.ndarray:
    """A look with nothing measured."""
    return np.full(len(LOOKS), np.nan, np.float32)


def look(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The face in ``box`` (x0, y0, x1, y1 pixels) of a (H, W, 3) uint8 BGR frame → its
    (``LOOKS``,) float32 look."""
    out = empty()
    h, w = frame.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return out
    grey = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
    out[LUMA] = float(grey.mean())
    fixed = cv2.resize(grey, (SHARP_SIDE, SHARP_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    # Divided by the face's contrast, so a dark (or washed-out) face is not taken for a blurred one.
    out[SHARPNESS] = float(np.abs(cv2.Laplacian(fixed, cv2.CV_32F)).mean()) / max(float(fixed.std()), 1.0)
    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
    if min(bw, bh) < MIN_SIDE:
        return out
    mesh = landmarks.face_landmarks(frame, box)
    if mesh is None:
        return out
    mx, my = mesh.mouth()
    out[MOUTH_U], out[MOUTH_V] = (mx - box[0]) / bw, (my - box[1]) / bh
    out[OPENING] = mesh.lip_gap() / max(mesh.face_height(), 1.0)
    out[MOUTH_DETAIL] = _mouth_detail(frame, mesh)
    return out


def _mouth_detail(frame: np.ndarray, mesh: landmarks.Landmarks) -> float:
    """Brightness spread inside the outer lip contour ÷ the spread over the face (NaN when
    the lips cover under 6 pixels, or the face is flat)."""
    lips = np.rint(mesh.points[list(landmarks.LIPS_OUTER)]).astype(np.int32)
    face = mesh.points
    h, w = frame.shape[:2]
    x0, y0 = (max(0, int(v)) for v in face.min(axis=0))
    x1, y1 = (int(np.ceil(v)) + 1 for v in face.max(axis=0))
    x1, y1 = min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return float("nan")
    grey = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY).astype(np.float32)
    mask = np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(mask, [lips - np.array([x0, y0], np.int32)], 1)
    inside = grey[mask > 0]
    spread = float(grey.std())
    if inside.size < 6 or spread < 1.0:
        return float("nan")
    return float(inside.std()) / spread
