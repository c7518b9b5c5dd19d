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
