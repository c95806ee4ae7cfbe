"""Hostile media stay bounded: a huge image, a header that lists millions of frames, ten
hours of audio, a manifest of 100 000 rows on one missing file. Each row fails with a
message naming the row, the file, the limit and the option to raise it (or, where it
can, runs), and the process doing the work is measured: its peak resident memory (the
kernel's high-water mark) stays under a stated bound.

The jobs run the real recipe (``render_job``: PyAV, ffmpeg, the warp pack on PyTorch) in
a fresh Python process, which reports its peak after imports and the model (what any
job's process holds) and after each job, and the peak of the ffmpeg processes the job
started (tests/helpers/peak.py). The 100 000 rows go through ``submit`` on a local Ray.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from heygem_ray import media
from heygem_ray.analyze import analyze
from heygem_ray.cli import app
from heygem_ray.config import DetectorConfig, InputLimits
from heygem_ray.driver import resume
from heygem_ray.driver.missing import MissingInputs
from heygem_ray.errors import InputError
from heygem_ray.manifest import read_manifest
from heygem_ray.packs import get_pack
from heygem_ray.results import JobResult
from tests.helpers.hostile import (
    make_broken_timing_video,
    make_flac_claiming,
    make_long_wav,
    make_mkv_claiming_duration,
    make_timestamp_gap_video,
)
from tests.helpers.hostile_jobs import JOBS, REFUSED, ROOT, SUBMIT, child_env, run_jobs
from tests.helpers.media import make_tone, make_vfr_video, make_video

# A refused file may make the job's process grow by this much at most: half of one
# decoded frame at the pixel limit (7680 × 4320 × 3 bytes = 95 MiB). Decoding what these
# files claim would take a 20 000 × 20 000 frame (1 144 MiB), an index of 80 million
# entries (3 GiB in FFmpeg's demuxer), or a template of 900 000 frames.
REFUSED_GROWTH_MIB = 48
# ffmpeg, when it runs for a refused row at all (decoding the one-second audio that comes
# first): its decoders never get a picture over the limit (a 20 000² one is 1 144 MiB).
FFMPEG_MIB = 160
# A job that renders (a 4 s 384 × 384 reference) grows its process by about 200 MiB
# (template analysis, the model's batches, the encoder's pipe); a reference read as the
# ten hours its header claims would be 900 000 frames.
RENDER_GROWTH_MIB = 400
# Ray's driver holds about 530 MiB by itself (measured with 6 000 rows); the manifest,
# kept as a list of jobs, adds about 1.3 KiB a row: 130 MiB for 100 000. Everything
# else is flat: the rows go to the table a batch at a time. (One CI run beside another
# test worker measured 802 MiB for 100 000 rows.)
DRIVER_MIB = 900



@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    return make_tone(tmp_path_factory.mktemp("tone") / "one-second.wav", seconds=1.0)


@pytest.fixture(scope="module")
def refused(tmp_path_factory, tone, examples) -> tuple[float, dict[str, dict], dict[str, Path]]:
    """Every hostile file of REFUSED as one row's job, all in one process (its peak only
    grows: each case's peak bounds that case)."""
    tmp = tmp_path_factory.mktemp("refused")
    files = {name: make(tmp) for name, (make, *_) in REFUSED.items()}
    cases = {
        name: (files[name], examples / "presenter.mp4", {}) if is_audio else (tone, files[name], {})
        for name, (_, is_audio, *_) in REFUSED.items()
    }
    before, found = run_jobs(tmp, cases, timeout=120)
    return before, found, files


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_hostile_file_fails_its_row_early_with_flat_memory(refused, name: str) -> None:
    before, found, files = refused
    _, _, step, kind, words = REFUSED[name]
    case = found[name]
    row = case["row"]
    print(f"{name}: {row['seconds']:.2f} s, peak {before:.0f} → {case['peak_mib']:.0f} MiB, ffmpeg {case['ffmpeg_mib']:.0f} MiB")
    assert (row["status"], row["error_kind"], row["error_step"]) == ("failed", kind, step), row
    assert row["error"].startswith(f"row 7 (job '{name}'): ") and str(files[name]) in row["error"]
    for word in words:
        assert word in row["error"], row["error"]
    assert row["error"].endswith("or raise the limit" if kind == "too_large" else "re-export it from its source")
    assert case["peak_mib"] - before < REFUSED_GROWTH_MIB, (before, case)
    assert case["ffmpeg_mib"] < FFMPEG_MIB, case


def test_a_header_claiming_ten_hours_is_not_believed_and_the_job_runs(tmp_path, examples, tone) -> None:
    """A Matroska reference whose header says it lasts 10 hours, holding the 4 s of the
    bundled clip: read as what it holds, rendered."""
    mkv = make_mkv_claiming_duration(tmp_path / "claims-ten-hours.mkv", seconds=36_000,
                                     source=examples / "presenter.mp4")  # fmt: skip
    before, found = run_jobs(tmp_path, {"claims": (tone, mkv, {})}, timeout=120)
    case = found["claims"]
    row = case["row"]
    print(f"claims ten hours: peak {before:.0f} → {case['peak_mib']:.0f} MiB, ffmpeg {case['ffmpeg_mib']:.0f} MiB")
    assert row["status"] == "ok", row
    assert row["frames"] == 25  # the audio's second at 25 fps
    assert media.probe_video(mkv).frames == 100  # what it holds: 4 s
    assert case["peak_mib"] - before < RENDER_GROWTH_MIB, (before, case)
    assert case["ffmpeg_mib"] < FFMPEG_MIB * 2, case  # the encoder too


def test_ten_hours_of_audio_run_with_flat_memory_when_the_limit_allows(tmp_path, examples) -> None:
    """Raised, the limit lets ten hours through: decoded in 1 MiB blocks into a file
    (2.3 GB of 16 kHz float32 in the job's scratch folder), its features read a chunk at a
    time. With loop=trim the output stops where the 4 s reference ends. The WAV is a sparse
    file of silence, so the row allows silent audio."""
    wav = make_long_wav(tmp_path / "ten-hours.wav", seconds=36_000)
    script = JOBS.replace('RenderConfig(backend="pytorch", limits', 'RenderConfig(backend="pytorch", loop="trim", limits')
    spec = json.dumps({"long": (str(wav), str(examples / "presenter.mp4"),
                                  {"max_audio_seconds": 36_000, "allow_silent_audio": True})})
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), spec], cwd=ROOT, env=child_env(scratch=tmp_path),
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = next(float(x.split()[1]) for x in proc.stdout.splitlines() if x.startswith("BEFORE "))
    case = next(json.loads(x.removeprefix("CASE ")) for x in proc.stdout.splitlines() if x.startswith("CASE "))
    row = case["row"]
    print(f"ten hours run: {row['seconds']:.0f} s, peak {before:.0f} → {case['peak_mib']:.0f} MiB, "
          f"ffmpeg {case['ffmpeg_mib']:.0f} MiB")
    assert row["status"] == "ok", row
    assert row["audio_seconds"] == 36_000 and row["frames"] == 100  # trimmed to the reference
    # Ten hours as one array would be 2.1 GiB (float32) in the job, 4.3 GiB through ffmpeg's pipe at f32.
    assert case["peak_mib"] - before < RENDER_GROWTH_MIB, (before, case)
    assert case["ffmpeg_mib"] < FFMPEG_MIB * 2, case


# --------------------------------------------------------------------------- in this process


def test_audio_longer_than_its_header_says_is_stopped_once_decoding_passes_the_limit(tmp_path) -> None:
    flac = make_flac_claiming(tmp_path / "understated.flac", seconds=6.0, declared=1.0)
    assert media.decode_audio(flac, tmp_path / "all.f32", max_seconds=10) == 6 * 16000
    with pytest.raises(InputError) as caught:
        media.decode_audio(flac, tmp_path / "capped.f32", max_seconds=3)
    assert caught.value.kind == "too_large"
    assert caught.value.message == (
        f"audio {flac} is longer than its header declares: decoding passed the limit of 0:00:03 "
        "(--max-audio-seconds 3); split it into shorter files, or raise the limit"
    )


def _fragmented(source: Path, path: Path) -> Path:
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), "-c", "copy",
                    "-movflags", "+frag_keyframe+empty_moov", str(path)], check=True)  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("name", "make", "limit", "said"),
    [
        # Matroska lists only key frames in its cues: the frames are counted from the packets.
        ("cues.mkv", lambda p: make_video(p, seconds=4.0), 50, "holds more than 50 frames (counted from its packets)"),
        # 45 packets (1 s at 15 fps, 1 s at 30), read at 30 fps: 60 frames.
        ("vfr.mp4", lambda p: make_vfr_video(p), 50, "has timestamps spanning 0:00:02, 60 frames at 30 fps"),
        # A fragmented MP4 lists its frames in its fragments' runs: counted before FFmpeg opens it.
        ("frag.mp4", lambda p: _fragmented(make_video(p.with_name("whole.mp4"), seconds=4.0), p), 50,
         "lists 100 frames in its header"),
    ],
)
def test_the_frame_limit_holds_wherever_the_count_comes_from(tmp_path, name, make, limit, said) -> None:
    clip = make(tmp_path / name)
    with pytest.raises(InputError) as caught:
        media.probe_video(clip, max_frames=limit)
    assert caught.value.kind == "too_large" and said in caught.value.message, caught.value.message
    assert media.probe_video(clip, max_frames=100).frames in (60, 100)  # under the limit: as before


def test_a_take_whose_timestamps_jump_hours_on_is_read_up_to_a_cut_before_the_jump(tmp_path) -> None:
    """Its frames an hour apart span more frames than the limit: refused as damaged there
    (before, as too long, advising --reference-seconds 300, which then did not help: the
    span counted to the file's end); a cut before the jump bounds the span checked."""
    take = make_timestamp_gap_video(tmp_path / "gap.mkv", gap_seconds=3_600)
    with pytest.raises(InputError) as caught:
        media.probe_video(take, max_frames=1_000)
    assert caught.value.kind == "unreadable_media"
    assert caught.value.message == (
        f"reference {take} has timestamps that jump 1:00:00 on after its first 2 frames (0.1 s): the file is damaged "
        "there (a broken copy or remux); copy the take again from where it was recorded, or re-export it from its "
        "source"
    )
    info = media.probe_video(take, max_frames=1_000, max_seconds=0.5)
    assert info.cut and len(list(media.iter_frames(info))) == info.frames > 0


def test_a_take_whose_index_breaks_its_timing_says_so_and_what_helps(tmp_path) -> None:
    """A bad remux's timing (found by the hostile-media audit): one frame's composition
    offset 2³¹ − 1, or the track's time scale 1. Both were refused as too long, advising
    --reference-seconds 300; the first is the take's 4 s and one frame 46 hours on (a cut
    before it renders the rest), the second every frame 512 s apart (no cut helps)."""
    jump = make_broken_timing_video(tmp_path / "ctts.mp4", box="ctts")
    with pytest.raises(InputError) as caught:
        media.probe_video(jump, max_frames=90_000)
    assert caught.value.kind == "unreadable_media"
    assert caught.value.message.startswith(f"reference {jump} has timestamps that jump 46:36:")
    assert caught.value.message.endswith(
        " on after its first 99 frames (4.0 s): the file is damaged there (a broken copy or remux); "
        "--reference-seconds 3.9 uses the take before it, or copy the take again from where it was recorded, or "
        "re-export it from its source"
    ), caught.value.message
    info = media.probe_video(jump, max_frames=90_000, max_seconds=3.9)
    assert info.cut and info.frames == 97 == len(list(media.iter_frames(info)))
    spread = make_broken_timing_video(tmp_path / "mdhd.mp4", box="mdhd")
    with pytest.raises(InputError) as caught:
        media.probe_video(spread, max_frames=90_000)
    assert caught.value.kind == "unreadable_media"
    assert re.fullmatch(
        rf"reference {re.escape(str(spread))} holds \d+ frames, but its timestamps spread them over [0-9:]+ \(one "
        r"every 512 s\): they are damaged \(a broken copy or remux\); copy the take again from where it was "
        r"recorded, or re-export it from its source", caught.value.message
    ), caught.value.message


def test_a_slideshow_take_a_picture_every_15_s_is_long_not_damaged(tmp_path) -> None:
    """Half an hour of pictures 15 s apart (a slideshow export, a valid file): over the frame
    limit at its read rate, it is too long, and --reference-seconds renders it; a first
    version of the damaged-timestamps rule (a frame more than 10 s apart on average) called
    it damaged, advising a new copy (found by a review)."""
    slides = tmp_path / "slides.mp4"
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1/15:duration=1800",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-r", "1/15", str(slides)], check=True)  # fmt: skip
    with pytest.raises(InputError) as caught:
        media.probe_video(slides, max_frames=10_000)
    assert caught.value.kind == "too_large" and "--reference-seconds 300" in caught.value.message, caught.value.message
    info = media.probe_video(slides, max_frames=10_000, max_seconds=300)
    assert info.cut and info.frames == 7_500


def test_with_reference_seconds_the_frame_limit_bounds_the_frames_used(tmp_path, examples) -> None:
    """The 4-s example (100 frames) under a limit of 50: refused whole, as before; its first
    second (25 frames) is analysed; its first 3 (75 frames) are over the limit, and the
    message counts what would be used."""
    take, cache, limits = examples / "presenter.mp4", tmp_path / "cache", InputLimits(max_reference_frames=50)
    geometry, detector = get_pack("warp").geometry, DetectorConfig()
    with pytest.raises(InputError) as whole:
        analyze(take, geometry, detector, cache, limits)
    assert whole.value.kind == "too_large" and "above the limit of 50 frames" in whole.value.message
    template, _ = analyze(take, geometry, detector, cache, limits, reference_seconds=1)
    with template:
        assert template.frames == 25
    with pytest.raises(InputError) as used:
        analyze(take, geometry, detector, cache, limits, reference_seconds=3)
    assert used.value.kind == "too_large" and used.value.message.startswith(
        f"reference {take} has 75 frames, above the limit of 50 frames (--max-reference-frames 50)"
    )


def test_the_pixel_limit_reads_a_video_s_size_from_its_header(tmp_path) -> None:
    clip = make_video(tmp_path / "small.mp4", seconds=0.2, size=(64, 48))
    with pytest.raises(InputError) as caught:
        media.probe_video(clip, max_pixels=64 * 48 - 1)
    assert caught.value.kind == "too_large" and "is 64×48 pixels" in caught.value.message
    assert media.probe_video(clip, max_pixels=64 * 48).width == 64


def test_limits_are_checked_when_configured() -> None:
    for bad in ({"max_reference_pixels": 0}, {"max_reference_pixels": 2**31}, {"max_reference_frames": 0},
                {"max_audio_seconds": 0}):  # fmt: skip
        with pytest.raises(InputError) as caught:
            InputLimits(**bad)
        assert caught.value.kind == "bad_argument"


def _submit_with(tmp_path: Path, option: str, value: str) -> Result:
    """``heygem-ray submit`` of a one-row manifest with ``option`` set to ``value``."""
    (tmp_path / "m.csv").write_text("audio,video\na.wav,b.mp4\n")
    return CliRunner().invoke(app, ["submit", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out"), option, value])


@pytest.mark.parametrize("option", ["--max-reference-pixels", "--max-reference-frames", "--max-audio-seconds"])
def test_each_limit_has_its_cli_option(tmp_path, option: str) -> None:
    got = _submit_with(tmp_path, option, "0")
    assert got.exit_code == 2  # refused before anything starts, naming the option as typed and the value
    assert got.stderr.startswith(f"error: {option} must be") and got.stderr.endswith(", not 0\n"), got.stderr


@pytest.mark.parametrize("lines", ["100", "1081", "-720"])
def test_a_max_resolution_no_video_can_have_is_refused_saying_which_can(tmp_path, lines: str) -> None:
    got = _submit_with(tmp_path, "--max-resolution", lines)
    assert got.exit_code == 2, got.stderr
    assert f"--max-resolution must be 0 (the reference's own) or an even number of lines from 144 (720, 1080, " \
           f"1440), not {lines}" in got.stderr


@pytest.mark.parametrize("fps", ["10", "19", "-30"])
def test_a_max_fps_that_would_step_the_mouth_is_refused_saying_which_can(tmp_path, fps: str) -> None:
    got = _submit_with(tmp_path, "--max-fps", fps)
    assert got.exit_code == 2, got.stderr
    assert f"--max-fps must be 0 (the reference's own) or 20 or more (24, 25, 30), not {fps}" in got.stderr


@pytest.mark.parametrize("seconds", ["0.5", "-60", "nan", "inf"])
def test_reference_seconds_that_keep_no_take_are_refused_saying_which_do(tmp_path, seconds: str) -> None:
    got = _submit_with(tmp_path, "--reference-seconds", seconds)
    assert got.exit_code == 2, got.stderr
    assert "--reference-seconds must be 0 (all of each reference) or at least 1 seconds (300: the first five " \
           f"minutes), not {float(seconds):g}" in got.stderr  # fmt: skip


@pytest.mark.parametrize("seconds", ["-1", "nan", "inf"])
def test_a_reference_start_that_is_no_time_in_a_take_is_refused_saying_which_are(tmp_path, seconds: str) -> None:
    got = _submit_with(tmp_path, "--reference-start", seconds)
    assert got.exit_code == 2, got.stderr
    assert "--reference-start must be 0 (each reference from its beginning) or a number of seconds into it (90: " \
           f"from a minute and a half in), not {float(seconds):g}" in got.stderr  # fmt: skip


# --------------------------------------------------------------------------- pipes and devices


def test_a_manifest_naming_a_pipe_or_a_device_ends_and_fails_those_rows(tmp_path, tone, examples, ray_join) -> None:
    """A FIFO (opened for reading, it waits for a writer forever) and /dev/zero (read, it
    never ends) named as audio or reference: the run ends, those rows fail saying what the
    file is, and the other row renders. Before: the driver hashed each row's inputs for the
    results table first, and waited on the FIFO's open with the run at 0 of its jobs."""
    fifo = tmp_path / "lesson.wav"
    os.mkfifo(fifo)
    (tmp_path / "m.csv").write_text(
        f"job_id,audio,video\nfifo,{fifo},{examples / 'presenter.jpg'}\nzero-audio,/dev/zero,{examples / 'presenter.jpg'}\n"
        f"zero-video,{tone},/dev/zero\ngood,{tone},{examples / 'presenter.jpg'}\n"
    )
    exe = Path(sys.executable).with_name("heygem-ray")
    proc = subprocess.run([str(exe), "submit", "m.csv", "-o", "out", "--cache-dir", "cache", "--engines", "engines"],
                          cwd=tmp_path, env=ray_join, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = {r["job_id"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    assert rows["good"]["status"] == "ok", rows["good"]["error"]
    for job, step, what, path in (("fifo", "audio", "audio", fifo), ("zero-audio", "audio", "audio", "/dev/zero"),
                                  ("zero-video", "analyze", "reference", "/dev/zero")):  # fmt: skip
        row = rows[job]
        assert (row["status"], row["error_kind"], row["error_step"]) == ("failed", "missing_file", step), row
        assert f"{what} {path} is not a regular file (a pipe, a device or a socket)" in row["error"], row["error"]


# --------------------------------------------------------------------------- 100 000 rows



def test_a_manifest_of_100_000_rows_on_one_missing_file(tmp_path, examples, ray_join) -> None:
    """One job finds the audio missing; the other rows fail at once with the same message,
    without a job of their own or a part file. Before: a Ray task and a part file per row,
    about 12 minutes on 2 cores."""
    rows = 100_000
    (tmp_path / "presenter.mp4").symlink_to(examples / "presenter.mp4")
    proc = subprocess.run([sys.executable, "-c", SUBMIT, str(tmp_path), str(rows)], cwd=ROOT, env=child_env(ray_join),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("SUBMIT ")).removeprefix("SUBMIT "))
    print(f"100 000 rows: {run['seconds']:.0f} s, driver peak {run['peak_mib']:.0f} MiB")
    assert (run["total"], run["failed"]) == (rows, rows)
    assert run["peak_mib"] < DRIVER_MIB, run

    table = pq.read_table(tmp_path / "out" / "results.parquet",
                          columns=["row", "job_id", "error_kind", "error_step", "error", "attempts"])  # fmt: skip
    assert table.num_rows == rows and table["row"].to_pylist() == list(range(1, rows + 1))
    assert pc.all(pc.equal(table["error_kind"], "missing_file")).as_py()
    assert pc.all(pc.equal(table["error_step"], "audio")).as_py()
    gone = tmp_path / "gone.wav"
    for r in table.slice(0, 3).to_pylist() + table.slice(rows - 2).to_pylist():
        assert r["error"] == f"row {r['row']} (job {r['job_id']!r}): audio {gone} does not exist; check the path", r
    started = pc.sum(pc.greater(table["attempts"], 0)).as_py()
    assert 1 <= started <= max(2, os.cpu_count() or 1), started  # those in flight when the first found it missing
    parts = list((tmp_path / "out" / ".heygem-results").iterdir())
    assert len(parts) == started  # only jobs that ran keep a part file


def test_a_file_found_missing_as_audio_fails_at_once_only_rows_naming_it_as_audio(tmp_path) -> None:
    """The message a row fails with at once names the file's role: a file one job found
    missing as its audio fails the rows that name it as audio, not one that names it as its
    reference (whose own job says "reference")."""
    (tmp_path / "m.csv").write_text("job_id,audio,video\nfirst,x.mp4,p.jpg\nsecond,x.mp4,p.jpg\nthird,a.wav,x.mp4\n")
    first, second, third = read_manifest(tmp_path / "m.csv", tmp_path / "out")
    ran = JobResult.for_job(first, "warp")
    ran.error_kind, ran.error_step = "missing_file", "audio"
    ran.error = f"{first.label}: audio {first.audio} is not a regular file (a pipe, a device or a socket); give …"
    missing = MissingInputs("warp", "h", rows=3)
    missing.learn(ran)
    at_once = missing.fail(second)
    assert at_once is not None and at_once.error == f"{second.label}: audio {second.audio} is not a regular file " \
        "(a pipe, a device or a socket); give …"  # fmt: skip
    assert missing.fail(third) is None


def test_rows_failed_at_once_are_merged_from_the_run_not_from_an_earlier_part_file(tmp_path) -> None:
    """Without a job, a row that fails at once writes no part file: the table takes it from
    the run, never from a part file an earlier run left for that job (here: 'ok', its MP4
    since deleted along with the audio)."""
    (tmp_path / "m.csv").write_text("job_id,audio,video\nfirst,gone.wav,p.jpg\nsecond,gone.wav,p.jpg\n"
                                    "third,here.wav,p.jpg\n")  # fmt: skip
    out = tmp_path / "out"
    first, second, third = read_manifest(tmp_path / "m.csv", out)
    earlier = JobResult.for_job(second, "warp")
    earlier.status, earlier.frames, earlier.run_id = "ok", 25, "earlier"
    resume.record(out, earlier)  # an earlier run's row

    missing = MissingInputs("warp", "h", rows=3)
    ran = JobResult.for_job(first, "warp")  # the first job, as render_job reports it
    ran.error_kind, ran.error_step = "missing_file", "audio"
    ran.error = f"{first.label}: audio {first.audio} does not exist; check the path"
    ran.run_id = "this"
    resume.record(out, ran)
    missing.learn(ran)
    assert missing.fail(third) is None  # its audio is not known to be missing
    at_once = missing.fail(second)
    assert at_once is not None and at_once.error == f"{second.label}: audio {second.audio} does not exist; check the path"
    assert (at_once.status, at_once.error_step, at_once.attempts) == ("failed", "audio", 0)

    resume.write_merged([first, second, third], out, set(), "warp", out / "results.parquet", run_id="this",
                        stopped="interrupted", missing=missing)  # fmt: skip
    table = {r["job_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert [table[j]["error_kind"] for j in ("first", "second", "third")] == ["missing_file", "missing_file", "stopped"]
    assert (table["second"]["status"], table["second"]["frames"], table["second"]["attempts"]) == ("failed", 0, 0)
    assert table["second"]["error"] == at_once.error


@pytest.mark.parametrize("size", [(1, 1), (1, 64), (64, 1)])
def test_a_reference_a_pixel_wide_or_high_is_no_face_saying_its_size(tmp_path, size) -> None:
    """Frames are cut to even sizes, which leaves nothing of a 1-pixel side: the probe says
    the reference is too small to hold a face, where decoding it failed as a bug."""
    width, height = size
    photo = tmp_path / "tiny.png"
    cv2.imwrite(str(photo), np.full((height, width, 3), 128, np.uint8))
    with pytest.raises(InputError) as caught:
        media.probe_video(photo)
    assert caught.value.kind == "no_face"
    assert caught.value.message.startswith(f"reference {photo} is {width}×{height} pixels: too small to hold a face")


@pytest.mark.parametrize(("command", "option"), [("submit", "-o"), ("submit", "--cache-dir"), ("submit", "--engines"),
                                                 ("preview", "--output-dir"), ("cache", "--cache-dir")])  # fmt: skip
def test_an_empty_folder_option_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch, command, option):
    """``-o "$OUT"`` with OUT unset in a nightly script wrote the MP4s and the table into the
    folder it ran in (Path("") is "."); ``cache prune --cache-dir ""`` would prune it."""
    (tmp_path / "m.csv").write_text("audio,video\na.wav,b.mp4\n")
    monkeypatch.chdir(tmp_path)
    args = {"submit": ["submit", "m.csv", option, ""], "preview": ["preview", "b.mp4", option, " "],
            "cache": ["cache", "prune", option, ""]}[command]  # fmt: skip
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 2 and "is empty: give a folder" in got.stderr, got.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # nothing written here
