"""Kubernetes discovery from the Pods themselves: `--discover kubernetes-pods`.

Why it exists: EndpointSlices are not always there to read. The API server
refuses loopback addresses in them (so a local cluster whose pod IPs are in
127.0.0.0/8, as tests/e2e runs, has none), and some clusters run without the
EndpointSlice controller. Every Pod object carries what the router needs: its
IP (`status.podIP`), whether the kubelet finds it ready (the `Ready`
condition), whether it is being stopped (`metadata.deletionTimestamp`), and
one thing a slice cannot carry: the operator's drain mark (the annotation
`voxfleet.io/draining: "true"`, set by its autoscaler on pods it is about to
remove), which the router honours like a deletion: no new sessions there,
those already there continue.

Two halves, as in endpointslices.py:

- `targets_from_pods`: Pod objects (the API server's JSON, camelCase) to
  targets: a pod without an IP, or one that has finished (Succeeded/Failed),
  is not a target; a terminating or drain-marked pod keeps its sessions and
  gets no new ones;
  the ordinal comes from the StatefulSet pod name suffix (`en-stt-3`), the
  port from the container port named `ws` (else the configured one).
- `PodWatcher`: lists, then watches, the pods matching a label selector in one
  namespace with the official `kubernetes` client in a worker thread, and
  hands every new target list to the event loop; bounded backoff on errors,
  a fresh list after 410 Gone. Client API and watch are injected (tests pass fakes).

It never writes to the API server: the router needs only get/list/watch on pods
in its namespace.
"""

from __future__ import annotations

from typing import Iterable

from stt_router.discovery import Target
from stt_router.kubewatch import ListWatcher, _get
from stt_router.placement import ordinal_of


FINISHED_PHASES = ("Succeeded", "Failed")
# Set by the operator's autoscaler (stt_operator.autoscaler.DRAINING_ANNOTATION; a unit
# test keeps the two equal): "true" means no new sessions on that pod.
DRAINING_ANNOTATION = "voxfleet.io/draining"


def _port(pod: dict, default_port: int) -> int:
    for container in _get(pod, "spec", "containers", default=[]) or []:
        for port in _get(container, "ports", default=[]) or []:
            if _get(port, "name") == "ws" and _get(port, "containerPort"):
                return int(_get(port, "containerPort"))
    return default_port


def _ready(pod: dict) -> bool:
    for condition in _get(pod, "status", "conditions", default=[]) or []:
        if _get(condition, "type") == "Ready":
            return _get(condition, "status") == "True"
    return False


def target_from_pod(pod: dict, default_port: int, scheme: str = "ws") -> Target | None:
    """The pod as a target, or None when it has no address or has finished."""
    name = _get(pod, "metadata", "name")
    address = _get(pod, "status", "podIP")
    if not name or not address or _get(pod, "status", "phase") in FINISHED_PHASES:
        return None
    annotations = _get(pod, "metadata", "annotations", default={}) or {}
    terminating = (_get(pod, "metadata", "deletionTimestamp") is not None
                   or _get(annotations, DRAINING_ANNOTATION) == "true")
    host = f"[{address}]" if ":" in address else address
    return Target(
        name=name,
        url=f"{scheme}://{host}:{_port(pod, default_port)}",
        ordinal=ordinal_of(name, 1_000_000),
        ready=_ready(pod) and not terminating,
        terminating=terminating,
    )


def targets_from_pods(pods: Iterable[dict], default_port: int, scheme: str = "ws") -> list[Target]:
    """Every pod with an address as a target, sorted by ordinal."""
    targets = [t for t in (target_from_pod(p, default_port, scheme) for p in pods) if t is not None]
    return sorted(targets, key=lambda t: (t.ordinal, t.name))


class PodWatcher(ListWatcher):
    """Lists and watches Pods; calls `on_targets(list[Target])` on the loop."""

    kind = "pod"
    api_class = "CoreV1Api"
    list_method = "list_namespaced_pod"
    dedupe = True  # most pod updates change nothing the router sees

    def targets(self, objects: list[dict]) -> list[Target]:
        return targets_from_pods(objects, self.default_port)
