"""Motion, render and compose of one job: chunks go to the model workers ahead of the one
being composed, come back as generated crops (and, with ``--restore``, restored faces),
are pasted into the reference's frames (read here from the template's frame store, never
sent anywhere) and encoded.

The frames stay I420 from the store to the encoder: only the pasted region is converted
(``geometry.paste_i420``), so compose costs the store's read, the paste and the encoder."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from heygem_ray import media, storage
from heygem_ray.errors import InternalError
from heygem_ray.face.align import restored_layer
from heygem_ray.geometry import paste_i420
from heygem_ray.job.context import JobContext
from heygem_ray.job.service import LOOKAHEAD, ChunkFuture
from heygem_ray.restore.inputs import RestoreInputs, side_by_side
from heygem_ray.worker_io import ChunkOutput, WorkerInfo

# The MP4 being written, beside its output (the driver's resume deletes those of lost attempts).
PARTIAL_SUFFIX = ".part.mp4"


@dataclass(frozen=True)
class Composed:
    worker: WorkerInfo  # the worker that rendered the last chunk
    encoder: media.Encoder  # the H.264 encoder that wrote the MP4
    # With --restore: the face of one frame (the first with a face from the middle of the
    # video on) before and after restoration, side by side (restore.inputs.side_by_side).
    restore_sample: bytes | None = None


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
    pending: deque[tuple[range, np.ndarray, RestoreInputs | None, ChunkFuture]] = deque()
    last: ChunkOutput | None = None
    sample: bytes | None = None
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
                nonlocal sample
                sl, sent, restore, future = pending.popleft()
                steps.current = "render"
                chunk = future.result()
                steps.add("motion", chunk.motion_s)
                steps.add("render", chunk.render_s)
                if restore is not None:
                    steps.add("restore", chunk.restore_s)
                    if chunk.restored is None:
                        raise InternalError(f"{chunk.worker.node}: a chunk sent to be restored came back unrestored")
                ref = timeline.ref_index[sl.start : sl.stop]
                with steps("compose"):
                    frames = template.read_i420(ref)
                    bases = sent if pack.paste_mode == "residual" else [None] * len(ref)
                    here = template.present[ref]
                    for i, (frame, crop, base, box, face) in enumerate(
                        zip(frames, chunk.crops, bases, template.boxes[ref], here, strict=True)
                    ):
                        if face:  # else the face is gone: the frame stays as it is
                            paste_i420(frame, crop, box, pack.paste_mask, base)
                            if restore is not None and chunk.restored is not None:
                                unrestored = (media.yuv.to_bgr_frame(frame)
                                              if sample is None and sl.start + i >= sample_from else None)
                                restored = chunk.restored.image(i, (restore.size, restore.size),
                                                                "the restored face of frame")
                                layer, weight = restored_layer(restored, box, restore.matrices[i], pack.paste_mask,
                                                               cfg.restore_blend)
                                paste_i420(frame, layer, box, weight)
                                if unrestored is not None:
                                    sample = side_by_side(unrestored, media.yuv.to_bgr_frame(frame), box)
                        writer.write(frame)
                ctx.on_frames(len(ref))
                return chunk

            sample_from = timeline.frames // 2  # the report's sample: mid-video, where speech is likelier
            for sl in chunks:
                with steps("features"):
                    chunk_features = ctx.features(sl)
                steps.current = "render"
                ref = timeline.ref_index[sl.start : sl.stop]
                inputs = ctx.given(ref)
                restore = ctx.restore(ref) if ctx.restore is not None else None
                pending.append((sl, inputs, restore, models.submit(chunk_features, inputs, restore)))
                if len(pending) > max(LOOKAHEAD, models.workers):
                    last = compose_next()
            while pending:
                last = compose_next()
            # The encoder's tail (x264 still holds the frames of its lookahead: seconds at
            # 4K) and the publish (a rename, or an upload to a bucket) are compose too.
            with steps("compose"):
                writer.finish()
                storage.publish(partial, ctx.output)
    finally:
        partial.unlink(missing_ok=True)
    if last is None:
        raise InternalError("a timeline without frames reached compose")
    return Composed(last.worker, encoder, sample)
