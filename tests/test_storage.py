"""Buckets as inputs, outputs and engine store, against a real S3 server on loopback
(moto's, started as a subprocess)."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from heygem_ray import media, storage
from heygem_ray.driver import resume
from heygem_ray.engines import EngineStore
from heygem_ray.errors import InputError, storage_error, storage_error_in
from heygem_ray.identity import input_identity
from heygem_ray.manifest import Job, read_manifest
from heygem_ray.results import JobResult
from heygem_ray.storage import Uri
from tests.helpers.media import make_excerpt

REPO = Path(__file__).resolve().parents[1]


# -- names (no server) --------------------------------------------------------------------


def test_uri_names_work_like_paths():
    u = Uri.parse("s3://bucket/lessons/../out/job.mp4")
    assert str(u) == "s3://bucket/out/job.mp4" and u.bucket == "bucket"
    assert (u.name, u.stem, u.suffix) == ("job.mp4", "job", ".mp4")
    assert u.parent == Uri.parse("s3://bucket/out") and u.parent / "x.wav" == Uri.parse("s3://bucket/out/x.wav")
    assert u.with_name("b.mp4") == Uri("s3", "bucket/out/b.mp4") and u.resolve() is u
    assert storage.is_inside(u, Uri.parse("s3://bucket/out")) and not storage.is_inside(u, Uri.parse("s3://bucket/o"))
    assert not storage.is_inside(u, Path("/bucket/out"))
    assert Uri.parse("gs://b") / "s3://c/d" == Uri("s3", "c/d")  # a URI replaces, as an absolute path does


@pytest.mark.parametrize("text", ["s3://", "s3://bucket/../other/key", "file:///x", "s3:bucket"])
def test_uri_parse_refuses_what_names_no_object_in_a_bucket(text):
    with pytest.raises(ValueError):
        Uri.parse(text)


def test_location_takes_text_paths_and_uris_that_went_through_pathlib():
    assert storage.location("s3://b/k") == Uri("s3", "b/k")
    # An option of type Path (typer, argparse) turns "s3://b/k" into "s3:/b/k".
    assert storage.location(Path("s3://b/k")) == Uri("s3", "b/k")
    assert storage.location("gs://b/k/") == Uri("gs", "b/k")
    assert storage.location("out/s3:/x") == Path("out/s3:/x")
    assert storage.location(Path("rel/dir")) == Path("rel/dir")
    # A scheme in capitals (a spreadsheet's autocorrect: "S3://") was a key relative to the
    # manifest's folder, "<folder>/S3:/b/k", its row failing missing_file.
    assert storage.location("S3://b/k") == Uri("s3", "b/k") and storage.location(Path("Gs://b/K")) == Uri("gs", "b/K")


@pytest.mark.parametrize(
    "text",
    [
        "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMIK7MDENG@bucket/media/a.wav",
        "s3:/AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG+b@bucket/a.wav",  # folded by pathlib; a "/" in the secret
        "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG",  # no bucket after it at all
        "gs://bucket/a.wav?access_key=AKIAIOSFODNN7EXAMPLE&secret_key=wJalrXUtnFEMIK7MDENG",
        "s3://bucket?secret_key=wJalrXUtnFEMIK7MDENG/a.wav",
    ],
)
def test_credentials_inside_a_uri_are_refused_without_repeating_them(text):
    with pytest.raises(InputError) as info:
        storage.location(text)
    said = info.value.message
    assert info.value.kind == "credentials_in_uri"
    assert "AKIAIOSFODNN7EXAMPLE" not in said and "wJalrXUtnFEMI" not in said and "K7MDENG" not in said
    assert "***" in said and "AWS_ACCESS_KEY_ID" in said and "GOOGLE_APPLICATION_CREDENTIALS" in said
    assert "wJalrXUtnFEMI" not in storage.redact(text)


def test_an_at_sign_in_a_key_is_no_credential():
    assert storage.location("s3://bucket/people/ann@example.com/a.wav") == Uri("s3", "bucket/people/ann@example.com/a.wav")
    assert storage.redact("s3://bucket/people/ann@example.com/a.wav") == "s3://bucket/people/ann@example.com/a.wav"


# -- a real S3 server -----------------------------------------------------------------------


def _keys(bucket: Uri) -> dict[str, int]:
    return {str(k)[len(str(bucket)) + 1 :]: n for k, n in storage.list_files(bucket, recursive=True).items()}


def test_a_local_write_reaches_the_disk_before_and_after_its_rename(tmp_path, monkeypatch):
    """A finished MP4 (published) and a kept row (written whole) are flushed to the disk,
    then renamed, and the rename flushed: before, both were renamed with their data still in
    memory, and a machine that crashed then could bring them back empty under their names."""
    synced: list[tuple[str, bool]] = []  # (the path flushed, whether the final name existed then)
    fsync = os.fsync
    dest, row = tmp_path / "out" / "lesson.mp4", tmp_path / "rows" / "job.parquet"
    final = [dest]

    def recorded(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), final[0].exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    staged = tmp_path / "out" / ".lesson.mp4.partial"
    staged.parent.mkdir()
    staged.write_bytes(b"\0" * 4096)
    storage.publish(staged, dest)
    assert synced == [(str(staged), False), (str(dest.parent), True)]
    assert dest.read_bytes() == b"\0" * 4096 and not staged.exists()
    synced.clear()
    final[0] = row
    storage.write_bytes(row, b"row")
    (file, before), (folder, after) = synced
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/rows/\.job\.parquet\.[0-9a-f]+\.tmp", file) and not before
    assert (folder, after) == (str(tmp_path / "rows"), True)
    assert row.read_bytes() == b"row"
    synced.clear()
    storage.write_bytes(tmp_path / "cache" / "digest.json", b"{}", durable=False)  # a cache's entry: not flushed
    assert synced == [] and (tmp_path / "cache" / "digest.json").read_bytes() == b"{}"


def test_objects_are_written_read_listed_and_removed(bucket):
    storage.write_bytes(bucket / "a/b.txt", b"hello")
    assert storage.read_bytes(bucket / "a/b.txt") == b"hello"
    assert storage.stat(bucket / "a/b.txt").size == 5 and storage.is_dir(bucket / "a")
    assert storage.stat(bucket / "a/none.txt") is None and storage.stat(bucket / "a") is None
    assert _keys(bucket) == {"a/b.txt": 5}  # no temporary key left behind
    assert storage.list_files(bucket / "a") == {bucket / "a/b.txt": 5}
    assert storage.list_files(bucket / "nothing") == {}
    storage.remove(bucket / "a/b.txt")
    storage.remove(bucket / "a/b.txt")  # already gone: fine
    assert _keys(bucket) == {}


# Names as a manifest's job ids make them (manifest._id_problem): any script, spaces, punctuation.
PEOPLES_NAMES = ("Lesson 1-presenter.mp4", "课程二-讲师.mp4", "Einführung (Teil 2) & Übung.mp4", "a+b=c,d;e@f!~'[x].mp4")


@pytest.mark.parametrize("name", PEOPLES_NAMES)
def test_objects_named_as_people_name_lessons_round_trip(bucket, tmp_path, name):
    """An MP4 named after its job id is published, found, listed and read back under that
    very key, and its URI, written as text (the results table) and read again, is the same."""
    dest = bucket / "out" / name
    local = tmp_path / "staged.mp4"
    local.write_bytes(b"mp4 bytes")
    storage.publish(local, dest)
    assert _keys(bucket) == {f"out/{name}": 9}
    assert storage.stat(dest).size == 9 and storage.read_bytes(dest) == b"mp4 bytes"
    assert storage.list_files(bucket / "out") == {dest: 9}
    assert storage.location(str(dest)) == dest


class _BrokenSource(io.RawIOBase):
    """A stream that gives ``good`` bytes, then fails like a disk read error."""

    def __init__(self, good: int):
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            raise OSError(5, "Input/output error (injected)")
        n = min(len(b), self.left)
        b[:n] = b"\x01" * n
        self.left -= n
        return n


def test_a_failed_upload_leaves_no_partial_object(bucket):
    # 24 MiB before the failure: pyarrow has sent parts of a multipart upload by then.
    good = 24 << 20
    # Why the temporary key: the same failure on a plain pyarrow stream publishes what it had.
    fs, _ = pafs.FileSystem.from_uri(str(bucket))
    with pytest.raises(OSError), fs.open_output_stream(f"{bucket.key}/naive.mp4") as out:
        shutil.copyfileobj(_BrokenSource(good), out, 8 << 20)
    assert _keys(bucket) == {"naive.mp4": good}
    storage.remove(bucket / "naive.mp4")

    with pytest.raises(InputError) as err:
        storage.upload(_BrokenSource(good), bucket / "out/job.mp4")
    assert err.value.kind == "storage" and "s3://" in err.value.message and "Input/output error" in err.value.message
    assert _keys(bucket) == {}  # nothing under the key, no temporary object either

    # Over an existing object: the old one stays as it was.
    storage.write_bytes(bucket / "out/job.mp4", b"the earlier video")
    with pytest.raises(InputError):
        storage.upload(_BrokenSource(good), bucket / "out/job.mp4")
    assert _keys(bucket) == {"out/job.mp4": 17}
    assert storage.read_bytes(bucket / "out/job.mp4") == b"the earlier video"


def test_a_jobs_cleanup_deletes_only_its_own_interrupted_uploads(bucket, tmp_path):
    """The temporary keys a killed upload leaves, for `a.mp4` and for the outputs of jobs
    `a.mp4` and `a.v2` (whose names begin with `a.mp4.` and `a.`): only `a.mp4`'s go."""
    tmp = bucket / "out" / storage.TMP_DIR
    keys = {name: tmp / f"{name}.{token}.tmp" for name, token in
            [("a.mp4", "0123abcd"), ("a.mp4.mp4", "4567cdef"), ("a.v2.mp4", "89ab0123")]}
    for key in keys.values():
        storage.write_bytes(key, b"half a video")
    job = Job(row=1, job_id="a", audio=tmp_path / "a.wav", video=tmp_path / "p.jpg", output=bucket / "out/a.mp4")

    result = JobResult.for_job(job, "warp")
    result.attempts = 2  # its first attempt lost with its node
    resume.record(bucket / "out", result)
    left = {k for k in _keys(bucket) if storage.TMP_DIR in k}
    assert left == {f"out/{storage.TMP_DIR}/a.mp4.mp4.4567cdef.tmp", f"out/{storage.TMP_DIR}/a.v2.mp4.89ab0123.tmp"}


def test_writing_to_a_missing_bucket_says_what_to_check(bucket):
    with pytest.raises(InputError) as err:
        storage.write_bytes(Uri("s3", f"{bucket.bucket}-missing/x.txt"), b"x")
    assert err.value.kind == "storage" and "credentials" in err.value.message


def test_a_bucket_prefix_the_run_cannot_write_stops_it_before_ray_starts(bucket, s3_env, tmp_path, examples):
    storage.check_writable(bucket / "out")
    assert _keys(bucket) == {}  # the probe is gone again
    (tmp_path / "m.csv").write_text(f"audio,video\n{examples / 'lesson1.wav'},{examples / 'presenter.jpg'}\n")
    missing = f"s3://{bucket.bucket}-missing/out"
    proc = subprocess.run([str(Path(sys.executable).with_name("heygem-ray")), "submit", "m.csv", "-o", missing],
                          cwd=tmp_path, env=_child_env(s3_env, tmp_path / "home-cache"), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: could not read {missing}/.heygem-run.lock (An error occurred (NoSuchBucket)")
    assert proc.stderr.count("\n") == 1 and "credentials" in proc.stderr and proc.stdout == ""


def test_a_run_refused_a_prefix_another_run_holds_writes_nothing_into_it(bucket, s3_server, tmp_path, examples):
    """Its write probe came before the lock (found by an audit): a refused run wrote into the
    prefix of the run that held it (a probe that one's start could take for its own
    leftovers), and left pyarrow's folder markers there."""
    from heygem_ray import locks
    from heygem_ray.driver.hold import RUN_LOCK

    out = bucket / "out"
    lease = locks.acquire(out / RUN_LOCK, "the night's run")
    assert isinstance(lease, locks.Lease)
    with lease:
        (tmp_path / "m.csv").write_text(f"audio,video\n{examples / 'lesson1.wav'},{examples / 'presenter.jpg'}\n")
        seen = len(s3_server.log.read_bytes())
        proc = subprocess.run([str(Path(sys.executable).with_name("heygem-ray")), "submit", "m.csv", "-o", str(out)],
                              cwd=tmp_path, env=_child_env(s3_server.env, tmp_path / "home-cache"),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2 and f"error: {out} is in use by another run: pid {os.getpid()} on " in proc.stderr
        asked = s3_server.log.read_bytes()[seen:].decode(errors="replace").splitlines()
        assert [r for r in asked if '"PUT ' in r or '"POST ' in r or '"DELETE ' in r] == []  # only reads
        assert _keys(bucket).keys() == {"out/" + RUN_LOCK}


def test_inputs_are_downloaded_once_per_machine_and_again_when_changed(bucket, tmp_path, monkeypatch):
    storage.write_bytes(bucket / "media/a.wav", b"RIFF one")
    calls: list[Uri] = []
    real = storage.download
    monkeypatch.setattr(storage, "download", lambda src, dest, version=None: (calls.append(src), real(src, dest, version)))
    first = storage.fetch(bucket / "media/a.wav", "audio", tmp_path)
    again = storage.fetch(bucket / "media/a.wav", "audio", tmp_path)
    assert first == again and first.read_bytes() == b"RIFF one" and first.suffix == ".wav"
    assert len(calls) == 1
    storage.write_bytes(bucket / "media/a.wav", b"RIFF two, longer")
    assert storage.fetch(bucket / "media/a.wav", "audio", tmp_path).read_bytes() == b"RIFF two, longer"
    assert len(calls) == 2
    local = tmp_path / "x.wav"
    assert storage.fetch(local, "audio", tmp_path) == local  # a local file is used where it is

    with pytest.raises(InputError) as err:
        storage.fetch(bucket / "media/gone.wav", "audio", tmp_path)
    assert err.value.kind == "missing_file" and f"audio {bucket}/media/gone.wav does not exist" in err.value.message
    with pytest.raises(InputError) as err:  # a slip: what is beside it is named
        storage.fetch(bucket / "media/A.wav", "audio", tmp_path)
    assert err.value.message.startswith(f"audio {bucket}/media/A.wav does not exist (beside it: a.wav); check the URI")
    with pytest.raises(InputError) as err:
        storage.fetch(bucket / "media", "reference", tmp_path)
    assert "is a folder" in err.value.message
    with pytest.raises(InputError) as err:  # (said "check … that these credentials may list the bucket")
        storage.fetch(Uri("s3", "heygem-no-such-bucket/media/a.wav"), "audio", tmp_path)
    assert err.value.kind == "missing_file" and err.value.message == (
        "audio s3://heygem-no-such-bucket/media/a.wav does not exist: there is no bucket 'heygem-no-such-bucket' at "
        "this endpoint; check the URI")


def test_a_manifest_in_a_bucket_resolves_its_rows_there(bucket):
    rows = [
        "rel,a.wav,media/p.jpg,",
        "uri,s3://other/x.wav,/shared/p.mp4,",
        "up,../a.wav,p.jpg,",
        "outside,a.wav,p.jpg,../../x.mp4",
        "asuri,a.wav,p.jpg,s3://elsewhere/x.mp4",
        "sub,a.wav,p.jpg,videos/sub.mp4",
    ]
    storage.write_bytes(bucket / "in/m.csv", ("job_id,audio,video,output\n" + "\n".join(rows) + "\n").encode())
    jobs = {j.job_id: j for j in read_manifest(bucket / "in/m.csv", bucket / "out")}
    assert jobs["rel"].audio == bucket / "in/a.wav" and jobs["rel"].video == bucket / "in/media/p.jpg"
    assert jobs["rel"].output == bucket / "out/rel.mp4"
    assert jobs["uri"].audio == Uri("s3", "other/x.wav") and jobs["uri"].video == Path("/shared/p.mp4")
    assert jobs["up"].audio == bucket / "a.wav"
    assert jobs["sub"].output == bucket / "out/videos/sub.mp4"
    for bad in ("outside", "asuri"):
        assert jobs[bad].output is None and jobs[bad].problem.kind == "unsafe_output"

    with pytest.raises(InputError) as err:
        read_manifest(bucket / "in/none.csv", bucket / "out")
    assert err.value.kind == "missing_file" and "check the URI" in err.value.message

    book = openpyxl.Workbook()
    for row in ["job_id,audio,video,output", *rows]:
        book.active.append(row.split(","))
    data = io.BytesIO()
    book.save(data)
    storage.write_bytes(bucket / "in/m.xlsx", data.getvalue())
    from_book = {j.job_id: j for j in read_manifest(bucket / "in/m.xlsx", bucket / "out")}
    assert [(j.audio, j.video, j.output) for j in from_book.values()] == [(j.audio, j.video, j.output) for j in jobs.values()]


def test_a_rerun_into_a_bucket_skips_a_job_whose_object_is_the_one_its_job_published(bucket, tmp_path):
    storage.write_bytes(bucket / "m.csv", b"job_id,audio,video\none,a.wav,p.jpg\n")
    storage.write_bytes(bucket / "a.wav", b"a lesson")
    storage.write_bytes(bucket / "p.jpg", b"a presenter")
    (job,) = read_manifest(bucket / "m.csv", bucket / "out")
    storage.write_bytes(job.output, b"0" * 1000)
    published = storage.stat(job.output)
    row = JobResult.for_job(job, "warp")
    row.status, row.frames, row.output_bytes, row.output_mtime_ns = "ok", 25, published.size, published.mtime_ns
    earlier = resume.Basis("earlier", "h", "none")
    resume.record(bucket / "out", earlier.stamp(row, input_identity(job.audio), input_identity(job.video)))
    now = resume.Basis("now", "h", "none")
    found: list[JobResult] = []
    todo, skipped = resume.split([job], bucket / "out", now, found.append)
    assert todo == [] and skipped == {job.row} and [(r.status, r.frames) for r in found] == [("skipped", 25)]
    assert resume.split([job], bucket / "out", resume.Basis("now", "other settings", "none"))[0] == [job]
    assert resume.split([job], bucket / "out", resume.Basis("now", "h", "sha256:other weights"))[0] == [job]
    time.sleep(1.1)  # Last-Modified counts whole seconds
    storage.write_bytes(bucket / "a.wav", b"a lesson")  # uploaded again: another object, maybe other words
    assert resume.split([job], bucket / "out", now)[0] == [job]
    resume.record(bucket / "out", earlier.stamp(row, input_identity(job.audio), input_identity(job.video)))
    assert resume.split([job], bucket / "out", now)[0] == []
    storage.write_bytes(job.output, b"1" * 1000)  # replaced by another MP4 of the same size
    assert resume.split([job], bucket / "out", now)[0] == [job]
    storage.remove(job.output)
    assert resume.split([job], bucket / "out", now)[0] == [job]
    # The temporary key a killed upload left for that output is deleted when it is rendered again.
    storage.write_bytes(bucket / f"out/{storage.TMP_DIR}/one.mp4.deadbeef.tmp", b"half")
    resume.split([job], bucket / "out", now)
    assert not any(storage.TMP_DIR in k for k in _keys(bucket))


def test_an_engine_store_in_a_bucket_builds_once_and_serves_other_machines(bucket, tmp_path):
    from heygem_ray.engines import EngineKey

    key = EngineKey("warp", "none", "render", "fp32", None, "onnxruntime", "opset18-test", "any")
    builds: list[Path] = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        tmp.write_bytes(b"an onnx graph")

    here = EngineStore(bucket / "engines", mirror=tmp_path / "m1")
    path = here.get_or_build(key, build)
    assert path.read_bytes() == b"an onnx graph" and path.is_relative_to(tmp_path / "m1")
    assert {k.rsplit("/", 1)[1] for k in _keys(bucket)} == {"model.onnx", "meta.json"}
    # Another machine (another mirror) downloads it, builds nothing.
    there = EngineStore(bucket / "engines", mirror=tmp_path / "m2")
    assert there.get_or_build(key, build).read_bytes() == b"an onnx graph" and len(builds) == 1
    (entry,) = there.list()
    assert entry.ok and entry.path == bucket / "engines" / key.dirname() / "model.onnx" and entry.size == 13
    # A damaged object is not loaded: it is rebuilt here and uploaded again.
    storage.write_bytes(bucket / "engines" / key.dirname() / "model.onnx", b"an onnx grapX")
    third = EngineStore(bucket / "engines", mirror=tmp_path / "m3")
    assert third.get_or_build(key, build).read_bytes() == b"an onnx graph" and len(builds) == 2
    # A sidecar whose artifact is gone: built again too.
    storage.remove(bucket / "engines" / key.dirname() / "model.onnx")
    fourth = EngineStore(bucket / "engines", mirror=tmp_path / "m5")
    assert fourth.get_or_build(key, build).read_bytes() == b"an onnx graph" and len(builds) == 3
    with pytest.raises(Exception, match="not built yet"):
        EngineStore(bucket / "engines2", mirror=tmp_path / "m4").get_or_build(key, build, rebuild=False)


# -- the round trip: manifest and media in a bucket, MP4s and results written back ----------

ROUND_TRIP = """
import logging, sys
import ray
from heygem_ray import RenderConfig, RunConfig, submit
from heygem_ray.storage import location

ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
bucket, cache = sys.argv[1], sys.argv[2]
# onnxruntime: a backend whose graphs go into the engine store (here, the bucket)
cfg = RunConfig(output_dir=location(bucket + "/out"), engines_dir=location(bucket + "/engines"), cache_dir=cache,
                render=RenderConfig(backend="onnxruntime"))
for attempt in ("first", "again"):
    summary = submit(bucket + "/in/manifest.csv", cfg)
    print("RESULTS", attempt, summary.results_path)
    for r in summary.results:
        print("ROW", attempt, r.job_id, r.status, r.error or "")
ray.shutdown()
"""


def _child_env(s3_env: dict[str, str], cache_home: Path) -> dict[str, str]:
    """The environment of a process that starts its own Ray: its workers inherit it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **s3_env, "XDG_CACHE_HOME": str(cache_home)}


def test_an_engine_store_in_a_bucket_out_of_reach_leaves_auto_on_pytorch_saying_why(bucket, tmp_path):
    """As with a local store that cannot be written: ``--backend auto`` renders on a backend
    that needs no store, the store's error in the worker's note; a named backend that needs
    the store fails the worker with it."""
    from heygem_ray import RenderConfig
    from heygem_ray.worker import ModelWorker
    from tests.helpers.wav2lip_ckpt import write_random_checkpoint

    gone = Uri.parse(f"s3://{bucket.bucket}-gone/engines")
    checkpoint = write_random_checkpoint(tmp_path / "wav2lip.pth")
    worker = ModelWorker(RenderConfig(pack="wav2lip", checkpoint=checkpoint), gone)
    assert worker.error is None and worker.info.backend == "pytorch"
    assert f"onnxruntime: could not read {gone}/wav2lip/" in worker.info.backend_note
    assert "check the URI, that the bucket exists, and the credentials" in worker.info.backend_note
    named = ModelWorker(RenderConfig(pack="wav2lip", checkpoint=checkpoint, backend="onnxruntime"), gone)
    assert named.error is not None and named.error.kind == "storage"
    assert named.error.message.startswith(f"could not read {gone}/wav2lip/")


def test_a_run_into_a_bucket_deletes_the_rows_and_table_a_killed_run_left_half_uploaded(bucket):
    """A run killed as it uploaded a row or its table leaves a temporary key, which a bucket
    keeps (and bills) for ever: the next run into the prefix deletes them as it starts
    (``resume.remove_leftovers``), as it does a write probe a run killed as it tried the
    prefix left, and nothing else: not the rows kept, not the MP4s' temporary keys (a job's
    own cleanup deletes those), not a key that only looks alike."""
    out = bucket / "out"
    half = [out / resume.PARTS_DIR / storage.TMP_DIR / "6a6f6231.parquet.0123abcd.tmp",
            out / resume.PARTS_DIR / storage.TMP_DIR / "6a6f6232.parquet.4567cdef.tmp",
            out / storage.TMP_DIR / "results.parquet.89ab0123.tmp", out / ".heygem-probe-0123abcd",
            out / storage.TMP_DIR / ".heygem-probe-4567cdef.89ab0123.tmp"]  # fmt: skip
    kept = [out / resume.PARTS_DIR / "6a6f6231.parquet", out / storage.TMP_DIR / "a.mp4.0123abcd.tmp",
            out / ".heygem-probe-notes.txt", out / "lessons" / ".heygem-probe-0123abcd",
            out / resume.PARTS_DIR / storage.TMP_DIR / "notes.txt", out / "results.parquet"]  # fmt: skip
    for key in half + kept:
        storage.write_bytes(key, b"half a table")

    resume.remove_leftovers(out)
    assert set(_keys(bucket)) == {k.key.partition("/")[2] for k in kept}


def test_s3_round_trip_manifest_and_media_in_a_bucket_mp4s_and_results_back(bucket, s3_env, tmp_path, examples):
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    make_excerpt(examples / "lesson1.wav", media_dir / "a.wav", seconds=1.0)
    make_excerpt(examples / "lesson2.mp3", media_dir / "b.wav", seconds=1.2)
    for name, path in [("a.wav", media_dir / "a.wav"), ("b.wav", media_dir / "b.wav"),
                       ("presenter.jpg", examples / "presenter.jpg"), ("media/presenter.mp4", examples / "presenter.mp4")]:
        storage.upload(path, bucket / "in" / name)
    rows = ["photo,a.wav,presenter.jpg", "video,b.wav,media/presenter.mp4", "video2,a.wav,media/presenter.mp4",
            "gone,nothere.wav,presenter.jpg"]
    storage.write_bytes(bucket / "in/manifest.csv", ("job_id,audio,video\n" + "\n".join(rows) + "\n").encode())

    home = tmp_path / "home-cache"
    proc = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(bucket), str(tmp_path / "templates")],
                          env=_child_env(s3_env, home), capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert f"RESULTS first {bucket}/out/results.parquet" in out
    statuses = {(p[1], p[2]): p[3] for p in (line.split(maxsplit=4) for line in out if line.startswith("ROW"))}
    assert statuses == {
        **{("first", j): "ok" for j in ("photo", "video", "video2")}, ("first", "gone"): "failed",
        **{("again", j): "skipped" for j in ("photo", "video", "video2")}, ("again", "gone"): "failed",
    }

    # What the bucket holds: the MP4s, the table, a row per job, the engines; nothing half-done.
    keys = _keys(bucket)
    assert {"out/photo.mp4", "out/video.mp4", "out/video2.mp4", "out/results.parquet"} <= set(keys)
    assert len([k for k in keys if k.startswith(f"out/{resume.PARTS_DIR}/")]) == 4
    assert any(k.startswith("engines/warp/render/onnxruntime-") and k.endswith("/model.onnx") for k in keys)
    assert not [k for k in keys if storage.TMP_DIR in k or k.endswith((".tmp", ".part.mp4"))]

    table = {r["job_id"]: r for r in pq.read_table(pa.BufferReader(storage.read_bytes(bucket / "out/results.parquet")))
             .to_pylist()}
    assert {j: r["status"] for j, r in table.items()} == {"photo": "skipped", "video": "skipped",
                                                         "video2": "skipped", "gone": "failed"}
    gone = table["gone"]
    assert gone["error_kind"] == "missing_file" and gone["error"].startswith("row 4 (job 'gone'):")
    assert f"{bucket}/in/nothere.wav does not exist" in gone["error"]
    for job in ("photo", "video", "video2"):
        r = table[job]
        assert r["output"] == f"{bucket}/out/{job}.mp4" and r["audio"].startswith(f"{bucket}/in/")
        local = tmp_path / f"{job}.mp4"
        storage.download(Uri.parse(r["output"]), local)
        assert local.stat().st_size == r["output_bytes"] == keys[f"out/{job}.mp4"]
        frames, fps = media.read_video(local)
        assert len(frames) == r["frames"] > 0 and fps == 25
        assert abs(media.probe_audio(local).duration - r["audio_seconds"]) <= 1 / 25
    # Each object was downloaded once on this machine, however many jobs used it.
    downloads = [p for p in (home / "heygem-ray" / "downloads").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert sorted(p.suffix for p in downloads) == [".jpg", ".mp4", ".wav", ".wav"]


def test_cli_submit_reads_and_writes_a_bucket_and_status_and_report_read_it_there(
    bucket, s3_env, s3_server, tmp_path, examples
):
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=0.8)
    storage.upload(tmp_path / "a.wav", bucket / "media/a.wav")
    storage.upload(examples / "presenter.jpg", bucket / "media/p.jpg")
    # Cells may be URIs, here into another folder of the bucket than the manifest's.
    storage.write_bytes(bucket / "jobs/m.csv", f"job_id,audio,video\ncli,{bucket}/media/a.wav,{bucket}/media/p.jpg\n"
                        .encode())
    exe = str(Path(sys.executable).with_name("heygem-ray"))
    args = [exe, "submit", f"{bucket}/jobs/m.csv", "-o", f"{bucket}/out", "--engines", f"{bucket}/engines",
            "--cache-dir", str(tmp_path / "templates"), "--backend", "onnxruntime"]
    proc = subprocess.run(args, cwd=tmp_path, env=_child_env(s3_env, tmp_path / "home-cache"),
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"1 of 1 jobs rendered into {bucket}/out" in proc.stdout
    assert f"results: {bucket}/out/results.parquet" in proc.stdout and f"  {bucket}/out/cli.mp4" in proc.stdout
    local = tmp_path / "cli.mp4"
    storage.download(bucket / "out/cli.mp4", local)
    assert len(media.read_video(local)[0]) == 20  # 0.8 s at the photo's 25 fps
    assert not (tmp_path / "s3:").exists()  # nothing written to a local folder named after the URI
    # The run's engines are in the bucket, and `engines list` reads them there.
    listed = subprocess.run([exe, "engines", "list", "--engines", f"{bucket}/engines"], cwd=tmp_path,
                            env=_child_env(s3_env, tmp_path / "home-cache"), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert listed.stdout.count("onnxruntime") == 2 and "NO" not in listed.stdout  # motion and render, both whole
    # `status` and `report` work on the run where it is. status reads the results, never an
    # MP4; report reads of each MP4 only ranges (its index, the stretch before each thumbnail).
    def requests_during(command: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
        before = len(s3_server.log.read_text().splitlines())
        done = subprocess.run(command, cwd=tmp_path, env=_child_env(s3_env, tmp_path / "home-cache"),
                              capture_output=True, text=True, timeout=120)
        return done, s3_server.log.read_text().splitlines()[before:]

    status, log = requests_during([exe, "status", f"{bucket}/out"])
    assert status.returncode == 0, status.stderr[-2000:]
    assert "rows      1: 1 ok, 0 failed, 0 skipped" in status.stdout and "state     complete" in status.stdout
    assert f"run       {bucket}/out" in status.stdout
    assert any("results.parquet" in line for line in log) and not any(".mp4" in line for line in log)
    made, log = requests_during([exe, "report", f"{bucket}/out"])
    assert made.returncode == 0 and made.stdout.strip() == f"{bucket}/out/report.html", made.stderr[-2000:]
    page = storage.read_bytes(bucket / "out/report.html").decode()
    thumbs = re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(thumbs) == 4
    for thumb in thumbs:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(thumb), np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[0] == 160 and img.std() > 10
    assert 'href="cli.mp4"' in page  # beside the page, in the bucket
    mp4_reads = [line for line in log if "GET /" in line and "/out/cli.mp4 " in line]
    assert mp4_reads and all('" 206 ' in line for line in mp4_reads), mp4_reads


BUILDER = """
import sys, time
from pathlib import Path
from heygem_ray.engines import EngineKey, EngineStore

bucket, mirror, log = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
key = EngineKey("warp", "none", "render", "fp32", None, "onnxruntime", "opset18-test", "any")


def build(tmp):
    with open(log, "a") as f:
        f.write(f"{mirror.name} builds\\n")
    time.sleep(3)  # long enough that the other machine asks while this one builds
    tmp.write_bytes(b"graph built by " + mirror.name.encode())


print(EngineStore(bucket + "/engines", mirror=mirror).get_or_build(key, build).read_text())
"""


def test_two_machines_that_need_one_engine_in_a_bucket_build_it_once(bucket, s3_env, tmp_path):
    """Two processes with their own mirrors (two machines) miss the same entry at once:
    one holds the build lock in the bucket and builds; the other waits for its upload.
    Both end with the one engine, and the bucket holds exactly that entry."""
    log = tmp_path / "builds.log"
    env = {**os.environ, **s3_env}
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILDER, str(bucket), str(tmp_path / name), str(log)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("m1", "m2")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    (builder,) = [line.split()[0] for line in log.read_text().splitlines()]  # one build
    assert [out.strip() for out, _ in outs] == [f"graph built by {builder}"] * 2
    assert sorted(k.rsplit("/", 1)[1] for k in _keys(bucket)) == ["meta.json", "model.onnx"]  # no lock, no partial


def test_a_build_lock_whose_builder_died_is_taken_over_by_one_of_two_waiters(bucket, tmp_path, caplog):
    """The lock an older version's builder left when it died (no heartbeat ever comes):
    two machines that need the entry wait until it is stale; then exactly one takes it over
    and builds, the other downloads that build."""
    from heygem_ray.engines import BUCKET_LOCK, EngineKey

    key = EngineKey("warp", "none", "render", "fp32", None, "onnxruntime", "opset18-test", "any")
    storage.write_bytes(bucket / "engines" / key.dirname() / BUCKET_LOCK, b"pid 1 on gone")
    builds: list[str] = []

    def build(tmp: Path) -> None:
        builds.append(tmp.parent.parent.parent.parent.name)  # the mirror: which machine built
        tmp.write_bytes(b"g")

    stores = [EngineStore(bucket / "engines", mirror=tmp_path / f"m{i}", stale_after_s=2) for i in (1, 2)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda store: store.get_or_build(key, build), stores))
    assert [p.read_bytes() for p in paths] == [b"g", b"g"] and len(builds) == 1, builds
    # Both waited for the holder first: the 2 s less up to 1 s (Last-Modified counts whole seconds).
    assert time.monotonic() - t0 > 0.9
    assert "took over the lock" in caplog.text and "'pid 1 on gone'" in caplog.text
    assert sorted(k.rsplit("/", 1)[1] for k in _keys(bucket)) == ["meta.json", "model.onnx"]


def test_a_build_longer_than_the_stale_time_keeps_its_lock_by_its_heartbeat(bucket, tmp_path):
    """A build that takes longer than a lock goes stale in (an int8 MuseTalk build on a CPU
    takes most of an hour) is not taken over while its builder lives: one build."""
    from heygem_ray.engines import EngineKey

    key = EngineKey("warp", "none", "render", "fp32", None, "onnxruntime", "opset18-test", "any")
    builds: list[str] = []

    def build(tmp: Path) -> None:
        builds.append(str(tmp))
        time.sleep(6)  # three times the time a lock without heartbeat goes stale in
        tmp.write_bytes(b"slow graph")

    stores = [EngineStore(bucket / "engines", mirror=tmp_path / f"m{i}", stale_after_s=2) for i in (1, 2)]
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(stores[0].get_or_build, key, build)
        time.sleep(1.5)  # the first one holds the lock and builds
        second = pool.submit(stores[1].get_or_build, key, build)
        paths = [first.result(timeout=60), second.result(timeout=60)]
    assert [p.read_bytes() for p in paths] == [b"slow graph"] * 2 and len(builds) == 1, builds
    assert sorted(k.rsplit("/", 1)[1] for k in _keys(bucket)) == ["meta.json", "model.onnx"]


def test_a_gcs_bucket_out_of_reach_is_a_storage_error_within_the_retry_limit(monkeypatch):
    """No credentials and no metadata server (a firewalled node, a gs:// typo on an AWS
    cluster): Google's client retried for its default 15 minutes, the run deaf to Ctrl-C.
    Here the limit is 2 s; by default 60."""
    monkeypatch.setattr(storage, "GCS_RETRY_S", 2)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # no metadata server answers
    storage._filesystem_for.cache_clear()
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        storage.stat(Uri("gs", "heygem-unreachable/lesson.wav"))
    assert time.monotonic() - start < 30
    assert err.value.kind == "storage" and "gs://heygem-unreachable/lesson.wav" in err.value.message
    storage._filesystem_for.cache_clear()


class _Relay:
    """A TCP relay in front of the S3 server that can refuse connections for a while (its
    listening socket closed, the connections through it cut): a store's passing outage.
    ``on_get``, called with each GET's request line before it is passed on, may act then
    (write the object anew) and returns how many bytes of its answer to pass before the
    connection is cut (None: all)."""

    def __init__(self, target: tuple[str, int], on_get: Callable[[str], int | None] = lambda line: None) -> None:
        self.target, self.links, self.listener, self.on_get = target, [], None, on_get
        self.hanging = False
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.up()

    def up(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        self.listener.close()
        for conn in self.links:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        self.links.clear()

    def hang(self) -> None:
        """From now on, a store that takes connections and never answers."""
        self.hanging = True
        for conn in self.links:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.links.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.hanging:
                self.links.append(client)
                continue
            server = socket.create_connection(self.target)
            self.links += [client, server]
            left: list[int | None] = [None]  # bytes of the answer to pass before the cut
            threading.Thread(target=self._requests, args=(client, server, left), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client, left), daemon=True).start()

    def _requests(self, a: socket.socket, b: socket.socket, left: list[int | None]) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if data.startswith(b"GET "):
                    left[0] = self.on_get(data.split(b"\r\n", 1)[0].decode())
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    @staticmethod
    def _answers(a: socket.socket, b: socket.socket, left: list[int | None]) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if left[0] is not None:
                    data, left[0] = data[: left[0]], left[0] - len(data)
                b.sendall(data)
                if left[0] is not None and left[0] <= 0:
                    b.shutdown(socket.SHUT_RDWR)
                    return
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


def _relayed(monkeypatch, on_get: Callable[[str], int | None] = lambda line: None) -> _Relay:
    """A relay in front of the bucket's server, which this process's clients now reach it through."""
    endpoint = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://").split(":")
    relay = _Relay((endpoint[0], int(endpoint[1])), on_get)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{relay.port}")
    storage._filesystem_for.cache_clear()
    return relay


def test_an_input_written_again_as_it_downloads_is_taken_whole_in_its_new_version(bucket, tmp_path, monkeypatch):
    """The lesson is replaced by a shorter one between the look-up and the read (found by an
    audit): the download was one ranged read of the size looked up, which pyarrow fills
    with zeros, and the row rendered a lesson half silent, `ok`, its copy cached for good.
    Now the read asks for the version looked up, and one written meanwhile is read again."""
    src, direct = bucket / "media/lesson.wav", os.environ["AWS_ENDPOINT_URL"]
    storage.write_bytes(src, b"a" * 1_000_000)
    gets: list[str] = []

    def replace_once(line: str) -> None:
        if not gets:
            with pytest.MonkeyPatch.context() as direct_env:
                direct_env.setenv("AWS_ENDPOINT_URL", direct)
                storage.write_bytes(src, b"b" * 600_000)
        gets.append(line)
        return None

    _relayed(monkeypatch, replace_once)
    got = storage.fetch(src, "audio", tmp_path / "cache")
    assert got.read_bytes() == b"b" * 600_000
    assert len(gets) == 2  # the first asked for the version looked up, and was refused
    assert [p.stat().st_size for p in (tmp_path / "cache").rglob("*.wav")] == [600_000]  # the whole new one, alone
    found = storage.head(src)  # named by the version it is
    assert found is not None and got.name.startswith(hashlib.sha256(f"{src}\0{600_000}\0{found[1]}".encode())
                                                       .hexdigest()[:32])  # fmt: skip
    storage._filesystem_for.cache_clear()


def test_an_input_whose_download_is_cut_short_is_never_kept(bucket, tmp_path, monkeypatch):
    """Every answer cut after 100 kB of a 1-MB object: no copy is kept (a cached short copy
    served every later job and rerun, even with --force), and the row's error says so."""
    src = bucket / "media/lesson.wav"
    storage.write_bytes(src, os.urandom(1_000_000))
    _relayed(monkeypatch, lambda line: 100_000)
    with pytest.raises(InputError) as err:
        storage.fetch(src, "audio", tmp_path / "cache")
    assert err.value.kind == "storage" and err.value.message.startswith(
        f"audio {src} did not download whole in {storage.FETCH_TRIES} tries (the last time, ")
    assert "run the same manifest again" in err.value.message
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []
    storage._filesystem_for.cache_clear()


def test_a_row_written_to_a_bucket_in_a_passing_outage_is_kept_once_it_is_back(bucket, tmp_path, monkeypatch):
    """The store refuses connections for a few seconds as a job ends: its row is tried again
    and kept. Before, the first refusal stopped the night, the job's MP4 published but its
    row called 'stopped', and the rerun rendered it again."""
    relay = _relayed(monkeypatch)
    monkeypatch.setattr(resume, "ROW_RETRIES_S", (0.5, 1, 2, 4))
    out = bucket / "out"
    job = Job(row=1, job_id="a", audio=tmp_path / "a.wav", video=tmp_path / "p.jpg", output=out / "a.mp4")
    result = JobResult.for_job(job, "warp")
    result.status = "ok"
    relay.down()
    threading.Timer(2.0, relay.up).start()
    start = time.monotonic()
    resume.record(out, result)
    assert time.monotonic() - start >= 1.5  # it waited for the store
    assert storage.stat(resume.part_path(out, "a")) is not None
    storage._filesystem_for.cache_clear()


def test_a_row_for_a_bucket_that_stopped_answering_is_given_up_within_its_minute(bucket, tmp_path, monkeypatch,
                                                                                  caplog):  # fmt: skip
    """A store that takes connections and never answers (found by an audit): each request
    held its caller 99 s, a write twice that, and a row was tried seven times, 24 minutes;
    a run whose bucket hung did not end in 45. Now a request gives up after S3_IDLE_S
    without a byte (here 0.3 s), and no try of a row starts once its minute of retries
    (here 2 s) is over: one or two tries, where the refusals of a passing outage take all."""
    relay = _relayed(monkeypatch)
    monkeypatch.setattr(storage, "S3_IDLE_S", 0.3)
    monkeypatch.setattr(resume, "ROW_RETRIES_S", (0.5, 0.5, 0.5, 0.5))
    storage._filesystem_for.cache_clear()
    out = bucket / "out"
    job = Job(row=1, job_id="a", audio=tmp_path / "a.wav", video=tmp_path / "p.jpg", output=out / "a.mp4")
    result = JobResult.for_job(job, "warp")
    relay.hang()
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        resume.record(out, result)
    assert time.monotonic() - start < 60  # (a hang: by pyarrow's defaults, over three minutes)
    assert err.value.kind == "storage" and "Timeout was reached" in err.value.message
    assert len([r for r in caplog.records if "its row was not written" in r.getMessage()]) <= 1
    storage._filesystem_for.cache_clear()


@pytest.mark.parametrize("code", [errno.ESTALE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.ECONNRESET])
def test_a_network_mount_that_stopped_answering_is_the_users_storage_not_a_bug(code):
    """A stale NFS handle, a FUSE mount whose daemon went away, a timed-out SMB share: the
    row was an `internal` error "a bug in heygem-ray" (found by an audit). Now `storage`,
    naming the file, the node and what to check, whether Python raised it or ffmpeg said it."""
    said = os.strerror(code)
    found = storage_error(OSError(code, said, "/mnt/lessons/a.wav"))
    assert found is not None and found.kind == "storage"
    assert found.message == (f"/mnt/lessons/a.wav: {said.lower()}; the network file system holding it stopped "
                             f"answering ({said.lower()}) on node {platform.node()}: check that mount there (mount, "
                             "dmesg), then run the same manifest again")  # fmt: skip
    in_words = storage_error_in(f"[in#0 @ 0x5] Error reading /mnt/lessons/a.wav: {said}", "/mnt/lessons/a.wav")
    assert in_words is not None and in_words.message == found.message
    assert storage_error(OSError(errno.EINVAL, "Invalid argument")) is None  # ours, or a bug: not said to be storage


def test_a_bucket_out_of_reach_as_the_run_starts_says_what_to_check_in_the_buckets_words(tmp_path):
    """An endpoint that does not answer: the check of the output prefix said "cannot write
    into the output folder …: oserror: …; choose another folder" (found by a review of a
    change that named local folders): a bucket's refusal keeps its own words and fixes."""
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(tmp_path)}  # fmt: skip
    check = ("from heygem_ray import storage; from heygem_ray.errors import InputError\n"
             "try:\n    storage.check_writable(storage.Uri('s3', 'bucket/nightly'))\n"
             "except InputError as e:\n    print(e.kind, e.message)")  # fmt: skip
    said = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120).stdout
    assert said.startswith("storage could not write s3://bucket/nightly/.heygem-probe-"), said
    assert said.rstrip().endswith("check the URI, that the bucket exists, and the credentials (AWS_* / GOOGLE_* "
                                  "variables, or the instance's role) and endpoint (AWS_ENDPOINT_URL) on this machine")
