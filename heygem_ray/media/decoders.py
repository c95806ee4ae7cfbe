"""Which decoder analysis reads a reference with: NVDEC where this machine's GPU has one
and it takes the stream, else ffmpeg's own on the CPU.

Decoding 1080p H.264 costs ffmpeg 9–15 ms of CPU a frame on the development machine
(BENCHMARKS.md, "Compose and the frame store"): on a GPU node, where the networks are
cheap, a large share of what analysis spends. The bundled ffmpeg has the ``cuda``
hwaccel everywhere; whether it works depends on the machine (NVIDIA's data-centre GPUs
have NVDEC, H100 and H200 included; a CPU node has none). So it is tried once per
process, on a tiny stream, and the answer kept.

With NVDEC, ffmpeg decodes on the GPU and hands each picture back to memory, where the
same filters follow as on the CPU. H.264 and HEVC decoding is exact (the standards fix
every output sample), so the frames, and the template built from them, are the same
either way; the decoder is not part of the template's key. NVDEC is asked for 8-bit
4:2:0 streams of those two codecs only (it has no 4:2:2 or 4:4:4 H.264, for one); others
are decoded on the CPU. Where NVDEC fails on a reference all the same, analysis decodes it
again on the CPU and says so in the template's ``meta.json`` (``template/files.py``).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Literal

from heygem_ray.media.ffmpeg import NVIDIA_DEVICE, ffmpeg_exe, gpu_env, run, tail, url
from heygem_ray.media.video_probe import VideoInfo

Decoder = Literal["cpu", "nvdec"]
# The codecs, and the pixel formats as decoded, that go to NVDEC.
NVDEC_CODECS = frozenset({"h264", "hevc"})
NVDEC_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p"})


@functools.lru_cache(maxsize=1)
def nvdec_missing() -> str | None:
    """Why NVDEC cannot decode on this machine, or None when it can: found by decoding five
    tiny H.264 frames with it, once per process."""
    if not os.path.exists(NVIDIA_DEVICE):
        return "no NVIDIA driver on this machine"
    quiet = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    with tempfile.TemporaryDirectory(prefix="heygem-nvdec-") as tmp:
        clip = Path(tmp) / "probe.mp4"
        made = run([*quiet, "-f", "lavfi", "-i", "testsrc2=size=256x256:rate=25", "-frames:v", "5",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", url(clip)])  # fmt: skip
        if made.returncode != 0:
            return f"could not make a stream to try NVDEC on: {tail(made.stderr) or 'no message'}"
        proc = run([*quiet, "-hwaccel", "cuda", "-i", url(clip), "-f", "null", "-"], env=gpu_env())
    return None if proc.returncode == 0 else f"NVDEC failed: {tail(proc.stderr) or 'no message'}"


def pick_decoder(info: VideoInfo) -> Decoder:
    """NVDEC for a video stream it takes, on a machine where it works; else the CPU."""
    takes = not info.is_image and info.codec in NVDEC_CODECS and info.pixel_format in NVDEC_PIXEL_FORMATS
    return "nvdec" if takes and nvdec_missing() is None else "cpu"
