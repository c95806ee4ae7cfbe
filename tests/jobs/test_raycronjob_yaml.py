"""jobs/raycronjob.yaml: every night, rayjob.yaml's RayJob, valid by KubeRay's CRD, one night at a time."""

from __future__ import annotations

import copy

import jsonschema
import pytest

from tests.helpers.kuberay import validator

DAY_S = 24 * 3600
# After a night's deadline: the finished cluster's TTL, then its pods' shutdown and the
# operator's reconcile lag (seconds to minutes). An hour covers them many times over.
TEARDOWN_MARGIN_S = 3600


def test_it_passes_kuberays_raycronjob_schema(raycronjob):
    assert (raycronjob["apiVersion"], raycronjob["kind"]) == ("ray.io/v1", "RayCronJob")
    validator("raycronjobs").validate(raycronjob)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schedule", 2),  # a cron string
        ("suspend", "no"),  # a boolean
        # Kubernetes' CronJob has this field; KubeRay 1.6's RayCronJob does not, and the
        # API server refuses it rather than honour it.
        ("concurrencyPolicy", "Forbid"),
    ],
)
def test_the_schema_check_can_fail(raycronjob, field, value):
    broken = copy.deepcopy(raycronjob)
    broken["spec"][field] = value
    with pytest.raises(jsonschema.ValidationError):
        validator("raycronjobs").validate(broken)


def test_each_night_is_the_rayjob_of_rayjob_yaml(raycronjob, rayjob):
    # Same entrypoint, cluster, image, volumes, token auth and teardown: one night run by
    # hand (rayjob.yaml) is a night of the schedule. Change both files together.
    assert raycronjob["spec"]["jobTemplate"] == rayjob["spec"]


def test_a_night_is_over_long_before_the_next_one_starts(raycronjob):
    # KubeRay creates a RayJob at every scheduled time whether or not the last one still
    # runs, so each night must end on its own before the next: at its deadline KubeRay
    # fails it and deletes its cluster ttlSecondsAfterFinished later.
    minute, hour, day_of_month, month, day_of_week = raycronjob["spec"]["schedule"].split()
    assert (day_of_month, month, day_of_week) == ("*", "*", "*"), "the schedule runs once a day"
    assert minute.isdigit() and int(minute) < 60 and hour.isdigit() and int(hour) < 24, "once a day, at one time"
    night = raycronjob["spec"]["jobTemplate"]
    assert night["shutdownAfterJobFinishes"] is True
    # No retries: KubeRay gives each retry a fresh cluster and a fresh deadline (it resets
    # the RayJob's start time), so retries would multiply the bound below.
    assert night["backoffLimit"] == 0
    assert night["activeDeadlineSeconds"] + night["ttlSecondsAfterFinished"] + TEARDOWN_MARGIN_S < DAY_S
    assert "suspend" not in raycronjob["spec"], "a suspended RayCronJob runs no nights"
