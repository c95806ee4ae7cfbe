"""Audio features: the mel spectrogram the public Wav2Lip checkpoints were trained on.

``wav2lip_mel`` reproduces the public ``audio.melspectrogram`` (numpy only: scipy.signal,
which the public code filters with, takes half a second to import in every process that
reads audio; the two steps it did are written out below, to the bit):

1. pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]``;
2. STFT: n_fft 800, hop 200 (12.5 ms at 16 kHz, i.e. 80 columns/s), periodic Hann window
   of 800 samples, centred: 400 samples of *reflection* padding at both ends;
3. magnitude → 80 Slaney-scale mel bands, 55–7600 Hz, Slaney (area) normalisation;
4. ``20·log10(max(1e-5, mel)) − 20`` dB, then ``clip(8·(S + 100)/100 − 4, −4, 4)``.

``mel_windows`` cuts that spectrogram into one 16-column (200 ms) window per video frame.

A job's features are computed a chunk of frames at a time (``mel_columns``, ``Pcm``): the
waveform stays in a file and only the samples a chunk needs are read, so memory does not
grow with the length of the audio. The columns are the same as the whole-clip ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from heygem_ray.errors import InputError, InternalError

SAMPLE_RATE = 16000  # Hz; the input waveform's rate
MEL_FPS = 80  # mel columns per second = SAMPLE_RATE / HOP
N_FFT = 800  # samples (50 ms)
HOP = 200  # samples (12.5 ms)
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0  # Hz, edges of the mel filterbank
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS = 4.0  # normalised values lie in [-MAX_ABS, MAX_ABS]
MEL_STEP = 16  # mel columns per video frame window (200 ms)

# Periodic Hann window of N_FFT samples, computed as scipy.signal.get_window("hann", N_FFT)
# does (a cosine over N_FFT + 1 points from -pi to pi, the last dropped): the same bits.
_HANN = 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, N_FFT + 1)[:-1])

# Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mels
_LOGSTEP = np.log(6.4) / 27.0  # mels per log-Hz above 1 kHz


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = hz >= _MIN_LOG_HZ
    mel[log_part] = _MIN_LOG_MEL + np.log(hz[log_part] / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    log_part = mel >= _MIN_LOG_MEL
    hz[log_part] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel[log_part] - _MIN_LOG_MEL))
    return hz


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float64 triangular Slaney filters, each scaled to unit area
    per Hz (``2 / bandwidth``), as librosa's ``filters.mel`` defaults."""
    fft_hz = np.linspace(0.0, sr / 2, 1 + n_fft // 2)  # (F,) centre frequency of each FFT bin
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(np.array([fmin]))[0], _hz_to_mel(np.array([fmax]))[0], n_mels + 2))
    widths = np.diff(edges_hz)  # (n_mels + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, F)
    rising = -ramps[:-2] / widths[:-1, None]  # (n_mels, F), 1 at each filter's centre
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]


_MEL_BASIS: np.ndarray | None = None  # built on first use, not at import

# Loudness is measured per 20-ms stretch (its RMS, samples in [-1, 1]). Quieter than
# SILENCE_RMS (−60 dBFS) is silence: nothing at all, dither, or the room noise of a muted
# microphone.
LEVEL_HOP = SAMPLE_RATE // 50
SILENCE_RMS = 1e-3
# A clip louder than silence for less than this, summed over the whole clip, is silent: a
# click or a bump is that short, a spoken word is not.
HEARD_MIN_S = 0.2


class Pcm:
    """A mono float32 waveform read a span at a time: held in memory, or in a raw
    little-endian float32 file (as ``media.decode_audio`` writes it), read with plain
    file reads so that nothing but the span asked for is resident."""

    def __init__(self, samples: int, array: np.ndarray | None = None, path: Path | None = None, gain: float = 1.0):
        self.samples = samples
        self.gain = gain  # every sample read is multiplied by it
        self._array = array
        self._path = path
        self._levels: np.ndarray | None = None  # levels(), once read

    @classmethod
    def from_array(cls, wav: np.ndarray) -> Pcm:
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        return cls(len(wav), array=wav)

    @classmethod
    def from_file(cls, path: Path) -> Pcm:
        return cls(os.path.getsize(path) // 4, path=path)

    def scaled(self, gain: float) -> Pcm:
        """The same waveform, read louder or quieter by ``gain``."""
        return Pcm(self.samples, self._array, self._path, self.gain * gain)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) clipped to the waveform: (n,) float32."""
        start, stop = max(0, start), min(self.samples, stop)
        if stop <= start:
            return np.zeros(0, np.float32)
        if self._array is not None:
            x = self._array[start:stop]
        elif self._path is not None:
            with open(self._path, "rb") as f:
                f.seek(4 * start)
                x = np.fromfile(f, dtype="<f4", count=stop - start).astype(np.float32, copy=False)
        else:
            raise InternalError("a Pcm needs an array or a file")
        return x if self.gain == 1.0 else (x * np.float32(self.gain)).astype(np.float32)

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """The whole waveform in consecutive spans of ``size`` samples (the last shorter)."""
        for start in range(0, self.samples, size):
            yield self.read(start, start + size)

    def levels(self) -> np.ndarray:
        """The RMS of each whole 20-ms stretch → (samples // LEVEL_HOP,) float32, read a
        minute at a time on the first call (the job's silence check and warp's loudness
        both ask)."""
        if self._levels is None:
            hop = LEVEL_HOP
            rms = [
                np.sqrt(np.mean(block[: len(block) // hop * hop].reshape(-1, hop) ** 2, axis=1))
                for block in self.blocks(hop * 3000)  # whole hops but for the last block
            ]
            self._levels = np.concatenate(rms) if rms else np.zeros(0, np.float32)
        return self._levels


def heard_seconds(pcm: Pcm) -> float:
    """How long ``pcm`` is louder than silence, in all: under HEARD_MIN_S it is silent."""
    return float(np.count_nonzero(pcm.levels() > SILENCE_RMS)) * LEVEL_HOP / SAMPLE_RATE


def silent_audio(name: object, seconds: float, tracks: int) -> InputError:
    """The error for the audio ``name`` (as the manifest gives it) that is silent for its
    ``seconds``: a lip-synced video of it would keep the presenter's mouth closed
    throughout, which is nearly always a wrong or muted file. ``tracks``: the file's sound
    tracks, of which the first was read (a recording's second track often holds the voice).
    Audio shorter than ``HEARD_MIN_S`` is said to be that short, whatever it holds."""
    if seconds < HEARD_MIN_S:
        return InputError(
            f"audio {name} lasts {seconds:.2f} s, less than the {HEARD_MIN_S:g} s of sound a lesson's speech takes "
            "at the least; check that it is the lesson's audio (not an export cut short or a placeholder), or pass "
            "--allow-silent-audio to render it as it is",
            kind="silent_audio",
        )
    if tracks > 1:
        fix = (f"it holds {tracks} sound tracks and the first is the one read: give the track with the speech "
               f"on its own (e.g. ffmpeg -i {name} -map 0:a:1 speech.wav)")  # fmt: skip
    else:
        fix = "check that it is the lesson's audio (not a muted export or a video's empty sound track)"
    return InputError(
        f"audio {name} is silent: in its {seconds:.1f} s nothing is louder than -60 dBFS for {HEARD_MIN_S:g} s, so "
        f"the presenter's mouth would not move; {fix}, or pass --allow-silent-audio to render it as it is",
        kind="silent_audio",
    )


def _preemphasis(x: np.ndarray) -> np.ndarray:
    """(n,) float64 → ``y[n] = x[n] - 0.97 x[n-1]``, ``y[0] = x[0]``: the same bits as the
    public code's ``lfilter([1, -0.97], [1], x)``."""
    y = x.copy()
    y[1:] -= PREEMPHASIS * x[:-1]
    return y


def _stft_magnitude(y: np.ndarray) -> np.ndarray:
    """(n,) float64 → (1 + N_FFT // 2, 1 + n // HOP) float64 |STFT|, centred frames."""
    # Reflection, not zeros (see module doc). numpy reflects repeatedly when the signal is
    # shorter than the pad, as librosa does; a 1-sample signal is repeated.
    return _padded_magnitude(np.pad(y, N_FFT // 2, mode="reflect"))


def _padded_magnitude(padded: np.ndarray) -> np.ndarray:
    """(m,) float64 signal, already padded → (1 + N_FFT // 2, T) float64 |STFT| of its
    frames of N_FFT samples every HOP."""
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (T, N_FFT)
    return np.abs(np.fft.rfft(frames * _HANN, axis=1)).T


def wav2lip_mel(wav: np.ndarray) -> np.ndarray:
    """(n,) 16 kHz mono float waveform in [-1, 1] → (80, 1 + n // 200) float32 in [-4, 4].

    Column t covers samples centred on t · 200 (80 columns per second). Silence gives −4.
    """
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if len(x) == 0:  # no audio: one column of silence rather than an error
        x = np.zeros(1)
    return _normalised_mel(_stft_magnitude(_preemphasis(x)))


def _normalised_mel(magnitude: np.ndarray) -> np.ndarray:
    """(1 + N_FFT // 2, T) |STFT| → (80, T) float32 normalised log-mel in [-4, 4]."""
    global _MEL_BASIS
    if _MEL_BASIS is None:
        _MEL_BASIS = mel_filterbank()
    mel = _MEL_BASIS @ magnitude  # (80, T) linear magnitude
    min_level = 10.0 ** (MIN_LEVEL_DB / 20)  # 1e-5
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    norm = 2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS
    return np.clip(norm, -MAX_ABS, MAX_ABS).astype(np.float32)


def mel_column_count(samples: int) -> int:
    """Columns of ``wav2lip_mel`` for a waveform of ``samples`` samples."""
    return 1 + max(samples, 1) // HOP


def mel_columns(pcm: Pcm, first: int, stop: int) -> np.ndarray:
    """Columns [first, stop) of ``wav2lip_mel`` of the whole waveform, reading only the
    samples they cover: (80, stop - first) float32.

    Column t is the STFT frame on samples [t·HOP − N_FFT/2, t·HOP + N_FFT/2) of the
    pre-emphasised signal, reflected at both ends of the clip (as ``np.pad`` "reflect").
    """
    n = pcm.samples
    first, stop = max(0, first), min(stop, mel_column_count(n))
    if stop <= first:
        return np.zeros((N_MELS, 0), np.float32)
    half = N_FFT // 2
    if n <= N_FFT:  # a clip this short may need repeated reflection: take the whole of it
        return wav2lip_mel(pcm.read(0, n))[:, first:stop]
    lo, hi = first * HOP - half, (stop - 1) * HOP + half  # signal span, before reflection
    # The span read: what the columns cover, plus what a reflection at either end mirrors.
    a = 0 if lo < 0 else lo
    b = n if hi > n else hi
    a, b = min(a, max(0, n - 1 - (hi - n))), max(b, min(n, 1 - lo))
    # Pre-emphasis needs the sample before the span: read it, then drop its output.
    x = pcm.read(a - 1, b).astype(np.float64) if a > 0 else pcm.read(0, b).astype(np.float64)
    y = _preemphasis(x)
    y = y[1:] if a > 0 else y  # y[k] is sample a + k of the pre-emphasised signal
    parts = []
    if lo < 0:  # reflection of samples 1 .. -lo about sample 0
        parts.append(y[1 - a : 1 - lo - a][::-1])
    parts.append(y[max(lo, 0) - a : min(hi, n) - a])
    if hi > n:  # reflection of samples n-1-(hi-n) .. n-2 about sample n-1
        parts.append(y[n - 1 - (hi - n) - a : n - 1 - a][::-1])
    padded = np.concatenate(parts)  # (hi - lo,) samples lo .. hi-1, reflected
    return _normalised_mel(_padded_magnitude(padded))  # stop - first columns


def _window_starts(n_cols: int, fps: float | Fraction, n_frames: int | None) -> np.ndarray:
    """First mel column of each frame's window: ``int(i · 80 / fps)``, clamped to the end.

    With ``n_frames`` None, frames run while the window fits, plus one final window on the
    last 16 columns (the public inference loop). ``fps`` may be a float or a Fraction.
    """
    last = n_cols - MEL_STEP
    if n_frames is None:
        starts = []
        i = 0
        while (start := int(i * MEL_FPS / fps)) <= last:
            starts.append(start)
            i += 1
        starts.append(last)
        return np.asarray(starts, dtype=np.int64)
    return _starts_of(range(n_frames), n_cols, fps)


def _starts_of(frames: range, n_cols: int, fps: float | Fraction) -> np.ndarray:
    """(len(frames),) int64 first mel column of each frame's window, clamped to the end."""
    last = n_cols - MEL_STEP
    return np.asarray([min(int(i * MEL_FPS / fps), last) for i in frames], dtype=np.int64)


def frame_windows(pcm: Pcm, fps: float | Fraction, frames: range) -> np.ndarray:
    """``mel_windows(wav2lip_mel(wav), fps, n)[frames]`` for any n > frames.stop - 1,
    reading only the samples these frames need: (len(frames), 1, 80, 16) float32."""
    n_cols = mel_column_count(pcm.samples)
    if n_cols < MEL_STEP:  # under 0.2 s of audio: padded with silence, see mel_windows
        return mel_windows(wav2lip_mel(pcm.read(0, pcm.samples)), fps, frames.stop)[frames.start : frames.stop]
    if len(frames) == 0:
        return np.zeros((0, 1, N_MELS, MEL_STEP), np.float32)
    starts = _starts_of(frames, n_cols, fps)  # (N,)
    first = int(starts.min())
    mel = mel_columns(pcm, first, int(starts.max()) + MEL_STEP)  # (80, span)
    cols = (starts - first)[:, None] + np.arange(MEL_STEP)[None, :]  # (N, 16)
    return np.ascontiguousarray(mel[:, cols].transpose(1, 0, 2)[:, None], dtype=np.float32)


def mel_windows(mel: np.ndarray, fps: float | Fraction, n_frames: int | None = None) -> np.ndarray:
    """(80, T) mel → (N, 1, 80, 16) float32 windows, window i starting at column
    ``int(i · 80 / fps)``; a window that would run past the end takes the last 16 columns.

    ``n_frames`` None: N follows the public inference loop (every window that fits, then one
    on the final 16 columns). Otherwise exactly ``n_frames`` windows, clamped at the end.
    A mel shorter than 16 columns is right-padded with −4 (silence) first.
    """
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise InternalError(f"mel_windows: mel must be ({N_MELS}, T), got {mel.shape}")
    if fps <= 0:
        raise InternalError(f"mel_windows: fps must be positive, got {fps}")
    if mel.shape[1] < MEL_STEP:
        mel = np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])), constant_values=-MAX_ABS)
    starts = _window_starts(mel.shape[1], fps, n_frames)  # (N,)
    cols = starts[:, None] + np.arange(MEL_STEP)[None, :]  # (N, 16)
    return np.ascontiguousarray(mel[:, cols].transpose(1, 0, 2)[:, None], dtype=np.float32)


# -- MuseTalk 1.5: Whisper-tiny encoder states per video frame (as its audio_processor.py cuts them)

WHISPER_SEGMENT = 30 * SAMPLE_RATE  # samples per Whisper input (the encoder takes 30 s, padded)
WHISPER_FPS = 50  # encoder states per second
WHISPER_WINDOW = 10  # states per video frame: ±2 frames of 25 fps around it
WHISPER_PAD_LEFT = 2  # video frames of zero states before the audio, as the public pipeline pads


def musetalk_log_mel(wav: np.ndarray, features: Any) -> list[np.ndarray]:
    """16 kHz float32 audio → Whisper's (1, 80, 3000) log-mel input for each 30 s of it
    (the last padded), through ``features`` (transformers' WhisperFeatureExtractor)."""
    return [
        whisper_log_mel(wav[s : s + WHISPER_SEGMENT], features)
        for s in range(0, max(1, len(wav)), WHISPER_SEGMENT)
    ]


def whisper_log_mel(segment: np.ndarray, features: Any) -> np.ndarray:
    """Up to 30 s of 16 kHz float32 audio → (1, 80, 3000) float32 log-mel, padded to 30 s."""
    return np.asarray(features(segment, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features, np.float32)


def musetalk_window_starts(frames: np.ndarray, fps: float | Fraction) -> np.ndarray:
    """Output frame indices (n,) → (n,) int64: the encoder state each frame's window of
    ``WHISPER_WINDOW`` starts at (negative before the audio's start: zeros there)."""
    step = WHISPER_FPS / float(fps)
    before = int(np.floor(step)) * WHISPER_PAD_LEFT  # MuseTalk pads floor(50 / fps) per video frame
    return np.floor(np.asarray(frames) * step).astype(np.int64) - before


def musetalk_gather(states: np.ndarray, starts: np.ndarray, stop: int) -> np.ndarray:
    """(S, 5, 384) stacked encoder states, window starts (n,) → (n, 50, 384) float32: the
    10 states from each start, time-major (token = state × 5 + layer); states before 0
    or from ``stop`` on (past the audio's end) are zeros."""
    index = starts[:, None] + np.arange(WHISPER_WINDOW)  # (n, 10)
    inside = (index >= 0) & (index < min(stop, len(states)))
    windows = np.where(inside[..., None, None], states[np.clip(index, 0, len(states) - 1)], 0.0)  # (n, 10, 5, 384)
    return np.ascontiguousarray(windows.reshape(len(starts), -1, states.shape[2]), dtype=np.float32)


def musetalk_windows(states: np.ndarray, samples: int, fps: float | Fraction, n_frames: int) -> np.ndarray:
    """(S, 5, 384) stacked encoder states of the whole audio (S ≥ its length at 50 a second)
    → (n_frames, 50, 384): per video frame ``i`` the 10 states from ``floor(i·50/fps)`` of
    the sequence padded with 2·2 zero states before and zeros after, time-major (token =
    state × 5 + layer), as MuseTalk's ``get_whisper_chunk`` cuts them.

    One difference, on purpose: MuseTalk cuts the audio to whole seconds (a 10.5 s clip
    gets 10 s of frames); here every frame of the audio has its window, from the audio's
    real length, so frames inside the whole seconds are the same except the last two or so
    (which see real sound where MuseTalk's padding is silence)."""
    length = int(samples / SAMPLE_RATE * WHISPER_FPS)
    return musetalk_gather(states, musetalk_window_starts(np.arange(n_frames), fps), length)


def musetalk_audio(wav: np.ndarray, fps: float | Fraction, models: Any, n_frames: int | None = None) -> np.ndarray:
    """16 kHz float32 audio → (T, 50, 384) float32 MuseTalk audio features (before the
    position code), T = ``n_frames`` or the frames the audio lasts at ``fps``. ``models``:
    ``heygem_ray.models.musetalk.load`` (its Whisper encoder and feature extractor)."""
    import torch

    with torch.inference_mode():
        states = [
            torch.stack(models.whisper(torch.from_numpy(mel), output_hidden_states=True).hidden_states, dim=2)[0]
            for mel in musetalk_log_mel(wav, models.features)
        ]
    stacked = torch.cat(states).numpy()  # (1500 per segment, 5, 384)
    count = int(len(wav) * float(fps) // SAMPLE_RATE) if n_frames is None else n_frames
    return musetalk_windows(stacked, len(wav), fps, count)
