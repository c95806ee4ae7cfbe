"""Whole manifests through real Ray: bad rows fail alone, good rows still render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from heygem_ray import RunConfig, media, submit
from heygem_ray.backends.trt import available as trt_available
from heygem_ray.driver import RunCallbacks
from heygem_ray.results import JobResult
from tests.helpers.footage import lecture_clip
from tests.helpers.media import make_excerpt

REPO = Path(__file__).resolve().parents[1]
# README's Python example, as a user would paste it (it calls submit: the test is marked ray).
README_PYTHON = (REPO / "README.md").read_text().split("From Python:\n\n```python\n", 1)[1].split("```", 1)[0]


def _silent_wav(path: Path, seconds: float) -> Path:
    subprocess.run(
        [media.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
         "-t", str(seconds), str(path)],
        check=True,
    )
    return path


def _empty_wav(path: Path) -> Path:
    # A valid 44-byte RIFF header announcing zero samples.
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    return path


def _faceless_video(path: Path) -> Path:
    subprocess.run(
        [media.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25",
         "-t", "1", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory, examples, ray_local):
    d = tmp_path_factory.mktemp("bad")
    for name in ("lesson1.wav", "presenter.mp4", "presenter.jpg"):
        shutil.copy(examples / name, d / name)
    _silent_wav(d / "silence.wav", 1.0)
    make_excerpt(examples / "lesson1.wav", d / "speech.wav", seconds=1)
    _empty_wav(d / "empty.wav")
    _faceless_video(d / "noface.mp4")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    data = (examples / "presenter.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    rows = [
        "good,lesson1.wav,presenter.mp4,",
        "photo,speech.wav,presenter.jpg,",
        "silent,silence.wav,presenter.jpg,",
        "missing,nothere.wav,presenter.mp4,",
        "corrupt,lesson1.wav,corrupt.mp4,",
        "truncated,lesson1.wav,truncated.mp4,",
        "noaudio,presenter.mp4,presenter.mp4,",
        "empty,empty.wav,presenter.mp4,",
        "noface,speech.wav,noface.mp4,",
        "../escape,speech.wav,presenter.jpg,",
        "outside,speech.wav,presenter.jpg,../../x.mp4",
    ]
    (d / "m.csv").write_text("job_id,audio,video,output\n" + "\n".join(rows) + "\n")
    cfg = RunConfig(output_dir=d / "out", cache_dir=d / "cache", engines_dir=d / "engines")
    summary = submit(d / "m.csv", cfg)
    table = pq.read_table(summary.results_path).to_pylist()
    return d, {r["job_id"]: r for r in table}


def test_every_row_has_exactly_one_result_row(bad_batch):
    d, rows = bad_batch
    assert len(rows) == 11
    assert [r["status"] for r in rows.values()].count("ok") == 2


def test_good_rows_render_next_to_bad_ones(bad_batch):
    d, rows = bad_batch
    for name in ("good", "photo"):
        r = rows[name]
        assert r["status"] == "ok", r["error"]
        frames, _ = media.read_video(Path(r["output"]))
        assert len(frames) == r["frames"] > 0
        assert r["node"] and r["pack"] == "warp"
        assert r["encoder"] == media.pick_encoder("auto")  # chosen in the job's Ray task: libx264 without NVENC
        if r["gpu"]:  # a GPU worker: TensorRT or the next backend that ran, at fp16
            assert r["backend"] in ("tensorrt", "onnxruntime", "pytorch") and r["precision"] == "fp16"
        else:
            # auto for warp on a CPU: PyTorch (faster than ONNX Runtime there), and the note
            # says why not TensorRT. PyTorch needs no engine.
            assert r["backend"] == "pytorch" and r["precision"] == "fp32" and r["engine_key"] == ""
            assert "tensorrt: " in r["backend_note"]
            if not trt_available()[0]:
                assert "tensorrt: tensorrt is not installed" in r["backend_note"]


@pytest.mark.parametrize(
    ("job_id", "kind", "words"),
    [
        ("missing", "missing_file", ["nothere.wav"]),
        ("corrupt", "unreadable_media", ["corrupt.mp4"]),
        ("truncated", "unreadable_media", ["truncated.mp4"]),
        ("noaudio", "no_audio_stream", ["presenter.mp4"]),
        ("empty", "empty_audio", ["empty.wav"]),
        ("silent", "silent_audio", ["silence.wav", "is silent", "--allow-silent-audio"]),
        ("noface", "no_face", ["noface.mp4", "face"]),
        ("../escape", "unsafe_output", ["job id"]),
        ("outside", "unsafe_output", ["outside the output folder"]),
    ],
)
def test_bad_rows_fail_alone_with_a_message_naming_row_file_and_fix(bad_batch, job_id, kind, words):
    d, rows = bad_batch
    r = rows[job_id]
    assert r["status"] == "failed"
    assert r["error_kind"] == kind
    assert r["error"].startswith(f"row {r['row']} (job {job_id!r}):")
    for w in words:
        assert w in r["error"]


def test_no_partial_or_stray_files_are_left(bad_batch):
    d, rows = bad_batch
    out = d / "out"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    parts = [f for f in files if f.startswith(".heygem-results/")]
    # Every row's result, kept as its job ended, inside that folder whatever the job id.
    assert sorted(pq.read_table(out / p).column("job_id")[0].as_py() for p in parts) == sorted(rows)
    assert [f for f in files if f not in parts] == ["good.mp4", "photo.mp4", "results.parquet"]
    assert not (d / "x.mp4").exists() and not (d.parent / "x.mp4").exists()


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("heygem-ray")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


# An error-level line from Ray's C++ core (`[date time E pid tid] file.cc:…`), Python's
# logging at ERROR, or a traceback.
ERROR_LINE = re.compile(r"^(\(\S+ pid=\d+\) )?\[\d{4}-\d\d-\d\d [\d:,.]+ E \d+ \d+\]|\bERROR\b|^Traceback", re.M)


def test_readme_demo_command_renders_the_bundled_example(tmp_path):
    """The README's first command, as `make demo` runs it: the first run a new user makes.
    Every row renders, and stderr holds no red line (Ray used to log one for every run:
    an actor with restarts whose constructor arguments hold an object reference, the
    router's handle), nor the libraries' notices: Ray's on the token mode it turns on by
    itself where RAY_AUTH_MODE is unset, as on a new user's machine, and LiteRT's on its
    CPU delegate, once from each job process."""
    fresh = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = _cli("submit", str(REPO / "examples" / "manifest.csv"), "--output-dir", str(tmp_path / "out"),
                "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path, env=fresh)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 of 3 jobs rendered" in proc.stdout
    assert not ERROR_LINE.search(proc.stderr), proc.stderr[-3000:]
    assert "Token authentication" not in proc.stderr and "XNNPACK" not in proc.stderr, proc.stderr[-3000:]
    # The worker line says which backend runs and why others were skipped, brackets intact.
    from heygem_ray.backends import trt

    if not trt.available()[0]:
        assert re.search(r"workers: \d+ × CPU, backend pytorch \(fp32\); tensorrt: ", proc.stderr)
        assert "heygem-ray[tensorrt]" in proc.stderr
    assert f"results: {tmp_path / 'out' / 'results.parquet'}" in proc.stdout
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert {r["job_id"] for r in table} == {"lesson1-video", "lesson2-video", "lesson1-photo"}
    assert all(r["status"] == "ok" for r in table)
    assert {r["title"] for r in table} >= {"Photosynthesis - introduction (still photo)"}
    # The two rows on presenter.mp4 share one analysis: exactly one of them built it.
    assert sum(bool(r["template_cached"]) for r in table if "video" in r["job_id"]) == 1


def test_cli_exits_non_zero_when_a_row_fails_and_still_renders_the_rest(tmp_path, examples, ray_join):
    make_excerpt(examples / "lesson1.wav", tmp_path / "s.wav", seconds=1)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    broken = [f"broken{i},gone{i}.wav,p.jpg" for i in range(22)]
    (tmp_path / "m.csv").write_text("job_id,audio,video\nfine,s.wav,p.jpg\n" + "\n".join(broken) + "\n")
    proc = _cli("submit", "m.csv", "-o", "o", "--cache-dir", "c", cwd=tmp_path, env=ray_join)
    assert proc.returncode == 1
    assert "1 of 23 jobs rendered" in proc.stdout
    assert "[missing_file] row 2 (job 'broken0')" in proc.stderr
    # The jobs' own lines Ray streams here come without colour codes into what is no
    # terminal (a nightly job's log: an audit found `\x1b[36m(job pid=…)\x1b[0m` there).
    # (Ray's own "[repeated 19x across cluster]" marker after a line keeps its colour.)
    assert "\x1b[36m(job pid=" not in proc.stderr and not re.search(r"^\x1b\[", proc.stderr, re.M), proc.stderr[-2000:]
    assert (tmp_path / "o" / "fine.mp4").is_file()
    # The run joined a running instance, whose workers work in another folder: the relative
    # --cache-dir is still this folder's.
    assert len(list((tmp_path / "c").glob("*/meta.json"))) == 1
    # The closing list stops at 20 failures and points to the table for the rest.
    # (Ray may stream the jobs' own log lines after it, unindented.)
    tail = proc.stderr[proc.stderr.index("22 job(s) failed:") :].splitlines()
    listed = [line for line in tail[1:] if line.startswith("  ")]
    assert len(listed) == 21 and listed[19].startswith("  [missing_file] row 21 ")
    assert listed[20] == "  … and 2 more failures: every row is in results.parquet ('heygem-ray status' sums it up)"


def test_the_paths_ray_workers_use_are_made_absolute_where_the_run_starts(tmp_path, monkeypatch):
    """A relative path would be looked up in each worker's own folder (on a cluster, not the
    command's): the cache, the engine store and the weights become absolute at once."""
    from heygem_ray import RenderConfig

    monkeypatch.chdir(tmp_path)
    render = RenderConfig(pack="wav2lip", checkpoint=Path("w.pth"), calibration=Path("cal.csv"), restore="gfpgan",
                          restore_checkpoint=Path("gfpgan/v1.4.pth"))
    cfg = RunConfig(output_dir=Path("out"), cache_dir=Path("cache"), engines_dir=Path("store"), render=render)
    assert (cfg.cache_dir, cfg.engines_dir) == (tmp_path / "cache", tmp_path / "store")
    assert (render.checkpoint, render.calibration, render.restore_checkpoint) == (
        tmp_path / "w.pth", tmp_path / "cal.csv", tmp_path / "gfpgan" / "v1.4.pth")
    assert cfg.output_dir == Path("out")  # the driver's alone: kept as given, as messages name it
    assert str(RunConfig(output_dir=Path("out"), engines_dir="s3://b/store").engines_dir) == "s3://b/store"


def test_a_path_from_the_home_folder_is_expanded_where_no_shell_did(tmp_path, monkeypatch):
    """``--checkpoint=~/w.pth`` (and a Ray job's entrypoint text) reach us with the ``~``
    unexpanded: it names the home folder, not a folder called ``~`` in the working one."""
    from heygem_ray import RenderConfig

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    render = RenderConfig(pack="wav2lip", checkpoint=Path("~/w.pth"))
    cfg = RunConfig(output_dir=Path("~/out"), cache_dir=Path("~/cache"), engines_dir=Path("~/store"), render=render)
    assert render.checkpoint == tmp_path / "home" / "w.pth"
    assert (cfg.output_dir, cfg.cache_dir, cfg.engines_dir) == (
        tmp_path / "home" / "out", tmp_path / "home" / "cache", tmp_path / "home" / "store")


def test_cli_stops_before_work_on_a_broken_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("audio,clip\na.wav,b.mp4\n")
    proc = _cli("submit", "m.csv", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no 'video' column" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_bad_options_with_the_choices(tmp_path):
    proc = _cli("submit", str(REPO / "examples" / "manifest.csv"), "--pack", "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "choose one of warp, wav2lip" in proc.stderr
    proc = _cli("submit", str(REPO / "examples" / "manifest.csv"), "--pack", "wav2lip", cwd=tmp_path)
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr
    proc = _cli("submit", str(REPO / "examples" / "manifest.csv"), "--preset", "quick", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown preset 'quick': choose one of ultrafast, superfast, veryfast" in proc.stderr
    proc = _cli("submit", str(REPO / "examples" / "manifest.csv"), "--encoder", "x265", cwd=tmp_path)
    assert proc.returncode == 2 and "choose one of auto, libx264, h264_nvenc" in proc.stderr


@pytest.mark.parametrize(("given", "said"), [
    (("--start-timeout", "-1"), "--start-timeout must be more than 0 seconds, not -1"),
    (("--max-jobs", "-1"), "--max-jobs must be 0 (automatic) or more, not -1"),
    (("--job-stall-timeout", "0"), "--job-stall-timeout must be more than 0 seconds, not 0"),
    (("--chunk-frames", "0"), "--chunk-frames must be 1 or more, not 0"),
    (("--min-face", "5"), "--min-face must be 20 or more (pixels: the smallest face the detector finds), not 5"),
    (("--max-audio-seconds", "0"), "--max-audio-seconds must be more than 0, not 0"),
])  # fmt: skip
def test_an_option_out_of_range_is_named_as_it_was_typed(tmp_path, given, said):
    """`--start-timeout -1` said "workers_ready_timeout_s must be more than 0 seconds": a
    name the user never typed, without the value (found by an audit)."""
    proc = _cli("submit", str(REPO / "examples" / "manifest.csv"), *given, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, f"error: {said}\n")


def test_a_checkpoint_with_a_wrong_key_stops_before_any_work_naming_the_key(tmp_path, ray_join):
    from tests.helpers.wav2lip_ckpt import write_random_checkpoint

    ckpt = write_random_checkpoint(
        tmp_path / "bad.pth", drop_key="face_decoder_blocks.6.0.conv_block.0.weight"
    )
    proc = _cli("submit", str(REPO / "examples" / "manifest.csv"), "--pack", "wav2lip", "--checkpoint", str(ckpt),
                "-o", "o", cwd=tmp_path, env=ray_join)
    assert proc.returncode == 2
    assert "face_decoder_blocks.6.0.conv_block.0.weight" in proc.stderr and str(ckpt) in proc.stderr
    assert not (tmp_path / "o").exists()


def test_help_explains_each_option(tmp_path):
    out = _cli("submit", "--help", cwd=tmp_path).stdout
    for opt in ("--output-dir", "--pack", "--checkpoint", "--address", "--loop"):
        assert opt in out


def test_an_unreachable_cluster_stops_before_any_work_with_exit_2(tmp_path, examples):
    """A Ray Client address where nothing listens: one clear message, exit 2, no output
    folder. Ray's client tries three times, for 5, 10 and 15 s; here for 1 s each."""
    (tmp_path / "m.csv").write_text(f"audio,video\n{examples / 'lesson1.wav'},{examples / 'presenter.jpg'}\n")
    exe = str(Path(sys.executable).with_name("heygem-ray"))
    proc = subprocess.run(
        [exe, "submit", "m.csv", "-o", "out", "--address", "ray://127.0.0.1:9"], cwd=tmp_path, capture_output=True,
        text=True, timeout=180,
        env=os.environ | {"RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1", "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: could not reach the Ray cluster at ray://127.0.0.1:9" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_readme_python_example_runs_and_prints_the_counts(tmp_path, examples, ray_join):
    """The example as pasted, run where RAY_ADDRESS names a running instance (a local one
    starting by itself is the README's first command, above)."""
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    make_excerpt(examples / "lesson1.wav", tmp_path / "s.wav", seconds=1)
    (tmp_path / "manifest.csv").write_text("job_id,audio,video\nfine,s.wav,p.jpg\nbroken,gone.wav,p.jpg\n")
    proc = subprocess.run([sys.executable, "-c", README_PYTHON], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=ray_join)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"1 rendered, 0 skipped, 1 failed; table: {Path('out') / 'results.parquet'}"
    assert lines[1].startswith("broken missing_file row 2 (job 'broken'): audio ")
    assert len(media.read_video(tmp_path / "out" / "fine.mp4")[0]) > 0


class _Ends(RunCallbacks):
    """When each job's row reached the driver, and how long the job took."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []  # (start, end), start = end - the job's own seconds

    def job_done(self, result: JobResult) -> None:
        end = time.monotonic()
        self.spans.append((end - (result.seconds or 0.0), end))


@pytest.mark.parametrize("max_jobs", [1, 0])
def test_max_jobs_bounds_the_jobs_rendered_at_once(tmp_path, examples, ray_local, max_jobs):
    """--max-jobs 1 renders one job at a time (each starts after the one before ended); by
    default two CPUs render two at once. Each job takes seconds (75 frames of 720p to
    compose), longer than a second job task's process takes to start beside the first."""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=3.0)
    lecture_clip(tmp_path / "take.mp4", size=(1280, 720), face=96, seconds=2)
    (tmp_path / "m.csv").write_text("job_id,audio,video\n" + "".join(f"j{i},a.wav,take.mp4\n" for i in range(4)))
    ends = _Ends()
    cfg = RunConfig(output_dir=tmp_path / "out", cache_dir=tmp_path / "cache", engines_dir=tmp_path / "engines",
                    max_jobs_in_flight=max_jobs)  # fmt: skip
    assert submit(tmp_path / "m.csv", cfg, ends).ok == 4
    spans = sorted(ends.spans)
    overlaps = sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    assert (overlaps == 0) == (max_jobs == 1), spans
