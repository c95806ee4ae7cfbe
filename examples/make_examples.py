#!/usr/bin/env python3
"""Regenerate the bundled example inputs in this folder.

The outputs are committed to the repository, so running the demo needs none of
what this script needs. You only run it to rebuild or change the examples:

    python examples/make_examples.py            # rebuild everything, then check it
    python examples/make_examples.py --check    # only check the committed files

Needs:
  * scikit-image  (``pip install scikit-image``) for ``skimage.data.astronaut()``,
    the NASA portrait of astronaut Eileen Collins (public domain);
  * espeak-ng     (``apt-get install espeak-ng``) to synthesise the two speech clips;
  * opencv-python-headless, numpy, and an ffmpeg binary with libx264 and libmp3lame
    (the one from ``imageio-ffmpeg`` is used when installed, else ``ffmpeg`` on PATH).

Writes (byte-identical on reruns with the same espeak-ng / ffmpeg / OpenCV versions):
  presenter.jpg   480x480 head-and-shoulders crop of the portrait (JPEG q92)
  presenter.mp4   4 s, 25 fps, 384x384 H.264 yuv420p, no audio: the portrait with a
                  slow, smooth zoom / pan / sway that loops seamlessly
  lesson1.wav     speech, 16 kHz mono 16-bit PCM
  lesson2.mp3     different speech, 22.05 kHz mono MP3 64 kb/s
  manifest.csv    job_id,audio,video,title rows; paths relative to this folder

The check step detects faces with OpenCV's frontal Haar cascade in the still and in
every decoded video frame (exactly one face each, at least MIN_FACE px wide) and
prints the audio durations as ffmpeg reports them.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent

# Still: a square window of the 512x512 source around the face (x 177..272,
# y 66..161 in the source), scaled up with Lanczos.
STILL_BOX = (96, 0, 256)  # x0, y0, side in source pixels
STILL_SIZE = 480
JPEG_QUALITY = 92

# Video: a smaller window so the moving window always stays inside the source
# (no borders); the motion is periodic over the clip so it loops seamlessly.
VIDEO_CENTER = (224.0, 134.0)  # source pixels
VIDEO_SIDE = 252.0  # source pixels at zoom 1.0
VIDEO_SIZE = 384
FPS = 25
SECONDS = 4
ZOOM_AMPLITUDE = 0.05  # zoom 1.00 -> 1.05 -> 1.00
PAN_X, PAN_Y = 4.0, 2.5  # source pixels
SWAY_DEG = 0.8

SPEECH = {
    "lesson1": (
        "Welcome to today's lesson on photosynthesis. "
        "Plants use sunlight and water, to make their food."
    ),
    "lesson2": (
        "In this unit, we will practise adding fractions. "
        "First, we find a common denominator."
    ),
}
VOICE = "en-us+f3"
WORDS_PER_MIN = 170
WORD_GAP = 2  # espeak-ng -g, units of 10 ms
PAD_S = 0.3  # silence added before the speech (espeak-ng already ends with ~0.3 s)

MANIFEST_ROWS = [
    ("lesson1-video", "lesson1.wav", "presenter.mp4", "Photosynthesis - introduction (video reference)"),
    ("lesson2-video", "lesson2.mp3", "presenter.mp4", "Adding fractions - introduction (video reference)"),
    ("lesson1-photo", "lesson1.wav", "presenter.jpg", "Photosynthesis - introduction (still photo)"),
]

MIN_FACE = 100
HAAR = "haarcascade_frontalface_default.xml"


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        exe = shutil.which("ffmpeg")
        if exe is None:
            sys.exit("ffmpeg not found: pip install imageio-ffmpeg, or install ffmpeg")
        return exe


def run(cmd: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd[:4])} ...\n{err}")
    return proc


def source_portrait_bgr() -> np.ndarray:
    from skimage import data  # only needed to regenerate

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


# ---------------------------------------------------------------- still


def make_still(src: np.ndarray, out: Path) -> None:
    x0, y0, side = STILL_BOX
    crop = src[y0 : y0 + side, x0 : x0 + side]
    still = cv2.resize(crop, (STILL_SIZE, STILL_SIZE), interpolation=cv2.INTER_LANCZOS4)
    ok, buf = cv2.imencode(".jpg", still, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise SystemExit("JPEG encoding failed")
    out.write_bytes(buf.tobytes())


# ---------------------------------------------------------------- video


def frame_matrix(i: int, n: int) -> np.ndarray:
    """2x3 affine map from source pixels to output pixels for frame ``i`` of ``n``."""
    t = 2.0 * math.pi * i / n  # one full period over the clip -> seamless loop
    zoom = 1.0 + ZOOM_AMPLITUDE * 0.5 * (1.0 - math.cos(t))
    cx = VIDEO_CENTER[0] + PAN_X * math.sin(t)
    cy = VIDEO_CENTER[1] - PAN_Y * 0.5 * (1.0 - math.cos(t))  # drift up a little while zooming in
    angle = SWAY_DEG * math.sin(t + 0.6)
    scale = zoom * VIDEO_SIZE / VIDEO_SIDE
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    # move the window centre to the output centre
    m[0, 2] += VIDEO_SIZE / 2.0 - cx
    m[1, 2] += VIDEO_SIZE / 2.0 - cy
    return m


def window_inside(m: np.ndarray, w: int, h: int) -> bool:
    inv = cv2.invertAffineTransform(m)
    s = VIDEO_SIZE
    corners = np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], dtype=np.float64)
    pts = corners @ inv.T
    xs, ys = pts[:, 0], pts[:, 1]
    return bool((xs >= 0).all() and (xs <= w - 1).all() and (ys >= 0).all() and (ys <= h - 1).all())


def make_video(src: np.ndarray, out: Path, ffmpeg: str) -> None:
    h, w = src.shape[:2]
    n = FPS * SECONDS
    frames = []
    for i in range(n):
        m = frame_matrix(i, n)
        if not window_inside(m, w, h):
            raise SystemExit(f"frame {i}: the camera window leaves the source image; reduce the motion")
        frames.append(
            cv2.warpAffine(src, m, (VIDEO_SIZE, VIDEO_SIZE), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT101)
        )
    raw = np.stack(frames).tobytes()
    run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{VIDEO_SIZE}x{VIDEO_SIZE}", "-r", str(FPS), "-i", "-",
            "-an", "-c:v", "libx264", "-preset", "slow", "-crf", "20", "-pix_fmt", "yuv420p",
            "-threads", "1", "-g", str(FPS * 2), "-movflags", "+faststart",
            "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
            str(out),
        ],
        stdin=raw,
    )


# ---------------------------------------------------------------- audio


def make_speech(text: str, out: Path, ffmpeg: str, codec_args: list[str]) -> None:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng (only needed to regenerate)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        run([espeak, "-v", VOICE, "-s", str(WORDS_PER_MIN), "-g", str(WORD_GAP), "-w", str(raw), text])
        pad_ms = int(PAD_S * 1000)
        run(
            [
                ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(raw),
                "-af", f"adelay={pad_ms}:all=1",
                "-ac", "1", *codec_args,
                "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
                str(out),
            ]
        )


# ---------------------------------------------------------------- manifest


def make_manifest(out: Path) -> None:
    with out.open("w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["job_id", "audio", "video", "title"])
        wr.writerows(MANIFEST_ROWS)


# ---------------------------------------------------------------- checks


def faces(detector: cv2.CascadeClassifier, bgr: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    found = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
    return np.asarray(found).reshape(-1, 4)


def decode_video(path: Path, ffmpeg: str) -> tuple[list[np.ndarray], int, int]:
    probe = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, check=False)
    info = probe.stderr.decode(errors="replace")
    m = re.search(r"Video: .*?, (\d{2,5})x(\d{2,5})", info)
    if not m:
        raise SystemExit(f"cannot read the size of {path}:\n{info}")
    if re.search(r"Stream .*Audio:", info):
        raise SystemExit(f"{path} has an audio track; it should have none")
    w, h = int(m.group(1)), int(m.group(2))
    raw = run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]).stdout
    n = len(raw) // (w * h * 3)
    arr = np.frombuffer(raw[: n * w * h * 3], dtype=np.uint8).reshape(n, h, w, 3)
    return list(arr), w, h


def duration(path: Path, ffmpeg: str) -> tuple[float, str]:
    probe = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, check=False)
    info = probe.stderr.decode(errors="replace")
    m = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", info)
    a = re.search(r"Audio: (.*)", info)
    if not m:
        raise SystemExit(f"cannot read the duration of {path}:\n{info}")
    secs = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return secs, (a.group(1).strip() if a else "?")


def check(ffmpeg: str) -> None:
    detector = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR)
    if detector.empty():
        raise SystemExit("could not load the Haar cascade")
    problems: list[str] = []

    still = cv2.imread(str(HERE / "presenter.jpg"))
    f = faces(detector, still)
    print(f"presenter.jpg  {still.shape[1]}x{still.shape[0]}  faces={len(f)}  boxes={f.tolist()}")
    if len(f) != 1 or f[0][2] < MIN_FACE:
        problems.append(f"presenter.jpg: expected one face >= {MIN_FACE}px, got {f.tolist()}")

    frames, w, h = decode_video(HERE / "presenter.mp4", ffmpeg)
    widths = []
    for i, fr in enumerate(frames):
        f = faces(detector, fr)
        if len(f) != 1 or f[0][2] < MIN_FACE:
            problems.append(f"presenter.mp4 frame {i}: expected one face >= {MIN_FACE}px, got {f.tolist()}")
        widths.extend(int(b[2]) for b in f)
    vdur, _ = duration(HERE / "presenter.mp4", ffmpeg)
    print(
        f"presenter.mp4  {w}x{h}  frames={len(frames)}  duration={vdur:.2f}s  "
        f"face width min={min(widths, default=0)} max={max(widths, default=0)}"
    )

    for name in ("lesson1.wav", "lesson2.mp3"):
        secs, desc = duration(HERE / name, ffmpeg)
        print(f"{name:<13}  {secs:.2f}s  {desc}")

    for name in ("presenter.jpg", "presenter.mp4", "lesson1.wav", "lesson2.mp3", "manifest.csv"):
        print(f"  {name:<13} {(HERE / name).stat().st_size:>8} bytes")

    with (HERE / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for col in ("audio", "video"):
                if not (HERE / row[col]).is_file():
                    problems.append(f"manifest.csv {row['job_id']}: {col} {row[col]!r} does not exist")

    if problems:
        raise SystemExit("check failed:\n  " + "\n  ".join(problems[:20]))
    print("check passed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the existing files")
    args = ap.parse_args()
    ffmpeg = ffmpeg_exe()
    if not args.check:
        src = source_portrait_bgr()
        make_still(src, HERE / "presenter.jpg")
        make_video(src, HERE / "presenter.mp4", ffmpeg)
        make_speech(SPEECH["lesson1"], HERE / "lesson1.wav", ffmpeg, ["-ar", "16000", "-c:a", "pcm_s16le"])
        make_speech(SPEECH["lesson2"], HERE / "lesson2.mp3", ffmpeg, ["-ar", "22050", "-c:a", "libmp3lame", "-b:a", "64k"])
        make_manifest(HERE / "manifest.csv")
    check(ffmpeg)


if __name__ == "__main__":
    main()
