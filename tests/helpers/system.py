"""Tests that need a program from a system package, one that pip cannot install.

Where the program is missing they skip with a reason of one form, ``MISSING_PACKAGE``;
tests/conftest.py collects those skips at the end of the run and prints the command that
installs each package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

MISSING_PACKAGE = re.compile(r"needs system package \S+ \(.*\): (?P<install>.+)$")


def needs_system_package(package: str, program: Path) -> pytest.MarkDecorator:
    """Skip the test unless ``program``, which Debian's ``package`` installs, is present."""
    return pytest.mark.skipif(
        not program.exists(), reason=f"needs system package {package} ({program}): apt-get install {package}"
    )
