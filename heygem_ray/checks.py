"""Reference checks: what about a presenter's take will show in every video made from it.

Read from the template (``template/files.py``: the presenter's track and each frame's look,
``face/looks.py``), so they cost nothing once the reference is analysed; ``preview`` prints
them before a batch, and every batch row carries its warnings (``reference_notes``).
Each check is ``ok``, ``warn`` (the videos render, but something will show: say what to
do) or ``fail`` (the videos will plainly be wrong where it applies); none stops a row.

Thresholds (named below; docs/preview.md explains each):

* ``face_size``: the face's width against ``--min-face`` (frames near it are easily lost),
  and the pack's crop against its input (a crop upscaled more than 2× makes a soft mouth).
* ``lost``: the share of frames with no face (left as they are: no lip sync there).
* ``jitter``: on a still face, how far the crop box wanders from its 1-s average, pixels.
* ``faces``: faces found beside the presenter's, and which one is the presenter.
* ``mouth_motion``: how much the mouth opens and closes in the take (s.d. of the lips'
  gap, face heights). ``warp`` warps the reference's own mouth, so motion there shows
  through as the old speech: where the take has a still stretch (``STILL_SPAN_S``) warp
  loops over it (``still_span``), else it warns.
* ``head_turned``: the share of the followed frames the frontal detector misses.
* ``mouth_covered``: the share of frames whose mouth looks flat (a hand, a phone).
* ``dark``, ``blurred``: the share of frames whose face is very dark or out of focus.
* ``colour``: a take shot in HDR (HLG or PQ), which the videos show tone-mapped to SDR.
* ``resolution``: the frames' size, and above 1080 lines what ``--max-resolution 1080``
  would spare (``SUGGEST_MAX_RESOLUTION``).
* ``frame_rate``: a take held (under 20 fps) or thinned (``--max-fps``), and above 30 fps
  what ``--max-fps 30`` would spare.
* ``length``: the reference's length against the audio's, for the loop mode.
* ``decoded``: the frames decoded against those the file's index lists (a take damaged
  past some point decodes only up to it, and ffmpeg reads on past such errors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np

from heygem_ray.config import MIN_FPS, LoopMode, RestoreName
from heygem_ray.face import looks
from heygem_ray.media.video_probe import HDR_COLOURS, scaled_to, thinned_rate
from heygem_ray.packs import PackSpec
from heygem_ray.storage import readable_size
from heygem_ray.template.cache import folder_bytes
from heygem_ray.template.files import Template

Level = Literal["ok", "warn", "fail"]
_RANK = {"ok": 0, "warn": 1, "fail": 2}

# face_size: a face narrower than this × --min-face is near the detector's limit.
NEAR_MIN_FACE = 1.25
# face_size: the pack's crop, in reference pixels, below this share of its input side.
MIN_CROP_SHARE = 0.5
# lost: shares of frames without the face that warn and fail.
LOST_WARN, LOST_FAIL = 0.05, 0.5
# lost: where at least this share of the frames without the presenter lie outside the
# longest stretch with them (gaps under BRIDGED_S bridged) of STRETCH_MIN_S or more, its
# advice names that stretch as --reference-start (and --reference-seconds).
STRETCH_SHARE, BRIDGED_S, STRETCH_MIN_S = 0.5, 1.0, 2.0
# jitter: a face whose centre stays within this share of its width is still; its crop
# box wandering more than JITTER_PX from its 1-s average (RMS) shows as a shaking mouth.
STILL_RANGE = 0.1
JITTER_PX = 1.0
# mouth_motion: s.d. of the lips' gap (face heights, over a 3-frame median) above which
# the mouth moves (a still mouth reads 0.003–0.005, measurement noise; speech 0.01–0.02).
TALKING_SD = 0.008
# mouth_motion is measured when the lips are seen (measured, not covered) in this share of
# the frames with the face.
MIN_SEEN = 0.5
# A frame's mouth moves when its gap is this far above the take's closed mouth (its 10th
# percentile), give or take MOVING_PAD_S either side.
MOVING_OPEN = 0.015
MOVING_PAD_S = 0.2
# warp loops over the longest still stretch of a talking take when it lasts this long.
STILL_SPAN_S = 2.0
# head_turned: the share of followed frames the frontal detector misses.
TURNED_WARN = 0.1
# mouth_covered: a look's mouth_detail under COVERED_DETAIL is a covered mouth; shares.
COVERED_DETAIL = 0.3
COVERED_WARN, COVERED_FAIL = 0.1, 0.5
# dark, blurred: a face darker than DARK_LUMA (of 255) or less sharp than BLURRED; share.
DARK_LUMA = 50.0
BLURRED = 0.2
POOR_SHARE = 0.2
# length: audio longer than this many times the looped reference repeats its moves visibly.
MAX_LOOPS = 4.0
# length: a reference longer than this (seconds) of which the audio uses under USED_SHARE is
# analysed whole all the same (decoded, searched for faces and stored in the cache): the
# check says so, with what a cut would spare.
LONG_REFERENCE_S, USED_SHARE = 600.0, 1 / 3
# decoded: a take that decodes to fewer than this share of the frames its index lists.
DECODED_SHARE = 0.98
# colour: how each VideoInfo.colour other than SDR's was shot.
SHOT_IN = {"hlg": "HDR (HLG)", "pq": "HDR (PQ)", "bt2020": "SDR in BT.2020's wide gamut",
           "p3": "SDR in Display P3's wide gamut"}  # fmt: skip


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    figure: str  # what was measured, short (no "; ": it separates notes): "face 182 px wide, …"
    advice: str  # what it means and what to do; "" when there is nothing to do
    value: float | None = None  # the main figure as a number (JSON), when it has one
    # Settings its advice names, as a manifest row's columns take them (manifest.ROW_SETTINGS):
    # {"reference_start": 6.0}; empty when it names none.
    settings: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.level:4s}  {self.name:13s} {self.figure}" + (f". {self.advice}" if self.advice else "")

    def as_dict(self) -> dict[str, object]:
        return {"check": self.name, "level": self.level, "figure": self.figure, "value": self.value,
                "advice": self.advice, "settings": self.settings}  # fmt: skip


@dataclass(frozen=True)
class Reference:
    """What the checks read of an analysed reference."""

    fps: Fraction
    frames: int
    is_image: bool
    width: int  # the frames' size, as the videos are made
    height: int
    faces: np.ndarray  # (n, 4) float32 the presenter's steady face boxes
    present: np.ndarray  # (n,) bool the face is there
    detected: np.ndarray  # (n,) bool the frontal detector found it in this frame
    looks: np.ndarray  # (n, LOOKS) float32 per-frame looks; NaN where not measured
    others: np.ndarray  # (k, 5) float32 other faces: median box and share of frames
    crops: np.ndarray  # (n, 4) int32 the pack's crop boxes
    source_colour: str = ""  # the take's own colour (Template.source_colour)
    cut: bool = False  # the take's first seconds only (Template.cut: --reference-seconds)
    start: float = 0.0  # seconds of the take before its first frame here (Template.start: --reference-start)
    own_fps: Fraction | None = None  # the take's own rate, where the video's is another (Template.own_fps)
    scaled_from: tuple[int, int] | None = None  # the take's own size, where --max-resolution scaled it
    listed_frames: int | None = None  # the frames the file's index lists (Template.listed_frames)
    cache_bytes: int = 0  # what its template holds on disk (0: not known)

    @classmethod
    def of(cls, template: Template) -> Reference:
        track = template.track()  # a template's track has its looks and other faces
        return cls(
            fps=template.fps, frames=template.frames, is_image=template.is_image, width=template.width,
            height=template.height, faces=track.boxes, present=track.present, detected=track.detected,
            looks=np.asarray(track.looks, np.float32), others=np.asarray(track.others, np.float32),
            crops=template.boxes, source_colour=template.source_colour, cut=template.cut, start=template.start,
            own_fps=template.own_fps, scaled_from=template.scaled_from, listed_frames=template.listed_frames,
            cache_bytes=folder_bytes(template.root),
        )  # fmt: skip

    @property
    def seconds(self) -> float:
        return self.frames / float(self.fps)


def opening(ref: Reference) -> np.ndarray:
    """(n,) float32 the lips' gap per frame, face heights: a 3-frame running median (the
    mesh's frame-to-frame noise is about 0.005), filled between measured frames (those
    where the mouth looks covered are not: the mesh guesses the lips there); NaN
    throughout when no frame was measured."""
    raw = ref.looks[:, looks.OPENING].astype(np.float64)
    have = np.isfinite(raw) & ~(ref.looks[:, looks.MOUTH_DETAIL] < COVERED_DETAIL)
    if not have.any():
        return np.full(len(raw), np.nan, np.float32)
    index = np.arange(len(raw))
    filled = np.interp(index, index[have], raw[have])
    padded = np.pad(filled, 1, mode="edge")
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0).astype(np.float32)


def mouth_moving(ref: Reference) -> np.ndarray:
    """(n,) bool: the reference's mouth is open beyond its closed position in this frame,
    or within ``MOVING_PAD_S`` of such a frame (every frame, when nothing was measured)."""
    gap = opening(ref)
    if np.isnan(gap).all():
        return np.ones(len(gap), bool)
    moving = gap > np.percentile(gap, 10) + MOVING_OPEN
    pad = round(MOVING_PAD_S * float(ref.fps))
    if pad and moving.any():
        moving = np.convolve(moving.astype(np.int32), np.ones(2 * pad + 1, np.int32), mode="same") > 0
    return moving


def talking(ref: Reference) -> float | None:
    """The s.d. of the lips' gap over the take (face heights); None when the lips were seen
    in under ``MIN_SEEN`` of the frames with the face (too small for the face mesh, or the
    mouth covered: the few frames left are mostly the mesh fooled at a cover's edge)."""
    seen = np.isfinite(ref.looks[:, looks.OPENING]) & ~(ref.looks[:, looks.MOUTH_DETAIL] < COVERED_DETAIL)
    if np.count_nonzero(seen & ref.present) < MIN_SEEN * max(1, int(np.count_nonzero(ref.present))):
        return None
    return float(np.std(opening(ref)[ref.present]))


def still_span(ref: Reference) -> tuple[int, int] | None:
    """[start, stop) reference frames for a pack that keeps the reference's mouth (warp)
    to loop over: the longest stretch where the face is there and its mouth still, when the take talks
    (``TALKING_SD``) and that stretch lasts ``STILL_SPAN_S``; None otherwise (the whole
    reference is used)."""
    sd = talking(ref)
    if ref.is_image or sd is None or sd < TALKING_SD:
        return None
    still = ~mouth_moving(ref) & ref.present  # frames without the face would be looped unsynced
    edges = np.diff(np.concatenate([[0], still.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return None
    best = int(np.argmax(stops - starts))
    start, stop = int(starts[best]), int(stops[best])
    return (start, stop) if stop - start >= STILL_SPAN_S * float(ref.fps) else None


def check_reference(
    ref: Reference, pack: PackSpec, min_face: int, loop: LoopMode, audio_seconds: float | None,
    restore: RestoreName = "none",
) -> list[Check]:  # fmt: skip
    """Every check on ``ref`` for ``pack`` (and ``restore``), in a fixed order."""
    span = still_span(ref) if pack.keeps_reference_mouth else None
    return [
        _face_size(ref, pack, min_face, restore),
        _lost(ref),
        _jitter(ref),
        _faces(ref),
        _mouth_motion(ref, pack, span),
        _head_turned(ref),
        _covered(ref),
        _dark(ref),
        _blurred(ref),
        _colour(ref),
        _resolution(ref),
        _frame_rate(ref),
        _length(ref, loop, audio_seconds, span),
        _decoded(ref),
    ]


def verdict(checks: list[Check]) -> Level:
    """The worst level of ``checks``."""
    return max((c.level for c in checks), key=_RANK.__getitem__, default="ok")


def notes(checks: list[Check]) -> str:
    """The warnings and failures, short, for a results row: "name: figure; …" ("" when none)."""
    return "; ".join(f"{c.name}: {c.figure}" for c in checks if c.level != "ok")


def _share(mask: np.ndarray, of: np.ndarray) -> float:
    return float(np.count_nonzero(mask & of)) / max(1, int(np.count_nonzero(of)))


# Restoration aligns the face to a 512-px tile and samples it back over the face's box:
# under this width (pixels) what it adds is resampled away again (docs/restoration.md).
RESTORE_MIN_FACE = 150


def _face_size(ref: Reference, pack: PackSpec, min_face: int, restore: RestoreName = "none") -> Check:
    on = ref.present
    width = float(np.median(ref.faces[on, 2] - ref.faces[on, 0])) if on.any() else 0.0
    crop = float(np.median(ref.crops[on, 2] - ref.crops[on, 0])) if on.any() else 0.0
    size = pack.geometry.size
    figure = f"face {width:.0f} px wide, the {pack.name} crop {crop:.0f} px for its {size}-px input"
    if crop < MIN_CROP_SHARE * size:
        need = width * MIN_CROP_SHARE * size / max(crop, 1.0)
        return Check("face_size", "warn", figure, f"the crop is upscaled {size / max(crop, 1.0):.1f}×, so the mouth "
                     f"will look soft: use a closer shot (a face at least {need:.0f} px wide) or a larger reference",
                     width)  # fmt: skip
    if restore != "none" and width < RESTORE_MIN_FACE:
        return Check("face_size", "warn", f"{figure}: small for --restore {restore}", "restoration adds little to a "
                     f"face under about {RESTORE_MIN_FACE} px wide (its detail is resampled away over the face's box), "
                     "at seconds a frame on a CPU: leave out --restore for this presenter, or use a closer shot",
                     width)  # fmt: skip
    if width < NEAR_MIN_FACE * min_face:
        return Check("face_size", "warn", figure, f"near the smallest face searched for (--min-face {min_face}): "
                     "frames may be lost; use a closer shot, or lower --min-face", width)  # fmt: skip
    return Check("face_size", "ok", figure, "", width)


def _lost(ref: Reference) -> Check:
    lost = 1.0 - float(ref.present.mean())
    figure = f"{100 * lost:.0f}% of frames without the face ({np.count_nonzero(~ref.present)} of {ref.frames})"
    if lost < LOST_WARN:
        return Check("lost", "ok", figure, "", lost)
    advice = "those frames are left as they are (no lip sync there): "
    settings: dict[str, float] = {}
    if (stretch := _stretch(ref)) is None:
        advice += "trim the reference to where the presenter faces the camera, or light the face better"
    else:
        fps = float(ref.fps)
        start = _tenths(ref.start + stretch[0] / fps, math.ceil)  # not before the presenter is there
        settings["reference_start"] = start
        if stretch[1] == ref.frames:
            advice += (f"the presenter is there from {start:g} s into the take on; --reference-start {start:g} uses "
                       "it from there (the same for preview and the batch, or the take's rows' reference_start)")  # fmt: skip
            if ref.cut:  # the same seconds from a later start take in more than was looked at
                seen = _tenths(ref.start + ref.frames / fps, math.floor)
                advice += (f"; the take after {seen:g} s was not analysed (--reference-seconds cut it there): preview "
                           "again with those settings to check what they take in")  # fmt: skip
        else:
            end = _tenths(ref.start + stretch[1] / fps, math.floor)
            settings["reference_seconds"] = _tenths(end - start, math.floor)
            advice += (f"the presenter is there from {start:g} s to {end:g} s into the take; --reference-start "
                       f"{start:g} --reference-seconds {settings['reference_seconds']:g} uses that stretch (the "
                       "same for preview and the batch, or the take's rows' columns of those names)")  # fmt: skip
    return Check("lost", "fail" if lost >= LOST_FAIL else "warn", figure, advice, lost, settings)


def _stretch(ref: Reference) -> tuple[int, int] | None:
    """The longest stretch of frames with the presenter, (first, end) frame indices (end
    excluded; gaps under ``BRIDGED_S``, a turn of the head, count as theirs), where the
    frames outside it hold most of those without the presenter (the take opens or ends
    without them, or cuts away for a while: not lost now and then) and it lasts
    ``STRETCH_MIN_S`` or more. None otherwise, and for the whole reference."""
    if ref.is_image or not ref.present.any():
        return None
    fps = float(ref.fps)
    seen = ref.present.copy()
    found = np.flatnonzero(ref.present)
    for at, gap in zip(found[:-1], np.diff(found), strict=True):
        if 1 < gap <= BRIDGED_S * fps:
            seen[at + 1 : at + gap] = True
    edges = np.diff(np.concatenate([[0], seen.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int(np.argmax(ends - starts))
    first, end = int(starts[longest]), int(ends[longest])
    if (first, end) == (0, ref.frames) or end - first < STRETCH_MIN_S * fps:
        return None
    outside = np.count_nonzero(~ref.present[:first]) + np.count_nonzero(~ref.present[end:])
    if outside < STRETCH_SHARE * np.count_nonzero(~ref.present):
        return None
    return first, end


def _tenths(seconds: float, to: Callable[[float], int]) -> float:
    """``seconds`` to a tenth of a second, ``to`` (math.ceil or math.floor) deciding the
    way (a float's last digit does not)."""
    return to(round(seconds * 10, 6)) / 10


def _jitter(ref: Reference) -> Check:
    on = ref.present
    if ref.is_image or np.count_nonzero(on) < 3:
        return Check("jitter", "ok", "a still photo" if ref.is_image else "too few frames to measure", "")
    centre = (ref.faces[on, :2] + ref.faces[on, 2:]) / 2
    width = float(np.median(ref.faces[on, 2] - ref.faces[on, 0]))
    spread = float(np.max(np.percentile(centre, 95, axis=0) - np.percentile(centre, 5, axis=0)))
    if spread > STILL_RANGE * width:
        return Check("jitter", "ok", f"the face moves ({spread:.0f} px across the take): not measured", "")
    crop_centre = (ref.crops[on, :2] + ref.crops[on, 2:]).astype(np.float64) / 2
    window = max(1, round(float(ref.fps)))
    kernel = np.ones(window) / window
    padded = np.pad(crop_centre, ((window // 2, window - 1 - window // 2), (0, 0)), mode="edge")
    average = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(2)], axis=1)
    # Over the frames the detector found the face in: those it missed are head_turned's.
    found = ref.detected[on]
    rms = float(np.sqrt(np.mean(np.sum((crop_centre - average)[found] ** 2, axis=1)))) if found.any() else 0.0
    figure = f"{rms:.2f} px RMS on a still face"
    if rms < JITTER_PX:
        return Check("jitter", "ok", figure, "", rms)
    return Check("jitter", "warn", figure, "the pasted mouth will shake: use a steadier camera or a sharper, "
                 "better-lit face", rms)  # fmt: skip


def _where(box: np.ndarray) -> str:
    """Where a face box is, in words a person finds it by in the frame."""
    x, y = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    return f"at x {x:.0f}, y {y:.0f} ({float(box[2] - box[0]):.0f} px wide)"


def _faces(ref: Reference) -> Check:
    on = ref.present
    presenter = np.median(ref.faces[on], axis=0) if on.any() else ref.faces[0]
    k = len(ref.others)
    if k == 0:
        return Check("faces", "ok", "one face: the presenter", "", 1)
    others = " and ".join(f"{_where(o[:4])} in {100 * float(o[4]):.0f}% of frames" for o in ref.others[:3])
    figure = f"{k + 1} faces: the presenter {_where(presenter)}, the other{'s' if k > 1 else ''} {others}"
    return Check("faces", "warn", figure, "the presenter is taken to be the largest face seen longest; if that is "
                 "the wrong one, crop the reference to the presenter", k + 1)  # fmt: skip


def _mouth_motion(ref: Reference, pack: PackSpec, span: tuple[int, int] | None) -> Check:
    sd = talking(ref)
    if sd is None:
        return Check("mouth_motion", "ok", "not measured (the lips are seen in too few frames: the face is too "
                     "small for the face mesh, or the mouth covered)", "")  # fmt: skip
    figure = f"the lips' gap varies by {sd:.3f} face heights (s.d.)"
    if sd < TALKING_SD:
        return Check("mouth_motion", "ok", figure + ": a still mouth", "", sd)
    figure += ": the presenter talks in the take"
    if not pack.keeps_reference_mouth:
        return Check("mouth_motion", "ok", figure, f"the {pack.name} pack redraws the mouth", sd)
    fps = float(ref.fps)
    if span is not None:
        return Check("mouth_motion", "warn", figure, f"{pack.name} keeps the reference's mouth motion, so it loops over "
                     f"the still stretch {span[0] / fps:.1f}–{span[1] / fps:.1f} s only; for more of the take use a "
                     "silent take (mouth closed) or a generative pack (--pack wav2lip or musetalk)", sd)  # fmt: skip
    return Check("mouth_motion", "warn", figure, f"{pack.name} keeps the reference's mouth motion, so the old speech "
                 f"shows through (no still stretch of {STILL_SPAN_S:.0f} s to loop over): record a silent take (mouth "
                 "closed) or use a generative pack (--pack wav2lip or musetalk)", sd)  # fmt: skip


def _head_turned(ref: Reference) -> Check:
    missed = _share(~ref.detected, ref.present)
    figure = f"the frontal detector missed the face in {100 * missed:.0f}% of the frames it is followed through"
    if missed < TURNED_WARN:
        return Check("head_turned", "ok", figure, "", missed)
    return Check("head_turned", "warn", figure, "the head is turned away or tilted there (or something passes in "
                 "front): the mouth is placed from the frames around them; use a take facing the camera", missed)  # fmt: skip


def _covered(ref: Reference) -> Check:
    detail = ref.looks[:, looks.MOUTH_DETAIL]
    measured = np.isfinite(detail)
    if not measured.any():
        return Check("mouth_covered", "ok", "not measured (the face is too small for the face mesh)", "")
    share = _share(detail < COVERED_DETAIL, measured)
    figure = f"the mouth looks covered in {100 * share:.0f}% of the frames"
    if share < COVERED_WARN:
        return Check("mouth_covered", "ok", figure, "", share)
    return Check("mouth_covered", "fail" if share >= COVERED_FAIL else "warn", figure,
                 "a hand, a phone or a microphone in front of the mouth is warped with it: use a take where the "
                 "mouth is free", share)  # fmt: skip


def _poor(ref: Reference, name: str, column: int, limit: float, what: str, advice: str) -> Check:
    value = ref.looks[:, column]
    measured = np.isfinite(value)
    share = _share(value < limit, measured)
    figure = f"{100 * share:.0f}% of the frames {what} (median {float(np.median(value[measured])):.2f})" if measured.any() \
        else "not measured"  # fmt: skip
    if share < POOR_SHARE:
        return Check(name, "ok", figure, "", share)
    return Check(name, "warn", figure, advice, share)


def _dark(ref: Reference) -> Check:
    return _poor(ref, "dark", looks.LUMA, DARK_LUMA, f"have a face darker than {DARK_LUMA:.0f} of 255",
                 "the mouth will be hard to see and the face may be lost: light the face, or brighten the take")


def _blurred(ref: Reference) -> Check:
    return _poor(ref, "blurred", looks.SHARPNESS, BLURRED, f"have a face less sharp than {BLURRED}",
                 "the lips will look soft: focus on the face, or use a take with less motion blur")


def _colour(ref: Reference) -> Check:
    shot = SHOT_IN.get(ref.source_colour)
    if shot is None:
        return Check("colour", "ok", "SDR", "")
    if ref.source_colour not in HDR_COLOURS:
        return Check("colour", "ok", f"{shot}, mapped into BT.709's", "")
    return Check("colour", "warn", f"shot in {shot}, tone-mapped to SDR BT.709",
                 "the videos are SDR: what is brighter than a white sheet is compressed, and they will look "
                 "duller than the take on an HDR screen; for the colours as graded, export the take as SDR "
                 "(BT.709) from the editor, or record with HDR video off")


# A take taller than this (its shorter side, lines) is rendered at its own size unless
# --max-resolution says less: the check's figure says what --max-resolution at this would
# make of it (bench/bench_resolution.py: a 4K take's rows cost 5.5× less CPU at 1080 lines,
# its template 3.7× less disk).
SUGGEST_MAX_RESOLUTION = 1080


def _resolution(ref: Reference) -> Check:
    size = f"{ref.width}×{ref.height}"
    if ref.scaled_from is not None:
        width, height = ref.scaled_from
        return Check("resolution", "ok", f"the take's {width}×{height}, read at {size} (--max-resolution)", "")
    if min(ref.width, ref.height) <= SUGGEST_MAX_RESOLUTION:
        return Check("resolution", "ok", size, "")
    width, height = scaled_to(ref.width, ref.height, SUGGEST_MAX_RESOLUTION)
    return Check("resolution", "ok", f"{size} (--max-resolution {SUGGEST_MAX_RESOLUTION} would render it at "
                 f"{width}×{height}: about 5× less CPU a row, under a third of the cache)", "")  # fmt: skip


# A take faster than this is rendered at its own rate unless --max-fps says less: the
# check's figure says what --max-fps 30 would make of it (bench/bench_fps.py: a 1080p60
# take's rows cost 1.7× less CPU at 30).
SUGGEST_MAX_FPS = 30


def _frame_rate(ref: Reference) -> Check:
    if ref.own_fps is None:
        thinned = thinned_rate(ref.fps, SUGGEST_MAX_FPS) if ref.fps > SUGGEST_MAX_FPS and not ref.is_image else None
        hint = "" if thinned is None else \
            f" (--max-fps {SUGGEST_MAX_FPS} would render it at {float(thinned):.4g}: about 1.7× less CPU a row)"  # fmt: skip
        rate = f"{float(ref.fps):.4g} fps" + (" (a photo: the videos are made at this rate)" if ref.is_image else hint)
        return Check("frame_rate", "ok", rate, "")
    if ref.own_fps > ref.fps:  # --max-fps
        return Check("frame_rate", "ok", f"the take's {float(ref.own_fps):.4g} fps, every "
                     f"{_ordinal(round(ref.own_fps / ref.fps))} frame kept: {float(ref.fps):.4g} fps (--max-fps)", "")
    held = float(ref.own_fps)
    return Check("frame_rate", "warn", f"the take's {held:g} fps, each frame held at {float(ref.fps):g} fps",
                 f"each frame of the take shows for {1 / held:.2g} s, so the presenter's head and eyes move only "
                 f"then while the mouth moves every frame: record the presenter at {float(MIN_FPS):g} fps or more")


def _ordinal(n: int) -> str:
    """2nd, 3rd, 4th…"""
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n if n < 20 else n % 10, 'th')}"


def _length(ref: Reference, loop: LoopMode, audio_seconds: float | None, span: tuple[int, int] | None) -> Check:
    if ref.is_image:
        return Check("length", "ok", "a still photo: shown for the whole audio", "")
    seconds = ref.seconds if span is None else (span[1] - span[0]) / float(ref.fps)
    used = "reference" if span is None else "still stretch of the reference"
    length = f"{used} {seconds:.1f} s"
    said = [f"the take from {ref.start:.1f} s: --reference-start"] if ref.start else []
    if ref.cut:  # the take was longer
        said.append("cut there by --reference-seconds" if span is None else
                    f"within its first {ref.seconds:.1f} s: --reference-seconds")  # fmt: skip
    if said:
        length += f" ({'; '.join(said)})"
    if audio_seconds is None:
        return Check("length", "ok", f"{length} (no audio given to compare)", "", seconds)
    loops = audio_seconds / max(seconds, 1e-6)
    figure = f"{length}, audio {audio_seconds:.1f} s: {f'{loops:.1f}' if loops >= 0.05 else 'under 0.1'}× ({loop})"
    if loops < USED_SHARE and span is None and ref.seconds > LONG_REFERENCE_S:
        kept = f": its template keeps {readable_size(ref.cache_bytes / ref.seconds * 60)} a minute" if ref.cache_bytes else ""
        return Check("length", "ok", figure, f"only its first {_spoken(audio_seconds)} of {_spoken(ref.seconds)} are "
                     f"shown, but it is analysed whole{kept}; --reference-seconds (the same for preview and the batch) "
                     f"uses only its first minutes, say {_minutes_used(audio_seconds)}, analysed and kept in a "
                     "fraction of the time and space", loops)  # fmt: skip
    if loops <= 1:
        return Check("length", "ok", figure, "", loops)
    if loop == "trim":
        return Check("length", "warn", figure, f"--loop trim cuts each video at {ref.seconds:.1f} s: the rest of the "
                     "audio is dropped; use pingpong or forward, or a longer reference", loops)  # fmt: skip
    if loops > MAX_LOOPS:
        return Check("length", "warn", figure, f"the presenter's moves repeat {loops:.0f} times ({loop}) and show "
                     "it: record a longer reference (at least a quarter of the audio)", loops)  # fmt: skip
    if loop == "forward":
        return Check("length", "ok", figure, "forward loops jump back at each seam (pingpong does not)", loops)
    return Check("length", "ok", figure, "", loops)


def _decoded(ref: Reference) -> Check:
    if ref.is_image:
        return Check("decoded", "ok", "a photo", "", ref.frames)
    if ref.listed_frames is None:
        return Check("decoded", "ok", f"{ref.frames} frames", "", ref.frames)
    if ref.frames >= DECODED_SHARE * ref.listed_frames:
        return Check("decoded", "ok", f"{ref.frames} frames, as the file lists", "", ref.frames)
    return Check("decoded", "warn", f"{ref.frames} of the {ref.listed_frames} frames the file lists",
                 f"the rest did not decode: the file is damaged or cut short {ref.start + ref.seconds:.1f} s in (its "
                 "decoder reads on past such errors), so the videos show only the take before it: copy the take "
                 "again from where it was recorded, or re-export it", ref.frames)  # fmt: skip


def _spoken(seconds: float) -> str:
    """A length as people say it: ``40 s`` under two minutes, else ``11.0 minutes``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def _minutes_used(audio_seconds: float) -> str:
    """--reference-seconds for lessons of ``audio_seconds``: whole minutes, from 2, that
    hold the audio (pingpong shows the take forwards for as long as it lasts)."""
    return f"--reference-seconds {60 * max(2, math.ceil(audio_seconds / 60))}"


def mouth_box(ref: Reference, frames: np.ndarray) -> list[int] | None:
    """The box around the mouth (x0, y0, x1, y1 pixels) over reference ``frames`` (k,):
    centred on the median place where the lips meet, as wide as half the face and a third
    as tall; None where the mouth was never measured."""
    index = np.unique(frames)
    uv = ref.looks[index][:, [looks.MOUTH_U, looks.MOUTH_V]]
    have = np.isfinite(uv[:, 0]) & ref.present[index]
    if not have.any():
        return None
    faces = ref.faces[index][have]
    w, h = faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1]
    x = float(np.median(faces[:, 0] + uv[have, 0] * w))
    y = float(np.median(faces[:, 1] + uv[have, 1] * h))
    half_w, half_h = float(np.median(w)) / 4, float(np.median(h)) / 6
    return [round(x - half_w), round(y - half_h), round(x + half_w), round(y + half_h)]
