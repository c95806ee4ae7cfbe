"""Video and audio in and out: PyAV reads what a file holds, an ffmpeg binary moves it.

One module per reason to change:

* ``ffmpeg``: the binary (:func:`ffmpeg_exe`) and a running ffmpeg on pipes;
* ``container``: opening a file with PyAV and the checks every reader makes first;
* ``limits``: the ``too_large`` errors of ``config.InputLimits``;
* ``headers`` / ``isobmff``: sizes and frame counts read from a PNG/JPEG header or an MP4's
  boxes without FFmpeg, before a decoder or demuxer would allocate for them;
* ``video_probe`` / ``audio_probe``: what a reference or an audio file holds
  (:func:`probe_video`, :func:`indexed_frames`, :func:`probe_audio`, :func:`audio_tracks`);
* ``decode``: a reference as a stream of (H, W, 3) uint8 BGR or I420 frames at a constant rate,
  rotated upright, cropped to even width and height (:func:`iter_frames`); audio as 16 kHz
  mono float32, in memory or in a raw file (:func:`load_audio`, :func:`decode_audio`);
* ``yuv``: I420 frames (BT.709 limited range), as the template stores the reference and
  the encoder takes it, and the exact conversions of the regions that need BGR;
* ``decoders``: which decoder reads a reference (NVDEC where it works and takes the
  stream, else the CPU: :func:`pick_decoder`);
* ``encoders``: which H.264 encoder a job uses (h264_nvenc where it works, else libx264:
  :func:`pick_encoder`);
* ``encode``: BGR or I420 frames plus an audio track into an H.264 + AAC MP4 (:class:`VideoWriter`).

Frames and audio are streamed through pipes, so memory stays flat however long the
media are (except :func:`read_video`, a helper for short clips). Files are opened with
the ``file:`` protocol, so a name containing ``:`` is never taken for a URL.

Errors: a missing file is ``InputError`` kind ``missing_file``; a file ffmpeg cannot read,
or one cut short (its index lists data past its end), ``unreadable_media``; a file without
the stream asked for ``no_video_stream`` / ``no_audio_stream``; audio that decodes to no
samples ``empty_audio``; a failed encode ``EngineError`` kind ``encode``.
"""

from heygem_ray.media.audio_probe import AudioInfo, audio_tracks, probe_audio
from heygem_ray.media.container import require_file
from heygem_ray.media.decode import decode_audio, iter_frames, load_audio, read_video
from heygem_ray.media.decoders import Decoder, pick_decoder
from heygem_ray.media.encode import VideoWriter
from heygem_ray.media.encoders import Encoder, pick_encoder
from heygem_ray.media.ffmpeg import ffmpeg_exe
from heygem_ray.media.limits import check_reference_frames, check_reference_size
from heygem_ray.media.video_probe import IMAGE_FPS, VideoInfo, indexed_frames, probe_video

__all__ = [
    "IMAGE_FPS",
    "AudioInfo",
    "audio_tracks",
    "Decoder",
    "Encoder",
    "VideoInfo",
    "VideoWriter",
    "check_reference_frames",
    "check_reference_size",
    "decode_audio",
    "ffmpeg_exe",
    "indexed_frames",
    "iter_frames",
    "load_audio",
    "pick_decoder",
    "pick_encoder",
    "probe_audio",
    "probe_video",
    "read_video",
    "require_file",
]
