from fractions import Fraction

import numpy as np
import torch

from heygem_ray.features import Pcm
from heygem_ray.models.warp import CROP_SIZE, MOUTH_Y, WarpMotion, WarpRender
from heygem_ray.packs.warp import warp_features

SR = 16000


def tone_bursts(seconds: float, bursts: list[tuple[float, float]], amplitude: float = 0.3) -> np.ndarray:
    """Silence with 200 Hz-rich buzzes (speech-band energy) over the given (start, end) spans."""
    t = np.arange(int(seconds * SR)) / SR
    wav = np.zeros_like(t)
    for a, b in bursts:
        on = (t >= a) & (t < b)
        wav[on] = amplitude * np.sign(np.sin(2 * np.pi * 200 * t[on]))  # square wave: many harmonics
    return wav.astype(np.float32)


def openings(wav: np.ndarray, fps: int = 25) -> np.ndarray:
    frames = round(len(wav) / SR * fps)
    with torch.no_grad():
        features = warp_features(Pcm.from_array(wav), Fraction(fps), frames)(range(frames))
        return WarpMotion()(torch.from_numpy(features)).numpy()[:, 0]


def test_mouth_is_closed_in_silence_and_open_in_sound_at_the_right_frames():
    op = openings(tone_bursts(3.0, [(1.0, 2.0)]))  # 75 frames at 25 fps; sound in frames 25..49
    assert op.shape == (75,)
    assert op[:20].max() == 0.0 and op[55:].max() == 0.0
    assert op[28:47].min() > 0.9
    # No frame offset: the opening crosses half-way within one frame of the sound's edges.
    rising = int(np.argmax(op > 0.5))
    falling = int(np.flatnonzero(op > 0.5)[-1])
    assert abs(rising - 25) <= 1 and abs(falling - 49) <= 1


def test_all_silent_audio_keeps_the_mouth_closed():
    assert openings(np.zeros(SR * 2, np.float32)).max() == 0.0


def test_quiet_and_loud_recordings_of_the_same_speech_open_alike():
    loud = openings(tone_bursts(2.0, [(0.5, 1.5)], amplitude=0.5))
    quiet = openings(tone_bursts(2.0, [(0.5, 1.5)], amplitude=0.02))
    assert np.abs(loud - quiet).max() < 0.05


def test_render_is_the_identity_when_closed_and_darkens_the_mouth_when_open():
    rng = np.random.default_rng(0)
    crops = torch.from_numpy(rng.uniform(0.5, 1.0, (2, 3, CROP_SIZE, CROP_SIZE)).astype(np.float32))
    out = WarpRender()(crops, torch.tensor([[0.0], [1.0]])).detach()
    assert torch.allclose(out[0], crops[0], atol=1e-5)
    mouth_row = int((MOUTH_Y + 0.04 + 1) / 2 * CROP_SIZE)
    centre = CROP_SIZE // 2
    assert out[1, :, mouth_row, centre].mean() < 0.3  # dark interior
    # The upper face (above the nose) does not move.
    assert torch.allclose(out[1, :, : CROP_SIZE // 3], crops[1, :, : CROP_SIZE // 3], atol=1e-5)


def test_features_computed_a_chunk_at_a_time_equal_one_chunk_of_the_whole_clip():
    wav = tone_bursts(4.0, [(0.3, 1.1), (2.0, 3.7)], amplitude=0.05)
    for fps in (Fraction(25), Fraction(30000, 1001)):
        frames = int(4.0 * fps) + 3
        whole = warp_features(Pcm.from_array(wav), fps, frames)(range(frames))
        per_chunk = warp_features(Pcm.from_array(wav), fps, frames)
        chunks = [per_chunk(range(s, min(s + 16, frames))) for s in range(0, frames, 16)]
        np.testing.assert_array_equal(np.concatenate(chunks), whole)
        assert whole[-1].max() == -4.0  # past the end of the audio reads as silence
