"""The Prometheus reader against a fake /api/v1/query: PromQL out, Observations in."""

from __future__ import annotations

import json
import math
import urllib.parse

import pytest

from stt_operator import prometheus as prom
from voxfleet.autoscale import PoolPolicy, decide


class FakePrometheus:
    """Answers /api/v1/query from a table: query name -> [(labels, value)], or an error."""

    def __init__(self, queries: dict[str, str], table: dict[str, object], down: bool = False):
        self.by_promql = {q: name for name, q in queries.items()}
        self.table = table
        self.down = down
        self.asked: list[str] = []

    def __call__(self, url: str, timeout: float) -> bytes:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        promql = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["query"][0]
        self.asked.append(promql)
        answer = self.table.get(self.by_promql.get(promql), [])
        if isinstance(answer, str):
            return json.dumps({"status": "error", "errorType": "bad_data", "error": answer}).encode()
        result = [{"metric": labels, "value": [1700000000.0, str(value)]} for labels, value in answer]
        return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def pod(o: int) -> dict:
    return {"pod": f"en-stt-{o}", "namespace": "speech"}


BUSY = {
    "readyReplicas": [(pod(0), 1), (pod(1), 1)],
    "activeSessions": [({}, 7)],
    "freeSlots": [(pod(0), 0), (pod(1), 1)],
    "capacityPerPod": [({}, 4)],
    "podSessions": [(pod(0), 4), (pod(1), 3)],
    "sampledAt": [({}, 995.0)],
    "queueLength": [({}, 0)],
    "queueWaitSeconds": [({}, 0)],
    "arrivalRate": [({}, 0.2)],
    "departureRate": [({}, 0.1)],
    "computePerAudioSecond": [({}, 0.05)],
}


def reader(table, down=False, overrides=None):
    queries = prom.queries_for("en", "speech", overrides)
    fake = FakePrometheus(queries, table, down)
    return prom.PrometheusClient("http://prom:9090/", fetch=fake), queries, fake


def test_default_queries_select_the_pools_pods_and_routers():
    queries = prom.queries_for("en", "speech")
    assert queries["activeSessions"] == 'sum(voxfleet_pod_sessions_active{namespace="speech",pod=~"en-stt-[0-9]+"})'
    assert queries["queueLength"] == 'sum(voxfleet_router_sessions_queued{namespace="speech",pod=~"en-router-.+"})'
    router_arrivals, pod_arrivals = queries["arrivalRate"].split(" or ")  # the routers' count, else the pods'
    assert router_arrivals == ('sum(rate(voxfleet_router_sessions_total{namespace="speech",pod=~"en-router-.+",'
                               'kind="start"}[1m]))')
    assert pod_arrivals == 'sum(rate(voxfleet_pod_sessions_total{namespace="speech",pod=~"en-stt-[0-9]+"}[1m]))'
    assert "voxfleet_pod_compute_seconds_total" in queries["computePerAudioSecond"]
    assert "voxfleet_pod_audio_received_seconds_total" in queries["computePerAudioSecond"]
    assert not any("$" in q for q in queries.values())


def test_spec_overrides_replace_a_query_and_may_use_the_matchers():
    queries = prom.queries_for("en", "speech", {"queueLength": "sum(my_queue{$routers})"})
    assert queries["queueLength"] == 'sum(my_queue{namespace="speech",pod=~"en-router-.+"})'
    with pytest.raises(ValueError, match="unknown"):
        prom.queries_for("en", "speech", {"nonsense": "up"})


def test_a_full_answer_becomes_observations():
    client, queries, _ = reader(BUSY)
    reading = prom.read(client, queries, now=1000.0, replicas=2)
    obs = reading.observations
    assert reading.errors == () and reading.reachable
    assert (obs.replicas, obs.ready_replicas, obs.active_sessions, obs.free_slots, obs.queue_length) == (2, 2, 7, 1, 0)
    assert obs.capacity_per_pod == 4
    assert obs.pod_sessions == {0: 4, 1: 3}
    assert obs.arrival_rate == 0.2 and obs.departure_rate == 0.1
    assert obs.compute_per_audio_second == 0.05
    assert obs.sampled_at == 995.0


def test_reserved_slots_in_use_are_read_from_the_routers_and_unknown_stays_unknown():
    client, queries, _ = reader({**BUSY, "reservedInUse": [({"pod": "en-router-a"}, 2), ({"pod": "en-router-b"}, 1)]})
    assert 'voxfleet_router_reserved_slots_in_use{namespace="speech",pod=~"en-router-.+"}' in queries["reservedInUse"]
    assert prom.read(client, queries, now=1000.0, replicas=2).observations.reserved_in_use == 3  # summed over routers
    client, queries, _ = reader(BUSY)
    assert prom.read(client, queries, now=1000.0, replicas=2).observations.reserved_in_use is None


def test_draining_ordinals_are_not_serving_capacity():
    client, queries, _ = reader(BUSY)
    obs = prom.read(client, queries, now=1000.0, replicas=2, draining={1}).observations
    assert obs.ready_replicas == 1 and obs.free_slots == 0
    assert obs.active_sessions == 7 and obs.pod_sessions == {0: 4, 1: 3}
    assert obs.draining == frozenset({1})


def test_series_of_ordinals_beyond_the_statefulset_are_ignored():
    table = dict(BUSY, readyReplicas=[(pod(0), 1), (pod(1), 1), (pod(5), 1)])
    client, queries, _ = reader(table)
    assert prom.read(client, queries, now=1000.0, replicas=2).observations.ready_replicas == 2


def test_a_pod_without_series_has_no_sessions():
    client, queries, _ = reader(BUSY)
    obs = prom.read(client, queries, now=1000.0, replicas=3).observations
    assert obs.pod_sessions == {0: 4, 1: 3, 2: 0}


def test_unreachable_prometheus_gives_none_once_and_the_policy_holds():
    client, queries, fake = reader(BUSY, down=True)
    reading = prom.read(client, queries, now=1000.0, replicas=3)
    obs = reading.observations
    assert not reading.reachable
    assert len(reading.errors) == 1 and "cannot reach Prometheus" in reading.errors[0]
    assert (obs.ready_replicas, obs.active_sessions, obs.free_slots, obs.queue_length) == (None,) * 4
    decision = decide(obs, PoolPolicy(min_replicas=1, max_replicas=5))
    assert decision.replicas == 3 and not decision.metrics_available and decision.action == "fail-static"


def test_empty_nan_and_failed_queries_are_missing_not_zero():
    table = dict(BUSY, activeSessions=[], freeSlots="parse error", computePerAudioSecond=[({}, math.nan)])
    client, queries, _ = reader(table)
    reading = prom.read(client, queries, now=1000.0, replicas=2)
    obs = reading.observations
    assert obs.active_sessions is None and obs.free_slots is None and obs.compute_per_audio_second is None
    assert reading.reachable
    assert any(e.startswith("activeSessions: no data") for e in reading.errors)
    assert any(e.startswith("freeSlots: query failed: bad_data") for e in reading.errors)


def test_a_pool_without_routers_has_an_empty_queue():
    table = dict(BUSY, queueLength=[], queueWaitSeconds=[])
    client, queries, _ = reader(table)
    assert prom.read(client, queries, now=1000.0, replicas=2).observations.queue_length is None
    assert prom.read(client, queries, now=1000.0, replicas=2, routers=False).observations.queue_length == 0


def test_negative_rates_are_clamped():
    client, queries, _ = reader(dict(BUSY, departureRate=[({}, -0.3)]))
    assert prom.read(client, queries, now=1000.0, replicas=2).observations.departure_rate == 0.0


def test_ordinal_of():
    assert prom.ordinal_of("en-stt-12") == 12
    assert prom.ordinal_of("en-router-5d9c-x7") is None
    assert prom.ordinal_of(None) is None


def test_every_query_name_the_spec_accepts_is_one_the_reader_knows():
    from stt_operator.spec import PROMETHEUS_QUERIES

    assert set(PROMETHEUS_QUERIES) <= set(prom.DEFAULT_QUERIES)
