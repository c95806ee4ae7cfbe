"""Lecture-like reference clips: the bundled portrait composited small, off-centre and
moving onto a busy slide, at any frame size, with the face's true box on every frame.

The portrait (``examples/presenter.jpg``) is cut out with a feathered oval around head and
shoulders and placed so that its face box (``PORTRAIT_FACE``) is ``face`` pixels wide in
the frame. The slide behind it has a title bar, lines of text, a bar chart and a photo-like
patch: edges and blobs of every scale, as a detector meets them in real captures.

The hard cases a reference check must see are made the same way, each with a known
answer: a presenter who talks (the portrait's jaw and lower lip warped down and up by a
known opening per frame), a mouth covered (a phone-like patch over it, moving with the
face), a dark take (every frame scaled down in brightness), and a second face (the
portrait again, smaller, in another place).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from heygem_ray.analyze import analyze
from heygem_ray.checks import Reference
from heygem_ray.config import DetectorConfig
from heygem_ray.face.track import FaceTrack
from heygem_ray.media import ffmpeg_exe
from heygem_ray.packs import get_pack

PORTRAIT = Path(__file__).resolve().parents[2] / "examples" / "presenter.jpg"
# The face in the portrait as OpenCV's frontal cascade boxes it at full resolution
# (x0, y0, x1, y1), 480×480 pixels: brow to chin, ear to ear. Test media is placed by it.
PORTRAIT_FACE = (149.0, 122.0, 330.0, 303.0)
# The mouth's centre in the portrait (between the lips), measured by eye.
PORTRAIT_MOUTH = (239.0, 272.0)
# The oval that cuts head and shoulders out of the portrait: centre, radii, soft edge (px).
_MATTE = ((240.0, 250.0), (175.0, 235.0), 24.0)
# A talking mouth at full opening: the lower lip and jaw move down this many portrait
# pixels (a wide-open mouth: 0.12 face heights), the upper lip up a quarter of it.
TALK_DROP = 22.0
# The covering patch, in portrait pixels: a phone held in front of the mouth.
COVER = (195, 255, 285, 300)  # x0, y0, x1, y1: lips and the chin above its tip


@dataclass(frozen=True)
class Footage:
    path: Path
    size: tuple[int, int]  # (width, height)
    fps: int
    faces: np.ndarray  # (frames, 4) float32 true face box per frame; NaN where no face is shown
    mouths: np.ndarray  # (frames, 2) float32 true mouth centre (x, y); NaN likewise
    openings: np.ndarray  # (frames,) float32 the mouth opening made in [0, 1] (0: as the portrait is)


def slide(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 BGR: a busy lecture slide."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), (246, 244, 240), np.uint8)
    u = max(1, round(height / 240))  # one unit: 1 px at 240p, 9 px at 4K
    cv2.rectangle(img, (0, 0), (width, 22 * u), (120, 60, 20), -1)  # title bar
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "Lecture 7: Fourier series", (6 * u, 16 * u), font, 0.45 * u, (255, 255, 255), max(1, u))
    words = "signal frequency sum term wave period amplitude phase series basis even odd".split()
    y = 40 * u
    while y < height - 10 * u:  # bullet lines of small text over the whole width
        x = 8 * u
        cv2.circle(img, (x, y - 3 * u), 2 * u, (40, 40, 40), -1)
        x += 8 * u
        while x < width - 40 * u:
            word = str(rng.choice(words))
            cv2.putText(img, word, (x, y), font, 0.3 * u, (30, 30, 30), max(1, u // 2))
            x += (len(word) * 6 + 6) * u
        y += 14 * u
    # A bar chart and a photo-like patch of soft noise.
    for i in range(6):
        x0 = width // 2 + i * 14 * u
        top = height // 2 - int(rng.integers(10, 60)) * u
        cv2.rectangle(img, (x0, top), (x0 + 10 * u, height // 2 + 30 * u), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    ph, pw = height // 4, width // 6
    patch = cv2.GaussianBlur(rng.integers(0, 255, (ph, pw, 3), dtype=np.uint8), (0, 0), max(1, 3 * u))
    img[height // 8 : height // 8 + ph, width // 12 : width // 12 + pw] = patch
    return img


def _portrait_rgba() -> tuple[np.ndarray, np.ndarray]:
    """The portrait (480, 480, 3) float32 BGR and its matte (480, 480) float32 in [0, 1]."""
    portrait = cv2.imread(str(PORTRAIT), cv2.IMREAD_COLOR)
    if portrait is None:
        raise FileNotFoundError(PORTRAIT)
    (cx, cy), (rx, ry), soft = _MATTE
    y, x = np.mgrid[0 : portrait.shape[0], 0 : portrait.shape[1]].astype(np.float32)
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    matte = np.clip((1.0 - r) * min(rx, ry) / soft, 0.0, 1.0)
    return portrait.astype(np.float32), matte


def talking(portrait: np.ndarray, opening: float) -> np.ndarray:
    """The (480, 480, 3) float32 portrait with its mouth opened by ``opening`` in [0, 1]:
    below the lips' meeting line the face moves down (most at the line, fading out past
    the chin), above it the upper lip moves up a quarter as far, across the mouth's width;
    the gap shows a dark mouth interior."""
    if opening <= 0:
        return portrait
    mx, my = PORTRAIT_MOUTH
    y, x = np.mgrid[0 : portrait.shape[0], 0 : portrait.shape[1]].astype(np.float32)
    across = np.exp(-(((x - mx) / 55.0) ** 2))  # the mouth is about 85 px wide
    below = np.clip((y - my) / 3.0, 0, 1) * np.clip(1 - (y - my - 40.0) / 40.0, 0, 1)
    above = np.clip((y - my + 25.0) / 20.0, 0, 1) * np.clip((my - y) / 3.0, 0, 1)
    drop = TALK_DROP * opening
    shift = across * (drop * below - 0.25 * drop * above)  # content moves down by shift
    out = cv2.remap(portrait, x, y - shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # The interior: an ellipse between the moved lips, as wide as the mouth, as tall as the gap.
    cy, half = my + 0.375 * drop, 0.55 * 1.25 * drop
    inside = np.clip(1.0 - np.sqrt(((x - mx) / 36.0) ** 2 + ((y - cy) / max(half, 0.5)) ** 2), 0, 1)
    alpha = np.clip(inside / 0.3, 0, 1)[..., None]
    return out * (1 - alpha) + np.array([40.0, 30.0, 60.0], np.float32) * alpha


def covered(portrait: np.ndarray) -> np.ndarray:
    """The portrait with a dark grey rounded patch (a phone) over the mouth."""
    out = portrait.copy()
    x0, y0, x1, y1 = COVER
    cv2.rectangle(out, (x0, y0), (x1, y1), (55.0, 55.0, 60.0), -1, lineType=cv2.LINE_AA)
    cv2.rectangle(out, (x0 + 6, y0 + 6), (x1 - 6, y1 - 6), (90.0, 80.0, 70.0), -1, lineType=cv2.LINE_AA)
    return out


def _place(
    frame: np.ndarray, portrait: np.ndarray, matte: np.ndarray, scale: float, at: tuple[float, float]
) -> tuple[slice, slice]:
    """Blend the portrait into ``frame`` in place, scaled by ``scale`` with its face box's
    top-left corner at ``at`` (sub-pixel, in frame pixels). Returns the rows and columns
    it covered."""
    h, w = frame.shape[:2]
    fx0, fy0 = PORTRAIT_FACE[:2]
    ox, oy = at[0] - fx0 * scale, at[1] - fy0 * scale  # where the portrait's origin lands
    side = portrait.shape[0] * scale
    x0, y0 = max(0, int(np.floor(ox))), max(0, int(np.floor(oy)))
    x1, y1 = min(w, int(np.ceil(ox + side)) + 1), min(h, int(np.ceil(oy + side)) + 1)
    if x0 >= x1 or y0 >= y1:
        return slice(0, 0), slice(0, 0)
    m = np.array([[scale, 0.0, ox - x0], [0.0, scale, oy - y0]], np.float32)
    flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    if scale < 0.5:  # area-average first: warpAffine alone would alias a big shrink
        pre = 2.0 * scale
        small = cv2.resize(portrait, None, fx=pre, fy=pre, interpolation=cv2.INTER_AREA)
        small_m = cv2.resize(matte, None, fx=pre, fy=pre, interpolation=cv2.INTER_AREA)
        m[:, :2] /= pre
        portrait, matte = small, small_m
        flags = cv2.INTER_LINEAR
    roi = (x1 - x0, y1 - y0)
    fg = cv2.warpAffine(portrait, m, roi, flags=flags, borderMode=cv2.BORDER_CONSTANT)
    a = cv2.warpAffine(matte, m, roi, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    under = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(a * fg + (1 - a) * under + 0.5, 0, 255).astype(np.uint8)
    return slice(y0, y1), slice(x0, x1)


def lecture_clip(
    path: str | Path,
    *,
    size: tuple[int, int] = (1280, 720),
    face: float = 64,
    seconds: float = 1.0,
    fps: int = 25,
    corner: str = "bottom-right",
    motion: str = "pan",
    absent: tuple[float, float] | None = None,
    noise: float = 2.0,
    seed: int = 0,
    talk: Callable[[float], float] | None = None,
    cover: bool = False,
    brightness: float = 1.0,
    blur: float = 0.0,
    second_face: float = 0.0,
    second_from: float = 0.0,
    tilt: Callable[[float], float] | None = None,
    shake: float = 0.0,
    keyframe_s: float = 0.0,
) -> Footage:
    """Write an H.264 clip of the portrait on a slide; its face ``face`` px wide.

    ``corner``: "bottom-right", "top-left" or "centre", where the face starts.
    ``motion``: "still"; "pan" (drifts across 6 % of the width and bobs, while zooming in
    by 10 %, over the clip: a presenter walking while the camera follows slowly).
    ``absent``: (start, end) seconds in which only the slide is shown (a cut to slides).
    ``noise``: standard deviation of per-frame sensor noise, in 8-bit levels, over the
    portrait's window (so a still face is never two identical frames to the detector).
    ``talk``: seconds → the mouth's opening in [0, 1] at that time (``talking``).
    ``cover``: a patch over the mouth in every frame (``covered``).
    ``brightness``: every frame's levels scaled by this (0.15: a dark take).
    ``blur``: when above 0, every frame blurred (Gaussian, this sigma in face widths: 0.02
    is a face out of focus).
    ``second_face``: when above 0, the portrait again with its face this many pixels wide,
    still, in the frame's other half (``faces`` keeps the presenter's), from ``second_from``
    seconds on.
    ``tilt``: seconds → degrees the head is tilted (turned in the picture's plane about the
    face's centre) at that time; at 30° a frontal detector misses the face.
    ``shake``: a shaking camera: the portrait moved by this many pixels, at random, each frame.
    ``keyframe_s``: seconds between keyframes, as a camera writes them (0: x264's default, 250 frames).
    """
    path = Path(path)
    width, height = size
    n = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    background = slide(width, height, seed)
    portrait, matte = _portrait_rgba()
    fx0, fy0, fx1, fy1 = PORTRAIT_FACE
    margin = 0.06 * min(width, height)
    start = {
        "bottom-right": (width - margin - 1.3 * face, height - margin - 1.6 * face),
        "top-left": (margin + 0.3 * face, margin + 0.4 * face),
        "centre": (width / 2 - face / 2, height / 2 - face / 2),
    }[corner]
    faces = np.full((n, 4), np.nan, np.float32)
    mouths = np.full((n, 2), np.nan, np.float32)
    openings = np.zeros(n, np.float32)
    if cover:
        portrait = covered(portrait)
    with_other = background
    if second_face > 0:  # the other half of the frame from the presenter, still
        other = (width * (0.2 if start[0] > width / 2 else 0.65), height * 0.3)
        with_other = background.copy()
        _place(with_other, portrait, matte, second_face / (fx1 - fx0), other)
    args = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p",
        *(["-g", str(round(keyframe_s * fps))] if keyframe_s else []), str(path),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    for i in range(n):
        t = i / max(1, n - 1)
        if motion == "pan":
            zoom = 1.0 + 0.1 * t
            x = start[0] - 0.06 * width * t * (1 if corner != "top-left" else -1)
            y = start[1] + 0.02 * height * np.sin(2 * np.pi * t)
        else:
            zoom, (x, y) = 1.0, start
        w_face = face * zoom
        scale = w_face / (fx1 - fx0)
        frame = (with_other if i / fps >= second_from else background).copy()
        shown = absent is None or not (absent[0] <= i / fps < absent[1])
        if shown:
            openings[i] = 0.0 if talk is None else float(np.clip(talk(i / fps), 0, 1))
            if shake > 0:
                x, y = x + float(rng.uniform(-shake, shake)), y + float(rng.uniform(-shake, shake))
            shown_face = talking(portrait, float(openings[i]))
            if tilt is not None and tilt(i / fps) != 0:
                turn = cv2.getRotationMatrix2D(((fx0 + fx1) / 2, (fy0 + fy1) / 2), tilt(i / fps), 1.0)
                shown_face = cv2.warpAffine(shown_face, turn, shown_face.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
            window = _place(frame, shown_face, matte, scale, (x, y))
            faces[i] = (x, y, x + w_face, y + (fy1 - fy0) * scale)
            mouths[i] = (x + (PORTRAIT_MOUTH[0] - fx0) * scale, y + (PORTRAIT_MOUTH[1] - fy0) * scale)
            if noise > 0:
                part = frame[window].astype(np.float32) + rng.normal(0, noise, frame[window].shape)
                frame[window] = np.clip(part + 0.5, 0, 255).astype(np.uint8)
        if blur > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), blur * w_face)
        if brightness != 1.0:
            frame = np.clip(frame.astype(np.float32) * brightness + 0.5, 0, 255).astype(np.uint8)
        proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    err = proc.stderr.read() if proc.stderr is not None else b""
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {err.decode(errors='replace')}")
    return Footage(path=path, size=size, fps=fps, faces=faces, mouths=mouths, openings=openings)


def analyse_footage(path: Path, cache_dir: Path, pack: str = "warp", detector: DetectorConfig | None = None) -> Reference:
    """What the reference checks read of a clip, analysed as a job would (into a template)."""
    template, _ = analyze(path, get_pack(pack).geometry, detector or DetectorConfig(), cache_dir)
    return Reference.of(template)


def track_footage(path: Path, cache_dir: Path, pack: str = "warp") -> FaceTrack:
    """The presenter's track through a clip, as ``analyze`` keeps it in the clip's template
    in ``cache_dir`` (once per clip: every pack's crop geometry is cut along the same track;
    a run with ``pack`` and that cache finds the template)."""
    template, _ = analyze(path, get_pack(pack).geometry, DetectorConfig(), cache_dir)
    return template.track()


def with_camera_noise(footage: Footage, path: Path, strength: int = 6) -> Footage:
    """``footage`` as a camera records it: noise that differs in every frame over the whole
    picture (ffmpeg's ``noise`` filter, uniform, ``strength`` levels), re-encoded."""
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(footage.path), "-vf", f"noise=alls={strength}:allf=t+u",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv420p", str(path)],
                   check=True)  # fmt: skip
    return Footage(path=path, size=footage.size, fps=footage.fps, faces=footage.faces, mouths=footage.mouths,
                   openings=footage.openings)  # fmt: skip
