"""Thin kopf handlers for SttPool: translate between Kubernetes and pure functions.

Why it exists: kopf calls in here; each handler reads the pool, asks spec.py,
manifests.py and status.py what should be, has apply.py make it so, and writes
status. Handlers are named <kind>_<verb> and registered on an explicit registry
(`register`), so the process settings (intervals, prefixes) are chosen at start,
not at import.

The periodic resync (self-healing, status refresh, the builtin autoscaler) is not
a kopf timer: kopf puts its finalizer on every object a timer or daemon serves, and
`helm uninstall` removes the operator with its pools, leaving them stuck. It is a
background task (`resync_start`/`resync_stop`, kopf startup/cleanup) that lists the
pools every `resync_seconds`, runs the same `reconcile` on each, and writes the
status patch and posts the events itself (kopf does both only for its handlers).

It must never build manifests or compute status itself, and never add a
finalizer: owned objects go away through owner references and the garbage
collector, so a pool can always be deleted, even with the operator down.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any, Callable

import kopf

from stt_operator import autoscaler, manifests, spec as specmod, status as statusmod
from stt_operator.apply import Cluster
from stt_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)
RESOURCE = (specmod.GROUP, specmod.VERSION, specmod.PLURAL)

_cluster: Cluster | None = None
_marks: autoscaler.PodMarks | None = None
_settings = OperatorSettings()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api() -> Cluster:
    global _cluster
    if _cluster is None:
        _cluster = Cluster(_settings.field_manager)
    return _cluster


def _pod_marks() -> autoscaler.PodMarks:
    global _marks
    if _marks is None:
        _api()  # loads the client configuration
        _marks = autoscaler.PodMarks()
    return _marks


# post(body, type, reason, message): how an event about the pool is posted.
Post = Callable[[Any, str, str, str], None]


def kopf_post(body: Any, type: str, reason: str, message: str) -> None:
    """Post through kopf's event queue: only inside kopf's handlers."""
    if type == "Warning":
        kopf.warn(body, reason=reason, message=message)
    else:
        kopf.event(body, type=type, reason=reason, message=message)


def reconcile(body: Any, patch: Any, announce: bool, autoscale: bool = False, post: Post = kopf_post) -> None:
    """Make the owned objects match the spec, then put the status in `patch.status`. Idempotent.

    With `autoscale` (the periodic resync), a due builtin-mode pool first asks the
    autoscaler for its replicas (stt_operator.autoscaler). Events go through `post`."""
    pool = manifests.PoolRef.from_body(body)
    generation = int(body["metadata"].get("generation") or 0)
    old_conditions = (body.get("status") or {}).get("conditions")

    def warn_once(reason: str, message: str) -> None:
        # A failure that persists is reported once, not on every resync.
        if not statusmod.already_reported(old_conditions, statusmod.DEGRADED, message):
            post(body, "Warning", reason, message)

    try:
        spec = specmod.parse(body.get("spec") or {})
    except specmod.SpecError as exc:
        patch.status.update(statusmod.invalid_spec_status(generation, str(exc), old_conditions, _now()))
        warn_once("InvalidSpec", str(exc))
        raise kopf.PermanentError(str(exc)) from None

    api = _api()
    live_sts = api.get("apps/v1", "StatefulSet", pool.statefulset, pool.namespace)
    current = (live_sts or {}).get("spec", {}).get("replicas")
    desired = specmod.desired_replicas(spec, current)
    scaled = None
    old_status = body.get("status") or {}
    now = time.time()
    # No Prometheus URL: nothing to measure, the pool holds its size (status says NoPrometheus).
    if autoscale and spec.autoscaling.mode == "builtin" and spec.prometheus.url and current is not None \
            and autoscaler.due(old_status, spec, now):
        try:
            scaled = autoscaler.step(pool, spec, old_status, current, _pod_marks(), now)
            desired = scaled.replicas
        except Exception as exc:  # the policy holds; the next period tries again
            logger.exception("autoscaler failed for %s/%s", pool.namespace, pool.name)
            post(body, "Warning", "AutoscalerFailed", f"{type(exc).__name__}: {exc}"[:1000])
    error = None
    try:
        for obj in manifests.owned_objects(pool, spec, desired):
            live = api.apply(obj)
            if obj["kind"] == "StatefulSet":
                live_sts = live
        for api_version, kind, name in manifests.obsolete_objects(pool, spec):
            if api.delete(api_version, kind, name, pool.namespace, pool.uid):
                post(body, "Normal", "Deleted", f"{kind} {name} is no longer needed")
    except Exception as exc:  # the API said no: report, then let kopf retry
        detail = exc.summary() if callable(getattr(exc, "summary", None)) else str(exc)
        error = f"{type(exc).__name__}: {detail}"[:1000]
    router = api.get("apps/v1", "Deployment", pool.router, pool.namespace)
    patch.status.update(statusmod.pool_status(pool, spec, generation, desired, live_sts, router,
                                              old_conditions, _now(), error))
    if scaled is not None:
        patch.status.update(scaled.status)
        patch.status["conditions"] = statusmod.merge_conditions(
            old_conditions, [*patch.status["conditions"], *scaled.conditions])
        for kind, reason, message in scaled.events:
            post(body, kind, reason, message)
    if error:
        warn_once("ReconcileFailed", error)
        raise kopf.TemporaryError(error, delay=_settings.retry_seconds)
    if announce:
        post(body, "Normal", "Reconciled",
             f"applied StatefulSet {pool.statefulset} ({desired} pods, model {spec.model.name}), "
             f"router {pool.router}")


def sttpool_create(body: Any, patch: Any, **_: Any) -> None:
    reconcile(body, patch, announce=True)


def sttpool_update(body: Any, patch: Any, **_: Any) -> None:
    reconcile(body, patch, announce=True)


def sttpool_resume(body: Any, patch: Any, **_: Any) -> None:
    reconcile(body, patch, announce=False)


def sttpool_resync(body: Any, **_: Any) -> None:
    """Periodic, for one pool: re-apply (self-healing after manual deletes) and refresh status.

    Called by the resync task (`resync_all`), outside kopf: it writes the status
    (a merge patch on the status subresource) and posts the events itself. A pool
    being deleted is left alone. The autoscaler plugs in here (builtin mode, every
    spec.autoscaling.intervalSeconds, at the granularity of the resync period): it
    changes `desired`, marks pods draining and adds its status and events.
    """
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    api = _api()
    patch = kopf.Patch()
    try:
        reconcile(body, patch, announce=False, autoscale=True, post=api.post_event)
    except kopf.PermanentError:
        pass  # already reported by the change handlers; wait for a spec change
    except kopf.TemporaryError as exc:  # reported (once) in status and events; the next period retries
        logger.info("resync of %s/%s failed: %s", meta.get("namespace"), meta.get("name"), exc)
    finally:
        if patch.status:
            api.patch_status(body.get("apiVersion") or f"{specmod.GROUP}/{specmod.VERSION}", specmod.KIND,
                             meta["name"], meta["namespace"], patch.status)


def resync_all(namespaces: list[str]) -> None:
    """Resync every SttPool in `namespaces` (empty: all namespaces); one pool's failure stops none other."""
    api = _api()
    api_version = f"{specmod.GROUP}/{specmod.VERSION}"
    for namespace in namespaces or [None]:
        try:
            pools = api.list_objects(api_version, specmod.KIND, namespace)
        except Exception:
            logger.exception("listing SttPools in %s failed", namespace or "all namespaces")
            continue
        for body in pools:
            try:
                sttpool_resync(body)
            except Exception:
                meta = body.get("metadata") or {}
                logger.exception("resync of %s/%s failed", meta.get("namespace"), meta.get("name"))


async def _resync_forever(namespaces: list[str], period: float) -> None:
    while True:
        await asyncio.sleep(period)
        try:
            await asyncio.to_thread(resync_all, namespaces)
        except Exception:  # never let the loop die
            logger.exception("resync failed")


async def resync_start(memo: Any, **_: Any) -> None:
    """kopf startup: start the periodic resync (a task, not a kopf timer: no finalizer)."""
    memo.resync_task = asyncio.create_task(
        _resync_forever(_settings.namespace_list(), _settings.resync_seconds), name="sttpool resync")


async def resync_stop(memo: Any, **_: Any) -> None:
    """kopf cleanup: stop the periodic resync."""
    task = getattr(memo, "resync_task", None)
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def operator_configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.standalone = _settings.standalone
    # Serve the resources present at start; no list/watch on namespaces or CRDs needed.
    settings.scanning.disabled = True
    prefix = _settings.annotation_prefix
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration")
    # Events: ours (kopf.event, always posted) and kopf's warnings and errors, not
    # every INFO line (a resync every few seconds would flood the pool's events).
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 8


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """Attach the handlers to `registry` with the process settings."""
    global _settings
    _settings = settings
    kopf.on.startup(registry=registry)(operator_configure)
    # An explicit registry has no default login: log in as kubectl would (in-cluster
    # service account, else $KUBECONFIG), through the kubernetes client.
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.create(*RESOURCE, registry=registry)(sttpool_create)
    kopf.on.update(*RESOURCE, field="spec", registry=registry)(sttpool_update)
    kopf.on.resume(*RESOURCE, registry=registry)(sttpool_resume)
    # The periodic resync: a background task, never kopf.timer/daemon (they require a finalizer).
    kopf.on.startup(registry=registry)(resync_start)
    kopf.on.cleanup(registry=registry)(resync_stop)
