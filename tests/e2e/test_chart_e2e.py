"""charts/voxfleet against the local control plane: lint, every rendering accepted by
the API server (server-side dry-run), and a release's life: install, the operator's
Deployment, a pool from values and one from examples/ turned into StatefulSets by the
operator, upgrade (a rollout), uninstall (everything goes but the CRD).

helm is built by scripts/k8s/build.sh into the same bin folder as the control plane.
The operator runs as a local process (as in test_operator_e2e.py) with a token of the
ServiceAccount the chart created, so the chart's RBAC is the one exercised; the
operator Pod itself is one of kwok's fakes (Running and Ready, no process).

The Prometheus Operator's CRDs (PodMonitor, PrometheusRule) are not part of
Kubernetes: the tests install schema-less stand-ins (group, version, kind, scope as
upstream; any fields accepted), so the dry-run proves the kinds are the served ones
and the objects are well-formed Kubernetes objects, not that every field is known to
the Prometheus Operator.

`helm test` is not run: its Pod (`sh -ec ...`) is not one the local kubelet runs, and
kwok would only fake it. The last test instead installs into a live-* namespace, where
tests/e2e/kubelet.py runs the chart's operator Pod and the pool's pods as real
processes, and transcribes real speech through the router.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.cluster import REPO, LocalCluster, eventually, start_operator, stop_process

CHART = REPO / "charts" / "voxfleet"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
RELEASE = "vf"
NAMESPACE = "vf-chart"
FULLNAME = "vf-voxfleet"  # <release>-<chart>
OPERATOR = f"{FULLNAME}-operator"
POOL = FULLNAME  # pool.name defaults to the fullname
E2E_VALUES = ["--set", "image.repository=voxfleet", "--set", "image.tag=e2e",
              "--set", "podImage.repository=voxfleet-pod", "--set", "podImage.tag=e2e"]


def _stand_in_crd(kind: str, plural: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


class Helm:
    def __init__(self, cluster: LocalCluster) -> None:
        self.bin = cluster.bin_dir / "helm"
        home = cluster.workdir / "helm"
        self.env = dict(os.environ, KUBECONFIG=str(cluster.admin_kubeconfig), HELM_CACHE_HOME=str(home / "cache"),
                        HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data"))
        self.env.pop("KUBERNETES_SERVICE_HOST", None)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([str(self.bin), *args], env=self.env, capture_output=True, text=True, timeout=180,
                             cwd=REPO)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}\n{out.stdout}")
        return out


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster) -> Helm:
    h = Helm(cluster)
    if not h.bin.exists():
        pytest.fail(f"{h.bin} is missing: run `bash scripts/k8s/build.sh` (it builds helm too)", pytrace=False)
    return h


@pytest.fixture(scope="module")
def monitoring_crds(cluster: LocalCluster):
    crds = [_stand_in_crd("PodMonitor", "podmonitors"), _stand_in_crd("PrometheusRule", "prometheusrules")]
    for crd in crds:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")
    yield
    for crd in crds:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--ignore-not-found", check=False)


def router_role_values(cluster: LocalCluster) -> list[str]:
    """voxfleet-router is one per cluster; when operator/deploy/rbac.yaml (test_operator_e2e)
    already made it, the release must not (the chart's rbac.createRouterClusterRole)."""
    role = cluster.get_json("clusterrole", "voxfleet-router", check=False)
    if role and role["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "Helm":
        return ["--set", "rbac.createRouterClusterRole=false"]
    return []


def example_values(path: Path, workdir: Path) -> list[str]:
    """An example's SttPool as the chart's default pool (pool.name, pool.spec)."""
    pool = next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "SttPool")
    out = workdir / f"{path.stem}.values.json"
    out.write_text(json.dumps({"pool": {"name": pool["metadata"]["name"], "spec": pool["spec"]}}))
    return ["-f", str(out)]


def dry_run(cluster: LocalCluster, manifests: str, namespace: str) -> str:
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=manifests, check=False)
    assert out.returncode == 0, f"the API server refused:\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def dry_run_namespace(cluster: LocalCluster):
    cluster.kubectl("create", "namespace", "vf-dry-run")
    yield "vf-dry-run"
    cluster.kubectl("delete", "namespace", "vf-dry-run", "--wait=false", check=False)


# ------------------------------------------------------------------ static
def test_helm_lint(helm):
    out = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("bad, message", [
    (["--set", "operator.replicas=2"], "/operator/replicas"),
    (["--set", "pool.spec.model.device=tpu"], "/pool/spec/model/device"),
    (["--set", "pool.spec.maxReplica=3"], "maxReplica"),
    (["--set", "networkPolicy.enabled=maybe"], "/networkPolicy/enabled"),
])
def test_bad_values_fail_before_anything_is_applied(helm, bad, message):
    out = helm("template", RELEASE, str(CHART), *bad, check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


@pytest.mark.parametrize("name, args", [
    ("defaults", []),
    ("everything-on", ["--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
                       "--set", "tests.apiKey.secretName=keys",
                       "--set-json", 'networkPolicy.routerClients=[{"namespaceSelector":{"matchLabels":'
                                     '{"kubernetes.io/metadata.name":"ingress-nginx"}}}]']),
    ("no-pool", ["--set", "pool.enabled=false", "--set", "networkPolicy.enabled=false"]),
    *[(p.stem, [p]) for p in EXAMPLES],
])
def test_rendering_is_accepted_by_the_api_server(cluster, crd, helm, monitoring_crds, dry_run_namespace, name, args):
    if args and isinstance(args[0], Path):
        args = example_values(args[0], cluster.workdir)
    rendered = helm("template", RELEASE, str(CHART), "-n", dry_run_namespace, *args).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    out = dry_run(cluster, rendered, dry_run_namespace)
    assert "(server dry run)" in out
    if name == "everything-on":
        assert {"PodMonitor", "PrometheusRule", "NetworkPolicy", "SttPool", "Pod"} <= kinds


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_accepted_by_the_api_server(cluster, crd, dry_run_namespace, path):
    out = dry_run(cluster, path.read_text(), dry_run_namespace)
    assert "sttpool.voxfleet.io/" in out


# ------------------------------------------------------------------ a release
class ChartOperator:
    """`python -m stt_operator` as a local process standing in for the chart's operator Pod:
    the Pod's own settings (env of the rendered Deployment) and a token of its ServiceAccount."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.log = cluster.logs / "chart-operator.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        dep = self.cluster.get_json("deployment", OPERATOR, "-n", NAMESPACE)
        pod = dep["spec"]["template"]["spec"]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
        env.pop("VOXFLEET_OPERATOR_LIVENESS", None)  # no port on the host
        env.update(VOXFLEET_OPERATOR_NAMESPACES=NAMESPACE, VOXFLEET_OPERATOR_RESYNC_SECONDS="2",
                   VOXFLEET_OPERATOR_RETRY_SECONDS="2")
        kubeconfig = self.cluster.service_account_kubeconfig(NAMESPACE, pod["serviceAccountName"],
                                                             self.cluster.workdir / "chart-operator.kubeconfig")
        self.process = start_operator(self.log, kubeconfig, env)

    def stop(self) -> None:
        stop_process(self.process)

    def mark(self) -> None:
        self.until = len(self.log.read_bytes())

    def forbidden(self) -> list[str]:
        """RBAC refusals while the release was installed (not after uninstall began)."""
        text = self.log.read_bytes()[:getattr(self, "until", None)].decode(errors="replace")
        return [line for line in text.splitlines() if "forbidden" in line.lower()]


@pytest.fixture(scope="module")
def release(cluster, crd, helm, monitoring_crds):
    """`helm install` with the default pool, monitoring on, the images of the e2e tests."""
    role_values = router_role_values(cluster)
    out = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", *E2E_VALUES, *role_values,
               "--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
               "--wait", "--timeout", "120s")
    operator = ChartOperator(cluster)
    operator.start()
    yield {"notes": out.stdout, "operator": operator, "values": role_values}
    operator.stop()
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
    assert not operator.forbidden(), "the chart's RBAC refused the operator:\n" + "\n".join(operator.forbidden()[:10])


def test_install_runs_the_operator_deployment(cluster, release):
    cluster.kubectl("rollout", "status", f"deployment/{OPERATOR}", "-n", NAMESPACE, "--timeout=60s")
    dep = cluster.get_json("deployment", OPERATOR, "-n", NAMESPACE)
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == OPERATOR
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "voxfleet:e2e"
    for kind, name in [("serviceaccount", OPERATOR), ("networkpolicy", f"{FULLNAME}-stt-pods"),
                       ("podmonitor", FULLNAME), ("prometheusrule", FULLNAME), ("sttpool", POOL)]:
        assert cluster.get_json(kind, name, "-n", NAMESPACE), f"{kind}/{name}"
    assert cluster.get_json("clusterrole", OPERATOR) and cluster.get_json("clusterrolebinding", OPERATOR)
    assert f"kubectl -n {NAMESPACE} port-forward service/{POOL}-router 8080:80" in release["notes"]


def test_pool_from_values_yields_its_statefulset(cluster, release):
    sts = eventually(lambda: cluster.get_json("statefulset", f"{POOL}-stt", "-n", NAMESPACE, check=False), 90,
                     what="the default pool's StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "voxfleet-pod:e2e"
    assert sts["metadata"]["ownerReferences"][0]["name"] == POOL
    router = eventually(lambda: cluster.get_json("deployment", f"{POOL}-router", "-n", NAMESPACE, check=False), 60,
                        what="the router Deployment")
    assert router["spec"]["template"]["spec"]["containers"][0]["image"] == "voxfleet:e2e"
    assert eventually(lambda: cluster.get_json("service", f"{POOL}-router", "-n", NAMESPACE, check=False), 60)


def test_example_pool_yields_its_statefulset(cluster, release):
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "sttpool-cpu.yaml"))
    sts = eventually(lambda: cluster.get_json("statefulset", "cpu-stt", "-n", NAMESPACE, check=False), 90,
                     what="the example pool's StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/voxfleet/voxfleet-pod:0.1.0"
    cluster.kubectl("delete", "-n", NAMESPACE, "-f", str(REPO / "examples" / "sttpool-cpu.yaml"))


def test_upgrade_with_a_changed_value_rolls_out(cluster, helm, release):
    before = cluster.get_json("deployment", OPERATOR, "-n", NAMESPACE)
    helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, *E2E_VALUES, *release["values"],
         "--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
         "--set", "operator.logLevel=debug", "--set", "pool.spec.router.replicas=3",
         "--wait", "--timeout", "120s")
    cluster.kubectl("rollout", "status", f"deployment/{OPERATOR}", "-n", NAMESPACE, "--timeout=60s")
    after = cluster.get_json("deployment", OPERATOR, "-n", NAMESPACE)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    env = {e["name"]: e.get("value") for e in after["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VOXFLEET_OPERATOR_LOG_LEVEL"] == "debug"
    assert after["status"].get("updatedReplicas") == 1 and after["status"].get("readyReplicas") == 1
    assert helm("history", RELEASE, "-n", NAMESPACE).stdout.count("deployed") == 1
    # The changed pool value reaches the operator's router Deployment.
    eventually(lambda: cluster.get_json("deployment", f"{POOL}-router", "-n", NAMESPACE)["spec"]["replicas"] == 3,
               60, what="router replicas 3 after the upgrade")


def test_uninstall_removes_everything_but_the_crd(cluster, helm, release):
    release["operator"].mark()  # from here on the operator loses its RBAC: refusals are expected
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--timeout", "120s")
    for kind, name in [("deployment", OPERATOR), ("serviceaccount", OPERATOR), ("networkpolicy", f"{FULLNAME}-stt-pods"),
                       ("networkpolicy", f"{FULLNAME}-routers"), ("networkpolicy", OPERATOR),
                       ("podmonitor", FULLNAME), ("prometheusrule", FULLNAME)]:
        assert cluster.get_json(kind, name, "-n", NAMESPACE, check=False) is None, f"{kind}/{name} is left"
    for kind in ("clusterrole", "clusterrolebinding"):
        assert cluster.get_json(kind, OPERATOR, check=False) is None, f"{kind}/{OPERATOR} is left"
    assert "release: not found" in helm("status", RELEASE, "-n", NAMESPACE, check=False).stderr
    assert cluster.get_json("crd", "sttpools.voxfleet.io"), "Helm keeps CRDs from crds/"


def test_uninstall_deletes_the_default_pool_and_its_objects(cluster, release):
    """The pool goes with the release although the operator and its RBAC go at the same
    moment: the operator puts no finalizer on it, the garbage collector does the rest."""
    eventually(lambda: cluster.get_json("sttpool", POOL, "-n", NAMESPACE, check=False) is None, 30,
               what="the default SttPool deleted")
    for kind, name in [("statefulset", f"{POOL}-stt"), ("service", f"{POOL}-stt"), ("deployment", f"{POOL}-router"),
                       ("service", f"{POOL}-router"), ("serviceaccount", f"{POOL}-router"),
                       ("rolebinding", f"{POOL}-router"), ("poddisruptionbudget", f"{POOL}-stt")]:
        eventually(lambda kind=kind, name=name: cluster.get_json(kind, name, "-n", NAMESPACE, check=False) is None, 60,
                   what=f"the pool's {kind}/{name} garbage-collected")


# ------------------------------------------------------------------ a live release
def test_live_release_transcribes_real_speech(cluster, crd, helm, kubelet, live_namespace):
    """helm install into a live-* namespace: the local kubelet runs the chart's operator Pod
    (`voxfleet operator run`, with its ServiceAccount's token: the chart's RBAC is real),
    the operator makes the default pool, the kubelet runs its STT pod and router, and a
    client transcribes real speech through the router pod. (No kube-proxy on loopback:
    the client dials the router pod's IP, not the Service.)"""
    from tests.speech import SENTENCES, conversation, require_tools, wer
    from voxfleet.client import transcript

    require_tools()
    ns, pool = live_namespace, "live"
    audio = conversation(SENTENCES[4:6])
    helm("install", "vf-live", str(CHART), "-n", ns, *E2E_VALUES, *router_role_values(cluster),
         "--set", "operator.livenessPort=0", "--set", "operator.readOnlyRootFilesystem=false",
         "--set", f"operator.namespaces={ns}",
         "--set", "operator.resyncSeconds=2", "--set", "operator.retrySeconds=2",
         "--set", f"pool.name={pool}", "--set-json",
         'pool.spec={"minReplicas": 1, "maxReplicas": 1, "sessionsPerPod": 2, "buffer": 0,'
         ' "autoscaling": {"mode": "external"}, "drainTimeoutSeconds": 10,'
         ' "model": {"name": "tiny.en", "device": "cpu"}, "resources": {"cpu": "100m", "memory": "1Gi"},'
         ' "podSettings": {"cpuThreads": 1}, "router": {"replicas": 1}}')
    try:
        def operator_running():
            items = cluster.get_json("pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
            assert len(items) == 1
            c = kubelet.container(ns, items[0]["metadata"]["name"])
            assert c is not None and c.process.poll() is None, "the operator process is not running"
            return c
        eventually(operator_running, 60, interval=1, what="the chart's operator Pod as a real process")

        def router_ready():
            sel = f"app.kubernetes.io/instance={pool},app.kubernetes.io/component=router"
            items = [p for p in cluster.get_json("pods", "-n", ns, "-l", sel)["items"]
                     if not p["metadata"].get("deletionTimestamp")]
            assert len(items) == 1
            assert any(c["type"] == "Ready" and c["status"] == "True" for c in items[0]["status"].get("conditions", []))
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            ip = items[0]["status"]["podIP"]
            with opener.open(f"http://{ip}:8080/status", timeout=3) as resp:
                status = json.loads(resp.read())
            assert [(q["name"], q["ready"]) for q in status["pods"]] == [(f"{pool}-stt-0", True)], status["pods"]
            return ip
        router_ip = eventually(router_ready, 300, interval=1, what="router Ready with the STT pod ready (real processes)")

        text = asyncio.run(asyncio.wait_for(transcript(f"ws://{router_ip}:8080", audio), 180))
        reference = " ".join(SENTENCES[4:6])
        assert wer(reference, text) <= 0.35, (reference, text)
    finally:
        helm("uninstall", "vf-live", "-n", ns, "--ignore-not-found", check=False)
