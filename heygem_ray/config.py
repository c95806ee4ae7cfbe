"""Typed, frozen configuration: one dataclass per concern.

The CLI maps its options onto these in one place (``cli.py``); everything below reads
only these objects. ``config_hash`` is saved with the results so a run can be traced back
to exactly the settings that produced it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from heygem_ray import storage
from heygem_ray.errors import InputError
from heygem_ray.storage import Location

PackName = Literal["warp", "wav2lip", "musetalk"]
# The packs with weights, and what --checkpoint names for each.
_NEEDS_WEIGHTS = {
    "wav2lip": "PATH (the public Wav2Lip generator checkpoint, wav2lip.pth or wav2lip_gan.pth)",
    "musetalk": "DIR (MuseTalk's models/ folder: musetalkV15/, sd-vae/ and whisper/, as its download script lays it out)",
}
LoopMode = Literal["pingpong", "forward", "trim"]
BackendName = Literal["auto", "tensorrt", "onnxruntime", "pytorch"]
# "auto": fp16 on a GPU, fp32 on a CPU; int8 first where it pays and calibration data
# was given (see precision.precision_order). "int8": calibrated QDQ graphs for the pack's
# int8 stages (backends/int8.py), used only if they pass the accuracy gate. "bf16": PyTorch in
# bfloat16, on CPUs with AVX-512 BF16 or AMX (fp32 elsewhere) and on GPUs.
PrecisionName = Literal["auto", "fp32", "fp16", "int8", "bf16"]
WorkerDevice = Literal["auto", "gpu", "cpu"]
# The optional face-restoration stage after the pack's render ("none": off).
RestoreName = Literal["none", "gfpgan"]
_RESTORE_WEIGHTS = {"gfpgan": "PATH (the public GFPGANv1.4.pth, or GFPGANv1.3.pth)"}
# The restore settings; left out of config_hash while restoration is off, so the hash of
# a run without it is what it was before the stage existed (its rows are not rendered again).
_RESTORE_FIELDS = ("restore", "restore_checkpoint", "restore_blend")
# The H.264 encoder: "auto" is h264_nvenc where the node's GPU has NVENC, else libx264
# (media/encoders.py); the one used is in each row's ``encoder``.
EncoderName = Literal["auto", "libx264", "h264_nvenc"]
# The smallest --max-resolution (lines): below it a face is too small to find or render.
MIN_RESOLUTION = 144
# A take slower than this (a webcam at 15 fps, a screen recording at 5, slides at one frame
# every 2 s) is read with each of its frames held k times, k the fewest that make 25 fps or
# more (``media.video_probe.held_rate``): the output is at the take's rate, and a mouth that
# moved only a few times a second would step. Whole repeats keep the take's own motion even
# (15 fps at 30, not at 25 with every other frame shown twice). ``max_fps`` keeps to it.
MIN_FPS = 20
# The shortest --reference-seconds: a second of the take.
MIN_REFERENCE_SECONDS = 1.0
# Frames a reference's file may hold where --reference-seconds cuts it (twelve hours at
# 60 fps), or --max-reference-frames where that is more: only the cut is decoded, so the
# file's length costs a scan of its packets (seconds), and this bounds that.
CUT_FILE_FRAMES = 12 * 3600 * 60
# x264's presets, fastest first, then ``lean`` (the default: veryfast with two costly searches
# left out, media/encoders.py); h264_nvenc takes the nearest of its own.
EncoderPreset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "lean"
]


def cache_home() -> Path:
    """This machine's heygem-ray cache folder (``$XDG_CACHE_HOME/heygem-ray``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "heygem-ray"


def default_cache_dir() -> Path:
    """Where analysed references (templates) are kept between runs."""
    return cache_home() / "templates"


# Overrides the engine store's default location (a folder, or a bucket URI).
ENGINES_ENV = "HEYGEM_RAY_ENGINES"


def default_engines_dir() -> Location:
    """The engine store: ``$HEYGEM_RAY_ENGINES`` if set, else this user's cache folder
    (not a folder relative to wherever the command runs)."""
    named = os.environ.get(ENGINES_ENV)
    return storage.location(named) if named else cache_home() / "engines"


def default_download_dir() -> Path:
    """Where each machine keeps the inputs it downloaded from a bucket (read on the
    machine that runs the job)."""
    return cache_home() / "downloads"


@dataclass(frozen=True)
class DetectorConfig:
    """Finding the presenter's face in the reference (the template depends on these)."""

    # The smallest face searched for, as its width in pixels of the reference (at least
    # 20: the detector's window). Smaller costs more: the whole-frame scan runs at the
    # scale that makes this size fit the detector, so its cost grows with 1/min_face².
    min_face: int = 40
    # Seconds between whole-frame scans for faces while a face being followed was missed
    # (or none is followed yet); in between, faces already found are followed frame by
    # frame in a window around them.
    scan_interval_s: float = 0.5
    # Seconds between scans while every face being followed is found frame by frame: a
    # scan then only looks for a face that came in (followed back to where it appeared),
    # and at 1080p one costs as much as some 50 window searches (docs/faces.md).
    steady_scan_interval_s: float = 2.0
    # A face missing for at most this long is filled in from the frames around it; longer,
    # and those frames are left untouched in the output (turned away, a cut to slides).
    max_gap_s: float = 0.4
    # A new face must have at least this share of skin-coloured pixels in its centre
    # (colour references only): slides full of text fool the cascade, not this test.
    min_skin: float = 0.2
    # Haar cascade: the step between scales, and the overlapping hits a face needs.
    scale_factor: float = 1.1
    min_neighbors: int = 3

    def __post_init__(self) -> None:
        if self.min_face < 20:
            raise InputError(
                f"--min-face must be 20 or more (pixels: the smallest face the detector finds), not {self.min_face}",
                kind="bad_argument",
            )


# FFmpeg's decoders take a pixel limit up to this (their ``max_pixels`` option is an int).
_FFMPEG_MAX_PIXELS = 2**31 - 1


@dataclass(frozen=True)
class InputLimits:
    """How large one row's files may be, and whether its audio may be silent. A file over a
    limit fails its row (kind ``too_large``; the message names the file, the limit and the
    option that raises it), from what its header declares where it declares it, before
    anything is decoded; a file whose header says less is stopped once decoding passes the
    limit. The batch goes on.

    They bound what one job holds and how long it runs: a job's memory grows with the
    reference's frame size (each decoded frame is 3 bytes a pixel, in this process and in
    ffmpeg's), its template's disk with the reference's frames, its run time with the
    audio's length. They do not change what a job renders, so ``config_hash`` leaves them out.
    """

    # Pixels of the reference's frames, width × height as stored: 8K UHD (7680 × 4320).
    # No decoder is allowed a larger picture, whatever the header says.
    max_reference_pixels: int = 7680 * 4320
    # Frames of a reference video: as its index lists them, as its packets count, or as
    # its timestamps span at its frame rate (a gap of hours is filled with repeated frames).
    # 90 000 is an hour at 25 fps, 50 minutes at 30 fps. Where --reference-seconds cuts
    # the take, it bounds the frames used; the file may then hold up to CUT_FILE_FRAMES.
    max_reference_frames: int = 90_000
    # Seconds of a row's audio (its output is as long): 4 hours.
    max_audio_seconds: float = 4 * 3600.0
    # Audio with no sound in it (``features.heard_seconds``) fails its row ``silent_audio``
    # unless this is set: a video of the presenter with the mouth closed throughout.
    allow_silent_audio: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_reference_pixels <= _FFMPEG_MAX_PIXELS:
            raise InputError(
                f"--max-reference-pixels must be from 1 to {_FFMPEG_MAX_PIXELS} (FFmpeg's largest), "
                f"not {self.max_reference_pixels}",
                kind="bad_argument",
            )
        if self.max_reference_frames < 1:
            raise InputError(f"--max-reference-frames must be 1 or more, not {self.max_reference_frames}",
                             kind="bad_argument")  # fmt: skip
        if not self.max_audio_seconds > 0:
            raise InputError(f"--max-audio-seconds must be more than 0, not {self.max_audio_seconds:g}",
                             kind="bad_argument")  # fmt: skip


@dataclass(frozen=True)
class RenderConfig:
    """How each job is rendered."""

    pack: PackName = "warp"
    checkpoint: Path | None = None
    loop: LoopMode = "pingpong"
    # Frames per chunk: the unit that crosses the object store between stages.
    chunk_frames: int = 128
    # Frames per model call inside a chunk.
    batch_size: int = 32
    backend: BackendName = "auto"
    precision: PrecisionName = "auto"
    # int8: a manifest (columns audio and video) of the presenter and speech whose frames
    # calibrate the activation ranges; None: the bundled examples (examples/manifest.csv).
    calibration: Path | None = None
    # int8: frames whose activations set the ranges; a quarter as many more are held out for
    # the accuracy gate. More cover more of the presenter's expressions, at more build time.
    calibration_frames: int = 128
    crf: int = 18
    # Face restoration after the render stage, on the model workers (docs/restoration.md):
    # its weights, and how much of the restored face shows where the pack changed the
    # frame (0: none, 1: all of it).
    restore: RestoreName = "none"
    restore_checkpoint: Path | None = None
    restore_blend: float = 1.0
    preset: EncoderPreset = "lean"
    encoder: EncoderName = "auto"
    # The output's resolution at most (its shorter side, in lines: 1080 makes a 4K reference
    # 1920×1080, a portrait 2160×3840 one 1080×1920); a larger reference is scaled down
    # before it is analysed, so analysis, its template, compose and the encoder all work at
    # that size. 0: the reference's own.
    max_resolution: int = 0
    # The output's frame rate at most: a faster reference (a phone's 60 fps) is read with
    # every k-th frame kept, k the fewest that bring it under (60 → 30 for 30), so analysis,
    # the models, compose and the encoder all work at that rate; a rate no whole k brings
    # to between it and ``MIN_FPS`` stays as it is. 0: the reference's own.
    max_fps: int = 0
    # Seconds of each reference video used, from its start (0: all of it): a longer take
    # (a whole lecture given as the reference) is analysed, cached and rendered from as if
    # it were cut there, and looped under longer audio like any take.
    reference_seconds: float = 0.0
    # Seconds into each reference video where its use starts (0: its beginning): a lecture
    # that opens without the presenter (setting up, a title) is used from where they are
    # there, as if cut there; ``reference_seconds`` counts from it. A photo is used whole.
    reference_start: float = 0.0
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    # How large a row's files may be (not part of config_hash: they render nothing differently).
    limits: InputLimits = field(default_factory=InputLimits)

    def __post_init__(self) -> None:
        _check_choice("pack", self.pack, PackName)
        _check_choice("loop", self.loop, LoopMode)
        _check_choice("backend", self.backend, BackendName)
        _check_choice("precision", self.precision, PrecisionName)
        _check_choice("preset", self.preset, EncoderPreset)
        _check_choice("encoder", self.encoder, EncoderName)
        if self.pack in _NEEDS_WEIGHTS and self.checkpoint is None:
            raise InputError(
                f"the {self.pack} pack needs its weights: pass --checkpoint {_NEEDS_WEIGHTS[self.pack]}",
                kind="bad_argument",
            )
        if self.pack not in _NEEDS_WEIGHTS and self.checkpoint is not None:
            raise InputError(
                f"--checkpoint is only used by the {' and '.join(_NEEDS_WEIGHTS)} packs; the {self.pack} pack has no weights",
                kind="bad_argument",
            )
        for name in ("chunk_frames", "batch_size", "calibration_frames"):
            if getattr(self, name) < 1:
                raise InputError(f"{flag(name)} must be 1 or more, not {getattr(self, name)}", kind="bad_argument")
        if self.max_resolution and (self.max_resolution < MIN_RESOLUTION or self.max_resolution % 2):
            raise InputError(
                f"--max-resolution must be 0 (the reference's own) or an even number of lines from {MIN_RESOLUTION} "
                f"(720, 1080, 1440), not {self.max_resolution}",
                kind="bad_argument",
            )
        if self.max_fps and self.max_fps < MIN_FPS:
            raise InputError(
                f"--max-fps must be 0 (the reference's own) or {MIN_FPS} or more (24, 25, 30), not {self.max_fps}",
                kind="bad_argument",
            )
        if not (self.reference_seconds == 0 or MIN_REFERENCE_SECONDS <= self.reference_seconds < math.inf):
            raise InputError(
                f"--reference-seconds must be 0 (all of each reference) or at least {MIN_REFERENCE_SECONDS:g} "
                f"seconds (300: the first five minutes), not {self.reference_seconds:g}",
                kind="bad_argument",
            )
        if not 0 <= self.reference_start < math.inf:
            raise InputError(
                f"--reference-start must be 0 (each reference from its beginning) or a number of seconds into "
                f"it (90: from a minute and a half in), not {self.reference_start:g}",
                kind="bad_argument",
            )
        for name in ("reference_seconds", "reference_start"):  # 90 and 90.0 name one template and hash
            object.__setattr__(self, name, float(getattr(self, name)))
        self._check_restore()
        for name, option in (("checkpoint", "--checkpoint"), ("calibration", "--calibrate"),
                             ("restore_checkpoint", "--restore-checkpoint")):
            value = getattr(self, name)
            if value is not None and storage.is_uri(value):
                where = storage.location(value)  # credentials in the URI are refused first, unshown
                raise InputError(f"{option} {where}: give a local path (or one every node sees), not a bucket",
                                 kind="bad_argument")
            if value is not None:  # made absolute where the run starts: see RunConfig's cache_dir
                object.__setattr__(self, name, storage.from_home(Path(value)).absolute())

    def for_row(self, row_settings: tuple[tuple[str, float], ...]) -> RenderConfig:
        """These settings with a manifest row's own over them (``manifest.ROW_SETTINGS``:
        (name, value) pairs); a value out of range is the ``InputError`` the option would be."""
        if not row_settings:
            return self
        changes: dict[str, Any] = dict(row_settings)
        return dataclasses.replace(self, **changes)

    def _check_restore(self) -> None:
        _check_choice("restore", self.restore, RestoreName)
        if self.restore != "none" and self.restore_checkpoint is None:
            raise InputError(
                f"--restore {self.restore} needs its weights: pass --restore-checkpoint {_RESTORE_WEIGHTS[self.restore]}",
                kind="bad_argument",
            )
        if self.restore == "none" and self.restore_checkpoint is not None:
            raise InputError("--restore-checkpoint is only used with --restore gfpgan; add --restore gfpgan to "
                             "restore faces, or leave the checkpoint out", kind="bad_argument")
        if not 0.0 <= self.restore_blend <= 1.0:
            raise InputError(f"--restore-blend must be from 0 to 1, not {self.restore_blend:g}", kind="bad_argument")
        if self.restore == "none" and self.restore_blend != 1.0:
            raise InputError("--restore-blend is only used with --restore gfpgan", kind="bad_argument")


@dataclass(frozen=True)
class RunConfig:
    """One run of a manifest."""

    # A folder, or a bucket prefix (``Uri``; text like "s3://bucket/out" is taken too).
    output_dir: Location
    render: RenderConfig = field(default_factory=RenderConfig)
    # A folder (local, or shared by the nodes): templates are read at random offsets.
    cache_dir: Path = field(default_factory=default_cache_dir)
    # The engine store: exported ONNX graphs and TensorRT engines. On a cluster, a path
    # every node sees or a bucket prefix, so each GPU architecture's engines are built once.
    # Default: $HEYGEM_RAY_ENGINES, else ~/.cache/heygem-ray/engines.
    engines_dir: Location = field(default_factory=default_engines_dir)
    # None: start a local Ray instance. Otherwise "auto", "HOST:PORT" or "ray://HOST:PORT".
    address: str | None = None
    # Jobs rendered at once across the cluster (``--max-jobs``): fewer hold less memory on
    # each node. 0 picks one per CPU the cluster has, at least two per model worker.
    max_jobs_in_flight: int = 0
    # Where model workers run: "gpu" (one GPU each; a worker that cannot use the GPU Ray
    # gave it stops the run), "cpu", or "auto": gpu when the cluster has GPUs or its
    # autoscaler's node types have them, cpu when it has CPUs only or its autoscaler's node
    # types have no GPU; on an empty cluster that no autoscaler describes, the first node
    # to join decides. An auto worker given a GPU it cannot use renders on the CPU and says
    # why in ``backend_note``.
    device: WorkerDevice = "auto"
    # Model workers to start. 0: one per GPU the cluster has or its autoscaler can add;
    # on CPUs, a quarter of the cores (leaving at least one for the jobs).
    workers: int = 0
    # Render every job again, even those an earlier run into output_dir completed.
    force: bool = False
    # Times a job is started before a lost task or worker fails it for good.
    max_attempts: int = 3
    # Seconds the run waits for its first model worker: for the autoscaler to add a
    # node, and for the worker to load its models and build missing engines. With none
    # ready by then it stops, saying what the cluster lacks. Later, a run whose workers
    # are all lost stops when none of their replacements has served for as long.
    workers_ready_timeout_s: float = 1800.0
    # A chunk that renders longer than chunk_timeout_s + chunk_timeout_per_frame_s × its
    # frames has wedged its worker (a hung GPU call): the worker is stopped and replaced,
    # and the chunk sent to another (a chunk that does it twice fails its job). Generous:
    # MuseTalk renders about 10 s a frame on two CPU cores; a GPU does 10-100 frames a second.
    chunk_timeout_s: float = 300.0
    chunk_timeout_per_frame_s: float = 30.0
    # A job that for this long neither moves a byte or a frame (its files, ffmpeg's pipes,
    # its template, its bucket transfers) nor waits on a model worker or another job's
    # template is stalled (a read stuck on a network file system, a process paused on its
    # node): its task is stopped and its row fails ``stalled``; the run goes on. Longer
    # than ffmpeg's own watch (10 minutes: media/ffmpeg.py), which names the file.
    job_stall_timeout_s: float = 900.0
    # Model workers that die or are stopped (wedged, their node gone) are replaced, up to
    # this many times the number of workers the run wants; past that the others go on,
    # and once none is left the run stops.
    worker_restarts: int = 3

    def __post_init__(self) -> None:
        # Text and Paths that hold a bucket URI (a CLI option of type Path) become Uris.
        for name in ("output_dir", "engines_dir"):
            object.__setattr__(self, name, storage.location(getattr(self, name)))
        if storage.is_uri(self.cache_dir):
            where = storage.location(self.cache_dir)  # credentials in the URI are refused first, unshown
            raise InputError(
                f"the template cache {where} must be a folder (local, or shared by the nodes), "
                "not a bucket: templates are read at random offsets while videos are composed",
                kind="bad_argument",
            )
        # Folders the Ray workers use are made absolute here, where the run starts: a relative
        # path would be taken from each worker's own working folder, which on a cluster
        # (--address) is not the one the command ran in. (Rows' files are resolved by the
        # manifest; output_dir is used by this process only and kept as given, for messages.)
        object.__setattr__(self, "cache_dir", storage.from_home(Path(self.cache_dir)).absolute())
        if isinstance(self.engines_dir, Path):
            object.__setattr__(self, "engines_dir", self.engines_dir.absolute())
        _check_choice("device", self.device, WorkerDevice)
        for name, least, more in (("workers", 0, " (automatic)"), ("worker_restarts", 0, ""),
                                  ("max_jobs_in_flight", 0, " (automatic)")):  # fmt: skip
            if getattr(self, name) < least:
                raise InputError(f"{flag(name)} must be {least}{more} or more, not {getattr(self, name)}",
                                 kind="bad_argument")  # fmt: skip
        for name in ("workers_ready_timeout_s", "chunk_timeout_s", "job_stall_timeout_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{flag(name)} must be more than 0 seconds, not {getattr(self, name):g}",
                                 kind="bad_argument")  # fmt: skip
        if not self.chunk_timeout_per_frame_s >= 0:
            raise InputError(f"--chunk-timeout-per-frame must be 0 seconds or more, not {self.chunk_timeout_per_frame_s:g}",
                             kind="bad_argument")  # fmt: skip

    def for_row(self, row_settings: tuple[tuple[str, float], ...]) -> RunConfig:
        """This run's configuration with a manifest row's own render settings
        (``manifest.ROW_SETTINGS``: (name, value) pairs) over its options; a value out of
        range is the ``InputError`` the option would be."""
        if not row_settings:
            return self
        return dataclasses.replace(self, render=self.render.for_row(row_settings))

    def config_hash(self) -> str:
        """Hash of the settings that shape the outputs (``render_settings``)."""
        return hashlib.sha256(self.render_settings().encode()).hexdigest()[:16]

    def render_settings(self) -> str:
        """The settings that shape the outputs, as JSON (not where they go, nor the input
        limits): what ``config_hash`` is of, kept with each row so a rerun can say which of
        them changed (``settings_change``)."""
        payload = _jsonable(dataclasses.asdict(self.render))
        del payload["limits"]
        if self.render.restore == "none":
            for name in _RESTORE_FIELDS:
                del payload[name]
        if not self.render.max_resolution:  # as before the option existed
            del payload["max_resolution"]
        if not self.render.max_fps:
            del payload["max_fps"]
        if not self.render.reference_seconds:
            del payload["reference_seconds"]
        if not self.render.reference_start:
            del payload["reference_start"]
        return json.dumps(payload, sort_keys=True)


# Changed settings named at most by ``settings_change``; more are counted.
SETTINGS_NAMED = 4


def row_settings_problem(row_settings: tuple[tuple[str, float], ...], render: RenderConfig) -> InputError | None:
    """Why a manifest row's own render settings cannot stand over ``render`` (a value out
    of the range its option takes), naming them as the row gives them; None where they can."""
    try:
        render.for_row(row_settings)
    except InputError as exc:
        for name, value in row_settings:  # the one refused, by its column (not by its option's flag)
            if exc.message.startswith(said := flag(name) + " "):
                return InputError(f"its own {name} {value:g}: {exc.message.removeprefix(said)}", kind=exc.kind)
        given = ", ".join(f"{name} {value:g}" for name, value in row_settings)
        return InputError(f"its own {given}: {exc.message}", kind=exc.kind)
    return None


# Settings that name where weights are: what they hold is the row's weights_digest, so the
# same weights moved to another path (a cluster's new weights folder) are the same render.
WEIGHT_PATHS = ("checkpoint", "restore_checkpoint")


@functools.lru_cache(maxsize=16)  # (a rerun of many rows asks it of the same two texts)
def settings_change(before: str, now: str, ignore: tuple[str, ...] = ()) -> str:
    """What differs between two ``RunConfig.render_settings`` texts, in words:
    ``reference_start 0 → 90, preset lean → ultrafast``; a setting one of them leaves out
    (its default, or a field of another version) reads ``(not set)``; those in ``ignore``
    are not compared ("": nothing else differs). ``before`` empty or unreadable (a row of
    an older version): that the earlier settings are not known."""
    try:
        old = _flat(json.loads(before))
    except (ValueError, TypeError, AttributeError):
        return "the earlier run's settings are not recorded"
    new = _flat(json.loads(now))
    changed = [f"{k} {_said(old, k)} → {_said(new, k)}" for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k) and k not in ignore]  # fmt: skip
    more = f" and {len(changed) - SETTINGS_NAMED} more" if len(changed) > SETTINGS_NAMED else ""
    return ", ".join(changed[:SETTINGS_NAMED]) + more


def _said(settings: dict[str, Any], key: str) -> str:
    """A setting's value as a person typed it (90, not 90.0), or ``(not set)``."""
    value = settings.get(key, "(not set)")
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level: ``{"detector": {"min_face": 40}}`` → ``{"detector.min_face": 40}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# The command line's options whose names are not their settings' (the rest are the
# setting's name with '-' for '_': ``chunk_frames`` is ``--chunk-frames``).
_OPTIONS = {
    "workers_ready_timeout_s": "--start-timeout", "chunk_timeout_s": "--chunk-timeout",
    "chunk_timeout_per_frame_s": "--chunk-timeout-per-frame", "job_stall_timeout_s": "--job-stall-timeout",
    "max_jobs_in_flight": "--max-jobs",
}  # fmt: skip


def flag(name: str) -> str:
    """The command line's option for the setting ``name``, as messages name it."""
    return _OPTIONS.get(name, "--" + name.replace("_", "-"))


def _check_choice(name: str, value: object, literal: object) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise InputError(
            f"unknown {name} {value!r}: choose one of {', '.join(choices)}", kind="bad_argument"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value

