"""The ``wav2lip`` pack: the public Wav2Lip generator, split into two stages.

* features: the Wav2Lip mel (``features.wav2lip_mel``), one (1, 80, 16) window per
  output frame by the public indexing rule.
* motion: the audio encoder, (B, 1, 80, 16) → (B, 512, 1, 1).
* render: the face encoder and decoder, 96 × 96 BGR crops in [0, 1] plus the audio code
  → generated crops. The six-channel face input (masked crop, then reference) is built
  inside the stage, as the public inference script builds it.

Crop geometry is the public one: the face box (reaching the chin, as the public
detector's does) padded 10 px at the bottom, clipped to the frame, resized to 96 × 96.
"""

from __future__ import annotations

from fractions import Fraction

from heygem_ray.features import MEL_STEP, N_MELS, Pcm, frame_windows
from heygem_ray.geometry import CropGeometry, feathered_ellipse
from heygem_ray.models.sizes import WAV2LIP_EMBED as EMBED_DIM
from heygem_ray.models.sizes import WAV2LIP_FACE as FACE_SIZE
from heygem_ray.packs.spec import ChunkFeatures, PackSpec, frame_stages

GEOMETRY = CropGeometry(size=FACE_SIZE, mode="padded", pad=(0, 10, 0, 0))


def wav2lip_features(pcm: Pcm, fps: Fraction, frames: int) -> ChunkFeatures:
    """16 kHz mono waveform → per chunk of frames, (n, 1, 80, 16) float32 mel windows."""
    return lambda chunk: frame_windows(pcm, float(fps), chunk)


PACK = PackSpec(
    name="wav2lip",
    geometry=GEOMETRY,
    features=wav2lip_features,
    stages=frame_stages(FACE_SIZE, (1, N_MELS, MEL_STEP), (EMBED_DIM, 1, 1)),
    paste_mask=feathered_ellipse(FACE_SIZE, centre=(0.0, 0.1), radii=(0.95, 0.95), feather=0.3),
    # The model redraws the whole lower face: residual pasting would leave ghosts of the
    # old mouth's edges, so the crop replaces the frame under the mask, as in the public code.
    paste_mode="replace",
    networks="heygem_ray.packs.wav2lip_networks",
    # The face encoder and decoder are nearly all of the model time (BENCHMARKS.md, "INT8");
    # the audio encoder is small and stays fp32.
    int8_stages=("render",),
    # The whole graph runs in 8 bits between its input and its output: convolutions (the
    # decoder's transposed ones among them, in ``wav2lip_networks.int8_form``), the
    # residual adds, the skip concatenations, the ReLUs (folded into the quantization where
    # a CPU graph allows) and the upsampling's pixel shuffle (Reshape, Transpose). Left
    # float, each of them cost a dequantize, a quantize and a layout change on ONNX Runtime's CPU provider
    # (BENCHMARKS.md, "INT8 and bf16"). The input mask (Mul) and the output sigmoid stay
    # float: both are cheap, and a quantized sigmoid would round the generated crops to
    # coarser steps than their 8-bit pixels.
    int8_ops=("Conv", "Add", "Concat", "Relu", "Reshape", "Transpose"),
)
