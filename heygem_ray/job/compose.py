"""Motion, render and compose of one job: chunks go to the model workers ahead of the one
being composed, come back as generated crops, are pasted into the reference's frames
(read here from the template's frame store, never sent anywhere) and encoded.

The frames stay I420 from the store to the encoder: only the pasted region is converted
(``geometry.paste_i420``), so compose costs the store's read, the paste and the encoder."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from heygem_ray import media, storage
from heygem_ray.errors import InternalError
from heygem_ray.geometry import paste_i420
from heygem_ray.job.context import JobContext
from heygem_ray.job.service import LOOKAHEAD, ChunkFuture
from heygem_ray.worker import ChunkOutput, WorkerInfo

# The MP4 being written, beside its output (the driver's resume deletes those of lost attempts).
PARTIAL_SUFFIX = ".part.mp4"


@dataclass(frozen=True)
class Composed:
    worker: WorkerInfo  # the worker that rendered the last chunk
    encoder: media.Encoder  # the H.264 encoder that wrote the MP4


def render_and_compose(ctx: JobContext) -> Composed:
    """Send ``ctx``'s chunks to the workers ahead, compose what comes back in order into a
    temporary MP4, then publish it: renamed into place beside a local output, uploaded
    whole to one in a bucket."""
    cfg, template, timeline, pack, models, steps = ctx.cfg, ctx.template, ctx.timeline, ctx.pack, ctx.models, ctx.clock
    steps.current = "compose"
    encoder = media.pick_encoder(cfg.encoder)
    partial = storage.staging_file(ctx.output, ctx.scratch, PARTIAL_SUFFIX)
    size = cfg.chunk_frames
    chunks = [range(s, min(s + size, timeline.frames)) for s in range(0, timeline.frames, size)]
    pending: deque[tuple[range, np.ndarray, ChunkFuture]] = deque()
    last: ChunkOutput | None = None
    try:
        with media.VideoWriter(
            partial,
            width=template.width,
            height=template.height,
            fps=template.fps,
            audio=ctx.audio,
            duration=timeline.duration,
            crf=cfg.crf,
            preset=cfg.preset,
            pixel_format="yuv420p",
            encoder=encoder,
        ) as writer:

            def compose_next() -> ChunkOutput:
                sl, sent, future = pending.popleft()
                steps.current = "render"
                chunk = future.result()
                steps.add("motion", chunk.motion_s)
                steps.add("render", chunk.render_s)
                ref = timeline.ref_index[sl.start : sl.stop]
                with steps("compose"):
                    frames = template.read_i420(ref)
                    bases = sent if pack.paste_mode == "residual" else [None] * len(ref)
                    here = template.present[ref]
                    for frame, crop, base, box, face in zip(
                        frames, chunk.crops, bases, template.boxes[ref], here, strict=True
                    ):
                        if face:  # else the face is gone: the frame stays as it is
                            paste_i420(frame, crop, box, pack.paste_mask, base)
                        writer.write(frame)
                ctx.on_frames(len(ref))
                return chunk

            for sl in chunks:
                with steps("features"):
                    chunk_features = ctx.features(sl)
                steps.current = "render"
                inputs = ctx.given(timeline.ref_index[sl.start : sl.stop])
                pending.append((sl, inputs, models.submit(chunk_features, inputs)))
                if len(pending) > max(LOOKAHEAD, models.workers):
                    last = compose_next()
            while pending:
                last = compose_next()
            steps.current = "compose"
        storage.publish(partial, ctx.output)
    finally:
        partial.unlink(missing_ok=True)
    if last is None:
        raise InternalError("a timeline without frames reached compose")
    return Composed(last.worker, encoder)