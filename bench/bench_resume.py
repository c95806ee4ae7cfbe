"""Benchmark: looking for the temporary MP4s killed runs left, before a run renders.

    .venv/bin/python bench/bench_resume.py [--rows 5000] [--bucket-rows 1000]

Before rendering, ``resume.split`` deletes what killed tasks left for each job still to
render: staging files beside a local output, temporary upload keys for one in a bucket.
It used to look once per job (a listing of the output folder, or a LIST request each);
it now lists each folder once for all its jobs (``storage.staged_leftovers`` and
``storage.leftovers`` over all the outputs). Both are timed here, side by side in one run:

* local: ``--rows`` jobs whose outputs share one folder that already holds an MP4 per job
  (a rerun of a manifest after a change of settings) and a leftover staging file for one
  job in ten;
* bucket: ``--bucket-rows`` jobs in one prefix of a bucket on moto's S3 server (loopback,
  started here), with a leftover upload for one job in ten.

Each way must find the same leftovers. Writes bench/results/resume-<host>.json and prints a
table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.record import write  # noqa: E402
from heygem_ray import storage  # noqa: E402
from heygem_ray.job.compose import PARTIAL_SUFFIX  # noqa: E402
from heygem_ray.storage import TMP_DIR, Uri  # noqa: E402


def timed(find: Callable[[], list[Any]]) -> tuple[float, set[str]]:
    t0 = time.perf_counter()
    found = find()
    return time.perf_counter() - t0, {str(f) for f in found}


def local(rows: int, folder: Path) -> list[dict[str, Any]]:
    outputs = [folder / f"lesson-{i:05d}.mp4" for i in range(rows)]
    for i, out in enumerate(outputs):
        out.write_bytes(b"")
        if i % 10 == 0:
            storage.staging_file(out, folder, PARTIAL_SUFFIX).write_bytes(b"")
    per_job, found_each = timed(lambda: [p for o in outputs for p in storage.staged_leftovers([o], PARTIAL_SUFFIX)])
    batched, found_all = timed(lambda: storage.staged_leftovers(outputs, PARTIAL_SUFFIX))
    assert found_each == found_all and len(found_all) == rows // 10, (len(found_each), len(found_all))
    return [{"where": "local folder", "jobs": rows, "files_in_folder": len(os.listdir(folder)),
             "leftovers": len(found_all), "per_job_s": per_job, "one_listing_s": batched, "ratio": per_job / batched}]


def bucket(rows: int) -> list[dict[str, Any]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        import pyarrow.fs as pafs

        name = f"bench-{uuid.uuid4().hex[:8]}"
        fs, _ = pafs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")
        fs.create_dir(name)
        folder = Uri("s3", f"{name}/out")
        outputs = [folder / f"lesson-{i:05d}.mp4" for i in range(rows)]
        for i, out in enumerate(outputs):
            if i % 10 == 0:  # what storage.upload leaves when killed mid-write
                storage.write_bytes(folder / TMP_DIR / f"{out.name}.{uuid.uuid4().hex[:8]}.tmp", b"x")
        per_job, found_each = timed(lambda: [u for o in outputs for u in storage.leftovers([o])])
        batched, found_all = timed(lambda: storage.leftovers(outputs))
        assert found_each == found_all and len(found_all) == rows // 10, (len(found_each), len(found_all))
        return [{"where": "bucket prefix (moto, loopback)", "jobs": rows, "files_in_folder": rows // 10,
                 "leftovers": len(found_all), "per_job_s": per_job, "one_listing_s": batched,
                 "ratio": per_job / batched}]
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--bucket-rows", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        rows = local(args.rows, Path(tmp))
    rows += bucket(args.bucket_rows)
    print("wrote", write("resume", rows))
    print("\n| outputs in | jobs | files there | leftovers | a look per job | one listing | ratio |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['where']} | {r['jobs']} | {r['files_in_folder']} | {r['leftovers']} | {r['per_job_s']:.2f} s | "
              f"{r['one_listing_s']:.3f} s | {r['ratio']:.0f}× |")


if __name__ == "__main__":
    main()
