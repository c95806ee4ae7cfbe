from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from heygem_ray.errors import InputError
from heygem_ray.manifest import read_manifest
from heygem_ray.results import RESULT_COLUMNS


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_paths_resolve_against_the_manifest_folder_and_extra_columns_are_carried(tmp_path):
    m = write(tmp_path / "m.csv", "job_id,audio,video,title,status\n007,a/x.wav,v.mp4,Intro,draft\n")
    (job,) = read_manifest(m, tmp_path / "out", reserved=RESULT_COLUMNS)
    assert job.job_id == "007"  # read as text: leading zeros kept
    assert job.audio == tmp_path / "a" / "x.wav"
    assert job.video == tmp_path / "v.mp4"
    assert job.output == (tmp_path / "out").resolve() / "007.mp4"
    # "status" is a results column: carried under another name, never overwriting it.
    assert job.extra == {"title": "Intro", "manifest_status": "draft"}
    assert job.problem is None


def test_parquet_manifests_are_read_too(tmp_path):
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"audio": ["a.wav", "b.wav"], "video": ["v.mp4", "v.mp4"]}), m)
    jobs = read_manifest(m, tmp_path / "out")
    assert [j.job_id for j in jobs] == ["a-v", "b-v"]


def test_missing_required_column_stops_with_its_name(tmp_path):
    m = write(tmp_path / "m.csv", "job_id,audio,clip\n1,a.wav,v.mp4\n")
    with pytest.raises(InputError, match="'video'") as info:
        read_manifest(m, tmp_path / "out")
    assert "found: job_id, audio, clip" in str(info.value)


def test_duplicate_job_ids_stop_naming_the_rows(tmp_path):
    m = write(tmp_path / "m.csv", "job_id,audio,video\nx,a.wav,v.mp4\ny,b.wav,v.mp4\nx,c.wav,v.mp4\n")
    with pytest.raises(InputError, match=r"'x' on rows 1, 3"):
        read_manifest(m, tmp_path / "out")


def test_two_rows_writing_one_output_stop(tmp_path):
    m = write(tmp_path / "m.csv", "job_id,audio,video,output\nx,a.wav,v.mp4,same.mp4\ny,b.wav,v.mp4,same.mp4\n")
    with pytest.raises(InputError, match="rows 1, 2 would all write"):
        read_manifest(m, tmp_path / "out")


def test_derived_ids_never_collide(tmp_path):
    m = write(tmp_path / "m.csv", "audio,video\na.wav,v.mp4\na.wav,v.mp4\n")
    assert [j.job_id for j in read_manifest(m, tmp_path / "out")] == ["a-v", "a-v-row2"]


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("../evil,a.wav,v.mp4,", "job id cannot be a file name"),
        (".hidden,a.wav,v.mp4,", "job id cannot be a file name"),
        ("ok1,a.wav,v.mp4,../../etc/x.mp4", "outside the output folder"),
        ("ok2,a.wav,v.mp4,/tmp/x.mp4", "outside the output folder"),
        ("ok3,a.wav,v.mp4,video.avi", "must end in .mp4"),
    ],
)
def test_unsafe_outputs_fail_only_their_row(tmp_path, row, needle):
    m = write(tmp_path / "m.csv", f"job_id,audio,video,output\n{row}\ngood,a.wav,v.mp4,sub/good.mp4\n")
    bad, good = read_manifest(m, tmp_path / "out")
    assert bad.problem is not None and bad.problem.kind == "unsafe_output"
    assert needle in bad.problem.message
    assert bad.output is None
    assert good.problem is None and good.output == (tmp_path / "out").resolve() / "sub" / "good.mp4"


def test_empty_cell_is_a_row_problem(tmp_path):
    m = write(tmp_path / "m.csv", "job_id,audio,video\nx,,v.mp4\n")
    (job,) = read_manifest(m, tmp_path / "out")
    assert job.problem is not None and "'audio' cell is empty" in job.problem.message


def test_missing_or_unreadable_manifest(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv", tmp_path)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="could not be read"):
        read_manifest(bad, tmp_path)
    empty = write(tmp_path / "empty.csv", "audio,video\n")
    with pytest.raises(InputError, match="has no rows"):
        read_manifest(empty, tmp_path)
