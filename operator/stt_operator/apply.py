"""The one place where the operator writes to the API server.

Why it exists: owned objects are applied in exactly one way, server-side apply
with a fixed field manager, so the operator owns only the fields it sets (a
manual change to any other field, an HPA's or a user's, is never undone), every
apply is idempotent (an operator restart changes nothing), and the API server,
not the operator, merges.

It must never decide *what* to apply (manifests.py does) and never hold state
beyond a client and its discovery cache.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any, Mapping

logger = logging.getLogger(__name__)


class Cluster:
    """A thin, thread-safe wrapper over kubernetes' dynamic client."""

    def __init__(self, field_manager: str) -> None:
        from kubernetes import client, config
        from kubernetes.dynamic import DynamicClient

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()  # $KUBECONFIG or ~/.kube/config
        self.field_manager = field_manager
        self._dynamic = DynamicClient(client.ApiClient())
        self._resources: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        with self._lock:
            if key not in self._resources:
                self._resources[key] = self._dynamic.resources.get(api_version=api_version, kind=kind)
            return self._resources[key]

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj`; returns the live object."""
        resource = self._resource(obj["apiVersion"], obj["kind"])
        live = self._dynamic.server_side_apply(
            resource, body=dict(obj), name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"),
            field_manager=self.field_manager, force_conflicts=True)
        return live.to_dict()

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None

    def delete(self, api_version: str, kind: str, name: str, namespace: str, owner_uid: str) -> bool:
        """Delete an object only if this pool owns it; True if something was deleted."""
        from kubernetes.dynamic.exceptions import NotFoundError

        live = self.get(api_version, kind, name, namespace)
        if live is None:
            return False
        owners = live.get("metadata", {}).get("ownerReferences") or []
        if not any(o.get("uid") == owner_uid and o.get("controller") for o in owners):
            logger.info("not deleting %s %s/%s: not owned by this pool", kind, namespace, name)
            return False
        try:
            self._resource(api_version, kind).delete(name=name, namespace=namespace)
        except NotFoundError:
            return False
        return True

    def list_objects(self, api_version: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of a kind in `namespace` (None: all namespaces), with apiVersion and kind set."""
        listed = self._resource(api_version, kind).get(namespace=namespace).to_dict()
        return [{"apiVersion": api_version, "kind": kind, **item} for item in listed.get("items") or []]

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str,
                     status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (what kopf does with a handler's `patch.status`)."""
        resource = self._resource(api_version, kind).subresources["status"]
        self._dynamic.patch(resource, body={"status": dict(status)}, name=name, namespace=namespace,
                            content_type="application/merge-patch+json")

    def post_event(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """A core/v1 Event about `body`, as kopf.event posts one (for code outside kopf's handlers,
        where kopf's event queue does not exist). Events are auxiliary: a refusal is logged only."""
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        if len(message) > 1024:
            message = f"{message[:510]}...{message[-511:]}"
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"namespace": namespace, "generateName": f"{self.field_manager}-"},
            "action": "Action?", "type": type, "reason": reason, "message": message,
            "reportingComponent": self.field_manager, "reportingInstance": self.field_manager,
            "source": {"component": self.field_manager},
            "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                               "name": meta.get("name"), "uid": meta.get("uid"), "namespace": namespace},
            "firstTimestamp": now, "lastTimestamp": now, "eventTime": now,
        }
        try:
            self._dynamic.create(self._resource("v1", "Event"), body=event, namespace=namespace)
        except Exception as exc:  # noqa: BLE001 - never fail a reconcile for an event
            logger.warning("failed to post event %s/%s %s: %s", namespace, meta.get("name"), reason, exc)
