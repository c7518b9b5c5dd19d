"""Kubernetes discovery: the pods behind a Service, from its EndpointSlices.

Two halves, kept apart so the first is tested without a cluster:

- `targets_from_slices`: EndpointSlice objects (as the API server's JSON,
  camelCase) to targets, honouring the endpoint conditions: `ready` (nil
  means ready) and `terminating` (a terminating pod, even one still
  `serving`, keeps its sessions but gets no new ones); the ordinal comes from the StatefulSet pod
  name (`voxfleet-pod-3`), the port from the slice's port named `ws` (or its
  only port, or the configured one).
- `EndpointSliceWatcher`: the slices through `stt_router.kubewatch.ListWatcher`
  (list, then watch, with the official `kubernetes` client, optional extra
  `k8s`; bounded backoff; re-list on 410 Gone), the loop it shares with pod
  watching. The client API and watch are injected, so tests pass a fake.

It never writes to the API server: the router only needs get/list/watch on
endpointslices.discovery.k8s.io in its namespace.
"""

from __future__ import annotations

from typing import Iterable

from stt_router.discovery import Target
from stt_router.kubewatch import ListWatcher, _get
from stt_router.placement import ordinal_of


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def _port(slice_: dict, default_port: int) -> int:
    ports = _get(slice_, "ports", default=[]) or []
    for port in ports:
        if _get(port, "name") == "ws" and _get(port, "port"):
            return int(_get(port, "port"))
    if len(ports) == 1 and _get(ports[0], "port"):
        return int(_get(ports[0], "port"))
    return default_port


def targets_from_slices(slices: Iterable[dict], default_port: int, scheme: str = "ws") -> list[Target]:
    """Every endpoint of every slice as a target, one per pod, sorted by ordinal."""
    by_name: dict[str, Target] = {}
    for slice_ in slices:
        port = _port(slice_, default_port)
        ipv6 = _get(slice_, "addressType") == "IPv6"
        for endpoint in _get(slice_, "endpoints", default=[]) or []:
            addresses = _get(endpoint, "addresses", default=[]) or []
            if not addresses:
                continue
            address = addresses[0]
            name = _get(endpoint, "targetRef", "name") or _get(endpoint, "hostname") or address
            conditions = _get(endpoint, "conditions", default={}) or {}
            ready = _get(conditions, "ready")
            terminating = bool(_get(conditions, "terminating", default=False))
            host = f"[{address}]" if ipv6 else address
            target = Target(
                name=name,
                url=f"{scheme}://{host}:{port}",
                ordinal=ordinal_of(name, 1_000_000),
                ready=(ready is None or bool(ready)) and not terminating,
                terminating=terminating,
            )
            previous = by_name.get(name)
            if previous is None or (target.ready and not previous.ready):
                by_name[name] = target  # a pod listed twice (dual stack): prefer its ready entry
    return sorted(by_name.values(), key=lambda t: (t.ordinal, t.name))


class EndpointSliceWatcher(ListWatcher):
    """Lists and watches EndpointSlices; calls `on_targets(list[Target])` on the loop."""

    kind = "endpointslice"
    api_class = "DiscoveryV1Api"
    list_method = "list_namespaced_endpoint_slice"

    def targets(self, objects: list[dict]) -> list[Target]:
        return targets_from_slices(objects, self.default_port)
