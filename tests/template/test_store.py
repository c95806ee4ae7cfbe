"""The template's frame store as analysis writes and reads it (``template.store.StoreWriter``,
``FrameStore``, ``read_ahead``): frames compressed and read back on a thread beside the
caller's land in the file and come back exactly as a plain loop would have them; a frame
that repeats the one before it is stored once."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from heygem_ray.media import yuv
from heygem_ray.template.store import FRAME_CODEC, FRAME_LEVEL, STORE_AHEAD, FrameStore, StoreWriter, read_ahead

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


def test_a_frame_that_repeats_the_one_before_is_stored_once_and_read_back_as_itself(tmp_path):
    """A slow take's frames held (each decoded frame handed over three times, as new arrays)
    and a frame that differs in its last byte only: the file holds each distinct frame once,
    what a store of the distinct frames alone holds, and every frame reads back as it was,
    in order, out of order and while written."""
    distinct = _frames(4)
    distinct.insert(2, distinct[1].copy())
    distinct[2][-1, -1] ^= 1  # the same as frame 1 but for one chroma byte: not a repeat
    frames = [f.copy() for f in distinct for _ in range(3)]
    with StoreWriter(tmp_path / "frames.bin", WIDTH, HEIGHT, frames=len(frames)) as store:
        repeats = [store.keep(frame) for frame in frames]
        assert np.array_equal(store.recall(7), frames[7]) and np.array_equal(store.recall(1), frames[1])
    assert repeats == [False, True, True] * len(distinct)
    assert store.stored == [i // 3 for i in range(len(frames))]
    codec = pa.Codec(FRAME_CODEC, compression_level=FRAME_LEVEL)
    assert (tmp_path / "frames.bin").read_bytes() == b"".join(codec.compress(f).to_pybytes() for f in distinct)
    reader = FrameStore(tmp_path / "frames.bin", store.offsets, WIDTH, HEIGHT, np.asarray(store.stored))
    try:
        for i in [*range(len(frames)), 14, 3, 3, 0, 13]:
            got = reader.read(i)
            assert np.array_equal(got, frames[i]), i
            got[:] = 0  # a read is the caller's to change: the next read of that frame is whole
    finally:
        reader.close()


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
