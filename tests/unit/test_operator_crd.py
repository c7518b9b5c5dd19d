"""The generated CRD: structural, defaulted, validated, and what deploy/ ships."""

from pathlib import Path

import yaml

from stt_operator import crd, spec as specmod

DEPLOYED = Path(__file__).resolve().parents[2] / "operator" / "deploy" / "crd.yaml"


def _schema():
    return crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(schema, path="$"):
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _walk(prop, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


def test_deploy_crd_yaml_is_the_generated_one():
    assert DEPLOYED.read_text() == crd.crd_yaml(), "run: python -m stt_operator crd > operator/deploy/crd.yaml"


def test_schema_is_structural():
    for path, node in _walk(_schema()):
        assert node.get("type") or node.get("x-kubernetes-int-or-string") or \
            node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"


def test_every_spec_field_is_described():
    for path, node in _walk(_schema()["properties"]["spec"], "spec"):
        if path != "spec" and not path.endswith("[*]"):
            assert node.get("description"), f"{path} has no description"


def _default(schema, value):
    """The API server's defaulting, enough for these schemas."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and "default" in prop:
            out[name] = prop["default"]
        if name in out:
            out[name] = _default(prop, out[name])
    return out


def test_schema_defaults_equal_the_model_defaults():
    spec_schema = _schema()["properties"]["spec"]
    defaulted = _default(spec_schema, {"image": "voxfleet:1"})
    assert defaulted == specmod.to_dict(specmod.parse({"image": "voxfleet:1"}))
    assert spec_schema["required"] == ["image"]


def test_cel_rules_and_name_rule():
    manifest = crd.crd_manifest()
    rules = _schema()["properties"]["spec"]["x-kubernetes-validations"]
    assert {"rule": "self.minReplicas <= self.maxReplicas",
            "message": "minReplicas must be less than or equal to maxReplicas"} in rules
    assert any("self.buffer < self.sessionsPerPod * self.maxReplicas" == r["rule"] for r in rules)
    assert len(rules) == len(specmod.RULES)
    assert _schema()["x-kubernetes-validations"][0]["rule"] == "self.metadata.name.size() <= 40"
    assert manifest["metadata"]["name"] == "sttpools.voxfleet.io"


def test_subresources_columns_and_names():
    version = crd.crd_manifest()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}, "scale": {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Ready", "Replicas", "Sessions", "Utilization", "Age"]
    names = crd.crd_manifest()["spec"]["names"]
    assert names["shortNames"] == ["stp"] and names["kind"] == "SttPool" and names["plural"] == "sttpools"
    status = _schema()["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"]:
        field = column["jsonPath"].split(".")
        if field[1] == "status":
            assert field[2] in status, column


def test_yaml_round_trips():
    assert yaml.safe_load(crd.crd_yaml()) == crd.crd_manifest()
