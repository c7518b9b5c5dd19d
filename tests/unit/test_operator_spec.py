"""The SttPool spec model: defaults, validation, and the pod settings contract."""

import dataclasses
import typing

import pytest

from stt_operator import spec as specmod
from stt_operator.spec import SpecError, parse


def test_defaults_fill_an_almost_empty_spec():
    pool = parse({"image": "voxfleet:1"})
    assert pool.image == "voxfleet:1"
    assert (pool.min_replicas, pool.max_replicas, pool.sessions_per_pod) == (1, 4, 8)
    assert pool.model == specmod.ModelSpec("tiny.en", "cpu", "int8")
    assert pool.scale_up.max_step == 10 and pool.scale_down.stabilization_seconds == 300
    assert pool.target_utilization == 0.8  # the policy measured in bench/autoscale (docs/benchmarks.md)
    assert pool.autoscaling.mode == "builtin" and pool.router.replicas == 2
    assert pool.replicas is None and pool.pod_settings == {}


def test_camel_case_keys_and_round_trip():
    data = {"image": "img", "minReplicas": 2, "maxReplicas": 6, "model": {"name": "small.en", "computeType": "int8"},
            "router": {"ingress": {"enabled": True, "host": "stt.example", "timeoutSeconds": 600}},
            "podSettings": {"maxBatch": 4, "vadThreshold": "0.6"}}
    pool = parse(data)
    assert pool.model.name == "small.en" and pool.router.ingress.timeout_seconds == 600
    again = parse(specmod.to_dict(pool))
    assert again == pool


@pytest.mark.parametrize("data, message", [
    ({}, "spec.image: required"),
    ({"image": "i", "minReplicas": 5, "maxReplicas": 2}, "minReplicas must be less than or equal to maxReplicas"),
    ({"image": "i", "buffer": 32, "sessionsPerPod": 8, "maxReplicas": 4}, "buffer must be less than"),
    ({"image": "i", "resources": {"gpus": 1}}, "resources.gpus needs model.device cuda"),
    ({"image": "i", "model": {"device": "cuda"}}, "model.device cuda needs resources.gpus"),
    ({"image": "i", "model": {"device": "tpu"}}, "spec.model.device: 'tpu' is not one of cpu, cuda"),
    ({"image": "i", "router": {"ingress": {"enabled": True}}}, "router.ingress.host is required"),
    ({"image": "i", "minReplicas": "2"}, "spec.minReplicas: expected an integer"),
    ({"image": "i", "minReplicas": True}, "spec.minReplicas: expected an integer"),
    ({"image": "i", "maxReplicas": 0}, "spec.maxReplicas: 0 is less than the minimum 1"),
    ({"image": "i", "resources": {"memory": "lots"}}, "spec.resources.memory: 'lots' does not match"),
    ({"image": "i", "colour": "blue"}, "spec: unknown field(s) colour"),
    ({"image": "i", "podSettings": {"model": "x"}}, "unknown or spec-owned pod setting"),
    ({"image": "i", "podSettings": {"noSuchThing": 1}}, "unknown or spec-owned pod setting"),
    ({"image": "i", "podSettings": {"maxBatch": "many"}}, "spec.podSettings.maxBatch: 'many' is not a valid int"),
    ({"image": "i", "prometheus": {"queries": {"cpu": "up"}}}, "prometheus.queries: unknown query name"),
    ({"image": "i", "prometheus": {"url": "ftp://x"}}, "spec.prometheus.url"),
])
def test_invalid_specs_name_the_problem(data, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse(data)


def test_pod_settings_table_matches_the_pod():
    """The operator does not import the pod; this keeps its copy of the contract honest."""
    from stt_pod.settings import ENV_PREFIX, PodSettings

    assert specmod.POD_ENV_PREFIX == ENV_PREFIX
    hints = typing.get_type_hints(PodSettings)
    assert specmod.POD_SETTINGS == {f.name: hints[f.name] for f in dataclasses.fields(PodSettings)}
    assert set(specmod.SPEC_OWNED_POD_SETTINGS) <= set(specmod.POD_SETTINGS)


def test_the_default_drain_outlasts_a_pods_longest_session():
    """Scale-down and rollouts cut no session with the defaults: the drain waits as long as a session may last."""
    from stt_pod.settings import PodSettings
    from voxfleet.autoscale import PoolPolicy

    longest = PodSettings().max_session_seconds
    assert parse({"image": "i"}).drain_timeout_seconds >= longest
    assert PoolPolicy().drain_timeout_seconds >= longest


def test_pod_setting_values_become_env_strings():
    assert specmod.pod_setting_value("maxBatch", 4) == "4"
    assert specmod.pod_setting_value("vadThreshold", "0.6") == "0.6"
    assert specmod.pod_setting_value("encodePadSeconds", 2) == "2.0"
    assert specmod.pod_setting_value("logLevel", "debug") == "debug"


@pytest.mark.parametrize("mode, replicas, current, expected", [
    ("builtin", None, None, 2),     # new pool: prewarmed minimum
    ("builtin", None, 3, 3),        # keep what the autoscaler (or a person) set
    ("builtin", None, 9, 5),        # never above max
    ("builtin", None, 0, 2),        # never below min
    ("builtin", 4, 3, 3),           # spec.replicas only counts in external mode
    ("external", 4, 3, 4),          # HPA/KEDA wrote the scale subresource
    ("external", 7, 3, 5),          # ... clamped
    ("external", None, 3, 3),
])
def test_desired_replicas(mode, replicas, current, expected):
    data = {"image": "i", "minReplicas": 2, "maxReplicas": 5, "autoscaling": {"mode": mode}}
    if replicas is not None:
        data["replicas"] = replicas
    assert specmod.desired_replicas(parse(data), current) == expected


def test_the_policy_defaults_are_the_sttpool_defaults():
    """`voxfleet up` and bench/autoscale use PoolPolicy's defaults; a default SttPool must behave the same."""
    from voxfleet.autoscale import PoolPolicy

    assert PoolPolicy.from_spec(parse({"image": "i"})) == PoolPolicy(
        min_replicas=PoolPolicy.from_spec(parse({"image": "i"})).min_replicas,
        max_replicas=PoolPolicy.from_spec(parse({"image": "i"})).max_replicas,
        sessions_per_pod=PoolPolicy.from_spec(parse({"image": "i"})).sessions_per_pod)
