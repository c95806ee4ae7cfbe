"""A fresh clone stands alone: no tracked file names a path outside the repository.

On the project's own machines folders sit beside the checkout (../shared, ../.library,
all under /work/); in a clone of the repository they do not, so code, tests, benchmarks
and docs must not reach for them. .ci/run tests a clone with nothing beside it; this test
names the offending file and line on any machine.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

# Folders beside the checkout on the project's machines, and those machines' root.
_OUTSIDE = re.compile(r"\.\./+(?:shared|\.library)\b|(?<![\w.~-])/work/")
# Walking up from the file's own location: Path(__file__).parents[N] or .parent.parent…
# in Python, "$(dirname "$0")/../.." in shell.
_PY_UP = re.compile(
    r"__file__\)(?:\.resolve\(\)|\.absolute\(\))?(?:\.parents\[(?P<n>\d+)\]|(?P<chain>(?:\.parent\b)+))"
)
_SH_UP = re.compile(r"\$\(dirname \"?\$0\"?\)(?P<dots>(?:/\.\.)+)")
# A relative link in Markdown: [text](path), not a URL (scheme:) or an anchor (#).
_MD_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)(?P<target>[^)\s#]+)")


def escapes(name: str, text: str) -> list[str]:
    """``name:line: text`` for each line of the tracked file ``name`` that leaves the repository."""
    depth = len(Path(name).parts)  # levels from the file up to the repository root
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        links = [m["target"] for m in _MD_LINK.finditer(line)] if name.endswith(".md") else []
        if (
            _OUTSIDE.search(line)
            or any(levels > depth for levels in _levels_up(line))
            or any(_above_root(name, target) for target in links)
        ):
            found.append(f"{name}:{number}: {line.strip()}")
    return found


def _levels_up(line: str) -> list[int]:
    """How many folders up from its own file each walk on the line goes (its folder: 1)."""
    python = [int(m["n"]) + 1 if m["n"] else m["chain"].count(".parent") for m in _PY_UP.finditer(line)]
    return python + [1 + m["dots"].count("..") for m in _SH_UP.finditer(line)]


def _above_root(name: str, target: str) -> bool:
    """Whether the relative path ``target``, written in the file ``name``, leads above the root."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(name), target)).split("/")[0] == ".."


def _tracked_text_files() -> list[tuple[str, str]]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    files = []
    for name in filter(None, names.split("\0")):
        data = (REPO / name).read_bytes()
        if b"\0" not in data[:8000]:  # git's own test for a binary file
            files.append((name, data.decode("utf-8", errors="replace")))
    return files


def test_no_tracked_file_reaches_outside_the_repository():
    files = _tracked_text_files()
    assert any(name == "README.md" for name, _ in files)  # the scan read the checkout
    # This file's own examples below are the escapes it looks for.
    found = [hit for name, text in files if name != THIS for hit in escapes(name, text)]
    assert found == [], "paths outside the repository (absent from a fresh clone):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("README.md", "See `../shared/DESIGN.md` for the intended shape."),
        ("Makefile", "\tcp ../.library/env/packages/pypi.txt ."),
        ("bench/bench_x.py", 'SPEC = Path("/work/shared/specs/wav2lip_state_dict.json")'),
        ("tests/helpers/x.py", 'SPECS = Path(__file__).resolve().parents[3] / "shared" / "specs"'),
        ("tests/x.py", "ROOT = Path(__file__).parent.parent.parent"),
        (".ci/run", 'cd "$(dirname "$0")/../.."'),
        ("docs/guide.md", "the [design](../../DESIGN.md#stages)"),
    ],
)
def test_an_escape_is_found(name: str, line: str):
    assert escapes(name, f"first line\n{line}\n") == [f"{name}:2: {line.strip()}"]


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("tests/helpers/x.py", 'NIGHTLY = Path(__file__).resolve().parents[2] / "jobs" / "nightly.py"'),
        ("tests/x.py", "ROOT = Path(__file__).parent.parent"),
        ("tests/test_submit.py", '"outside,speech.wav,presenter.jpg,../../x.mp4",'),  # manifest data
        (".ci/run", 'cd "$(dirname "$0")/.."'),
        ("README.md", "[BENCHMARKS.md](BENCHMARKS.md#memory), [web](https://example.com/work/x)"),
        ("docs/guide.md", "[readme](../README.md)"),
        ("jobs/rayjob.yaml", "- {name: shared, mountPath: /shared}  # ~/work/x, ./work/y"),
    ],
)
def test_a_path_inside_the_repository_is_not_an_escape(name: str, line: str):
    assert escapes(name, line) == []
