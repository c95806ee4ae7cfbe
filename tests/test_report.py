"""`heygem-ray status` and `heygem-ray report` on a real run (real Ray, real ffmpeg), and
the report opened in a real headless browser."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil
import socket
import subprocess
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from heygem_ray import RenderConfig, RunConfig, locks, media, report, submit
from heygem_ray.cli import app
from heygem_ray.config import DetectorConfig
from heygem_ray.driver.hold import RUN_LOCK
from heygem_ray.driver.resume import PARTS_DIR
from heygem_ray.restore.inputs import side_by_side
from heygem_ray.results import RESULTS_FILE, JobResult, write_results
from heygem_ray.storage import Uri
from tests.helpers.media import make_excerpt
from tests.helpers.system import needs_system_package

CHROMIUM = Path("/usr/bin/chromium")
MISSING_AUDIO = "no <such> & file.wav"  # user data that must be escaped in the page
HOSTILE_TITLE = "<script>alert('title')</script>"
_IMG = re.compile(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, examples, ray_local) -> Path:
    """A finished run of three rows: two rendered (video and photo reference), one missing its audio."""
    d = tmp_path_factory.mktemp("report")
    make_excerpt(examples / "lesson1.wav", d / "a.wav", seconds=1.0)
    shutil.copy(examples / "presenter.mp4", d / "p.mp4")
    shutil.copy(examples / "presenter.jpg", d / "p.jpg")
    rows = [
        f"talk,a.wav,p.mp4,{HOSTILE_TITLE}",
        "still,a.wav,p.jpg,a still photo",
        f"gone,{MISSING_AUDIO},p.jpg,",
    ]
    (d / "m.csv").write_text("job_id,audio,video,title\n" + "\n".join(rows) + "\n")
    submit(d / "m.csv", RunConfig(output_dir=d / "out", cache_dir=d / "cache", engines_dir=d / "engines"))
    return d / "out"


def _table(out: Path) -> dict[str, dict]:
    return {r["job_id"]: r for r in pq.read_table(out / RESULTS_FILE).to_pylist()}


def _articles(page: str) -> dict[str, str]:
    """job id → the HTML of its card."""
    cards = re.findall(r"<article .*?</article>", page, flags=re.S)
    return {re.search(r"<b>(.*?)</b>", c).group(1): c for c in cards}  # type: ignore[union-attr]


def test_status_counts_rows_frames_and_groups_failures(run_dir):
    rows = _table(run_dir)
    assert [rows[j]["status"] for j in ("talk", "still", "gone")] == ["ok", "ok", "failed"]
    got = runner.invoke(app, ["status", str(run_dir)])
    assert got.exit_code == 1, got.output  # a row failed
    text = got.stdout
    assert "rows      3: 2 ok, 1 failed, 0 skipped" in text
    assert f"frames    {rows['talk']['frames'] + rows['still']['frames']} rendered" in text
    assert "state     complete" in text
    assert "missing_file (1)" in text
    assert rows["gone"]["error"] in text and MISSING_AUDIO in text
    slowest = text.split("slowest\n")[1].split("failures")[0]
    assert {line.split()[0] for line in slowest.splitlines()} == {"talk", "still"}
    assert rows["talk"]["backend"] == rows["still"]["backend"]  # one worker kind: whichever backend it ran
    assert f"backends  {rows['talk']['backend']} × 2" in text
    steps = [line.split()[-8] for line in text.splitlines() if line.endswith(" per job")]
    assert steps == ["audio", "analyze", "features", "motion", "render", "compose"], text  # no restore asked for
    assert "settings  pack warp, loop pingpong, preset lean, encoder auto, backend auto, precision auto " \
           f"(config {rows['talk']['config_hash']})\n" in text  # fmt: skip


def test_the_settings_line_names_the_options_a_run_set_and_says_when_they_were_not_kept():
    cfg = RunConfig(output_dir=Path("out"), render=RenderConfig(reference_start=90, max_resolution=1080,
                                                               detector=DetectorConfig(min_face=24)))  # fmt: skip
    line = report.describe_settings(cfg.render_settings(), cfg.config_hash())
    assert line == ("pack warp, loop pingpong, preset lean, encoder auto, backend auto, precision auto, "
                    f"max_resolution 1080, reference_start 90.0, min_face 24 (config {cfg.config_hash()})")
    assert report.describe_settings("", "1a2b") == "not recorded (config 1a2b)"
    # 90 from Python and 90.0 from the command line are one setting: one hash.
    same = RunConfig(output_dir=Path("out"), render=dataclasses.replace(cfg.render, reference_start=90.0))
    assert same.config_hash() == cfg.config_hash()


def test_status_gives_a_row_that_kept_no_settings_those_of_its_config_hash(tmp_path):
    """A row skipped from an older version's run (no render_settings) under this run's hash
    reads as this run's settings; a row of another hash without them, as not recorded."""
    cfg = RunConfig(output_dir=tmp_path, render=RenderConfig())
    now, settings = cfg.config_hash(), cfg.render_settings()
    files = {"audio": "a.wav", "video": "p.jpg", "output": None}
    rows = [JobResult(job_id="new", row=1, status="ok", config_hash=now, render_settings=settings, **files),
            JobResult(job_id="kept", row=2, status="skipped", config_hash=now, **files),
            JobResult(job_id="other", row=3, status="skipped", config_hash="0123456789abcdef", **files)]  # fmt: skip
    write_results(rows, tmp_path / RESULTS_FILE)
    lines = report.format_status(report.summarize(report.load_run(tmp_path))).splitlines()
    assert f"settings  pack warp, loop pingpong, preset lean, encoder auto, backend auto, precision auto (config {now})" \
           ": 2 row(s)" in lines  # fmt: skip
    assert "          not recorded (config 0123456789abcdef): 1 row(s)" in lines
    page = report.build_html(report.summarize(report.load_run(tmp_path)), rows, {}, tmp_path)
    assert f"<p class=settings><b>Settings:</b> pack warp, loop pingpong, preset lean, encoder auto, backend auto, " \
           f"precision auto (config {now}) (2 rows)</p>" in page  # fmt: skip


def test_status_names_the_jobs_that_needed_more_than_one_attempt(tmp_path):
    """A night's flaky nodes show: the jobs tried again (a lost task, a stall) are named with
    their attempts and how they ended; a run whose jobs each took one attempt says nothing."""
    files = {"audio": "a.wav", "video": "p.jpg", "output": None}
    rows = [JobResult(job_id="once", row=1, status="ok", attempts=1, **files),
            JobResult(job_id="again", row=2, status="ok", attempts=2, **files),
            JobResult(job_id="stuck", row=3, status="failed", attempts=2, error_kind="stalled", error_step="analyze",
                      error="row 3 (job 'stuck'): made no progress", **files),
            JobResult(job_id="before", row=4, status="skipped", attempts=3, **files)]  # fmt: skip
    write_results(rows, tmp_path / RESULTS_FILE)
    lines = report.format_status(report.summarize(report.load_run(tmp_path))).splitlines()
    assert "retried   2 job(s) needed more than one attempt (a task or node lost, a stall: look at their nodes): " \
           "again (2 attempts, ok), stuck (2 attempts, stalled)" in lines, lines  # fmt: skip
    write_results(rows[:1], tmp_path / RESULTS_FILE)
    assert not any(line.startswith("retried") for line in report.format_status(
        report.summarize(report.load_run(tmp_path))).splitlines())  # fmt: skip


def test_status_says_what_is_wrong_with_a_folder_without_results(tmp_path):
    missing = runner.invoke(app, ["status", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    empty = runner.invoke(app, ["status", str(tmp_path)])
    assert empty.exit_code == 2 and "no results in" in empty.stderr
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 2
    assert not (tmp_path / report.REPORT_FILE).exists()
    # A damaged table: what to do, where it asked "is it a heygem-ray results table?"
    (tmp_path / "results.parquet").write_text("junk")
    damaged = runner.invoke(app, ["status", str(tmp_path)])
    assert damaged.exit_code == 2 and damaged.stderr.startswith(
        f"error: results file {tmp_path / 'results.parquet'} could not be read as a Parquet table (")
    assert damaged.stderr.endswith("): it is damaged, or no table a run wrote; running the same manifest into its "
                                   "folder again writes it anew, keeping the rows already rendered\n")  # fmt: skip


def test_report_embeds_real_thumbnails_of_every_output_and_escapes_user_text(run_dir, tmp_path):
    got = runner.invoke(app, ["report", str(run_dir)])
    assert got.exit_code == 0, got.output
    path = Path(got.stdout.strip())
    assert path == (run_dir / report.REPORT_FILE).resolve()
    page = path.read_text()
    cards = _articles(page)
    assert set(cards) == {"talk", "still", "gone"}
    rows = _table(run_dir)
    for job in ("talk", "still"):
        jpegs = [base64.b64decode(b) for b in _IMG.findall(cards[job])]
        assert len(jpegs) == report.THUMB_COUNT
        for jpeg in jpegs:
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape[0] == report.THUMB_HEIGHT and img.std() > 10
        # The thumbnails are frames of this output: the first is the frame at 1/8 of its length.
        frames, _ = media.read_video(rows[job]["output"])
        first = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR)
        want = frames[int(len(frames) / (2 * report.THUMB_COUNT))]
        want = cv2.resize(want, (first.shape[1], first.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(want.astype(np.int16) - first.astype(np.int16)).mean() < 8
        assert f"<i>frames</i> {rows[job]['frames']}" in cards[job]
    assert not _IMG.search(cards["gone"])
    assert "missing_file" in cards["gone"] and "in step <b>audio</b>" in cards["gone"]
    # The failed card names the Ray task whose log has the job's lines.
    assert re.fullmatch(r"[0-9a-f]{32,}", rows["gone"]["ray_task_id"])
    assert f"<i>ray task</i> {rows['gone']['ray_task_id']}" in cards["gone"]
    # User data is shown escaped, never as markup; the page loads nothing from elsewhere.
    assert "no &lt;such&gt; &amp; file.wav" in cards["gone"] and MISSING_AUDIO not in page
    assert "&lt;script&gt;alert(&#x27;title&#x27;)&lt;/script&gt;" in cards["talk"]
    assert "<script" not in page and "http:" not in page and "https:" not in page
    # --out puts it elsewhere; links to the MP4s still lead to them.
    other = tmp_path / "elsewhere" / "r.html"
    assert runner.invoke(app, ["report", str(run_dir), "--out", str(other), "--thumbnails", "0"]).exit_code == 0
    href = re.search(r'<a class=path href="([^"]+)"', other.read_text()).group(1)  # type: ignore[union-attr]
    assert (other.parent / href).resolve() == Path(rows["talk"]["output"]).resolve()
    assert not _IMG.search(other.read_text())
    # --out naming a finished MP4 or the table (a slip of the shell's completion) writes nothing over them.
    for precious in (Path(rows["talk"]["output"]), run_dir / "results.parquet"):
        before = precious.read_bytes()
        got = runner.invoke(app, ["report", str(run_dir), "--out", str(precious), "--thumbnails", "0"])
        assert got.exit_code == 2 and f"error: --out {precious} is no HTML file's name" in got.stderr
        assert precious.read_bytes() == before
    got = runner.invoke(app, ["report", str(run_dir), "--out", "s3://night/out/a.mp4", "--thumbnails", "0"])
    assert got.exit_code == 2 and "error: --out s3://night/out/a.mp4 is no HTML file's name" in got.stderr  # not s3:/


def test_hostile_job_ids_and_messages_never_become_markup(tmp_path):
    """Rows written as a run writes them, with ids and messages a manifest would refuse."""
    evil = "<script>alert(1)</script>"
    results = [
        JobResult(job_id=evil, row=1, audio="a.wav", video="v.mp4", output=str(tmp_path / "<b>x</b>.mp4"),
                  status="ok", frames=25, seconds=1.0, realtime_factor=1.0, extra={"note": "</article><h1>"}),
        JobResult(job_id="x\"onmouseover=alert(2)", row=2, audio="a.wav", video="v.mp4", output=None,
                  error_kind="<kind>", error_step="audio", error="<img src=x onerror=alert(3)>"),
    ]  # fmt: skip
    write_results(results, tmp_path / RESULTS_FILE)
    page = report.write_report(tmp_path).read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>x</b>" not in page
    assert "</article><h1>" not in page and 'x"onmouseover' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(3)&gt;" in page
    assert "is not there any more" in page  # its MP4 is gone: said, not shown
    got = runner.invoke(app, ["status", str(tmp_path)])
    assert got.exit_code == 1 and evil in got.stdout  # plain text keeps the id as it is


def test_a_restored_row_shows_its_face_without_and_with_restoration(tmp_path):
    """The job's sample (results' restore_sample) is on the row's card as it was kept, with
    the stage and its backend; a row rendered without restoration has neither."""
    before = np.zeros((120, 120, 3), np.uint8)
    before[:, :, 2] = np.linspace(0, 255, 120, dtype=np.uint8)[None]
    sample = side_by_side(before, 255 - before, np.array([0, 0, 120, 120]))
    assert sample is not None
    common = {"audio": "a.wav", "video": "v.mp4", "status": "ok", "frames": 25, "seconds": 1.0}
    results = [
        JobResult(job_id="sharp", row=1, output=str(tmp_path / "sharp.mp4"), restore="gfpgan",
                  restore_backend="onnxruntime", restore_sample=sample, **common),
        JobResult(job_id="plain", row=2, output=str(tmp_path / "plain.mp4"), restore="none", **common),
    ]  # fmt: skip
    write_results(results, tmp_path / RESULTS_FILE)
    cards = _articles(report.write_report(tmp_path).read_text())
    (shown,) = _IMG.findall(cards["sharp"])  # the MP4s are not there: no frames, only the sample
    assert base64.b64decode(shown) == sample
    assert "<i>restore</i> gfpgan on onnxruntime" in cards["sharp"] and "without | with gfpgan" in cards["sharp"]
    assert not _IMG.search(cards["plain"]) and "<i>restore</i>" not in cards["plain"]


def _crafted(path: Path, **columns: pa.Array) -> None:
    """A results table as someone other than heygem-ray might write it: ``columns`` over
    a failed row's defaults."""
    base = {"job_id": pa.array(["j"]), "row": pa.array([1], pa.int64()), "audio": pa.array(["a.wav"]),
            "video": pa.array(["v.mp4"]), "output": pa.array([None], pa.string()), "status": pa.array(["failed"]),
            "error_kind": pa.array(["missing_file"]), "error": pa.array(["gone"])}  # fmt: skip
    pq.write_table(pa.table(base | columns), path / RESULTS_FILE)


def test_a_table_whose_row_holds_markup_is_refused_and_no_page_is_written(tmp_path):
    _crafted(tmp_path, row=pa.array(["<script>alert('row')</script>"]), job_id=pa.array(["<b>j</b>"]))
    for command in ("report", "status"):
        got = runner.invoke(app, [command, str(tmp_path)])
        assert got.exit_code == 2, got.output
        assert f"error: {tmp_path / RESULTS_FILE} is not a heygem-ray results table: its column 'row' holds string, " \
               "not int64" in got.stderr
        assert "<script>" not in got.output
    assert not (tmp_path / report.REPORT_FILE).exists()
    _crafted(tmp_path, row=pa.array([None], pa.int64()))
    got = runner.invoke(app, ["report", str(tmp_path)])
    assert got.exit_code == 2 and "1 row(s) have no row" in got.stderr


def test_every_value_of_a_table_is_read_as_its_declared_type_and_escaped(tmp_path):
    """Columns of another type that hold what the schema says are read as that type (an
    int32 row, text that is a number); every value reaches the page escaped."""
    _crafted(tmp_path, row=pa.array(["7"]), job_id=pa.array(["<b>j</b>"]), error_kind=pa.array(["<i>k</i>"]),
             error_step=pa.array(["</td><script>"]), note=pa.array(["<u>carried</u>"]))  # fmt: skip
    page = report.write_report(tmp_path).read_text()
    assert "<small>row 7</small>" in page and "<tr><td>7</td>" in page
    for raw in ("<b>j</b>", "<i>k</i>", "<script", "<u>carried</u>"):
        assert raw not in page
    assert "&lt;b&gt;j&lt;/b&gt;" in page and "&lt;i&gt;k&lt;/i&gt;" in page and "&lt;u&gt;carried&lt;/u&gt;" in page
    _crafted(tmp_path, row=pa.array([3], pa.int32()))
    assert report.load_run(tmp_path).results[0].row == 3


def test_a_link_to_an_output_elsewhere_is_a_file_url_never_another_scheme(tmp_path):
    """A page written to a bucket links a local output by its file: URL (a table's text
    like 'javascript:…' is a file name, not a script)."""
    r = JobResult(job_id="j", row=1, audio="a.wav", video="v.mp4", output="javascript:alert(1)", status="ok",
                  frames=1, seconds=1.0)  # fmt: skip
    run = report.Run(tmp_path, [r], "complete", 0, datetime.now())
    page = report.build_html(report.summarize(run), [r], {}, Uri.parse("s3://bucket/reports"))
    href = re.search(r'<a class=path href="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    assert href == (Path.cwd() / "javascript:alert(1)").as_uri()


def _ended_pid() -> int:
    """The pid of a process of this machine that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_folder_moved_since_is_read_where_it_is(run_dir, tmp_path):
    """The night's folder, copied (or moved, or mounted) elsewhere since its rows were
    written: the report reads and links the videos in the folder it is given, not where the
    rows say they were; and `status` counts a video deleted or cut short since as not there
    (it said every row's video was there)."""
    moved = Path(shutil.copytree(run_dir, tmp_path / "archive" / "night", ignore=shutil.ignore_patterns("*.html")))
    run = report.load_run(moved)
    assert {j: str(w) for j, w in run.outputs.items()} == {"talk": str(moved / "talk.mp4"), "still": str(moved / "still.mp4")}
    page = report.write_report(moved, tmp_path / "r.html").read_text()
    cards = _articles(page)
    assert 'href="archive/night/talk.mp4"' in cards["talk"] and str(run_dir) not in cards["talk"]
    assert len(_IMG.findall(cards["talk"])) == report.THUMB_COUNT and "not there any more" not in page

    assert "folder    2 of 3 rows have their video" in runner.invoke(app, ["status", str(moved)]).stdout
    (moved / "still.mp4").unlink()
    talk = moved / "talk.mp4"
    talk.write_bytes(talk.read_bytes()[: talk.stat().st_size // 3])
    got = runner.invoke(app, ["status", str(moved)])
    assert ("folder    0 of 3 rows have their video, 0.0 s of video; 2 row(s) whose video is not there any more "
            "(moved or deleted since: rerunning the same command renders them again)") in got.stdout, got.stdout


def test_report_refuses_a_negative_number_of_thumbnails(run_dir, tmp_path):
    got = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r.html"), "--thumbnails", "-1"])
    assert got.exit_code == 2 and "--thumbnails must be 0 or more, got -1" in got.stderr
    assert not (tmp_path / "r.html").exists()


def test_an_unfinished_run_is_read_from_its_part_files(run_dir, tmp_path):
    """As a killed (or still running) driver leaves it: part files, no results.parquet."""
    parts = sorted((run_dir / PARTS_DIR).glob("*.parquet"))
    assert len(parts) == 3
    killed = tmp_path / "killed"
    (killed / PARTS_DIR).mkdir(parents=True)
    kept = [p for p in parts if pq.read_table(p).column("job_id")[0].as_py() != "still"]
    for p in kept:
        shutil.copy(p, killed / PARTS_DIR / p.name)
    shutil.copy(run_dir / "talk.mp4", killed)  # (the video of the row that ended ok)
    got = runner.invoke(app, ["status", str(killed)])
    assert got.exit_code == 3, got.output  # unfinished, whatever its rows say: rows may be missing
    assert ("state     unfinished: the run stopped, before it wrote results.parquet (no run holds the folder now); "
            "rows of the jobs that ended") in got.stdout  # fmt: skip
    assert "Rerunning the same command finishes it" in got.stdout
    # While a run holds the folder (its lock, live), it is said to be going on, and by whom.
    with locks.acquire(killed / RUN_LOCK, "run 3f2a1c of /data/m.csv, 8 rows") as lease:
        going = runner.invoke(app, ["status", str(killed)])
        assert isinstance(lease, locks.Lease)
    assert going.exit_code == 3
    assert (f"state     unfinished: a run is going on: pid {os.getpid()} on {socket.gethostname()} (run 3f2a1c of "
            "/data/m.csv, 8 rows) since ") in going.stdout  # fmt: skip
    assert "last heartbeat 0 s ago; no results.parquet yet" in going.stdout
    # The lock a run killed as it ran left (its process on this machine has ended): named, with its rows.
    pid = _ended_pid()
    (killed / RUN_LOCK).write_bytes(
        dataclasses.replace(locks.Holder.me("run 3f2a1c of /data/m.csv, 8 rows"), pid=pid).encode()
    )
    gone = runner.invoke(app, ["status", str(killed)])
    assert gone.exit_code == 3
    assert (f"state     unfinished: the run ended leaving its lock (it was killed, or its storage failed): pid {pid} "
            f"on {socket.gethostname()} (run 3f2a1c of /data/m.csv, 8 rows) since ") in gone.stdout  # fmt: skip
    assert "before it wrote results.parquet (no run holds the folder now)" in gone.stdout
    assert "rows      2: 1 ok, 1 failed, 0 skipped" in got.stdout
    page = report.write_report(killed).read_text()
    assert "unfinished" in page and set(_articles(page)) == {"talk", "gone"}
    assert len(_IMG.findall(page)) == report.THUMB_COUNT

    # A later run into a finished folder: rows newer than results.parquet are the news.
    later = tmp_path / "later"
    shutil.copytree(run_dir, later, ignore=shutil.ignore_patterns("*.mp4", "*.html"))
    newest = max(p.stat().st_mtime_ns for p in (later / PARTS_DIR).iterdir())
    os.utime(later / RESULTS_FILE, ns=(newest, newest))
    assert report.load_run(later).state == "complete"
    os.utime(later / PARTS_DIR / kept[0].name, ns=(newest + 10**9, newest + 10**9))  # written after the table
    run = report.load_run(later)
    assert run.state == "unfinished" and run.newer_parts == 1 and len(run.results) == 3
    assert "1 row(s) are newer than results.parquet" in report.format_status(report.summarize(run))


@needs_system_package("chromium", CHROMIUM)
def test_the_report_renders_in_a_headless_browser(run_dir, tmp_path):
    page = report.write_report(run_dir, tmp_path / "report.html")
    png = tmp_path / "shot.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900", f"--screenshot={png}",
         page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    shot = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape == (900, 1200, 3)
    assert shot.std() > 20 and (shot < 128).mean() > 0.02  # not blank: text, tiles, pictures
    # The browser drew the thumbnails: the first one is found in the screenshot, as it is.
    thumb = cv2.imdecode(np.frombuffer(base64.b64decode(_IMG.search(page.read_text()).group(1)), np.uint8),
                         cv2.IMREAD_COLOR)  # type: ignore[union-attr]  # fmt: skip
    match = cv2.matchTemplate(shot, thumb, cv2.TM_CCOEFF_NORMED)
    _, best, _, (x, y) = cv2.minMaxLoc(match)
    assert best > 0.9, best
    area = shot[y : y + thumb.shape[0], x : x + thumb.shape[1]]
    assert (area.min(axis=2) < 200).mean() > 0.5  # mostly not white: a picture, not an empty box


def _warned_folder(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A folder as a rerun leaves it, no Ray needed: "talk" rendered by this run, its
    reference warned about; "old" complete from an earlier run (skipped); "gone" failed.
    → the folder, the talk row's MP4, and the mouth box its row names."""
    from tests.helpers.footage import lecture_clip

    out = tmp_path / "out"
    out.mkdir()
    clip = lecture_clip(out / "talk.mp4", size=(640, 400), face=120, seconds=2.0, corner="centre", motion="still")
    mx, my = np.nanmedian(clip.mouths, axis=0)
    box = np.array([mx - 30, my - 20, mx + 30, my + 20]).round().astype(int)
    shutil.copy(clip.path, out / "old.mp4")
    common = {"audio": "a.wav", "video": "p.mp4", "frames": 50, "seconds": 4.0, "realtime_factor": 0.5}
    rows = [
        JobResult(job_id="talk", row=1, output=str(out / "talk.mp4"), status="ok", run_id="r2",
                  reference_notes="mouth_motion: the lips' gap varies by 0.014 face heights (s.d.): the presenter "
                  "talks in the take; faces: 2 faces: <b>x</b>", mouth_box=box.tolist(), **common),
        JobResult(job_id="old", row=2, output=str(out / "old.mp4"), status="skipped", run_id="r1", **common),
        JobResult(job_id="gone", row=3, output=None, status="failed", run_id="r2", error="row 3: gone",
                  error_kind="missing_file", audio="b.wav", video="p.mp4"),
    ]  # fmt: skip
    write_results(rows, out / RESULTS_FILE)
    return out, out / "talk.mp4", box


def test_the_summary_tells_the_folder_from_this_run_and_counts_reference_warnings(tmp_path):
    out, _, _ = _warned_folder(tmp_path)
    got = runner.invoke(app, ["status", str(out)])
    assert got.exit_code == 1, got.output
    text = got.stdout
    assert "folder    2 of 3 rows have their video (1 from an earlier run), 4.0 s of video" in text
    assert "rows      3: 1 ok, 1 failed, 1 skipped" in text
    assert "reference 1 row(s) with warnings about their reference: mouth_motion × 1, faces × 1" in text
    page = report.write_report(out).read_text()
    assert "<b>This folder:</b> 2 of 3 rows have their video (1 from an earlier run)" in page
    assert "<b>This run:</b> 1 rendered, 1 skipped (complete already), 1 failed." in page


def test_each_card_plays_its_video_zooms_on_its_mouth_and_lists_its_warnings(tmp_path):
    out, mp4, box = _warned_folder(tmp_path)
    page = report.write_report(out).read_text()
    cards = _articles(page)
    # The warnings, one per check, escaped; none on the rows without.
    items = re.findall(r"<li>(.*?)</li>", cards["talk"])
    assert items[0].startswith("mouth_motion: the lips&#x27; gap varies") and items[1] == "faces: 2 faces: &lt;b&gt;x&lt;/b&gt;"
    assert "class=warnings" not in cards["old"] and "class=warnings" not in cards["gone"]
    # A player per row with a video, loading nothing until played, its source the row's MP4.
    for job in ("talk", "old"):
        player = re.search(r'<video controls preload=none [^>]*src="([^"]+)"></video>', cards[job])
        assert player is not None and (out / player.group(1)).resolve() == (out / f"{job}.mp4").resolve()
    assert "<video" not in cards["gone"]
    # The mouth, zoomed: the region around the row's mouth box of the middle thumbnail's frame.
    zoom = re.search(r'<img class=mouth src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', cards["talk"])
    assert zoom is not None and "<img class=mouth" not in cards["old"]  # no mouth box: no zoom
    got = cv2.imdecode(np.frombuffer(base64.b64decode(zoom.group(1)), np.uint8), cv2.IMREAD_COLOR)
    frames, _ = media.read_video(mp4)
    middle = frames[int(len(frames) * (report.THUMB_COUNT // 2 + 0.5) / report.THUMB_COUNT)]
    cx, cy, hw, hh = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
    want = middle[round(cy - hh): round(cy + hh), round(cx - hw): round(cx + hw)]
    want = cv2.resize(want, (got.shape[1], got.shape[0]), interpolation=cv2.INTER_CUBIC)
    assert got.shape[0] == report.THUMB_HEIGHT and np.abs(want.astype(np.int16) - got.astype(np.int16)).mean() < 8
    assert len(_IMG.findall(cards["talk"])) == report.THUMB_COUNT  # the zoom comes before the frames


@needs_system_package("chromium", CHROMIUM)
def test_a_report_with_warnings_in_a_headless_browser(tmp_path):
    out, _, _ = _warned_folder(tmp_path)
    page = report.write_report(out)
    png = tmp_path / "warned.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900", f"--screenshot={png}",
         page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    shot = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape == (900, 1200, 3)
    # The warnings' box is drawn (its background, #fff3d6), and the mouth zoom is found as it is.
    assert (np.abs(shot.astype(int) - (0xD6, 0xF3, 0xFF)).sum(axis=2) < 6).sum() > 2000
    zoom_b64 = re.search(r'<img class=mouth src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page.read_text())
    zoom = cv2.imdecode(np.frombuffer(base64.b64decode(zoom_b64.group(1)), np.uint8), cv2.IMREAD_COLOR)  # type: ignore[union-attr]
    _, best, _, _ = cv2.minMaxLoc(cv2.matchTemplate(shot, zoom, cv2.TM_CCOEFF_NORMED))
    assert best > 0.9, best
