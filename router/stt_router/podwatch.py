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

import asyncio
import logging
import threading
from typing import Any, Callable, Iterable

from stt_router.discovery import Target
from stt_router.endpointslices import _get, _sanitize, _status, own_namespace
from stt_router.placement import ordinal_of

log = logging.getLogger(__name__)

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


class PodWatcher:
    """Lists and watches Pods; calls `on_targets(list[Target])` on the loop."""

    def __init__(self, api: Any, namespace: str, label_selector: str, default_port: int,
                 on_targets: Callable[[list[Target]], None], watch_factory: Callable[[], Any],
                 to_dict: Callable[[Any], dict] | None = None, backoff: float = 1.0, max_backoff: float = 30.0,
                 watch_timeout: int = 60):
        self.api = api
        self.namespace = namespace
        self.label_selector = label_selector
        self.default_port = default_port
        self.on_targets = on_targets
        self.watch_factory = watch_factory
        self.to_dict = to_dict or (lambda o: o if isinstance(o, dict) else _sanitize(api, o))
        self.backoff, self.max_backoff, self.watch_timeout = backoff, max_backoff, watch_timeout
        self._pods: dict[str, dict] = {}
        self._last: list[Target] | None = None
        self._stop = threading.Event()
        self._watch: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_cluster(cls, namespace: str, label_selector: str, default_port: int,
                     on_targets: Callable[[list[Target]], None]) -> "PodWatcher":
        try:
            import kubernetes
        except ImportError:
            raise RuntimeError("Kubernetes discovery needs the kubernetes client: pip install 'voxfleet[k8s]'") from None
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        api = kubernetes.client.CoreV1Api()
        return cls(api, namespace or own_namespace(), label_selector, default_port, on_targets, kubernetes.watch.Watch)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._run_blocking)
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None and hasattr(watch, "stop"):
            watch.stop()

    # --- worker thread

    def _run_blocking(self) -> None:
        delay = self.backoff
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch_from(version)
                delay = self.backoff
            except Exception as exc:  # the API server went away, or an expired version: list again
                if _status(exc) == 410:
                    log.info("pod watch expired; listing again")
                else:
                    log.warning("pod watch failed (%s); retrying in %.0f s", exc, delay)
                    self._stop.wait(delay)
                    delay = min(self.max_backoff, delay * 2)
                version = None

    def _list(self) -> str | None:
        result = self.api.list_namespaced_pod(self.namespace, label_selector=self.label_selector)
        self._pods = {}
        for item in _get(result, "items", default=[]) or []:
            obj = self.to_dict(item)
            self._pods[_get(obj, "metadata", "name")] = obj
        self._publish(force=True)
        return _get(result, "metadata", "resource_version") or _get(result, "metadata", "resourceVersion")

    def _watch_from(self, version: str | None) -> str | None:
        self._watch = self.watch_factory()
        kwargs: dict[str, Any] = {"label_selector": self.label_selector, "timeout_seconds": self.watch_timeout}
        if version:
            kwargs["resource_version"] = version
        for event in self._watch.stream(self.api.list_namespaced_pod, self.namespace, **kwargs):
            if self._stop.is_set():
                break
            kind = _get(event, "type")
            obj = self.to_dict(_get(event, "object"))
            if kind == "ERROR":
                if _get(obj, "code") == 410:
                    return None
                raise RuntimeError(f"watch error: {_get(obj, 'message')}")
            name = _get(obj, "metadata", "name")
            version = _get(obj, "metadata", "resourceVersion") or version
            if kind == "DELETED":
                self._pods.pop(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._pods[name] = obj
            else:
                continue
            self._publish()
        return version

    def _publish(self, force: bool = False) -> None:
        targets = targets_from_pods(list(self._pods.values()), self.default_port)
        if targets == self._last and not force:
            return  # a pod's status changed in a way the router does not see (most updates)
        self._last = targets
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_targets, targets)
        else:
            self.on_targets(targets)
