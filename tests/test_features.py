"""Audio features: the Wav2Lip mel spectrogram and its per-frame windows."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy.signal import lfilter

from heygem_ray.features import (
    HEARD_MIN_S,
    MEL_FPS,
    SAMPLE_RATE,
    Pcm,
    frame_windows,
    heard_seconds,
    mel_column_count,
    mel_columns,
    mel_filterbank,
    mel_windows,
    silent_audio,
    wav2lip_mel,
)

MAX_ABS = 4.0


def _speech_like(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """A modulated harmonic tone plus noise: energy in many bands, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    voice = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 12))
    wav = 0.2 * voice * (1 + 0.8 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(len(t))
    return np.clip(wav, -1, 1).astype(np.float32)


def test_the_window_and_the_pre_emphasis_are_the_public_codes_to_the_bit():
    """The two steps the public code takes from scipy.signal, written with numpy."""
    from scipy.signal import get_window

    from heygem_ray import features

    x = _speech_like().astype(np.float64)
    assert np.array_equal(features._preemphasis(x), lfilter([1.0, -0.97], [1.0], x))
    assert np.array_equal(features._HANN, get_window("hann", 800, fftbins=True))


def _librosa_reference(wav: np.ndarray) -> np.ndarray:
    """The public ``audio.melspectrogram`` written with librosa, reflect padding explicit."""
    librosa = pytest.importorskip("librosa", reason="librosa is the reference for the mel spectrogram")
    y = lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, center=True, pad_mode="reflect")
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(stft))) - 20
    return np.clip(8 * ((db + 100) / 100) - 4, -4, 4)


@pytest.mark.parametrize("n_samples", [24_000, 16_123, 3_000])
def test_mel_matches_librosa(n_samples: int) -> None:
    wav = _speech_like()[:n_samples]
    ours = wav2lip_mel(wav)
    ref = _librosa_reference(wav)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4
    assert ours.min() < 0 < ours.max()  # not a trivially clipped spectrogram


def test_reflect_padding_matters() -> None:
    # The first columns differ between reflect and zero padding; we must match reflect.
    librosa = pytest.importorskip("librosa")
    wav = _speech_like(0.5)
    y = lfilter([1, -0.97], [1], wav)
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    zeros = np.abs(librosa.stft(y=y, n_fft=800, hop_length=200, center=True, pad_mode="constant"))
    db = 20 * np.log10(np.maximum(1e-5, basis @ zeros)) - 20
    zero_padded = np.clip(8 * ((db + 100) / 100) - 4, -4, 4)
    ours = wav2lip_mel(wav)
    assert np.abs(ours[:, 0] - zero_padded[:, 0]).max() > 0.05
    assert np.abs(ours[:, 0] - _librosa_reference(wav)[:, 0]).max() < 1e-4


def test_filterbank_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, dtype=np.float64)
    np.testing.assert_allclose(mel_filterbank(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_samples", [0, 1, 199, 200, 16_000, 16_199])
def test_mel_shape(n_samples: int) -> None:
    mel = wav2lip_mel(np.zeros(n_samples, np.float32))
    assert mel.dtype == np.float32
    assert mel.shape == (80, 1 + n_samples // 200)


def test_silence_is_minus_four() -> None:
    assert np.all(wav2lip_mel(np.zeros(SAMPLE_RATE, np.float32)) == -MAX_ABS)


def test_tone_peaks_in_its_band() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    mel = wav2lip_mel((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    # Band centres: the peaks of the triangular filters on a fine frequency grid.
    fb = mel_filterbank()
    freqs = np.linspace(0, SAMPLE_RATE / 2, fb.shape[1])
    band = int(np.argmin(np.abs(freqs[fb.argmax(axis=1)] - 1000)))
    assert fb[band, np.argmin(np.abs(freqs - 1000))] > 0  # 1 kHz lies inside that filter
    loudest = mel[:, 10:-10].mean(axis=1).argmax()
    assert abs(int(loudest) - band) <= 1
    assert mel[band, 10:-10].min() > 0  # loud, far above silence
    assert mel[70:, 10:-10].max() < mel[band, 10:-10].min() - 2  # far bands are much quieter


def _starts(windows: np.ndarray, mel: np.ndarray) -> list[int]:
    """First column of each window, found by matching it in ``mel``."""
    out = []
    for w in windows[:, 0]:
        hits = [s for s in range(mel.shape[1] - 15) if np.array_equal(mel[:, s:s + 16], w)]
        assert len(hits) == 1
        out.append(hits[0])
    return out


def _ramp_mel(n_cols: int) -> np.ndarray:
    """(80, n_cols) with every column distinct, so a window identifies its start."""
    return np.tile(np.arange(n_cols, dtype=np.float32), (80, 1)) / n_cols


def test_windows_at_25_fps() -> None:
    mel = _ramp_mel(161)  # 2 s of audio
    win = mel_windows(mel, 25)
    assert win.shape == (47, 1, 80, 16) and win.dtype == np.float32
    starts = _starts(win, mel)
    # int(i * 3.2) while the window fits (start <= 145), then one on the last 16 columns.
    assert starts[:6] == [0, 3, 6, 9, 12, 16]
    assert starts[45] == 144 and starts[46] == 145


def test_windows_at_29_97_fps() -> None:
    mel = _ramp_mel(161)
    for fps in (29.97, Fraction(30000, 1001)):
        starts = _starts(mel_windows(mel, fps), mel)
        expected = [int(i * 80 / fps) for i in range(100) if int(i * 80 / fps) <= 145] + [145]
        assert starts == expected
        assert starts[:5] == [0, 2, 5, 8, 10]
        assert len(starts) == 56


def test_windows_with_given_frame_count_clamp_at_end() -> None:
    mel = _ramp_mel(161)
    win = mel_windows(mel, 25, n_frames=60)
    assert win.shape == (60, 1, 80, 16)
    starts = _starts(win, mel)
    assert starts[:46] == [int(i * 3.2) for i in range(46)]
    assert starts[46:] == [145] * 14
    np.testing.assert_array_equal(win[-1, 0], mel[:, -16:])
    assert mel_windows(mel, 25, n_frames=3).shape == (3, 1, 80, 16)
    assert mel_windows(mel, 25, n_frames=0).shape == (0, 1, 80, 16)


def test_window_exactly_at_end_is_kept_then_final_repeated() -> None:
    # 32 columns at 80/16 = 5 fps: starts 0 and 16 both fit exactly; the public loop then
    # adds the final window once more (start 32 would run past the end).
    mel = _ramp_mel(32)
    assert _starts(mel_windows(mel, 5), mel) == [0, 16, 16]


def test_short_audio_is_padded_with_silence() -> None:
    mel = wav2lip_mel(np.zeros(1000, np.float32) + 0.1)  # 6 columns
    assert mel.shape == (80, 6)
    win = mel_windows(mel, 25)
    assert win.shape[1:] == (1, 80, 16) and len(win) >= 1
    np.testing.assert_array_equal(win[0, 0, :, :6], mel)
    assert np.all(win[:, 0, :, 6:] == -MAX_ABS)
    assert mel_windows(wav2lip_mel(np.zeros(0, np.float32)), 25, n_frames=4).shape == (4, 1, 80, 16)


def test_mel_fps_constant() -> None:
    assert MEL_FPS == SAMPLE_RATE // 200


# ---------------------------------------------------------------- a chunk at a time


@pytest.mark.parametrize("samples", [1, 700, 801, 1199, 1200, 3000, 16123, 48000])
def test_any_span_of_columns_equals_the_whole_clip_computation(samples: int) -> None:
    wav = _speech_like(samples / SAMPLE_RATE + 1e-6, seed=samples)[:samples]
    whole = wav2lip_mel(wav)  # (80, T)
    assert whole.shape[1] == mel_column_count(samples)
    pcm = Pcm.from_array(wav)
    n = whole.shape[1]
    rng = np.random.default_rng(samples)
    spans = [(0, n), (0, 1), (n - 1, n), (0, min(n, 3))] + [tuple(sorted(rng.integers(0, n + 1, 2))) for _ in range(8)]
    for first, stop in spans:
        # Exact: the same samples, the same reflection at the ends, the same arithmetic.
        np.testing.assert_array_equal(mel_columns(pcm, first, stop), whole[:, first:stop], err_msg=f"{first}:{stop}")


def test_chunked_windows_equal_the_whole_clip_windows_from_a_file(tmp_path) -> None:
    wav = _speech_like(2.3, seed=7)
    path = tmp_path / "audio.f32"
    wav.astype("<f4").tofile(path)
    pcm = Pcm.from_file(path)
    assert pcm.samples == len(wav)
    for fps in (Fraction(25), Fraction(30000, 1001)):
        frames = int(len(wav) / SAMPLE_RATE * fps) + 2  # a little past the end: clamped windows
        whole = mel_windows(wav2lip_mel(wav), float(fps), frames)
        chunks = [frame_windows(pcm, float(fps), range(s, min(s + 13, frames))) for s in range(0, frames, 13)]
        np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_a_scaled_waveform_reads_louder() -> None:
    wav = _speech_like(0.5)
    louder = Pcm.from_array(wav).scaled(3.0).scaled(0.5)
    np.testing.assert_allclose(louder.read(100, 900), wav[100:900] * 1.5, rtol=1e-6)
    assert len(louder.read(-50, 10**9)) == len(wav)


def _with(seconds: float, *parts: tuple[float, np.ndarray]) -> Pcm:
    """``seconds`` of digital silence with each (start s, samples) part added in."""
    wav = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    for start, part in parts:
        at = int(start * SAMPLE_RATE)
        wav[at : at + len(part)] += part
    return Pcm.from_array(wav)


def _tone(seconds: float, dbfs: float) -> np.ndarray:
    """A 440 Hz sine whose RMS is ``dbfs``."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("what", "pcm"),
    [
        ("digital silence", _with(5.0)),
        ("the hiss of a muted microphone at -70 dBFS", _with(5.0, (0.0, _tone(5.0, -70.0)))),
        ("a click", _with(5.0, (2.0, np.array([0.9, -0.9], np.float32)))),
        ("a bump of 0.1 s", _with(5.0, (1.0, _tone(0.1, -20.0)))),
    ],
)
def test_audio_with_no_sound_in_it_is_silent(what: str, pcm: Pcm) -> None:
    assert heard_seconds(pcm) < HEARD_MIN_S, what


@pytest.mark.parametrize(
    ("what", "pcm"),
    [
        ("a word of 0.3 s at -50 dBFS in silence", _with(5.0, (1.0, _tone(0.3, -50.0)))),
        ("speech 40 dB quieter than usual", Pcm.from_array(0.01 * _speech_like(2.0))),
        ("speech", Pcm.from_array(_speech_like(2.0))),
    ],
)
def test_quiet_or_short_sound_is_sound(what: str, pcm: Pcm) -> None:
    assert heard_seconds(pcm) >= HEARD_MIN_S, what


def test_the_silent_audio_error_names_the_file_its_length_and_the_ways_out() -> None:
    one = silent_audio("/data/lesson-5.wav", 5.0, tracks=1)
    assert one.kind == "silent_audio"
    assert one.message == (
        "audio /data/lesson-5.wav is silent: in its 5.0 s nothing is louder than -60 dBFS for 0.2 s, so the "
        "presenter's mouth would not move; check that it is the lesson's audio (not a muted export or a video's "
        "empty sound track), or pass --allow-silent-audio to render it as it is"
    )
    # A recording with a second sound track (the voice, often): how to give that one.
    two = silent_audio("/data/rec.mkv", 5.0, tracks=2).message
    assert "it holds 2 sound tracks and the first is the one read" in two
    assert "ffmpeg -i /data/rec.mkv -map 0:a:1 speech.wav" in two and "--allow-silent-audio" in two
    # Too short to hold that much sound, however loud: it is said so.
    short = silent_audio("/data/cut.wav", 0.1, tracks=1)
    assert short.kind == "silent_audio" and short.message.startswith(
        "audio /data/cut.wav lasts 0.10 s, less than the 0.2 s of sound a lesson's speech takes at the least; "
    ), short.message
