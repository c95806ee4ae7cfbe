"""A run without a system package ends by naming the tests it skipped and the install command."""

from __future__ import annotations

import re


def test_the_run_ends_with_the_tests_a_missing_system_package_skipped(pytester):
    pytester.makeconftest("from tests.conftest import pytest_terminal_summary")
    pytester.makepyfile(
        test_needs="""
import sys
from pathlib import Path

import pytest

from tests.helpers.system import needs_system_package


@needs_system_package("nosuchpackage", Path("/nonexistent/nosuchprogram"))
def test_missing():
    pass


@needs_system_package("python3", Path(sys.executable))
def test_present():
    pass


def test_skipped_for_another_reason():
    pytest.skip("no GPU here")
"""
    )
    result = pytester.runpytest("-q", "-ra")  # -ra: pytest's own list of skips comes first
    result.assert_outcomes(passed=1, skipped=2)
    *_, title, nodeid, install, counts = result.outlines
    assert "skipped: a system package is missing" in title
    assert nodeid == "test_needs.py::test_missing"
    assert install == "install it: apt-get install nosuchpackage"
    assert re.fullmatch(r"1 passed, 2 skipped in .*", counts)
