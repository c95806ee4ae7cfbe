"""Motion, render and compose of one job: chunks go to the model workers ahead of the one
being composed, come back as generated crops, are pasted into the reference's frames
(decoded here from the template's frame store, never sent anywhere) and encoded."""

from __future__ import annotations

from collections import deque

import numpy as np

from heygem_ray import media, storage
from heygem_ray.errors import InternalError
from heygem_ray.geometry import paste
from heygem_ray.job.context import JobContext
from heygem_ray.job.service import LOOKAHEAD, ChunkFuture
from heygem_ray.worker import ChunkOutput, WorkerInfo

# The MP4 being written, beside its output (the driver's resume deletes those of lost attempts).
PARTIAL_SUFFIX = ".part.mp4"


def render_and_compose(ctx: JobContext) -> WorkerInfo:
    """Send ``ctx``'s chunks to the workers ahead, compose what comes back in order into a
    temporary MP4, then publish it: renamed into place beside a local output, uploaded
    whole to one in a bucket. Returns the description of the worker that rendered the
    last chunk."""
    cfg, template, timeline, pack, models, steps = ctx.cfg, ctx.template, ctx.timeline, ctx.pack, ctx.models, ctx.clock
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
        ) as writer:

            def compose_next() -> ChunkOutput:
                sl, sent, future = pending.popleft()
                steps.current = "render"
                chunk = future.result()
                steps.add("motion", chunk.motion_s)
                steps.add("render", chunk.render_s)
                ref = timeline.ref_index[sl.start : sl.stop]
                with steps("compose"):
                    frames = template.read_frames(ref)
                    bases = sent if pack.paste_mode == "residual" else [None] * len(ref)
                    here = template.present[ref]
                    for frame, crop, base, box, face in zip(
                        frames, chunk.crops, bases, template.boxes[ref], here, strict=True
                    ):
                        if face:  # else the face is gone: the frame stays as it is
                            paste(frame, crop, box, pack.paste_mask, base)
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
    return last.worker