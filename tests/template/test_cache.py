"""The template cache mends itself (``analyze.analyze``, ``Template.open``): a cached
template that is not whole is set aside and built again with a warning, instead of failing
every row of its reference; a frame found damaged while read fails its row once and marks
the template for the next analysis; a job reading a template goes on reading it while
another job replaces it; leftovers of killed builds are removed. The restoration tiles
kept with a template mend themselves too. Pruning removes what no run has used for a
while, never what is in use."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from heygem_ray import analyze as analyze_module
from heygem_ray import media, storage
from heygem_ray.analyze import analyze
from heygem_ray.cli import app
from heygem_ray.config import DetectorConfig, InputLimits
from heygem_ray.errors import InputError, PresenterLater
from heygem_ray.job.tiles import restore_inputs
from heygem_ray.packs import get_pack
from heygem_ray.template import cache as template_cache
from heygem_ray.template.damage import DAMAGED_FILE
from heygem_ray.template.files import Template
from heygem_ray.timeline import plan
from tests.helpers.footage import lecture_clip
from tests.helpers.media import make_video
from tests.helpers.readonly import read_only

GEOMETRY, DETECTOR = get_pack("warp").geometry, DetectorConfig()
runner = CliRunner()


@pytest.fixture(scope="module")
def built(examples, tmp_path_factory) -> Path:
    """A cache holding the template of the bundled presenter clip (100 frames)."""
    cache = tmp_path_factory.mktemp("cache")
    template, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    template.close()
    assert not cached
    return cache


@pytest.fixture
def cache(built, tmp_path) -> Path:
    """A copy of ``built``'s cache, to damage."""
    return Path(shutil.copytree(built, tmp_path / "cache"))


def _root(cache: Path) -> Path:
    (meta,) = cache.glob("*/meta.json")
    return meta.parent


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _replace_folder_with_a_file(root: Path) -> None:
    shutil.rmtree(root)
    root.write_text("not a template")


def _empty_folder(root: Path) -> None:  # what an interrupted `rm -rf` of it can leave
    shutil.rmtree(root)
    root.mkdir()


def _short(name: str) -> Callable[[Path], None]:
    return lambda root: np.save(root / name, np.load(root / name)[:5])


def _deleted(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


FILES = ("meta.json", "boxes.npy", "present.npy", "points.npy", "offsets.npy", "frames.bin", "crops.npy", "faces.npz")
DAMAGE: dict[str, Callable[[Path], None]] = {
    **{f"{name} deleted": _deleted(name) for name in FILES},
    "frames.bin cut short": lambda root: _truncate(root / "frames.bin"),
    "crops.npy cut short": lambda root: _truncate(root / "crops.npy"),
    "meta.json not JSON": lambda root: (root / "meta.json").write_text("{not json"),
    "meta.json of another version": lambda root: (root / "meta.json").write_text(
        json.dumps({**json.loads((root / "meta.json").read_text()), "version": 1})
    ),
    "meta.json of a take at 5 fps, from before such takes were held": lambda root: (root / "meta.json").write_text(
        json.dumps({**json.loads((root / "meta.json").read_text()), "fps": "5"})
    ),
    "offsets.npy not an array": lambda root: (root / "offsets.npy").write_bytes(b"\x93NUMPY garbage"),
    "boxes.npy of 5 frames": _short("boxes.npy"),
    "points.npy of 5 frames": _short("points.npy"),
    "faces.npz without looks": lambda root: np.savez(
        root / "faces.npz", **{k: v for k, v in np.load(root / "faces.npz").items() if k != "looks"}
    ),
    "a file in the folder's place": _replace_folder_with_a_file,
    "an empty folder": _empty_folder,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_template_is_built_again_with_a_warning(built, cache, examples, caplog, damage):
    root = _root(cache)
    DAMAGE[damage](root)
    with caplog.at_level(logging.WARNING, logger="heygem_ray.analyze"):
        template, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    with template:
        assert not cached
        (record,) = caplog.records
        assert str(root) in record.getMessage() and "damaged" in record.getMessage()
        assert "analysing the reference again" in record.getMessage()
        original = _root(built)
        for name in ("frames.bin", "crops.npy", "boxes.npy", "offsets.npy", "points.npy", "present.npy"):
            assert (root / name).read_bytes() == (original / name).read_bytes(), name
        assert len(list(template.read_i420(np.arange(template.frames)))) == template.frames == 100
    # Nothing set aside is left behind: only templates and their locks.
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in built.iterdir())


@pytest.fixture(scope="module")
def held(examples, tmp_path_factory) -> tuple[Path, Path]:
    """The bundled take as a 5-fps screen recording, and a cache holding its template (each
    of its 20 frames held five times: stored once each)."""
    folder = tmp_path_factory.mktemp("held")
    slow = folder / "screen.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(examples / "presenter.mp4"), "-vf", "fps=5",
                    "-c:v", "libx264", str(slow)], check=True)  # fmt: skip
    template, _ = analyze(slow, GEOMETRY, DETECTOR, folder / "cache")
    template.close()
    return slow, folder / "cache"


HELD_DAMAGE: dict[str, Callable[[Path], None]] = {
    "stored.npy deleted": _deleted("stored.npy"),
    "stored.npy skipping a stored frame": lambda root: np.save(root / "stored.npy", np.arange(100) // 5 * 2),
    "stored.npy of 5 frames": _short("stored.npy"),
}


@pytest.mark.parametrize("damage", list(HELD_DAMAGE))
def test_a_held_takes_damaged_frame_map_is_built_again(held, tmp_path, caplog, damage):
    """Where frames repeat, which stored frame each one is (``stored.npy``) is checked with the
    rest: gone or wrong, the template is built again, and reads as it did."""
    slow, built = held
    cache = Path(shutil.copytree(built, tmp_path / "cache"))
    HELD_DAMAGE[damage](_root(cache))
    with caplog.at_level(logging.WARNING, logger="heygem_ray.analyze"):
        template, cached = analyze(slow, GEOMETRY, DETECTOR, cache)
    with template, Template.open(_root(built)) as original:
        assert not cached and "damaged" in caplog.text
        assert (template.frames, len(np.load(template.root / "offsets.npy"))) == (100, 21)
        index = np.arange(100)
        assert all(map(np.array_equal, template.read_i420(index), original.read_i420(index)))


def test_a_cache_removed_while_a_reference_is_analysed_is_storage_saying_so(tmp_path, examples):
    """A cleanup deletes the cache folder while a template is being built in it: the row
    fails `storage` saying so (it was `internal`, "a bug", from a FileNotFoundError)."""
    cache = tmp_path / "cache"
    removed = threading.Event()

    def clean_up() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(cache.glob(".*.tmp/frames.bin")):
            time.sleep(0.001)
        shutil.rmtree(cache, ignore_errors=True)
        removed.set()

    cleaner = threading.Thread(target=clean_up, daemon=True)
    cleaner.start()
    with pytest.raises(InputError) as err:
        analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    cleaner.join(60)  # (the analysis may fail while the removal is still under way)
    assert removed.is_set()
    assert err.value.kind == "storage", err.value.message
    assert err.value.message.startswith(f"the folder {cache} was removed while the analysis of ")


def test_what_each_damage_names(cache, built):
    """The warning says which file is wrong and how."""
    root = _root(cache)
    DAMAGE["boxes.npy deleted"](root)
    with pytest.raises(Exception, match="boxes.npy is missing"):
        Template.open(root)
    _empty_folder(root)
    with pytest.raises(Exception, match="meta.json is missing"):
        Template.open(root)
    (root / "meta.json").write_text(json.dumps({**json.loads((_root(built) / "meta.json").read_text()), "fps": "5"}))
    with pytest.raises(Exception, match="it holds the take at its own 5 fps, where a take under 20 fps is now read "
                                        "with each frame held"):  # fmt: skip
        Template.open(root)


def test_a_whole_template_is_opened_as_it_is(cache, examples, caplog):
    before = {p: p.stat().st_mtime_ns for p in _root(cache).iterdir()}
    with caplog.at_level(logging.WARNING):
        template, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    template.close()
    assert cached and not caplog.records
    assert {p: p.stat().st_mtime_ns for p in _root(cache).iterdir()} == before


def test_a_frame_damaged_inside_fails_once_and_the_next_analysis_builds_it_again(built, cache, examples):
    """Bytes that do not decompress cannot be seen when the template opens: the row reading
    them fails ``bad_template``, naming the frame, and marks the template; the next job on
    the reference gets it built again."""
    root = _root(cache)
    offsets = np.load(root / "offsets.npy")
    with open(root / "frames.bin", "r+b") as f:  # frame 3's bytes overwritten
        f.seek(int(offsets[3]))
        f.write(bytes(int(offsets[4] - offsets[3])))
    template, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    with template:
        assert cached
        assert len(list(template.read_i420(np.arange(3)))) == 3  # the frames before it still read
        with pytest.raises(InputError) as caught:
            list(template.read_i420(np.array([3])))
    assert caught.value.kind == "bad_template"
    message = caught.value.message
    assert str(root) in message and "frame 3 does not decompress" in message
    assert "analysed again the next time a job uses this reference" in message
    assert "frame 3" in (root / DAMAGED_FILE).read_text()
    again, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    with again:
        assert not cached and not (root / DAMAGED_FILE).exists()
        (frame,) = again.read_i420(np.array([3]))
    with Template.open(_root(built)) as original:
        (want,) = original.read_i420(np.array([3]))
    assert np.array_equal(frame, want)


def _damage_frame(root: Path, frame: int) -> None:
    """Overwrite stored frame ``frame``'s bytes in place (the same file: jobs that hold it open see it)."""
    offsets = np.load(root / "offsets.npy")
    with open(root / "frames.bin", "r+b") as f:
        f.seek(int(offsets[frame]))
        f.write(bytes(int(offsets[frame + 1] - offsets[frame])))


def test_jobs_still_reading_a_damaged_template_leave_the_one_built_again_whole(built, cache, examples):
    """Three jobs have a template open when a frame of it is found damaged: the first to
    read it marks it, the next analysis sets it aside and builds it again, and the other
    two, reading the frame later from the folder set aside, fail their rows without
    marking the template now at its path (each such mark threw a whole template away
    and had the reference analysed again, once per job), saying another job analysed it
    again. While it was being built, no such job made its folder again."""
    first, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    later = [analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)[0] for _ in range(2)]
    root = first.root
    _damage_frame(root, 3)
    with first, pytest.raises(InputError):
        list(first.read_i420(np.array([3])))
    assert (root / DAMAGED_FILE).is_file()

    built_while_read = []
    real_build = analyze_module._build

    def build_while_a_job_reads(*args, **kw):  # a job reads the frame while the template is rebuilt
        real_build(*args, **kw)
        with pytest.raises(InputError) as caught:
            list(later[0].read_i420(np.array([3])))
        built_while_read.append((caught.value.message, root.exists()))

    analyze_module._build = build_while_a_job_reads
    try:
        rebuilt, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    finally:
        analyze_module._build = real_build
    rebuilt.close()
    assert not cached
    (message, made_again), = built_while_read
    assert not made_again and "analysed again the next time a job uses this reference" in message

    with later[1], pytest.raises(InputError) as caught:
        list(later[1].read_i420(np.array([3])))
    later[0].close()
    assert caught.value.kind == "bad_template"
    assert "another job found it so and analysed the reference again meanwhile" in caught.value.message
    assert not (root / DAMAGED_FILE).exists()
    again, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    again.close()
    assert cached  # the template built again is whole, and kept


def test_a_damaged_frame_in_a_cache_that_cannot_be_written_says_to_delete_the_template(cache, examples):
    """Where the mark cannot be written (a cache mounted read-only, another user's), the
    row says the template is damaged and to delete its folder: not a permission error on a
    temporary file, which named neither."""
    root = _root(cache)
    _damage_frame(root, 3)
    template, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    with template, read_only(root), pytest.raises(InputError) as caught:
        list(template.read_i420(np.array([3])))
    assert caught.value.kind == "bad_template"
    assert caught.value.message.startswith(f"template {root} is damaged (frame 3 does not decompress")
    assert caught.value.message.endswith("; delete that folder and run again to rebuild it")
    assert not (root / DAMAGED_FILE).exists()


def test_a_folder_made_at_a_templates_path_while_it_is_built_is_set_aside(cache, examples, caplog):
    """A job holding a template set aside open may write into its path while the template
    is built again (a cache of its reference stage): the rename of the new template finds a
    folder there. That folder is set aside, with a warning, and the template put in place,
    where the row failed as a bug in heygem-ray (ENOTEMPTY) and the build was thrown away."""
    root = _root(cache)
    (root / "boxes.npy").unlink()  # damaged: set aside and built again
    real_build = analyze_module._build

    def build_then_intrude(*args, **kw):
        real_build(*args, **kw)
        root.mkdir()
        (root / "reference-0123.done").write_bytes(b"written by a job holding the old template")

    analyze_module._build = build_then_intrude
    try:
        with caplog.at_level(logging.WARNING):
            rebuilt, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    finally:
        analyze_module._build = real_build
    rebuilt.close()
    assert not cached and not (root / "reference-0123.done").exists()
    assert f"{root} was made while its template was built: set aside" in caplog.text
    again, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    again.close()
    assert cached


def test_a_job_holding_a_template_set_aside_still_reads_its_face_track(cache, examples):
    """The reference checks read the presenter's track after analysis let the template go:
    from what was opened, where a folder set aside meanwhile failed the row as a bug."""
    held, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    with held:
        want = held.track()
        template_cache.set_aside(held.root, cache / ".aside")
        assert not held.root.exists()
        track = held.track()
    assert np.array_equal(track.boxes, want.boxes) and np.array_equal(track.looks, want.looks)
    assert track.boxes.shape == (held.frames, 4)


def test_a_job_reading_a_template_reads_on_while_another_job_replaces_it(built, cache, examples):
    """A job has the template open; another finds a file of it deleted and sets the folder
    aside, and its build fails (here: the reference is over that job's frame limit), so
    nothing is at the template's path any more: the first job's frames and crops still
    read, as they were. The next analysis builds the template again."""
    held, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    with held:
        index = np.arange(held.frames)
        first_frames, first_crops = list(held.read_i420(index)), held.crops(index)
        (held.root / "boxes.npy").unlink()
        with pytest.raises(InputError) as refused:
            analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache, InputLimits(max_reference_frames=10))
        assert refused.value.kind == "too_large" and not held.root.exists()
        assert all(np.array_equal(a, b) for a, b in zip(held.read_i420(index), first_frames, strict=True))
        assert np.array_equal(held.crops(index), first_crops)
    rebuilt, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    rebuilt.close()
    assert not cached and (rebuilt.root / "crops.npy").read_bytes() == (_root(built) / "crops.npy").read_bytes()


def test_leftovers_of_killed_builds_of_a_template_are_removed_when_it_is_next_analysed(cache, examples):
    key = _root(cache).name
    killed = cache / f".{key}.0123456789abcdef.tmp"  # a build killed part-way
    (killed / "sub").mkdir(parents=True)
    (killed / "frames.bin").write_bytes(b"x" * 1000)
    aside = cache / f".{key}.fedcba9876543210.damaged"  # set aside by a job killed before removing it
    aside.mkdir()
    other = cache / f".{'f' * 32}.0123456789abcdef.tmp"  # another template's build, maybe running
    other.mkdir()
    template, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    template.close()
    assert cached
    assert not killed.exists() and not aside.exists() and other.is_dir()


def test_damaged_restoration_tiles_are_made_again(cache, examples, caplog, tmp_path):
    template, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    with template:
        timeline = plan(2.0, template.frames, template.fps, "pingpong", template.is_image)
        frames = np.unique(timeline.ref_index)[::5]  # frames the timeline uses

        def tiles() -> tuple[bytes, list[int]]:
            made = restore_inputs(template, timeline, tmp_path)(frames).tiles
            return made.data.tobytes(), made.ends.tolist()

        want = tiles()
        index = template.root / "restore-tiles-v1.index.npy"
        _truncate(template.root / "restore-tiles-v1.bin")  # the index names bytes that are gone
        with caplog.at_level(logging.WARNING, logger="heygem_ray.job.tiles"):
            got = tiles()
        (record,) = caplog.records
        assert "restoration tiles" in record.getMessage() and "making them again" in record.getMessage()
        assert got == want
        index.write_bytes(b"garbage")
        assert tiles() == want


# --------------------------------------------------------------------------- pruning

DAY = 86400.0


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def _other_template(root: Path, key: str, days: float) -> Path:
    """A copy of the template ``root`` under another key (another reference's), last used ``days`` ago."""
    other = Path(shutil.copytree(root, root.parent / key))
    _age(other, days)
    return other


def test_prune_removes_what_no_run_used_for_the_time_given_and_what_killed_builds_left(cache, examples):
    """A cache used night after night: the presenter's template last used 40 days ago, one
    used yesterday, another version's from 60 days ago, and a killed build's folder.
    A dry run removes nothing; then the two unused for over 30 days and the leftover go,
    yesterday's stays, and the presenter's is analysed again when next used."""
    root = _root(cache)
    recent = _other_template(root, "a" * 32, 1)
    old_version = _other_template(root, "b" * 32, 60)
    (old_version / "meta.json").write_text(json.dumps({**json.loads((root / "meta.json").read_text()), "version": 7}))
    _age(old_version, 60)
    killed = cache / f".{'c' * 32}.{'0' * 32}.tmp"
    killed.mkdir()
    (killed / "frames.bin").write_bytes(bytes(1000))
    killed_again = cache / f".{'c' * 32}.{'1' * 32}.tmp"  # the same reference's build, killed another night
    killed_again.mkdir()
    template_cache.lock_path(cache, "c" * 32).touch()  # (as each build made it)
    _age(root, 40)

    would, busy = template_cache.prune(cache, 30 * DAY, dry_run=True)
    assert {e.path for e in would} == {root, old_version, killed, killed_again} and busy == []
    assert all(p.exists() for p in (root, recent, old_version, killed, killed_again))

    removed, busy = template_cache.prune(cache, 30 * DAY)
    assert {e.path for e in removed} == {root, old_version, killed, killed_again} and busy == []
    assert [e.version for e in removed if e.path == old_version] == [7]
    assert sum(e.bytes for e in removed) > 2 * (root.parent / recent.name / "frames.bin").stat().st_size
    kept = [p.name for p in cache.iterdir()
            if not p.name.endswith(".lock") and p.name not in (template_cache.HASHES_DIR, template_cache.TAG_FILE)]
    assert kept == [recent.name]
    template, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    template.close()
    assert not cached and template.root == root


def _not_ours(folder: Path) -> dict[str, bytes]:
    """Files no analysis made, named as if they were: a folder named as a key (a job's uuid
    folder), a hidden file with a key in its name, files in folders named as the cache's
    memos. Returns what each holds, by path."""
    files = {"d41d8cd98f00b204e9800998ecf8427e/img.jpg": b"a photo",
             ".d41d8cd98f00b204e9800998ecf8427e.notes.tmp": b"notes",
             ".hashes/mine": b"mine", ".failures/f": b"a failure of mine", "Documents/letter.txt": b"dear"}  # fmt: skip
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    for path in folder.rglob("*"):
        _age(path, 90)
    return files


def test_prune_given_a_folder_that_is_no_cache_removes_nothing_and_says_so(tmp_path):
    """A --cache-dir that names another folder (a typo in a cron line) is refused whole,
    exit 2, nothing removed nor written there, where every folder named like a key went
    (a 32-hex uuid is a common name) with every hidden file named like a leftover."""
    folder = tmp_path / "shared"
    files = _not_ours(folder)
    for args in (["cache", "prune", "--cache-dir", str(folder)], ["cache", "prune", "--dry-run", "--cache-dir", str(folder)]):
        got = runner.invoke(app, args)
        assert got.exit_code == 2, got.output
        assert f"error: {folder} is not a heygem-ray template cache (no CACHEDIR.TAG of one" in got.output
    assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
    listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(folder)])
    assert listed.exit_code == 0 and listed.stdout.startswith(f"0 in {folder}, ")
    for missing in (tmp_path / "nope", folder / "Documents" / "letter.txt"):
        for command in ("prune", "list"):
            got = runner.invoke(app, ["cache", command, "--cache-dir", str(missing)])
            assert got.exit_code == 2 and f"error: the template cache {missing} " in got.output, got.output
    got = runner.invoke(app, ["cache", "prune", "--unused-days", "nan", "--cache-dir", str(folder)])
    assert got.exit_code == 2 and "--unused-days must be a number of days" in got.output


def test_prune_in_a_cache_removes_only_what_the_cache_made(cache, examples):
    """In a cache (tagged by its analyses), files that only look like its own are left:
    what ``scan`` takes for a template has its meta.json or its key's lock, a leftover is
    named as a build names one, beside its key's lock, and the memos are named as the
    cache names them."""
    assert (cache / template_cache.TAG_FILE).read_bytes().startswith(b"Signature: 8a477f597d28d172789f06886806bc55\n")
    files = _not_ours(cache)
    root = _root(cache)
    _age(root, 40)
    removed, busy = template_cache.prune(cache, 30 * DAY)
    assert [e.path for e in removed] == [root] and busy == []
    assert {name: (cache / name).read_bytes() for name in files} == files


def test_a_build_going_on_is_listed_as_such_and_a_dry_run_leaves_it_as_prune_does(cache):
    """A template being built (its temporary folder, its key's lock held) is listed as
    being built, not as what a killed build left, and a dry run says it would be left in
    use, as the prune itself does."""
    key = "c" * 32
    building = cache / f".{key}.{'0' * 32}.tmp"
    building.mkdir()
    with storage.file_lock(template_cache.lock_path(cache, key)):
        listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(cache)])
        dry = runner.invoke(app, ["cache", "prune", "--dry-run", "--cache-dir", str(cache)])
        pruned = runner.invoke(app, ["cache", "prune", "--cache-dir", str(cache)])
    assert f"{building}  " in listed.stdout and listed.stdout.split(f"{building}  ")[1].splitlines()[0].endswith(
        "being built")
    assert f"in use, left {building}  " in dry.stdout and f"would remove {building}" not in dry.stdout
    assert f"in use, left {building}  " in pruned.stdout and building.is_dir()


def test_a_template_in_use_is_left_and_a_job_reading_one_reads_on(cache, examples):
    """The key's lock held (a build of it, or a job opening it): the template is left and
    said so. A job that has it open while it is pruned reads every frame on."""
    root = _root(cache)
    _age(root, 40)
    with storage.file_lock(template_cache.lock_path(cache, root.name)):
        removed, busy = template_cache.prune(cache, 30 * DAY)
    assert removed == [] and [e.path for e in busy] == [root] and root.is_dir()

    template, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    before = list(template.read_i420(np.arange(template.frames)))
    _age(root, 40)  # the analysis marked it used: aged again, as if that was long ago
    with template:
        removed, _ = template_cache.prune(cache, 30 * DAY)
        assert [e.path for e in removed] == [root] and not root.exists()
        after = list(template.read_i420(np.arange(template.frames)))
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_second_prune_waits_for_the_first_and_finds_what_is_left(cache, examples):
    """Two prunes of one cache (two nodes' cron jobs, a hand beside one): while one runs
    (its lock held here) the other says it waits and removes nothing; once it ends, the
    other removes what is due. Before, the second met the templates the first was removing
    and listed them as in use, left by a killed build."""
    root = _root(cache)
    old = _other_template(root, "a" * 32, 40)
    _age(root, 40)
    command = [str(Path(sys.executable).with_name("heygem-ray")), "cache", "prune", "--cache-dir", str(cache)]
    with storage.file_lock(cache / template_cache.PRUNE_LOCK):
        second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = second.stderr.readline()  # type: ignore[union-attr]
        assert said == f"another prune of {cache} is running: waiting for it to finish\n"
        time.sleep(0.5)
        assert second.poll() is None and root.is_dir() and old.is_dir()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.splitlines()[-1].startswith(f"removed 2 from {cache}, ") and "in use" not in out
    assert not root.exists() and not old.exists()


def test_every_analysis_marks_its_template_used(cache, examples):
    root = _root(cache)
    _age(root, 40)
    template, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    template.close()
    assert cached and time.time() - root.stat().st_mtime < 60
    assert template_cache.prune(cache, 30 * DAY) == ([], [])


def test_the_cache_commands_list_and_prune(cache, examples):
    root = _root(cache)
    recent = _other_template(root, "a" * 32, 1)
    _age(root, 40)
    listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(cache)])
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(f"{root}  ") and lines[1].startswith(f"{recent}  ") and "presenter.mp4" in lines[0]
    assert lines[0].endswith("presenter.mp4 (384×384)")
    assert lines[-1].startswith(f"2 in {cache}, ") and "; its disk has " in lines[-1] and lines[-1].endswith(" GiB free")
    # The same reference analysed at --max-resolution 192: a template of its own, which says so.
    smaller, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache, max_resolution=192)
    smaller.close()
    listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(cache)]).stdout.splitlines()
    assert listed[2].startswith(f"{smaller.root}  ") and listed[2].endswith("presenter.mp4 (192×192 scaled from 384×384)")
    # And its first 2 s (of 4) at --reference-seconds 2: one more, which says so.
    first, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache, max_resolution=192, reference_seconds=2)
    first.close()
    listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(cache)]).stdout.splitlines()
    assert listed[3].startswith(f"{first.root}  ")
    assert listed[3].endswith("presenter.mp4 (192×192 scaled from 384×384, first 2 s)")
    # From 1 s in at --reference-start 1, and its 2 s from there: two more, which say so.
    for at, (seconds, said) in enumerate(((0, "from 1 s"), (2, "2 s from 1 s")), start=4):
        late, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache, max_resolution=192,
                          reference_seconds=seconds, reference_start=1)  # fmt: skip
        late.close()
        listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(cache)]).stdout.splitlines()
        assert listed[at].startswith(f"{late.root}  ") and listed[at].endswith(f"(192×192 scaled from 384×384, {said})")
    dry = runner.invoke(app, ["cache", "prune", "--cache-dir", str(cache), "--dry-run"])
    assert dry.exit_code == 0 and dry.stdout.startswith(f"would remove {root}  ") and root.is_dir()
    pruned = runner.invoke(app, ["cache", "prune", "--cache-dir", str(cache), "--unused-days", "0.5"])
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout.splitlines()[-1].startswith(f"removed 2 from {cache}, ")
    assert not root.exists() and not recent.exists() and smaller.root.is_dir()  # used just now
    bad = runner.invoke(app, ["cache", "prune", "--cache-dir", str(cache), "--unused-days", "-1"])
    assert bad.exit_code == 2 and "--unused-days must be a number of days, 0 or more" in bad.output


# --------------------------------------------------------------------------- a cache that cannot be written


def test_a_cache_that_cannot_be_written_serves_the_templates_it_holds(cache, examples, tmp_path):
    """A cache mounted read-only on the nodes (built beforehand, as `heygem-ray preview`
    warms it): the presenter's template is served without its lock (every row used to
    fail, the lock file could not be made), frames and all; a reference it holds no
    analysis of fails its row saying how to add one."""
    with Template.open(_root(cache)) as before:
        expected = list(before.read_i420(np.arange(3)))
    other = tmp_path / "other.mp4"
    shutil.copy(examples / "presenter.mp4", other)
    with open(other, "ab") as f:
        f.write(b"\0")  # other content: another key
    with read_only(cache):
        assert not os.access(cache, os.W_OK)
        template, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
        with template:
            assert cached and all(np.array_equal(a, b) for a, b in
                                  zip(template.read_i420(np.arange(3)), expected, strict=True))  # fmt: skip
        with pytest.raises(InputError) as err:
            analyze(other, GEOMETRY, DETECTOR, cache)
    assert err.value.kind == "storage"
    assert err.value.message.startswith(f"reference {other}: the template cache {cache} cannot be written here and "
                                        "holds no analysis of it: analyse the reference into it where it can be "
                                        f"written (heygem-ray preview {other} --cache-dir {cache}")  # fmt: skip


def test_a_cache_that_cannot_be_written_gives_the_restoration_tiles_it_holds_and_makes_the_rest_per_job(
        cache, examples, tmp_path):  # fmt: skip
    """The tiles a writable run kept are read from a read-only cache as they are; a job
    whose frames the cache holds no tiles of makes them in its scratch folder (the same
    tiles) instead of failing on the lock file, and leaves the cache as it was."""
    with Template.open(_root(cache)) as template:
        short = plan(1.0, template.frames, template.fps, "pingpong", template.is_image)
        long = plan(6.0, template.frames, template.fps, "pingpong", template.is_image)
        frames = np.unique(long.ref_index)
        writable = Path(shutil.copytree(cache, tmp_path / "writable"))
        with Template.open(_root(writable)) as twin:
            want = restore_inputs(twin, long, tmp_path)(frames).tiles
        restore_inputs(template, short, tmp_path)  # kept: the short timeline's frames
    held = sorted((p.name, p.stat().st_size) for p in _root(cache).iterdir())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with read_only(cache), Template.open(_root(cache)) as template:
        kept = restore_inputs(template, short, scratch)(np.unique(short.ref_index)).tiles
        assert list(scratch.iterdir()) == []  # all read from the cache
        made = restore_inputs(template, long, scratch)(frames).tiles
        assert [p.name for p in scratch.iterdir()] == ["restore-tiles-v1.bin"]
    assert made.data.tobytes() == want.data.tobytes() and made.ends.tolist() == want.ends.tolist()
    first = want.ends[len(np.unique(short.ref_index)) - 1]
    assert kept.data.tobytes() == want.data.tobytes()[:first]
    assert sorted((p.name, p.stat().st_size) for p in _root(cache).iterdir()) == held


def test_a_job_whose_template_was_set_aside_and_built_again_makes_its_tiles_for_itself(cache, examples, tmp_path):
    """A job opened a template; another found it damaged, set it aside and built it again
    before the first reached its restoration step: the first makes its tiles in its own
    scratch folder (the same tiles), neither keeping them in the new template nor failing
    on the old folder's lock (a bug's error, where it was gone), nor making the old folder
    again."""
    with Template.open(_root(cache)) as template:
        timeline = plan(2.0, template.frames, template.fps, "pingpong", template.is_image)
        frames = np.unique(timeline.ref_index)
        want = restore_inputs(template, timeline, tmp_path)(frames).tiles  # (kept with it)
    held, _ = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
    with held:
        template_cache.set_aside(held.root, cache / ".aside")
        scratch = tmp_path / "gone"
        scratch.mkdir()
        made = restore_inputs(held, timeline, scratch)(frames).tiles
        assert not held.root.exists() and [p.name for p in scratch.iterdir()] == ["restore-tiles-v1.bin"]
        rebuilt, cached = analyze(examples / "presenter.mp4", GEOMETRY, DETECTOR, cache)
        rebuilt.close()
        assert not cached
        scratch = tmp_path / "rebuilt"
        scratch.mkdir()
        again = restore_inputs(held, timeline, scratch)(frames).tiles
        assert [p.name for p in scratch.iterdir()] == ["restore-tiles-v1.bin"]
        assert not list(held.root.glob("restore-tiles*"))  # nothing kept in the new template
    assert made.data.tobytes() == want.data.tobytes() == again.data.tobytes()


def test_a_references_hash_is_remembered_until_the_file_changes_and_forgotten_when_unused(
        tmp_path, examples, monkeypatch) -> None:  # fmt: skip
    """The cache remembers each reference file's content hash under the file's identity, so
    a job after the first does not read the file whole: a memo that says otherwise is what
    the key follows. The file written again (the same bytes) is another identity, hashed
    again; a file changed a moment ago is not remembered. ``cache prune`` removes a memo no
    job used for its days and keeps the others."""
    take = Path(shutil.copy(examples / "presenter.mp4", tmp_path / "take.mp4"))
    cache, hashes = tmp_path / "cache", tmp_path / "cache" / template_cache.HASHES_DIR
    key = template_cache.template_key(take, GEOMETRY, DETECTOR, cache)
    assert not hashes.exists()  # the file was copied a moment ago
    monkeypatch.setattr(template_cache, "HASH_SETTLED_S", 0.0)
    assert template_cache.template_key(take, GEOMETRY, DETECTOR, cache) == key
    (memo,) = hashes.iterdir()
    assert memo.read_text() == template_cache.content_hash(take)
    memo.write_text("0" * 64)  # what the next job finds is taken, and the file not read
    assert template_cache.template_key(take, GEOMETRY, DETECTOR, cache) != key
    time.sleep(0.05)  # a later clock tick
    take.write_bytes(take.read_bytes())
    assert template_cache.template_key(take, GEOMETRY, DETECTOR, cache) == key
    assert len(list(hashes.iterdir())) == 2
    _age(memo, 40)
    template_cache.tag(cache)  # (as the analysis that keys a template does)
    template_cache.prune(cache, 30 * DAY)
    assert [p.read_text() for p in hashes.iterdir()] == [template_cache.content_hash(take)]
    assert template_cache.scan(cache) == []  # not listed among the templates


def test_a_reference_without_a_face_is_analysed_once_and_its_rows_after_say_why_at_once(tmp_path) -> None:
    """A take in which no face is found fails its analysis, and the cache remembers that
    under the template's key: the next row of the same bytes at the same settings fails
    with the same message at once (naming its own path, and how to have it analysed
    anew), where it would decode and search the whole take again. Other settings, or the
    record removed, analyse it again; ``cache prune`` forgets a record no job met for its days."""
    slide = make_video(tmp_path / "slide.mp4", seconds=1.0, size=(160, 120))
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as first:
        analyze(slide, GEOMETRY, DETECTOR, cache)
    assert first.value.kind == "no_face" and "not analysed again" not in first.value.message
    (record,) = (cache / template_cache.FAILURES_DIR).iterdir()
    assert record == template_cache.failure_path(cache, template_cache.template_key(slide, GEOMETRY, DETECTOR, cache))
    assert json.loads(record.read_text())["kind"] == "no_face"

    copy = Path(shutil.copy(slide, tmp_path / "the same slide.mp4"))
    with pytest.raises(InputError) as again:
        analyze(copy, GEOMETRY, DETECTOR, cache)
    assert again.value.kind == "no_face"
    assert again.value.message == first.value.message.replace(str(slide), str(copy)) + (
        f" (as an analysis of these bytes at these settings found at {json.loads(record.read_text())['at']}; it is "
        f"not analysed again: remove {record} to have it analysed anew)")  # fmt: skip
    assert not list(cache.glob(".*.tmp"))

    with pytest.raises(InputError) as other:  # another smallest face: another key, analysed
        analyze(slide, GEOMETRY, DetectorConfig(min_face=30), cache)
    assert other.value.kind == "no_face" and "not analysed again" not in other.value.message
    record.unlink()
    with pytest.raises(InputError) as anew:
        analyze(slide, GEOMETRY, DETECTOR, cache)
    assert anew.value.message == first.value.message and record.is_file()

    _age(record, 40)
    template_cache.prune(cache, 30 * DAY)
    assert not record.exists() and len(list((cache / template_cache.FAILURES_DIR).iterdir())) == 1


def test_a_remembered_failure_names_the_path_each_row_gives(tmp_path, monkeypatch) -> None:
    """A take first given by a relative path (a preview run in its folder), then by its
    absolute one (the night's manifest), then relative from elsewhere: each message names
    the path its row gave (made absolute, as analysis names a reference), once, where a
    path inside another was replaced inside it (``/data//data/in/take.mp4``)."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "take.mp4", seconds=1.0, size=(160, 120))
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    for given in (Path("in/take.mp4"), folder / "take.mp4", Path("../in/take.mp4")):
        if given.parts[0] == "..":
            monkeypatch.chdir(cache)
        with pytest.raises(InputError) as caught:
            analyze(given, GEOMETRY, DETECTOR, cache)
        assert caught.value.message.startswith(f"reference {given.absolute()}: no face found ("), caught.value.message
        assert caught.value.message.count("take.mp4") == 1


def test_a_take_whose_presenter_comes_in_after_the_part_analysed_says_where(tmp_path) -> None:
    """``--reference-seconds 2`` of a lecture whose first 3 s are the slide alone (a keyframe
    a second): no face in those 2 s, and the rest of the take, searched at its keyframes,
    shows one at 3 s: the error names --reference-start 3 and carries it (a manifest's
    preview fills it in); the take's next row gets the same from the record. Without a cut
    there is no rest to search."""
    take = lecture_clip(tmp_path / "lecture.mp4", size=(480, 300), face=100, seconds=6.0, corner="centre",
                        motion="still", absent=(0.0, 3.0), keyframe_s=1.0).path  # fmt: skip
    cache = tmp_path / "cache"
    for again in (False, True):
        with pytest.raises(PresenterLater) as late:
            analyze(take, GEOMETRY, DETECTOR, cache, reference_seconds=2)
        assert late.value.kind == "no_face" and late.value.settings == {"reference_start": 3.0}
        assert "After that part, the take's keyframes first show a face 3.0 s in (the presenter may come in up to " \
               "one keyframe interval earlier): --reference-start 3 (or the row's reference_start column) uses it " \
               "from there" in late.value.message  # fmt: skip
        assert ("it is not analysed again" in late.value.message) == again
    template, _ = analyze(take, GEOMETRY, DETECTOR, cache, reference_seconds=2, reference_start=3)
    template.close()
    assert template.present.all()


@pytest.mark.parametrize("start", [0.0, 1.0])
def test_a_take_with_the_presenter_in_its_last_seconds_only_names_where(tmp_path, start) -> None:
    """A 10-s take with the presenter in its last 1.5 s (too few frames for a template):
    the error says where the face was found and the start that uses it, carried as a
    setting (a manifest's preview fills it in), counted from the take's beginning where
    the take is used from a start already; not 'no face found' with advice on lighting."""
    take = lecture_clip(tmp_path / "late.mp4", size=(480, 300), face=100, seconds=10.0, corner="centre",
                        motion="still", absent=(0.0, 8.5)).path  # fmt: skip
    with pytest.raises(PresenterLater) as late:
        analyze(take, GEOMETRY, DETECTOR, tmp_path / "cache", reference_start=start)
    found = late.value.settings["reference_start"]
    assert late.value.kind == "no_face" and 8.4 <= found <= 8.6, late.value.message
    assert late.value.message.startswith(f"reference {take}: too few frames with a face (the presenter's face was "
                                         "detected in ")  # fmt: skip
    assert "frame(s), nearly all between 8." in late.value.message
    assert (" s into the take): where the presenter is in only that part, --reference-start "
            f"{found:g} (or the row's reference_start column) uses the take from there") in late.value.message
    assert "well lit" not in late.value.message
    template, _ = analyze(take, GEOMETRY, DETECTOR, tmp_path / "cache", reference_start=found)
    template.close()
    assert template.present.mean() > 0.9


def test_a_take_with_the_presenter_in_its_last_half_second_says_too_few_frames_not_no_face(tmp_path) -> None:
    """Its 12 frames with a face are too short a stretch to name as a start (under 1 s); the
    message said 'no face found (… detected in 12 of its 150 frame(s))', which contradicts
    itself (found by an audit)."""
    take = lecture_clip(tmp_path / "late.mp4", size=(640, 360), face=100, seconds=6.0, corner="centre",
                        motion="still", absent=(0.0, 5.5)).path  # fmt: skip
    with pytest.raises(InputError) as caught:
        analyze(take, GEOMETRY, DETECTOR, tmp_path / "cache")
    assert not isinstance(caught.value, PresenterLater) and caught.value.kind == "no_face"
    assert caught.value.message.startswith(f"reference {take}: too few frames with a face (the presenter's face was "
                                           "detected in "), caught.value.message  # fmt: skip


def test_a_take_without_a_face_anywhere_still_says_no_face_found(tmp_path) -> None:
    slide = make_video(tmp_path / "slide.mp4", seconds=2.0, size=(160, 120))
    with pytest.raises(InputError) as caught:
        analyze(slide, GEOMETRY, DETECTOR, tmp_path / "cache")
    assert not isinstance(caught.value, PresenterLater) and "no face found" in caught.value.message


def test_a_presenter_too_small_once_scaled_down_is_not_named_as_coming_in_later(tmp_path) -> None:
    """The same lecture with a face 60 px wide, analysed scaled down to half (``max_resolution``,
    the face 30 px, under ``min_face``): the keyframes after the cut are searched at that size
    too, so the error is the plain ``no_face``, not a start at which analysis would fail again."""
    take = lecture_clip(tmp_path / "lecture.mp4", size=(480, 300), face=60, seconds=6.0, corner="centre",
                        motion="still", absent=(0.0, 3.0), keyframe_s=1.0).path  # fmt: skip
    with pytest.raises(InputError) as failed:
        analyze(take, GEOMETRY, DETECTOR, tmp_path / "cache", reference_seconds=2, max_resolution=150)
    assert failed.value.kind == "no_face" and not isinstance(failed.value, PresenterLater), failed.value.message
    with pytest.raises(PresenterLater):  # at its own size the same take names the start
        analyze(take, GEOMETRY, DETECTOR, tmp_path / "cache", reference_seconds=2)


def test_a_reference_cut_short_and_copied_back_as_it_is_analysed_keeps_no_short_template(
    tmp_path, examples, monkeypatch, caplog
):  # fmt: skip
    """A sync job rewriting the media folder cut the take as its analysis read it, then put
    it back whole: the analysis of the short file was kept under the whole file's key, and
    every later night rendered from a third of the take (the audit of 2026-12-08). Now the
    change is seen, and the take is analysed again from its bytes as they are."""
    video = Path(shutil.copy(examples / "presenter.mp4", tmp_path / "talk.mp4"))
    whole = video.read_bytes()
    calls = []
    store_and_track = analyze_module._store_and_track

    def cut_while_read(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            video.write_bytes(whole[: len(whole) // 3])
            try:
                return store_and_track(*args, **kwargs)
            finally:
                video.write_bytes(whole)
        return store_and_track(*args, **kwargs)

    monkeypatch.setattr(analyze_module, "_store_and_track", cut_while_read)
    monkeypatch.setattr(analyze_module, "SETTLE_S", 0.2)
    with caplog.at_level(logging.WARNING, logger="heygem_ray.analyze"):
        template, cached = analyze(video, GEOMETRY, DETECTOR, tmp_path / "cache")
    template.close()
    assert len(calls) == 2 and not cached
    assert f"reference {video} changed while it was analysed (it was written to): analysing it again" in caplog.text
    (meta,) = (tmp_path / "cache").glob("*/meta.json")
    assert json.loads(meta.read_text())["frames"] == 100  # the whole take's


def test_a_reference_written_through_every_analysis_fails_input_changed_keeping_nothing(
    tmp_path, examples, monkeypatch
):  # fmt: skip
    video = Path(shutil.copy(examples / "presenter.mp4", tmp_path / "talk.mp4"))
    store_and_track = analyze_module._store_and_track

    def written_while_read(*args, **kwargs):
        try:
            return store_and_track(*args, **kwargs)
        finally:
            with open(video, "ab") as f:  # a copy still appending to it
                f.write(b"\0")

    monkeypatch.setattr(analyze_module, "_store_and_track", written_while_read)
    monkeypatch.setattr(analyze_module, "SETTLE_S", 0.2)
    with pytest.raises(InputError) as err:
        analyze(video, GEOMETRY, DETECTOR, tmp_path / "cache")
    size = video.stat().st_size
    assert err.value.kind == "input_changed"
    assert err.value.message == (
        f"reference {video} was written while it was analysed, 3 times in a row (the last time its size went from "
        f"{size - 1:,} to {size:,} bytes): something is writing it now, a copy or a sync job; no analysis of it was "
        "kept. Let that finish, then run the same manifest again"
    )
    assert not list((tmp_path / "cache").glob("*/meta.json")) and not list((tmp_path / "cache").glob(".*.tmp"))


def test_a_reference_still_being_written_is_not_analysed_again_and_again(tmp_path, examples, monkeypatch):
    """A copy that goes on writing the take after its first analysis: waited for, then
    input_changed at once (each try analysed it whole, an hour of CPU for a long take)."""
    video = Path(shutil.copy(examples / "presenter.mp4", tmp_path / "talk.mp4"))
    analyses = []
    store_and_track = analyze_module._store_and_track

    def counted(*args, **kwargs):
        analyses.append(1)
        return store_and_track(*args, **kwargs)

    stop = threading.Event()

    def copying() -> None:  # appends as a slow copy does, for longer than the wait
        while not stop.wait(0.05):
            with open(video, "ab") as f:
                f.write(b"\0")

    monkeypatch.setattr(analyze_module, "_store_and_track", counted)
    monkeypatch.setattr(analyze_module, "SETTLE_S", 0.5)
    monkeypatch.setattr(analyze_module, "CHANGE_WAIT_S", 1.5)
    writer = threading.Thread(target=copying, daemon=True)
    writer.start()
    try:
        with pytest.raises(InputError) as err:
            analyze(video, GEOMETRY, DETECTOR, tmp_path / "cache")
    finally:
        stop.set()
        writer.join(5)
    assert len(analyses) <= 1  # (none where the probe saw it change)
    assert err.value.kind == "input_changed"
    assert err.value.message.startswith(f"reference {video} changed while it was analysed (its size went from ")
    assert "and was still changing 2 s later: something is writing it now" in err.value.message


def test_a_reference_left_cut_short_after_it_changed_fails_saying_it_changed(tmp_path, examples, monkeypatch):
    """Cut in place as it was analysed, and left so (a copy that had not finished): the
    second analysis finds a damaged file, and the row says it changed while it was read,
    where it said only to re-export a take that is whole once its copy ends."""
    video = Path(shutil.copy(examples / "presenter.mp4", tmp_path / "talk.mp4"))
    whole = video.read_bytes()
    store_and_track = analyze_module._store_and_track

    def cut_while_read(*args, **kwargs):
        video.write_bytes(whole[:2000])
        return store_and_track(*args, **kwargs)

    monkeypatch.setattr(analyze_module, "_store_and_track", cut_while_read)
    monkeypatch.setattr(analyze_module, "SETTLE_S", 0.2)
    with pytest.raises(InputError) as err:
        analyze(video, GEOMETRY, DETECTOR, tmp_path / "cache")
    assert err.value.kind == "unreadable_media", err.value.message
    assert err.value.message.endswith(f"; it changed as this job analysed it before (its size went from {len(whole):,} "
                                      "to 2,000 bytes): where a copy of it was not finished then, run the same "
                                      "manifest again once it is")  # fmt: skip
