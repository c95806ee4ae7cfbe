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


# A file that decodes to this much less than its header declares was cut short. (Encoders'
# priming and padding differ from the declared length by a few milliseconds.)
CUT_SHORT_S = 0.5


@dataclass(frozen=True)
class Declared:
    """What an audio file's header declares of its length, where it says so exactly: its
    seconds (an MP3's Xing, Info or VBRI frame counts its frames), or the share of its data
    the file holds (a WAV's data chunk, declared to end past the file's end)."""

    seconds: float | None = None
    held: float = 1.0

    def seconds_for(self, heard: float) -> float:
        """The length declared, for a file that decodes to ``heard`` seconds."""
        return self.seconds if self.seconds is not None else heard / self.held


def declared_length(path: Path, container: av.container.InputContainer, stream: av.stream.Stream) -> Declared | None:
    """What the header of ``path`` declares of its first audio stream's length, where it
    says so exactly; None where it says nothing exact: an MP3 without a frame count (FFmpeg
    guesses its length from its first frame's bit rate), an Ogg file (its length is its
    last page's), a FLAC (a copy cut with ``-c copy`` keeps the whole's STREAMINFO), a WAV
    written to a pipe or by a recorder that never finished it (sizes it could not know). An
    MP4's index is checked against the file's size as it is opened (``container.opened``)."""
    demuxer = container.format.name
    if demuxer == "wav":
        held = _wav_held(path)
        return None if held is None else Declared(held=held)
    if demuxer != "mp3" or stream.duration is None or stream.time_base is None or not _mp3_counts_frames(path):
        return None
    seconds = float(stream.duration * stream.time_base)
    return Declared(seconds=seconds) if seconds > 0 else None


# The sizes a WAV written to a pipe is given, where its writer cannot go back to fill in
# the real ones: 0, 0xFFFFFFFF (FFmpeg's, and RF64's), 0x7FFFFFFF or just under it
# (espeak-ng's 0x7FFFF000). A real WAV that large holds over 6 hours of 48 kHz stereo.
_PLACEHOLDER_SIZE = 0x7FFF0000


def _wav_held(path: Path) -> float | None:
    """The share of a RIFF WAV's data chunk that the file holds, where the chunk is
    declared to end past the file's end; None where it ends within it, or its size is one
    a writer puts where it cannot know it (``_PLACEHOLDER_SIZE``, 0), in the data chunk or
    the RIFF header. (Bytes, not the ``fmt `` chunk's byte rate: writers put a nominal one.)"""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        riff, whole, wave = f.read(4), f.read(4), f.read(4)
        if riff != b"RIFF" or wave != b"WAVE" or int.from_bytes(whole, "little") >= _PLACEHOLDER_SIZE:
            return None
        for _ in range(64):  # the data chunk follows a few others at most
            head = f.read(8)
            if len(head) != 8:
                return None
            name, size = head[:4], int.from_bytes(head[4:], "little")
            if name == b"data":
                there = file_size - f.tell()
                return there / size if 0 < there < size < _PLACEHOLDER_SIZE else None
            f.seek(size + size % 2, os.SEEK_CUR)
    return None


def _mp3_counts_frames(path: Path) -> bool:
    """Whether an MP3's first frame is a Xing or Info header that counts its frames (its
    flags say so: LAME's and most encoders'), or a VBRI one (which always does): its length
    is then exact."""
    with open(path, "rb") as f:
        start = f.read(10)
        if start[:3] == b"ID3" and len(start) == 10:  # an ID3v2 tag first: its size is "syncsafe", 7 bits a byte
            size = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(start[6:10]))
            f.seek(size + (10 if start[5] & 0x10 else 0))  # (a footer follows a tag that says so)
        else:
            f.seek(0)
        head = f.read(4096)
    sync = next((i for i in range(len(head) - 1) if head[i] == 0xFF and head[i + 1] & 0xE0 == 0xE0), None)
    if sync is None:
        return False
    frame = head[sync : sync + 200]
    if b"VBRI" in frame:
        return True
    at = max(frame.find(b"Xing"), frame.find(b"Info"))
    return at >= 0 and bool(int.from_bytes(frame[at + 4 : at + 8], "big") & 1)  # flag 1: the frame count is there


def cut_short(path: Path, heard: float, promised: float) -> InputError:
    """The ``unreadable_media`` error of audio that decodes to ``heard`` seconds where its
    header declares ``promised``."""
    return InputError(
        f"audio {path} is truncated: it decodes to {heard:.1f} s where its header declares {promised:.1f} s (a copy "
        "or download that stopped early); copy or export it again in full",
        kind="unreadable_media",
    )


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
