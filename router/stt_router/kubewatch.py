"""List-then-watch of one kind of Kubernetes object, for the router's discovery.

Why it exists: EndpointSlice and Pod discovery differ only in what they list
and how objects become targets; the loop around them (list, watch from the
listed version, list again when the version expires, back off when the API
server goes away, hand targets to the event loop) is this one class. It runs
in a worker thread and never touches router state itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from stt_router.discovery import Target

log = logging.getLogger(__name__)

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _get(obj: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if obj is None:
            return default
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return default if obj is None else obj


def own_namespace(default: str = "default") -> str:
    try:
        return NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


class ListWatcher:
    """Lists, then watches, one kind of object by label selector, kept by name; calls
    `on_targets(list[Target])` on the event loop whenever the targets may have changed.

    A subclass names the kind (`kind`, `api_class`, `list_method`) and turns the objects
    into targets (`targets`); `dedupe` skips publishing targets equal to the last ones."""

    kind = "object"
    api_class = ""
    list_method = ""
    dedupe = False

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
        self._objects: dict[str, dict] = {}
        self._last: list[Target] | None = None
        self._stop = threading.Event()
        self._watch: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_cluster(cls, namespace: str, label_selector: str, default_port: int,
                     on_targets: Callable[[list[Target]], None]) -> "ListWatcher":
        try:
            import kubernetes
        except ImportError:
            raise RuntimeError("Kubernetes discovery needs the kubernetes client: pip install 'voxfleet[k8s]'") from None
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        api = getattr(kubernetes.client, cls.api_class)()
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
                    log.info("%s watch expired; listing again", self.kind)
                else:
                    log.warning("%s watch failed (%s); retrying in %.0f s", self.kind, exc, delay)
                    self._stop.wait(delay)
                    delay = min(self.max_backoff, delay * 2)
                version = None

    def _list(self) -> str | None:
        result = getattr(self.api, self.list_method)(self.namespace, label_selector=self.label_selector)
        self._objects = {}
        for item in _get(result, "items", default=[]) or []:
            obj = self.to_dict(item)
            self._objects[_get(obj, "metadata", "name")] = obj
        self._publish(force=True)
        return _get(result, "metadata", "resource_version") or _get(result, "metadata", "resourceVersion")

    def _watch_from(self, version: str | None) -> str | None:
        self._watch = self.watch_factory()
        kwargs: dict[str, Any] = {"label_selector": self.label_selector, "timeout_seconds": self.watch_timeout}
        if version:
            kwargs["resource_version"] = version
        for event in self._watch.stream(getattr(self.api, self.list_method), self.namespace, **kwargs):
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
                self._objects.pop(name, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._objects[name] = obj
            else:
                continue
            self._publish()
        return version

    def targets(self, objects: list[dict]) -> list[Target]:
        raise NotImplementedError

    def _publish(self, force: bool = False) -> None:
        targets = self.targets(list(self._objects.values()))
        if self.dedupe and targets == self._last and not force:
            return
        self._last = targets
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
