from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
import yaml

from tests.jobs import NIGHTLY, RAYCRONJOB_YAML, RAYJOB_YAML


@pytest.fixture(scope="session")
def nightly() -> ModuleType:
    """jobs/nightly.py, loaded from its path: jobs/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location("heygem_jobs_nightly", NIGHTLY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def rayjob() -> dict:
    """jobs/rayjob.yaml: one night as a KubeRay RayJob."""
    return yaml.safe_load(RAYJOB_YAML.read_text())


@pytest.fixture(scope="session")
def raycronjob() -> dict:
    """jobs/raycronjob.yaml: every night, as a KubeRay RayCronJob."""
    return yaml.safe_load(RAYCRONJOB_YAML.read_text())
