"""Reserved capacity (stt_router.reserve): what a class may take, the reserve never lent away."""

from __future__ import annotations

import pytest

from stt_router.placement import PodView, total_slots
from stt_router.reserve import Reserve, format_reserve, parse_reserve, reserved_slots

HIGH = Reserve({"high": 0.2})


def test_reserved_slots_round_up():
    assert reserved_slots(10, 0.2) == 2
    assert reserved_slots(8, 0.2) == 2  # 1.6 -> 2
    assert reserved_slots(4, 0.2) == 1  # 0.8 -> 1: any share of a non-empty pool keeps a slot
    assert reserved_slots(5, 0.2) == 1  # exactly 1.0 stays 1 (no float drift upwards)
    assert reserved_slots(15, 0.1) == 2  # 1.5 -> 2
    assert reserved_slots(0, 0.5) == 0
    assert reserved_slots(10, 0.0) == 0
    assert reserved_slots(1, 0.99) == 1


def test_best_effort_never_takes_the_last_reserved_slot():
    # 10 slots, 2 reserved for high, none used by high: low and normal may fill 8.
    for used in range(8):
        assert HIGH.may_take("low", 10, 10 - used, {}) and HIGH.may_take("normal", 10, 10 - used, {})
    assert HIGH.available("low", 10, 2, {}) == 0
    assert not HIGH.may_take("low", 10, 2, {})
    assert not HIGH.may_take("normal", 10, 1, {})
    assert HIGH.may_take("high", 10, 2, {}) and HIGH.may_take("high", 10, 1, {})
    assert not HIGH.may_take("high", 10, 0, {})


def test_a_full_pool_queues_best_effort_while_a_high_session_gets_a_reserved_slot():
    # 8 best-effort sessions hold every unreserved slot: the next low waits, a high one goes.
    in_use = {"low": 5, "normal": 3}
    assert not HIGH.may_take("low", 10, 2, in_use)
    assert HIGH.may_take("high", 10, 2, in_use)
    in_use["high"] = 1  # it took one; one reserved slot left
    assert not HIGH.may_take("normal", 10, 1, in_use)
    assert HIGH.may_take("high", 10, 1, in_use)


def test_the_reserve_is_not_lent_away():
    # High uses none of its reserve: the reserved slots stay free for it, whatever waits.
    assert HIGH.unused(10, {"low": 8}) == {"high": 2}
    assert HIGH.available("low", 10, 2, {"low": 8}) == 0
    # High sessions leave: their slots go back to the reserve, not to the queued best effort.
    assert HIGH.available("low", 10, 2, {"low": 8, "high": 0}) == 0
    # High uses its reserve: nothing more is kept back (it is not counted twice).
    assert HIGH.unused(10, {"high": 2}) == {"high": 0}
    assert HIGH.available("low", 10, 3, {"high": 2, "low": 5}) == 3


def test_a_class_beyond_its_reserve_shares_the_rest():
    # High holds 5 (more than its 2): nothing is kept back, and high competes for the rest.
    assert HIGH.available("low", 10, 5, {"high": 5}) == 5
    assert HIGH.available("high", 10, 5, {"high": 5}) == 5


def test_a_class_may_not_take_another_class_reserve():
    both = Reserve({"high": 0.2, "normal": 0.1})
    assert both.slots(10) == {"high": 2, "normal": 1}
    assert both.available("low", 10, 3, {}) == 0
    assert both.available("normal", 10, 3, {}) == 1  # its own, not high's
    assert both.available("high", 10, 3, {}) == 2  # its own, not normal's
    assert both.available("high", 10, 3, {"normal": 1}) == 3  # normal uses its reserve: none kept for it


def test_a_pool_that_shrinks_shrinks_the_reserve():
    # 10 slots: 2 reserved. The pool shrinks to 5 slots (one pod of two gone): 1 reserved.
    assert HIGH.slots(10) == {"high": 2} and HIGH.slots(5) == {"high": 1}
    assert HIGH.available("low", 5, 2, {}) == 1
    # High holds 2 of the 5 now, above its reserve: best effort may take whatever is free.
    assert HIGH.available("low", 5, 1, {"high": 2}) == 1
    # Fewer free slots than reserved: best effort gets nothing, high gets what there is.
    assert HIGH.available("low", 5, 0, {}) == 0
    assert HIGH.available("high", 5, 1, {}) == 1
    # An empty pool reserves nothing.
    assert HIGH.slots(0) == {"high": 0} and HIGH.available("high", 0, 0, {}) == 0


def test_no_reserve_changes_nothing():
    none = Reserve()
    assert not none
    assert none.available("low", 10, 3, {}) == 3
    assert Reserve({"high": 0.0}).available("low", 10, 1, {}) == 1
    assert HIGH


def test_failover_and_unknown_classes_get_only_the_shared_slots():
    assert HIGH.available("failover", 10, 3, {}) == 1


def test_parse_and_format():
    assert parse_reserve("high=0.2") == {"high": 0.2}
    assert parse_reserve(" high = 0.2 , normal=0.05,") == {"high": 0.2, "normal": 0.05}
    assert parse_reserve("") == {}
    assert format_reserve({"high": 0.2, "normal": 0.05}) == "high=0.2,normal=0.05"
    assert format_reserve({}) == "" and format_reserve({"low": 0.0}) == ""
    assert Reserve.parse("low=0.5").shares == {"low": 0.5}


@pytest.mark.parametrize("text,match", [
    ("high", "CLASS=SHARE"),
    ("urgent=0.1", "not a priority class"),
    ("failover=0.1", "not a priority class"),
    ("high=lots", "not a number"),
    ("high=1", r"\[0, 1\)"),
    ("high=-0.1", r"\[0, 1\)"),
    ("high=nan", r"\[0, 1\)"),
    ("high=0.1,high=0.2", "twice"),
    ("high=0.6,normal=0.4", "less than 1"),
])
def test_parse_refuses(text, match):
    with pytest.raises(ValueError, match=match):
        parse_reserve(text)


def test_reserve_checks_its_shares():
    with pytest.raises(ValueError):
        Reserve({"high": 1.0})
    with pytest.raises(ValueError):
        Reserve({"vip": 0.1})


def test_total_slots_counts_the_pods_that_take_sessions():
    ready = PodView("a", "ws://a", 0, ready=True, reachable=True, capacity=4, reported_active=4)
    draining = PodView("b", "ws://b", 1, ready=True, reachable=True, draining=True, capacity=4)
    gone = PodView("c", "ws://c", 2, ready=False, reachable=False, capacity=4)
    assert total_slots([ready, draining, gone]) == 4


# ------------------------------------------------------------------ the router's queue dispatch


class Session:
    """One session's task against a RouterServer: take a slot (queueing if need be), hold it until told to leave."""

    def __init__(self, router, priority: str):
        import asyncio

        self.router, self.priority = router, priority
        self.leave = asyncio.Event()
        self.pod = None
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        self.pod = await self.router.acquire(self.priority, None, None)
        await self.leave.wait()
        self.router.release_pod(self.pod)

    @property
    def placed(self) -> bool:
        return self.pod is not None


def reserving_router(reserve: str, capacity: int):
    from stt_router.server import RouterServer
    from stt_router.settings import RouterSettings

    router = RouterServer(RouterSettings(pods="ws://127.0.0.1:9", anonymous=True, reserve=reserve,
                                         max_queue_wait_seconds=60))
    pod = router.pool.pods["p"] = PodView("p", "ws://127.0.0.1:9", 0)
    pod.report(ready=True, draining=False, capacity=capacity, active=0)
    return router, pod


async def settle():
    import asyncio

    for _ in range(5):
        await asyncio.sleep(0)


def gauges(router) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    router._update_gauges()
    return {(s.name, s.labels["priority"]): s.value for f in text_string_to_metric_families(router.metrics.render().decode())
            if f.name.startswith("voxfleet_router_reserved_slots") for s in f.samples}


async def test_queued_best_effort_waits_while_a_high_session_takes_the_reserved_slot():
    router, pod = reserving_router("high=0.25", capacity=4)  # 1 of 4 reserved
    low = [Session(router, "low") for _ in range(3)]
    await settle()
    assert all(s.placed for s in low)
    waiting = Session(router, "normal")
    await settle()
    assert not waiting.placed and len(router.queue) == 1  # the last free slot is high's
    assert router.reserve_status() == {"high": {"slots": 1, "in_use": 0}}
    assert gauges(router) == {("voxfleet_router_reserved_slots", "high"): 1.0,
                              ("voxfleet_router_reserved_slots_in_use", "high"): 0.0}
    high = Session(router, "high")
    await settle()
    assert high.placed and not waiting.placed  # the key client jumps the queue
    assert router.reserve_status() == {"high": {"slots": 1, "in_use": 1}}
    assert gauges(router)[("voxfleet_router_reserved_slots_in_use", "high")] == 1.0

    high.leave.set()  # the high session leaves: its slot goes back to the reserve
    await settle()
    pod.report(ready=True, draining=False, capacity=4, active=3)
    router._dispatch()
    await settle()
    assert not waiting.placed and router.in_use == {"low": 3}

    low[0].leave.set()  # a best-effort slot comes free: the waiting session takes it
    await settle()
    pod.report(ready=True, draining=False, capacity=4, active=2)
    router._dispatch()
    await settle()
    assert waiting.placed and router.in_use == {"low": 2, "normal": 1}
    for s in [*low[1:], waiting]:
        s.leave.set()
    await settle()
    assert router.in_use == {}


async def test_a_high_waiter_behind_blocked_best_effort_gets_the_reserved_slot_when_it_frees():
    router, pod = reserving_router("high=0.5", capacity=2)  # 1 of 2 reserved
    first = Session(router, "high")
    second = Session(router, "high")
    await settle()
    assert first.placed and second.placed  # high beyond its reserve shares the rest
    low = Session(router, "low")
    late = Session(router, "high")
    await settle()
    assert not low.placed and not late.placed
    second.leave.set()
    await settle()
    pod.report(ready=True, draining=False, capacity=2, active=1)
    router._dispatch()
    await settle()
    # high holds 1 = its reserve, so the free slot is shared: the queue goes in order, high first anyway
    assert late.placed and not low.placed
    for s in (first, late):
        s.leave.set()
    low.task.cancel()
    await settle()
    assert router.in_use == {}


async def test_without_a_reserve_the_queue_is_first_come_within_a_class():
    router, pod = reserving_router("", capacity=1)
    a = Session(router, "low")
    await settle()
    b, c = Session(router, "low"), Session(router, "high")
    await settle()
    assert a.placed and not b.placed and not c.placed
    assert gauges(router) == {}
    a.leave.set()
    await settle()
    pod.report(ready=True, draining=False, capacity=1, active=0)
    router._dispatch()
    await settle()
    assert c.placed and not b.placed  # priority order, as always
    c.leave.set()
    b.task.cancel()
    await settle()


def test_the_router_setting_is_validated_and_has_an_environment_variable():
    import argparse

    from stt_router.settings import ENV_PREFIX, RouterSettings
    from voxfleet import settings as settings_mod

    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser, RouterSettings, ENV_PREFIX)
    env = {"VOXFLEET_ROUTER_PODS": "ws://127.0.0.1:9000", "VOXFLEET_ROUTER_ANONYMOUS": "true",
           "VOXFLEET_ROUTER_RESERVE": "high=0.2"}
    s = settings_mod.load(RouterSettings, ENV_PREFIX, parser.parse_args([]), env)
    assert s.reserve == "high=0.2"
    s.validate()
    assert settings_mod.load(RouterSettings, ENV_PREFIX, parser.parse_args(["--reserve", "normal=0.1"]),
                             env).reserve == "normal=0.1"
    for wrong in ("high=1.0", "vip=0.1", "high=0.5,low=0.5"):
        with pytest.raises(ValueError, match="reserve"):
            RouterSettings(pods="ws://127.0.0.1:9000", anonymous=True, reserve=wrong).validate()
