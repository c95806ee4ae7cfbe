import datetime
import math
import shutil
import subprocess
from pathlib import Path

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from heygem_ray import storage
from heygem_ray.cli import app
from heygem_ray.driver import resume
from heygem_ray.errors import InputError
from heygem_ray.job.compose import PARTIAL_SUFFIX
from heygem_ray.manifest import read_manifest, write_with_settings
from heygem_ray.results import RESULT_COLUMNS
from heygem_ray.storage import Uri


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


def test_columns_typed_in_other_case_or_with_spaces_are_read_and_misspelt_ones_stop_the_manifest(tmp_path):
    """From an audit: ' audio' (a space after a comma) gave "has no 'audio' column" with
    the space invisible in the list of those found; 'Audio' the same; and a misspelt
    'refrence_seconds' was carried into the results unread, its rows rendered from the
    whole take, `ok`. The first are read as the columns they name; the last stops the run
    before any work, as does a misspelt 'output' (its MP4s would land elsewhere)."""
    m = write(tmp_path / "m.csv", "Job ID, Audio , video,Reference-Seconds,title\nx,a.wav,v.mp4,30,Intro\n")
    (job,) = read_manifest(m, tmp_path / "out")
    assert (job.job_id, job.audio, job.row_settings) == ("x", tmp_path / "a.wav", (("reference_seconds", 30.0),))
    assert job.extra == {"title": "Intro"} and job.problem is None
    (job,) = read_manifest(write(tmp_path / "semi.csv", "Audio;Video\na.wav;v.mp4\n"), tmp_path / "out")
    assert (job.audio, job.video) == (tmp_path / "a.wav", tmp_path / "v.mp4")  # (its separator found all the same)
    book = openpyxl.Workbook()
    book.active.append(["AUDIO", "Video"])
    book.active.append(["a.wav", "v.mp4"])
    book.save(tmp_path / "m.xlsx")
    (job,) = read_manifest(tmp_path / "m.xlsx", tmp_path / "out")
    assert (job.audio, job.video) == (tmp_path / "a.wav", tmp_path / "v.mp4")
    for header, near, column in (("job_id,audio,video,refrence_seconds", "refrence_seconds", "reference_seconds"),
                                 ("job_id,audio,video,ouptut", "ouptut", "output"),
                                 ("job_id,audio,vidoe,output", "vidoe", "video")):  # fmt: skip
        bad = write(tmp_path / "bad.csv", f"{header}\nx,a.wav,v.mp4,1\n")
        with pytest.raises(InputError) as raised:
            read_manifest(bad, tmp_path / "out")
        assert raised.value.kind == "bad_manifest"
        assert raised.value.message.startswith(f"manifest {bad} has a column {near!r} and none named {column!r}: if "
                                               f"it is that column, rename it {column!r}"), raised.value.message
    # A column near one that is there, or far from every one, is carried as it is.
    m = write(tmp_path / "ok.csv", "audio,video,videos,radio,job,row_id,job_no\na.wav,v.mp4,2,FM,j,7,8\n")
    (job,) = read_manifest(m, tmp_path / "out")
    assert job.extra == {"videos": "2", "radio": "FM", "job": "j", "row_id": "7", "job_no": "8"}


def test_a_manifest_copied_with_settings_elsewhere_names_the_same_files(tmp_path):
    """`preview --manifest night/tonight.csv -o preview` wrote its copy into preview/ with
    the cells as they were: relative paths then named files in preview/, and every row of
    the copy failed `missing_file` (found by an audit). The copy names the same files."""
    night = tmp_path / "night"
    night.mkdir()
    m = write(night / "tonight.csv", "job_id, audio, video,title\na, media/a.wav, media/v.mp4,Intro\n"
                                     f"b,{tmp_path / 'b.wav'},media/v.mp4,Rain\nc,~/c.wav,s3://bucket/v.mp4,Sea\n")  # fmt: skip
    elsewhere = tmp_path / "preview"
    elsewhere.mkdir()
    write_with_settings(m, {1: {"reference_start": 4.0}}, elsewhere / "copy.csv")
    before = read_manifest(m, tmp_path / "out")
    after = read_manifest(elsewhere / "copy.csv", tmp_path / "out")
    assert [(j.audio, j.video, j.extra) for j in after] == [(j.audio, j.video, j.extra) for j in before]
    assert after[0].audio == night / "media" / "a.wav" and after[0].row_settings == (("reference_start", 4.0),)
    assert (elsewhere / "copy.csv").read_text().splitlines()[3].startswith("c,~/c.wav,s3://bucket/v.mp4,")


def test_a_cell_from_the_home_folder_is_read_there(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    m = write(tmp_path / "m.csv", "audio,video\n~/talk.wav,~/takes/v.mp4\n~lesson.wav,~old take.mp4\n")
    first, second = read_manifest(m, tmp_path / "out", reserved=RESULT_COLUMNS)
    assert (first.audio, first.video) == (tmp_path / "home" / "talk.wav", tmp_path / "home" / "takes" / "v.mp4")
    # A name that starts with '~' is a file's name (no user 'lesson.wav' is looked for).
    assert (second.audio, second.video) == (tmp_path / "~lesson.wav", tmp_path / "~old take.mp4")


def test_an_output_folder_that_reaches_the_media_by_another_mount_cannot_replace_an_input(tmp_path, mount):
    """The media folder bind-mounted (or one share mounted twice) as the output folder: no
    resolving of path text makes the two names of a file equal, so the row whose output is
    its own reference passed, and its MP4 replaced the take. Files are compared as files."""
    media = mount("media", size="1m")
    (media / "a.wav").write_bytes(b"speech")
    (media / "presenter.mp4").write_bytes(b"the take")
    other = tmp_path / "other"
    other.mkdir()
    done = subprocess.run(["mount", "--bind", str(media), str(other)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({done.stderr.strip()})")
    try:
        m = write(media / "m.csv", "job_id,audio,video\npresenter,a.wav,presenter.mp4\n")
        with pytest.raises(InputError) as err:
            read_manifest(m, other, reserved=RESULT_COLUMNS)
        assert err.value.kind == "bad_manifest"
        assert (f"row 1 (job 'presenter') would write {other / 'presenter.mp4'}, which is its own video "
                f"({media / 'presenter.mp4'}, the same file); rendering would replace an input") in err.value.message
        assert (media / "presenter.mp4").read_bytes() == b"the take"
    finally:
        subprocess.run(["umount", "-l", str(other)], check=False)


def test_a_results_column_in_the_manifest_is_carried_under_a_name_no_other_column_has(tmp_path):
    m = write(tmp_path / "m.csv", "audio,video,status,manifest_status\na.wav,v.mp4,draft,reviewed\n")
    (job,) = read_manifest(m, tmp_path / "out", reserved=RESULT_COLUMNS)
    assert job.extra == {"manifest_manifest_status": "draft", "manifest_status": "reviewed"}


def test_parquet_manifests_are_read_too(tmp_path):
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"audio": ["a.wav", "b.wav"], "video": ["v.mp4", "v.mp4"]}), m)
    jobs = read_manifest(m, tmp_path / "out")
    assert [j.job_id for j in jobs] == ["a-v", "b-v"]


def test_empty_cells_of_a_parquet_manifest_pandas_wrote_are_empty(tmp_path):
    """pandas writes a column with empty cells as floats with NaN: they were the text 'nan'
    (two empty ids stopped the manifest as the repeated id 'nan', an empty output was
    "output 'nan' must end in .mp4"), and the id 3 was '3.0'."""
    m = tmp_path / "m.parquet"
    pq.write_table(pa.table({"job_id": [math.nan, math.nan, 3.0], "audio": ["a.wav", "b.wav", None],
                             "video": ["v.mp4"] * 3, "output": [math.nan] * 3}), m)  # fmt: skip
    first, second, third = read_manifest(m, tmp_path / "out")
    assert (first.job_id, first.problem) == ("a-v", None) and first.output == (tmp_path / "out").resolve() / "a-v.mp4"
    assert (second.job_id, second.problem) == ("b-v", None) and second.output.name == "b-v.mp4"
    assert third.job_id == "3" and third.output.name == "3.mp4"
    assert third.problem is not None and "the 'audio' cell is empty" in third.problem.message


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


def test_file_names_in_any_script_with_spaces_make_job_ids_and_outputs(tmp_path):
    """Lessons are named as people name files: spaces, accents, Chinese, punctuation. Ids
    made from such names, and such ids given, are used as they are; what a file name cannot
    hold (':' on a Windows share, a control character) becomes '_' in a made id."""
    m = write(tmp_path / "m.csv", "job_id,audio,video\n,Lesson 1.wav,presenter.mp4\n,课程二.wav,讲师.mp4\n"
                                   ",leçon: 3.wav,presenter.mp4\n,.hidden.wav,presenter.mp4\n"
                                   "Einführung (Teil 2) & Übung,a.wav,v.mp4\n")  # fmt: skip
    jobs = read_manifest(m, tmp_path / "out")
    assert [j.job_id for j in jobs] == ["Lesson 1-presenter", "课程二-讲师", "leçon_ 3-presenter", "hidden-presenter",
                                        "Einführung (Teil 2) & Übung"]  # fmt: skip
    for job in jobs:
        assert job.problem is None
        assert job.output == (tmp_path / "out").resolve() / f"{job.job_id}.mp4"


@pytest.mark.parametrize("name", ["notes. .wav", f"{'a' * 98}.x.wav", "\u3000讲义.\u3000.wav"])
def test_a_made_id_never_ends_in_a_dot_or_a_space(tmp_path, name):
    """Also where cutting a long name to its share of the id leaves one at the end."""
    m = write(tmp_path / "m.csv", f"audio,video\nlesson.wav,{name}\n")
    (job,) = read_manifest(m, tmp_path / "out")
    assert job.problem is None, job.problem
    assert not job.job_id.endswith(".") and not job.job_id[-1].isspace()


def test_a_made_id_from_long_names_fits_a_file_name(tmp_path):
    m = write(tmp_path / "m.csv", f"audio,video\n{'长' * 90}.wav,{'像' * 90}.mp4\n")
    (job,) = read_manifest(m, tmp_path / "out")
    assert job.problem is None and len(job.job_id.encode()) <= 200 and job.job_id.startswith("长" * 33)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("../evil,a.wav,v.mp4,", "job id cannot be a file name inside the output folder: it holds '/'"),
        (".hidden,a.wav,v.mp4,", "job id cannot be a file name inside the output folder: it starts with '.'"),
        ("Lesson 1: intro,a.wav,v.mp4,", "it holds ':'"),
        ('"a\tb",a.wav,v.mp4,', "it holds '\\t'"),
        ("lesson.,a.wav,v.mp4,", "it ends with '.'"),
        (f"{'长' * 67},a.wav,v.mp4,", "it is 201 bytes long in UTF-8, over 200"),
        ("ok1,a.wav,v.mp4,../../etc/x.mp4", "outside the output folder"),
        ("ok2,a.wav,v.mp4,/tmp/x.mp4", "outside the output folder"),
        ("ok3,a.wav,v.mp4,video.avi", "must end in .mp4: give it as 'video.mp4'"),
        (f"ok4,a.wav,v.mp4,{'d' * 256}/x.mp4", "is 256 bytes long in UTF-8, over the 255 a file or folder name holds"),
        (f"ok5,a.wav,v.mp4,{'课' * 75}.mp4", "its file name without .mp4 is 225 bytes long in UTF-8, over 223"),
        ('ok6,a.wav,v.mp4,"a\nb.mp4"', "holds '\\n': a line break, a tab or another control code"),
        (f"ok7,a.wav,v.mp4,{'/'.join(['d' * 200] * 25)}/x.mp4",
         "/x.mp4: file name too long; the path is longer than this system takes (4096 bytes in all"),
    ],
)
def test_unsafe_outputs_fail_only_their_row(tmp_path, row, needle):
    m = write(tmp_path / "m.csv", f"job_id,audio,video,output\n{row}\ngood,a.wav,v.mp4,sub/good.mp4\n")
    bad, good = read_manifest(m, tmp_path / "out")
    assert bad.problem is not None and bad.problem.kind == "unsafe_output"
    assert needle in bad.problem.message
    assert bad.output is None
    assert good.problem is None and good.output == (tmp_path / "out").resolve() / "sub" / "good.mp4"


def test_an_output_where_a_folder_is_or_under_a_file_fails_its_row_before_it_renders(tmp_path):
    """A folder named like the MP4, or a file where its folder must be: found as the manifest
    is read (was: `internal` after the whole render, from the rename that publishes it)."""
    out = tmp_path / "out"
    (out / "x.mp4").mkdir(parents=True)
    (out / "sub").write_bytes(b"notes")
    (out / "j3.mp4").mkdir()
    m = write(tmp_path / "m.csv", "job_id,audio,video,output\nj1,a.wav,v.mp4,x.mp4\nj2,a.wav,v.mp4,sub/y.mp4\n"
                                  "j3,a.wav,v.mp4,\nj4,a.wav,v.mp4,sub2/z.mp4\n")  # fmt: skip
    one, two, three, four = read_manifest(m, out)
    assert one.problem is not None and one.problem.kind == "unsafe_output"
    assert one.problem.message == f"output {out / 'x.mp4'} is a folder: give the row another 'output', or move the folder away"
    assert two.problem is not None and two.problem.kind == "unsafe_output"
    assert two.problem.message.startswith(f"output {out / 'sub' / 'y.mp4'} would be written into {out / 'sub'}, which is a file")
    assert three.problem is not None and "is a folder" in three.problem.message
    assert four.problem is None and four.output == out / "sub2" / "z.mp4"


def test_the_longest_output_name_accepted_can_be_staged_and_published(tmp_path):
    """An 'output' whose name is as long as a row may give (a stem of 223 bytes) is
    written as the encoder writes it: staged beside it under a longer name, then renamed."""
    m = write(tmp_path / "m.csv", f"job_id,audio,video,output\nlong,a.wav,v.mp4,{'x' * 223}.mp4\n")
    (job,) = read_manifest(m, tmp_path / "out")
    assert job.problem is None and isinstance(job.output, Path)
    staged = storage.staging_file(job.output, tmp_path, PARTIAL_SUFFIX)
    assert len(staged.name.encode()) == 255
    staged.write_bytes(b"a video")
    storage.publish(staged, job.output)
    assert job.output.read_bytes() == b"a video"


def test_a_row_gives_itself_a_reference_start_and_seconds_and_a_cell_that_is_no_number_fails_it(tmp_path):
    """The settings columns are read as numbers (an empty cell: the run's), not carried as
    extras; a cell that is no number is that row's problem, naming the cell and the option."""
    m = write(tmp_path / "m.csv", "job_id,audio,video,reference_start,reference_seconds,title\n"
                                  "a,a.wav,v.mp4,90,300,Intro\nb,a.wav,v.mp4,,,Two\nc,a.wav,v.mp4,1:30,,Three\n"
                                  "d,a.wav,v.mp4, 2.5 ,inf,Four\n")  # fmt: skip
    a, b, c, d = read_manifest(m, tmp_path / "out")
    assert a.row_settings == (("reference_start", 90.0), ("reference_seconds", 300.0)) and a.problem is None
    assert a.extra == {"title": "Intro"} and b.row_settings == () and b.problem is None
    assert c.problem is not None and c.problem.kind == "bad_argument" and c.row_settings == ()
    assert c.problem.message == ("the 'reference_start' cell '1:30' is not a number of seconds: give one, or leave it "
                                 "empty for the run's --reference-start")  # fmt: skip
    assert d.problem is not None and "the 'reference_seconds' cell 'inf' is not a number" in d.problem.message
    # A Parquet manifest's number column, its empty cells NaN (as pandas writes them).
    table = pa.table({"audio": ["a.wav", "a.wav"], "video": ["v.mp4", "v.mp4"], "reference_start": [90.5, math.nan]})
    pq.write_table(table, tmp_path / "m.parquet")
    e, f = read_manifest(tmp_path / "m.parquet", tmp_path / "out")
    assert (e.row_settings, e.problem, f.row_settings, f.problem) == ((("reference_start", 90.5),), None, (), None)


def test_only_an_empty_cell_is_empty(tmp_path):
    """Words a spreadsheet tool takes for a missing value (NA, null, N/A, nan) are what the
    cells say: a job called NA, a file called null.wav, a title N/A, and a start 'nan' that
    fails its row, where they were read as empty cells (another id, the run's start)."""
    m = write(tmp_path / "m.csv", "job_id,audio,video,title,reference_start\nNA,null.wav,nan.mp4,N/A,\nB,b.wav,v.mp4,x,nan\n")
    first, second = read_manifest(m, tmp_path / "out")
    assert (first.job_id, first.audio, first.video) == ("NA", tmp_path / "null.wav", tmp_path / "nan.mp4")
    assert first.extra == {"title": "N/A"} and first.problem is None and first.row_settings == ()
    assert second.problem is not None and "reference_start" in second.problem.message


def test_empty_cell_is_a_row_problem(tmp_path):
    m = write(tmp_path / "m.csv", "job_id,audio,video\nx,,v.mp4\n")
    (job,) = read_manifest(m, tmp_path / "out")
    assert job.problem is not None and "'audio' cell is empty" in job.problem.message


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("excel-europe.csv", b"job_id;audio;video;title\r\n1;Lesson 1.wav;presenter.mp4;Intro, part 1\r\n"),
        ("excel-utf8.csv", "\ufeffjob_id,audio,video,title\r\n1,Lesson 1.wav,presenter.mp4,\"Intro; part 1\"\r\n".encode()),
        ("excel-unicode.txt", "job_id\taudio\tvideo\ttitle\r\n1\tLesson 1.wav\tpresenter.mp4\tIntro\r\n".encode("utf-16")),
    ],
)
def test_manifests_as_spreadsheets_save_them(tmp_path, name, data):
    """Excel where the list separator is ';', its 'CSV UTF-8' (a byte-order mark) and its
    'Unicode text' (UTF-16, tabs): each is read as the comma-separated UTF-8 it stands for."""
    m = tmp_path / name
    m.write_bytes(data)
    (job,) = read_manifest(m, tmp_path / "out")
    assert (job.job_id, job.audio, job.video) == ("1", tmp_path / "Lesson 1.wav", tmp_path / "presenter.mp4")
    assert job.extra["title"].startswith("Intro") and job.problem is None


def test_a_manifest_in_a_code_page_says_to_save_it_as_utf8(tmp_path):
    """Chinese Excel's plain 'CSV' is GBK: not guessed (other code pages read as GBK would
    name other files), but named, with the fix."""
    m = tmp_path / "m.csv"
    m.write_bytes("audio,video\n课程二.wav,讲师.mp4\n".encode("gbk"))
    with pytest.raises(InputError) as caught:
        read_manifest(m, tmp_path / "out")
    assert caught.value.kind == "bad_manifest"
    assert caught.value.message.startswith(f"manifest {m} is not UTF-8 text (") and "'CSV UTF-8'" in caught.value.message


def test_an_excel_workbook_is_read_from_its_first_sheet_as_its_csv_would_be(tmp_path):
    """As course staff keep a night's lessons: a workbook whose first sheet names the
    columns in its first row, ids typed as numbers (7) and as text ('007'), a date column,
    an unnamed column of notes, formatted but empty rows at the end, and a second sheet."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["job_id", "audio", "video", None, "recorded"])
    sheet.append([7, "Lesson 1.wav", "presenter.mp4", "a note", datetime.date(2026, 12, 4)])
    sheet.append(["007", "lessons/Lesson 2.wav", "presenter.mp4", None, None])
    sheet.append([12.0, " Lesson 3.wav", "presenter.mp4", None, None])
    for row in range(5, 9):
        sheet.cell(row=row, column=1).number_format = "0.00"  # formatted, never filled
    book.create_sheet("drafts").append(["audio", "video"])
    book.save(tmp_path / "night.xlsx")
    jobs = read_manifest(tmp_path / "night.xlsx", tmp_path / "out")
    assert [(j.job_id, j.audio, j.video) for j in jobs] == [
        ("7", tmp_path / "Lesson 1.wav", tmp_path / "presenter.mp4"),
        ("007", tmp_path / "lessons" / "Lesson 2.wav", tmp_path / "presenter.mp4"),
        ("12", tmp_path / "Lesson 3.wav", tmp_path / "presenter.mp4"),
    ]
    assert jobs[0].extra == {"recorded": "2026-12-04T00:00:00"} and jobs[1].extra == {"recorded": None}
    assert all(j.problem is None for j in jobs)


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("night.xls", bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504), "is an Excel 97–2003 workbook (.xls)"),
        ("night.csv", bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504), "is an Excel 97–2003 workbook (.xls)"),
        ("night.ods", b"PK\x03\x04" + bytes(60), "is an OpenDocument spreadsheet (.ods)"),
        ("night.csv", b"PK\x03\x04" + bytes(60), "is a zip archive"),
    ],
)
def test_a_spreadsheet_not_read_says_what_to_save_it_as(tmp_path, name, data, says):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError) as caught:
        read_manifest(tmp_path / name, tmp_path / "out")
    assert caught.value.kind == "bad_manifest"
    assert says in caught.value.message and "save it as an Excel workbook (.xlsx) or as 'CSV UTF-8'" in caught.value.message


def test_a_damaged_or_ambiguous_workbook_says_so(tmp_path):
    (tmp_path / "cut.xlsx").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(InputError, match=r"could not be read as an Excel workbook \(BadZipFile: .*save it again"):
        read_manifest(tmp_path / "cut.xlsx", tmp_path / "out")
    book = openpyxl.Workbook()
    book.active.append(["audio", "video", "audio"])
    book.active.append(["a.wav", "v.mp4", "b.wav"])
    book.save(tmp_path / "twice.xlsx")
    with pytest.raises(InputError, match="names 'audio' more than once"):
        read_manifest(tmp_path / "twice.xlsx", tmp_path / "out")
    openpyxl.Workbook().save(tmp_path / "blank.xlsx")
    with pytest.raises(InputError, match="has no 'audio' or 'video' column"):
        read_manifest(tmp_path / "blank.xlsx", tmp_path / "out")


def test_missing_or_unreadable_manifest(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv", tmp_path)
    with pytest.raises(InputError, match=r"is a folder: give the manifest file in it \(CSV, Excel or Parquet\)$"):
        read_manifest(tmp_path, tmp_path / "out")  # (it said "does not exist")
    # A line with a cell too many or too few: pyarrow said "Expected 3 columns, got 4" without the line.
    for name, text, said in (
        ("extra.csv", "job_id,audio,video\na,a.wav,v.mp4\nb,b.wav,v.mp4,extra\n", "line 3 has 4 cells where its header "
         "line names 3 columns: remove the extra cells, or quote a cell that holds a ',' (\"a, b\")"),
        ("short.csv", "job_id;audio;video\na;a.wav\n", "line 2 has 2 cells where its header line names 3 columns: add "
         "the missing ones (an empty cell is two separators in a row)"),
    ):  # fmt: skip
        with pytest.raises(InputError) as raised:
            read_manifest(write(tmp_path / name, text), tmp_path / "out")
        assert raised.value.message == f"manifest {tmp_path / name} {said}"
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="could not be read"):
        read_manifest(bad, tmp_path)
    empty = write(tmp_path / "empty.csv", "audio,video\n")
    with pytest.raises(InputError, match="has no rows"):
        read_manifest(empty, tmp_path)


def test_a_derived_id_never_takes_a_given_one(tmp_path):
    """Row 2's id would be 'a-v-row2', which row 3 gives: each row keeps its own id (and so
    its own part file and output)."""
    m = write(tmp_path / "m.csv", "job_id,audio,video,output\n,a.wav,v.mp4,\n,a.wav,v.mp4,\na-v-row2,b.wav,v.mp4,b.mp4\n")
    jobs = read_manifest(m, tmp_path / "out")
    assert [j.job_id for j in jobs] == ["a-v", "a-v-row2-2", "a-v-row2"]
    assert len({resume.part_path(tmp_path, j.job_id) for j in jobs}) == 3
    assert len({j.output for j in jobs}) == 3


def _copy_media(folder: Path, examples: Path) -> Path:
    folder.mkdir()
    for name in ("lesson1.wav", "presenter.mp4"):
        shutil.copy(examples / name, folder / name)
    return folder


@pytest.mark.parametrize(
    ("rows", "writer", "whose"),
    [
        # the derived id of row 2 names row 1's reference
        ("job_id,audio,video\nlesson,lesson1.wav,presenter.mp4\npresenter,lesson1.wav,x.mp4\n",
         "row 2 (job 'presenter')", "the video of row 1 (job 'lesson')"),
        # a row's output cell is its own reference
        ("job_id,audio,video,output\nx,lesson1.wav,presenter.mp4,presenter.mp4\n", "row 1 (job 'x')", "its own video"),
        # the same file reached through another spelling of the folder
        ("job_id,audio,video,output\nx,lesson1.wav,presenter.mp4,sub/../presenter.mp4\n", "row 1 (job 'x')",
         "its own video"),
    ],
)  # fmt: skip
def test_an_output_that_is_an_input_stops_the_manifest(tmp_path, examples, rows, writer, whose):
    media = _copy_media(tmp_path / "media", examples)
    (media / "sub").mkdir()
    m = write(media / "m.csv", rows)
    with pytest.raises(InputError) as info:
        read_manifest(m, media)
    assert info.value.kind == "bad_manifest"
    assert f"{writer} would write {media / 'presenter.mp4'}, which is {whose}" in info.value.message


def test_a_row_that_would_write_the_manifest_itself_stops_it(tmp_path, examples):
    """A manifest saved under an .mp4 name whose row's output is that name: the run
    rendered over it (the audit of 2026-12-08)."""
    media = _copy_media(tmp_path / "media", examples)
    m = write(media / "list.mp4", "job_id,audio,video\nlist,lesson1.wav,presenter.mp4\n")
    (tmp_path / "link").symlink_to(media)
    for out in (media, tmp_path / "link"):  # by its path, and through a link to its folder
        with pytest.raises(InputError) as info:
            read_manifest(m, out)
        assert info.value.kind == "bad_manifest"
        assert (f"manifest {m}: row 1 (job 'list') would write {media / 'list.mp4'}, which is this manifest; "
                "rendering would replace it") in info.value.message
    assert m.read_text().startswith("job_id,")


def test_files_are_compared_through_symbolic_links(tmp_path, examples):
    media = _copy_media(tmp_path / "media", examples)
    (tmp_path / "out").symlink_to(media)
    (media / "clips").mkdir()
    (media / "clips" / "ref.mp4").symlink_to(media / "presenter.mp4")  # an input that is a link
    m = write(tmp_path / "m.csv", "job_id,audio,video\npresenter,media/lesson1.wav,media/clips/ref.mp4\n")
    with pytest.raises(InputError) as info:
        read_manifest(m, tmp_path / "out")
    assert (f"row 1 (job 'presenter') would write {media / 'presenter.mp4'}, which is its own video "
            f"({media / 'clips' / 'ref.mp4'}, the same file)") in info.value.message


def test_bucket_outputs_are_compared_after_normalising_their_keys(tmp_path):
    m = write(tmp_path / "m.csv", "job_id,audio,video\nlesson,s3://b/media/a.wav,s3://b/media/./x/../talk.mp4\n"
                                  "talk,s3://b/media/a.wav,s3://b/media/other.mp4\n")  # fmt: skip
    with pytest.raises(InputError, match=r"row 2 \(job 'talk'\) would write s3://b/media/talk\.mp4, which is "
                       r"the video of row 1 \(job 'lesson'\)"):
        read_manifest(m, Uri.parse("s3://b/media"))
    # gs:// and gcs:// name one store
    m = write(tmp_path / "g.csv", "job_id,audio,video\ntalk,gcs://b/m/a.wav,gcs://b/m/talk.mp4\n")
    with pytest.raises(InputError, match="its own video"):
        read_manifest(m, Uri.parse("gs://b/m"))


def test_an_output_given_as_a_whole_uri_inside_the_folder_says_to_give_it_relative(tmp_path):
    """A results table given back as a manifest holds whole URIs; the row was told its MP4
    "would be written outside the output folder", which it would not."""
    m = write(tmp_path / "m.csv", "job_id,audio,video,output\nj1,s3://b/m/a.wav,s3://b/m/p.jpg,s3://b/out/j1.mp4\n")
    (job,) = read_manifest(m, Uri.parse("s3://b/out"))
    assert job.problem is not None and job.problem.kind == "unsafe_output"
    assert job.problem.message == ("output 's3://b/out/j1.mp4' is a whole URI; give it relative to the output folder "
                                   "s3://b/out, as 'j1.mp4'")  # fmt: skip


def test_an_output_through_a_link_that_leads_out_of_the_folder_names_the_link(tmp_path):
    """`out/p.mp4` a link to an input, `out/videos` one to another folder: the rows were
    told their MP4 "would be written outside the output folder", with no word of the link
    (from an audit); the input is never written either way."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "presenter.mp4").write_bytes(b"the take")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.mp4").symlink_to(tmp_path / "in" / "presenter.mp4")
    (out / "videos").symlink_to(tmp_path / "in")
    m = write(tmp_path / "m.csv", "job_id,audio,video,output\nj1,a.wav,v.mp4,p.mp4\nj2,a.wav,v.mp4,videos/j2.mp4\n"
                                  "j3,a.wav,v.mp4,../in/j3.mp4\n")  # fmt: skip
    one, two, three = read_manifest(m, out)
    assert one.problem is not None and one.problem.message == (
        f"output 'p.mp4' goes through the link {out / 'p.mp4'} → {tmp_path / 'in' / 'presenter.mp4'}, which leads "
        f"outside the output folder {out}; remove the link, or give the row another output"
    )
    assert two.problem is not None and two.problem.message.startswith(
        f"output 'videos/j2.mp4' goes through the link {out / 'videos'} → {tmp_path / 'in'}, which leads outside")
    assert three.problem is not None and "would be written outside the output folder" in three.problem.message
    assert (tmp_path / "in" / "presenter.mp4").read_bytes() == b"the take"
    # A link that stays inside is not the one named: the one after it that leads out is.
    (out / "real").mkdir()
    (out / "inner").symlink_to(out / "real")
    (out / "real" / "away").symlink_to(tmp_path / "in")
    m = write(tmp_path / "n.csv", "job_id,audio,video,output\nj4,a.wav,v.mp4,inner/away/j4.mp4\n")
    (four,) = read_manifest(m, out)
    assert four.problem is not None and four.problem.message.startswith(
        f"output 'inner/away/j4.mp4' goes through the link {out / 'inner' / 'away'} → {tmp_path / 'in'}, which leads "
        "outside"), four.problem.message


def test_an_output_through_a_loop_of_links_fails_its_row_alone(tmp_path):
    """`out/lp` a link to itself: reading the manifest ended the whole run in Python 3.11's
    RuntimeError "Symlink loop" (found by an audit). Now that row fails, saying so."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "lp").symlink_to("lp")
    m = write(tmp_path / "m.csv", "job_id,audio,video,output\nj1,a.wav,v.mp4,lp/j1.mp4\nj2,a.wav,v.mp4,j2.mp4\n")
    one, two = read_manifest(m, out)
    assert one.problem is not None and one.problem.kind == "unsafe_output"
    assert one.problem.message == (
        f"output {out / 'lp' / 'j1.mp4'}: too many levels of symbolic links; a symbolic link on that path leads back "
        "to itself (a loop of links): fix or remove the link, or choose another path"
    )
    assert two.problem is None and two.output == out / "j2.mp4"


def test_on_a_folder_that_does_not_tell_case_names_that_differ_only_in_case_are_one_file(tmp_path):
    """On macOS's and Windows' file systems (by default) `Intro.mp4` and `intro.mp4` are one
    file: two rows wrote it, the second over the first, both `ok` (from an audit). Where the
    output folder folds case, such rows stop the manifest check naming both, as two rows of
    one output do, and so does a row whose output is an input by another case. (This
    machine's file systems all tell case: ``check_writable`` finds so, and the rows pass.)"""
    media = tmp_path / "media"
    media.mkdir()
    (media / "Presenter.mp4").write_bytes(b"the take")
    m = write(media / "m.csv", "job_id,audio,video\nIntro,a.wav,Presenter.mp4\nintro,a.wav,Presenter.mp4\n")
    out = tmp_path / "out"
    assert storage.check_writable(out) is False and not out.exists()
    assert [j.output for j in read_manifest(m, out)] == [out / "Intro.mp4", out / "intro.mp4"]
    with pytest.raises(InputError) as caught:
        read_manifest(m, out, folds_case=True)
    assert caught.value.kind == "bad_manifest" and caught.value.message == (
        f"manifest {m}: rows 1, 2 would all write {out / 'Intro.mp4'}, {out / 'intro.mp4'}, which this output "
        "folder's file system takes as one file (it does not tell upper from lower case); give each row its own "
        "job_id or output"
    )
    m = write(media / "n.csv", "job_id,audio,video\npresenter,a.wav,Presenter.mp4\n")
    assert [j.output for j in read_manifest(m, media)] == [media / "presenter.mp4"]
    with pytest.raises(InputError) as caught:
        read_manifest(m, media, folds_case=True)
    assert caught.value.message.startswith(
        f"manifest {m}: row 1 (job 'presenter') would write {media / 'presenter.mp4'}, which is its own video "
        f"({media / 'Presenter.mp4'}, the same file); rendering would replace an input")
    assert (media / "Presenter.mp4").read_bytes() == b"the take"


def test_a_manifest_that_is_the_runs_own_results_table_is_refused_and_kept(tmp_path, examples):
    """`submit out/results.parquet -o out` replaced the manifest with the run's own table."""
    out = tmp_path / "out"
    out.mkdir()
    table = pa.table({"job_id": ["j1"], "audio": [str(examples / "lesson1.wav")], "video": [str(examples / "presenter.jpg")]})
    pq.write_table(table, out / "results.parquet")
    before = (out / "results.parquet").read_bytes()
    got = CliRunner().invoke(app, ["submit", str(out / "results.parquet"), "-o", str(out)])
    assert got.exit_code == 2, got.output
    assert got.stderr.startswith(f"error: the manifest {out / 'results.parquet'} is a file this run writes in its output "
                                 f"folder {out} (its results table, or a row it keeps)")  # fmt: skip
    assert (out / "results.parquet").read_bytes() == before


def test_the_cli_stops_before_any_work_and_leaves_the_reference_as_it_was(tmp_path, examples):
    """The issue's case: --output-dir is the media folder, and a row's job id is the reference's name."""
    media = _copy_media(tmp_path / "media", examples)
    before = (media / "presenter.mp4").read_bytes()
    write(media / "m.csv", "job_id,audio,video\nintro,lesson1.wav,presenter.mp4\npresenter,lesson1.wav,presenter.mp4\n")
    got = CliRunner().invoke(app, ["submit", str(media / "m.csv"), "--output-dir", str(media)])
    assert got.exit_code == 2, got.output
    assert got.stderr.startswith("error: manifest ") and len(got.stderr.splitlines()) == 1
    said = f"row 2 (job 'presenter') would write {media / 'presenter.mp4'}, which is the video of row 1 (job 'intro')"
    assert said in got.stderr
    assert (media / "presenter.mp4").read_bytes() == before
    assert sorted(p.name for p in media.iterdir()) == ["lesson1.wav", "m.csv", "presenter.mp4"]
