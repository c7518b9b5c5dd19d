"""The SttPool operator against a real API server: schema, CEL, owned objects,
rollout, garbage collection, status, restarts. STT pods are kwok's fakes here
(scheduled, Running, Ready, with 127.N.x.x IPs); their template is checked."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

from stt_operator import manifests
from stt_operator.manifests import PoolRef
from stt_operator.spec import parse
from tests.e2e.cluster import REPO, eventually

LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")


def pool_manifest(name: str, namespace: str, **spec) -> dict:
    return {"apiVersion": "voxfleet.io/v1alpha1", "kind": "SttPool",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"image": "voxfleet:e2e", **spec}}


def apply(cluster, obj: dict, check: bool = True):
    return cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=check)


def condition(pool: dict, kind: str) -> dict:
    for c in (pool.get("status") or {}).get("conditions", []):
        if c["type"] == kind:
            return c
    raise AssertionError(f"no {kind} condition yet: {pool.get('status')}")


def pool_router_sa(cluster, namespace: str) -> str:
    dep = cluster.get_json("deployment", "en-router", "-n", namespace)
    return dep["spec"]["template"]["spec"]["serviceAccountName"]


def assert_subset(want, live, path="$"):
    """Everything in `want` is in `live` (which may have more: server-side defaults)."""
    if isinstance(want, dict):
        assert isinstance(live, dict), f"{path}: {live!r} is not an object"
        for key, value in want.items():
            assert key in live, f"{path}.{key} missing"
            assert_subset(value, live[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(live, list) and len(live) == len(want), f"{path}: {live!r} != {want!r}"
        for i, (w, v) in enumerate(zip(want, live)):
            assert_subset(w, v, f"{path}[{i}]")
    else:
        assert want == live, f"{path}: {live!r} != {want!r}"


# ------------------------------------------------------------------ the CRD

def test_crd_is_served_with_short_name(cluster, crd):
    resources = cluster.kubectl("api-resources", "--api-group=voxfleet.io", "-o", "wide").stdout
    assert "sttpools" in resources and "stp" in resources and "SttPool" in resources
    assert cluster.kubectl("get", "stp", "-A").returncode == 0


@pytest.mark.parametrize("spec, message", [
    ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas must be less than or equal to maxReplicas"),
    ({"buffer": 40, "sessionsPerPod": 8, "maxReplicas": 4}, "buffer must be less than sessionsPerPod * maxReplicas"),
    ({"model": {"device": "cuda"}}, "model.device cuda needs resources.gpus of at least 1"),
    ({"model": {"device": "tpu"}}, 'Unsupported value: "tpu"'),
    ({"podSettings": {"model": "x"}}, "podSettings: unknown or spec-owned pod setting"),
    ({"router": {"ingress": {"enabled": True}}}, "router.ingress.host is required"),
])
def test_invalid_pool_is_rejected_by_the_api_server(cluster, crd, namespace, spec, message):
    out = apply(cluster, pool_manifest("bad", namespace, **spec), check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert cluster.get_json("sttpool", "bad", "-n", namespace, check=False) is None


def test_long_name_is_rejected(cluster, crd, namespace):
    out = apply(cluster, pool_manifest("x" * 41, namespace), check=False)
    assert out.returncode != 0 and "at most 40 characters" in out.stderr, out.stderr


def test_api_server_applies_the_schema_defaults(cluster, crd, namespace):
    out = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                          input=json.dumps(pool_manifest("defaults", namespace)))
    stored = json.loads(out.stdout)["spec"]
    assert stored["minReplicas"] == 1 and stored["maxReplicas"] == 4 and stored["sessionsPerPod"] == 8
    assert stored["model"] == {"name": "tiny.en", "device": "cpu", "computeType": "int8"}
    assert stored["router"]["ingress"]["enabled"] is False
    assert parse(stored) == parse({"image": "voxfleet:e2e"})


# ------------------------------------------------------- the operator at work

def wait_pool_ready(cluster, namespace: str, name: str, timeout: float = 90) -> dict:
    def ready():
        pool = cluster.get_json("sttpool", name, "-n", namespace)
        assert condition(pool, "Ready")["status"] == "True", pool.get("status")
        return pool
    return eventually(ready, timeout, what=f"SttPool {name} Ready")


def test_pool_gets_owned_objects_pods_and_status(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("en", namespace, minReplicas=2, maxReplicas=5,
                                 podSettings={"maxBatch": 4}, drainTimeoutSeconds=60))
    pool = wait_pool_ready(cluster, namespace, "en")
    uid = pool["metadata"]["uid"]
    # No finalizer, ever (kopf adds one for timers and daemons): a pool can be deleted with the operator gone.
    assert not pool["metadata"].get("finalizers"), pool["metadata"]["finalizers"]

    for kind, name in [("statefulset", "en-stt"), ("service", "en-stt"), ("poddisruptionbudget", "en-stt"),
                       ("deployment", "en-router"), ("service", "en-router"), ("serviceaccount", "en-router"),
                       ("rolebinding", "en-router")]:
        obj = cluster.get_json(kind, name, "-n", namespace)
        owners = obj["metadata"]["ownerReferences"]
        assert owners == [{"apiVersion": "voxfleet.io/v1alpha1", "kind": "SttPool", "name": "en", "uid": uid,
                           "controller": True, "blockOwnerDeletion": True}], kind
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "en" and labels["app.kubernetes.io/name"] == "voxfleet"
        assert labels["app.kubernetes.io/managed-by"] == "voxfleet-operator"

    sts = cluster.get_json("statefulset", "en-stt", "-n", namespace)
    expected = manifests.statefulset(PoolRef("en", namespace, uid), parse(pool["spec"]), 2)
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    # The API server adds defaults (fieldRef.apiVersion, probe scheme, ...): what the
    # builder asked for must all be there, unchanged.
    assert_subset(expected["spec"], sts["spec"])
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90

    # kwok's fake kubelet runs the pods: scheduled onto fake nodes, with loopback IPs.
    def pods_running():
        pods = cluster.get_json("pods", "-n", namespace, "-l", manifests.selector_string(
            PoolRef("en", namespace, uid)))["items"]
        assert len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods), pods
        return pods
    pods = eventually(pods_running, 60, what="2 STT pods Running")
    assert sorted(p["metadata"]["name"] for p in pods) == ["en-stt-0", "en-stt-1"]
    for p in pods:
        assert ipaddress.ip_address(p["status"]["podIP"]) in LOOPBACK_NET
        assert p["spec"]["nodeName"].startswith("kwok-node-")
    # The router may watch Pods in its own namespace, and nothing more.
    router_sa = f"--as=system:serviceaccount:{namespace}:en-router"
    assert cluster.kubectl("auth", "can-i", "watch", "pods", "-n", namespace, router_sa).stdout.strip() == "yes"
    for verb, resource, ns in [("watch", "pods", "default"), ("list", "endpointslices.discovery.k8s.io", namespace),
                               ("get", "secrets", namespace), ("patch", "pods", namespace)]:
        assert cluster.kubectl("auth", "can-i", verb, resource, "-n", ns, router_sa,
                               check=False).stdout.strip() == "no", (verb, resource, ns)
    assert router_sa.split(":")[-1] == pool_router_sa(cluster, namespace)
    svc = cluster.get_json("service", "en-router", "-n", namespace)
    assert ipaddress.ip_address(svc["spec"]["clusterIP"]) in LOOPBACK_NET

    status = cluster.get_json("sttpool", "en", "-n", namespace)["status"]
    assert status["replicas"] == 2 and status["readyReplicas"] == 2 and status["desiredReplicas"] == 2
    assert status["selector"] == manifests.selector_string(PoolRef("en", namespace, uid))
    assert condition({"status": status}, "Degraded")["status"] == "False"
    assert condition({"status": status}, "MetricsAvailable")["reason"] == "NoPrometheus"

    table = cluster.kubectl("get", "sttpools", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "REPLICAS", "SESSIONS", "UTILIZATION", "AGE"]
    assert table[1].split()[:3] == ["en", "2", "2"]
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.kind=SttPool").stdout
    assert "Reconciled" in events


def test_spec_change_rolls_out_a_new_template(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("roll", namespace, minReplicas=2, maxReplicas=2))
    wait_pool_ready(cluster, namespace, "roll")
    before = cluster.get_json("statefulset", "roll-stt", "-n", namespace)
    cluster.kubectl("patch", "sttpool", "roll", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"model": {"name": "base.en"}}}))

    def new_template():
        sts = cluster.get_json("statefulset", "roll-stt", "-n", namespace)
        env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["VOXFLEET_POD_MODEL"] == "base.en"
        return sts
    after = eventually(new_template, 30, what="StatefulSet template has the new model")
    assert after["metadata"]["generation"] > before["metadata"]["generation"]

    def rolled():
        sts = cluster.get_json("statefulset", "roll-stt", "-n", namespace)
        st = sts["status"]
        assert st.get("updateRevision") != before["status"]["updateRevision"]
        assert st.get("currentRevision") == st.get("updateRevision") and st.get("readyReplicas") == 2, st
        return True
    eventually(rolled, 90, what="rolling update done")

    def settled():
        pool = cluster.get_json("sttpool", "roll", "-n", namespace)
        assert condition(pool, "Scaling")["status"] == "False", pool["status"]
        assert condition(pool, "Ready")["status"] == "True", pool["status"]
        assert pool["status"]["observedGeneration"] == pool["metadata"]["generation"]
        return True
    eventually(settled, 30, what="status: Ready, not Scaling")


def test_ingress_follows_the_spec(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("web", namespace, router={"ingress": {
        "enabled": True, "host": "stt.example.test", "timeoutSeconds": 1800}}))
    ing = eventually(lambda: cluster.get_json("ingress", "web", "-n", namespace, check=False), 30, what="Ingress")
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "1800"
    assert ing["spec"]["rules"][0]["host"] == "stt.example.test"
    cluster.kubectl("patch", "sttpool", "web", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"router": {"ingress": {"enabled": False}}}}))
    eventually(lambda: cluster.get_json("ingress", "web", "-n", namespace, check=False) is None, 30,
               what="Ingress removed")


def test_external_mode_follows_the_scale_subresource(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("ext", namespace, minReplicas=1, maxReplicas=3,
                                 autoscaling={"mode": "external"}))
    wait_pool_ready(cluster, namespace, "ext")
    cluster.kubectl("scale", "sttpool", "ext", "-n", namespace, "--replicas=3")
    eventually(lambda: cluster.get_json("statefulset", "ext-stt", "-n", namespace)["spec"]["replicas"] == 3, 30,
               what="StatefulSet scaled to 3")
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/voxfleet.io/v1alpha1/namespaces/{namespace}/sttpools/ext/scale").stdout)
    assert scale["spec"]["replicas"] == 3
    eventually(lambda: cluster.get_json("sttpool", "ext", "-n", namespace)["status"]["replicas"] == 3, 60,
               what="status.replicas 3")
    cluster.kubectl("scale", "sttpool", "ext", "-n", namespace, "--replicas=9")  # beyond max: clamped
    time.sleep(3)
    assert cluster.get_json("statefulset", "ext-stt", "-n", namespace)["spec"]["replicas"] == 3


def test_restart_and_resync_change_nothing_and_keep_manual_changes(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("calm", namespace, minReplicas=1, maxReplicas=4))
    wait_pool_ready(cluster, namespace, "calm")
    # A person scales within bounds and annotates: fields the operator does not own... (replicas it
    # sets only at creation in builtin mode; the autoscaler will own them later).
    cluster.kubectl("scale", "statefulset", "calm-stt", "-n", namespace, "--replicas=2")
    cluster.kubectl("annotate", "statefulset", "calm-stt", "-n", namespace, "team/owner=speech")

    def versions():
        return {kind: cluster.get_json(kind, name, "-n", namespace)["metadata"]["resourceVersion"]
                for kind, name in [("statefulset", "calm-stt"), ("deployment", "calm-router"),
                                   ("service", "calm-stt"), ("poddisruptionbudget", "calm-stt")]}

    eventually(lambda: cluster.get_json("statefulset", "calm-stt", "-n", namespace)["status"].get(
        "readyReplicas") == 2, 60, what="2 ready")
    time.sleep(5)  # at least two resync periods
    settled = versions()
    operator_process.restart()
    time.sleep(8)  # resume handlers and resyncs have run
    assert operator_process.alive(), operator_process.tail()
    assert operator_process.log.read_text().count("Handler 'sttpool_resume' succeeded") >= 1
    sts = cluster.get_json("statefulset", "calm-stt", "-n", namespace)
    assert versions()["deployment"] == settled["deployment"]
    assert versions()["service"] == settled["service"]
    assert versions()["poddisruptionbudget"] == settled["poddisruptionbudget"]
    assert sts["spec"]["replicas"] == 2
    assert sts["metadata"]["annotations"]["team/owner"] == "speech"
    # Resyncs (and the resume after the restart) have run: still no finalizer.
    assert not cluster.get_json("sttpool", "calm", "-n", namespace)["metadata"].get("finalizers")


RESYNC_AS_THE_OPERATOR = """
import sys
from stt_operator.apply import Cluster
api = Cluster("voxfleet-operator")
[pool] = [p for p in api.list_objects("voxfleet.io/v1alpha1", "SttPool", sys.argv[1])
          if p["metadata"]["name"] == "heal"]
api.post_event(pool, "Normal", "ResyncCheck", "posted outside kopf")
api.patch_status("voxfleet.io/v1alpha1", "SttPool", "heal", sys.argv[1], {"lastScaleReason": "e2e check"})
"""


def test_resync_heals_and_writes_status_and_events_without_kopf(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("heal", namespace))
    wait_pool_ready(cluster, namespace, "heal")
    # The periodic resync (a background task, not a kopf handler) re-applies what a person deleted.
    cluster.kubectl("delete", "service", "heal-router", "-n", namespace)
    eventually(lambda: cluster.get_json("service", "heal-router", "-n", namespace, check=False), 20,
               what="the router Service re-applied by the resync")
    # What the resync does outside kopf (list pools, post events, merge-patch status), with the operator's RBAC.
    env = dict(os.environ, KUBECONFIG=str(operator_process.kubeconfig))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    subprocess.run([sys.executable, "-c", RESYNC_AS_THE_OPERATOR, namespace], env=env, cwd=REPO, check=True,
                   timeout=60)
    pool = cluster.get_json("sttpool", "heal", "-n", namespace)
    assert pool["status"]["lastScaleReason"] == "e2e check"
    assert condition(pool, "Ready")["status"] == "True"  # a merge patch: the rest of the status is kept
    assert not pool["metadata"].get("finalizers")
    events = cluster.get_json("events", "-n", namespace, "--field-selector", "reason=ResyncCheck")["items"]
    assert [(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["source"]["component"])
            for e in events] == [("SttPool", "heal", "voxfleet-operator")]


def test_deleting_the_pool_removes_everything(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("gone", namespace, router={"ingress": {"enabled": True, "host": "h.test"}}))
    wait_pool_ready(cluster, namespace, "gone")
    assert cluster.get_json("ingress", "gone", "-n", namespace, check=False) is not None
    cluster.kubectl("delete", "sttpool", "gone", "-n", namespace, "--wait=true", "--timeout=30s")

    def all_gone():
        for kind in ("statefulsets", "deployments", "services", "poddisruptionbudgets", "ingresses", "pods",
                     "serviceaccounts", "rolebindings"):
            items = cluster.get_json(kind, "-n", namespace, "-l", "app.kubernetes.io/instance=gone")["items"]
            assert not items, f"{kind} left: {[i['metadata']['name'] for i in items]}"
        return True
    eventually(all_gone, 90, what="owned objects garbage-collected")


def _pods(cluster, namespace: str, pool: str) -> list[dict]:
    return cluster.get_json("pods", "-n", namespace, "-l",
                            f"app.kubernetes.io/instance={pool},app.kubernetes.io/component=stt-pod")["items"]


def test_required_anti_affinity_spreads_pods_over_nodes(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("spread", namespace, minReplicas=3, maxReplicas=3, antiAffinity="required"))
    wait_pool_ready(cluster, namespace, "spread")
    nodes = [p["spec"]["nodeName"] for p in _pods(cluster, namespace, "spread")]
    assert sorted(nodes) == ["kwok-node-0", "kwok-node-1", "kwok-node-2"]


def test_gpu_pool_lands_on_the_gpu_node_and_cpu_pools_do_not(cluster, operator_process, namespace):
    apply(cluster, pool_manifest("gpu", namespace, minReplicas=2, maxReplicas=3, antiAffinity="none",
                                 model={"device": "cuda", "computeType": "float16"}, resources={"gpus": 1}))
    wait_pool_ready(cluster, namespace, "gpu")
    pods = _pods(cluster, namespace, "gpu")
    assert [p["spec"]["nodeName"] for p in pods] == ["kwok-gpu-0", "kwok-gpu-0"]
    assert pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # A third GPU pod does not fit (the node has 2): the request is real.
    cluster.kubectl("scale", "statefulset", "gpu-stt", "-n", namespace, "--replicas=3")

    def third_pending():
        pods = _pods(cluster, namespace, "gpu")
        pending = [p for p in pods if p["status"].get("phase") == "Pending"]
        assert len(pods) == 3 and len(pending) == 1, [p["status"].get("phase") for p in pods]
        events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                 f"involvedObject.name={pending[0]['metadata']['name']}").stdout
        assert "Insufficient nvidia.com/gpu" in events, events
        return True
    eventually(third_pending, 30, what="third GPU pod unschedulable")
    for other in ("en", "spread", "calm", "roll"):
        for p in cluster.get_json("pods", "-A", "-l", f"app.kubernetes.io/instance={other}")["items"]:
            assert p["spec"].get("nodeName") != "kwok-gpu-0"
