"""cluster.yaml is a valid Ray cluster launcher config (the schema inside the ray wheel)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_own_validation(config):
    # What `ray up` does: fill in the defaults, then check against ray-schema.json.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_validation_can_fail(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_small"]["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_gpu_worker_types_install_the_tensorrt_extra_and_share_the_engine_store(config):
    gpu_types = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU")}
    assert len(gpu_types) == 2
    assert {t["resources"]["GPU"] for t in gpu_types.values()} == {1, 4}
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU", 0) == 0
    setup = "\n".join(config["setup_commands"])
    assert "heygem-ray[tensorrt]" in setup and "/shared/heygem-engines" in setup


def test_every_node_starts_ray_in_token_mode_with_one_token_that_is_not_in_the_repository(config):
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    paths = set()
    for command in starts:
        env = dict(word.split("=", 1) for word in command.split("ray start")[0].split())
        assert env["RAY_AUTH_MODE"] == "token", command
        paths.add(env["RAY_AUTH_TOKEN_PATH"])
    (path,) = paths  # the same token file on the head and every worker
    # file_mounts puts it on every node, from the launching machine's home, not from here.
    local = config["file_mounts"][path]
    assert local.startswith("~/") and not (CLUSTER_YAML.parent / Path(local).name).exists()
