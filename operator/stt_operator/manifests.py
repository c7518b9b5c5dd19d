"""Pure manifest builders: an SttPool spec in, Kubernetes objects (dicts) out.

Why it exists: everything the pool owns is decided here, where it can be unit
tested by comparing dicts, and applied elsewhere (apply.py) in one way (server-side
apply). Every object carries the standard app.kubernetes.io labels and a
controller owner reference to its SttPool, so deleting the pool lets the garbage
collector remove it all.

It must never do I/O, read the clock, or pick random values: the same spec must
give the same objects, or every reconcile would roll the pods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stt_operator.spec import (GROUP, KIND, POD_ENV_PREFIX, VERSION, SttPoolSpec, pod_setting_value,
                               reserve_setting)

MANAGED_BY = "voxfleet-operator"
STT_COMPONENT = "stt-pod"
ROUTER_COMPONENT = "router"
# Extra seconds after drainTimeoutSeconds before the kubelet kills a draining pod:
# the last results must still be flushed and the process must exit.
DRAIN_MARGIN_SECONDS = 30
GPU_RESOURCE = "nvidia.com/gpu"
API_KEYS_MOUNT = "/etc/voxfleet/api-keys"
ROUTER_ENV_PREFIX = "VOXFLEET_ROUTER_"
# Shipped with the operator's RBAC (operator/deploy/rbac.yaml, later the Helm chart):
# get/list/watch pods; each pool binds its router to it in its namespace.
ROUTER_CLUSTER_ROLE = "voxfleet-router"
ROUTER_SERVICE_PORT = 80


@dataclass(frozen=True)
class PoolRef:
    """The SttPool that owns the objects: enough for names and owner references."""
    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> "PoolRef":
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    # Names of the owned objects (the pool name is at most MAX_NAME_LENGTH long).
    @property
    def statefulset(self) -> str:
        return f"{self.name}-stt"

    @property
    def headless_service(self) -> str:
        return f"{self.name}-stt"

    @property
    def pdb(self) -> str:
        return f"{self.name}-stt"

    @property
    def router(self) -> str:
        return f"{self.name}-router"

    @property
    def ingress(self) -> str:
        return self.name


def selector_labels(pool: PoolRef, component: str) -> dict[str, str]:
    """The immutable subset of labels that selectors use."""
    return {
        "app.kubernetes.io/name": "voxfleet",
        "app.kubernetes.io/instance": pool.name,
        "app.kubernetes.io/component": component,
    }


def labels(pool: PoolRef, component: str) -> dict[str, str]:
    return {
        **selector_labels(pool, component),
        "app.kubernetes.io/part-of": "voxfleet",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_string(pool: PoolRef, component: str = STT_COMPONENT) -> str:
    """The STT pods' selector as a string (the scale subresource's status.selector)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(pool, component).items())


def owner_reference(pool: PoolRef) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(pool: PoolRef, name: str, component: str, annotations: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": pool.namespace,
        "labels": labels(pool, component),
        "ownerReferences": [owner_reference(pool)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _http_probe(path: str, port: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_env(spec: SttPoolSpec) -> list[dict[str, Any]]:
    """The STT pod's VOXFLEET_POD_* variables: the spec's own, then podSettings."""
    p = POD_ENV_PREFIX
    env: list[dict[str, Any]] = [
        _field_env(f"{p}HOST", "status.podIP"),
        {"name": f"{p}PORT", "value": str(spec.port)},
        _field_env(f"{p}POD_ID", "metadata.name"),
        {"name": f"{p}MODEL", "value": spec.model.name},
        {"name": f"{p}DEVICE", "value": spec.model.device},
        {"name": f"{p}COMPUTE_TYPE", "value": spec.model.compute_type},
        {"name": f"{p}MAX_SESSIONS", "value": str(spec.sessions_per_pod)},
        {"name": f"{p}DRAIN_TIMEOUT_SECONDS", "value": str(spec.drain_timeout_seconds)},
    ]
    if spec.session_token_secret.name:
        env.append(_secret_env(f"{p}TOKEN_SECRET", spec.session_token_secret.name, spec.session_token_secret.key))
    for key in sorted(spec.pod_settings):
        name = "".join("_" + c.lower() if c.isupper() else c for c in key).upper()
        env.append({"name": f"{p}{name}", "value": pod_setting_value(key, spec.pod_settings[key])})
    return env


def _anti_affinity(pool: PoolRef, mode: str) -> dict[str, Any] | None:
    term = {"labelSelector": {"matchLabels": selector_labels(pool, STT_COMPONENT)},
            "topologyKey": "kubernetes.io/hostname"}
    if mode == "required":
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    if mode == "preferred":
        return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": term}]}}
    return None


def stt_resources(spec: SttPoolSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    limits: dict[str, Any] = {"memory": spec.resources.memory}
    if spec.model.device == "cuda" and spec.resources.gpus:
        requests[GPU_RESOURCE] = str(spec.resources.gpus)
        limits[GPU_RESOURCE] = str(spec.resources.gpus)
    return {"requests": requests, "limits": limits}


def statefulset(pool: PoolRef, spec: SttPoolSpec, replicas: int) -> dict[str, Any]:
    """The STT pods: one resident model each, drained on termination."""
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": spec.drain_timeout_seconds + DRAIN_MARGIN_SECONDS,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "containers": [{
            "name": "stt",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy,
            "command": ["voxfleet", "pod"],
            "ports": [{"name": "ws", "containerPort": spec.port, "protocol": "TCP"}],
            "env": pod_env(spec),
            "resources": stt_resources(spec),
            # Loading and warming the model may take minutes (GPU, large models):
            # /healthz answers while it loads, /readyz only once it is warm.
            "startupProbe": _http_probe("/healthz", "ws", period=5, timeout=3, failures=120),
            "livenessProbe": _http_probe("/healthz", "ws", period=10, timeout=5, failures=3),
            "readinessProbe": _http_probe("/readyz", "ws", period=2, timeout=2, failures=1),
            "securityContext": CONTAINER_SECURITY,
        }],
    }
    affinity = _anti_affinity(pool, spec.anti_affinity)
    if affinity:
        pod_spec["affinity"] = affinity
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.model.device == "cuda":
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if spec.priority_classes.pods:
        pod_spec["priorityClassName"] = spec.priority_classes.pods
    # Pods start and stop together (burst scale-up); the ordinals still name
    # them, so scale-down removes the highest ones, which the router drains.
    return _workload("StatefulSet", pool, pool.statefulset, STT_COMPONENT, pod_spec, replicas=replicas,
                     serviceName=pool.headless_service, podManagementPolicy="Parallel",
                     updateStrategy={"type": "RollingUpdate"})


def _workload(kind: str, pool: PoolRef, name: str, component: str, pod_spec: dict[str, Any],
              **spec: Any) -> dict[str, Any]:
    """A StatefulSet or Deployment of `pod_spec`, selected and labelled as this pool's `component`."""
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": _metadata(pool, name, component),
        "spec": {
            **spec,
            "selector": {"matchLabels": selector_labels(pool, component)},
            "template": {"metadata": {"labels": labels(pool, component)}, "spec": pod_spec},
        },
    }


def headless_service(pool: PoolRef, spec: SttPoolSpec) -> dict[str, Any]:
    """Stable per-pod DNS names; draining (not ready) pods stay listed for their sessions."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool, pool.headless_service, STT_COMPONENT),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(pool, STT_COMPONENT),
            "ports": [{"name": "ws", "port": spec.port, "targetPort": "ws", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(pool: PoolRef, spec: SttPoolSpec) -> dict[str, Any]:
    """Voluntary disruptions (node drains) take one STT pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(pool, pool.pdb, STT_COMPONENT),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(pool, STT_COMPONENT)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def router_env(pool: PoolRef, spec: SttPoolSpec) -> list[dict[str, Any]]:
    """The router's VOXFLEET_ROUTER_* variables (stt_router.settings.RouterSettings):
    it finds the pool's pods by watching the Pods of the StatefulSet (their IP, Ready
    condition and deletionTimestamp; stt_router.podwatch), selected by exactly the
    StatefulSet's selector labels. Not EndpointSlices: the API server refuses loopback
    addresses in them, so a local cluster on 127.0.0.0/8 (tests/e2e) would have none,
    and a Pod says the same things (ready; terminating)."""
    p = ROUTER_ENV_PREFIX
    env: list[dict[str, Any]] = [
        _field_env(f"{p}HOST", "status.podIP"),
        {"name": f"{p}PORT", "value": str(spec.router.port)},
        _field_env(f"{p}ROUTER_ID", "metadata.name"),
        {"name": f"{p}DISCOVER", "value": "kubernetes-pods"},
        _field_env(f"{p}NAMESPACE", "metadata.namespace"),
        {"name": f"{p}SELECTOR", "value": selector_string(pool, STT_COMPONENT)},
        {"name": f"{p}POD_PORT", "value": str(spec.port)},
        {"name": f"{p}PLACEMENT", "value": spec.router.placement},
        {"name": f"{p}DRAIN_TIMEOUT_SECONDS", "value": str(spec.router.drain_timeout_seconds)},
    ]
    if spec.reserve:
        env.append({"name": f"{p}RESERVE", "value": reserve_setting(spec.reserve)})
    if spec.router.api_key_secret:
        env.append({"name": f"{p}API_KEYS", "value": API_KEYS_MOUNT})
    else:
        env.append({"name": f"{p}ANONYMOUS", "value": "true"})
    if spec.session_token_secret.name:
        env.append(_secret_env(f"{p}TOKEN_SECRETS", spec.session_token_secret.name, spec.session_token_secret.key))
    return env


def router_service_account(pool: PoolRef) -> dict[str, Any]:
    """The router's identity: it watches the pool's Pods, nothing else."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(pool, pool.router, ROUTER_COMPONENT),
    }


def router_role_binding(pool: PoolRef) -> dict[str, Any]:
    """Grants the router's ServiceAccount the shared ClusterRole (get/list/watch
    pods), in the pool's namespace only. The operator may create it
    because it holds `bind` on exactly that ClusterRole (operator/deploy/rbac.yaml)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(pool, pool.router, ROUTER_COMPONENT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ROUTER_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": pool.router, "namespace": pool.namespace}],
    }


def router_deployment(pool: PoolRef, spec: SttPoolSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "router",
        "image": spec.router.image or spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["voxfleet", "router"],
        "ports": [{"name": "ws", "containerPort": spec.router.port, "protocol": "TCP"}],
        "env": router_env(pool, spec),
        "resources": {"requests": {"cpu": spec.router.cpu, "memory": spec.router.memory},
                      "limits": {"memory": spec.router.memory}},
        "livenessProbe": _http_probe("/healthz", "ws", period=10, timeout=5, failures=3),
        "readinessProbe": _http_probe("/readyz", "ws", period=2, timeout=2, failures=1),
        "securityContext": CONTAINER_SECURITY,
    }
    pod_spec: dict[str, Any] = {
        # A router that stops lets its sessions resume through another replica;
        # it still gets its drain time to finish what it relays.
        "terminationGracePeriodSeconds": spec.router.drain_timeout_seconds + DRAIN_MARGIN_SECONDS,
        "enableServiceLinks": False,
        "serviceAccountName": pool.router,
        "containers": [container],
    }
    if spec.router.api_key_secret:
        container["volumeMounts"] = [{"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True}]
        pod_spec["volumes"] = [{"name": "api-keys", "secret": {"secretName": spec.router.api_key_secret}}]
    if spec.priority_classes.router:
        pod_spec["priorityClassName"] = spec.priority_classes.router
    return _workload("Deployment", pool, pool.router, ROUTER_COMPONENT, pod_spec, replicas=spec.router.replicas,
                     strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})


def router_service(pool: PoolRef, spec: SttPoolSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool, pool.router, ROUTER_COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(pool, ROUTER_COMPONENT),
            "ports": [{"name": "ws", "port": ROUTER_SERVICE_PORT, "targetPort": "ws", "protocol": "TCP"}],
        },
    }


def ingress_annotations(spec: SttPoolSpec) -> dict[str, str]:
    """Long proxy timeouts and no buffering, so WebSocket sessions are not cut or delayed."""
    timeout = str(spec.router.ingress.timeout_seconds)
    return {
        "nginx.ingress.kubernetes.io/proxy-read-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-send-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-buffering": "off",
        "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
        "haproxy.router.openshift.io/timeout-tunnel": f"{timeout}s",
        **spec.router.ingress.annotations,
    }


def ingress(pool: PoolRef, spec: SttPoolSpec) -> dict[str, Any]:
    ing = spec.router.ingress
    body: dict[str, Any] = {
        "rules": [{
            "host": ing.host,
            "http": {"paths": [{
                "path": "/",
                "pathType": "Prefix",
                "backend": {"service": {"name": pool.router, "port": {"name": "ws"}}},
            }]},
        }],
    }
    if ing.class_name:
        body["ingressClassName"] = ing.class_name
    if ing.tls_secret_name:
        body["tls"] = [{"hosts": [ing.host], "secretName": ing.tls_secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(pool, pool.ingress, ROUTER_COMPONENT, ingress_annotations(spec)),
        "spec": body,
    }


def owned_objects(pool: PoolRef, spec: SttPoolSpec, replicas: int) -> list[dict[str, Any]]:
    """Everything the pool needs, in the order it is applied."""
    objects = [
        headless_service(pool, spec),
        statefulset(pool, spec, replicas),
        pod_disruption_budget(pool, spec),
        router_service_account(pool),
        router_role_binding(pool),
        router_service(pool, spec),
        router_deployment(pool, spec),
    ]
    if spec.router.ingress.enabled:
        objects.append(ingress(pool, spec))
    return objects


def obsolete_objects(pool: PoolRef, spec: SttPoolSpec) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of objects a previous spec needed and this one does not."""
    if not spec.router.ingress.enabled:
        return [("networking.k8s.io/v1", "Ingress", pool.ingress)]
    return []
