"""Which H.264 encoder a job uses: NVENC where this machine's GPU has one, else libx264.

The bundled ffmpeg lists ``h264_nvenc`` everywhere; whether it works depends on the
machine (L4, L40S and A10-class GPUs have NVENC; H100 and H200 have decoders but no
encoder; a CPU node has neither). So it is tried once per process, on a tiny input, and
the answer kept.

The job tasks that compose ask for no GPU (the model workers hold them), and Ray hides the
node's GPUs from them. NVENC is a unit of its own beside the GPU's cores, so the encoder's
ffmpeg is started with the node's GPUs visible (``encoder_env``); NVENC picks the first.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

from heygem_ray.errors import EngineError
from heygem_ray.media.ffmpeg import NVIDIA_DEVICE, ffmpeg_exe, gpu_env, run, tail

Encoder = Literal["libx264", "h264_nvenc"]
# x264's presets, fastest first (``--preset``), and NVENC's nearest (p1 fastest, p7 slowest).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
NVENC_PRESETS = dict(zip(X264_PRESETS, ("p1", "p2", "p3", "p4", "p4", "p5", "p6", "p7", "p7"), strict=True))
# Ours, the default: x264's veryfast without the two searches that cost it most for least on
# camera footage: sub-pixel refinement past one step (``subme`` 1; veryfast's is 2), and the
# search over splits of blocks (motion is found for whole 16×16 blocks; x264's
# ``partitions`` also keeps a P- or B-frame's intra blocks whole, while an I-frame's still
# split: keeping their splits, ``partitions=i8x8,i4x4``, made files 1 % larger on a flat
# slide and 5 % on camera-like footage at CRF 18). At CRF 18 on camera-like 1080p it takes
# two thirds of veryfast's encoder CPU for a file 8 % smaller at 0.2 dB lower PSNR; on a
# flat synthetic slide, 0.88× the CPU for a file 14 % larger (BENCHMARKS.md, "Compose and
# the frame store"). NVENC takes veryfast's nearest.
LEAN = "lean"
_LEAN_BASE, _LEAN_PARAMS = "veryfast", "subme=1:partitions=none"
NVENC_PRESETS[LEAN] = NVENC_PRESETS[_LEAN_BASE]
# x264's threads per encoder. A node runs a job per core (``Pool.jobs_cap``), so a job's
# share is about one core, while x264's own choice is 1.5 threads a core of the machine:
# 24 on a 16-core node, in every job's encoder, each frame thread holding its frames.
# Encoding noisy 4K at lean with 24 threads on 2 cores (the ratio of 16 such encoders on
# 16 cores) peaked at 2.4 GB and took 1.5× the CPU a frame of 2 threads (0.9 GB); at
# 1080p, 730 against 283 MB and 1.4× (bench/bench_x264_threads.py). Two let a job alone
# on a machine use two cores.
X264_THREADS = 2


def encoder_env(encoder: Encoder) -> dict[str, str] | None:
    """The environment to start ``encoder``'s ffmpeg with (None: this process's own)."""
    return gpu_env() if encoder == "h264_nvenc" else None


@functools.lru_cache(maxsize=1)
def nvenc_missing() -> str | None:
    """Why ``h264_nvenc`` cannot encode on this machine, or None when it can: found by
    encoding five tiny frames, once per process."""
    if not os.path.exists(NVIDIA_DEVICE):
        return "no NVIDIA driver on this machine"
    args = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
        "-f", "lavfi", "-i", "color=size=256x256:rate=25", "-frames:v", "5",
        "-c:v", "h264_nvenc", "-f", "null", "-",
    ]  # fmt: skip
    proc = run(args, env=encoder_env("h264_nvenc"))
    return None if proc.returncode == 0 else f"h264_nvenc failed: {tail(proc.stderr) or 'no message'}"


def pick_encoder(requested: Literal["auto", "libx264", "h264_nvenc"]) -> Encoder:
    """The encoder for ``requested``: ``auto`` is h264_nvenc where it works, else libx264.
    An ``h264_nvenc`` this machine cannot run is an ``encode`` error that says why."""
    if requested == "libx264":
        return "libx264"
    missing = nvenc_missing()
    if missing is None:
        return "h264_nvenc"
    if requested == "auto":
        return "libx264"
    raise EngineError(
        f"--encoder h264_nvenc cannot encode here ({missing}); use --encoder auto, which takes "
        "libx264 where NVENC is missing, or run on nodes whose GPUs have NVENC (L4, L40S, A10; "
        "H100 and H200 have none)",
        kind="encode",
    )


def video_codec_options(encoder: Encoder, preset: str, crf: int) -> dict[str, str | int]:
    """ffmpeg output options that choose ``encoder`` at ``preset`` (x264's, or ``LEAN``) and
    ``crf`` (NVENC: its nearest preset, and constant quality at the same number); x264 runs
    ``X264_THREADS`` threads."""
    if encoder == "h264_nvenc":
        return {"vcodec": "h264_nvenc", "preset": NVENC_PRESETS[preset], "tune": "hq", "rc": "vbr", "cq": crf,
                "b:v": 0}  # fmt: skip
    x264: dict[str, str | int] = {"vcodec": "libx264", "crf": crf, "threads": X264_THREADS}
    if preset == LEAN:
        return {**x264, "preset": _LEAN_BASE, "x264-params": _LEAN_PARAMS}
    return {**x264, "preset": preset}
