"""Replay tail and leg numbering: what the client sees stays continuous across failovers."""

from __future__ import annotations

import pytest

from stt_router.replay import RelayState, ReplayTail
from stt_router.tokens import Pin
from voxfleet import protocol as p

FRAME = b"\x00\x00" * 1600  # 0.1 s of 16 kHz pcm16


def state(max_seconds: float = 30.0) -> RelayState:
    return RelayState.new(Pin("sid", "pod-0", "ws://127.0.0.1:9000", "tok0"), max_seconds, 1 << 30)


def feed(s: RelayState, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        assert s.accept_frame(seq, FRAME, now=0.0)


def send_all(s: RelayState) -> list[int]:
    sent = []
    while (frame := s.next_to_send()) is not None:
        seq, _ = p.unpack_frame(s.pod_frame(frame))
        sent.append(seq)
    return sent


def final(segment_id: int, text: str, start: float, end: float) -> dict:
    return p.final(segment_id, text, start, end)


def test_frames_go_to_the_pod_in_order_once():
    s = state()
    feed(s, 0, 4)
    assert send_all(s) == [0, 1, 2, 3, 4]
    assert send_all(s) == []
    feed(s, 5, 5)
    assert send_all(s) == [5]


def test_old_and_repeated_frames_are_dropped():
    s = state()
    feed(s, 0, 2)
    assert not s.accept_frame(2, FRAME, 0.0)
    assert not s.accept_frame(1, FRAME, 0.0)
    assert len(s.tail) == 3


def test_ack_trims_the_tail_and_the_client_gets_its_commit_point():
    s = state()
    feed(s, 0, 9)
    send_all(s)
    out = s.on_pod_message(p.ack(9, 4, 0.52))
    assert out == [p.ack(4, 4, 0.52)]
    assert [f.seq for f in s.tail.frames] == [5, 6, 7, 8, 9]
    assert s.tail.start_time == pytest.approx(0.5)
    assert s.on_pod_message(p.ack(9, 4, 0.52)) == []  # nothing new to say
    assert send_all(s) == []  # trimming does not resend anything


def test_finals_partials_pass_through_on_the_first_pod():
    s = state()
    feed(s, 0, 29)
    send_all(s)
    assert s.on_pod_message(p.partial("hel", 0.2, 0.6)) == [p.partial("hel", 0.2, 0.6)]
    out = s.on_pod_message(final(0, "hello there", 0.2, 1.25))
    assert out[0] == final(0, "hello there", 0.2, 1.25)
    # a final commits the frames it covers even before the pod's ack says so
    assert out[1] == p.ack(11, 11, 1.2)
    assert s.commit == 11


def test_tail_is_bounded_and_frees_on_commit():
    s = state(max_seconds=1.0)
    feed(s, 0, 9)
    assert s.tail.full
    send_all(s)
    s.on_pod_message(p.ack(9, 3, 0.4))
    assert not s.tail.full


def test_a_single_frame_larger_than_the_bound_still_fits():
    tail = ReplayTail(max_seconds=0.05, max_bytes=10)
    assert not tail.full
    tail.append(0, FRAME, 0.1, 0.0)
    assert tail.full


def test_failover_replays_after_the_commit_point_renumbered_and_shifted():
    s = state()
    feed(s, 0, 49)
    send_all(s)
    s.on_pod_message(final(0, "one", 0.3, 1.0))
    s.on_pod_message(p.ack(49, 19, 2.0))  # the pod had finals up to 2.0 s: frames 0..19
    s.on_pod_message(p.partial("two thr", 2.4, 4.0))
    s.on_pod_message({"type": "end", "segments": 1, "audio_seconds": 5.0})  # held, then the pod dies
    leg = s.fail_over("pod-1", "ws://127.0.0.1:9001")
    assert s.pending_end is None
    assert (leg.seq_base, leg.seg_base, leg.time_offset) == (20, 1, pytest.approx(2.0))
    assert send_all(s) == list(range(0, 30))  # frames 20..49 as 0..29 on the new pod
    pin = s.leg_ready("tok1")
    assert (pin.pod, pin.pod_token, pin.seq_base, pin.seg_base, pin.failovers) == ("pod-1", "tok1", 20, 1, 1)
    # the new pod numbers from zero; the client sees the session go on
    assert s.on_pod_message(final(0, "two three", 0.4, 2.0)) == [final(1, "two three", 2.4, 4.0),
                                                                 p.ack(39, 39, 4.0)]
    assert s.on_pod_message(p.ack(29, 24, 2.5)) == [p.ack(44, 44, 4.5)]
    assert s.on_pod_message(p.partial("four", 2.6, 2.9)) == [p.partial("four", 4.6, 4.9)]
    assert not s.pin_changed
    # controls' replies speak the client's numbering and session time too
    assert s.on_pod_message({"type": "flushed", "segments": [0]}) == [{"type": "flushed", "segments": [1]}]
    assert s.on_pod_message({"type": "speech_started", "at": 0.5}) == [{"type": "speech_started",
                                                                         "at": pytest.approx(2.5)}]


def test_a_final_relayed_before_its_ack_is_not_heard_twice():
    s = state()
    feed(s, 0, 39)
    send_all(s)
    s.on_pod_message(p.ack(39, 9, 1.0))
    s.on_pod_message(final(0, "said already", 1.2, 2.95))  # the ack for it never came: the pod died
    leg = s.fail_over("pod-1", "ws://127.0.0.1:9001")
    assert leg.seq_base == 29 and leg.time_offset == pytest.approx(2.9)  # replay starts at the frame holding 2.95
    # the new pod hears the last 50 ms of a word it cannot place: a fragment ending before 2.95 is dropped
    assert s.on_pod_message(final(0, "ready", 0.0, 0.04)) == []
    out = s.on_pod_message(final(1, "new words", 0.3, 0.9))
    assert out[0] == final(1, "new words", 3.2, 3.8)
    assert s.pin_changed  # segment numbering moved by the dropped fragment: the client needs a new token
    assert s.current_pin().seg_base == 0


def test_trailer_goes_after_the_audio_and_again_after_a_failover():
    s = state()
    feed(s, 0, 4)
    s.trailer = p.encode(p.END)
    assert not s.trailer_due()
    send_all(s)
    assert s.trailer_due()
    s.leg.trailer_sent = True
    assert not s.trailer_due()
    s.fail_over("pod-1", "ws://127.0.0.1:9001")
    assert not s.trailer_due()
    assert send_all(s) == [0, 1, 2, 3, 4]
    assert s.trailer_due()


def test_errors_and_end_are_held_for_the_relay_to_decide():
    s = state()
    assert s.on_pod_message(p.error("bad_frame", "x")) == []
    assert s.on_pod_message(p.end(0, 1.0)) == []
    assert s.pending_error["code"] == "bad_frame"
    assert s.pending_end == p.end(0, 1.0)


def test_end_counts_every_segment_of_the_session_and_its_whole_audio():
    s = state()
    feed(s, 0, 29)
    send_all(s)
    s.on_pod_message(final(0, "a", 0.1, 0.5))
    s.on_pod_message(p.ack(29, 9, 1.0))
    s.fail_over("pod-1", "ws://127.0.0.1:9001")
    s.on_pod_message(final(0, "b", 0.5, 1.0))
    s.on_pod_message(p.end(1, 2.0))
    assert s.pending_end == p.end(2, 3.0)


def test_gap_warnings_speak_client_frame_numbers():
    s = state()
    feed(s, 0, 29)
    s.on_pod_message(p.ack(29, 9, 1.0))
    s.fail_over("pod-1", "ws://127.0.0.1:9001")
    out = s.on_pod_message(p.warning("gap", "frames 3..4 never arrived", first=3, last=4))
    assert (out[0]["first"], out[0]["last"]) == (13, 14)


def test_unknown_messages_pass_through_and_ready_is_the_relays_business():
    s = state()
    assert s.on_pod_message({"type": "future", "x": 1}) == [{"type": "future", "x": 1}]
    assert s.on_pod_message(p.ready("pod-session", "t")) == []


def test_a_resumed_session_keeps_the_pods_numbering_and_refills_its_tail():
    pin = Pin("sid", "pod-1", "ws://127.0.0.1:9001", "tok", seq_base=20, seg_base=2, time_offset=2.0)
    # the client last saw frame 29 committed; the pod has applied up to its own 14 (client 34)
    s = RelayState.resumed(pin, 30.0, 1 << 30, last_seq=29, last_segment_id=3, pod_next_seq=15)
    assert s.commit == 29 and s.next_segment == 4
    feed(s, 30, 39)  # the client resends after what it saw committed
    assert send_all(s) == [15, 16, 17, 18, 19]  # only what the pod lacks
    assert s.tail.start_time is None  # not known until the pod commits
    assert s.on_pod_message(p.ack(19, 12, 1.3)) == [p.ack(32, 32, 3.3)]  # pod time 1.3 is session time 3.3
    assert s.tail.start_time == pytest.approx(3.3)
    assert s.on_pod_message(final(2, "x", 1.5, 1.8))[0] == final(4, "x", 3.5, 3.8)


# --- the per-frame fast paths: the same results as the general ones


def test_pod_acks_are_translated_without_json_exactly_as_the_general_path():
    fast, slow = state(), state()
    for s in (fast, slow):
        feed(s, 0, 49)
        send_all(s)
    acks = [p.ack(9, 4, 0.52), p.ack(9, 4, 0.52), p.ack(19, 19, 2.0), p.ack(29, 21, 2.2000000001), p.ack(49, 49, 5)]
    for ack in acks:
        assert list(fast.pod_text(p.encode(ack))) == [p.encode(m) for m in slow.on_pod_message(ack)]
    assert (fast.commit, fast.committed_seconds, len(fast.tail)) == (slow.commit, slow.committed_seconds, len(slow.tail))
    # after a failover the fast path shifts numbers and times the same way
    for s in (fast, slow):
        s.fail_over("pod-1", "ws://127.0.0.1:9001")
        feed(s, 50, 59)
        send_all(s)
    ack = p.ack(9, 4, 0.5)
    assert list(fast.pod_text(p.encode(ack))) == [p.encode(m) for m in slow.on_pod_message(ack)] == [p.encode(p.ack(54, 54, 5.5))]


def test_messages_the_fast_path_does_not_recognise_take_the_json_path():
    s = state()
    feed(s, 0, 9)
    spaced = '{"type": "ack", "seq": 9, "committed_seq": 4, "committed_seconds": 0.5}'  # json.dumps' default spacing
    assert list(s.pod_text(spaced)) == [p.encode(p.ack(4, 4, 0.5))]
    assert list(s.pod_text(p.encode(p.partial("hi", 0.1, 0.2)))) == [p.encode(p.partial("hi", 0.1, 0.2))]
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(ValueError):
            s.pod_text(bad)


def test_a_frame_goes_to_the_first_pod_as_the_client_sent_it():
    s = state()
    message = p.pack_frame(0, FRAME)
    frame = s.accept_message(message, 0.0)
    assert frame.data is message and s.next_to_send() is frame
    assert s.pod_frame(frame) is message  # no copy, no repacking
    assert s.accept_message(p.pack_frame(0, FRAME), 0.0) is None  # a repeat
    with pytest.raises(p.ProtocolError):
        s.accept_message(b"\x00\x01", 0.0)
    assert s.tail.nbytes == len(FRAME) and s.tail.seconds == pytest.approx(0.1)
    s.fail_over("pod-1", "ws://127.0.0.1:9001")
    s.on_pod_message(p.ack(0, 0, 0.1))
    s.accept_message(p.pack_frame(1, FRAME), 0.0)
    s.accept_message(p.pack_frame(2, FRAME), 0.0)
    s.fail_over("pod-2", "ws://127.0.0.1:9002")  # commit 0: base 1
    assert send_all(s) == [0, 1]
    assert bytes(p.unpack_frame(s.pod_frame(s.tail.frames[1]))[1]) == FRAME


def test_word_timestamps_are_shifted_with_their_final():
    s = state()
    feed(s, 0, 49)
    send_all(s)
    s.on_pod_message(p.ack(49, 19, 2.0))
    s.fail_over("pod-1", "ws://127.0.0.1:9001")
    s.leg_ready("tok1")
    [out, _] = s.on_pod_message(p.final(0, "two", 0.4, 1.0, [("two", 0.4, 1.0, 0.5)]))
    assert out["words"] == [{"word": "two", "start": 2.4, "end": 3.0, "probability": 0.5}]


def test_a_failover_hands_the_new_pod_the_text_before_the_replay():
    s = state()
    feed(s, 0, 49)
    send_all(s)
    s.on_pod_message(final(0, "one two.", 0.3, 1.0))
    s.on_pod_message(final(1, "three", 1.2, 1.9))
    s.on_pod_message(p.ack(49, 19, 2.0))
    s.on_pod_message(final(2, "four", 2.2, 2.8))  # after the commit point: the new pod hears it again
    assert s.text_before_replay() == "one two. three"
