"""The template's frame store as analysis writes and reads it (``template.store.StoreWriter``,
``read_ahead``): frames compressed and read back on a thread beside the caller's
land in the file and come back exactly as a plain loop would have them."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from heygem_ray.media import yuv
from heygem_ray.template.store import FRAME_CODEC, FRAME_LEVEL, STORE_AHEAD, StoreWriter, read_ahead

WIDTH, HEIGHT = 64, 48


def _frames(n: int) -> list[np.ndarray]:
    """``n`` I420 frames: noise over a gradient, each a new array (as the decoder hands them over)."""
    rng = np.random.default_rng(7)
    shape = yuv.frame_shape(WIDTH, HEIGHT)
    ramp = np.linspace(0, 200, shape[1], dtype=np.float32)
    return [(ramp + rng.normal(0, 6, shape) + 5 * i).clip(0, 255).astype(np.uint8) for i in range(n)]


def test_the_store_holds_each_frame_compressed_in_order_and_recalls_any_kept_so_far(tmp_path):
    frames = _frames(12)
    recalled = {}
    with StoreWriter(tmp_path / "frames.bin", WIDTH, HEIGHT) as store:
        for i, frame in enumerate(frames):
            store.keep(frame)
            if i in (0, 5, 6):  # the frame just kept (maybe still being compressed), and earlier ones
                recalled[i] = store.recall(i), store.recall(max(0, i - 3))
    codec = pa.Codec(FRAME_CODEC, compression_level=FRAME_LEVEL)
    packed = [codec.compress(f).to_pybytes() for f in frames]
    assert (tmp_path / "frames.bin").read_bytes() == b"".join(packed)
    assert store.offsets == np.cumsum([0] + [len(p) for p in packed]).tolist()
    for i, (now, before) in recalled.items():
        assert np.array_equal(now, frames[i]) and np.array_equal(before, frames[max(0, i - 3)])


def test_a_failure_while_the_store_is_written_leaves_no_thread_behind(tmp_path):
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="the tracker failed"), StoreWriter(tmp_path / "f.bin", WIDTH, HEIGHT) as store:
        for frame in _frames(5):
            store.keep(frame)
        raise RuntimeError("the tracker failed")
    assert threading.active_count() == before


def test_frames_read_ahead_come_in_order_and_an_error_comes_at_its_frame():
    frames = _frames(9)
    assert all(np.array_equal(a, b) for a, b in zip(read_ahead(iter(frames), STORE_AHEAD), frames, strict=True))

    def damaged():
        yield from frames[:4]
        raise ValueError("frame 4 does not decompress")

    got = []
    with pytest.raises(ValueError, match="frame 4"):
        for frame in read_ahead(damaged(), STORE_AHEAD):
            got.append(frame)
    assert len(got) == 4


def test_a_reader_stopped_early_leaves_no_thread_behind():
    before = threading.active_count()
    reader = read_ahead(iter(_frames(20)), STORE_AHEAD)
    next(reader)
    reader.close()
    assert threading.active_count() == before
