"""`voxfleet up --min-pods/--max-pods`: the pure parts (observations, process plan, rates), no processes."""

from __future__ import annotations

import dataclasses

import pytest

from voxfleet import up
from voxfleet.autoscale import PoolPolicy, decide


def status(active: int, capacity: int = 2, ready: bool = True, draining: bool = False) -> dict:
    return {"ready": ready and not draining, "draining": draining, "capacity": capacity, "active_sessions": active,
            "free_slots": 0 if draining else max(0, capacity - active)}


def test_observations_from_pod_status():
    obs = up.local_observations(100.0, 3, {0: status(2), 1: status(1), 2: status(0, ready=False)}, (), 0)
    assert (obs.ready_replicas, obs.active_sessions, obs.free_slots, obs.queue_length) == (2, 3, 1, 0)
    assert obs.capacity_per_pod == 2
    assert obs.pod_sessions == {0: 2, 1: 1, 2: 0}


def test_draining_pods_keep_their_sessions_but_give_no_slots():
    obs = up.local_observations(100.0, 2, {0: status(0), 1: status(1, draining=True)}, {1}, 0)
    assert obs.ready_replicas == 1 and obs.free_slots == 2 and obs.active_sessions == 1
    assert obs.pod_sessions == {0: 0, 1: 1} and obs.draining == frozenset({1})


def test_a_pod_without_a_process_has_no_sessions_and_an_unanswered_poll_is_unknown():
    assert up.local_observations(1.0, 2, {0: status(1)}, (), 0).pod_sessions == {0: 1, 1: 0}
    obs = up.local_observations(1.0, 2, {0: status(1), 1: None}, (), 0)
    assert obs.active_sessions is None and obs.free_slots is None
    held = decide(obs, PoolPolicy(min_replicas=1, max_replicas=3))
    assert held.action == "fail-static" and held.replicas == 2


def test_full_pods_ask_for_one_more_and_the_plan_starts_it():
    policy = PoolPolicy(min_replicas=1, max_replicas=3, sessions_per_pod=2, buffer=1)
    obs = up.local_observations(10.0, 1, {0: status(2)}, (), 0)
    decision = decide(obs, policy)
    assert decision.replicas == 2
    assert up.process_plan(decision, {0: False}) == ([1], [])


def test_the_plan_drains_the_highest_and_restarts_an_undrained_pod_only_after_it_exits():
    policy = PoolPolicy(min_replicas=1, max_replicas=3, sessions_per_pod=2, buffer=1,
                        scale_down_stabilization_seconds=0, idle_seconds=0)
    idle = {0: status(0), 1: status(0)}
    first = decide(up.local_observations(0.0, 2, idle, (), 0), policy)
    second = decide(up.local_observations(5.0, 2, idle, (), 0), policy, first.state)
    assert second.mark_draining == (1,)
    assert up.process_plan(second, {0: False, 1: False}) == ([], [1])
    # The policy un-drains pod 1 while its process still drains: nothing to do until it exits ...
    back = dataclasses.replace(second, draining=frozenset())
    assert up.process_plan(back, {0: False, 1: True}) == ([], [])
    # ... then it is started again.
    assert up.process_plan(back, {0: False}) == ([1], [])


def test_rates_from_the_routers_counter():
    rates = up.Rates(window=60)
    assert rates.update(0.0, 10, 0) == (None, None)
    arrivals, departures = rates.update(10.0, 20, 4)  # 10 arrived, 4 more active: 6 left
    assert arrivals == pytest.approx(1.0) and departures == pytest.approx(0.6)
    assert rates.update(20.0, None, 4) == (None, None)
    assert rates.update(30.0, 5, 0) == (None, None)  # counter restarted: start over


def test_router_numbers_parse_the_metrics_text():
    text = ("# TYPE voxfleet_router_sessions_queued gauge\nvoxfleet_router_sessions_queued 3\n"
            "# TYPE voxfleet_router_queue_oldest_wait_seconds gauge\nvoxfleet_router_queue_oldest_wait_seconds 1.5\n"
            "# TYPE voxfleet_router_sessions_total counter\n"
            'voxfleet_router_sessions_total{protocol="native",kind="start"} 7\n'
            'voxfleet_router_sessions_total{protocol="whisperlive",kind="start"} 1\n'
            'voxfleet_router_sessions_total{protocol="native",kind="resume"} 2\n')
    # Arrivals are new sessions (the router's kind="start", as the operator's query counts): resumes are not.
    assert up.router_numbers(text) == {"queued": 3, "oldest_wait": 1.5, "sessions_started": 8, "reserved_in_use": 0}


def test_fleet_sizes():
    fixed = up.LocalFleet(pods=3)
    assert not fixed.autoscaling and (fixed.n_pods, fixed.min_pods, fixed.max_pods) == (3, 3, 3)
    scaled = up.LocalFleet(min_pods=1, max_pods=4)
    assert scaled.autoscaling and scaled.n_pods == 1 and len(scaled.ports) == 4
    assert (scaled.policy.min_replicas, scaled.policy.max_replicas) == (1, 4)
    with pytest.raises(ValueError):
        up.LocalFleet(min_pods=3, max_pods=2)
