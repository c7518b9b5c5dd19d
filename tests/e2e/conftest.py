"""e2e tier: a real local Kubernetes control plane (tests/e2e/cluster.py) and the
operator as a real process against it. Pools in a `live_namespace` (live-N) have
their pods run as real processes by the local kubelet (tests/e2e/kubelet.py);
everywhere else the pods are kwok's fakes.

Needs the binaries from `bash scripts/k8s/build.sh` (found through
$VOXFLEET_K8S_BIN or the build cache), and for the autoscaling test the
Prometheus server (`bash scripts/install-prometheus.sh`). Missing binaries are an error, not a skip:
the only way to skip this tier is to say so, VOXFLEET_E2E=0. Run it alone with
`pytest -m e2e` (or `pytest tests/e2e`). Logs of every component and of the
operator are in a work directory printed at the start, removed after a green
run and kept after a failure (or always with VOXFLEET_E2E_KEEP=1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.cluster import (REPO, ClusterError, LocalCluster, eventually, find_binaries, start_operator,
                               stop_process)
from tests.e2e.kubelet import LIVE_PREFIX, LocalKubelet

DEPLOY = REPO / "operator" / "deploy"
OPERATOR_NAMESPACE = "voxfleet-system"
OPERATOR_ACCOUNT = "voxfleet-operator"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: real local Kubernetes control plane (etcd, apiserver, kwok); "
                                       "VOXFLEET_E2E=0 skips")


_kept_logs: list[Path] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for logs in _kept_logs:
        terminalreporter.write_line(f"e2e: logs of etcd, kube-*, kwok and the operator kept in {logs}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    disabled = os.environ.get("VOXFLEET_E2E", "1").strip().lower() in ("0", "false", "no", "off")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
            if disabled:
                item.add_marker(pytest.mark.skip(reason="e2e tier disabled by VOXFLEET_E2E=0"))


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest):
    try:
        bin_dir = find_binaries()
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    # Not under pytest's basetemp: other pytest runs on the machine prune that.
    workdir = Path(tempfile.mkdtemp(prefix="voxfleet-e2e-"))
    print(f"\ne2e cluster work directory (logs): {workdir}", file=sys.stderr)
    c = LocalCluster(bin_dir, workdir)
    try:
        c.start()
    except Exception as exc:
        c.stop()
        pytest.fail(f"local cluster did not start: {exc}\nlogs kept in {c.logs}", pytrace=False)
    print(f"e2e cluster up in {c.startup_seconds:.1f} s at {c.server}, pod IPs {c.pod_cidr}", file=sys.stderr)
    yield c
    c.stop()
    if request.session.testsfailed or os.environ.get("VOXFLEET_E2E_KEEP"):
        _kept_logs.append(c.logs)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The Prometheus server binary (scripts/install-prometheus.sh); missing is an error, as for the cluster."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus binary on PATH: run `bash scripts/install-prometheus.sh`", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def crd(cluster: LocalCluster) -> str:
    cluster.kubectl("apply", "--server-side", "-f", str(DEPLOY / "crd.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/sttpools.voxfleet.io")
    return "sttpools.voxfleet.io"


class OperatorProcess:
    """`python -m stt_operator` as its own process, with the RBAC of operator/deploy."""

    def __init__(self, cluster: LocalCluster, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.log = cluster.logs / "operator.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_operator(self.log, self.kubeconfig, {
            "VOXFLEET_OPERATOR_RESYNC_SECONDS": "2", "VOXFLEET_OPERATOR_RETRY_SECONDS": "2",
            "VOXFLEET_OPERATOR_LOG_LEVEL": "info"})

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator_process(cluster: LocalCluster, crd: str):
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    cluster.kubectl("apply", "-f", str(DEPLOY / "rbac.yaml"))
    kubeconfig = cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT,
                                                    cluster.workdir / "operator.kubeconfig")
    op = OperatorProcess(cluster, kubeconfig)
    op.start()
    yield op
    op.stop()
    forbidden = [line for line in op.log.read_text(errors="replace").splitlines() if "forbidden" in line.lower()]
    assert not forbidden, "the operator hit RBAC refusals:\n" + "\n".join(forbidden[:10])


_counter = iter(range(1, 10_000))


@pytest.fixture
def namespace(cluster: LocalCluster) -> str:
    name = f"e2e-{next(_counter)}"
    cluster.kubectl("create", "namespace", name)
    eventually(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
               30, what="default ServiceAccount")
    return name


@pytest.fixture(scope="session")
def kubelet(cluster: LocalCluster):
    """The local kubelet (tests/e2e/kubelet.py): voxfleet's pods in live-* namespaces as real processes.
    Every process it started is gone after the session; their logs are in logs/pods/."""
    k = LocalKubelet(cluster).start()
    yield k
    k.stop()


@pytest.fixture
def live_namespace(cluster: LocalCluster, kubelet: LocalKubelet) -> str:
    """A namespace whose voxfleet pods the local kubelet runs (kwok only gives them IPs)."""
    name = f"{LIVE_PREFIX}{next(_counter)}"
    cluster.kubectl("create", "namespace", name)
    eventually(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
               30, what="default ServiceAccount")
    return name
