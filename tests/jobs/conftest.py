from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.jobs import NIGHTLY


@pytest.fixture(scope="session")
def nightly() -> ModuleType:
    """jobs/nightly.py, loaded from its path: jobs/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location("heygem_jobs_nightly", NIGHTLY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
