"""The results table: written and read a batch at a time, merged from the per-job rows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from heygem_ray import RenderConfig, RunConfig, results
from heygem_ray.config import DetectorConfig, settings_change
from heygem_ray.driver import resume
from heygem_ray.manifest import read_manifest
from heygem_ray.results import JobResult, read_rows, write_table


def _rows(n: int) -> Iterator[JobResult]:
    for i in range(1, n + 1):
        yield JobResult(job_id=f"j{i}", row=i, audio="a.wav", video="v.mp4", output=f"j{i}.mp4",
                        status="failed" if i % 7 == 0 else "ok", frames=i, extra={"teacher": f"t{i % 3}"})


def test_the_table_is_written_a_batch_at_a_time_in_the_order_given(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "BATCH_ROWS", 100)
    path = tmp_path / "out" / "results.parquet"
    write_table(_rows(250), ["teacher"], path)
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100, 100, 50]
    table = pq.read_table(path).to_pylist()
    assert [r["row"] for r in table] == list(range(1, 251))
    assert table[4]["teacher"] == "t2" and table[4]["frames"] == 5
    assert [p.name for p in path.parent.iterdir()] == ["results.parquet"]  # no temporary left
    failed = list(read_rows(path, "failed"))
    assert [r.row for r in failed] == list(range(7, 251, 7))
    assert failed[0].extra == {"teacher": "t1"} and failed[0].output == "j7.mp4"


def test_a_table_with_no_rows_still_has_its_columns(tmp_path):
    path = tmp_path / "results.parquet"
    write_table(iter(()), ["teacher"], path)
    table = pq.read_table(path)
    assert table.num_rows == 0 and "teacher" in table.column_names and "status" in table.column_names


def test_the_merged_table_reads_each_row_back_marks_skipped_ones_and_names_a_lost_one(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("job_id,audio,video,teacher\none,a.wav,p.jpg,anna\ntwo,b.wav,p.jpg,ben\nthree,c.wav,p.jpg,cy\n")
    out = tmp_path / "out"
    one, two, three = read_manifest(manifest, out)
    for job, status, run in ((one, "ok", "earlier"), (two, "failed", "this")):
        r = JobResult.for_job(job, "warp")
        r.status, r.frames, r.attempts, r.run_id = status, 25, 2, run
        resume.record(out, r)
    # "one" was complete before this run; "three" ended but its row file is gone.
    counts = resume.write_merged([one, two, three], out, {one.row}, "warp", out / "results.parquet", run_id="this")
    assert counts == {"skipped": 1, "failed": 2}
    table = {r["job_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert list(table) == ["one", "two", "three"]
    assert (table["one"]["status"], table["one"]["attempts"], table["one"]["frames"]) == ("skipped", 0, 25)
    assert [table[j]["run_id"] for j in ("one", "two", "three")] == ["earlier", "this", "this"]
    assert (table["two"]["status"], table["two"]["attempts"], table["two"]["teacher"]) == ("failed", 2, "ben")
    lost = table["three"]
    assert (lost["status"], lost["error_kind"], lost["teacher"]) == ("failed", "storage", "cy")
    assert "row 3 (job 'three')" in lost["error"] and "run the same manifest again" in lost["error"]
    assert "was the output folder deleted or cleaned during the run?" in lost["error"]
    assert str(Path(out, resume.PARTS_DIR)) in lost["error"]


def test_the_docs_document_every_column():
    page = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    section = page.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    documented = {name for cell in (line.split("|")[1] for line in section.splitlines() if line.startswith("| `"))
                  for name in re.findall(r"`([a-z_]+)`", cell)}
    assert documented >= set(results.SCHEMA.names), set(results.SCHEMA.names) - documented


def test_a_change_of_settings_is_named_setting_by_setting():
    before = RunConfig(output_dir=Path("out"), render=RenderConfig()).render_settings()
    many = RenderConfig(loop="forward", preset="ultrafast", encoder="libx264", max_resolution=720,
                        reference_start=90, detector=DetectorConfig(min_face=24))  # fmt: skip
    now = RunConfig(output_dir=Path("out"), render=many).render_settings()
    assert settings_change(before, now) == ("detector.min_face 40 → 24, encoder auto → libx264, loop pingpong → "
                                            "forward, max_resolution (not set) → 720 and 2 more")  # fmt: skip
    assert settings_change(before, before) == ""
    started = RunConfig(output_dir=Path("out"), render=RenderConfig(reference_start=90)).render_settings()
    assert settings_change(before, started) == "reference_start (not set) → 90"  # as typed, not 90.0
    later = RunConfig(output_dir=Path("out"), render=RenderConfig(reference_start=90.5)).render_settings()
    assert settings_change(started, later) == "reference_start 90 → 90.5"
    assert settings_change("", now) == settings_change("not json", now) == "the earlier run's settings are not recorded"
