"""The waiting line: priority then arrival, bounded length and wait, 1-based positions."""

from __future__ import annotations

import pytest

from stt_router.queue import QueueFull, SessionQueue


def test_priority_first_then_arrival():
    q = SessionQueue(10, 30)
    for name, prio in [("a", "low"), ("b", "normal"), ("c", "high"), ("d", "normal"), ("e", "high")]:
        q.push(name, prio, 0.0)
    assert [q.pop().item for _ in range(5)] == ["c", "e", "b", "d", "a"]
    assert q.pop() is None


def test_failover_goes_before_every_client_class_and_ignores_the_length_bound():
    q = SessionQueue(1, 30)
    q.push("client", "high", 0.0)
    with pytest.raises(QueueFull):
        q.push("late", "high", 0.0)
    q.push("moved", "failover", 1.0, bounded=False)
    assert q.peek().item == "moved"


def test_positions_follow_the_order_and_update_on_removal():
    q = SessionQueue(10, 30)
    low = q.push("low", "low", 0.0)
    normal = q.push("normal", "normal", 0.0)
    assert q.position(normal) == 1 and q.position(low) == 2
    high = q.push("high", "high", 0.0)
    assert [(w.item, pos) for w, pos in q.positions()] == [("high", 1), ("normal", 2), ("low", 3)]
    assert q.remove(normal)
    assert not q.remove(normal)
    assert q.position(normal) is None
    assert q.position(high) == 1 and q.position(low) == 2


def test_length_bound():
    q = SessionQueue(2, 30)
    q.push(1, "normal", 0.0)
    q.push(2, "normal", 0.0)
    with pytest.raises(QueueFull):
        q.push(3, "high", 0.0)
    assert len(q) == 2


def test_wait_bound_expires_the_old_ones_only():
    q = SessionQueue(10, 5.0)
    old = q.push("old", "high", 0.0)
    new = q.push("new", "low", 3.0)
    assert old.deadline == 5.0
    assert q.expired(4.9) == []
    assert [w.item for w in q.expired(5.0)] == ["old"]
    assert q.position(new) == 1
    assert q.oldest_wait(6.0) == 3.0
    assert [w.item for w in q.expired(100.0)] == ["new"]
    assert q.oldest_wait(100.0) == 0.0


def test_unknown_priority_is_refused():
    with pytest.raises(ValueError):
        SessionQueue(1, 1).push("x", "urgent", 0.0)
