from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.system import MISSING_PACKAGE
from tests.helpers.tiers import mark_by_use

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# OpenMP threads (PyTorch's) that wait asleep, not spinning, in this process and every one
# it starts (Ray's workers, the CLI): `make test` runs two test processes on two cores
# beside Ray's, and spinning threads took the time the others needed (BENCHMARKS.md,
# "Threads that wait"). Set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pytester: tests/test_system_packages.py runs pytest on a test file of its own;
# tests.helpers.s3: the S3 server fixtures (s3_server, s3_env, bucket).
pytest_plugins = ["pytester", "tests.helpers.s3"]


@pytest.fixture(scope="session")
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def musetalk_folder(tmp_path_factory) -> Path:
    """A MuseTalk ``models/`` folder in the public layout: seeded, small (tests/helpers/musetalk_ckpt.py)."""
    from tests.helpers.musetalk_ckpt import write_models

    return write_models(tmp_path_factory.mktemp("musetalk") / "models", seed=0)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the tests that need Ray."""
    import ray

    # "local": always a new instance, never the cluster another process on this machine
    # started (ray.init() without an address would join the latest `ray start`/Cluster).
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_join(ray_local) -> dict[str, str]:
    """The environment of a child (`heygem-ray submit`, a script calling ``submit``) that
    joins ``ray_local``'s instance through ``RAY_ADDRESS`` instead of starting its own:
    about 7 CPU-s and 4 s less a run on two cores. Only for runs that do not test how Ray
    starts, and whose Ray workers need nothing from the child's environment (they get the
    instance's: a variable for the workers needs an instance of its own, or a runtime_env).
    Ray set ``RAY_AUTH_MODE=token`` here when it started the instance; children inherit it."""
    return {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(name, size="64k", read_only=False)``: a fresh tmpfs at ``tmp_path/name`` (a
    small disk that fills, or a read-only one; the tests run as root, and are skipped where
    mounting is not permitted)."""
    mounted: list[Path] = []

    def make(name: str, size: str = "64k", read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the test needs root and mount permission")
        mounted.append(where)
        return where

    yield make
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


# tryfirst: before pytest-xdist's own hook, which reads the xdist_group markers to group
# the tests (a marker added after it groups nothing: each test went to either worker, and
# a module's fixtures were built on both).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it uses (tests/helpers/tiers.py): ``make check`` runs those
    that need no Ray, no cluster, no int8 calibration, no end-to-end render and no ONNX export."""
    for item in items:
        mark_by_use(item)


# optionalhook: pytest-xdist's hook, on the process that hands out the tests.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Stop a ``--dist loadgroup`` run unless each test's id a worker collected carries its
    group (``id@group``), which is all that tells the scheduler: pytest 9.2 drops it."""
    if node.config.getvalue("dist") != "loadgroup":
        return
    # The scheduler's own rule: a group is what follows an "@" after the last "]".
    loose = [nodeid for nodeid in ids if nodeid.rfind("@") <= nodeid.rfind("]")]
    if loose:
        pytest.exit(
            f"pytest-xdist did not group {len(loose)} tests (the first: {loose[0]}): with pytest "
            f"{pytest.__version__} --dist loadgroup groups nothing (pytest-dev/pytest-xdist#1386); install the "
            "versions constraints.txt pins (make setup)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


# tryfirst makes this the outermost wrapper: its lines follow pytest's own sections
# (failures, the -ra list) and come last before the counts line.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None, None, None]:
    """End the run by naming the tests a missing system package skipped, and its install command."""
    yield
    skipped: dict[str, list[str]] = {}  # install command -> node ids
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        if found := MISSING_PACKAGE.search(reason):
            skipped.setdefault(found["install"], []).append(report.nodeid)
    if skipped:
        terminalreporter.write_sep("-", "skipped: a system package is missing")
        for install, nodeids in skipped.items():
            terminalreporter.write_line("\n".join(nodeids))
            terminalreporter.write_line(f"install it: {install}")
