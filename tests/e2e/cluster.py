"""A real Kubernetes control plane on loopback, for e2e tests: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (fake nodes: kwok-node-0..2, and
kwok-gpu-0 with 2 nvidia.com/gpu and the usual GPU taint), from binaries that
scripts/k8s/build.sh built from their Go modules.

Why it exists: the operator must be tested against the API server that users run
(schema defaulting, CEL rules, server-side apply, RBAC, garbage collection), and
this machine has no Docker and no network. Everything binds 127.0.0.1, and every
address range the cluster hands out is inside 127.0.0.0/8 (service cluster IPs
127.1.0.0/16, pod IPs a 127.N.0.0/16 with N from 2 to 99, node IP 127.0.0.2), so
nothing ever connects to a private or public address. The pod range is claimed
with a lock file per N while the cluster runs (first free from 127.2.0.0/16):
pods run as real processes (tests/e2e/kubelet.py) bind their pod IPs, so two
clusters on one machine (two engineers' test runs) must not hand out the same ones.
Certificates and keys are made here with openssl, per cluster, valid for two days.

It must never leave processes behind: `stop()` ends each one it started (by its
own handle), and logs stay in the work directory for a failed run.

Can also be used by hand:
    python -m tests.e2e.cluster [--workdir DIR]   # starts a cluster, prints KUBECONFIG, Ctrl-C stops
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, TypeVar

REPO = Path(__file__).resolve().parents[2]
SERVICE_CIDR = "127.1.0.0/16"
SERVICE_FIRST_IP = "127.1.0.1"
POD_CIDR = "127.2.0.0/16"  # the first choice; see pod_network()
POD_NETWORKS = range(2, 100)  # 127.N.0.0/16
NODE_IP = "127.0.0.2"
LOOPBACK = "127.0.0.1"
GPU_NODE = "kwok-gpu-0"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
CONTROLLERS = ",".join([
    "garbage-collector-controller", "statefulset-controller", "deployment-controller", "replicaset-controller",
    "serviceaccount-controller", "namespace-controller", "disruption-controller",
    "root-ca-certificate-publisher-controller",
])


class ClusterError(RuntimeError):
    pass


T = TypeVar("T")


def start_operator(log: Path, kubeconfig: Path, env: dict[str, str]) -> subprocess.Popen:
    """`python -m stt_operator run` against the local cluster with `env` (never as if in a Pod), logging to `log`."""
    full = dict(os.environ, KUBECONFIG=str(kubeconfig), **env)
    full.pop("KUBERNETES_SERVICE_HOST", None)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "stt_operator", "run"], env=full, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_process(process: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after `timeout` s."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def http_get(url: str, timeout: float = 3) -> tuple[int, bytes]:
    """GET a loopback URL (never through a proxy): (status, body); (0, b"") when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def pod_ready(pod: dict) -> bool:
    """The Pod object's Ready condition."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def eventually(check: Callable[[], T], timeout: float = 60, interval: float = 0.5, what: str = "") -> T:
    """Call `check` until it returns something truthy (returned) or raises no AssertionError."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, ClusterError, KeyError, TypeError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout:g} s: {what or check}; last error: {last!r}")
        time.sleep(interval)


def find_binaries() -> Path:
    """$VOXFLEET_K8S_BIN, else the cache that scripts/k8s/build.sh fills."""
    env = os.environ.get("VOXFLEET_K8S_BIN")
    if env:
        bin_dir = Path(env)
    else:
        out = subprocess.run(["bash", str(REPO / "scripts/k8s/build.sh"), "--print"], capture_output=True, text=True)
        if out.returncode != 0:
            raise ClusterError("the local Kubernetes binaries are not built: run `bash scripts/k8s/build.sh` "
                               "(tens of minutes the first time on 2 cores), or set VOXFLEET_K8S_BIN")
        bin_dir = Path(out.stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not (bin_dir / b).is_file()]
    if missing:
        raise ClusterError(f"{bin_dir} lacks {', '.join(missing)}: run `bash scripts/k8s/build.sh`")
    return bin_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def make_pki(d: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), service-account key."""
    d.mkdir(parents=True, exist_ok=True)
    o = ["openssl"]
    _run(o + ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.crt",
              "-days", "2", "-subj", "/CN=voxfleet-e2e-ca"])

    def signed(name: str, subject: str, ext: str) -> None:
        _run(o + ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr",
                  "-subj", subject])
        (d / f"{name}.ext").write_text(ext)
        _run(o + ["x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
                  "-CAcreateserial", "-out", d / f"{name}.crt", "-days", "2", "-extfile", d / f"{name}.ext"])

    signed("apiserver", "/CN=kube-apiserver",
           f"subjectAltName=IP:{LOOPBACK},IP:{SERVICE_FIRST_IP},DNS:localhost,DNS:kubernetes,"
           "DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n")
    signed("admin", "/O=system:masters/CN=voxfleet-e2e-admin", "extendedKeyUsage=clientAuth\n")
    _run(o + ["genrsa", "-out", d / "sa.key", "2048"])
    _run(o + ["rsa", "-in", d / "sa.key", "-pubout", "-out", d / "sa.pub"])


def kubeconfig(server: str, ca: Path, user: dict) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "user"}}],
        "current-context": "e2e",
    }, indent=1)


def pod_network() -> tuple[str, IO]:
    """A 127.N.0.0/16 no other running cluster on this machine uses, and the open lock
    file that claims it (flock: released when the file is closed or the process ends)."""
    lock_dir = Path(tempfile.gettempdir())
    for n in POD_NETWORKS:
        handle = open(lock_dir / f"voxfleet-e2e-podnet-127.{n}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return f"127.{n}.0.0/16", handle
    raise ClusterError(f"every pod network 127.N.0.0/16 (N in {POD_NETWORKS}) is in use by another cluster")


@dataclass
class LocalCluster:
    bin_dir: Path
    workdir: Path
    nodes: int = 3
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    apiserver_port: int = 0
    pod_cidr: str = POD_CIDR
    _pod_cidr_lock: IO | None = None

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.apiserver_port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    # ------------------------------------------------------------- processes
    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen([str(self.bin_dir / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.processes[name] = proc
        return proc

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}; last lines of its log:\n"
                                   + self.tail(name))

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if check():
                    return
            except Exception:
                pass
            time.sleep(0.25)
        raise ClusterError(f"{what} not ready after {timeout:g} s")

    def _https_ok(self, url: str) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "pki/ca.crt"))
        ctx.load_cert_chain(self.workdir / "pki/admin.crt", self.workdir / "pki/admin.key")
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return r.status == 200

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "LocalCluster":
        t0 = time.monotonic()
        pki = self.workdir / "pki"
        make_pki(pki)
        self.pod_cidr, self._pod_cidr_lock = pod_network()
        self.apiserver_port = free_port()
        etcd_port, etcd_peer = free_port(), free_port()
        self.admin_kubeconfig.write_text(kubeconfig(self.server, pki / "ca.crt", {
            "client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}))

        self._start("etcd", [
            "--name=e2e", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls=http://{LOOPBACK}:{etcd_port}",
            f"--advertise-client-urls=http://{LOOPBACK}:{etcd_port}",
            f"--listen-peer-urls=http://{LOOPBACK}:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://{LOOPBACK}:{etcd_peer}",
            f"--initial-cluster=e2e=http://{LOOPBACK}:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=1073741824",
        ])
        self._wait("etcd", lambda: urllib.request.urlopen(f"http://{LOOPBACK}:{etcd_port}/health", timeout=1)
                   .status == 200, 30)

        self._start("kube-apiserver", [
            f"--etcd-servers=http://{LOOPBACK}:{etcd_port}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}", f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            # The apiserver's own "kubernetes" Service endpoints would carry its
            # loopback address, which Endpoints validation refuses: do not write them.
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            # New nodes would get the not-ready taint, which only the node lifecycle
            # controller (not run: kwok keeps no kubelet heartbeats) would remove.
            "--disable-admission-plugins=TaintNodesByCondition",
            "--profiling=false", "--v=1",
        ])
        self._wait("kube-apiserver", lambda: self._https_ok(f"{self.server}/readyz"), 90)

        common = [f"--kubeconfig={self.admin_kubeconfig}", f"--authentication-kubeconfig={self.admin_kubeconfig}",
                  f"--authorization-kubeconfig={self.admin_kubeconfig}", f"--bind-address={LOOPBACK}",
                  "--leader-elect=false", "--v=1"]
        self._start("kube-controller-manager", [
            *common, f"--secure-port={free_port()}", f"--controllers={CONTROLLERS}",
            f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
            "--use-service-account-credentials=false",
        ])
        self._start("kube-scheduler", [*common, f"--secure-port={free_port()}"])
        self._start("kwok", [
            f"--kubeconfig={self.admin_kubeconfig}", f"--config={Path(__file__).parent / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={self.pod_cidr}", f"--node-ip={NODE_IP}", f"--server-address={LOOPBACK}:{free_port()}",
        ])
        for i in range(self.nodes):
            self.kubectl("apply", "-f", "-", input=json.dumps(self.fake_node(f"kwok-node-{i}")))
        self.kubectl("apply", "-f", "-", input=json.dumps(self.fake_node(GPU_NODE, gpus=2)))
        self._wait("kwok nodes", self._nodes_ready, 60)
        self._wait("default service account", lambda: self.kubectl(
            "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0, 60)
        self.startup_seconds = time.monotonic() - t0
        return self

    @staticmethod
    def fake_node(name: str, gpus: int = 0) -> dict:
        """A kwok node; with gpus, it offers nvidia.com/gpu and is tainted as GPU nodes usually are."""
        resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok"}},
            "spec": {},
            "status": {"allocatable": resources, "capacity": resources},
        }
        if gpus:
            resources["nvidia.com/gpu"] = str(gpus)
            node["metadata"]["labels"]["voxfleet.test/gpu"] = "true"
            node["spec"]["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
        return node

    def _nodes_ready(self) -> bool:
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ready = [n for n in nodes for c in n.get("status", {}).get("conditions", [])
                 if c["type"] == "Ready" and c["status"] == "True"]
        return len(ready) == self.nodes + 1

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.processes.clear()
        if self._pod_cidr_lock is not None:
            self._pod_cidr_lock.close()  # the pod network is free for another cluster
            self._pod_cidr_lock = None

    # ------------------------------------------------------------- clients
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args]
        out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out

    def get_json(self, *args: str, check: bool = True) -> dict | None:
        out = self.kubectl("get", *args, "-o", "json", check=check)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a bound token, 1 h)."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
        path.write_text(kubeconfig(self.server, self.workdir / "pki/ca.crt", {"token": token}))
        return path


def main() -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="voxfleet-k8s-"))
    cluster = LocalCluster(find_binaries(), workdir)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        cluster.start()
        print(f"cluster up in {cluster.startup_seconds:.1f} s, pod IPs {cluster.pod_cidr}\n"
              f"export KUBECONFIG={cluster.admin_kubeconfig}\n"
              f"logs: {cluster.logs}\nCtrl-C stops it", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
