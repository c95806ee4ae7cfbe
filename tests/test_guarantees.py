"""What an unattended run promises (DESIGN.md, "Guarantees"), each tried the way it breaks:

* no credential is ever written: a URI with one in it is refused wherever it is given,
  and the secret appears in no table, log, page, run.json or console line;
* a disk that is full or read-only, or a folder the run may not write, is the user's
  error (kind ``storage``, saying what to do), never ``internal``; as the output folder,
  it stops the run before Ray is even started.

Full and read-only disks are real tmpfs mounts (the tests run as root; where mounting is
not permitted they are skipped). Root is refused nothing by file modes, so "permission
denied" comes from a process without capabilities (setpriv).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from heygem_ray import media
from heygem_ray.cli import app
from heygem_ray.errors import InputError
from tests.helpers.footage import lecture_clip, with_camera_noise
from tests.helpers.media import make_excerpt
from tests.helpers.raystart import RayStart
from tests.jobs import NIGHTLY

REPO = Path(__file__).resolve().parents[1]
HEYGEM = str(Path(sys.executable).with_name("heygem-ray"))
# An AWS key pair in the form AWS documents its examples in (a "/" and a "+" in the secret),
# and the fragments of it that must appear nowhere.
KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FRAGMENTS = (KEY_ID, "wJalrXUtnFEMI", "K7MDENG", "bPxRfiCYEXAMPLEKEY")
KEYED = f"s3://{KEY_ID}:{SECRET}@lessons"


def assert_no_secret(where: str, data: str | bytes) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    found = [f for f in FRAGMENTS if f in text]
    assert not found, f"{where} holds {found}"


def _env() -> dict[str, str]:
    """A child's environment: its own local Ray."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _fill(folder: Path) -> None:
    """Write into ``folder`` until its disk is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28, exc


@pytest.fixture
def lesson(tmp_path: Path, examples: Path) -> Path:
    """A manifest of one small row (a second of speech on a still photo) in ``tmp_path``."""
    make_excerpt(examples / "lesson1.wav", tmp_path / "a.wav", seconds=1.0)
    shutil.copy(examples / "presenter.jpg", tmp_path / "p.jpg")
    (tmp_path / "m.csv").write_text("job_id,audio,video\none,a.wav,p.jpg\n")
    return tmp_path / "m.csv"


# -- credentials ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_run(tmp_path_factory, examples) -> dict:
    """A manifest with credentials in three cells, run by the CLI, reported on, and run by
    the nightly job, both on one Ray instance of this fixture's, whose files (its logs)
    are kept in one place to search."""
    d = tmp_path_factory.mktemp("keyed")
    make_excerpt(examples / "lesson1.wav", d / "a.wav", seconds=1.0)
    shutil.copy(examples / "presenter.jpg", d / "p.jpg")
    rows = [
        "good,a.wav,p.jpg,",
        f"audio,{KEYED}/a.wav,p.jpg,",
        f"output,a.wav,p.jpg,{KEYED}/out/o.mp4",
        f",{KEYED},p.jpg,",  # no job id: one is derived from the cells, never from the secret
    ]
    (d / "m.csv").write_text("job_id,audio,video,output\n" + "\n".join(rows) + "\n")
    common = ["--cache-dir", str(d / "cache"), "--engines", str(d / "engines")]
    with RayStart() as cluster:  # stopped before the tests read its logs
        cluster.head(num_cpus=2)
        ray_env = cluster.env() | {"RAY_ADDRESS": cluster.address}
        submit = _run([HEYGEM, "submit", "m.csv", "-o", "out", *common], d, ray_env)
        made = _run([HEYGEM, "report", "out", "--thumbnails", "0"], d)
        nightly = _run([sys.executable, str(NIGHTLY), "m.csv", "nights", "--date", "2026-01-02", *common], d, ray_env)
    yield {"dir": d, "ray_tmp": cluster.temp, "submit": submit, "report": made, "nightly": nightly}
    shutil.rmtree(cluster.temp, ignore_errors=True)


def test_cells_with_credentials_fail_their_rows_with_the_uri_shown_without_them(keyed_run):
    d, proc = keyed_run["dir"], keyed_run["submit"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = pq.read_table(d / "out" / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "failed"]
    for r, cell in zip(rows[1:], ["'audio' cell s3://***@lessons/a.wav", "'output' cell s3://***@lessons/out/o.mp4",
                                  "'audio' cell s3://***@lessons"], strict=True):  # fmt: skip
        assert r["error_kind"] == "credentials_in_uri"
        assert f"): the {cell}: credentials inside a URI are refused" in r["error"]
        assert "AWS_ACCESS_KEY_ID" in r["error"] and "GOOGLE_APPLICATION_CREDENTIALS" in r["error"]
    assert len(media.read_video(d / "out" / "good.mp4")[0]) == rows[0]["frames"] == 25


def test_the_secret_is_written_nowhere(keyed_run):
    d = keyed_run["dir"]
    for name in ("submit", "report", "nightly"):
        proc = keyed_run[name]
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
        assert_no_secret(f"{name}'s stdout", proc.stdout)
        assert_no_secret(f"{name}'s stderr", proc.stderr)
    assert "s3://***@lessons/a.wav" in keyed_run["nightly"].stdout  # its log names the row, as the CLI does
    written = [p for p in d.rglob("*") if p.is_file() and p.name != "m.csv"]
    names = {p.name for p in written}
    assert {"results.parquet", "report.html", "run.json"} <= names
    assert sum(p.suffix == ".parquet" for p in written) == 10  # two tables and their rows' part files
    for path in written:
        assert_no_secret(str(path), path.read_bytes())
    logs = [p for p in keyed_run["ray_tmp"].rglob("*") if p.is_file() and "logs" in p.parts]
    assert any(p.name.startswith("worker-") for p in logs)
    assert any(b"credentials_in_uri" in p.read_bytes() for p in logs)  # the job tasks' lines were kept here
    for path in logs:
        assert_no_secret(str(path), path.read_bytes())


@pytest.mark.parametrize(
    "args",
    [
        ["submit", f"{KEYED}/m.csv"],
        ["submit", "m.csv", "-o", f"{KEYED}/out"],
        ["submit", "m.csv", "--engines", f"{KEYED}/engines"],
        ["submit", "m.csv", "--cache-dir", f"{KEYED}/templates"],
        ["submit", "m.csv", "--calibrate", f"{KEYED}/calibration.csv", "--precision", "int8"],
        ["engines", "build", "--store", f"{KEYED}/engines"],
        ["engines", "list", "--store", f"{KEYED}/engines"],
        ["status", f"{KEYED}/out"],
        ["report", f"{KEYED}/out"],
    ],
)
def test_a_command_given_credentials_in_a_uri_stops_at_once_without_repeating_them(lesson, args):
    got = CliRunner().invoke(app, [str(lesson) if a == "m.csv" else a for a in args])
    assert got.exit_code == 2, got.output
    assert got.stderr.startswith("error: s3://***@lessons/") and got.stderr.count("\n") == 1
    assert "credentials inside a URI are refused" in got.stderr
    assert_no_secret("the command's output", got.output)
    assert not (lesson.parent / "out").exists()


@pytest.mark.parametrize("where", ["manifest", "output_root", "--engines"])
def test_the_nightly_job_refuses_credentials_in_its_arguments_without_repeating_them(lesson, where):
    args = {"manifest": [f"{KEYED}/m.csv", "nights"], "output_root": ["m.csv", f"{KEYED}/nights"],
            "--engines": ["m.csv", "nights", "--engines", f"{KEYED}/engines"]}[where]  # fmt: skip
    proc = _run([sys.executable, str(NIGHTLY), *args], lesson.parent)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "credentials inside a URI are refused" in proc.stderr and "Traceback" not in proc.stderr
    assert_no_secret("nightly's stderr", proc.stderr + proc.stdout)
    assert not (lesson.parent / "nights").exists()


# -- storage -------------------------------------------------------------------------------


def test_an_output_folder_on_a_full_disk_stops_the_run_before_ray_starts(lesson, mount):
    disk = mount("full")
    _fill(disk)
    proc = _run([HEYGEM, "submit", "m.csv", "-o", str(disk / "out")], lesson.parent)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == (f"error: cannot write into the output folder {disk / 'out'}: no space left on device; "
                           "free space on that disk, or choose a folder on another one\n")  # fmt: skip
    assert proc.stdout == "" and not (disk / "out").exists()  # the folder it made to try is gone again


def test_a_read_only_output_folder_stops_the_run_and_the_nightly_job_before_ray_starts(lesson, mount):
    """A folder to make, and one that is there: both named (not the file the run tried to
    write into the second, which an audit found named in its place)."""
    disk = mount("ro", read_only=True)
    for out in (disk / "out", disk):
        proc = _run([HEYGEM, "submit", "m.csv", "-o", str(out)], lesson.parent)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr == (f"error: cannot write into the output folder {out}: read-only file system; remount "
                               "that file system read-write, or choose a folder on a writable one\n")  # fmt: skip
    night = _run([sys.executable, str(NIGHTLY), "m.csv", str(disk), "--date", "2026-01-02"], lesson.parent)
    assert night.returncode == 2, night.stderr[-3000:]
    assert night.stderr == f"error: cannot write into the output folder {disk / '2026-01-02'}: read-only file " \
                           "system; remount that file system read-write, or choose a folder on a writable one\n"
    assert "could not start: nothing was rendered" in night.stdout and "run.json not written" in night.stdout


def test_a_temporary_folder_too_full_for_a_local_ray_stops_the_run_at_once_saying_so(lesson, mount):
    """TMPDIR on a disk with 1 MiB free, where a local Ray instance keeps its session: Ray
    tried for 90 s, then the run ended in its traceback with exit 1 (found by an audit). Now
    one line naming the folder and RAY_TMPDIR, exit 2, at once, and nothing written."""
    disk = mount("tmp", size="1m")
    env = {k: v for k, v in _env().items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")} | {"TMPDIR": str(disk)}
    proc = _run([HEYGEM, "submit", "m.csv", "-o", "out"], lesson.parent, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.fullmatch(
        rf"error: {re.escape(str(disk / 'ray'))}: only [0-9.]+ (KiB|MiB) free, where a local Ray instance keeps its "
        r"session and its workers' logs \(it needs 64 MiB or more\): free space on that disk, or give RAY_TMPDIR a "
        r"folder on another one \(it comes before TMPDIR, which macOS's Ray does not read\)\n", proc.stderr,
    ), proc.stderr[-3000:]
    assert not (lesson.parent / "out" / "results.parquet").exists() and not (disk / "ray").exists()


def test_an_output_folder_that_is_a_file_stops_the_run_before_ray_starts(lesson):
    """`-o notes.txt` (or a path through a file): one line and exit 2, where a traceback
    ended in FileExistsError with exit 1 ("some rows failed")."""
    folder = lesson.parent
    (folder / "notes.txt").write_text("my notes\n")
    proc = _run([HEYGEM, "submit", "m.csv", "-o", "notes.txt"], folder)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == ("error: cannot write into the output folder notes.txt: file exists; a file is there "
                           "where the run makes a folder: move it away, or choose another path\n")  # fmt: skip
    proc = _run([HEYGEM, "submit", "m.csv", "-o", "notes.txt/out"], folder)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "not a directory; a part of that path is a file" \
        in proc.stderr, proc.stderr[-3000:]
    assert (folder / "notes.txt").read_text() == "my notes\n"


def test_an_output_folder_through_a_loop_of_links_or_in_proc_stops_the_run_in_one_line(lesson):
    """Where a traceback ended the run with exit 1 (found by an audit): a path through a
    link to itself (Python 3.11's RuntimeError "Symlink loop"), and a folder that cannot be
    made (/proc takes none)."""
    folder = lesson.parent
    (folder / "loop").symlink_to("loop")
    proc = _run([HEYGEM, "submit", "m.csv", "-o", "loop/out"], folder)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == ("error: cannot write into the output folder loop/out: too many levels of symbolic links; "
                           "a symbolic link on that path leads back to itself (a loop of links): fix or remove the "
                           "link, or choose another path\n")  # fmt: skip
    proc = _run([HEYGEM, "submit", "m.csv", "-o", "/proc/heygem-out"], folder)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == ("error: cannot write into the output folder /proc/heygem-out: no such file or directory; "
                           "choose another folder\n")  # fmt: skip


def test_a_cache_folder_that_is_a_file_stops_the_run_before_ray_starts(lesson):
    """`--cache-dir notes.txt` (or a path through it): every row failed `storage` one by
    one after the workers started, naming the path but not the option (found by an audit;
    a thousand rows, a thousand failures). Now one line and exit 2, before Ray."""
    folder = lesson.parent
    (folder / "cache").write_text("not a folder\n")
    for given in ("cache", "cache/templates"):
        proc = _run([HEYGEM, "submit", "m.csv", "-o", "out", "--cache-dir", given], folder)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr == (f"error: the template cache (--cache-dir) {folder / given} cannot be made: "
                               f"{folder / 'cache'} is a file; move it away, or give --cache-dir a folder\n")
        assert not (folder / "out" / "results.parquet").exists()
    assert (folder / "cache").read_text() == "not a folder\n"
    # A cache under a folder this user may not look into: the nodes' users may; the run was
    # stopped by a PermissionError's traceback (found by a review). It goes on.
    if shutil.which("setpriv") is not None:
        others = folder / "others"
        others.mkdir(mode=0o700)
        os.chown(others, 65534, 65534)
        check = ("import sys; from pathlib import Path; from heygem_ray.driver.run import _refuse_cache_file; "
                 "_refuse_cache_file(Path(sys.argv[1]))")  # fmt: skip
        proc = _run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--", sys.executable, "-c", check,
                     str(others / "cache")], folder)  # fmt: skip
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr[-2000:]

def test_a_folder_the_user_may_not_write_says_so(lesson, tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: a process without capabilities cannot be started")
    others = tmp_path / "others"
    others.mkdir(mode=0o755)
    os.chown(others, 65534, 65534)  # nobody's, and not writable by the rest
    proc = _run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--", HEYGEM, "submit", "m.csv", "-o",
                 str(others / "out")], lesson.parent)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: cannot write into the output folder {others / 'out'}: permission denied; "
                                  "give the user the run runs as access")  # fmt: skip


def test_a_full_template_cache_fails_the_rows_as_storage_not_internal(lesson, mount, ray_join):
    cache = mount("cache", size="32k")
    out = lesson.parent / "out"
    proc = _run([HEYGEM, "submit", "m.csv", "-o", str(out), "--cache-dir", str(cache)], lesson.parent, ray_join)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert (row["status"], row["error_kind"], row["error_step"]) == ("failed", "storage", "analyze")
    assert row["error"].startswith(f"row 1 (job 'one'): {cache}")
    assert "no space left on device; free space on that disk" in row["error"]


def test_a_reference_too_large_for_the_cache_disk_fails_its_row_and_not_the_others(lesson, mount, ray_join):
    """Three rows on one small cache disk (40 MiB): a noisy 720p take whose analysis would
    take about 80 MiB fails at its first second, saying how much it needs and what to do
    (before, it wrote until the disk was full: "no space left on device"), and leaves
    nothing; the two others (a short clip, a photo) render."""
    folder = lesson.parent
    big = with_camera_noise(lecture_clip(folder / "clean.mp4", size=(1280, 720), face=128, seconds=4), folder / "big.mp4")
    lecture_clip(folder / "small.mp4", size=(320, 240), face=80, seconds=2, corner="centre")
    (folder / "m.csv").write_text("job_id,audio,video\nbig,a.wav,big.mp4\nsmall,a.wav,small.mp4\nphoto,a.wav,p.jpg\n")
    cache = mount("cache", size="40m")
    out = folder / "out"
    proc = _run([HEYGEM, "submit", "m.csv", "-o", str(out), "--cache-dir", str(cache)], folder, ray_join)
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = {r["job_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert (rows["small"]["status"], rows["photo"]["status"]) == ("ok", "ok"), rows
    assert (rows["big"]["error_kind"], rows["big"]["error_step"]) == ("storage", "analyze")
    assert rows["big"]["error"].startswith(f"row 1 (job 'big'): reference {big.path}: its analysis would take about ")
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # nothing left of it


def test_an_engine_store_on_a_read_only_disk_stops_the_run_with_its_words(lesson, mount, ray_join):
    """The model workers cannot write the engines they export: the run stops at once
    with their error (not after --start-timeout as workers that never serve)."""
    store = mount("engines", read_only=True)
    out = lesson.parent / "out"
    proc = _run([HEYGEM, "submit", "m.csv", "-o", str(out), "--backend", "onnxruntime", "--engines", str(store),
                 "--cache-dir", str(lesson.parent / "cache"), "--start-timeout", "300"], lesson.parent,
                ray_join)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    # The command's own last line (Ray may stream the workers' log lines after it).
    last = [line for line in proc.stderr.splitlines() if line.startswith("error: ")][-1]
    assert last.startswith(f"error: {store}/") and "read-only file system; remount that file system" in last
    assert not (out / "results.parquet").exists()


def test_a_results_table_that_cannot_be_written_after_every_job_ended_says_so_and_a_rerun_writes_it(lesson, ray_join):
    """Every row rendered, then the table could not be put in place (here a folder where it
    goes): the run said it "could not start", exit 2. Now exit 1, naming the table and that
    the rows are kept; once the path is free, the same manifest renders nothing and writes it."""
    folder = lesson.parent
    out = folder / "out"
    (out / "results.parquet").mkdir(parents=True)
    args = [HEYGEM, "submit", "m.csv", "-o", str(out), "--cache-dir", str(folder / "cache")]
    proc = _run(args, folder, ray_join)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.startswith("error: ")][-1]
    assert last.startswith(f"error: all 1 jobs ended and their rows are kept (in {out / '.heygem-results'}), but the "
                           f"results table {out / 'results.parquet'} could not be written: "), last
    assert last.endswith("run the same manifest again: it renders nothing again, and writes the table"), last
    assert len(media.read_video(out / "one.mp4")[0]) == 25
    (out / "results.parquet").rmdir()
    again = _run(args, folder, ray_join)
    assert again.returncode == 0, again.stderr[-3000:]
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "skipped", row


def test_a_read_only_home_cache_costs_the_input_digests_their_cache_and_nothing_else(lesson, mount, ray_join):
    """``$XDG_CACHE_HOME`` on a read-only disk (a pod with ``readOnlyRootFilesystem``, its
    templates and engines on a shared volume): the digests of the inputs and weights are
    kept there to spare hashing them again, and only that is lost; before, the first digest
    not kept stopped the run with every row ``stopped``."""
    home = mount("home", read_only=True)
    folder = lesson.parent
    out = folder / "out"
    args = [HEYGEM, "submit", "m.csv", "-o", str(out), "--cache-dir", str(folder / "cache"), "--engines",
            str(folder / "engines")]  # fmt: skip
    proc = _run(args, folder, ray_join | {"XDG_CACHE_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "ok" and row["audio_identity"].startswith("sha256:"), row
    again = _run(args, folder, ray_join | {"XDG_CACHE_HOME": str(home)})  # the digests made again: still the same
    assert again.returncode == 0 and "0 of 1 jobs rendered" in again.stdout and "1 skipped" in again.stdout, again.stdout


ENCODE_UNDER_A_LIMIT = """
import resource, sys
import numpy as np
from pathlib import Path
from heygem_ray import media
from heygem_ray.errors import InputError

resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))  # ulimit -f 16: the encoder inherits it
frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)
try:
    with media.VideoWriter(Path(sys.argv[1]), width=320, height=240, fps=25, audio=Path(sys.argv[2]),
                           duration=1.0) as writer:
        for _ in range(25):
            writer.write(frame)
except InputError as exc:
    print(exc.kind, exc.message)
"""


def test_an_mp4_past_a_file_size_limit_is_a_storage_error_saying_so(tmp_path, examples):
    """``ulimit -f`` (or a quota that limits a file's size): the kernel stops ffmpeg with
    SIGXFSZ, which says nothing; that was an ``encode`` error telling to check the audio."""
    out = tmp_path / "x.mp4"
    proc = subprocess.run([sys.executable, "-c", ENCODE_UNDER_A_LIMIT, str(out), str(examples / "lesson1.wav")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.stdout.startswith(f"storage {out}: file too large; the file would be larger than this process may "
                                  "write there (a limit set with ulimit -f"), proc.stdout + proc.stderr[-2000:]
    assert not out.exists()


def test_an_mp4_that_does_not_fit_is_a_storage_error_naming_its_folder(mount, examples):
    disk = mount("small", size="16k")
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)  # noise: it does not compress
    with pytest.raises(InputError) as info:
        with media.VideoWriter(disk / "x.mp4", width=320, height=240, fps=25, audio=examples / "lesson1.wav",
                               duration=1.0) as writer:  # fmt: skip
            for _ in range(25):
                writer.write(frame)
    assert info.value.kind == "storage"
    assert info.value.message.startswith(f"{disk}: no space left on device; free space on that disk")
    assert not (disk / "x.mp4").exists()

