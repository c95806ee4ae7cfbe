"""Test tiers, marked from what each test uses, never by hand.

``make check`` runs the tests none of these markers apply to (seconds to a couple of
minutes on two cores); ``make test`` runs every test. A test gets a marker when it, or a
fixture it requests (directly or through other fixtures), or a function of the tests
package either of them calls, names one of the things below:

* ``cluster``: ``RayStart``, a cluster started with ``ray start`` (tests/helpers/raystart.py);
* ``ray``: the session's local Ray instance (``ray_local``), or a run that starts one:
  ``submit`` (the Python API, also in a script a test runs with ``python -c``), the CLI's
  ``submit`` command (the word in an argument list), ``ray.init(``, ``jobs/nightly.py`` run
  as a script (``run_nightly``);
* ``int8``: calibration data (``calibration_set``), which an int8 graph is built from;
* ``render``: a job rendered end to end (``render_job`` on a ``ModelWorker``, in this
  process or in a script it runs), or real footage tracked (``track_footage``);
* ``networks``: a pack's networks built and run beyond one small forward pass: exported to
  ONNX and opened (``export_onnx``, ``onnx_artifact``, ``open_runners``, the CLI's
  ``engines`` commands) or MuseTalk's three (``musetalk_folder``): seconds each.

The scan reads names and string constants out of the functions' code objects (nested
functions and lambdas included), and the text of the tests package's module-level strings
they name (scripts run in a subprocess); it follows calls into the tests package, not into
heygem_ray.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# marker → (names a test's code or its fixtures use, a pattern its strings match)
TRIGGERS: dict[str, tuple[frozenset[str], re.Pattern[str] | None]] = {
    "cluster": (frozenset({"RayStart"}), None),
    "ray": (frozenset({"ray_local", "submit", "run_nightly"}), re.compile(r"^submit$|\bsubmit\(|\bray\.init\(")),
    "int8": (frozenset({"calibration_set"}), None),
    "render": (frozenset({"render_job", "ModelWorker", "track_footage"}), re.compile(r"\brender_job\(")),
    "networks": (frozenset({"export_onnx", "open_runners", "onnx_artifact", "musetalk_folder"}), re.compile(r"^engines$")),
}
TIER_MARKERS = tuple(TRIGGERS)


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _function(obj: Any) -> Callable[..., Any] | None:
    """The plain function behind ``obj`` (a fixture's wrapper, a method), if any."""
    obj = inspect.unwrap(obj) if callable(obj) else obj
    obj = getattr(obj, "__func__", obj)
    return obj if isinstance(obj, types.FunctionType) else None


def uses(functions: list[Any]) -> tuple[set[str], set[str]]:
    """(names, string constants) in the code of ``functions`` and of the tests package's
    functions they call, transitively."""
    names: set[str] = set()
    strings: set[str] = set()
    seen: set[types.CodeType] = set()
    todo = [f for f in map(_function, functions) if f is not None]
    while todo:
        func = todo.pop()
        if func.__code__ in seen:
            continue
        seen.add(func.__code__)
        for code in _code_objects(func.__code__):
            names.update(code.co_names)
            strings.update(c for c in code.co_consts if isinstance(c, str))
            for name in code.co_names:
                value = func.__globals__.get(name)
                if isinstance(value, str) and func.__module__.split(".")[0] == "tests":
                    strings.add(value)  # a script the test runs, say
                target = _function(value)
                if target is not None and target.__module__.split(".")[0] == "tests":
                    todo.append(target)
    return names, strings


def markers_for(item: pytest.Item) -> set[str]:
    """The tier markers ``item`` earns by what it uses."""
    function = getattr(item, "function", None)
    info = getattr(item, "_fixtureinfo", None)
    fixtures = set(getattr(item, "fixturenames", ()))
    functions: list[Any] = [function] if function is not None else []
    if info is not None:
        for defs in info.name2fixturedefs.values():
            functions.extend(d.func for d in defs)
    names, strings = uses(functions)
    names |= fixtures
    return {
        marker for marker, (by_name, pattern) in TRIGGERS.items()
        if names & by_name or (pattern is not None and any(pattern.search(s) for s in strings))
    }


def xdist_group(item: pytest.Item, markers: set[str]) -> str:
    """The group whose tests one pytest-xdist worker runs in order (``--dist loadgroup``):
    the ``ray start`` clusters one at a time (two at once would only fight over the cores
    and their start-up timeouts), every other test with its module, so that a module's
    fixtures are built once."""
    return "cluster" if "cluster" in markers else item.nodeid.split("::")[0]


def mark_by_use(item: pytest.Item) -> None:
    markers = markers_for(item)
    for marker in sorted(markers):
        item.add_marker(getattr(pytest.mark, marker))
    item.add_marker(pytest.mark.xdist_group(xdist_group(item, markers)))
