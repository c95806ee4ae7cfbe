"""Following faces through a reference and picking the presenter's one track.

Frames arrive in order (``Tracker.add``), I420 as analysis decodes them (``media.yuv``):
the detector reads their luma, and only the regions around faces are converted to BGR
(``_Frame``). Every face being followed is searched for in a
window around where it is expected; every ``scan_every`` frames the frame is scanned too
(after the first scan, only where it changed: ``search.changed_regions``), and a face no
track holds starts a new track (after a skin test, which slides full
of text fail). At the end (``Tracker.presenter``) the tracks are ranked by area ×
frames found, and the presenter's track is the best one plus any later or earlier ones of
a similar size that never appear beside it (the same person, after a cut or a turn away).

Between consecutive frames each track's motion is also measured, by phase correlation
of the face's centre: sub-pixel where the detector's boxes wander by a few pixels.
``finish`` then fills short misses from neighbours, marks long ones as lost (those frames
are left as they are in the output), and makes each run of present frames steady: the
centres follow the measured motion and stay near the detections on average, the sizes
are smoothed over about a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from heygem_ray.config import DetectorConfig
from heygem_ray.face import looks, mouth
from heygem_ray.face.detector import Detector
from heygem_ray.face.landmarks import ROI_SCALE
from heygem_ray.face.search import (
    changed_regions,
    face_patch,
    iou,
    is_colour,
    motion,
    scan,
    scan_scale,
    search_window,
    shrink_for_change,
    skin_fraction,
)
from heygem_ray.face.smooth import trend
from heygem_ray.media import yuv

# A detection belongs to a track when it overlaps the track's box at least this much.
_LINK_IOU = 0.3
# Tracks found in fewer frames than this are detector noise (unless the reference is that short).
_MIN_HITS = 3
# A later track joins the presenter's when its median size is within this ratio of it.
_SAME_SIZE = 1.6
# A face that is not the presenter's counts as another face when found in at least this
# share of the frames (fewer: a poster, a face on a slide for a moment, the detector's noise).
_OTHER_SHARE = 0.05
# Frames over which a track's velocity is measured, and the most it is extrapolated.
_VELOCITY_SPAN = 4
_MAX_PREDICT = 8
# How much more a measured frame-to-frame motion counts than one detection (their noise
# variances' ratio, roughly: a few pixels against a tenth of one).
_MOTION_WEIGHT = 400.0
# Where no motion was measured, box centres wobble no faster than this many seconds.
_CENTRE_PERIOD_S = 1.0
# Box sizes change slower than this many seconds (a walk towards the camera, a zoom);
# held still where they do not change.
_SIZE_PERIOD_S = 2.0
# The BGR region converted around a face box, in box sides: what a look reads (the mesh's
# square of ``ROI_SCALE`` sides, and the mesh points, which may reach a little past it).
_LOOK_SPAN = ROI_SCALE + 0.5


class _Frame:
    """One I420 frame as the tracker reads it: its grey, and BGR around a face.

    The grey is the luma plane as it is (limited range): the detector normalises each
    window's brightness and contrast (and equalises the windows around faces), and phase
    correlation its spectrum, so neither sees the range. The BGR is OpenCV's I420
    conversion (BT.601's coefficients: a few levels off BT.709 on saturated colours, skin
    2–4, which the wide skin and lip tests do not notice) of just the region asked for,
    pixel for pixel what converting the whole frame gives there. At 1080p the whole
    frame's conversion and grey cost about 2.6 ms."""

    def __init__(self, frame: np.ndarray):
        self.i420 = frame
        self.luma, self.cb, self.cr = yuv.planes(frame)
        self.grey = self.luma

    def bgr(self) -> np.ndarray:
        """The whole frame, (H, W, 3) uint8 BGR."""
        return cv2.cvtColor(self.i420, cv2.COLOR_YUV2BGR_I420)

    def around(self, box: np.ndarray, span: float) -> tuple[np.ndarray, np.ndarray]:
        """The (h, w, 3) uint8 BGR region of ``span`` box sides around ``box``'s centre (to
        the frame's edges, rounded out to even pixels), and its top-left corner (x, y)."""
        h, w = self.grey.shape
        half = span * float(max(box[2] - box[0], box[3] - box[1])) / 2
        cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
        x0, y0 = (max(0, int(np.floor((c - half) / 2)) * 2) for c in (cx, cy))
        x1, y1 = min(w, int(np.ceil((cx + half) / 2)) * 2), min(h, int(np.ceil((cy + half) / 2)) * 2)
        x1, y1 = max(x1, x0 + 2), max(y1, y0 + 2)
        packed = np.concatenate([
            self.luma[y0:y1, x0:x1].ravel(), self.cb[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].ravel(),
            self.cr[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].ravel(),
        ]).reshape(-1, x1 - x0)  # fmt: skip
        return cv2.cvtColor(packed, cv2.COLOR_YUV2BGR_I420), np.array([x0, y0, x0, y0], np.float32)

    def look(self, box: np.ndarray) -> np.ndarray:
        """``looks.look`` of the face in ``box``."""
        region, corner = self.around(box, _LOOK_SPAN)
        return looks.look(region, box - corner)

    def skin(self, box: np.ndarray) -> float:
        """``skin_fraction`` of the face in ``box``."""
        region, corner = self.around(box, 1.0)
        return skin_fraction(region, box - corner)


@dataclass
class _Track:
    frames: list[int] = field(default_factory=list)  # ascending
    boxes: list[np.ndarray] = field(default_factory=list)  # the detector's box in each
    looks: list[np.ndarray] = field(default_factory=list)  # (LOOKS,) float32 look in each (face/looks.py)
    # Motion (dx, dy) in pixels measured from the frame before, by frame.
    moves: dict[int, tuple[float, float]] = field(default_factory=dict)
    misses: int = 0
    # Frames it was missed in where its box held too little skin to be a face (colour takes
    # only: ``DetectorConfig.min_skin``): the face left, or something covered it.
    empty: set[int] = field(default_factory=set)
    # The last frame's patch, the box it was cut at and its pixels per patch pixel.
    patch: tuple[np.ndarray, np.ndarray, float] | None = None

    def hit(self, frame: int, box: np.ndarray, look: np.ndarray) -> None:
        self.frames.append(frame)
        self.boxes.append(box.astype(np.float32))
        self.looks.append(look)
        self.misses = 0

    def expected(self, frame: int) -> np.ndarray:
        """The box expected at ``frame``: the last one moved at the recent velocity."""
        last = self.boxes[-1]
        k = min(len(self.frames) - 1, _VELOCITY_SPAN)
        if k == 0:
            return last
        span = self.frames[-1] - self.frames[-1 - k]
        velocity = (last - self.boxes[-1 - k]) / span
        return last + velocity * min(frame - self.frames[-1], _MAX_PREDICT)

    def score(self) -> float:
        boxes = np.asarray(self.boxes)
        return float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum())

    def side(self) -> float:
        boxes = np.asarray(self.boxes)
        return float(np.median(boxes[:, 2] - boxes[:, 0]))


@dataclass(frozen=True)
class FaceTrack:
    """The presenter's face through a reference, one entry per frame."""

    boxes: np.ndarray  # (n, 4) float32 steady face boxes; held from neighbours where lost
    present: np.ndarray  # (n,) bool: the face is there (found, or a short miss filled)
    detected: np.ndarray  # (n,) bool: the detector found it in this very frame
    mouths: np.ndarray  # (n, 2) float32 mouth centre (u, v) in face-box units, steady
    chins: np.ndarray  # (n,) float32 chin height v in face-box units
    # (n, LOOKS) float32 what the face looked like where detected (face/looks.py); NaN elsewhere.
    looks: np.ndarray | None = None
    # (k, 5) float32 faces that are not the presenter's (``Observations.others``).
    others: np.ndarray | None = None


@dataclass(frozen=True)
class Observations:
    """What the tracker saw of the presenter, per frame; NaN where it saw nothing."""

    boxes: np.ndarray  # (n, 4) float32 detector boxes
    looks: np.ndarray  # (n, LOOKS) float32 looks (face/looks.py), the mouth (u, v) among them
    moves: np.ndarray  # (n, 2) float32 motion in pixels from the frame before
    # (k, 5) float32 the other faces: each one's median box (x0, y0, x1, y1) and the share
    # of frames it was found in.
    others: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))
    # (n,) bool: frames where the presenter was missed and the place of its face held too
    # little skin to be one (``_Track.empty``); None: none measured.
    empty: np.ndarray | None = None


class Tracker:
    """Feed frames in order with ``add`` (or ``repeat``, for the frame before again); ask
    ``presenter`` at the end. ``recall(i)`` gives back frame ``i`` as ``add`` had it
    (analysis reads it from the frame store it is writing): a face a scan finds is followed
    back through the frames since the last scan, which the tracker does not keep."""

    def __init__(self, detector: Detector, cfg: DetectorConfig, fps: float, recall: Callable[[int], np.ndarray]):
        self.detector = detector
        self._recall = recall
        self.cfg = cfg
        self.scale = scan_scale(detector, cfg.min_face)
        self.scan_every = max(1, round(cfg.scan_interval_s * fps))
        self.steady_scan_every = max(self.scan_every, round(cfg.steady_scan_interval_s * fps))
        self.retire_after = max(self.scan_every, round(cfg.max_gap_s * fps))
        self.frames = 0
        self.active: list[_Track] = []
        self.retired: list[_Track] = []
        self._last_scan = -self.steady_scan_every  # frame 0 is scanned
        self._colour: bool | None = None
        # The scan's frame in cells (``search.shrink_for_change``), each as last scanned,
        # and the boxes of the faces followed at the last scan.
        self._seen: np.ndarray | None = None
        self._followed_at_scan = np.zeros((0, 4), np.float32)

    def add(self, i420: np.ndarray) -> None:
        """Follow the faces into the next frame, (H·3/2, W) uint8 I420 (``media.yuv``)."""
        i = self.frames
        self.frames += 1
        frame = _Frame(i420)
        if self._colour is None:
            self._colour = is_colour(frame.bgr())
        grey = frame.grey
        for track in self.active:
            expected = track.expected(i)
            if track.patch is not None:
                before, at, step = track.patch
                # The patch is cut where the face is expected (a whole-pixel shift from the
                # last one), so what phase correlation measures is the small remainder: a
                # shift near half the patch is ambiguous (it wraps), and a fast face moves
                # that far in a frame.
                shift = _whole_shift(at, expected)
                cut = face_patch(grey, at + np.tile(shift, 2))
                rest = None if cut is None else motion(before, cut[0], step)
                if rest is not None:
                    moved = (float(shift[0]) + rest[0], float(shift[1]) + rest[1])
                    track.moves[i] = moved
                    expected = at + np.array([*moved, *moved], np.float32)
            box = search_window(self.detector, grey, expected)
            if box is not None:
                track.hit(i, box, frame.look(box))
            else:
                track.misses += 1
                if self._colour and frame.skin(expected) < self.cfg.min_skin:
                    track.empty.add(i)
            at = box if box is not None else expected
            cut = face_patch(grey, at)
            track.patch = None if cut is None else (cut[0], at, cut[1])
        # Often while a face is missed or none is followed (one may have come back), seldom
        # while every face followed is found.
        missed = any(t.frames[-1] != i for t in self.active)
        steady = bool(self.active) and not missed
        if i - self._last_scan >= (self.steady_scan_every if steady else self.scan_every):
            # Whole while a face followed is missed: the scan may find it again where the
            # frame did not change.
            self._scan(i, frame, grey, self._small(grey), whole=missed)
            self._last_scan = i
        self._retire()

    def repeat(self) -> None:
        """The frame before, shown again (the same pixels: a slow take's frame held, a still
        screen): each face found there is found here where it was, not moving; one missed
        there is missed again. Nothing is searched; a scan that falls due waits for the
        next frame ``add`` is given."""
        i = self.frames
        self.frames += 1
        for track in self.active:
            if track.frames[-1] == i - 1:
                track.hit(i, track.boxes[-1], track.looks[-1])
                track.moves[i] = (0.0, 0.0)
            else:
                track.misses += 1
                if i - 1 in track.empty:
                    track.empty.add(i)
        self._retire()

    def _retire(self) -> None:
        """Stop following the faces missed for too long."""
        for track in [t for t in self.active if t.misses > self.retire_after]:
            self.active.remove(track)
            self.retired.append(track)

    def _small(self, grey: np.ndarray) -> np.ndarray:
        """``grey`` at the whole-frame scan's scale."""
        if self.scale == 1.0:
            return grey
        h, w = grey.shape
        return cv2.resize(grey, (round(w * self.scale), round(h * self.scale)), interpolation=cv2.INTER_AREA)

    def _scan(self, i: int, frame: _Frame, grey: np.ndarray, small: np.ndarray, whole: bool) -> None:
        cells = shrink_for_change(small)
        followed = np.array([t.boxes[-1] for t in self.active], np.float32).reshape(-1, 4)
        regions = None
        if not whole and self._seen is not None:
            regions = changed_regions(
                cells, self._seen, (small.shape[1], small.shape[0]), self.detector.window,
                np.concatenate([followed, self._followed_at_scan]) * self.scale,
            )  # fmt: skip
        if regions is None:
            self._seen = cells
        self._followed_at_scan = followed
        for box in scan(self.detector, small, self.scale, regions):
            held = [t for t in self.active if iou(box[None], t.boxes[-1][None])[0, 0] >= _LINK_IOU]
            if held:
                for track in held:  # the window search lost it: the scan has it again
                    if track.frames[-1] != i:
                        track.hit(i, box, frame.look(box))
            elif not self._colour or frame.skin(box) >= self.cfg.min_skin:
                track = _Track()
                track.hit(i, box, frame.look(box))
                cut = face_patch(grey, box)
                track.patch = None if cut is None else (cut[0], box, cut[1])
                self._follow_back(track, i, grey)
                self.active.append(track)

    def _follow_back(self, track: _Track, i: int, grey: np.ndarray) -> None:
        """Extend a new track found in frame ``i`` (its grey ``grey``) back through the
        frames since the last scan, read back with ``recall``, measuring its motion
        between them as ``add`` does going forward."""
        later = grey
        for j in range(i - 1, max(self._last_scan, i - self.steady_scan_every, 0) - 1, -1):
            recalled = self._recall(j)
            earlier = yuv.planes(recalled)[0]
            box = search_window(self.detector, earlier, track.boxes[0])
            if box is None:
                if self._colour and _Frame(recalled).skin(track.boxes[0]) < self.cfg.min_skin:
                    track.empty.add(j)
                return
            shift = _whole_shift(box, track.boxes[0])
            cuts = face_patch(earlier, box), face_patch(later, box + np.tile(shift, 2))
            rest = None if cuts[0] is None or cuts[1] is None else motion(cuts[0][0], cuts[1][0], cuts[0][1])
            if rest is not None:
                track.moves[track.frames[0]] = (shift[0] + rest[0], shift[1] + rest[1])
            track.frames.insert(0, j)
            track.boxes.insert(0, box)
            track.looks.insert(0, looks.empty())  # looks are measured going forward only
            later = earlier

    def presenter(self) -> Observations | None:
        """The presenter's frames, from the best track and those of the same person."""
        need = min(_MIN_HITS, self.frames)
        tracks = sorted(
            (t for t in self.active + self.retired if len(t.frames) >= need), key=_Track.score, reverse=True
        )
        if not tracks:
            return None
        seen = Observations(
            boxes=np.full((self.frames, 4), np.nan, np.float32),
            looks=np.full((self.frames, len(looks.LOOKS)), np.nan, np.float32),
            moves=np.full((self.frames, 2), np.nan, np.float32),
        )
        others = []
        empty = np.zeros(self.frames, bool)
        side = tracks[0].side()
        x0, y0, x1, y1 = np.median(np.asarray(tracks[0].boxes), axis=0)
        for track in tracks:
            frames = np.asarray(track.frames)
            taken = ~np.isnan(seen.boxes[frames, 0])
            # Beside the presenter in the same frames: the same face only where it overlaps.
            beside = taken.any() and bool(
                (iou(np.asarray(track.boxes)[taken], seen.boxes[frames[taken]]).diagonal() < _LINK_IOU).any()
            )
            if beside or not 1 / _SAME_SIZE <= track.side() / side <= _SAME_SIZE:
                # Smaller, never beside it, and centred where the presenter's face is: the
                # presenter's own head tilted or turned (the detector boxes it smaller), not
                # another face, and no box to steady the presenter's with.
                cx, cy = np.median(np.asarray(track.boxes), axis=0).reshape(2, 2).mean(axis=0)
                if not beside and track.side() < side and x0 <= cx <= x1 and y0 <= cy <= y1:
                    continue
                if len(frames) >= _OTHER_SHARE * self.frames:
                    others.append([*np.median(np.asarray(track.boxes), axis=0), len(frames) / self.frames])
                continue
            new = ~taken
            empty[sorted(track.empty)] = True
            seen.boxes[frames[new]] = np.asarray(track.boxes)[new]
            seen.looks[frames[new]] = np.asarray(track.looks)[new]
            for f, moved in track.moves.items():
                if np.isnan(seen.moves[f, 0]):
                    seen.moves[f] = moved
        return dataclasses.replace(seen, others=np.asarray(others, np.float32).reshape(-1, 5), empty=empty)


def finish(seen: Observations, fps: float, cfg: DetectorConfig) -> FaceTrack:
    """What the tracker saw → the steady ``FaceTrack``."""
    n = len(seen.boxes)
    detected = ~np.isnan(seen.boxes[:, 0])
    present = detected.copy()
    max_gap = max(1, round(cfg.max_gap_s * fps))
    empty = np.zeros(n, bool) if seen.empty is None else seen.empty
    # A short miss is the face there, unseen: filled from the sightings around it. At the
    # take's first or last frames it has a sighting on one side only, and there the face
    # may have gone (the presenter comes in or leaves, a cut): where the place of the face
    # held no skin, the frames from there on (away from the sighting) are without it, and a
    # mouth pasted there would land on an empty slide.
    for start, stop in _runs(~detected):
        if stop - start > max_gap:
            continue
        if start == 0 and empty[stop - 1]:
            continue
        if stop == n and empty[start:stop].any():
            stop = start + int(np.argmax(empty[start:stop]))
        present[start:stop] = True
    frames = np.arange(n)
    hits = np.flatnonzero(detected)
    boxes = np.stack([np.interp(frames, hits, seen.boxes[hits, c]) for c in range(4)], axis=1).astype(np.float32)
    mouth_uv = np.empty((n, 2), np.float32)
    for start, stop in _runs(present):
        run = slice(start, stop)
        boxes[run] = _steady_boxes(boxes[run], detected[run], seen.moves[run], fps)
        mouth_uv[run] = mouth.steady(seen.looks[run][:, [looks.MOUTH_U, looks.MOUTH_V]], fps)
    for start, stop in _runs(~present):  # held from the nearest present frame
        mouth_uv[start:stop] = mouth_uv[stop] if start == 0 else mouth_uv[start - 1]
    chins = mouth_uv[:, 1] + mouth.CHIN_BELOW_MOUTH
    return FaceTrack(boxes=boxes, present=present, detected=detected, mouths=mouth_uv, chins=chins, looks=seen.looks,
                     others=seen.others)


def _whole_shift(at: np.ndarray, to: np.ndarray) -> np.ndarray:
    """The whole-pixel (dx, dy) that moves box ``at``'s centre nearest box ``to``'s: where a
    patch is cut to measure the motion from one to the other, leaving a small remainder."""
    return np.floor((to[:2] + to[2:] - at[:2] - at[2:]) / 2 + 0.5).astype(np.float32)


def find_presenter(tracker: Tracker, fps: float) -> FaceTrack | None:
    seen = tracker.presenter()
    return None if seen is None else finish(seen, fps, tracker.cfg)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a (n,) bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _steady_boxes(boxes: np.ndarray, detected: np.ndarray, moves: np.ndarray, fps: float) -> np.ndarray:
    """(n, 4) boxes (interpolated where not detected) → steady boxes.

    Centres: the least-squares path that stays near the detections and moves as the
    measured motion says: the detector's noise averages out, the motion's is sub-pixel,
    and a moving face is followed without lag (where no motion was measured, the
    detections' trend over ``_CENTRE_PERIOD_S``). Sizes (the cascade's come in
    10 % steps): smoothed over ``_SIZE_PERIOD_S``, favouring a constant.
    """
    if len(boxes) < 3:
        return boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    centre = trend(centre, detected, fps, _CENTRE_PERIOD_S, steps=moves, step_weight=_MOTION_WEIGHT)
    size = trend(size, detected, fps, _SIZE_PERIOD_S, order=1)
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
