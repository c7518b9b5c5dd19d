"""Kubernetes discovery: the pods behind a Service, from its EndpointSlices.

Two halves, kept apart so the first is tested without a cluster:

- `targets_from_slices`: EndpointSlice objects (as the API server's JSON,
  camelCase) to targets, honouring the endpoint conditions: `ready` (nil
  means ready) and `terminating` (a terminating pod, even one still
  `serving`, keeps its sessions but gets no new ones); the ordinal comes from the StatefulSet pod
  name (`voxfleet-pod-3`), the port from the slice's port named `ws` (or its
  only port, or the configured one).
- `EndpointSliceWatcher`: lists, then watches, the slices with the official
  `kubernetes` client (optional extra `k8s`) in a worker thread, and hands
  every new target list to the event loop. It reconnects with bounded
  backoff and re-lists when its resourceVersion expires (410 Gone). The
  client API and watch are injected, so tests pass a fake.

It never writes to the API server: the router only needs get/list/watch on
endpointslices.discovery.k8s.io in its namespace.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from stt_router.discovery import Target
from stt_router.placement import ordinal_of

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _get(obj: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if obj is None:
            return default
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return default if obj is None else obj


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


def own_namespace(default: str = "default") -> str:
    try:
        return NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


class EndpointSliceWatcher:
    """Lists and watches EndpointSlices; calls `on_targets(list[Target])` on the loop."""

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
        self._slices: dict[str, dict] = {}
        self._stop = threading.Event()
        self._watch: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_cluster(cls, namespace: str, label_selector: str, default_port: int,
                     on_targets: Callable[[list[Target]], None]) -> "EndpointSliceWatcher":
        try:
            import kubernetes
        except ImportError:
            raise RuntimeError("Kubernetes discovery needs the kubernetes client: pip install 'voxfleet[k8s]'") from None
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        api = kubernetes.client.DiscoveryV1Api()
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
                    log.info("endpointslice watch expired; listing again")
                else:
                    log.warning("endpointslice watch failed (%s); retrying in %.0f s", exc, delay)
                    self._stop.wait(delay)
                    delay = min(self.max_backoff, delay * 2)
                version = None

    def _list(self) -> str | None:
        result = self.api.list_namespaced_endpoint_slice(self.namespace, label_selector=self.label_selector)
        self._slices = {}
        for item in _get(result, "items", default=[]) or []:
            obj = self.to_dict(item)
            self._slices[_get(obj, "metadata", "name")] = obj
        self._publish()
        return _get(result, "metadata", "resource_version") or _get(result, "metadata", "resourceVersion")

    def _watch_from(self, version: str | None) -> str | None:
        self._watch = self.watch_factory()
        kwargs: dict[str, Any] = {"label_selector": self.label_selector, "timeout_seconds": self.watch_timeout}
        if version:
            kwargs["resource_version"] = version
        for event in self._watch.stream(self.api.list_namespaced_endpoint_slice, self.namespace, **kwargs):
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
                self._slices.pop(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._slices[name] = obj
            else:
                continue
            self._publish()
        return version

    def _publish(self) -> None:
        targets = targets_from_slices(list(self._slices.values()), self.default_port)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_targets, targets)
        else:
            self.on_targets(targets)


def _sanitize(api: Any, obj: Any) -> dict:
    client = getattr(api, "api_client", None)
    if client is not None and hasattr(client, "sanitize_for_serialization"):
        return client.sanitize_for_serialization(obj)
    return obj


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)
