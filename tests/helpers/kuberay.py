"""KubeRay's CRD schemas (tests/data/kuberay/) as validators that answer as the API server does.

A CRD's ``openAPIV3Schema`` lists each object's fields but does not say "no others": the
API server adds that itself. ``kubectl create`` asks it for strict field validation (the
default since Kubernetes 1.27), so a field the schema does not declare is an error, not
something silently dropped. ``validator`` closes every object the same way, so a made-up
field (``spec.concurrencyPolicy`` on a RayCronJob, which KubeRay 1.6 does not have) fails
here as it fails on a cluster. Objects the schema leaves open (``metadata``, and maps such
as ``rayStartParams`` with ``additionalProperties``) stay open.

Not checked here: the CEL rules (``x-kubernetes-validations``; in these CRDs only on
``deletionStrategy`` and ``managedBy``) and KubeRay's own checks when it reconciles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "kuberay"


def validator(plural: str) -> jsonschema.Draft4Validator:
    """A validator for ``ray.io/v1`` objects of the CRD ``<plural>.ray.io`` (``rayjobs``, ``raycronjobs``)."""
    schema = json.loads((SCHEMAS / f"ray.io_{plural}.v1.json").read_text())
    # OpenAPI 3.0 schemas are JSON Schema draft 4 with extensions (x-kubernetes-*, nullable),
    # which a draft 4 validator ignores.
    return jsonschema.Draft4Validator(_closed(schema))


def _closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that declares its fields."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: (_closed_properties(value) if key == "properties" else _closed(value)) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        closed["additionalProperties"] = False
    return closed


def _closed_properties(properties: dict[str, Any]) -> dict[str, Any]:
    """A ``properties`` map: its keys are field names, only its values are schemas."""
    return {name: _closed(field) for name, field in properties.items()}
