"""Compose and the frame store at 1080p: this checkout against another, in one run.

    git archive a6b079b | tar -x -C /tmp/before      # the code before (no git metadata needed)
    .venv/bin/python bench/bench_compose.py --before /tmp/before [--seconds 8] [--repeat 2]

One lecture-like 1920×1080 clip (tests/helpers/footage.py: a 160 px face on a busy slide,
panning) in three versions: as it comes (untagged: BT.601, and noiseless: a flat synthetic
slide), tagged BT.709, and camera-like (temporal sensor noise added, then encoded at
8 Mbit/s as a camera or phone would, tagged BT.709). Each is analysed and composed by each
checkout's ``heygem_ray`` in a child process run in that checkout, the two interleaved
``--repeat`` times (the median kept):

* **analysis**: ``analyze`` into a fresh cache (decode, face tracking, the frame store,
  the crops), in seconds per second of reference and CPU ms per frame, and the frame
  store's bytes per frame;
* **compose**: what ``job/compose.py`` does for each frame, without the model: read the
  reference frame from the template, paste a generated crop (the template's crop of that
  frame, brightened, through the warp pack's mask) into its box, hand it to the encoder;
  the CPU ms per frame of each part in this process (store read, paste, the writer's
  pipe) and of ffmpeg's (the encoder runs beside it), the wall ms per frame, and the
  MP4's size. The checkout after is measured at several ``--preset`` values;
* **decode**: ffmpeg's CPU ms per frame to decode the clip to BGR (before) and to I420
  (after), the share of analysis that is not ours;
* **encode**: the encoder alone at each preset on the clip's decoded frames: CPU ms per
  frame, kB/s, PSNR and SSIM against those frames.

CPU ms per frame is the figure to compare on a shared machine (wall time waits for the
other tenants); both are recorded. Writes bench/results/compose-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from heygem_ray import media  # noqa: E402
from heygem_ray.media import encoders  # noqa: E402
from tests.helpers.footage import lecture_clip  # noqa: E402
from tests.helpers.media import make_tone  # noqa: E402

# Runs in the checkout measured (cwd), so it imports that checkout's heygem_ray; it works
# with the BGR template (read_frames, paste, BGR writer) and with the I420 one, in
# ``analyze`` or in the ``template`` package.
_CHILD = """
import json, resource, shutil, sys, tempfile, time
from fractions import Fraction
from pathlib import Path
import numpy as np
from heygem_ray import geometry, media
from heygem_ray.analyze import analyze
try:
    from heygem_ray.template.files import Template
except ImportError:  # a checkout from before the template package
    from heygem_ray.analyze import Template
from heygem_ray.config import DetectorConfig
from heygem_ray.packs import get_pack

clip, audio, presets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
pack = get_pack("warp")
cache = Path(tempfile.mkdtemp())
i420 = hasattr(Template, "read_i420")

def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime

cpu0, kids0, t0 = time.process_time(), children_cpu(), time.perf_counter()
template, _ = analyze(clip, pack.geometry, DetectorConfig(), cache)
result = {"analysis": {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0 + children_cpu() - kids0,
                       "frames": template.frames, "store_bytes": (template.root / "frames.bin").stat().st_size}}
index = np.arange(template.frames)
crops = np.clip(template.crops(index).astype(np.int16) + 20, 0, 255).astype(np.uint8)  # what a model would return
base = template.crops(index) if pack.paste_mode == "residual" else [None] * template.frames
read_frames = template.read_i420 if i420 else template.read_frames
paste = geometry.paste_i420 if i420 else geometry.paste
extra = {"pixel_format": "yuv420p"} if i420 else {}
for preset in presets:
    out = cache / f"{preset}.mp4"
    parts = {"read": 0.0, "paste": 0.0, "write": 0.0}
    cpu0, kids0, t0 = time.process_time(), children_cpu(), time.perf_counter()
    with media.VideoWriter(out, width=template.width, height=template.height, fps=template.fps, audio=audio,
                           duration=template.frames / float(template.fps), preset=preset, **extra) as writer:
        frames = read_frames(index)
        for i in index:
            t = time.process_time()
            frame = next(frames)
            parts["read"] += time.process_time() - t
            t = time.process_time()
            paste(frame, crops[i], template.boxes[i], pack.paste_mask, base[i])
            parts["paste"] += time.process_time() - t
            t = time.process_time()
            writer.write(frame)
            parts["write"] += time.process_time() - t
    wall, own = time.perf_counter() - t0, time.process_time() - cpu0
    result[preset] = {"wall_s": wall, "cpu_s": own, "encoder_cpu_s": children_cpu() - kids0,
                      "bytes": out.stat().st_size, **{k + "_s": v for k, v in parts.items()}}
shutil.rmtree(cache)
print("RESULT " + json.dumps(result))
"""


def measure(repo: Path, clip: Path, audio: Path, presets: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(clip), str(audio), ",".join(presets)], capture_output=True,
                          text=True, cwd=repo, timeout=1800)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{repo}: exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def decode_cpu_ms(clip: Path, pixel_format: str) -> float:
    """ffmpeg's CPU ms per frame to decode ``clip`` into frames of ``pixel_format`` (this checkout)."""
    before, frames = resource.getrusage(resource.RUSAGE_CHILDREN), 0
    for _ in media.iter_frames(media.probe_video(clip), pixel_format=pixel_format):  # type: ignore[arg-type]
        frames += 1
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3 / frames


def encode_rows(clip: Path, colour: str, presets: list[str], tmp: Path) -> list[dict]:
    """The encoder alone, as compose drives it (this checkout's options, CRF 18) on the
    clip's own decoded frames: its CPU ms per frame, the MP4's size, and its PSNR and SSIM
    against those frames (what each preset gives up for its speed)."""
    info = media.probe_video(clip)
    raw = tmp / "frames.yuv"
    frames = 0
    with open(raw, "wb") as out:
        for frame in media.iter_frames(info, pixel_format="yuv420p"):
            out.write(frame.data)
            frames += 1
    source = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{info.width}x{info.height}", "-r", str(info.fps),
              "-i", str(raw)]  # fmt: skip
    results = []
    for preset in presets:
        mp4 = tmp / f"encode-{preset}.mp4"
        options = record.ffmpeg_args(encoders.video_codec_options("libx264", preset, 18))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", *source, *options, str(mp4)], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        said = subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-i", str(mp4), *source, "-lavfi",
                               "[0:v][1:v]psnr;[0:v][1:v]ssim", "-f", "null", "-"],
                              capture_output=True, text=True, check=True).stderr  # fmt: skip
        psnr = float(re.search(r"PSNR .*average:([\d.]+)", said).group(1))  # type: ignore[union-attr]
        ssim = float(re.search(r"SSIM .*All:([\d.]+)", said).group(1))  # type: ignore[union-attr]
        results.append({"step": "encode", "colour": colour, "preset": preset, "frames": frames,
                        "encoder_cpu_ms_per_frame": round(cpu * 1e3 / frames, 2),
                        "mp4_kb_per_s": round(mp4.stat().st_size / 1024 / (frames / float(info.fps)), 1),
                        "psnr_db": round(psnr, 2), "ssim": round(ssim, 5)})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    raw.unlink()
    return results


def _median(runs: list[dict], *keys: str) -> float:
    values = []
    for run in runs:
        for key in keys[:-1]:
            run = run[key]
        values.append(run[keys[-1]])
    return statistics.median(values)


# The clip's colour tags: as the test footage comes (untagged, so BT.601 to every reader),
# and retagged BT.709 limited range (as HD from cameras, phones and screen recorders
# usually is), which the I420 reader passes through unconverted.
TAGS = {
    "untagged": None,
    "bt709": "matrix_coefficients=1:colour_primaries=1:transfer_characteristics=1:video_full_range_flag=0",
}


def tagged(clip: Path, tag: str | None) -> Path:
    """``clip``, its H.264 stream's colour description rewritten (no re-encoding) to ``tag``."""
    if tag is None:
        return clip
    out = clip.with_name(f"{clip.stem}-tagged.mp4")
    subprocess.run([media.ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip), "-c", "copy", "-bsf:v",
                    f"h264_metadata={tag}", str(out)], check=True)  # fmt: skip
    return out


def camera_like(clip: Path) -> Path:
    """``clip`` as a camera would record it (``record.camera_like``: noise, 8 Mbit/s)."""
    return record.camera_like(clip, clip.with_name(f"{clip.stem}-camera.mp4"))


# The clips: ``tagged``'s tag, or "camera" for ``camera_like``.
CLIPS = {"untagged": None, "bt709": TAGS["bt709"], "camera": "camera"}


def rows(
    colour: str, runs: dict[str, list[dict]], decode: dict[str, float], presets: list[str], seconds: float
) -> list[dict]:
    """The results of one clip: medians per checkout, and after's ratios to before."""
    frames = runs["after"][0]["analysis"]["frames"]
    common = {"colour": colour, "frames": frames}
    results: list[dict] = [{"step": "decode", **common, **{f"{k}_cpu_ms_per_frame": v for k, v in decode.items()}}]
    for label, got in runs.items():
        results.append({
            "step": "analysis", "code": label, **common,
            "wall_s_per_ref_s": round(_median(got, "analysis", "wall_s") / seconds, 3),
            "cpu_ms_per_frame": round(_median(got, "analysis", "cpu_s") * 1e3 / frames, 2),
            "store_kb_per_frame": round(_median(got, "analysis", "store_bytes") / 1024 / frames, 1),
        })  # fmt: skip
        for preset in presets if label == "after" else ["veryfast"]:
            row = {"step": "compose", "code": label, "preset": preset, **common}
            row["wall_ms_per_frame"] = round(_median(got, preset, "wall_s") * 1e3 / frames, 2)
            for part in ("read", "paste", "write"):  # CPU of this process
                row[f"{part}_cpu_ms_per_frame"] = round(_median(got, preset, f"{part}_s") * 1e3 / frames, 2)
            own, enc = _median(got, preset, "cpu_s"), _median(got, preset, "encoder_cpu_s")
            row["cpu_ms_per_frame"] = round(own * 1e3 / frames, 2)
            row["encoder_cpu_ms_per_frame"] = round(enc * 1e3 / frames, 2)
            row["total_cpu_ms_per_frame"] = round((own + enc) * 1e3 / frames, 2)
            row["mp4_kb_per_s"] = round(_median(got, preset, "bytes") / 1024 / seconds, 1)
            results.append(row)
    before = {(r["step"], r.get("preset")): r for r in results if r.get("code") == "before"}
    for row in results:
        if row.get("code") == "after":
            ref = before[(row["step"], "veryfast" if row["step"] == "compose" else None)]
            row["cpu_x_cheaper"] = round(ref["cpu_ms_per_frame"] / row["cpu_ms_per_frame"], 2)
            if row["step"] == "compose":
                row["total_cpu_x_cheaper"] = round(ref["total_cpu_ms_per_frame"] / row["total_cpu_ms_per_frame"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the 1080p reference")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each checkout, interleaved")
    parser.add_argument("--presets", default="lean,veryfast,ultrafast", help="x264 presets for the checkout after")
    parser.add_argument("--clips", default=",".join(CLIPS), help=f"which versions of the clip: {', '.join(CLIPS)}")
    args = parser.parse_args()
    presets = args.presets.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        footage = lecture_clip(Path(tmp) / "ref.mp4", size=(1920, 1080), face=160, seconds=args.seconds).path
        audio = make_tone(Path(tmp) / "speech.wav", seconds=args.seconds)
        for colour in args.clips.split(","):
            tag = CLIPS[colour]
            clip = camera_like(footage) if tag == "camera" else tagged(footage, tag)
            decode = {fmt: round(decode_cpu_ms(clip, fmt), 2) for fmt in ("bgr24", "yuv420p")}
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.repeat):
                runs["before"].append(measure(args.before, clip, audio, ["veryfast"]))
                runs["after"].append(measure(record.REPO, clip, audio, presets))
                print(json.dumps({"colour": colour, **{k: v[-1] for k, v in runs.items()}}), flush=True)
            results += rows(colour, runs, decode, presets, args.seconds)
            results += encode_rows(clip, colour, presets, Path(tmp))
    for row in results:
        print(json.dumps(row))
    dest = record.write(
        "compose",
        results,
        size="1920x1080",
        seconds=args.seconds,
        repeat=args.repeat,
        nvenc=encoders.nvenc_missing() or "available",
        before=str(args.before),
    )
    print(f"written to {dest}")


if __name__ == "__main__":
    main()
