"""The autoscaling policy over scripted observation sequences, on a fake clock."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from voxfleet import autoscale
from voxfleet.autoscale import Decision, Observations, PoolPolicy, ScalerState, decide

POLICY = PoolPolicy(min_replicas=2, max_replicas=10, sessions_per_pod=8, target_utilization=0.75, buffer=2,
                    scale_up_max_step=4, scale_down_max_step=1, scale_down_stabilization_seconds=300,
                    idle_seconds=300, drain_timeout_seconds=600, default_pod_start_seconds=30)


class FakePool:
    """A pool that applies decisions: pods become ready `start_seconds` after they are added,
    sessions are packed onto the lowest ready non-draining pods, the rest wait in the queue."""

    def __init__(self, policy: PoolPolicy = POLICY, replicas: int = 2, start_seconds: float = 30.0,
                 per_pod: int = 8) -> None:
        self.policy = policy
        self.now = 1000.0
        self.start_seconds = start_seconds
        self.per_pod = per_pod
        self.ready_at = {o: -math.inf for o in range(replicas)}
        self.sessions = {o: 0 for o in range(replicas)}
        self.queue = 0
        self.draining: set[int] = set()
        self.state = ScalerState()
        self.decisions: list[Decision] = []
        self.replica_history: list[int] = []

    @property
    def replicas(self) -> int:
        return len(self.ready_at)

    def serving_ready(self) -> list[int]:
        return [o for o in sorted(self.ready_at) if o not in self.draining and self.ready_at[o] <= self.now]

    def set_load(self, total: int) -> None:
        """`total` sessions in the system; those on draining pods stay where they are."""
        pinned = sum(self.sessions[o] for o in self.draining)
        rest = max(0, total - pinned)
        for o in self.sessions:
            if o not in self.draining:
                self.sessions[o] = 0
        for o in self.serving_ready():
            take = min(self.per_pod, rest)
            self.sessions[o] = take
            rest -= take
        self.queue = rest

    def end_sessions_on(self, ordinal: int) -> None:
        self.sessions[ordinal] = 0

    def observe(self, arrival_rate: float | None = None, missing: bool = False, **extra) -> Observations:
        ready = self.serving_ready()
        free = sum(self.per_pod - self.sessions[o] for o in ready)
        active = sum(self.sessions.values())
        return Observations(
            now=self.now, replicas=self.replicas,
            ready_replicas=None if missing else len(ready),
            active_sessions=None if missing else active,
            free_slots=None if missing else free,
            queue_length=None if missing else self.queue,
            queue_oldest_wait_seconds=None if missing or not self.queue else 3.0,
            arrival_rate=arrival_rate, pod_start_seconds=self.start_seconds,
            draining=frozenset(self.draining),
            pod_sessions=None if missing else dict(self.sessions), **extra)

    def step(self, load: int | None = None, dt: float = 10.0, **observe) -> Decision:
        """Advance the clock, settle the load, decide, apply."""
        self.now += dt
        if load is not None:
            self.set_load(load)
        d = decide(self.observe(**observe), self.policy, self.state)
        self.apply(d)
        return d

    def apply(self, d: Decision) -> None:
        self.state = d.state
        for o in range(self.replicas, d.replicas):
            self.ready_at[o] = self.now + self.start_seconds
            self.sessions[o] = 0
        for o in range(d.replicas, self.replicas):
            del self.ready_at[o]
            del self.sessions[o]
        self.draining = set(d.draining)
        self.decisions.append(d)
        self.replica_history.append(d.replicas)

    def run(self, seconds: float, load: int | None = None, dt: float = 10.0, **observe) -> Decision:
        d = None
        for _ in range(int(seconds // dt)):
            d = self.step(load, dt, **observe)
        return d


def changes(history: list[int]) -> int:
    return sum(1 for a, b in zip(history, history[1:]) if a != b)


# ------------------------------------------------------------------ bounds

def test_idle_pool_stays_at_min_and_never_below():
    pool = FakePool(replicas=2)
    pool.run(3600, load=0)
    assert set(pool.replica_history) == {2}
    assert not pool.draining


def test_pool_below_min_is_raised_to_min_at_once():
    pool = FakePool(replicas=0)
    d = pool.step(load=0)
    assert d.replicas == 2
    assert "clamp" in d.actions and "minReplicas" in d.reason


def test_recommendation_never_exceeds_max():
    pool = FakePool(replicas=2)
    pool.run(600, load=1000)
    assert max(pool.replica_history) == 10
    assert pool.decisions[-1].inputs["recommendation"] == 10


def test_pods_above_max_are_drained_then_removed_not_cut():
    policy = PoolPolicy(min_replicas=1, max_replicas=3, drain_timeout_seconds=600)
    pool = FakePool(policy, replicas=5)
    pool.set_load(40)  # all five pods full
    d = pool.step()
    assert d.replicas == 5 and d.draining == {3, 4} and set(d.mark_draining) == {3, 4}
    assert "maxReplicas" in d.reason
    pool.end_sessions_on(4)
    d = pool.step()
    assert d.replicas == 4  # pod 4 is empty; pod 3 still holds sessions
    pool.end_sessions_on(3)
    d = pool.step()
    assert d.replicas == 3 and not d.draining and d.cut_sessions == 0


# ------------------------------------------------------------------ scale-up

def test_burst_scales_up_by_step_per_decision_and_counts_starting_pods():
    pool = FakePool(replicas=2)
    d = pool.step(load=60)  # 44 wait: needs ceil(80 slots / 8) = 10 pods
    assert d.replicas == 6 and d.actions == ("scale-up",)
    assert "waiting" in d.reason
    d = pool.step()
    assert d.replicas == 10
    # The same load while the new pods start: nothing more is added.
    d = pool.step()
    assert d.replicas == 10 and d.actions == ()
    assert d.inputs["pending"] > 0


def test_free_slots_below_buffer_scale_up_without_anyone_waiting():
    policy = PoolPolicy(min_replicas=2, max_replicas=10, buffer=4, target_utilization=1.0)
    pool = FakePool(policy, replicas=2)
    d = pool.step(load=13)  # 3 free < buffer 4, nobody waits
    assert pool.queue == 0
    assert d.replicas == 3 and "free slot" in d.reason


def test_buffer_follows_littles_law_with_configured_floor():
    policy = PoolPolicy(min_replicas=1, max_replicas=50, buffer=2, target_utilization=1.0, reaction_seconds=0,
                        buffer_sigmas=0)
    base = dict(now=0.0, replicas=2, ready_replicas=2, active_sessions=8, free_slots=8, queue_length=0,
                pod_start_seconds=30.0)
    # 1 session/s arriving while a pod takes 30 s to start: keep 30 free slots.
    d = decide(Observations(arrival_rate=1.0, **base), policy)
    assert d.inputs["buffer"] == 30
    assert d.replicas == math.ceil((8 + 30) / 8)
    assert "buffer 30" in d.reason
    # Hardly any arrivals: the configured floor.
    d = decide(Observations(arrival_rate=0.01, **base), policy)
    assert d.inputs["buffer"] == 2 and d.replicas == 2
    # No rate measured: the floor, and the reason says so.
    d = decide(Observations(arrival_rate=None, **base), policy)
    assert d.inputs["buffer"] == 2 and "no arrival rate" in d.reason
    # Faster pod starts need a smaller buffer for the same arrivals.
    d = decide(Observations(arrival_rate=1.0, **{**base, "pod_start_seconds": 5.0}), policy)
    assert d.inputs["buffer"] == 5


def test_buffer_counts_departures_reaction_time_and_randomness():
    base = dict(now=0.0, replicas=2, ready_replicas=2, active_sessions=8, free_slots=8, queue_length=0,
                pod_start_seconds=30.0, arrival_rate=1.0)
    plain = PoolPolicy(max_replicas=50, buffer=0, reaction_seconds=0, buffer_sigmas=0)
    # As many leave as arrive: no growth to cover.
    assert decide(Observations(departure_rate=1.0, **base), plain).inputs["buffer"] == 0
    # Half leave: half the arrivals.
    assert decide(Observations(departure_rate=0.5, **base), plain).inputs["buffer"] == 15
    # Randomness: 2 sigmas of 30 arrivals and 30 departures.
    noisy = PoolPolicy(max_replicas=50, buffer=0, reaction_seconds=0, buffer_sigmas=2)
    assert decide(Observations(departure_rate=1.0, **base), noisy).inputs["buffer"] == math.ceil(2 * math.sqrt(60))
    # The time to notice and decide counts like pod start time.
    slow = PoolPolicy(max_replicas=50, buffer=0, reaction_seconds=25, buffer_sigmas=0)
    d = decide(Observations(**base), slow)
    assert d.inputs["buffer"] == 55 and d.inputs["leadSeconds"] == 55


def test_missing_pod_start_uses_the_policy_default():
    policy = PoolPolicy(max_replicas=50, buffer=0, default_pod_start_seconds=40.0, reaction_seconds=0,
                        buffer_sigmas=0)
    d = decide(Observations(now=0.0, replicas=1, ready_replicas=1, active_sessions=0, free_slots=8,
                            queue_length=0, arrival_rate=0.5), policy)
    assert d.inputs["podStartSecondsUsed"] == 40.0 and d.inputs["buffer"] == 20


def test_compute_bound_pods_get_more_pods_than_slots_alone_would():
    policy = PoolPolicy(min_replicas=1, max_replicas=20, target_utilization=0.75, scale_up_max_step=4)
    obs = dict(now=0.0, replicas=4, ready_replicas=4, active_sessions=16, free_slots=16, queue_length=0)
    relaxed = decide(Observations(compute_per_audio_second=0.05, **obs), policy)
    busy = decide(Observations(compute_per_audio_second=0.5, **obs), policy)
    assert relaxed.replicas == 4
    assert busy.replicas == 8  # ceil(16 x 0.5 / 0.75) = 11, by the step of 4
    assert "model busy" in busy.reason


def test_scale_up_stabilization_ignores_a_short_spike():
    policy = PoolPolicy(min_replicas=2, max_replicas=10, scale_up_stabilization_seconds=60)
    pool = FakePool(policy, replicas=2)
    pool.run(120, load=4)
    pool.step(load=40)
    pool.step(load=40)
    assert pool.replicas == 2  # high for 20 s of a 60 s window
    pool.step(load=4)
    pool.run(300, load=4)
    assert set(pool.replica_history) == {2}
    pool.run(70, load=40)
    assert pool.replicas > 2


# ------------------------------------------------------------------ flapping

def test_flapping_load_does_not_flap_replicas():
    pool = FakePool(replicas=2)
    pool.run(400, load=20)
    settled = pool.replicas
    pool.replica_history.clear()
    # Load swings between two levels every 20 s for an hour.
    for i in range(180):
        pool.step(load=20 if i % 4 < 2 else 34)
    assert changes(pool.replica_history) <= 1  # at most the one step up to the higher need
    assert pool.replicas >= settled
    assert not any("drain" in d.actions for d in pool.decisions[-180:])


def test_surplus_interrupted_by_a_brief_peak_restarts_the_idle_clock():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, scale_down_stabilization_seconds=0, idle_seconds=300)
    pool = FakePool(policy, replicas=1)
    pool.run(200, load=40)
    high = pool.replicas
    pool.run(250, load=4)
    pool.step(load=40)  # a blip: the surplus ended
    pool.run(250, load=4)
    assert pool.replicas == high and not pool.draining
    pool.run(60, load=4)
    assert pool.draining


# ------------------------------------------------------------------ scale-down and drain

def test_scale_down_waits_for_window_and_idle_then_drains_highest_by_step():
    pool = FakePool(replicas=2)
    pool.run(120, load=60)
    pool.run(60, load=60)  # all ten pods ready and busy
    assert pool.replicas == 10
    pool.set_load(4)
    pool.decisions.clear()
    pool.run(290, load=4)
    assert not any(d.mark_draining for d in pool.decisions), "drained before the window and idle time"
    marked = []
    for _ in range(40):
        d = pool.step(load=4)
        assert len(d.mark_draining) <= 1
        marked += d.mark_draining
    # Highest ordinal first, each once, never below min.
    assert marked == sorted(marked, reverse=True)
    assert marked[0] == 9 and len(set(marked)) == len(marked)
    assert pool.replicas == 2 and min(pool.replica_history) == 2


def test_drained_pod_stays_until_its_sessions_end():
    policy = PoolPolicy(min_replicas=2, max_replicas=10, scale_down_stabilization_seconds=0, idle_seconds=0,
                        drain_timeout_seconds=10_000, buffer=0, target_utilization=1.0)
    pool = FakePool(policy, replicas=3)
    pool.sessions.update({0: 8, 1: 0, 2: 5})  # 13 sessions need 2 pods; the highest holds 5
    pool.step()
    d = pool.step()
    assert d.mark_draining == (2,) and d.replicas == 3
    for _ in range(30):  # pod 2 keeps its 5 sessions: it must not go
        d = pool.step()
        assert d.replicas == 3 and 2 in d.draining and d.cut_sessions == 0
    pool.end_sessions_on(2)
    d = pool.step()
    assert d.replicas == 2 and "sessions ended" in d.reason and not d.draining


def test_empty_pod_is_not_removed_in_the_decision_that_marks_it():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, scale_down_stabilization_seconds=0, idle_seconds=0)
    pool = FakePool(policy, replicas=3)
    pool.step(load=1)
    d = pool.step(load=1)
    assert d.mark_draining == (2,) and d.replicas == 3
    d = pool.step(load=1)
    assert d.replicas == 2


def test_drain_timeout_removes_the_pod_and_reports_cut_sessions():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, scale_down_stabilization_seconds=0, idle_seconds=0,
                        drain_timeout_seconds=120)
    pool = FakePool(policy, replicas=2)
    pool.sessions.update({0: 1, 1: 3})
    pool.step()
    d = pool.step()
    assert d.draining == {1}
    pool.run(100)
    assert pool.replicas == 2
    d = pool.run(30)
    assert pool.replicas == 1
    cut = [x for x in pool.decisions if x.cut_sessions]
    assert len(cut) == 1 and cut[0].cut_sessions == 3 and "drain timeout" in cut[0].reason


def test_unknown_sessions_on_a_draining_pod_wait_for_the_timeout():
    policy = PoolPolicy(min_replicas=1, max_replicas=4, scale_down_stabilization_seconds=0, idle_seconds=0,
                        drain_timeout_seconds=60)
    state = ScalerState(recommendations=((0.0, 1),), drain_started=((1, 0.0),))
    obs = dict(replicas=2, ready_replicas=1, active_sessions=0, free_slots=8, queue_length=0, pod_sessions={0: 0})
    assert decide(Observations(now=30.0, **obs), policy, state).replicas == 2
    d = decide(Observations(now=61.0, **obs), policy, state)
    assert d.replicas == 1 and "sessions unknown" in d.reason


def test_a_draining_pod_counts_as_empty_only_on_a_sample_taken_after_its_mark():
    policy = PoolPolicy(min_replicas=1, max_replicas=4, scale_down_stabilization_seconds=0, idle_seconds=0,
                        drain_timeout_seconds=600)
    state = ScalerState(recommendations=((0.0, 1),), drain_started=((1, 100.0),))
    obs = dict(replicas=2, ready_replicas=1, active_sessions=0, free_slots=8, queue_length=0,
               pod_sessions={0: 0, 1: 0})
    # The scrape predates the mark: a session may have been placed in between.
    assert decide(Observations(now=110.0, sampled_at=95.0, **obs), policy, state).replicas == 2
    assert decide(Observations(now=110.0, sampled_at=105.0, **obs), policy, state).replicas == 1


def test_sessions_pinned_on_draining_pods_need_no_serving_slots():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, buffer=0, target_utilization=1.0,
                        drain_timeout_seconds=10_000)
    state = ScalerState(recommendations=((0.0, 3),), drain_started=((3, 0.0),))
    obs = dict(now=10.0, replicas=4, ready_replicas=3, active_sessions=29, free_slots=0, queue_length=0,
               pod_sessions={0: 8, 1: 8, 2: 8, 3: 5})
    d = decide(Observations(**obs), policy, state)
    # 24 sessions on three full serving pods; pod 3's five stay where they are.
    assert d.inputs["demand"] == 24 and d.inputs["pinnedOnDraining"] == 5
    assert d.replicas == 4 and d.draining == {3} and "5 more on draining pods" in d.reason


def test_load_returning_during_a_drain_undrains_instead_of_adding_pods():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, scale_down_stabilization_seconds=0, idle_seconds=0,
                        drain_timeout_seconds=10_000, buffer=0, target_utilization=1.0)
    pool = FakePool(policy, replicas=4)
    pool.set_load(32)
    pool.step()
    assert pool.replicas == 4
    pool.sessions.update({0: 8, 1: 0, 2: 2, 3: 2})
    pool.step()
    pool.step()
    assert pool.draining == {2, 3} and pool.replicas == 4
    d = pool.step(load=30)  # load is back
    assert "undrain" in d.actions and "scale-up" not in d.actions
    assert set(d.undrain) == {2, 3} and d.replicas == 4 and not d.draining
    assert "un-drain" in d.reason


def test_undrain_lifts_the_lowest_marks_first():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, buffer=0, target_utilization=1.0)
    state = ScalerState(recommendations=((0.0, 1),), drain_started=((2, 0.0), (3, 0.0), (4, 0.0)))
    d = decide(Observations(now=10.0, replicas=5, ready_replicas=2, active_sessions=20, free_slots=0,
                            queue_length=4, pod_sessions={2: 3, 3: 1, 4: 1}), policy, state)
    assert d.undrain == (2,) and d.draining == {3, 4} and d.replicas == 5


# ------------------------------------------------------------------ missing data

def test_missing_metrics_hold_the_size_and_say_so():
    pool = FakePool(replicas=2)
    pool.run(60, load=50)
    size = pool.replicas
    for _ in range(100):  # Prometheus down for 1000 s with no load at all
        d = pool.step(load=0, missing=True)
        assert d.replicas == size and not d.metrics_available and d.action == "fail-static"
        assert "fail static" in d.reason and "active_sessions" in d.reason
        assert not d.mark_draining and not d.undrain


def test_surplus_clock_restarts_after_a_metrics_gap():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, scale_down_stabilization_seconds=0, idle_seconds=300)
    pool = FakePool(policy, replicas=1)
    pool.run(200, load=40)
    high = pool.replicas
    pool.run(250, load=4)
    pool.step(load=4, missing=True)
    pool.run(250, load=4)
    assert pool.replicas == high and not pool.draining
    pool.run(60, load=4)
    assert pool.draining


def test_missing_metrics_still_raise_a_pool_to_min():
    d = decide(Observations(now=0.0, replicas=0, ready_replicas=None, active_sessions=None, free_slots=None,
                            queue_length=None), POLICY)
    assert d.replicas == 2 and not d.metrics_available


def test_missing_optional_observations_do_not_block_decisions():
    d = decide(Observations(now=0.0, replicas=2, ready_replicas=2, active_sessions=16, free_slots=0,
                            queue_length=5), POLICY)
    assert d.metrics_available and d.replicas > 2


# ------------------------------------------------------------------ state

def test_fresh_state_does_not_scale_down_before_a_full_window():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, idle_seconds=0, scale_down_stabilization_seconds=300)
    pool = FakePool(policy, replicas=6)
    pool.run(290, load=0)
    assert pool.replicas == 6 and not pool.draining
    pool.run(30, load=0)
    assert pool.draining


def test_draining_marks_the_state_lost_are_adopted_from_the_cluster():
    policy = PoolPolicy(min_replicas=1, max_replicas=10, drain_timeout_seconds=100)
    obs = dict(replicas=3, ready_replicas=2, active_sessions=4, free_slots=12, queue_length=0,
               pod_sessions={0: 2, 1: 0, 2: 2}, draining=frozenset({2}))
    d = decide(Observations(now=500.0, **obs), policy, ScalerState())
    assert d.draining == {2} and d.replicas == 3 and "adopted" in d.reason
    d = decide(Observations(now=550.0, **obs), policy, d.state)
    assert d.replicas == 3  # the timeout runs from adoption, not from the start of time
    d = decide(Observations(now=601.0, **obs), policy, d.state)
    assert d.replicas == 2


def test_the_state_wins_over_a_stale_mark_in_the_cluster():
    # The policy lifted pod 3's mark last time, but the cluster still shows it (not applied yet).
    state = ScalerState(recommendations=((0.0, 4),))
    d = decide(Observations(now=10.0, replicas=4, ready_replicas=3, active_sessions=20, free_slots=4,
                            queue_length=0, draining=frozenset({3}), pod_sessions={0: 8, 1: 8, 2: 4, 3: 0}),
               POLICY, state)
    assert d.replicas == 4 and not d.draining and d.undrain == (3,)


def test_state_survives_a_json_round_trip():
    pool = FakePool(replicas=2)
    pool.run(200, load=50)
    pool.run(400, load=5)
    restored = ScalerState.from_dict(json.loads(json.dumps(pool.state.to_dict())))
    assert restored == pool.state
    obs = pool.observe()
    assert decide(obs, POLICY, restored) == decide(obs, POLICY, pool.state)
    assert ScalerState.from_dict(None) == ScalerState()


def test_state_history_stays_small():
    pool = FakePool(replicas=2)
    for i in range(2000):
        pool.step(load=(i * 7) % 80)
    assert len(pool.state.recommendations) <= 300 / 10 + 2


def test_decisions_are_pure():
    pool = FakePool(replicas=3)
    pool.run(100, load=30)
    obs, state = pool.observe(arrival_rate=0.3), pool.state
    assert decide(obs, POLICY, state) == decide(obs, POLICY, state)


def test_policy_validation():
    with pytest.raises(ValueError):
        PoolPolicy(min_replicas=5, max_replicas=3)
    with pytest.raises(ValueError):
        PoolPolicy(target_utilization=0)
    with pytest.raises(ValueError):
        PoolPolicy(scale_down_max_step=0)


def test_policy_from_a_spec_shaped_object():
    class Step:
        def __init__(self, s, n):
            self.stabilization_seconds, self.max_step = s, n

    class Spec:
        min_replicas, max_replicas, sessions_per_pod, target_utilization, buffer = 2, 9, 6, 0.8, 3
        scale_up, scale_down = Step(0, 4), Step(300, 2)
        idle_seconds, drain_timeout_seconds = 120, 900

    p = PoolPolicy.from_spec(Spec(), default_pod_start_seconds=20)
    assert (p.min_replicas, p.max_replicas, p.sessions_per_pod, p.scale_down_max_step, p.idle_seconds,
            p.drain_timeout_seconds, p.default_pod_start_seconds) == (2, 9, 6, 2, 120, 900, 20)


def test_module_imports_no_component():
    tree = ast.parse(Path(autoscale.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"stt_pod", "stt_router", "stt_operator", "time", "datetime"}
