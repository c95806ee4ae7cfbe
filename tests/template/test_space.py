"""A template holds its disk space ahead (``template.store.StoreWriter._reserve``): a reference
whose analysis will not fit on the cache's disk fails its row at once, saying how much it
needs and what to do, instead of filling the disk under the node's other jobs; two
analyses at once cannot both count on the same free space. The disks are real tmpfs
mounts (the ``mount`` fixture)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np

from heygem_ray.analyze import analyze
from heygem_ray.config import DetectorConfig
from heygem_ray.errors import InputError
from heygem_ray.media import yuv
from heygem_ray.packs import get_pack
from heygem_ray.template.cache import HASHES_DIR, TAG_FILE
from heygem_ray.template.files import Template
from heygem_ray.template.store import RESERVE_FIRST, RESERVE_MARGIN, StoreWriter
from tests.helpers.footage import Footage, lecture_clip, with_camera_noise

GEOMETRY = get_pack("warp").geometry


def _camera_take(folder: Path, seed: int, fps: int = 25) -> Footage:
    """4 s of a 640×360 lecture take with a camera's noise: about 25 MB of template
    (18 MB of stored frames, 7.7 MB of crops) at 25 fps."""
    clip = lecture_clip(folder / f"clean-{seed}.mp4", size=(640, 360), face=96, seconds=4, seed=seed, fps=fps)
    return with_camera_noise(clip, folder / f"take-{seed}.mp4")


def _analyse(video: Path, cache: Path) -> Template | InputError:
    try:
        return analyze(video, GEOMETRY, DetectorConfig(), cache)[0]
    except InputError as exc:
        return exc


def test_a_reference_whose_analysis_does_not_fit_fails_at_its_first_second_saying_how_much_it_needs(mount, tmp_path):
    take = _camera_take(tmp_path, seed=1)
    cache = mount("cache", size="16m")
    failed = _analyse(take.path, cache)
    assert isinstance(failed, InputError) and failed.kind == "storage"
    message = failed.message
    assert message.startswith(f"reference {take.path}: its analysis would take about ")
    assert f"in {cache} (100 frames at " in message and f"as its first {RESERVE_FIRST} were stored" in message
    # What the disk has, and how much of it a template may use, less than it needs (an audit read
    # "would take about 22.6 MiB ... 23.7 MiB for it, keeping 1.2 MiB free" as fitting).
    need, usable = (float(x) for x in re.search(
        r"would take about ([0-9.]+) MiB .* that disk has [0-9.]+ MiB for it, of which ([0-9.]+) MiB may be used: "
        r"[0-9.]+ (?:KiB|MiB) is kept free for the run's other files; ", message).groups())  # fmt: skip
    assert need > usable, message
    assert f"free space there (heygem-ray cache prune --cache-dir {cache} removes templates unused" in message
    assert "give --cache-dir a folder on a larger disk, or use a few minutes of the reference (--reference-seconds " \
           "300 analyses its first five;" in message  # fmt: skip
    # It stopped where it held its space, not where the disk ran out; nothing is left of it.
    assert "no space left" not in message
    # (But for the take's hash, remembered where the take was written over 2 s before, the
    # cache's tag, and its key's lock, which names its last holder: a page each.)
    hashes = list((cache / HASHES_DIR).glob("*"))
    locks = [p for p in cache.iterdir() if p.name.endswith(".lock") and p.stat().st_size]
    assert sorted(p.name for p in cache.iterdir()
                  if not p.name.endswith(".lock") and p.name not in (HASHES_DIR, TAG_FILE)) == []  # fmt: skip
    assert os.statvfs(cache).f_blocks - os.statvfs(cache).f_bfree == len(hashes) + 1 + len(locks)


def test_a_slow_takes_held_frames_count_for_nothing_so_it_fits_where_its_frames_shown_would_not(mount, tmp_path):
    """The same take at 5 fps, read at 25 (each frame held five times): 100 frames shown,
    20 stored. Its space is held ahead at the bytes a frame shown takes (a held one none),
    so it fits on the disk its 100 frames would fill, and reads back whole."""
    take = _camera_take(tmp_path, seed=1, fps=5)
    cache = mount("cache", size="16m")
    template = _analyse(take.path, cache)
    assert isinstance(template, Template), template
    with template:
        assert (template.frames, template.fps, template.own_fps) == (100, 25, 5)
        assert len(np.load(template.root / "offsets.npy")) - 1 == 20
        frames = list(template.read_i420(np.arange(100)))
        assert all(np.array_equal(frames[i], frames[i - i % 5]) for i in range(100))
        assert (template.root / "frames.bin").stat().st_size == int(np.load(template.root / "offsets.npy")[-1])


def test_two_analyses_on_a_disk_that_holds_one_leave_one_whole_template_and_one_clear_failure(mount, tmp_path):
    takes = [_camera_take(tmp_path, seed) for seed in (1, 2)]
    cache = mount("cache", size="40m")
    results: list[Template | InputError] = [None, None]  # type: ignore[list-item]

    def run(i: int) -> None:
        results[i] = _analyse(takes[i].path, cache)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    built = [r for r in results if isinstance(r, Template)]
    failed = [r for r in results if isinstance(r, InputError)]
    assert len(built) == 1 and len(failed) == 1, results
    assert failed[0].kind == "storage" and "its analysis would take about" in failed[0].message
    template = built[0]
    assert template.frames == 100
    # Whole: every frame reads back, and the store holds no space beyond its frames.
    frames = list(template.read_i420(np.arange(template.frames)))
    assert len(frames) == 100 and frames[0].shape == yuv.frame_shape(640, 360)
    store = template.root / "frames.bin"
    assert store.stat().st_size == int(np.load(template.root / "offsets.npy")[-1])


def test_the_store_holds_the_space_its_frames_will_take_while_it_is_written_and_gives_back_the_rest(tmp_path):
    rng = np.random.default_rng(3)
    shape = yuv.frame_shape(64, 48)
    frames = [rng.integers(0, 256, shape, np.uint8) for _ in range(RESERVE_FIRST + 5)]
    path = tmp_path / "frames.bin"
    declared = 400  # frames the reference says it has: the store holds space for them all
    with StoreWriter(path, 64, 48, frames=declared) as store:
        for frame in frames[:RESERVE_FIRST]:
            store.keep(frame)
        store.recall(0)  # every frame kept so far is written
        per_frame = store.offsets[-1] / RESERVE_FIRST
        held = os.stat(path)
        assert held.st_size >= int(per_frame * declared * RESERVE_MARGIN) > 10 * store.offsets[-1]
        assert held.st_blocks * 512 >= held.st_size  # allocated, not a sparse file
        for frame in frames[RESERVE_FIRST:]:
            store.keep(frame)
    assert path.stat().st_size == store.offsets[-1]  # the reference ended early: the rest given back
