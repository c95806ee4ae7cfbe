"""What an audio file holds: its first audio stream's layout, rate and exact length."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.audio.stream
import av.container
import av.stream

from heygem_ray.errors import InputError
from heygem_ray.media.container import contents, opened, reason, require_file
from heygem_ray.media.limits import clock, too_long


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a file: its layout as the stream declares it, its length
    measured by decoding it."""

    path: Path
    duration: float  # seconds as played: decoded samples / sample_rate, after a late start (late_start)
    sample_rate: int  # Hz, as decoded
    channels: int
    layout: str = ""  # FFmpeg's name for the channel layout: "mono", "stereo", "5.1(side)", "3 channels"


# Past any recording's sample rate (PCM reaches 768 kHz; FFmpeg gives DSD512's as 2.8 MHz,
# DSD1024's as 5.6 MHz): a header that declares more is damaged, and resampling from it
# asked for memory no node has ("Cannot allocate memory": told as out of memory, whose
# fixes do nothing for it).
MAX_SAMPLE_RATE = 6_000_000


@contextlib.contextmanager
def audio_stream(
    path: Path, max_seconds: float | None = None
) -> Iterator[tuple[av.container.InputContainer, av.audio.stream.AudioStream]]:
    """The file opened, and its first audio stream, after the checks every audio reader
    makes; one whose header declares more than ``max_seconds`` is ``too_large``."""
    if path.stat().st_size == 0:
        raise InputError(
            f"audio {path} is an empty file (0 bytes); re-export or re-download it", kind="empty_audio"
        )

    def declared(container: av.container.InputContainer) -> None:
        """Refuse a length over the limit that the header declares, before its index is read."""
        if max_seconds is None or not container.streams.audio:
            return
        seconds = _declared_seconds(container, container.streams.audio[0])
        if seconds > max_seconds:
            raise too_long(path, f"lasts {clock(seconds)} (as its header declares)", max_seconds)

    with opened(path, "audio", check=declared) as container:
        if not container.streams.audio:
            raise InputError(
                f"audio {path} has no audio stream (it holds: {contents(container)}); "
                "give a file with a sound track (wav, mp3, m4a, or a video with sound)",
                kind="no_audio_stream",
            )
        stream = container.streams.audio[0]
        if stream.codec_context is None or stream.codec_context.channels < 1:
            raise InputError(
                f"audio {path}: its audio stream is in a format FFmpeg {av.ffmpeg_version_info} cannot decode "
                "(or declares no channels); re-export it (e.g. as WAV or MP3)",
                kind="unreadable_media",
            )
        if (rate := stream.codec_context.sample_rate or 0) > MAX_SAMPLE_RATE:  # (0: some codecs say at decoding)
            raise InputError(
                f"audio {path} declares a sample rate of {rate} Hz, which no recording has (its header is "
                "damaged); re-export it (e.g. as WAV or MP3)",
                kind="unreadable_media",
            )
        yield container, stream


def _declared_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """The longest length the header declares for ``stream``: the container's, the
    stream's, or its index's last entry (0.0 when none is given)."""
    seconds = [0.0]
    if container.duration is not None:
        seconds.append(container.duration / av.time_base)  # µs
    if stream.time_base is not None:
        if stream.duration is not None:
            seconds.append(float(stream.duration * stream.time_base))
        entries = stream.index_entries
        if len(entries):  # sorted by time: the last entry is the latest
            seconds.append(float(entries[len(entries) - 1].timestamp * stream.time_base))
    return max(seconds)


def audio_tracks(path: str | os.PathLike[str]) -> int:
    """How many audio streams the file holds (the first is the one read)."""
    with audio_stream(require_file(path, "audio")) as (container, _):
        return len(container.streams.audio)


def empty_audio(path: Path) -> InputError:
    return InputError(
        f"audio {path} decodes to no samples (zero length); re-export it with the intended sound",
        kind="empty_audio",
    )


def probe_audio(path: str | os.PathLike[str]) -> AudioInfo:
    """Channels and layout of the first audio stream as the stream declares them; its
    sample rate and exact duration by decoding it in this process (a header may say
    anything about the length). A packet the decoder rejects is skipped, as ffmpeg skips it.
    """
    p = require_file(path, "audio")
    samples, sample_rate = 0, 0
    rejected: av.FFmpegError | None = None
    with audio_stream(p) as (container, stream):
        layout = stream.codec_context.layout
        late = late_start(container, stream)
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    rejected = rejected or exc
                    continue
                for frame in frames:
                    samples += frame.samples
                    sample_rate = sample_rate or frame.sample_rate
        except av.FFmpegError as exc:
            raise InputError(
                f"audio {p} is damaged: reading it failed ({reason(exc)}); re-export it (e.g. as WAV or MP3)",
                kind="unreadable_media",
            ) from exc
    if samples == 0 and rejected is not None:
        raise InputError(
            f"audio {p} could not be decoded ({reason(rejected)}); re-export it (e.g. as WAV or MP3)",
            kind="unreadable_media",
        )
    if samples == 0:
        raise empty_audio(p)
    return AudioInfo(
        path=p, duration=late + samples / sample_rate, sample_rate=sample_rate, channels=layout.nb_channels,
        layout=layout.name,
    )  # fmt: skip


def late_start(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """Seconds ``stream`` starts after the file does (a recording whose sound track starts
    after its picture), which a player plays as silence and ``decode_audio`` reads as such."""
    if stream.start_time is None or stream.time_base is None or container.start_time is None:
        return 0.0
    return max(0.0, float(stream.start_time * stream.time_base) - container.start_time / av.time_base)
