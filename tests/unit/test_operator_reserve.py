"""Reserved capacity in the SttPool spec: validated, given to the routers as --reserve, counted by the autoscaler."""

from __future__ import annotations

import pytest

from stt_operator import crd, manifests, spec as specmod
from stt_operator.manifests import PoolRef
from voxfleet.autoscale import PoolPolicy

from tests.unit.test_operator_autoscaler import IDLE, pod, run

POOL = PoolRef(name="en", namespace="speech", uid="1234-uid")


def router_env(spec: specmod.SttPoolSpec) -> dict[str, str]:
    env = manifests.router_deployment(POOL, spec)["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value") for e in env}


def test_reserve_defaults_to_none_and_is_not_passed():
    spec = specmod.parse({"image": "i"})
    assert spec.reserve == {}
    assert "VOXFLEET_ROUTER_RESERVE" not in router_env(spec)
    assert PoolPolicy.from_spec(spec).reserve == ()


def test_reserve_reaches_the_router_as_its_setting():
    from stt_router.reserve import parse_reserve
    from stt_router.settings import RouterSettings

    spec = specmod.parse({"image": "i", "reserve": {"high": 0.2, "normal": 0.05, "low": 0}})
    value = router_env(spec)["VOXFLEET_ROUTER_RESERVE"]
    assert value == "high=0.2,normal=0.05"
    assert parse_reserve(value) == {"high": 0.2, "normal": 0.05}
    RouterSettings(pods="ws://127.0.0.1:9", anonymous=True, reserve=value).validate()
    assert specmod.reserve_setting({"high": 1 / 3}) == f"high={1 / 3!r}"  # no precision lost on the way
    assert specmod.to_dict(spec)["reserve"] == {"high": 0.2, "normal": 0.05, "low": 0.0}


@pytest.mark.parametrize("reserve,match", [
    ({"vip": 0.1}, "unknown priority class"),
    ({"failover": 0.1}, "unknown priority class"),
    ({"high": 1.0}, "at least 0 and less than 1"),
    ({"high": -0.2}, "at least 0 and less than 1"),
    ({"high": 0.6, "normal": 0.4}, "add up to less than 1"),
    ({"high": "lots"}, "expected a number"),
    ({"high": 0.1, "normal": 0.1, "low": 0.1, "extra": 0.1}, "more than 3"),
])
def test_a_wrong_reserve_is_refused(reserve, match):
    with pytest.raises(specmod.SpecError, match=match):
        specmod.parse({"image": "i", "reserve": reserve})


def test_the_crd_describes_and_checks_the_reserve():
    schema = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    prop = schema["properties"]["reserve"]
    assert prop["type"] == "object" and prop["additionalProperties"] == {"type": "number"}
    assert prop["default"] == {} and prop["maxProperties"] == 3
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert "self.reserve.all(k, k in ['high', 'normal', 'low'])" in rules
    assert any(r.endswith("< 1.0") and "self.reserve['high']" in r for r in rules)


def test_the_autoscaler_keeps_the_reserve_free_on_top_of_the_buffer():
    # 2 pods of 4 slots, 3 sessions: 5 free cover the buffer of 2, but not the buffer and a reserve of 4 (0.5 x 8).
    table = {**IDLE, "activeSessions": [({}, 3)], "freeSlots": [(pod(0), 1), (pod(1), 4)],
             "podSessions": [(pod(0), 3), (pod(1), 0)]}
    plain, _ = run(table)
    assert plain.replicas == 2
    reserved, _ = run(table, reserve={"high": 0.5})
    assert reserved.replicas > 2
    assert "reserve 4 of 4 unused" in reserved.decision.reason
    assert reserved.status["autoscaler"]["lastDecision"]["inputs"]["reservedSlots"] == 4
