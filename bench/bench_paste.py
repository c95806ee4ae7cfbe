"""Benchmark: pasting a generated crop back, over the mask's support against the whole box.

    .venv/bin/python bench/bench_paste.py [--repeat 300]

``geometry.paste_i420`` (compose's paste, into the I420 frame it encodes) blends only the
rectangle where the resized mask is above 0. The baseline is the same call with the mask
raised to at least 1e-6 everywhere, so that its support is the whole box. Both packs'
masks, residual (warp) and replacing (wav2lip) blends, face boxes of 200 and 400 pixels
on a 1920×1080 frame; the median of ``--repeat`` calls each.

Writes bench/results/paste-<host>.json and prints a table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import record

from heygem_ray.geometry import paste_i420
from heygem_ray.media import yuv
from heygem_ray.packs import get_pack


def median_ms(frame: np.ndarray, crop: np.ndarray, box: np.ndarray, mask: np.ndarray, base, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        target = frame.copy()
        t0 = time.perf_counter()
        paste_i420(target, crop, box, mask, base)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=300)
    opts = parser.parse_args()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, yuv.frame_shape(1920, 1080), dtype=np.uint8)
    results = []
    for name in ("warp", "wav2lip"):
        pack = get_pack(name)
        mask, size = pack.paste_mask, pack.paste_mask.shape[0]
        crop, given = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        base = given if pack.paste_mode == "residual" else None
        for side in (200, 400):
            box = np.array([860, 300, 860 + side, 300 + side])
            whole = median_ms(frame, crop, box, np.maximum(mask, 1e-6), base, opts.repeat)
            support = median_ms(frame, crop, box, mask, base, opts.repeat)
            results.append({
                "pack": name, "blend": pack.paste_mode, "box_px": side,
                "mask_support": round(float((mask > 0).mean()), 3),
                "whole_box_ms": round(whole, 3), "support_ms": round(support, 3), "speedup": round(whole / support, 2),
            })
            print(results[-1], flush=True)
    dest = record.write("paste", results)
    print(f"\nwritten to {dest}\n")
    print("| pack | blend | box | mask support | whole box | mask's support | × faster |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['pack']} | {r['blend']} | {r['box_px']} px | {r['mask_support']:.0%} | {r['whole_box_ms']:.2f} ms "
              f"| {r['support_ms']:.2f} ms | {r['speedup']:.2f} |")


if __name__ == "__main__":
    main()
