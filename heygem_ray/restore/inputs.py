"""What crosses between a job and the model worker for face restoration (``RestoreInputs``:
the reference's aligned tiles, the crop boxes, the frame → tile transforms; ``Jpegs``: the
tiles sent and the restored faces returned), and what both sides do with it; no network,
no PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from heygem_ray.errors import InternalError
from heygem_ray.face.align import TILE

# The tiles the job keeps and sends, and the restored faces the worker returns: JPEG, as
# the template keeps the reference's frames.
TILE_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
# The report's side by side of one frame's face, unrestored then restored: its height.
SAMPLE_HEIGHT = 160  # pixels
_SAMPLE_QUALITY = 85  # JPEG quality, 0-100


@dataclass(frozen=True)
class Jpegs:
    """k images as JPEG files end to end: how tiles and restored faces cross the object store."""

    data: np.ndarray  # (n,) uint8: the files, end to end
    ends: np.ndarray  # (k,) int64: where each file ends in ``data``

    @classmethod
    def of(cls, files: list[bytes]) -> Jpegs:
        return cls(np.frombuffer(b"".join(files), np.uint8), np.cumsum([len(f) for f in files], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ends)

    def image(self, i: int, shape: tuple[int, int], what: str) -> np.ndarray:
        """Image ``i``, (H, W, 3) uint8 BGR with (H, W) = ``shape``; ``what`` names it in the error."""
        start = int(self.ends[i - 1]) if i else 0
        if start == int(self.ends[i]):
            raise InternalError(f"{what} {i} was asked for, and none was sent (the face is not in that frame)")
        image = cv2.imdecode(self.data[start : int(self.ends[i])], cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != shape:
            raise InternalError(f"{what} {i} did not decode to {shape[1]}×{shape[0]}")
        return image

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.ends.nbytes)


@dataclass(frozen=True)
class RestoreInputs:
    """What a chunk sends a worker to restore its k frames (beside the pack's inputs)."""

    tiles: Jpegs  # each frame's aligned reference tile (none, empty, where the face is not there)
    boxes: np.ndarray  # (k, 4) int32: each frame's crop box, (x0, y0, x1, y1) frame pixels
    matrices: np.ndarray  # (k, 2, 3) float64: each frame's frame → tile similarity
    size: int  # R: the restored face comes back R × R over each box
    # (k,) bool: the frames where the face is. The others are not restored (compose leaves
    # them as they are): a presenter away for half the take costs half the network calls.
    present: np.ndarray

    def __len__(self) -> int:
        return len(self.tiles)

    def tile(self, i: int) -> np.ndarray:
        """Frame ``i``'s reference tile, (512, 512, 3) uint8 BGR."""
        return self.tiles.image(i, (TILE, TILE), "the aligned tile of a chunk's frame")

    @property
    def nbytes(self) -> int:
        """Bytes the object store carries for these inputs."""
        return self.tiles.nbytes + int(self.boxes.nbytes + self.matrices.nbytes)


def encode_jpeg(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 BGR tile or restored face → JPEG bytes, as they travel."""
    ok, jpeg = cv2.imencode(".jpg", image, TILE_JPEG)
    if not ok:
        raise InternalError("OpenCV failed to encode an aligned tile or restored face as JPEG")
    return jpeg.tobytes()


def restore_size(boxes: np.ndarray, matrices: np.ndarray) -> int:
    """R for frames with these (k, 4) boxes and (k, 2, 3) frame → tile matrices: the
    largest, over the frames, of the box's longer side in frame pixels or in tile pixels,
    whichever is fewer (a finer grid would show detail the frame cannot, or resample
    detail the tile does not have)."""
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).astype(np.float64)
    tile_per_frame = np.sqrt(np.abs(np.linalg.det(matrices[:, :, :2])))  # tile pixels per frame pixel
    return max(1, int(np.ceil(np.max(sides * np.minimum(1.0, tile_per_frame)))))


def side_by_side(unrestored: np.ndarray, restored: np.ndarray, box: np.ndarray) -> bytes | None:
    """One frame's face, before and after restoration: the crop ``box`` of both (H, W, 3)
    uint8 frames, side by side, ``SAMPLE_HEIGHT`` pixels tall, as a JPEG (the report's).
    None when the box is outside the frame."""
    h, w = unrestored.shape[:2]
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(box[2]), w), min(int(box[3]), h)
    if x0 >= x1 or y0 >= y1:
        return None
    width = max(1, round((x1 - x0) * SAMPLE_HEIGHT / max(y1 - y0, 1)))
    halves = [cv2.resize(f[y0:y1, x0:x1], (width, SAMPLE_HEIGHT), interpolation=cv2.INTER_AREA)
              for f in (unrestored, restored)]
    ok, jpeg = cv2.imencode(".jpg", np.hstack(halves), [cv2.IMWRITE_JPEG_QUALITY, _SAMPLE_QUALITY])
    if not ok:
        raise InternalError("OpenCV failed to encode the restoration sample as JPEG")
    return jpeg.tobytes()
