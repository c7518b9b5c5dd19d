"""stt_pod.ordering: frames applied in sequence order, duplicates dropped, gaps reported."""

from __future__ import annotations

from stt_pod.ordering import FrameOrderer


def payload(seq: int) -> bytes:
    return f"frame-{seq}".encode()


def push(orderer: FrameOrderer, *seqs: int):
    return [orderer.push(s, payload(s)) for s in seqs]


def released(results) -> list[int]:
    return [seq for r in results for seq, _ in r.frames]


def test_in_order_frames_are_released_at_once():
    o = FrameOrderer(max_held=4)
    results = push(o, 0, 1, 2)
    assert [[s for s, _ in r.frames] for r in results] == [[0], [1], [2]]
    assert all(not r.duplicate and not r.skipped for r in results)
    assert results[1].frames == [(1, payload(1))]
    assert o.last_applied == 2


def test_a_fresh_orderer_has_applied_nothing():
    assert FrameOrderer().last_applied == -1


def test_resume_starts_at_next_seq():
    o = FrameOrderer(max_held=4, next_seq=10)
    assert o.push(10, b"x").frames == [(10, b"x")]
    assert o.push(5, b"old").duplicate


def test_out_of_order_within_the_hold_is_reordered():
    o = FrameOrderer(max_held=4)
    first, third, second = push(o, 0, 2, 1)
    assert [s for s, _ in first.frames] == [0]
    assert third.frames == [] and not third.skipped and not third.duplicate  # held, waiting for 1
    assert second.frames == [(1, payload(1)), (2, payload(2))]
    assert o.last_applied == 2


def test_many_held_frames_are_released_in_order_when_the_gap_fills():
    o = FrameOrderer(max_held=8)
    results = push(o, 5, 3, 4, 1, 2, 0)
    assert released(results) == [0, 1, 2, 3, 4, 5]
    assert not any(r.skipped for r in results)


def test_duplicate_of_an_applied_frame():
    o = FrameOrderer(max_held=4)
    push(o, 0, 1)
    dup = o.push(0, b"again")
    assert dup.duplicate and dup.frames == [] and not dup.skipped
    assert o.last_applied == 1


def test_duplicate_of_a_held_frame_keeps_the_first_payload():
    o = FrameOrderer(max_held=4)
    o.push(2, b"first")
    dup = o.push(2, b"second")
    assert dup.duplicate and dup.frames == []
    out = push(o, 0, 1)
    assert out[1].frames[-1] == (2, b"first")


def test_a_full_hold_skips_the_gap_and_reports_it():
    o = FrameOrderer(max_held=2)
    assert released(push(o, 0)) == [0]
    held = push(o, 3, 4)  # 1 and 2 are missing; the hold is now full
    assert released(held) == [] and not any(r.skipped for r in held)
    overflow = o.push(5, payload(5))
    assert overflow.skipped == [(1, 2)]
    assert [s for s, _ in overflow.frames] == [3, 4, 5]
    assert o.last_applied == 5
    late = o.push(2, payload(2))  # a skipped frame that shows up after all
    assert late.duplicate and late.frames == []


def test_overflow_skips_only_up_to_the_lowest_held_frame():
    o = FrameOrderer(max_held=2)
    push(o, 2, 5)  # 0, 1 missing; 3, 4 missing
    overflow = o.push(6, payload(6))
    assert overflow.skipped == [(0, 1)]
    assert [s for s, _ in overflow.frames] == [2]
    assert o.next_seq == 3
    assert released(push(o, 3, 4)) == [3, 4, 5, 6]


def test_no_hold_skips_immediately():
    o = FrameOrderer(max_held=0)
    out = o.push(3, payload(3))
    assert out.skipped == [(0, 2)] and [s for s, _ in out.frames] == [3]


def test_flush_applies_everything_held_and_reports_every_gap():
    o = FrameOrderer(max_held=8)
    push(o, 0, 3, 4, 7)
    out = o.flush()
    assert out.skipped == [(1, 2), (5, 6)]
    assert [s for s, _ in out.frames] == [3, 4, 7]
    assert o.last_applied == 7
    assert o.flush().frames == [] and o.flush().skipped == []


def test_flush_with_nothing_held_is_empty():
    o = FrameOrderer()
    push(o, 0, 1)
    out = o.flush()
    assert out.frames == [] and out.skipped == [] and not out.duplicate
