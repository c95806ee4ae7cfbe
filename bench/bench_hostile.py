"""Hostile inputs: how long a row takes to be refused, and what the process holds meanwhile.

Two measurements, each in a fresh Python process (tests/helpers/hostile_jobs.py, the
same cases ``tests/test_hostile.py`` checks by their messages and memory bounds):

* every file of ``REFUSED`` (a 20 000² PNG, an MP4 listing 80 million frames, ten hours of
  audio, …) as one row's job: seconds from the job's start to its row, the job process's
  peak memory, ffmpeg's;
* ``--rows`` manifest rows (default 100 000) all naming one missing audio file through
  ``submit`` on a local Ray: the run's seconds (Ray's start included) and the driver's peak.

Writes bench/results/hostile-<host>.json:

    .venv/bin/python bench/bench_hostile.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import record

sys.path.insert(0, str(record.REPO))
from tests.helpers.hostile_jobs import REFUSED, ROOT, SUBMIT, child_env, run_jobs  # noqa: E402
from tests.helpers.media import make_tone  # noqa: E402


def refused(tmp: Path, examples: Path) -> list[dict]:
    tone = make_tone(tmp / "one-second.wav", seconds=1.0)
    files = {name: make(tmp) for name, (make, *_) in REFUSED.items()}
    cases = {name: (files[name], examples / "presenter.mp4", {}) if is_audio else (tone, files[name], {})
             for name, (_, is_audio, *_) in REFUSED.items()}
    before, found = run_jobs(tmp, cases, timeout=600)
    return [{"case": name, "status": c["row"]["status"], "error_kind": c["row"]["error_kind"],
             "seconds_to_refusal": round(c["row"]["seconds"], 3), "process_peak_mib": round(c["peak_mib"]),
             "process_peak_before_mib": round(before), "ffmpeg_peak_mib": round(c["ffmpeg_mib"])}
            for name, c in found.items()]


def many_rows(tmp: Path, examples: Path, rows: int) -> dict:
    (tmp / "presenter.mp4").symlink_to(examples / "presenter.mp4")
    proc = subprocess.run([sys.executable, "-c", SUBMIT, str(tmp), str(rows)], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=1800, check=True)  # fmt: skip
    run = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("SUBMIT ")).removeprefix("SUBMIT "))
    return {"case": f"{rows} rows on one missing file", "seconds": round(run["seconds"], 1),
            "driver_peak_mib": round(run["peak_mib"]), "failed": run["failed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the manifest on one missing file")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    examples = record.REPO / "examples"
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        results = refused(Path(a), examples) + [many_rows(Path(b), examples, args.rows)]
    for r in results:
        print(json.dumps(r))
    print(record.write("hostile", results, load_before=load))


if __name__ == "__main__":
    main()
