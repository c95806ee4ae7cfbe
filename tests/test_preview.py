"""``heygem-ray preview`` as an operator runs it: on the bundled example every check is
ok and the three files hold what they say; on composed hard footage the check fires and
the exit status follows the verdict; the template it analysed is tonight's, cached."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from heygem_ray import media
from heygem_ray import preview as preview_module
from heygem_ray.analyze import analyze
from heygem_ray.cli import app
from heygem_ray.config import DetectorConfig, RenderConfig
from heygem_ray.face import arrival
from heygem_ray.manifest import read_manifest
from heygem_ray.packs import get_pack
from heygem_ray.preview import BUNDLED_SPEECH, SHEET_COLUMNS, TILE_WIDTH, VIDEO_HEIGHT, preview_manifest
from heygem_ray.worker import ModelWorker
from tests.helpers.footage import lecture_clip
from tests.helpers.media import make_silence, make_tone

runner = CliRunner()
CHECKS = ["face_size", "lost", "jitter", "faces", "mouth_motion", "head_turned", "mouth_covered", "dark", "blurred", "colour",
          "resolution", "frame_rate", "length", "decoded"]  # fmt: skip


def _preview(tmp_path, *args: str):
    """The command's result, and its JSON when it wrote one."""
    got = runner.invoke(app, ["preview", *args, "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                              "--engines", str(tmp_path / "engines")])  # fmt: skip
    written = list((tmp_path / "out").glob("*-checks.json"))
    return got, json.loads(written[0].read_text()) if written else None


def test_the_bundled_example_passes_and_writes_the_sheet_the_video_and_the_checks(examples, tmp_path):
    got, report = _preview(tmp_path, str(examples / "presenter.mp4"), "--seconds", "2")
    assert got.exit_code == 0, got.output
    lines = got.stdout.splitlines()
    assert [line.split()[:2] for line in lines[: len(CHECKS)]] == [["ok", name] for name in CHECKS]
    assert lines[len(CHECKS)] == "verdict: ok"
    assert report is not None and report["verdict"] == "ok" and report["pack"] == "warp"
    assert [c["check"] for c in report["checks"]] == CHECKS and report["still_span_s"] is None
    reference = media.probe_video(examples / "presenter.mp4")

    # The sheet: SHEET_COLUMNS frames across, each TILE_WIDTH wide.
    sheet = cv2.imread(str(tmp_path / "out" / "presenter-sheet.png"))
    assert sheet is not None and sheet.shape[1] == SHEET_COLUMNS * TILE_WIDTH

    # The video: 2 s at the reference's rate, the reference on the left, the render on the
    # right, with sound; the render's mouth moves with the speech where the reference's does not.
    video = media.probe_video(tmp_path / "out" / "presenter-preview.mp4")
    half = 2 * round(reference.width * VIDEO_HEIGHT / reference.height / 2)
    assert (video.width, video.height) == (2 * half, VIDEO_HEIGHT) and video.fps == reference.fps
    assert media.probe_audio(tmp_path / "out" / "presenter-preview.mp4").duration == pytest.approx(2.0, abs=0.05)
    frames = media.read_video(tmp_path / "out" / "presenter-preview.mp4")[0]
    assert len(frames) == 50
    ref0 = cv2.resize(media.read_video(examples / "presenter.mp4")[0][0], (half, VIDEO_HEIGHT), interpolation=cv2.INTER_AREA)
    body = (slice(60, None), slice(None))  # under the label
    assert np.abs(frames[0][:, :half][body].astype(np.int16) - ref0[body].astype(np.int16)).mean() < 3
    left, right = frames[:, :, :half].astype(np.int16), frames[:, :, half:].astype(np.int16)
    assert np.abs(right - left).mean(axis=(1, 2, 3)).max() > 1.0  # the mouth was redrawn somewhere
    assert np.abs(np.diff(right, axis=0)).mean() > np.abs(np.diff(left, axis=0)).mean()

    # A preview warms tonight's batch: the template is in the cache, under the batch's key.
    _, cached = analyze(examples / "presenter.mp4", get_pack("warp").geometry, DetectorConfig(), tmp_path / "cache")
    assert cached


def test_a_preview_whose_seconds_are_a_pause_shows_them(examples, tmp_path):
    """A lesson may open with a pause: the preview renders it (a lesson silent throughout is
    submit's to refuse, and preview's `audio` check says so), and its video holds those
    seconds."""
    speech = media.load_audio(examples / "lesson1.wav")
    pause = tmp_path / "pause.wav"
    with wave.open(str(pause), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.concatenate([np.zeros(2 * 16000, np.float32), speech]) * 32767).astype("<i2").tobytes())
    got, report = _preview(tmp_path, str(examples / "presenter.jpg"), str(pause), "--seconds", "1")
    assert got.exit_code == 0 and report is not None, got.output
    assert report["verdict"] == "ok"
    assert len(media.read_video(tmp_path / "out" / "presenter-preview.mp4")[0]) == 25


def _speech(t: float) -> float:
    return float(max(0.0, np.sin(2 * np.pi * 3.0 * t)))


def test_a_talking_take_warns_and_a_covered_mouth_fails(tmp_path):
    common = {"size": (640, 400), "face": 120, "seconds": 2.0, "corner": "centre", "motion": "still"}
    talking = lecture_clip(tmp_path / "talking.mp4", talk=_speech, **common)  # type: ignore[arg-type]
    got, report = _preview(tmp_path / "t", str(talking.path), "--seconds", "1")
    assert got.exit_code == 0, got.output
    assert report is not None and report["verdict"] == "warn"
    motion = next(c for c in report["checks"] if c["check"] == "mouth_motion")
    assert motion["level"] == "warn" and "record a silent take" in motion["advice"]
    assert any(line.startswith("warn  mouth_motion") for line in got.stdout.splitlines())

    covered = lecture_clip(tmp_path / "covered.mp4", cover=True, **common)  # type: ignore[arg-type]
    got, report = _preview(tmp_path / "c", str(covered.path), "--seconds", "1")
    assert got.exit_code == 1, got.output
    assert report is not None and report["verdict"] == "fail"
    assert "verdict: fail" in got.stdout and any(line.startswith("fail  mouth_covered") for line in got.stdout.splitlines())


def test_a_lecture_that_opens_without_the_presenter_is_found_from_where_they_come_in(tmp_path):
    """A take whose first 3 s are the slide alone (a keyframe every second, as cameras
    write): its first 2 s hold no face (exit 2, saying only those were searched, and where
    its keyframes after them first show a face, as a --reference-start; a manifest's
    preview gives its row that start); its first 5 s fail `lost`, naming the time the
    presenter comes in as a --reference-start; from there, the checks pass."""
    take = lecture_clip(tmp_path / "lecture.mp4", size=(640, 400), face=120, seconds=6.0, corner="centre",
                        motion="still", absent=(0.0, 3.0), keyframe_s=1.0).path  # fmt: skip
    got, report = _preview(tmp_path / "a", str(take), "--seconds", "1", "--reference-seconds", "2")
    assert got.exit_code == 2 and report is None, got.output
    assert "no face found" in got.stderr and "only its first 2.0 s were searched (--reference-seconds): where the " \
           "presenter comes in later in the take, --reference-start moves the part used to them. After that part, " \
           "the take's keyframes first show a face 3.0 s in" in got.stderr  # fmt: skip
    assert "--reference-start 3 (or the row's reference_start column) uses it from there" in got.stderr
    manifest = tmp_path / "one.csv"
    manifest.write_text(f"audio,video\n{BUNDLED_SPEECH},{take}\n")
    got, _ = _preview(tmp_path / "m", "--manifest", str(manifest), "--seconds", "1", "--reference-seconds", "2")
    assert got.exit_code == 1 and "  fail  reference " in got.stdout, got.output
    assert "row 1: reference_start 3" in got.stdout
    (row,) = read_manifest(tmp_path / "m" / "out" / "one-previewed.csv", tmp_path / "o")
    assert row.row_settings == (("reference_start", 3.0),)
    # Without keyframes after the part searched (x264's default: one every 250 frames), nothing is named.
    whole = lecture_clip(tmp_path / "one-gop.mp4", size=(640, 400), face=120, seconds=6.0, corner="centre",
                         motion="still", absent=(0.0, 3.0)).path  # fmt: skip
    got, _ = _preview(tmp_path / "g", str(whole), "--seconds", "1", "--reference-seconds", "2")
    assert got.exit_code == 2 and "no face found" in got.stderr and "keyframes" not in got.stderr, got.output
    got, report = _preview(tmp_path / "b", str(take), "--seconds", "1", "--reference-seconds", "5")
    assert got.exit_code == 1 and report is not None, got.output
    lost = next(c for c in report["checks"] if c["check"] == "lost")
    assert lost["level"] == "fail" and "the presenter is there from 3 s into the take on; --reference-start 3 " \
           "uses it from there" in lost["advice"], lost  # fmt: skip
    assert lost["settings"] == {"reference_start": 3.0}  # as a manifest row's column takes it
    got, report = _preview(tmp_path / "c", str(take), "--seconds", "1", "--reference-seconds", "2",
                           "--reference-start", "3")  # fmt: skip
    assert got.exit_code == 0 and report is not None, got.output
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["lost"]["level"] == "ok" and checks["lost"]["value"] == 0
    assert checks["length"]["figure"].startswith("reference 2.0 s (the take from 3.0 s: --reference-start; cut there")


def test_a_preview_killed_as_it_writes_its_video_leaves_none_and_the_next_one_its_own(examples, tmp_path):
    """The side-by-side video appears whole or not at all: killed (SIGKILL) while it was
    being encoded, no `-preview.mp4` is there (before, a cut one was); the next preview
    into the folder removes the half-written one and writes its own."""
    out = tmp_path / "out"
    args = [str(Path(sys.executable).with_name("heygem-ray")), "preview", str(examples / "presenter.mp4"),
            "-o", str(out), "--seconds", "6", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not [p for p in out.glob("*.mp4") if "preview" in p.name]:
            time.sleep(0.002)
        proc.kill()
    finally:
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the preview ended before its video was begun"
    assert not (out / "presenter-preview.mp4").exists()
    left = [p.name for p in out.glob("*.mp4")]
    assert left and all(name.startswith(".presenter-preview.") for name in left), left
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.mp4")) == ["presenter-preview.mp4"]
    assert media.probe_video(out / "presenter-preview.mp4").frames == 150


def _cli(tmp_path: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("heygem-ray")), "preview", *args, "-o", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip


def test_two_previews_of_one_name_into_one_folder_leave_the_files_of_one(examples, tmp_path):
    """A second preview of the same take into the same folder while the first writes: it
    waits for the first (where it removed the first's video as it was written, failing
    it), then replaces the three files with its own, all three of one preview."""
    long_speech = make_tone(tmp_path / "long.wav", seconds=40.0)  # (its video takes long enough to be met)
    first = subprocess.Popen(_cli(tmp_path, str(examples / "presenter.mp4"), str(long_speech), "--seconds", "40"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # until the first is writing its video
        while not list((tmp_path / "out").glob(".presenter-preview.*")) and time.monotonic() < deadline:
            time.sleep(0.002)
        second = subprocess.run(_cli(tmp_path, str(examples / "presenter.mp4"), str(examples / "lesson2.mp3"),
                                     "--seconds", "1"), capture_output=True, text=True, timeout=300)  # fmt: skip
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 0, second.stderr[-2000:]
    checks = json.loads((tmp_path / "out" / "presenter-checks.json").read_text())
    assert checks["audio"] == str(examples / "lesson2.mp3")
    assert media.probe_video(tmp_path / "out" / "presenter-preview.mp4").frames == 25
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "presenter-checks.json", "presenter-preview.mp4", "presenter-sheet.png"]


def test_a_preview_that_fails_leaves_no_earlier_verdict_of_its_name(examples, tmp_path):
    """Previewed once (ok), then the take is damaged and previewed again: that fails, and
    the first preview's files are gone with it, where its checks file went on saying ok."""
    take = Path(shutil.copy(examples / "presenter.mp4", tmp_path / "take.mp4"))
    ok = subprocess.run(_cli(tmp_path, str(take), "--seconds", "0.5"), capture_output=True, text=True,
                        timeout=300)  # fmt: skip
    assert ok.returncode == 0 and (tmp_path / "out" / "take-checks.json").is_file(), ok.stderr[-2000:]
    take.write_bytes(take.read_bytes()[:3000])
    bad = subprocess.run(_cli(tmp_path, str(take), "--seconds", "0.5"), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr[-2000:]
    assert not [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]


def test_a_preview_stopped_by_sigterm_as_it_analyses_leaves_no_half_built_template(tmp_path):
    """SIGTERM (a scheduler's stop) during the analysis: exit 143, saying so, and the
    template being built is removed, where the process died with it left in the cache."""
    take = lecture_clip(tmp_path / "long.mp4", size=(640, 400), face=120, seconds=20.0).path
    proc = subprocess.Popen(_cli(tmp_path, str(take), "--seconds", "0.5"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "cache").glob(".*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list((tmp_path / "cache").glob(".*.tmp")), "the analysis was not seen under way"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM; nothing half done is left"
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_a_missing_reference_is_exit_2_naming_it(tmp_path):
    got, report = _preview(tmp_path, str(tmp_path / "nobody.mp4"))
    assert got.exit_code == 2 and report is None
    assert "nobody.mp4" in got.stderr and "error:" in got.stderr


def test_a_reference_whose_name_starts_with_a_tilde_is_that_name(tmp_path, monkeypatch):
    """``~take.mp4`` names a file, not user take.mp4's home (a RuntimeError traceback)."""
    monkeypatch.chdir(tmp_path)
    got, report = _preview(tmp_path, "~take.mp4")
    assert got.exit_code == 2 and report is None
    assert "error: reference ~take.mp4 does not exist; check the path" in got.stderr


def test_paths_from_the_home_folder_are_read_and_written_there(examples, tmp_path, monkeypatch):
    """``preview ~/take.jpg`` as a script's quoted text or ``-o=~/x`` leaves it: ``~`` is the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(examples / "presenter.jpg", tmp_path / "take.jpg")
    got = runner.invoke(app, ["preview", "~/take.jpg", "--seconds", "0.5", "-o", "~/out", "--cache-dir", "~/cache",
                              "--engines", "~/engines"])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert sorted(p.name for p in (tmp_path / "out").glob("take-*")) == ["take-checks.json", "take-preview.mp4",
                                                                     "take-sheet.png"]  # fmt: skip
    assert any((tmp_path / "cache").iterdir()) and not (Path.cwd() / "~").exists()


def test_a_manifest_is_previewed_reference_by_reference_and_the_advised_start_filled_in(examples, tmp_path):
    """Tonight's manifest: a lecture whose first 3 s are the slide alone in two rows, the
    bundled presenter in two (one with audio that is not there), and a row whose take is
    missing. Each reference is checked once (the lecture fails `lost`, the presenter
    passes, the missing take fails); the row without audio is said; the copy of the
    manifest gives the lecture's rows the start the check names and leaves the others'
    cells as they were, and the manifest itself is not written. Previewed again, that copy
    passes and advises nothing."""
    lecture = lecture_clip(tmp_path / "lecture.mp4", size=(640, 400), face=120, seconds=6.0, corner="centre",
                           motion="still", absent=(0.0, 3.0)).path  # fmt: skip
    speech, presenter = examples / "lesson1.wav", examples / "presenter.mp4"
    manifest = tmp_path / "tonight.csv"
    manifest.write_text(f"job_id,audio,video,title\nNA,{speech},{lecture},first\nb,{examples / 'lesson2.mp3'},{lecture},\n"
                        f"c,{speech},{presenter},third\nd,{tmp_path / 'gone.wav'},{presenter},\n"
                        f"e,{speech},{tmp_path / 'nobody.mp4'},\n")  # fmt: skip
    before = manifest.read_bytes()
    got, _ = _preview(tmp_path / "a", "--manifest", str(manifest), "--seconds", "1", "--reference-seconds", "5")
    assert got.exit_code == 1, got.output
    lines = got.stdout.splitlines()
    assert lines[0] == f"reference {lecture} (rows 1, 2; reference_seconds 5)"
    assert lines[1 + CHECKS.index("lost")].startswith("  fail  lost ") and "--reference-start 3" in lines[2]
    assert lines[len(CHECKS) + 1] == f"  verdict: fail  ({(tmp_path / 'a' / 'out' / 'lecture-checks.json').resolve()})"
    assert lines[len(CHECKS) + 2] == f"reference {presenter} (rows 3, 4; reference_seconds 5)"
    assert lines[2 * len(CHECKS) + 3].startswith("  verdict: ok  (")
    assert lines[2 * len(CHECKS) + 4 :] == [
        f"reference {tmp_path / 'nobody.mp4'} (row 5; reference_seconds 5)",
        f"  fail  reference {tmp_path / 'nobody.mp4'} does not exist; check the path",
        f"row 4 (job 'd'): cannot be rendered: audio {tmp_path / 'gone.wav'} does not exist; check the path",
        "3 references checked: 1 ok, 2 fail; 1 row cannot be rendered",
        "rows 1, 2: reference_start 3",
        f"  {(tmp_path / 'a' / 'out' / 'tonight-previewed.csv').resolve()}: the manifest with these settings "
        "(submit it, or preview it again)",
        "verdict: fail",
    ]
    assert manifest.read_bytes() == before
    written = tmp_path / "a" / "out" / "tonight-previewed.csv"
    jobs, again = read_manifest(manifest, tmp_path / "o"), read_manifest(written, tmp_path / "o")
    assert [(j.job_id, j.audio, j.video, j.output, j.extra) for j in again] == \
           [(j.job_id, j.audio, j.video, j.output, j.extra) for j in jobs]  # fmt: skip
    assert [j.row_settings for j in again] == [(("reference_start", 3.0),)] * 2 + [()] * 3

    checked = tmp_path / "checked.csv"
    checked.write_text("\n".join(written.read_text().splitlines()[:4]) + "\n")  # the rows that can be rendered
    got, _ = _preview(tmp_path / "b", "--manifest", str(checked), "--seconds", "1", "--reference-seconds", "2")
    assert got.exit_code == 0, got.output
    assert f"reference {lecture} (rows 1, 2; reference_start 3, reference_seconds 2)" in got.stdout
    assert "2 references checked: 2 ok" in got.stdout and "previewed.csv" not in got.stdout
    assert not list((tmp_path / "b" / "out").glob("*.csv"))


def test_a_manifest_row_whose_audio_is_silent_is_said_as_its_job_would_fail_it(examples, tmp_path):
    """A row whose audio has no sound in it (a muted export) fails its job ``silent_audio``:
    previewing tonight's manifest says so of that row, where it passed unremarked, unless
    the batch is to allow it (``--allow-silent-audio``, as for submit)."""
    silence = make_silence(tmp_path / "muted.wav", seconds=2.0)
    manifest = tmp_path / "tonight.csv"
    manifest.write_text(f"job_id,audio,video\nmuted,{silence},{examples / 'presenter.jpg'}\n"
                        f"fine,{examples / 'lesson1.wav'},{examples / 'presenter.jpg'}\n")  # fmt: skip
    got, _ = _preview(tmp_path / "a", "--manifest", str(manifest), "--seconds", "0.5")
    assert got.exit_code == 1, got.output
    said = [line for line in got.stdout.splitlines() if ": cannot be rendered: " in line]
    assert len(said) == 1 and said[0].startswith(f"row 1 (job 'muted'): cannot be rendered: audio {silence} is silent: "
                                                 "in its 2.0 s nothing is louder than -60 dBFS")  # fmt: skip
    assert said[0].endswith("or pass --allow-silent-audio to render it as it is")
    allowed, _ = _preview(tmp_path / "b", "--manifest", str(manifest), "--seconds", "0.5", "--allow-silent-audio")
    assert allowed.exit_code == 0 and "cannot be rendered" not in allowed.stdout, allowed.output


def test_one_reference_with_silent_audio_fails_an_audio_check_as_its_job_would(examples, tmp_path):
    """`preview presenter.jpg muted.wav` said `verdict: ok` where submit fails the row
    `silent_audio` (found by an audit). Now an `audio` check fails with the row's message
    (the sheet and the video are still made), unless --allow-silent-audio is given."""
    silence = make_silence(tmp_path / "muted.wav", seconds=2.0)
    got, found = _preview(tmp_path / "a", str(examples / "presenter.jpg"), str(silence), "--seconds", "0.5")
    assert got.exit_code == 1, got.output
    assert found is not None and found["verdict"] == "fail"
    (audio,) = [c for c in found["checks"] if c["check"] == "audio"]
    assert (audio["level"], audio["figure"]) == ("fail", "submit would fail its row (silent_audio)")
    assert audio["advice"].startswith(f"audio {silence} is silent: in its 2.0 s nothing is louder than -60 dBFS")
    assert f"fail  audio         submit would fail its row (silent_audio). audio {silence} is silent" in got.stdout
    assert (tmp_path / "a" / "out" / "presenter-preview.mp4").is_file()
    allowed, found = _preview(tmp_path / "b", str(examples / "presenter.jpg"), str(silence), "--seconds", "0.5",
                              "--allow-silent-audio")  # fmt: skip
    assert allowed.exit_code == 0, allowed.output
    assert found is not None and "audio" not in [c["check"] for c in found["checks"]]
    # Audio cut short: the check fails, and the first seconds it holds are still rendered
    # (the preview stopped with exit 2 and no video: found by a review).
    whole = examples / "lesson1.wav"
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    got, found = _preview(tmp_path / "c", str(examples / "presenter.jpg"), str(cut), "--seconds", "0.5")
    assert got.exit_code == 1, got.output
    assert found is not None and [(c["level"], c["figure"]) for c in found["checks"] if c["check"] == "audio"] == [
        ("fail", "submit would fail its row (unreadable_media)")]
    assert (tmp_path / "c" / "out" / "presenter-preview.mp4").is_file()


def test_one_model_worker_renders_every_reference_of_a_manifest(examples, tmp_path, monkeypatch):
    """Three references (the bundled take whole, from 1 s, and cut at 2 s: one per setting
    its rows give it) are checked and rendered by the one model worker, started once:
    a night's manifest of MuseTalk references loads its networks once, not per take."""
    started: list[ModelWorker] = []

    class Counted(ModelWorker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(preview_module, "ModelWorker", Counted)
    speech, presenter = examples / "lesson1.wav", examples / "presenter.mp4"
    manifest = tmp_path / "three.csv"
    manifest.write_text(f"audio,video,reference_start,reference_seconds\n{speech},{presenter},,\n"
                        f"{speech},{presenter},1,\n{speech},{presenter},,2\n")  # fmt: skip
    found = preview_manifest(manifest, RenderConfig(), tmp_path / "cache", tmp_path / "engines", tmp_path / "out",
                             seconds=0.5)  # fmt: skip
    assert [c.verdict for c in found.references] == ["ok"] * 3 and len(started) == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*-preview.mp4")) == \
           ["presenter-2-preview.mp4", "presenter-3-preview.mp4", "presenter-preview.mp4"]  # fmt: skip


def test_a_preview_never_writes_over_an_input(examples, tmp_path):
    """Previewed into the folder of the media, the take's side-by-side would be named as a
    file that is an input (here the speech, exported as lecture-preview.mp4; a link to the
    take named so): exit 2 naming both, the input unchanged. In a manifest, that reference
    fails alone and the others are checked."""
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    take, speech = media_dir / "lecture.mp4", media_dir / "lecture-preview.mp4"
    take.write_bytes((examples / "presenter.mp4").read_bytes())
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(examples / "lesson1.wav"), "-c:a", "aac",
                    str(speech)], check=True)  # fmt: skip
    before = speech.read_bytes()
    got = runner.invoke(app, ["preview", str(take), str(speech), "-o", str(media_dir), "--seconds", "1",
                              "--cache-dir", str(tmp_path / "cache"), "--engines", str(tmp_path / "engines")])  # fmt: skip
    assert got.exit_code == 2, got.output
    assert f"preview would write {speech}, which is the input {speech}: give --output-dir a folder apart" in got.stderr
    assert speech.read_bytes() == before and not list(media_dir.glob("*-sheet.png"))
    other = media_dir / "other.mp4"
    other.write_bytes(take.read_bytes())
    (media_dir / "other-checks.json").symlink_to(other)  # another name of the take
    manifest = tmp_path / "tonight.csv"
    manifest.write_text(f"audio,video\n{examples / 'lesson1.wav'},{other}\n"
                        f"{examples / 'lesson1.wav'},{examples / 'presenter.mp4'}\n")  # fmt: skip
    found = preview_manifest(manifest, RenderConfig(), tmp_path / "cache", tmp_path / "engines", media_dir, seconds=0.5)
    first, second = found.references
    assert first.verdict == "fail" and first.error is not None and second.verdict == "ok"
    assert f"preview would write {media_dir / 'other-checks.json'}, which is the input {other}" in first.error.message
    assert other.read_bytes() == (examples / "presenter.mp4").read_bytes()


@pytest.mark.parametrize("seconds", ["nan", "inf", "0", "-1"])
def test_seconds_that_are_no_length_are_refused(examples, tmp_path, seconds):
    got, report = _preview(tmp_path, str(examples / "presenter.jpg"), "--seconds", seconds)
    assert got.exit_code == 2 and report is None, got.output
    assert got.stderr.startswith("error: --seconds must be a number of seconds above 0, got ")


def test_a_reference_that_is_a_loop_of_links_is_exit_2_naming_it(tmp_path):
    """Two links naming each other: said as a reference not there, not a traceback (exit 1,
    which means a check failed)."""
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    got, report = _preview(tmp_path, str(tmp_path / "loop1"))
    assert got.exit_code == 2 and report is None, got.output
    assert got.stderr.startswith("error: ") and "loop1" in got.stderr and "Traceback" not in got.output


def test_a_take_over_the_pixel_limit_is_refused_naming_an_option_preview_has(tmp_path):
    """The limit preview is told is the one it holds to, and the option its message names
    is one it takes: raised to the take's own size, exactly, the take is decoded and
    searched (FFmpeg's decoders count a picture's rows padded to whole blocks: told the
    limit itself, they refused a take at it as undecodable)."""
    photo = tmp_path / "big.png"
    cv2.imwrite(str(photo), np.full((400, 600, 3), 128, np.uint8))
    got, report = _preview(tmp_path, str(photo), "--max-reference-pixels", "100000", "--seconds", "0.2")
    assert got.exit_code == 2 and report is None, got.output
    assert "--max-reference-pixels 100000" in got.stderr
    got, report = _preview(tmp_path, str(photo), "--max-reference-pixels", "240000", "--seconds", "0.2")
    assert "--max-reference-pixels" not in got.output and "No such option" not in got.output
    assert got.exit_code == 2 and "no face found" in got.stderr, got.output  # (a grey picture)


def test_preview_takes_a_reference_or_a_manifest(examples, tmp_path):
    for args in ([], [str(examples / "presenter.mp4"), "--manifest", str(examples / "manifest.csv")]):
        got, report = _preview(tmp_path, *args)
        assert got.exit_code == 2 and report is None, got.output
        assert "give a REFERENCE (and its AUDIO, if you like), or --manifest MANIFEST, not both" in got.stderr


@pytest.mark.parametrize(("absent", "seen"), [((0.0, 9.0), 9.0), ((0.0, 1.5), 2.0), ((0.0, 14.0), None)])
def test_the_first_keyframe_with_a_face_is_found_past_the_scans_that_skip_some(tmp_path, absent, seen):
    """``first_seen`` scans keyframes (one a second here) every ``FIRST_SEEN_STEP_S`` from 2 s,
    then those it skipped: the presenter coming in at 9 s is found at 9 s (scans at 2, 7 and
    12 s, then 8 and 9), at 1.5 s at the first keyframe searched, never: None."""
    take = lecture_clip(tmp_path / "take.mp4", size=(480, 300), face=100, seconds=14.0, corner="centre",
                        motion="still", absent=absent, keyframe_s=1.0).path  # fmt: skip
    assert arrival.FIRST_SEEN_STEP_S == 5.0
    assert arrival.first_seen(take, DetectorConfig(), 2.0) == seen


@pytest.mark.parametrize(("size", "seen"), [(None, 2.0), ((480, 300), 2.0), ((240, 150), None)])
def test_a_face_counts_the_pixels_analysis_would_see(tmp_path, size, seen):
    """A face 60 px wide in 480×300 is found at that size; scaled down as ``max_resolution``
    scales the frames analysed (240×150: 30 px, under ``min_face``) it is not: a start named
    for a face analysis then cannot find would be no answer."""
    take = lecture_clip(tmp_path / "take.mp4", size=(480, 300), face=60, seconds=4.0, corner="centre",
                        motion="still", absent=(0.0, 1.5), keyframe_s=1.0).path  # fmt: skip
    assert arrival.first_seen(take, DetectorConfig(), 1.0, size=size) == seen
