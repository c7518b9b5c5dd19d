"""The router's file lane, its pure part: the file queue, which pod gets a job, and retried streams."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stt_router.filequeue import DeltaSkipper, FileQueue, QueueFull, SseEvents, choose_file_pod
from stt_router.files import http_url
from stt_router.placement import PodView
from stt_router.settings import RouterSettings


def pod(ordinal: int, file_capacity: int = 4, file_free: int | None = None, **kwargs) -> PodView:
    view = PodView(f"voxfleet-pod-{ordinal}", f"ws://127.0.0.1:{9000 + ordinal}", ordinal)
    view.report(ready=kwargs.pop("ready", True), draining=kwargs.pop("draining", False), capacity=4, active=0,
                file_capacity=file_capacity, file_free=file_capacity if file_free is None else file_free)
    for key, value in kwargs.items():
        setattr(view, key, value)
    return view


# --- the queue


def test_jobs_go_by_priority_class_then_arrival_and_a_failed_over_job_first():
    q = FileQueue(max_jobs=10, max_bytes=1000, max_wait=60)
    for name, priority in [("low-1", "low"), ("normal-1", "normal"), ("high-1", "high"), ("normal-2", "normal"),
                           ("high-2", "high")]:
        q.push(name, priority, 10, now=0)
    q.push("retry", "failover", 10, now=5, bounded=False)
    assert [q.pop().item for _ in range(len(q))] == ["retry", "high-1", "high-2", "normal-1", "normal-2", "low-1"]


def test_the_queue_is_bounded_in_jobs():
    q = FileQueue(max_jobs=2, max_bytes=1000, max_wait=60)
    q.push("a", "normal", 1, now=0)
    q.push("b", "normal", 1, now=0)
    with pytest.raises(QueueFull, match="2 file jobs"):
        q.push("c", "high", 1, now=0)
    q.push("retry", "failover", 1, now=0, bounded=False)  # admitted before: not refused now
    assert len(q) == 3


def test_the_queue_is_bounded_in_bytes_and_counts_them_back_when_jobs_leave():
    q = FileQueue(max_jobs=10, max_bytes=100, max_wait=60)
    a = q.push("a", "normal", 60, now=0)
    with pytest.raises(QueueFull, match="bytes"):
        q.push("b", "normal", 41, now=0)
    q.push("b", "normal", 40, now=0)
    assert q.bytes == 100
    assert q.remove(a) and not q.remove(a)
    assert q.bytes == 40
    q.push("c", "normal", 60, now=0)
    assert q.pop().item == "b" and q.bytes == 60


def test_over_bounds_says_when_a_job_let_in_unbounded_took_the_line_past_a_bound():
    q = FileQueue(max_jobs=1, max_bytes=100, max_wait=60)
    assert not q.over_bounds()
    a = q.push("a", "normal", 10, now=0, bounded=False)
    assert not q.over_bounds()
    b = q.push("b", "normal", 10, now=0, bounded=False)
    assert q.over_bounds()
    q.remove(b)
    q.push("big", "normal", 101, now=0, bounded=False)
    q.remove(a)
    assert q.over_bounds()


def test_a_job_waits_at_most_max_wait_unless_it_keeps_an_earlier_deadline():
    q = FileQueue(max_jobs=10, max_bytes=100, max_wait=60)
    assert q.push("a", "normal", 1, now=10).deadline == 70
    assert q.push("b", "failover", 1, now=30, deadline=70, bounded=False).deadline == 70
    assert q.oldest_wait(now=40) == 30


# --- which pod


def test_file_free_is_the_last_report_less_what_this_router_placed_since():
    p = pod(0, file_capacity=4, file_free=3)
    assert p.file_free == 3
    p.file_placed()
    p.file_placed()
    assert p.file_free == 1
    p.report(ready=True, draining=False, capacity=4, active=0, file_capacity=4, file_free=2)  # the pod's own count
    assert p.file_free == 2


def test_file_free_never_passes_capacity_less_this_routers_own_jobs():
    p = pod(0, file_capacity=2)
    under = [p.file_placed(), p.file_placed()]
    p.report(ready=True, draining=False, capacity=4, active=0, file_capacity=2, file_free=2)  # had not seen them yet
    assert p.file_free == 0
    p.file_released(under[0])
    assert p.file_free == 1


def test_a_job_placed_since_the_last_report_frees_its_slot_when_it_ends():
    p = pod(0, file_capacity=2)
    under = p.file_placed()
    assert p.file_free == 1
    p.file_released(under)
    assert p.file_free == 2


def test_a_job_the_report_may_have_counted_frees_its_slot_at_the_next_report():
    p = pod(0, file_capacity=2)
    under = p.file_placed()
    p.report(ready=True, draining=False, capacity=4, active=0, file_capacity=2, file_free=1)
    p.file_released(under)
    assert p.file_free == 1
    p.report(ready=True, draining=False, capacity=4, active=0, file_capacity=2, file_free=2)
    assert p.file_free == 2


@pytest.mark.parametrize("state", [dict(ready=False), dict(draining=True), dict(reachable=False),
                                   dict(terminating=True), dict(listed_ready=False), dict(refused_files=True)])
def test_a_pod_that_cannot_take_jobs_has_no_free_file_slot(state):
    assert pod(0, **state).file_free == 0
    assert choose_file_pod([pod(0, **state)]) is None


def test_a_pod_without_a_file_lane_gets_no_file_jobs():
    p = PodView("old", "ws://127.0.0.1:9000", 0)
    p.report(ready=True, draining=False, capacity=4, active=0)  # a /status without file_free
    assert p.free_slots == 4 and p.file_free == 0


def test_a_refusal_lasts_until_the_next_report():
    p = pod(0)
    p.refused_files = True
    assert p.file_free == 0
    p.report(ready=True, draining=False, capacity=4, active=0, file_capacity=4, file_free=4)
    assert p.file_free == 4


def test_the_pod_with_the_most_spare_file_slots_gets_the_job_ties_by_ordinal():
    pods = [pod(0, file_free=1), pod(1, file_free=3), pod(2, file_free=3)]
    assert choose_file_pod(pods).ordinal == 1
    pods[1].file_placed()
    assert choose_file_pod(pods).ordinal == 2
    assert choose_file_pod(pods, frozenset({"voxfleet-pod-2"})).ordinal == 1


def test_no_pod_with_a_free_file_slot_means_the_job_waits():
    pods = [pod(0, file_free=0), pod(1, file_free=1)]
    assert choose_file_pod(pods, frozenset({"voxfleet-pod-1"})) is None
    pods[1].file_placed()
    assert choose_file_pod(pods) is None


def test_session_slots_and_file_slots_are_counted_apart():
    p = pod(0, file_capacity=2)
    for _ in range(4):
        p.placed()
    assert p.free_slots == 0 and p.file_free == 2
    p.file_placed()
    p.file_placed()
    assert p.file_free == 0 and p.load == 4


# --- streams relayed across attempts


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def delta(text: str) -> dict:
    return {"type": "transcript.text.delta", "delta": text}


DONE = {"type": "transcript.text.done", "text": "one two three"}


def test_events_are_split_out_whole_however_the_bytes_arrive():
    data = sse(delta("one")) + b": a comment\r\n\r\n" + sse(DONE)
    events = SseEvents()
    got = []
    for i in range(0, len(data), 7):
        got += events.feed(data[i:i + 7])
    assert [obj for _, obj in got] == [delta("one"), None, DONE]
    assert b"".join(raw for raw, _ in got).replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")
    assert events.pending == b""
    assert events.feed(b"data: {not json}\n\n") == [(b"data: {not json}\n\n", None)]


def test_a_retried_stream_skips_the_deltas_the_client_has():
    skipper = DeltaSkipper()
    first = [delta("one"), delta(" two")]
    assert [skipper.admit(e) for e in first] == [True, True]  # then the pod died
    assert skipper.sent == 2 and not skipper.done
    skipper.new_attempt()
    second = [delta("one"), delta(" two"), delta(" three"), DONE]
    assert [skipper.admit(e) for e in second] == [False, False, True, True]
    assert skipper.done and skipper.sent == 3


def test_a_retry_that_says_less_sends_nothing_twice_and_still_ends():
    skipper = DeltaSkipper()
    for e in [delta("a"), delta(" b"), delta(" c")]:
        skipper.admit(e)
    skipper.new_attempt()
    assert [skipper.admit(e) for e in [delta("a"), delta(" b c"), DONE]] == [False, False, True]
    assert skipper.done


def test_an_error_event_ends_the_stream_too():
    skipper = DeltaSkipper()
    assert skipper.admit({"type": "error", "error": {"message": "x"}}) and skipper.done
    assert skipper.admit(None)  # comments and unknown events pass


# --- addresses and settings


@pytest.mark.parametrize("url, expected", [("ws://127.0.0.1:8001", "http://127.0.0.1:8001"),
                                           ("wss://pod.example:443/", "https://pod.example:443")])
def test_a_pods_http_api_is_at_its_session_address(url, expected):
    assert http_url(url) == expected


def base_settings(**kwargs) -> RouterSettings:
    return RouterSettings(pods="ws://127.0.0.1:1", anonymous=True, **kwargs)


def test_file_lane_defaults_are_openais_upload_limit_and_bounded_queues():
    s = base_settings()
    s.validate()
    assert s.max_upload_bytes == 25 << 20 and s.max_file_queue > 0 and s.max_file_queue_bytes >= s.max_upload_bytes
    assert s.file_queue_timeout_seconds > 0 and s.file_attempts >= 2


@pytest.mark.parametrize("bad", [dict(max_upload_bytes=0), dict(max_file_queue=-1), dict(max_file_queue_bytes=-1),
                                 dict(file_queue_timeout_seconds=-1.0), dict(file_attempts=0)])
def test_file_lane_settings_are_validated(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(base_settings(), **bad).validate()
