from __future__ import annotations

import logging
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the tests that need Ray."""
    import ray

    # "local": always a new instance, never the cluster another process on this machine
    # started (ray.init() without an address would join the latest `ray start`/Cluster).
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
