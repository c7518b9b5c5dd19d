"""The SttPool CustomResourceDefinition, generated from the spec classes.

Why it exists: the schema the API server enforces (types, defaults, bounds, CEL
rules) must be exactly the model the operator reads (spec.py), so it is derived
from it rather than written twice. `python -m stt_operator crd` prints it;
operator/deploy/crd.yaml is that output, checked in for the Helm chart, and a
unit test fails when the two differ.

It must never talk to a cluster.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from stt_operator import spec as specmod
from stt_operator.spec import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, camel


def _scalar_schema(kind: type) -> dict[str, Any]:
    if kind is bool:
        return {"type": "boolean"}
    if kind is int:
        return {"type": "integer"}
    if kind is float:
        return {"type": "number"}
    if kind is str:
        return {"type": "string"}
    raise TypeError(f"no schema for {kind!r}")


def object_schema(cls: type) -> dict[str, Any]:
    """OpenAPI v3 (structural) schema of a spec dataclass, with defaults."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        nullable = False
        if typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
            nullable = True
        if dataclasses.is_dataclass(kind):
            prop = object_schema(kind)
            prop["default"] = {}  # so the nested defaults apply to an omitted object
        elif typing.get_origin(kind) is dict:
            value_kind = typing.get_args(kind)[1]
            values = ({"x-kubernetes-int-or-string": True} if value_kind is Any
                      else _scalar_schema(value_kind))
            prop = {"type": "object", "additionalProperties": values}
            prop["default"] = {}
        else:
            prop = _scalar_schema(kind)
            if f.default is not dataclasses.MISSING and f.default is not None:
                prop["default"] = f.default
        prop["description"] = f.metadata["help"]
        prop.update(f.metadata.get("schema", {}))
        if nullable:
            prop["nullable"] = True
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(camel(f.name))
        properties[camel(f.name)] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "description": "Ready, Scaling, Degraded or MetricsAvailable"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "description": "CamelCase reason for the last transition"},
            "message": {"type": "string", "description": "human-readable detail"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    }


def status_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "what the operator observed; written only by the operator",
        "properties": {
            "observedGeneration": {"type": "integer", "description": "spec generation last reconciled"},
            "replicas": {"type": "integer", "description": "STT pods that exist (scale subresource)"},
            "readyReplicas": {"type": "integer", "description": "STT pods that are ready"},
            "desiredReplicas": {"type": "integer", "description": "STT pods the operator asks for"},
            "selector": {"type": "string", "description": "label selector of the STT pods (scale subresource)"},
            "activeSessions": {"type": "integer", "description": "sessions being served (from metrics)"},
            "queuedSessions": {"type": "integer", "description": "sessions waiting for a slot (from metrics)"},
            "utilization": {"type": "string", "description": "share of session slots in use, e.g. 62%"},
            "lastScaleTime": {"type": "string", "format": "date-time"},
            "lastScaleReason": {"type": "string"},
            "conditions": {
                "type": "array",
                "items": _condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        },
        # kopf keeps its bookkeeping (handler progress) under status.kopf.
        "x-kubernetes-preserve-unknown-fields": True,
    }


PRINTER_COLUMNS = [
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "ready STT pods"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas", "description": "STT pods"},
    {"name": "Sessions", "type": "integer", "jsonPath": ".status.activeSessions", "description": "active sessions"},
    {"name": "Utilization", "type": "string", "jsonPath": ".status.utilization",
     "description": "share of session slots in use"},
    {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas", "priority": 1},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition of SttPool (apiextensions.k8s.io/v1)."""
    spec_schema = object_schema(specmod.SttPoolSpec)
    spec_schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in specmod.RULES]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "voxfleet", "app.kubernetes.io/part-of": "voxfleet"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES), "categories": ["voxfleet"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A pool of streaming speech-to-text pods behind a session-pinning router.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema(),
                    },
                    "x-kubernetes-validations": [
                        {"rule": specmod.NAME_RULE_CEL, "message": specmod.NAME_RULE_MESSAGE},
                    ],
                }},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def crd_yaml() -> str:
    import yaml

    header = ("# Generated by `python -m stt_operator crd` from operator/stt_operator/spec.py;\n"
              "# do not edit by hand (tests/unit/test_operator_crd.py checks it).\n")
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=120)
