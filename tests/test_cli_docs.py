"""Every command and option of the command line is in its ``--help`` and in docs/cli.md.

Read from the typer app itself, so a new option without a line in the docs fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from heygem_ray.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(words after heygem-ray, the command) for every command; typer carries click of its own."""
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += _commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option" and not p.hidden]


def _visible_flags(command: Any) -> list[str]:
    return [flag for p in _options(command) for flag in p.opts if flag.startswith("--") and flag != "--help"]


def test_the_walk_finds_every_command() -> None:
    assert {" ".join(path) for path, _ in COMMANDS} >= {
        "submit", "engines build", "engines list", "doctor", "status", "report"}


def test_every_command_and_option_is_in_the_synopsis_and_the_options_table() -> None:
    page = DOCS.read_text()
    synopsis = page.split("## Usage\n", 1)[1].split("\n| ", 1)[0]
    missing = []
    for path, command in COMMANDS:
        line = f"heygem-ray {' '.join(path)}"
        if line not in synopsis:
            missing.append(line)
        for flag in _visible_flags(command):
            if not re.search(rf"\[{re.escape(flag)}\b", synopsis) or f"`{flag}`" not in page:
                missing.append(f"{line} {flag}")
    assert missing == [], f"missing from docs/cli.md: {missing}"


def test_every_option_has_help_text() -> None:
    bare = [f"{' '.join(path)} {p.opts[0]}" for path, command in COMMANDS for p in _options(command)
            if not p.help and p.opts[0] != "--help"]
    assert bare == []


def test_the_commands_list_fills_each_line_to_the_terminals_width() -> None:
    """Docstrings are wrapped at the source's 88 columns; the help reflows them to the
    terminal's (a short line broken where the source was, then the rest on the next, is
    what keeping their line breaks gave at 80 columns)."""
    shown = CliRunner().invoke(app, ["--help"], terminal_width=80).output
    panel = shown.split("Commands", 1)[1].splitlines()[1:]
    rows = [line[1:-1] for line in panel if line.startswith("│")]  # inside the panel's borders
    start = re.match(r" \S+ +", rows[0]).end()  # the descriptions' column: after the first name and its gap
    width = len(rows[0]) - start - 1  # their room: up to the space before the border
    for row, following in zip(rows, rows[1:], strict=False):
        if following[:start].strip():  # the next command's first line
            continue
        words = following[start:].split()
        assert len(row[start:].rstrip()) + 1 + len(words[0]) > width, (row, following)
