"""Manifest builders: a spec in, exactly these dicts out."""

import pytest

from stt_operator import manifests
from stt_operator.manifests import PoolRef
from stt_operator.spec import FREE_POD_SETTINGS, POD_ENV_PREFIX, POD_SETTINGS, parse

POOL = PoolRef(name="en", namespace="speech", uid="1234-uid")
OWNER = {"apiVersion": "voxfleet.io/v1alpha1", "kind": "SttPool", "name": "en", "uid": "1234-uid",
         "controller": True, "blockOwnerDeletion": True}
STT_SELECTOR = {"app.kubernetes.io/name": "voxfleet", "app.kubernetes.io/instance": "en",
                "app.kubernetes.io/component": "stt-pod"}
STT_LABELS = {**STT_SELECTOR, "app.kubernetes.io/part-of": "voxfleet", "app.kubernetes.io/managed-by": "voxfleet-operator"}
ROUTER_SELECTOR = {**STT_SELECTOR, "app.kubernetes.io/component": "router"}
ROUTER_LABELS = {**STT_LABELS, "app.kubernetes.io/component": "router"}
SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def probe(path, period, timeout, failures):
    return {"httpGet": {"path": path, "port": "ws"}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def test_statefulset_for_a_cpu_pool():
    spec = parse({"image": "voxfleet:1.0", "drainTimeoutSeconds": 120, "sessionsPerPod": 10,
                  "podSettings": {"maxBatch": 4, "beamSize": 1}})
    assert manifests.statefulset(POOL, spec, replicas=2) == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "en-stt", "namespace": "speech", "labels": STT_LABELS, "ownerReferences": [OWNER]},
        "spec": {
            "replicas": 2,
            "serviceName": "en-stt",
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": STT_SELECTOR},
            "template": {
                "metadata": {"labels": STT_LABELS},
                "spec": {
                    "terminationGracePeriodSeconds": 150,
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "containers": [{
                        "name": "stt",
                        "image": "voxfleet:1.0",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["voxfleet", "pod"],
                        "ports": [{"name": "ws", "containerPort": 8765, "protocol": "TCP"}],
                        "env": [
                            {"name": "VOXFLEET_POD_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "VOXFLEET_POD_PORT", "value": "8765"},
                            {"name": "VOXFLEET_POD_POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "VOXFLEET_POD_MODEL", "value": "tiny.en"},
                            {"name": "VOXFLEET_POD_DEVICE", "value": "cpu"},
                            {"name": "VOXFLEET_POD_COMPUTE_TYPE", "value": "int8"},
                            {"name": "VOXFLEET_POD_MAX_SESSIONS", "value": "10"},
                            {"name": "VOXFLEET_POD_DRAIN_TIMEOUT_SECONDS", "value": "120"},
                            {"name": "VOXFLEET_POD_BEAM_SIZE", "value": "1"},
                            {"name": "VOXFLEET_POD_MAX_BATCH", "value": "4"},
                        ],
                        "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
                        "startupProbe": probe("/healthz", 5, 3, 120),
                        "livenessProbe": probe("/healthz", 10, 5, 3),
                        "readinessProbe": probe("/readyz", 2, 2, 1),
                        "securityContext": SECURITY,
                    }],
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"labelSelector": {"matchLabels": STT_SELECTOR},
                                            "topologyKey": "kubernetes.io/hostname"}}]}},
                },
            },
        },
    }


def test_gpu_pool_requests_gpus_tolerates_the_taint_and_requires_spreading():
    spec = parse({"image": "i", "model": {"device": "cuda", "computeType": "float16"}, "resources": {"gpus": 1},
                  "antiAffinity": "required", "nodeSelector": {"gpu": "l4"},
                  "priorityClasses": {"pods": "stt-critical"}})
    pod = manifests.statefulset(POOL, spec, 1)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"}}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": STT_SELECTOR}, "topologyKey": "kubernetes.io/hostname"}]}}
    assert pod["nodeSelector"] == {"gpu": "l4"}
    assert pod["priorityClassName"] == "stt-critical"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["VOXFLEET_POD_DEVICE"] == "cuda" and env["VOXFLEET_POD_COMPUTE_TYPE"] == "float16"


def test_no_anti_affinity_and_no_gpu_bits_when_not_asked():
    pod = manifests.statefulset(POOL, parse({"image": "i", "antiAffinity": "none"}), 1)["spec"]["template"]["spec"]
    assert "affinity" not in pod and "tolerations" not in pod and "nodeSelector" not in pod


def test_every_pod_setting_can_be_set_through_the_pool():
    """Each PodSettings field reaches the pod as VOXFLEET_POD_<NAME>, from the spec or podSettings."""
    free = {name: {int: 3, float: 1.5, str: "info", bool: False}[kind] for name, kind in POD_SETTINGS.items()}
    camel = {"".join(p if i == 0 else p.capitalize() for i, p in enumerate(n.split("_"))): v for n, v in free.items()}
    pod_settings = {k: v for k, v in camel.items() if k in FREE_POD_SETTINGS}
    spec = parse({"image": "i", "podSettings": pod_settings, "sessionTokenSecret": {"name": "tokens"}})
    env = manifests.statefulset(POOL, spec, 1)["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    assert set(names) == {POD_ENV_PREFIX + n.upper() for n in POD_SETTINGS}
    token = next(e for e in env if e["name"] == "VOXFLEET_POD_TOKEN_SECRET")
    assert token["valueFrom"] == {"secretKeyRef": {"name": "tokens", "key": "secret"}}


def test_grace_period_covers_the_drain_timeout():
    for drain in (0, 45, 3600):
        sts = manifests.statefulset(POOL, parse({"image": "i", "drainTimeoutSeconds": drain}), 1)
        grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= drain + manifests.DRAIN_MARGIN_SECONDS


def test_headless_service_and_pdb():
    spec = parse({"image": "i", "port": 9000})
    assert manifests.headless_service(POOL, spec) == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "en-stt", "namespace": "speech", "labels": STT_LABELS, "ownerReferences": [OWNER]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": STT_SELECTOR,
                 "ports": [{"name": "ws", "port": 9000, "targetPort": "ws", "protocol": "TCP"}]},
    }
    assert manifests.pod_disruption_budget(POOL, spec) == {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "en-stt", "namespace": "speech", "labels": STT_LABELS, "ownerReferences": [OWNER]},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": STT_SELECTOR},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def test_router_deployment_and_service():
    spec = parse({"image": "voxfleet:2", "router": {"replicas": 3, "placement": "spread", "apiKeySecret": "keys"},
                  "sessionTokenSecret": {"name": "tok", "key": "hmac"}, "priorityClasses": {"router": "edge"}})
    assert manifests.router_deployment(POOL, spec) == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "en-router", "namespace": "speech", "labels": ROUTER_LABELS, "ownerReferences": [OWNER]},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": ROUTER_SELECTOR},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": ROUTER_LABELS},
                "spec": {
                    "terminationGracePeriodSeconds": 330,
                    "enableServiceLinks": False,
                    "serviceAccountName": "en-router",
                    "containers": [{
                        "name": "router", "image": "voxfleet:2", "imagePullPolicy": "IfNotPresent",
                        "command": ["voxfleet", "router"],
                        "ports": [{"name": "ws", "containerPort": 8080, "protocol": "TCP"}],
                        "env": [
                            {"name": "VOXFLEET_ROUTER_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "VOXFLEET_ROUTER_PORT", "value": "8080"},
                            {"name": "VOXFLEET_ROUTER_ROUTER_ID",
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "VOXFLEET_ROUTER_DISCOVER", "value": "kubernetes-pods"},
                            {"name": "VOXFLEET_ROUTER_NAMESPACE",
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "VOXFLEET_ROUTER_SELECTOR", "value": "app.kubernetes.io/name=voxfleet,"
                             "app.kubernetes.io/instance=en,app.kubernetes.io/component=stt-pod"},
                            {"name": "VOXFLEET_ROUTER_POD_PORT", "value": "8765"},
                            {"name": "VOXFLEET_ROUTER_PLACEMENT", "value": "spread"},
                            {"name": "VOXFLEET_ROUTER_DRAIN_TIMEOUT_SECONDS", "value": "300"},
                            {"name": "VOXFLEET_ROUTER_API_KEYS", "value": "/etc/voxfleet/api-keys"},
                            {"name": "VOXFLEET_ROUTER_TOKEN_SECRETS",
                             "valueFrom": {"secretKeyRef": {"name": "tok", "key": "hmac"}}},
                        ],
                        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "256Mi"}},
                        "livenessProbe": probe("/healthz", 10, 5, 3),
                        "readinessProbe": probe("/readyz", 2, 2, 1),
                        "securityContext": SECURITY,
                        "volumeMounts": [{"name": "api-keys", "mountPath": "/etc/voxfleet/api-keys", "readOnly": True}],
                    }],
                    "volumes": [{"name": "api-keys", "secret": {"secretName": "keys"}}],
                    "priorityClassName": "edge",
                },
            },
        },
    }
    assert manifests.router_service(POOL, spec) == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "en-router", "namespace": "speech", "labels": ROUTER_LABELS, "ownerReferences": [OWNER]},
        "spec": {"type": "ClusterIP", "selector": ROUTER_SELECTOR,
                 "ports": [{"name": "ws", "port": 80, "targetPort": "ws", "protocol": "TCP"}]},
    }


def test_ingress_is_websocket_friendly():
    spec = parse({"image": "i", "router": {"ingress": {
        "enabled": True, "host": "stt.example.org", "className": "nginx", "tlsSecretName": "stt-tls",
        "timeoutSeconds": 7200, "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "2m"}}}})
    assert manifests.ingress(POOL, spec) == {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {
            "name": "en", "namespace": "speech", "labels": ROUTER_LABELS, "ownerReferences": [OWNER],
            "annotations": {
                "nginx.ingress.kubernetes.io/proxy-read-timeout": "7200",
                "nginx.ingress.kubernetes.io/proxy-send-timeout": "7200",
                "nginx.ingress.kubernetes.io/proxy-buffering": "off",
                "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
                "haproxy.router.openshift.io/timeout-tunnel": "7200s",
                "nginx.ingress.kubernetes.io/proxy-body-size": "2m",
            },
        },
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["stt.example.org"], "secretName": "stt-tls"}],
            "rules": [{"host": "stt.example.org", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "en-router", "port": {"name": "ws"}}}}]}}],
        },
    }


def test_owned_objects_and_obsolete_ingress():
    plain = parse({"image": "i"})
    kinds = [o["kind"] for o in manifests.owned_objects(POOL, plain, 1)]
    assert kinds == ["Service", "StatefulSet", "PodDisruptionBudget", "ServiceAccount", "RoleBinding", "Service",
                     "Deployment"]
    assert manifests.obsolete_objects(POOL, plain) == [("networking.k8s.io/v1", "Ingress", "en")]
    with_ingress = parse({"image": "i", "router": {"ingress": {"enabled": True, "host": "h"}}})
    assert [o["kind"] for o in manifests.owned_objects(POOL, with_ingress, 1)][-1] == "Ingress"
    assert manifests.obsolete_objects(POOL, with_ingress) == []
    for obj in manifests.owned_objects(POOL, with_ingress, 1):
        assert obj["metadata"]["ownerReferences"] == [OWNER]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "voxfleet-operator"


def test_same_spec_same_objects():
    spec = parse({"image": "i", "podSettings": {"maxBatch": 2, "beamSize": 3}})
    assert manifests.owned_objects(POOL, spec, 2) == manifests.owned_objects(POOL, spec, 2)


@pytest.mark.parametrize("change", [{"model": {"name": "base.en"}}, {"image": "voxfleet:2"},
                                    {"podSettings": {"maxBatch": 2}}])
def test_model_or_image_change_changes_the_pod_template(change):
    before = manifests.statefulset(POOL, parse({"image": "voxfleet:1"}), 2)["spec"]["template"]
    after = manifests.statefulset(POOL, parse({"image": "voxfleet:1", **change}), 2)["spec"]["template"]
    assert before != after


def test_router_identity_and_its_only_permission():
    assert manifests.router_service_account(POOL) == {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "en-router", "namespace": "speech", "labels": ROUTER_LABELS, "ownerReferences": [OWNER]},
    }
    assert manifests.router_role_binding(POOL) == {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "en-router", "namespace": "speech", "labels": ROUTER_LABELS, "ownerReferences": [OWNER]},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "voxfleet-router"},
        "subjects": [{"kind": "ServiceAccount", "name": "en-router", "namespace": "speech"}],
    }


@pytest.mark.parametrize("router", [{}, {"apiKeySecret": "keys", "placement": "spread"}])
def test_router_env_is_a_valid_router_configuration(router):
    """The router is configured only through RouterSettings' own variables, and they make a router that starts."""
    from stt_router.settings import ENV_PREFIX, RouterSettings
    from voxfleet import settings as settings_mod

    spec = parse({"image": "i", "router": router, "sessionTokenSecret": {"name": "tok"}})
    env = manifests.router_deployment(POOL, spec)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert manifests.ROUTER_ENV_PREFIX == ENV_PREFIX
    sample = {"status.podIP": "127.2.0.9", "metadata.name": "en-router-abc", "metadata.namespace": "speech"}
    environ = {e["name"]: e["value"] if "value" in e else sample.get(
        e["valueFrom"].get("fieldRef", {}).get("fieldPath"), "s3cret") for e in env}
    settings = settings_mod.load(RouterSettings, ENV_PREFIX, environ=environ)
    settings.validate()
    assert (settings.discover, settings.pod_port) == ("kubernetes-pods", 8765)
    assert settings.selector == manifests.selector_string(POOL)
    assert settings.host == "127.2.0.9" and settings.secrets() == ["s3cret"]
    assert settings.anonymous is (not router.get("apiKeySecret"))
