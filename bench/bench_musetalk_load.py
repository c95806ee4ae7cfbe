"""Benchmark: loading MuseTalk 1.5's networks at full size (a model worker's start).

    .venv/bin/python bench/bench_musetalk_load.py --before <checkout> [--repeat 2]

Writes a full-size ``models/`` folder of seeded random weights in the public layout
(``tests/helpers/musetalk_ckpt.write_models``: 3.7 GB, in a temporary folder), then times
``models.musetalk.load`` on it and reads its peak resident memory, each in a fresh Python
process, this checkout's code and ``--before``'s (a ``git archive`` of an earlier commit)
taking turns. Writes bench/results/musetalk-load-<host>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.record import REPO, write  # noqa: E402

CHILD = """
import json, resource, sys, time
t = time.perf_counter()
from heygem_ray.models import musetalk
musetalk.load(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def measure(code: Path, models: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    # run from the models' folder: ``python -c`` puts its working directory first on the path,
    # which in the repository would import this checkout's code for both
    out = subprocess.run([sys.executable, "-c", CHILD, str(models)], env=env, capture_output=True, text=True,
                         check=True, cwd=models.parent).stdout  # fmt: skip
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout (git archive) of the code to compare")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from tests.helpers.musetalk_ckpt import write_models

    with tempfile.TemporaryDirectory(prefix="bench-musetalk-load-") as tmp:
        models = write_models(Path(tmp) / "models", full=True)
        runs: dict[str, list[dict[str, float]]] = {"after": [], "before": []}
        for _ in range(args.repeat):
            runs["before"].append(measure(args.before.resolve(), models))
            runs["after"].append(measure(REPO, models))
    rows = [{"code": name, "runs": got, "seconds": statistics.median(r["seconds"] for r in got),
             "peak_gib": statistics.median(r["peak_gib"] for r in got)} for name, got in runs.items()]  # fmt: skip
    print("wrote", write("musetalk-load", rows, before=str(args.before)))
    after, before = rows
    print("\n| MuseTalk 1.5, full size | load | peak resident |\n| --- | ---: | ---: |")
    for r in (before, after):
        print(f"| {r['code']} | {r['seconds']:.1f} s | {r['peak_gib']:.2f} GiB |")
    print(f"| before ÷ after | {before['seconds'] / after['seconds']:.2f}× | {before['peak_gib'] / after['peak_gib']:.2f}× |")


if __name__ == "__main__":
    main()
