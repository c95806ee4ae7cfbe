"""``heygem-ray preview`` on this machine: the bundled example, and a minute of 1080p.

Each measurement is a fresh Python process running ``preview`` (warp, the default 5 s
of the bundled lesson, an in-process worker) into a new output folder: once on an empty
template cache (a new presenter: the reference analysed, checked and rendered) and once
more on the cache it left (the same take again). Recorded: the preview's seconds, split
into analysing the reference into the template (what ``preview`` does first, timed
apart: ``analyze_s``) and the rest (checks, contact sheet, the render and the
side-by-side video: ``rest_s``), and the whole process's (imports included). The engine store is primed first,
once, outside the figures (first-time setup). ``--long S``: also a lecture-like 1080p
clip of S seconds (tests/helpers/footage.py; a 160-px face on a slide), cold only.

    .venv/bin/python bench/bench_preview.py [--long 60]

Writes bench/results/preview-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from tests.helpers.footage import lecture_clip  # noqa: E402

EXAMPLE = record.REPO / "examples" / "presenter.mp4"
_PREVIEW = """
import json, sys, time
from pathlib import Path
from heygem_ray.analyze import analyze
from heygem_ray.config import RenderConfig
from heygem_ray.packs import get_pack
from heygem_ray.preview import preview
reference, work, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = RenderConfig()
t0 = time.perf_counter()
analyze(reference, get_pack(cfg.pack).geometry, cfg.detector, work / "cache")  # what preview does first
t1 = time.perf_counter()
found = preview(reference, None, cfg, work / "cache", work / "engines", out)
t2 = time.perf_counter()
written = {p.suffix: p.stat().st_size for p in (found.sheet, found.video, found.report)}
print("RESULT " + json.dumps({"analyze": t1 - t0, "rest": t2 - t1, "verdict": found.verdict, "bytes": written}))
"""


def run(label: str, reference: Path, work: Path, out: Path) -> dict:
    got, wall = record.run_child(label, _PREVIEW, str(reference), str(work), str(out))
    row = {"case": label, "preview_s": round(got["analyze"] + got["rest"], 2), "analyze_s": round(got["analyze"], 2),
           "rest_s": round(got["rest"], 2), "process_s": round(wall, 2), "verdict": got["verdict"],
           "bytes": got["bytes"]}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", type=float, default=0.0, help="also a 1080p clip this many seconds long (0: none)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # First-time setup, not measured: the engine store, and the template of another take.
        prime = lecture_clip(work / "prime.mp4", size=(320, 240), face=80, seconds=1.0, corner="centre", motion="still")
        record.run_child("setup", _PREVIEW, str(prime.path), str(work), str(work / "prime-out"))
        results.append(run("bundled example, cold template cache", EXAMPLE, work, work / "a"))
        results.append(run("bundled example, warm template cache", EXAMPLE, work, work / "b"))
        if args.long > 0:
            clip = lecture_clip(work / "long.mp4", size=(1920, 1080), face=160, seconds=args.long, corner="centre",
                                motion="still", talk=None)  # fmt: skip
            results.append(run(f"1080p lecture, {args.long:g} s, cold template cache", clip.path, work, work / "c"))
    print(record.write("preview", results))


if __name__ == "__main__":
    main()
