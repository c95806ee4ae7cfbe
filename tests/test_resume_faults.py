"""Reruns skip finished work; a worker actor killed mid-run costs no job (real Ray)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from heygem_ray import RenderConfig, RunConfig, media, storage, submit
from heygem_ray.driver import RunCallbacks, resume
from heygem_ray.errors import RunStopped
from heygem_ray.job.compose import PARTIAL_SUFFIX
from heygem_ray.manifest import Job
from heygem_ray.results import JobResult
from tests.helpers.media import make_excerpt


@pytest.fixture
def folder(tmp_path, examples):
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.2)
    make_excerpt(examples / "lesson2.mp3", tmp_path / "b.wav", seconds=1.6)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    shutil.copy(examples / "presenter.mp4", tmp_path / "p.mp4")
    return tmp_path


def _run(folder: Path, rows: list[str], callbacks: RunCallbacks | None = None, **kw) -> dict[str, dict]:
    (folder / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    render = kw.pop("render", RenderConfig())
    cfg = RunConfig(
        output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines", render=render, **kw
    )
    summary = submit(folder / "m.csv", cfg, callbacks)
    table = pq.read_table(summary.results_path).to_pylist()
    assert len(table) == len(rows) and len({r["job_id"] for r in table}) == len(rows)
    return {r["job_id"]: r for r in table}


class _Again(RunCallbacks):
    """What a run says it renders again, and why."""

    def __init__(self) -> None:
        self.why: dict[str, int] = {}

    def again(self, why: dict[str, int]) -> None:
        self.why = why


def test_a_rerun_skips_complete_jobs_and_renders_missing_or_damaged_ones(folder, ray_local):
    """And says why it renders again what an earlier run finished: the MP4s removed or cut
    short, other render settings (which it names)."""
    rows = ["one,a.wav,p.jpg", "two,b.wav,p.jpg"]
    first = _run(folder, rows)
    assert [first[j]["status"] for j in ("one", "two")] == ["ok", "ok"]
    stamp = {j: Path(first[j]["output"]).stat().st_mtime_ns for j in first}
    # what a run killed as it wrote a row and its table leaves: gone at the next run
    out = folder / "out"
    halves = [out / resume.PARTS_DIR / ".0123abcd.parquet.89abcdef.tmp",
              storage.staging_file(out / "results.parquet", folder, ".parquet.tmp")]  # fmt: skip
    for half in halves:
        half.write_bytes(b"half a table")

    again = _run(folder, rows)
    assert not [h for h in halves if h.exists()]
    assert [again[j]["status"] for j in ("one", "two")] == ["skipped", "skipped"]
    assert {j: Path(again[j]["output"]).stat().st_mtime_ns for j in again} == stamp
    assert again["one"]["frames"] == first["one"]["frames"] and again["one"]["attempts"] == 0

    Path(first["one"]["output"]).unlink()
    out_two = Path(first["two"]["output"])
    out_two.write_bytes(out_two.read_bytes()[:2000])  # damaged: must not count as done
    said = _Again()
    third = _run(folder, rows, said)
    assert [third[j]["status"] for j in ("one", "two")] == ["ok", "ok"]
    assert len(media.read_video(out_two)[0]) == first["two"]["frames"]
    assert said.why == {"its MP4 was replaced or removed since": 2}

    forced = _run(folder, rows, force=True)
    assert [forced[j]["status"] for j in ("one", "two")] == ["ok", "ok"]

    # An MP4 whose row was not kept (the run killed between the two; a job renamed): rendered
    # again, saying why, where a run rendered it over the file without a word.
    resume.part_path(folder / "out", "one").unlink()  # type: ignore[union-attr]
    said = _Again()
    unkept = _run(folder, rows, said)
    assert [unkept[j]["status"] for j in ("one", "two")] == ["ok", "skipped"]
    assert said.why == {"its MP4 is there, but no row was kept for its job id (a job renamed, or a run stopped as it "
                        "ended)": 1}  # fmt: skip

    # Other render settings are other outputs: nothing is skipped, and the run says which changed.
    said = _Again()
    looped = _run(folder, rows, said, render=RenderConfig(loop="forward", reference_start=0.5))
    assert [looped[j]["status"] for j in ("one", "two")] == ["ok", "ok"]
    assert said.why == {"the render settings changed (loop pingpong → forward, reference_start (not set) → 0.5)": 2}
    assert resume.again_lines(said.why) == ["2 rows an earlier run finished will be rendered again:",
                                            "  2: the render settings changed (loop pingpong → forward, "
                                            "reference_start (not set) → 0.5)"]  # fmt: skip


@pytest.mark.parametrize("keep", [0.5, 0.9999, 2000])  # bytes kept: half, all but the last few, the first 2000
def test_an_output_cut_short_is_not_complete(tmp_path, examples, keep):
    """The rerun check reads the frame count from the MP4's index, decoding nothing; a copy
    cut short keeps that index (it comes first: +faststart) but fails the check."""
    out = tmp_path / "out.mp4"
    with media.VideoWriter(out, width=64, height=48, fps=Fraction(25), audio=examples / "lesson1.wav", duration=2.0) as w:
        w.write(np.zeros((50, 48, 64, 3), np.uint8))
    assert resume._complete(out, {"frames": 50})
    assert not resume._complete(out, {"frames": 49})
    data = out.read_bytes()
    out.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    assert not resume._complete(out, {"frames": 50})


def test_a_jobs_cleanup_deletes_its_own_partials_and_no_other_jobs(tmp_path):
    """Job ids may hold dots: the partials of `a.v2` and `a.v2.x` begin with `.a.`, and an
    output `a.mov` has the stem of `a.mp4`; finishing `a` must leave all of them alone."""
    out = tmp_path / "out"
    names = ("a.mp4", "a.v2.mp4", "a.v2.x.mp4", "a.mov")
    partials = {name: storage.staging_file(out / name, tmp_path, PARTIAL_SUFFIX) for name in names}
    for path in partials.values():
        path.write_bytes(b"half a video")
    assert partials["a.v2.mp4"].name.startswith(".a.v2.") and partials["a.v2.mp4"].name.endswith(PARTIAL_SUFFIX)
    job = Job(row=1, job_id="a", audio=tmp_path / "a.wav", video=tmp_path / "p.jpg", output=out / "a.mp4")
    result = JobResult.for_job(job, "warp")
    result.status, result.attempts = "ok", 2  # its first attempt lost with its node

    resume.record(out, result)
    assert sorted(p.name for p in out.glob(f"*{PARTIAL_SUFFIX}")) == sorted(
        partials[n].name for n in names if n != "a.mp4"
    )


@pytest.mark.parametrize(("status", "attempts", "kind", "cleaned"), [
    ("ok", 1, None, False),  # its one attempt published its MP4: the folder is not listed
    ("failed", 1, "unreadable_media", False),  # its one attempt ended in its own process
    ("failed", 1, "stalled", True),  # its process killed (--max-attempts 1)
    ("failed", 1, "worker_lost", True),
    ("ok", 3, None, True),
])  # fmt: skip
def test_a_folder_is_listed_for_partials_only_after_an_attempt_was_killed(tmp_path, status, attempts, kind, cleaned):
    """A night of 20,000 rows into one folder listed it once a row (8 minutes of the
    driver's loop at 20,000 MP4s): only a row one of whose attempts was killed can have
    left a partial (a row whose only attempt published its MP4 left none; a leftover of
    an earlier run's killed attempt was removed as the run started)."""
    out = tmp_path / "out"
    left = storage.staging_file(out / "a.mp4", tmp_path, PARTIAL_SUFFIX)
    left.write_bytes(b"half a video")
    job = Job(row=1, job_id="a", audio=tmp_path / "a.wav", video=tmp_path / "p.jpg", output=out / "a.mp4")
    result = JobResult.for_job(job, "warp")
    result.status, result.attempts, result.error_kind = status, attempts, kind
    resume.record(out, result)
    assert left.exists() is not cleaned
    assert resume.part_path(out, "a").exists()


def test_an_mp4_removed_with_its_folder_before_its_row_is_kept_makes_the_row_storage(tmp_path):
    """A cleanup deletes the output folder between a job publishing its MP4 and the driver
    keeping its row (which makes the folder again): the row said `ok` for a video that was
    not there, and `status` counted it."""
    out = tmp_path / "out"
    job = Job(row=3, job_id="a", audio=tmp_path / "a.wav", video=tmp_path / "p.jpg", output=out / "a.mp4")
    out.mkdir()
    (out / "a.mp4").write_bytes(b"a finished video")
    result = JobResult.for_job(job, "warp")
    result.status, result.output_bytes, result.frames = "ok", 16, 25
    shutil.rmtree(out)
    kept = resume.record(out, result)
    (row,) = pq.read_table(resume.part_path(out, "a")).to_pylist()
    assert (kept.status, row["status"], row["error_kind"], row["output_bytes"]) == ("failed", "failed", "storage", None)
    assert row["error"] == (f"row 3 (job 'a'): its MP4 {out / 'a.mp4'} was written, then removed before its row was "
                            "kept (was the output folder deleted or cleaned during the run?); run the same manifest "
                            "again to render it")  # fmt: skip


def test_a_folder_that_cannot_be_listed_keeps_its_partials_and_the_row_is_kept(tmp_path):
    """The clean-up after a retried job is best effort: an output folder its run may write
    but not list (mode 0333; the run a process without capabilities) keeps the partial,
    says so, and the row is on disk; before, the PermissionError stopped the whole run."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: a process without capabilities cannot be started")
    out, videos = tmp_path / "out", tmp_path / "out" / "videos"
    left = storage.staging_file(videos / "a.mp4", tmp_path, PARTIAL_SUFFIX)
    left.write_bytes(b"half a video")
    videos.chmod(0o333)
    script = (
        "import sys; from pathlib import Path; from heygem_ray.driver import resume; "
        "from heygem_ray.manifest import Job; from heygem_ray.results import JobResult\n"
        "out = Path(sys.argv[1]); job = Job(row=1, job_id='a', audio=out / 'a.wav', video=out / 'p.jpg', "
        "output=out / 'videos' / 'a.mp4')\n"
        "result = JobResult.for_job(job, 'warp'); result.status, result.attempts = 'ok', 2\n"
        "resume.record(out, result)\n"
    )
    proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--", sys.executable, "-c", script,
                           str(out)], capture_output=True, text=True, timeout=60)  # fmt: skip
    videos.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "temporary MP4s left by stopped jobs were not removed (PermissionError" in proc.stderr
    assert "the next run tries again" in proc.stderr
    assert left.exists() and resume.part_path(out, "a").exists()


def test_jobs_whose_ids_extend_each_other_render_at_once_and_leave_no_partial(folder, ray_local):
    """`a` ends while `a.v2` and `a.v2.x` are still writing their MP4s: its cleanup must
    not delete theirs (which failed their publish step)."""
    make_excerpt(folder / "b.wav", folder / "short.wav", seconds=0.3, start=0.3)
    rows = ["a,short.wav,p.mp4", "a.v2,b.wav,p.mp4", "a.v2.x,b.wav,p.mp4"]
    results = _run(folder, rows, render=RenderConfig(chunk_frames=8))
    assert {j: r["status"] for j, r in results.items()} == {"a": "ok", "a.v2": "ok", "a.v2.x": "ok"}, [
        r["error"] for r in results.values()
    ]
    for r in results.values():
        assert len(media.read_video(Path(r["output"]))[0]) == r["frames"] > 0
    assert sorted(p.name for p in (folder / "out").iterdir() if not p.name.startswith(".heygem")) == [
        "a.mp4", "a.v2.mp4", "a.v2.x.mp4", "results.parquet"
    ]


class _KillWorkerAfterFirstJob(RunCallbacks):
    """Kills a model-worker actor (Ray restarts it) as soon as the first job finishes."""

    def __init__(self) -> None:
        self.killed: list[str] = []

    def job_done(self, result) -> None:
        import ray

        if not self.killed:
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "model-worker" in a["name"]]
            for name in names:
                ray.kill(ray.get_actor(name), no_restart=False)
            self.killed = names


def test_a_killed_worker_actor_is_restarted_and_every_job_ends_ok_exactly_once(folder, ray_local):
    rows = [f"job{i},{'ab'[i % 2]}.wav,p.mp4" for i in range(5)]
    cb = _KillWorkerAfterFirstJob()
    results = _run(folder, rows, cb, render=RenderConfig(chunk_frames=8))
    assert cb.killed, "no model worker was found to kill"
    assert all(r["status"] == "ok" for r in results.values()), [r["error"] for r in results.values()]
    for r in results.values():
        frames, _ = media.read_video(Path(r["output"]))
        assert len(frames) == r["frames"] > 0
        assert 1 <= r["attempts"] <= 3


def test_a_driver_killed_mid_run_is_resumed_by_running_it_again(folder, ray_join):
    """SIGKILL the whole `heygem-ray submit` process group (its local Ray too) after its
    first finished job; run it again (joining the test process's Ray instance)."""
    import os
    import signal
    import sys
    import time

    rows = [f"job{i},{'ab'[i % 2]}.wav,p.mp4" for i in range(6)]
    (folder / "m.csv").write_text("job_id,audio,video\n" + "\n".join(rows) + "\n")
    exe = str(Path(sys.executable).with_name("heygem-ray"))
    args = [exe, "submit", "m.csv", "-o", "out", "--cache-dir", "cache", "--engines", "engines", "--chunk-frames", "8"]
    driver = subprocess.Popen(args, cwd=folder, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    parts = folder / "out" / ".heygem-results"
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and any(parts.glob("*.parquet"))):
        assert driver.poll() is None, driver.stdout.read().decode()[-2000:] if driver.stdout else ""
        assert time.monotonic() < deadline, "no job finished within 300 s"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    recorded = [pq.read_table(p).to_pylist()[0] for p in parts.glob("*.parquet")]
    finished = {r["job_id"] for r in recorded}
    assert 1 <= len(finished) < len(rows), "the kill came too late to interrupt anything"
    assert not (folder / "out" / "results.parquet").exists()
    # An MP4 under a job's name is always complete: every frame its index lists decodes
    # (a file cut short keeps an index that lists them all), as many as its row says. (One
    # may have no row yet: the kill can fall between the MP4's rename and the row's write;
    # that job renders again.)
    frames = {r["job_id"]: r["frames"] for r in recorded}
    for mp4 in (folder / "out").glob("[!.]*.mp4"):
        decoded = len(media.read_video(mp4)[0])
        assert decoded == media.probe_video(mp4).frames > 0, mp4
        assert decoded == frames.get(mp4.stem, decoded), mp4
    # A partial of the job in flight, as a killed run can leave one:
    storage.staging_file(folder / "out" / "job5.mp4", folder, PARTIAL_SUFFIX).write_bytes(b"half a video")

    again = subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=600, env=ray_join)
    assert again.returncode == 0, again.stderr[-3000:]
    table = {r["job_id"]: r for r in pq.read_table(folder / "out" / "results.parquet").to_pylist()}
    assert set(table) == {r.split(",")[0] for r in rows}
    assert {j for j, r in table.items() if r["status"] == "skipped"} == finished
    assert all(r["status"] == "ok" for j, r in table.items() if j not in finished)
    for r in table.values():
        assert len(media.read_video(Path(r["output"]))[0]) == r["frames"] > 0
    assert [p.name for p in (folder / "out").iterdir() if p.name.endswith(".part.mp4")] == []


def _segment(src: Path, dst: Path, start: float, seconds: float) -> Path:
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-ss", str(start), "-i", str(src), "-t", str(seconds),
                    str(dst)], check=True)  # fmt: skip
    return dst


def test_a_rerun_renders_again_what_changed_under_the_same_names(folder, examples, ray_local):
    """After a first run, `one`'s lesson is re-recorded (other words, as long: the same size,
    its modification time set back) and `two`'s MP4 is replaced by another of as many
    frames (here `one`'s, as a run killed between publishing an MP4 and recording its row
    can leave one). Paths, sizes, times and frame counts all say complete; the contents
    do not, so both render again. Then nothing has changed: both are skipped."""
    _segment(examples / "lesson1.wav", folder / "a.wav", 0.0, 1.0)
    _segment(examples / "lesson1.wav", folder / "b.wav", 1.0, 1.0)
    rows = ["one,a.wav,p.jpg", "two,b.wav,p.jpg"]
    first = _run(folder, rows)
    assert [first[j]["status"] for j in ("one", "two")] == ["ok", "ok"]
    one, two = Path(first["one"]["output"]), Path(first["two"]["output"])

    was = (folder / "a.wav").stat()
    _segment(examples / "lesson1.wav", folder / "a.wav", 3.0, 1.0)  # other words, as long
    os.utime(folder / "a.wav", ns=(was.st_atime_ns, was.st_mtime_ns))
    assert (folder / "a.wav").stat().st_size == was.st_size
    shutil.copyfile(one, two)
    assert media.indexed_frames(two) == first["two"]["frames"]
    said = _Again()
    again = _run(folder, rows, said)
    assert said.why == {"its audio file changed": 1, "its MP4 was replaced or removed since": 1}
    assert [again[j]["status"] for j in ("one", "two")] == ["ok", "ok"], [again[j]["error"] for j in again]
    assert again["one"]["audio_identity"] != first["one"]["audio_identity"]
    assert two.read_bytes() != one.read_bytes() and len(media.read_video(two)[0]) == again["two"]["frames"]

    third = _run(folder, rows)
    assert [third[j]["status"] for j in ("one", "two")] == ["skipped", "skipped"]
    assert {third[j]["run_id"] for j in third} == {again["one"]["run_id"]}  # the run that rendered them


def test_rows_render_with_the_reference_settings_they_give_themselves_and_a_rerun_says_which_changed(
    folder, ray_local
):
    """The bundled 4-s take in three rows: one with the run's settings, one from 2 s in for
    1.5 s (its own cells), one whose start is out of range (it fails alone, naming its cell
    and the rule). Each row keeps what it was rendered with, from its own template; a rerun
    skips both; a changed cell renders that row alone again, saying what changed."""

    def manifest(start: float) -> None:
        (folder / "m.csv").write_text("job_id,audio,video,reference_start,reference_seconds\n"
                                      f"one,a.wav,p.mp4,,\ntwo,a.wav,p.mp4,{start},1.5\nbad,a.wav,p.mp4,-1,\n")  # fmt: skip

    def run(callbacks: RunCallbacks | None = None) -> dict[str, dict]:
        cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines")
        return {r["job_id"]: r for r in pq.read_table(submit(folder / "m.csv", cfg, callbacks).results_path).to_pylist()}

    manifest(2)
    first = run()
    assert (first["one"]["status"], first["two"]["status"]) == ("ok", "ok"), [first[j]["error"] for j in first]
    assert (first["bad"]["status"], first["bad"]["error_kind"]) == ("failed", "bad_argument")
    assert "its own reference_start -1: must be 0 (each reference from its beginning)" \
           in first["bad"]["error"]  # fmt: skip
    own = json.loads(first["two"]["render_settings"])
    assert (own["reference_start"], own["reference_seconds"]) == (2.0, 1.5)
    assert "reference_start" not in json.loads(first["one"]["render_settings"])
    assert first["one"]["config_hash"] != first["two"]["config_hash"]
    made = sorted((m.get("start_seconds") or 0.0, m["frames"]) for m in
                  (json.loads(p.read_text()) for p in (folder / "cache").glob("*/meta.json")))  # fmt: skip
    assert made == [(0.0, 100), (2.0, 37)]  # the take whole, and its 1.5 s from 2 s in

    again = run()
    assert (again["one"]["status"], again["two"]["status"]) == ("skipped", "skipped")
    manifest(1)
    said = _Again()
    third = run(said)
    assert (third["one"]["status"], third["two"]["status"]) == ("skipped", "ok")
    assert said.why == {"the render settings changed (reference_start 2 → 1)": 1}


def test_new_weights_at_the_same_checkpoint_path_are_rendered_again_the_same_elsewhere_are_not(folder, ray_local):
    """New weights written over the old checkpoint: same path, same size, its modification
    time set back (as a sync tool may leave it). The row renders again with them. The same
    weights at another path do not."""
    from tests.helpers.wav2lip_ckpt import write_random_checkpoint

    make_excerpt(folder / "a.wav", folder / "short.wav", seconds=0.4, start=0.3)
    ckpt = write_random_checkpoint(folder / "wav2lip.pth", seed=0)
    render = RenderConfig(pack="wav2lip", checkpoint=ckpt, backend="pytorch")
    rows = ["one,short.wav,p.jpg"]
    first = _run(folder, rows, render=render)
    assert first["one"]["status"] == "ok", first["one"]["error"]
    assert _run(folder, rows, render=render)["one"]["status"] == "skipped"

    was = ckpt.stat()
    write_random_checkpoint(ckpt, seed=1)
    os.utime(ckpt, ns=(was.st_atime_ns, was.st_mtime_ns))
    assert ckpt.stat().st_size == was.st_size
    again = _run(folder, rows, render=render)
    assert again["one"]["status"] == "ok" and again["one"]["weights_digest"] != first["one"]["weights_digest"]
    assert again["one"]["config_hash"] == first["one"]["config_hash"]  # the same settings, other weights

    # The same weights moved to another folder (a cluster's new weights share): the row is
    # complete, where the path in the settings had every row rendered again.
    (folder / "weights").mkdir()
    moved = Path(shutil.move(ckpt, folder / "weights" / "wav2lip.pth"))
    said = _Again()
    later = _run(folder, rows, said, render=RenderConfig(pack="wav2lip", checkpoint=moved, backend="pytorch"))
    assert later["one"]["status"] == "skipped" and not said.why
    write_random_checkpoint(moved, seed=2)  # other weights there: rendered again, saying so
    said = _Again()
    last = _run(folder, rows, said, render=RenderConfig(pack="wav2lip", checkpoint=moved, backend="pytorch"))
    assert last["one"]["status"] == "ok" and said.why == {"the weights changed": 1}


class _StopAfterFirstJob(RunCallbacks):
    def job_done(self, result) -> None:
        raise RuntimeError("stopped by the test after its first job")


def test_a_stopped_run_says_stopped_for_its_unfinished_jobs_never_an_earlier_runs_ok(folder, ray_local):
    """An earlier run rendered every row with other settings. This run stops after its first
    job: the rows of its other jobs say 'stopped', not the earlier run's 'ok'."""
    rows = [f"job{i},a.wav,p.jpg" for i in range(3)]
    earlier = _run(folder, rows)
    assert {r["status"] for r in earlier.values()} == {"ok"}
    cfg = RunConfig(output_dir=folder / "out", cache_dir=folder / "cache", engines_dir=folder / "engines",
                    render=RenderConfig(loop="forward"))  # fmt: skip
    with pytest.raises(RunStopped, match="stopped by the test after its first job"):
        submit(folder / "m.csv", cfg, _StopAfterFirstJob())
    table = {r["job_id"]: r for r in pq.read_table(folder / "out" / "results.parquet").to_pylist()}
    (ended,) = [r for r in table.values() if r["status"] == "ok"]
    assert ended["config_hash"] == cfg.config_hash() != earlier[ended["job_id"]]["config_hash"]
    for r in table.values():
        if r is not ended:
            assert (r["status"], r["error_kind"]) == ("failed", "stopped")
            assert r["run_id"] == ended["run_id"] != earlier[r["job_id"]]["run_id"]


def test_a_row_an_older_version_kept_is_not_trusted_and_still_reads(tmp_path, examples):
    """A part file written before rows carried their identities: never trusted (rendered
    again), never a crash, and not a row of this run's table."""
    out = tmp_path / "out"
    job = Job(row=1, job_id="one", audio=examples / "lesson1.wav", video=examples / "presenter.jpg",
              output=out / "one.mp4")  # fmt: skip
    out.mkdir()
    with media.VideoWriter(job.output, width=64, height=48, fps=Fraction(25), audio=job.audio, duration=2.0) as w:
        w.write(np.zeros((50, 48, 64, 3), np.uint8))
    old = JobResult.for_job(job, "warp")
    old.status, old.frames, old.output_bytes, old.config_hash = "ok", 50, job.output.stat().st_size, "h"
    row = {k: v for k, v in old.to_row().items() if k not in ("run_id", "weights_digest", "audio_identity",
                                                               "video_identity", "output_mtime_ns")}  # fmt: skip
    resume.part_path(out, job.job_id).parent.mkdir()
    pq.write_table(pa.Table.from_pylist([row]), resume.part_path(out, job.job_id))

    said: list[str] = []
    assert resume.split([job], out, resume.Basis("now", "h", "none"), on_again=lambda j, why: said.append(why)) == (
        [job], set())  # fmt: skip
    assert said == ["its earlier row is an older version's, which did not record what it was rendered from"]
    resume.write_merged([job], out, set(), "warp", out / "results.parquet", run_id="now", stopped="interrupted")
    (merged,) = pq.read_table(out / "results.parquet").to_pylist()
    assert (merged["status"], merged["error_kind"], merged["run_id"]) == ("failed", "stopped", "now")


def test_a_single_core_cluster_does_not_hang(tmp_path, examples):
    """One CPU: the model worker must leave it to the job tasks (in a fresh Ray, in a subprocess)."""
    import sys

    code = f"""
import ray, logging
from pathlib import Path
from heygem_ray import RunConfig, submit
ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
s = submit(Path({str(tmp_path / 'm.csv')!r}), RunConfig(output_dir=Path({str(tmp_path / 'out')!r}),
           cache_dir=Path({str(tmp_path / 'c')!r}), engines_dir=Path({str(tmp_path / 'e')!r})))
print([r.status for r in s.results])
"""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=0.8)
    (tmp_path / "m.csv").write_text(f"audio,video\na.wav,{examples / 'presenter.jpg'}\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "['ok']"


def test_rows_that_ended_as_the_run_stopped_stop_being_kept_at_the_first_that_cannot_be(tmp_path, ray_local, caplog):
    """The run stops; three jobs had ended unread. Keeping the first one's row fails in its
    storage (the store that stopped the run, not answering): the other two are not tried,
    each of which would wait a minute or more for it (found by an audit: a run whose bucket
    hung did not end in 45 minutes), and the log says how many. A row that fails for
    another reason of its own leaves the others to be kept."""
    from heygem_ray.driver import loop

    @ray_local.remote
    def ended(row: int) -> JobResult:
        job = Job(row=row, job_id=f"j{row}", audio=tmp_path / "a.wav", video=tmp_path / "p.jpg", output=None)
        result = JobResult.for_job(job, "warp")
        result.status = "ok"
        return result

    def pending() -> dict:
        refs = {ended.remote(row): (Job(row=row, job_id=f"j{row}", audio=tmp_path / "a.wav", video=tmp_path / "p.jpg",
                                        output=None), 1) for row in (1, 2, 3)}  # fmt: skip
        ray_local.wait(list(refs), num_returns=3)
        return refs

    tried: list[int] = []

    def keep(result: JobResult) -> None:
        tried.append(result.row)
        raise storage.InputError("could not write s3://b/out/.parts/x (timed out)", kind="storage")

    loop._keep_ended(pending(), RunConfig(output_dir=tmp_path / "out"), "hash", keep)
    assert len(tried) == 1
    said = [r.getMessage() for r in caplog.records if "handing on its row failed" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("could not write s3://b/out/.parts/x (timed out); the 2 other jobs "
                                               "that ended too say 'stopped'")  # fmt: skip
    kept: list[int] = []

    def keep_but_one(result: JobResult) -> None:
        if not kept:
            kept.append(0)
            raise ValueError("a row of its own that cannot be written")
        kept.append(result.row)

    loop._keep_ended(pending(), RunConfig(output_dir=tmp_path / "out"), "hash", keep_but_one)
    assert len(kept) == 3  # the first failed alone; the two others kept
