"""Pod-watch discovery against a fake API: Ready condition, deletionTimestamp, ordinals, watch and re-list."""

from __future__ import annotations

from stt_router.discovery import Target
from stt_router.podwatch import PodWatcher, targets_from_pods
from stt_router.settings import RouterSettings
from tests.unit.kubefakes import FakeApi, FakeWatch, Gone, first_updates


def pod(name: str, ip: str | None, ready: bool | None = True, deleting: bool = False, phase: str = "Running",
        port: int | None = 8765, version: str = "1") -> dict:
    status: dict = {"phase": phase}
    if ip:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [{"type": "PodScheduled", "status": "True"},
                                {"type": "Ready", "status": "True" if ready else "False"}]
    meta: dict = {"name": name, "resourceVersion": version, "labels": {"app.kubernetes.io/component": "stt-pod"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ports = [{"name": "metrics", "containerPort": 9090}] + ([{"name": "ws", "containerPort": port}] if port else [])
    return {"metadata": meta, "spec": {"containers": [{"name": "stt", "ports": ports}]}, "status": status}


def test_ready_condition_deletion_ordinals_and_ports():
    targets = targets_from_pods([
        pod("en-stt-2", "127.2.0.12"),
        pod("en-stt-10", "127.2.0.20", port=None),
        pod("en-stt-0", "127.2.0.10", ready=None),  # no conditions yet: not ready
        pod("en-stt-1", "127.2.0.11", deleting=True),  # terminating: keeps sessions, gets no new ones
        pod("en-stt-3", "127.2.0.13", ready=False, port=9000),
        pod("en-stt-4", None, ready=False),  # no IP yet: not a target
        pod("en-stt-5", "127.2.0.15", phase="Failed"),  # finished: not a target
        pod("odd", "::1"),
    ], default_port=7000)
    assert targets == [
        Target("en-stt-0", "ws://127.2.0.10:8765", 0, ready=False),
        Target("en-stt-1", "ws://127.2.0.11:8765", 1, ready=False, terminating=True),
        Target("en-stt-2", "ws://127.2.0.12:8765", 2, ready=True),
        Target("en-stt-3", "ws://127.2.0.13:9000", 3, ready=False),
        Target("en-stt-10", "ws://127.2.0.20:7000", 10, ready=True),
        Target("odd", "ws://[::1]:8765", 1_000_000, ready=True),
    ]


def test_the_operators_drain_mark_stops_new_sessions():
    from stt_operator.autoscaler import DRAINING_ANNOTATION as OPERATORS
    from stt_router.podwatch import DRAINING_ANNOTATION

    assert DRAINING_ANNOTATION == OPERATORS
    marked = pod("en-stt-1", "127.2.0.11")
    marked["metadata"]["annotations"] = {DRAINING_ANNOTATION: "true"}
    unmarked = pod("en-stt-2", "127.2.0.12")
    unmarked["metadata"]["annotations"] = {DRAINING_ANNOTATION: "false", "other": "true"}
    assert targets_from_pods([marked, unmarked], 8765) == [
        Target("en-stt-1", "ws://127.2.0.11:8765", 1, ready=False, terminating=True),
        Target("en-stt-2", "ws://127.2.0.12:8765", 2, ready=True),
    ]


def test_the_setting_selects_pod_watching():
    s = RouterSettings(discover="kubernetes-pods", anonymous=True)
    s.validate()


async def test_watcher_lists_watches_skips_unchanged_and_relists_after_expiry():
    api = FakeApi([
        {"metadata": {"resourceVersion": "10"}, "items": [pod("en-stt-0", "127.2.0.10")]},
        {"metadata": {"resourceVersion": "20"},
         "items": [pod("en-stt-0", "127.2.0.10"), pod("en-stt-1", "127.2.0.11")]},
    ])
    watch = FakeWatch([
        [{"type": "ADDED", "object": pod("en-stt-1", None, ready=None, phase="Pending", version="11")},
         {"type": "MODIFIED", "object": pod("en-stt-1", "127.2.0.11", ready=False, version="12")},
         {"type": "MODIFIED", "object": pod("en-stt-1", "127.2.0.11", ready=True, version="13")},
         {"type": "MODIFIED", "object": pod("en-stt-1", "127.2.0.11", ready=True, version="14")},  # nothing new
         {"type": "MODIFIED", "object": pod("en-stt-1", "127.2.0.11", deleting=True, version="15")},
         {"type": "DELETED", "object": pod("en-stt-1", "127.2.0.11", deleting=True, version="16")},
         {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "17"}}}],
        [Gone("too old resource version")],
    ])
    seen = await first_updates(
        lambda on_targets: PodWatcher(api, "speech", "app=x", 8765, on_targets, watch, backoff=0.01), 6)
    states = [[(t.name, t.ready, t.terminating) for t in ts] for ts in seen]
    assert states == [
        [("en-stt-0", True, False)],  # the first list
        [("en-stt-0", True, False), ("en-stt-1", False, False)],  # has an IP, not ready yet
        [("en-stt-0", True, False), ("en-stt-1", True, False)],  # ready
        [("en-stt-0", True, False), ("en-stt-1", False, True)],  # deleting: drains
        [("en-stt-0", True, False)],  # gone
        [("en-stt-0", True, False), ("en-stt-1", True, False)],  # listed again after 410 Gone
    ]
    assert watch.kwargs[0]["resource_version"] == "10" and watch.kwargs[0]["label_selector"] == "app=x"
    assert watch.funcs[0] == api.list_namespaced_pod
    assert all(call == ("speech", {"label_selector": "app=x"}) for call in api.calls)


async def test_watcher_backs_off_on_errors_and_stops():
    api = FakeApi([{"metadata": {"resourceVersion": "1"}, "items": []}] * 2)
    watch = FakeWatch([[ConnectionError("api server went away")], []])
    seen = await first_updates(
        lambda on_targets: PodWatcher(api, "ns", "", 8765, on_targets, watch, backoff=0.01), 2)
    assert seen == [[], []]
