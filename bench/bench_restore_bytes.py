"""Benchmark: what crosses the object store per frame for each pack, without and with
face restoration (``--restore gfpgan``), in bytes.

    .venv/bin/python bench/bench_restore_bytes.py [--frames 8] [--scales 1,3]

Renders the bundled presenter (examples/presenter.mp4, 384 × 384; and scaled up by each of
``--scales``, so the face box grows as on a 1080p lecture) with each pack, once without and
once with restoration, through ``render_job`` and an in-process model service that
serializes every chunk's call and answer as Ray does (pickle protocol 5, numpy buffers
included) and counts the bytes. Nothing is timed. The restoration runs the seeded narrow
GFPGAN (tests/helpers/gfpgan_ckpt.py): the bytes do not depend on the network's width.
Wav2Lip and MuseTalk run seeded small checkpoints in the public formats.

Per frame: ``sent`` is what a chunk's call carries (audio features, the pack's crops or
reference-stage outputs, and with restoration the aligned reference tiles as JPEG, the crop
boxes and the similarities), ``returned`` what its answer carries (the generated crops,
and with restoration the restored faces over the crop boxes, R × R, as JPEG), ``frame``
the bytes of one decoded reference frame, which never travels. Writes
bench/results/restore-bytes-<host>.json and prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers (the seeded checkpoints), bench.*

from bench.record import write  # noqa: E402
from heygem_ray import media  # noqa: E402
from heygem_ray.config import RenderConfig  # noqa: E402
from heygem_ray.job import InProcessService, render_job  # noqa: E402
from heygem_ray.job.service import ChunkFuture  # noqa: E402
from heygem_ray.manifest import Job  # noqa: E402
from heygem_ray.packs import Features  # noqa: E402
from heygem_ray.restore.inputs import RestoreInputs  # noqa: E402
from heygem_ray.worker import ModelWorker  # noqa: E402
from tests.helpers.gfpgan_ckpt import write_checkpoint  # noqa: E402
from tests.helpers.musetalk_ckpt import write_models  # noqa: E402
from tests.helpers.wav2lip_ckpt import write_random_checkpoint  # noqa: E402

FPS = 25


def _bytes(obj: Any) -> int:
    """Bytes of ``obj`` serialized as Ray serializes a call's arguments and its answer."""
    return len(pickle.dumps(obj, protocol=5))


class _Counting(InProcessService):
    """The in-process service, counting each chunk's serialized call and answer."""

    def __init__(self, worker: ModelWorker):
        super().__init__(worker)
        self.frames = self.sent = self.returned = 0

    def submit(self, features: Features, given: np.ndarray, restore: RestoreInputs | None = None) -> ChunkFuture:
        self.frames += len(given)
        self.sent += _bytes((features, given, restore))
        done = super().submit(features, given, restore)
        self.returned += _bytes(done.result())
        return done


def _measure(pack: str, checkpoint: Path | None, restore: Path | None, video: Path, audio: Path,
             frames: int, work: Path) -> dict[str, Any]:
    extra: dict[str, Any] = {"restore": "gfpgan", "restore_checkpoint": restore} if restore else {}
    cfg = RenderConfig(pack=pack, checkpoint=checkpoint, chunk_frames=frames, batch_size=4, **extra)  # type: ignore[arg-type]
    service = _Counting(ModelWorker(cfg, engines_dir=work / "engines"))
    job = Job(row=1, job_id="bytes", audio=audio, video=video, output=work / f"{pack}-{bool(restore)}.mp4")
    result = render_job(job, cfg, work / "cache", service)
    if result.status != "ok":
        raise SystemExit(f"{pack}: {result.error}")
    return {"sent": service.sent / service.frames, "returned": service.returned / service.frames,
            "frames": service.frames}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8, help="frames rendered per measurement (one chunk)")
    ap.add_argument("--scales", default="1,3", help="the presenter's scale factors")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio = work / "speech.wav"
        subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-ss", "1.0", "-t", f"{args.frames / FPS}", "-i",
                        str(REPO / "examples" / "lesson1.wav"), str(audio)], check=True)  # fmt: skip
        weights = {"warp": None, "wav2lip": write_random_checkpoint(work / "wav2lip.pth", seed=3),
                   "musetalk": write_models(work / "musetalk" / "models", seed=0)}  # fmt: skip
        gfpgan = write_checkpoint(work / "gfpgan.pth")
        for scale in (int(s) for s in args.scales.split(",")):
            side = 384 * scale
            video = work / f"presenter-{side}.mp4"
            subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(REPO / "examples" / "presenter.mp4"),
                            "-vf", f"scale={side}:{side}", "-c:v", "libx264", "-crf", "12", str(video)], check=True)  # fmt: skip
            for pack, checkpoint in weights.items():
                plain = _measure(pack, checkpoint, None, video, audio, args.frames, work)
                restored = _measure(pack, checkpoint, gfpgan, video, audio, args.frames, work)
                row = {"pack": pack, "reference": f"{side}x{side}", "frame": side * side * 3,
                       "sent": round(plain["sent"]), "returned": round(plain["returned"]),
                       "sent_restore": round(restored["sent"]), "returned_restore": round(restored["returned"])}  # fmt: skip
                rows.append(row)
                print(row, flush=True)
    path = write("restore-bytes", rows)
    print(f"\nwrote {path}\n")
    print("| pack | reference | a frame (never sent) | sent / frame | returned / frame | sent with restore | "
          "returned with restore |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        kib = {k: f"{r[k] / 1024:.1f} KiB" for k in ("frame", "sent", "returned", "sent_restore", "returned_restore")}
        print(f"| {r['pack']} | {r['reference']} | {kib['frame']} | {kib['sent']} | {kib['returned']} | "
              f"{kib['sent_restore']} | {kib['returned_restore']} |")


if __name__ == "__main__":
    main()
