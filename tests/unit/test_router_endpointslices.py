"""Kubernetes discovery against a fake API: conditions honoured, ordinals from pod names, watch and re-list."""

from __future__ import annotations

import pytest

from stt_router.discovery import Target
from stt_router.endpointslices import EndpointSliceWatcher, targets_from_slices
from tests.unit.kubefakes import FakeApi, FakeWatch, Gone, first_updates


def endpoint(name: str, ip: str, ready=True, serving=True, terminating=False) -> dict:
    conditions = {"serving": serving, "terminating": terminating}
    if ready is not None:
        conditions["ready"] = ready
    return {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": name}}


def slice_(name: str, *endpoints: dict, port: int = 8765, version: str = "1") -> dict:
    return {"metadata": {"name": name, "resourceVersion": version,
                         "labels": {"kubernetes.io/service-name": "voxfleet-pod"}},
            "addressType": "IPv4", "ports": [{"name": "ws", "port": port, "protocol": "TCP"}],
            "endpoints": list(endpoints)}


def test_conditions_ordinals_and_ports():
    targets = targets_from_slices([
        slice_("a", endpoint("voxfleet-pod-2", "127.0.0.12"), endpoint("voxfleet-pod-0", "127.0.0.10", ready=None)),
        slice_("b", endpoint("voxfleet-pod-1", "127.0.0.11", ready=False, serving=True, terminating=True),
               endpoint("voxfleet-pod-3", "127.0.0.13", ready=False, serving=False), port=9000),
    ], default_port=1)
    assert targets == [
        Target("voxfleet-pod-0", "ws://127.0.0.10:8765", 0, ready=True),  # nil ready means ready
        Target("voxfleet-pod-1", "ws://127.0.0.11:9000", 1, ready=False, terminating=True),
        Target("voxfleet-pod-2", "ws://127.0.0.12:8765", 2, ready=True),
        Target("voxfleet-pod-3", "ws://127.0.0.13:9000", 3, ready=False),
    ]


def test_port_fallbacks_ipv6_and_endpoints_without_addresses():
    s = slice_("a", endpoint("p-0", "::1"), {"addresses": [], "conditions": {}})
    s["addressType"] = "IPv6"
    s["ports"] = [{"name": "metrics", "port": 9090}, {"name": "other", "port": 9091}]
    assert targets_from_slices([s], default_port=8765) == [Target("p-0", "ws://[::1]:8765", 0)]
    s["ports"] = [{"port": 7000}]
    assert targets_from_slices([s], default_port=8765)[0].url == "ws://[::1]:7000"


def test_a_pod_in_two_slices_keeps_its_ready_entry():
    targets = targets_from_slices([slice_("a", endpoint("p-0", "127.0.0.1", ready=False)),
                                   slice_("b", endpoint("p-0", "127.0.0.1"))], 8765)
    assert [t.ready for t in targets] == [True]


async def test_watcher_lists_watches_and_relists_after_expiry():
    api = FakeApi([
        {"metadata": {"resourceVersion": "10"}, "items": [slice_("a", endpoint("voxfleet-pod-0", "127.0.0.10"))]},
        {"metadata": {"resourceVersion": "20"}, "items": [slice_("a", endpoint("voxfleet-pod-0", "127.0.0.10")),
                                                          slice_("b", endpoint("voxfleet-pod-1", "127.0.0.11"))]},
    ])
    watch = FakeWatch([
        [{"type": "ADDED", "object": slice_("b", endpoint("voxfleet-pod-1", "127.0.0.11"), version="11")},
         {"type": "MODIFIED", "object": slice_("b", endpoint("voxfleet-pod-1", "127.0.0.11", ready=False,
                                                             terminating=True), version="12")},
         {"type": "DELETED", "object": slice_("b", version="13")},
         {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "14"}}}],
        [Gone("too old resource version")],
    ])
    seen = await first_updates(
        lambda on_targets: EndpointSliceWatcher(api, "voxfleet", "app=x", 8765, on_targets, watch, backoff=0.01), 5)
    names = [[(t.name, t.ready) for t in ts] for ts in seen]
    assert names == [
        [("voxfleet-pod-0", True)],  # the first list
        [("voxfleet-pod-0", True), ("voxfleet-pod-1", True)],  # added
        [("voxfleet-pod-0", True), ("voxfleet-pod-1", False)],  # terminating: no new sessions
        [("voxfleet-pod-0", True)],  # deleted
        [("voxfleet-pod-0", True), ("voxfleet-pod-1", True)],  # listed again after 410 Gone
    ]
    assert watch.kwargs[0]["resource_version"] == "10"
    assert all(call == ("voxfleet", {"label_selector": "app=x"}) for call in api.calls)


async def test_watcher_backs_off_on_errors_and_stops():
    api = FakeApi([{"metadata": {"resourceVersion": "1"}, "items": []}] * 2)
    watch = FakeWatch([[ConnectionError("api server went away")], []])
    seen = await first_updates(
        lambda on_targets: EndpointSliceWatcher(api, "ns", "", 8765, on_targets, watch, backoff=0.01), 2)
    assert seen == [[], []]
    assert watch.stopped


def test_the_real_clients_objects_translate_the_same():
    k8s = pytest.importorskip("kubernetes")
    from stt_router.kubewatch import _sanitize

    m = k8s.client
    obj = m.V1EndpointSlice(
        address_type="IPv4",
        metadata=m.V1ObjectMeta(name="a", resource_version="5"),
        ports=[m.DiscoveryV1EndpointPort(name="ws", port=8765)],
        endpoints=[m.V1Endpoint(addresses=["127.0.0.10"], conditions=m.V1EndpointConditions(ready=False, terminating=True),
                                target_ref=m.V1ObjectReference(kind="Pod", name="voxfleet-pod-4"))],
    )

    class Api:
        api_client = m.ApiClient()

    as_json = _sanitize(Api(), obj)
    assert targets_from_slices([as_json], 1) == [Target("voxfleet-pod-4", "ws://127.0.0.10:8765", 4, ready=False,
                                                        terminating=True)]
