"""Finding the presenter in a reference: detect, track, and place the mouth.

Pure functions and small classes over arrays: no files, no Ray. Frames are (H, W, 3)
uint8 BGR; boxes are float ``(x0, y0, x1, y1)`` in pixels of the decoded frame.

* ``detector``: the interface every face detector meets; ``haar`` is OpenCV's cascade
  behind it (a new detector is one new file).
* ``search``: coarse to fine. A whole-frame scan, at the scale where the smallest face
  searched for just fits the detector, on a subset of frames (after the first, only
  where the frame changed since); on every frame, a search in a window around each face
  being followed, at the face's own scale.
* ``track``: follows faces from frame to frame, picks the presenter, fills short misses,
  marks long ones as lost, and smooths the boxes.
* ``landmarks``: MediaPipe's 468-point face mesh inside a face box (LiteRT, no download):
  the lips, mouth corners, eyes and nose (``Landmarks.five``: GFPGAN's five points, which
  restoration does not use yet: ``align.alignment_points`` places its own).
* ``looks``: what the face looks like in one frame (where the lips meet, how open, whether
  the mouth is covered, how bright and sharp), for the crop geometry and the reference checks.
* ``mouth``: where the mouth sits inside the face box, steady over time.
* ``align``: a face's five points → GFPGAN's 512-px FFHQ tile and back, and the masked
  blend of a restored tile into the frame.
"""

from heygem_ray.face.track import FaceTrack, find_presenter

__all__ = ["FaceTrack", "find_presenter"]
