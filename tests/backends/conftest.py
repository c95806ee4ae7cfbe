from __future__ import annotations

import pytest
import torch
from torch import nn

from heygem_ray.engines import EngineStore
from heygem_ray.packs import get_pack
from tests.helpers.wav2lip_ckpt import write_random_checkpoint


@pytest.fixture(scope="session")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, nn.Module]]:
    """Both packs' stage modules; wav2lip from a seeded random checkpoint in the public format."""
    torch.set_num_threads(2)
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "wav2lip.pth", seed=0)
    return {"warp": get_pack("warp").load_stages(None), "wav2lip": get_pack("wav2lip").load_stages(ckpt)}


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> EngineStore:
    """One engine store for the session: a graph exported by one test module is found by the next."""
    return EngineStore(tmp_path_factory.mktemp("engines"))
