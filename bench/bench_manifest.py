"""Benchmark: reading a large manifest, and the share of it that checks outputs against inputs.

    .venv/bin/python bench/bench_manifest.py [--rows 100000] [--repeat 3]

``read_manifest`` stops a manifest in which a row would write a file that a row reads, or
that another row writes, comparing files as the file system finds them (symbolic links
followed). That check is one dict lookup per file and one ``lstat`` per distinct output
and input (folders are resolved once each), so it grows with the rows, never with their
pairs. Timed here on ``--rows`` rows in two shapes:

* ``shared reference``: every row's own audio on one reference video (the nightly case);
* ``distinct files``: every row its own audio and video (the most files to look at).

For each: the whole ``read_manifest`` and the check alone (``manifest._check_outputs``), the
best of ``--repeat``. Writes bench/results/manifest-<host>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.record import write  # noqa: E402
from heygem_ray import manifest  # noqa: E402


def best(repeat: int, work: Any) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return min(times)


def shape(name: str, rows: int, repeat: int, folder: Path) -> dict[str, Any]:
    cells = (f"j{i},lessons/a{i}.wav,{'presenter.mp4' if name == 'shared reference' else f'refs/v{i}.mp4'}"
             for i in range(rows))  # fmt: skip
    path = folder / f"{name.replace(' ', '-')}.csv"
    path.write_text("job_id,audio,video\n" + "\n".join(cells) + "\n")
    out = folder / "out"
    jobs = manifest.read_manifest(path, out)
    read_s = best(repeat, lambda: manifest.read_manifest(path, out))
    check_s = best(repeat, lambda: manifest._check_outputs(path, jobs, path.resolve().parent))
    return {"shape": name, "rows": rows, "read_manifest_s": read_s, "check_s": check_s, "check_share": check_s / read_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heygem-bench-manifest-") as scratch:
        results = [shape(name, args.rows, args.repeat, Path(scratch)) for name in ("shared reference", "distinct files")]
    print("| manifest | rows | read_manifest | of which the output check |")
    print("| --- | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['shape']} | {r['rows']} | {r['read_manifest_s']:.2f} s | {r['check_s']:.2f} s "
              f"({100 * r['check_share']:.0f} %) |")
    # The machine's load when it ran: on a shared machine, times grow with it.
    print(f"written: {write('manifest', results, load_average=f'{os.getloadavg()[0]:.1f}')}")


if __name__ == "__main__":
    main()
