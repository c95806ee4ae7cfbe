"""jobs/rayjob.yaml: a KubeRay RayJob, valid by KubeRay's CRD, whose entrypoint is jobs/nightly.py with arguments it accepts."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers.kuberay import validator
from tests.jobs import NIGHTLY


def test_it_passes_kuberays_rayjob_schema(rayjob):
    validator("rayjobs").validate(rayjob)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("activeDeadlineSeconds", "6h"),  # an integer of seconds
        ("submissionMode", ["K8sJobMode"]),  # a string
        ("activeDeadline", 21600),  # not a RayJob field: the API server refuses it
    ],
)
def test_the_schema_check_can_fail(rayjob, field, value):
    broken = copy.deepcopy(rayjob)
    broken["spec"][field] = value
    with pytest.raises(jsonschema.ValidationError):
        validator("rayjobs").validate(broken)


def test_it_is_a_rayjob_that_tears_its_cluster_down(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert rayjob["metadata"]["generateName"]  # one RayJob per night with `kubectl create`
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env) <= {"working_dir", "env_vars", "py_modules", "pip"}


def test_the_entrypoint_runs_nightly_with_arguments_it_accepts(rayjob, nightly):
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    # Relative to the runtime env's working_dir: the image's checkout of this repository.
    assert argv[:2] == ["python", "jobs/nightly.py"] and NIGHTLY.is_file()
    assert "working_dir" in yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    args = nightly.parse_args(argv[2:])
    # Everything a run reads or writes is on the volume every pod mounts.
    mounts = _mounts(rayjob)
    for path in (args.manifest, args.output_root, args.engines, args.cache_dir):
        assert path.is_absolute() and any(path.is_relative_to(m) for m in mounts), path


def test_the_head_has_no_gpu_and_each_worker_one(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    # rayStartParams are strings for KubeRay
    for params in (cluster["headGroupSpec"]["rayStartParams"], gpu["rayStartParams"]):
        assert all(isinstance(v, str) for v in params.values())


def _mounts(rayjob: dict) -> list[Path]:
    """Mount paths of the shared PVC, which must be the same on the head and every worker."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    per_group = []
    for pod in [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]:
        pvcs = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        per_group.append({m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"] if m["name"] in pvcs})
    assert per_group and all(g == per_group[0] for g in per_group) and per_group[0], per_group
    return [Path(m) for m in per_group[0]]


def test_the_cluster_runs_in_token_mode(rayjob):
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
