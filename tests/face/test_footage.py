"""The presenter found and followed in lecture-like footage: the bundled portrait small,
in a corner, moving, on a busy slide, at 240p to 4K (tests/helpers/footage.py)."""

from __future__ import annotations

import csv
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from heygem_ray import media
from heygem_ray.config import DetectorConfig, RenderConfig, RunConfig
from heygem_ray.driver import submit
from heygem_ray.face.haar import HaarDetector
from heygem_ray.face.track import FaceTrack, Tracker, find_presenter, iou
from heygem_ray.job import InProcessService, render_job
from heygem_ray.manifest import Job
from heygem_ray.packs import get_pack
from heygem_ray.worker import ModelWorker
from tests.helpers.footage import Footage, lecture_clip, track_footage, with_camera_noise

SIZES = {"240p": (320, 240), "720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160), "4K-top-left": (3840, 2160)}
# 4K-top-left: the hardest case, the smallest face starting amid the slide's text and
# moving 6 face widths a second (the pan scales with the frame, not the face).
CASES = [("240p", 40)] + [(res, face) for res in ("720p", "1080p", "4K") for face in (40, 64, 96, 200)] + [
    ("4K-top-left", 40)
]
SR = 16000


def _corner(res: str) -> str:
    return "top-left" if res in ("1080p", "4K-top-left") else "bottom-right"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[tuple[str, int], Footage]:
    """One second of each case, panning and zooming from a corner."""
    tmp = tmp_path_factory.mktemp("footage")
    return {
        (res, face): lecture_clip(tmp / f"{res}-{face}.mp4", size=SIZES[res], face=face, corner=_corner(res))
        for res, face in CASES
    }


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("templates")


@pytest.fixture(scope="module")
def tracks(clips, templates) -> dict[tuple[str, int], FaceTrack]:
    """Each clip's track, found once (it does not depend on the pack) by analysing the clip
    as a run with the default pack does: the run through Ray below finds these templates."""
    return {case: track_footage(clip.path, templates, RenderConfig().pack) for case, clip in clips.items()}


def truth(clip: Footage) -> FaceTrack:
    """The track the footage was made with: its true face boxes and mouths."""
    side = clip.faces[:, 2] - clip.faces[:, 0]
    uv = ((clip.mouths - clip.faces[:, :2]) / side[:, None]).astype(np.float32)
    shown = ~np.isnan(clip.faces[:, 0])
    return FaceTrack(boxes=clip.faces, present=shown, detected=shown, mouths=uv, chins=uv[:, 1] + 0.25)


def buzz(path: Path, seconds: float, spans: list[tuple[float, float]]) -> Path:
    """A 16 kHz WAV: silence with a 200 Hz square-wave buzz (speech-band energy) in ``spans``."""
    t = np.arange(int(seconds * SR)) / SR
    wav = np.zeros_like(t)
    for a, b in spans:
        on = (t >= a) & (t < b)
        wav[on] = 0.3 * np.sign(np.sin(2 * np.pi * 200 * t[on]))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((wav * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("pack", ["warp", "wav2lip", "musetalk"])
@pytest.mark.parametrize("res,face", CASES, ids=[f"{r}-{f}px" for r, f in CASES])
def test_the_crop_box_covers_the_true_face_on_every_frame(clips, tracks, res, face, pack):
    clip, track = clips[(res, face)], tracks[(res, face)]
    geometry = get_pack(pack).geometry
    boxes = geometry.crop_boxes(track, *clip.size)  # what analyze keeps as the template's boxes
    expected = geometry.crop_boxes(truth(clip), *clip.size).astype(np.float32)
    overlap = iou(boxes.astype(np.float32), expected).diagonal()
    assert track.present.all()
    assert overlap.min() >= 0.6, f"worst frame {int(overlap.argmin())}: IoU {overlap.min():.2f}"


def test_a_face_smaller_than_the_smallest_searched_for_is_no_face_with_the_limit_and_the_fix(clips, tmp_path):
    clip = clips[("720p", 40)]
    job = Job(row=3, job_id="small", audio=buzz(tmp_path / "a.wav", 1.0, [(0.2, 0.8)]), video=clip.path, output=tmp_path / "o.mp4")
    cfg = RenderConfig(backend="pytorch", detector=DetectorConfig(min_face=64))
    service = InProcessService(ModelWorker(cfg, engines_dir=tmp_path / "engines"))
    result = render_job(job, cfg, tmp_path / "cache", service)
    assert result.status == "failed" and result.error_kind == "no_face"
    assert "from 64 pixels wide" in result.error and "--min-face" in result.error
    assert str(clip.path) in result.error and "row 3" in result.error


def test_a_face_scaled_below_the_smallest_by_max_resolution_says_so(clips, tmp_path):
    """The 40-px face of a 720p take, scaled to 360 lines (20 px, half the 40 searched
    for): no_face, naming the scaling and how to keep the face at its size."""
    clip = clips[("720p", 40)]
    job = Job(row=4, job_id="scaled", audio=buzz(tmp_path / "a.wav", 1.0, [(0.2, 0.8)]), video=clip.path,
              output=tmp_path / "o.mp4")  # fmt: skip
    cfg = RenderConfig(backend="pytorch", max_resolution=360)
    service = InProcessService(ModelWorker(cfg, engines_dir=tmp_path / "engines"))
    result = render_job(job, cfg, tmp_path / "cache", service)
    assert result.status == "failed" and result.error_kind == "no_face", result.error
    assert "scaled down from 1280×720 to 640×360 by --max-resolution" in result.error
    assert "a higher one, or 0, keeps them at their size" in result.error


def test_a_still_face_does_not_jitter(tmp_path):
    clip = lecture_clip(tmp_path / "still.mp4", size=(1920, 1080), face=96, seconds=2.0, corner="centre", motion="still")
    track = track_footage(clip.path, tmp_path / "cache")
    for pack in ("warp", "wav2lip", "musetalk"):
        step = np.abs(np.diff(get_pack(pack).geometry.crop_boxes(track, *clip.size), axis=0))
        assert step.max() <= 1, f"{pack}: a crop box edge moved {step.max()} px between frames"


class CountedScans(HaarDetector):
    """OpenCV's cascade, noting the frames on which the frame was scanned (the calls with no
    largest size: ``face.search.scan``), and how many pixels each scan read."""

    def __init__(self) -> None:
        super().__init__()
        self.frame = 0
        self.scanned: dict[int, int] = {}

    @property
    def scans(self) -> list[int]:
        return list(self.scanned)

    def detect(self, grey: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
        if max_size == 0:
            self.scanned[self.frame] = self.scanned.get(self.frame, 0) + grey.size
        return super().detect(grey, min_size, max_size)


def test_scans_are_seldom_while_the_face_is_followed_and_a_face_that_comes_in_is_found_from_its_first_frame(
        tmp_path):  # fmt: skip
    """Every 2 s (``steady_scan_interval_s``) while every face followed is found, not every
    0.5 s; a second face that comes in between two scans is followed back to the frame it
    came in."""
    clip = lecture_clip(tmp_path / "second.mp4", size=(640, 360), face=80, seconds=4.0, corner="bottom-right",
                        motion="still", second_face=72, second_from=1.2)
    cfg = DetectorConfig()
    detector = CountedScans()
    frames: list[np.ndarray] = []
    tracker = Tracker(detector, cfg, clip.fps, frames.__getitem__)
    for i, frame in enumerate(media.iter_frames(media.probe_video(clip.path), pixel_format="yuv420p")):
        detector.frame = i
        frames.append(frame)
        tracker.add(frame)
    assert detector.scans == [0, 50], detector.scans  # 0.5 s apart would be 8 scans
    track = find_presenter(tracker, clip.fps)
    assert track is not None and track.detected.all()
    (other,) = track.others  # x0, y0, x1, y1, share of the frames
    assert other[4] == pytest.approx((100 - 30) / 100, abs=0.02), other  # from frame 30 (1.2 s) on


def test_a_scan_looks_again_only_where_the_frame_changed(tmp_path):
    """Camera noise over the whole frame, a still presenter talking, and a second face that
    comes in at 1.2 s: the scan at 2 s reads the region around the new face (found, and
    followed back to the frame it came in), not the noise or the talking face."""
    clip = lecture_clip(tmp_path / "second.mp4", size=(1280, 720), face=80, seconds=2.4, corner="bottom-right",
                        motion="still", talk=lambda t: 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t), second_face=72,
                        second_from=1.2)  # fmt: skip
    clip = with_camera_noise(clip, tmp_path / "camera.mp4")
    detector = CountedScans()
    frames: list[np.ndarray] = []
    tracker = Tracker(detector, DetectorConfig(), clip.fps, frames.__getitem__)
    for i, frame in enumerate(media.iter_frames(media.probe_video(clip.path), pixel_format="yuv420p")):
        detector.frame = i
        frames.append(frame)
        tracker.add(frame)
    whole = round(1280 * tracker.scale) * round(720 * tracker.scale)
    assert detector.scans == [0, 50] and detector.scanned[0] == whole
    assert detector.scanned[50] < 0.4 * whole, detector.scanned[50] / whole
    track = find_presenter(tracker, clip.fps)
    assert track is not None and track.detected.all()
    (other,) = track.others
    assert other[4] == pytest.approx((60 - 30) / 60, abs=0.02), other


@pytest.fixture(scope="module")
def warp_service(tmp_path_factory):
    return InProcessService(ModelWorker(RenderConfig(backend="pytorch"), engines_dir=tmp_path_factory.mktemp("e")))


def _through_encoder(frames: np.ndarray, like: Path, audio: Path, tmp: Path) -> np.ndarray:
    """``frames`` as the job's encoder gives them back: the codec's noise floor."""
    info = media.probe_video(like)
    path = tmp / "floor.mp4"
    with media.VideoWriter(path, width=info.width, height=info.height, fps=info.fps, audio=audio,
                           duration=len(frames) / float(info.fps)) as writer:  # fmt: skip
        writer.write(frames)
    return media.read_video(path)[0]


def test_frames_where_the_face_is_gone_are_left_as_they_are(tmp_path, warp_service):
    # Three seconds of buzz; the face is cut away to the slide in the middle second.
    clip = lecture_clip(tmp_path / "cut.mp4", size=(1280, 720), face=64, seconds=3.0, absent=(1.0, 2.0))
    audio = buzz(tmp_path / "speech.wav", 3.0, [(0.0, 3.0)])
    job = Job(row=1, job_id="cut", audio=audio, video=clip.path, output=tmp_path / "cut-out.mp4")
    result = render_job(job, RenderConfig(backend="pytorch"), tmp_path / "cache", warp_service)
    assert result.status == "ok", result.error
    gone = np.isnan(clip.faces[:, 0])
    assert result.face_lost_frames == gone.sum() == 25
    out = media.read_video(tmp_path / "cut-out.mp4")[0]
    ref = media.read_video(clip.path)[0]
    floor = _through_encoder(ref, clip.path, audio, tmp_path)
    # Around where the face was: in the cut, only the codec's noise; with the face, the open mouth.
    x0, y0, x1, y1 = (int(v) for v in np.nanmean(clip.faces, axis=0) + [-20, -20, 20, 40])
    region = (slice(None), slice(y0, y1), slice(x0, x1))
    change = np.abs(out[region].astype(np.int16) - ref[region].astype(np.int16)).mean(axis=(1, 2, 3))
    noise = np.abs(floor[region].astype(np.int16) - ref[region].astype(np.int16)).mean(axis=(1, 2, 3))
    assert (change[gone] <= noise[gone] + 0.3).all()
    assert change[~gone].mean() > noise[~gone].mean() + 1.0


def test_the_mouth_follows_the_audio_on_the_smallest_face(tmp_path, warp_service):
    clip = lecture_clip(tmp_path / "small.mp4", size=(1280, 720), face=40, seconds=3.0)
    audio = buzz(tmp_path / "speech.wav", 3.0, [(1.0, 2.0)])
    job = Job(row=1, job_id="small", audio=audio, video=clip.path, output=tmp_path / "small-out.mp4")
    result = render_job(job, RenderConfig(backend="pytorch"), tmp_path / "cache", warp_service)
    assert result.status == "ok", result.error
    out = media.read_video(tmp_path / "small-out.mp4")[0]
    ref = media.read_video(clip.path)[0]
    floor = _through_encoder(ref, clip.path, audio, tmp_path)

    def mouth_change(frames: np.ndarray) -> np.ndarray:
        """Mean absolute change per frame in a box around the true mouth."""
        values = []
        for f, r, (mx, my) in zip(frames, ref, clip.mouths, strict=True):
            ys, xs = slice(int(my) - 6, int(my) + 10), slice(int(mx) - 10, int(mx) + 10)
            values.append(np.abs(f[ys, xs].astype(np.int16) - r[ys, xs].astype(np.int16)).mean())
        return np.array(values)

    change, noise = mouth_change(out), mouth_change(floor)
    sound = slice(28, 47)  # the buzz is frames 25..49; away from its edges
    silence = np.r_[0:20, 55:75]
    assert change[silence].mean() < noise[silence].mean() + 0.5  # closed: the reference as it was
    assert change[sound].mean() > noise[sound].mean() + 5.0  # open while the buzz sounds


def test_every_lecture_clip_renders_through_ray(clips, tracks, templates, tmp_path, ray_local):
    audio = buzz(tmp_path / "speech.wav", 1.0, [(0.2, 0.8)])
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["job_id", "audio", "video"])
        for (res, face), clip in clips.items():
            rows.writerow([f"{res}-{face}", audio, clip.path])
    # x264's fastest preset: the 4K clips' encoding is most of this run, and not what it tests.
    run = RunConfig(output_dir=tmp_path / "out", cache_dir=templates, render=RenderConfig(preset="ultrafast"))
    summary = submit(manifest, run)
    table = pq.read_table(summary.results_path).to_pylist()
    assert [r["status"] for r in table] == ["ok"] * len(clips), [r["error"] for r in table]
    for row in table:
        res = row["job_id"].rsplit("-", 1)[0]
        frames, _ = media.read_video(Path(row["output"]))
        assert frames.shape == (25, SIZES[res][1], SIZES[res][0], 3)
        assert row["face_lost_frames"] == 0
