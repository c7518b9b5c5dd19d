"""Reserved capacity in the autoscaling policy: the reserve is kept free on top of the best-effort buffer."""

from __future__ import annotations

import pytest

from voxfleet.autoscale import Observations, PoolPolicy, decide, pods_with_reserve, reserved_slots

BASE = dict(min_replicas=1, max_replicas=10, sessions_per_pod=10, target_utilization=1.0, buffer=2,
            scale_up_max_step=10)
PLAIN = PoolPolicy(**BASE)
HIGH = PoolPolicy(**BASE, reserve=(("high", 0.2),))


def observe(active: int, replicas: int = 1, queue: int = 0, in_use: int | None = None, per_pod: int = 10,
            **extra) -> Observations:
    return Observations(now=1000.0, replicas=replicas, ready_replicas=replicas, active_sessions=active,
                        free_slots=replicas * per_pod - active, queue_length=queue, capacity_per_pod=per_pod,
                        reserved_in_use=in_use, **extra)


def test_reserved_slots_round_up_as_the_router_counts():
    assert [reserved_slots(t, 0.2) for t in (0, 1, 4, 5, 8, 10)] == [0, 1, 1, 1, 2, 2]
    assert HIGH.reserved_slots(10) == 2 and PLAIN.reserved_slots(10) == 0
    both = PoolPolicy(**BASE, reserve=(("high", 0.2), ("normal", 0.15)))
    assert both.reserved_slots(10) == 2 + 2  # each class rounds up on its own


def test_an_idle_pool_with_room_for_buffer_and_reserve_holds():
    assert decide(observe(0), HIGH).replicas == 1  # 2 buffer + 2 reserve of 10 slots


def test_the_reserve_is_kept_on_top_of_the_buffer():
    # 7 sessions on 10 slots: 3 free. Without a reserve that covers the buffer of 2; with 2 slots reserved
    # for high, best effort has 1 free: below its buffer, so a pod is added.
    assert decide(observe(7), PLAIN).actions == ()
    decision = decide(observe(7), HIGH)
    assert decision.replicas == 2 and decision.actions == ("scale-up",)
    assert "reserve 2 of 2 unused" in decision.reason and "< buffer 2 + reserve 2" in decision.reason
    assert decision.inputs["reservedSlots"] == 2


def test_a_reserve_its_class_uses_is_not_counted_twice():
    # The 7 sessions include 2 high ones on their reserve: nothing more is kept free for high.
    decision = decide(observe(7, in_use=2), HIGH)
    assert decision.replicas == 1 and decision.actions == ()
    assert decision.inputs["reservedInUse"] == 2
    # Unknown use: the whole reserve counts as unused (the safe side).
    assert decide(observe(7, in_use=None), HIGH).replicas == 2


def test_the_reserve_grows_with_the_pool_it_asks_for():
    # 8 slots of demand + buffer on pods of 4: 2 pods (8 slots) would reserve 2 more, 3 pods (12) reserve 3: 11 fit.
    assert pods_with_reserve(8, 4, PoolPolicy(**{**BASE, "sessions_per_pod": 4}, reserve=(("high", 0.2),)), 0) == 3
    assert pods_with_reserve(8, 4, PoolPolicy(**{**BASE, "sessions_per_pod": 4}), 0) == 2
    big = PoolPolicy(**{**BASE, "max_replicas": 1000}, reserve=(("high", 0.5),))
    for need in range(0, 200, 7):
        pods = pods_with_reserve(need, 3, big, 0)
        assert pods * 3 >= need + reserved_slots(pods * 3, 0.5)  # enough ...
        if pods:
            fewer = pods - 1
            assert fewer * 3 < need + reserved_slots(fewer * 3, 0.5)  # ... and the fewest


def test_a_busy_pool_keeps_the_reserve_free_when_scaling_up():
    # 30 active + 10 queued on 4 pods of 10: demand 40 + buffer 2 + the reserve of the pool that serves them.
    decision = decide(observe(40, replicas=4, queue=10), HIGH)
    pods = decision.replicas
    assert pods * 10 >= 50 + 2 + reserved_slots(pods * 10, 0.2)
    assert (pods - 1) * 10 < 50 + 2 + reserved_slots((pods - 1) * 10, 0.2)
    assert decide(observe(40, replicas=4, queue=10), PLAIN).replicas == 6


@pytest.mark.parametrize("reserve", [(("high", 1.0),), (("high", -0.1),), (("high", 0.5), ("low", 0.5))])
def test_reserve_shares_are_checked(reserve):
    with pytest.raises(ValueError, match="reserve"):
        PoolPolicy(**BASE, reserve=reserve)
