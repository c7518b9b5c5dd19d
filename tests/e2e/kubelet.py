"""A small "local kubelet" for e2e tests: voxfleet's pods as real local processes.

Why it exists: kwok's fake kubelet marks every pod Running and Ready at once, so
tests of the operator alone never see a model load, a readiness probe or a drain.
For the pods it serves, this kubelet does what a kubelet does, on loopback:

- a pod of ours (label app.kubernetes.io/part-of=voxfleet) in a namespace whose
  name starts with `live-` (LIVE_PREFIX), bound to a kwok node, gets its IP
  (127.N.x.y, see cluster.pod_network) and phase Running from kwok (stage `pod-start-local` in
  kwok-stages.yaml, which leaves Ready False; kwok's own `pod-ready` and
  `pod-delete` stages skip these pods);
- this kubelet then starts the container's real command (`voxfleet pod`,
  `voxfleet router`: only the `voxfleet` command is ever run, as
  `python -m voxfleet`) with the container's env resolved (values, fieldRefs,
  secretKeyRefs, configMapKeyRefs; secret, configMap and emptyDir volumes as
  folders of the pod's own, their mount paths rewritten in env values),
  bound to the pod's IP; a pod whose service account token is mounted gets a
  kubeconfig with a token of that ServiceAccount (so its RBAC is real);
- it polls the container's readinessProbe (an HTTP GET on the pod IP) and
  mirrors the answer into the Pod's Ready and ContainersReady conditions;
- on deletion it sends SIGTERM, waits for the process to drain and exit (up to
  the grace period, then SIGKILL), records the exit code, and only then removes
  the Pod object (grace period 0, uid precondition).

It must never bind or connect outside 127.0.0.0/8: a pod IP outside it, or a
`*_HOST` variable that is not a loopback address (0.0.0.0 and :: are replaced by
the pod IP), refuses the start. It never leaves processes behind: `stop()` ends
each one it started (SIGTERM, then SIGKILL after a bound), and every process's
output is in logs/pods/ of the cluster's work directory.

Not done (not needed by the tests): restarts after a crash (the pod just stays
not Ready, its container terminated), liveness and startup probes, exec probes,
more than one container, `$(VAR)` expansion, projected and hostPath volumes, subPath.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.e2e.cluster import REPO, LocalCluster, kubeconfig

LIVE_PREFIX = "live-"
PART_OF = "app.kubernetes.io/part-of=voxfleet"
LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
FIELD_PATHS = {
    "metadata.name": ("metadata", "name"), "metadata.namespace": ("metadata", "namespace"),
    "metadata.uid": ("metadata", "uid"), "spec.nodeName": ("spec", "nodeName"),
    "spec.serviceAccountName": ("spec", "serviceAccountName"), "status.podIP": ("status", "podIP"),
    "status.hostIP": ("status", "hostIP"),
}
# Process environment that is not the container's: enough to run the venv's python offline.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeletError(RuntimeError):
    pass


class Api:
    """The few REST calls this kubelet makes, as the cluster admin, over loopback HTTPS (no proxies)."""

    def __init__(self, cluster: LocalCluster) -> None:
        pki = cluster.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        self.server = cluster.server
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPSHandler(context=ctx))

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        with self.opener.open(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")


@dataclass
class Container:
    """One pod's process and what this kubelet knows of it."""
    uid: str
    namespace: str
    name: str
    pod_ip: str
    process: subprocess.Popen
    log: Path
    probe_url: str | None
    probe_period: float
    probe_timeout: float
    image: str
    container_name: str
    started_at: str
    ready: bool = False  # what the Pod says (as last patched)
    next_probe: float = 0.0
    probes: list[int] = field(default_factory=list)  # HTTP status of each probe (0: no answer), bounded
    term_sent_at: float | None = None
    kill_at: float | None = None
    exit_reported: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class Exit:
    namespace: str
    name: str
    uid: str
    returncode: int
    terminated_by_kubelet: bool  # SIGTERM was sent because the pod was deleted
    killed: bool  # SIGKILL after the grace period


class LocalKubelet:
    """Runs in a thread of the test process; `start()` then `stop()`."""

    def __init__(self, cluster: LocalCluster, interval: float = 0.5, stop_timeout: float = 30.0) -> None:
        self.cluster = cluster
        self.api = Api(cluster)
        self.interval = interval
        self.stop_timeout = stop_timeout
        self.containers: dict[str, Container] = {}
        self.exits: list[Exit] = []
        self.refused: dict[str, str] = {}  # uid -> why it was not started
        self.ready_history: dict[str, list[tuple[bool, list[int]]]] = {}  # uid -> (ready, probes so far) per patch
        self.logs = cluster.logs / "pods"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._log = open(cluster.logs / "kubelet.log", "a", buffering=1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "LocalKubelet":
        self._thread = threading.Thread(target=self._run, name="local-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
        with self._lock:
            containers = list(self.containers.values())
        for c in containers:
            if c.process.poll() is None:
                self.say(f"teardown: SIGTERM {c.namespace}/{c.name} (pid {c.process.pid})")
                c.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for c in containers:
            try:
                c.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"teardown: SIGKILL {c.namespace}/{c.name}")
                self._kill(c)
                c.process.wait(10)
        self._log.close()

    def say(self, message: str) -> None:
        if not self._log.closed:
            self._log.write(f"{now()} {message}\n")

    def exit_of(self, namespace: str, name: str) -> Exit | None:
        with self._lock:
            found = [e for e in self.exits if e.namespace == namespace and e.name == name]
        return found[-1] if found else None

    def container(self, namespace: str, name: str) -> Container | None:
        with self._lock:
            found = [c for c in self.containers.values() if c.namespace == namespace and c.name == name]
        return found[-1] if found else None

    # ------------------------------------------------------------- the loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # the API server is slow or restarting: try again next round
                self.say(f"sync failed: {exc!r}")
            self._stop.wait(self.interval)

    def _sync(self) -> None:
        selector = urllib.parse.quote(PART_OF)
        pods = self.api.call("GET", f"/api/v1/pods?labelSelector={selector}")["items"]
        seen: set[str] = set()
        for pod in pods:
            meta = pod["metadata"]
            if not meta["namespace"].startswith(LIVE_PREFIX) or not pod["spec"].get("nodeName"):
                continue
            uid = meta["uid"]
            seen.add(uid)
            c = self.containers.get(uid)
            if meta.get("deletionTimestamp"):
                self._terminate(pod, c)
                continue
            if c is None:
                if uid not in self.refused and pod["status"].get("podIP") and pod["status"].get("phase") == "Running":
                    self._start_pod(pod)
                continue
            self._probe(pod, c)
        for uid, c in list(self.containers.items()):  # the Pod object went away (force-deleted, namespace gone)
            if uid not in seen:
                c.deleted = True
                self._terminate(None, c)

    # ------------------------------------------------------------- start
    def _start_pod(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        try:
            argv, env, container, probe = self._command(pod)
        except KubeletError as exc:
            self.refused[uid] = str(exc)
            self.say(f"refused {meta['namespace']}/{meta['name']}: {exc}")
            return
        log = self.logs / f"{meta['namespace']}_{meta['name']}_{uid[:8]}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        probe_url, period, timeout = probe
        c = Container(uid, meta["namespace"], meta["name"], pod["status"]["podIP"], process, log, probe_url,
                      period, timeout, container.get("image", ""), container["name"], now())
        with self._lock:
            self.containers[uid] = c
        self.say(f"started {c.namespace}/{c.name} on {c.pod_ip} (node {spec['nodeName']}): "
                 f"pid {process.pid}: {' '.join(argv[1:])}; log {log.name}")

    def _command(self, pod: dict) -> tuple[list[str], dict[str, str], dict, tuple[str | None, float, float]]:
        meta, spec = pod["metadata"], pod["spec"]
        pod_ip = pod["status"]["podIP"]
        if ipaddress.ip_address(pod_ip) not in LOOPBACK_NET:
            raise KubeletError(f"pod IP {pod_ip} is not a loopback address")
        containers = spec["containers"]
        if len(containers) != 1:
            raise KubeletError("only single-container pods are run")
        container = containers[0]
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        if not argv or argv[0] != "voxfleet":
            raise KubeletError(f"only the voxfleet command is run, not {argv[:1]}")
        argv = [sys.executable, "-m", "voxfleet", *argv[1:]]

        pod_dir = self.cluster.workdir / "kubelet" / meta["uid"]
        pod_dir.mkdir(parents=True, exist_ok=True)
        mounts = self._volumes(pod, container, pod_dir)
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        for item in container.get("env") or []:
            env[item["name"]] = self._env_value(pod, item)
        for key, value in list(env.items()):
            for mount_path, local in mounts.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    env[key] = str(local) + value[len(mount_path):]
            if key.endswith("_HOST") and key.startswith("VOXFLEET_"):
                if value in ("", "0.0.0.0", "::", "[::]"):
                    env[key] = pod_ip  # bind the pod's own address, never every address
                elif ipaddress.ip_address(env[key]) not in LOOPBACK_NET:
                    raise KubeletError(f"{key}={value} is not a loopback address")
        if spec.get("serviceAccountName") and spec.get("automountServiceAccountToken", True):
            env["KUBECONFIG"] = str(self._service_account_kubeconfig(pod, pod_dir))
        return argv, env, container, self._probe_target(pod, container)

    def _env_value(self, pod: dict, item: dict) -> str:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom") or {}
        ns = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path not in FIELD_PATHS:
                raise KubeletError(f"fieldRef {path} is not supported")
            obj: Any = pod
            for key in FIELD_PATHS[path]:
                obj = obj.get(key) or {}
            return str(obj or "")
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = self.api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{ref['name']}")
            return base64.b64decode(secret["data"][ref["key"]]).decode()
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self.api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/{ref['name']}")["data"][ref["key"]]
        raise KubeletError(f"env {item['name']}: source {sorted(source)} is not supported")

    def _volumes(self, pod: dict, container: dict, pod_dir: Path) -> dict[str, Path]:
        """Secret, configMap and emptyDir volumes as folders in the pod's folder: mount path -> local folder.
        The process sees them where env values name the mount path (the path is rewritten)."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        ns = pod["metadata"]["namespace"]
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            if mount["mountPath"].startswith(SA_MOUNT):
                continue  # the service account token: given as a kubeconfig instead
            volume = volumes.get(mount["name"], {})
            local = pod_dir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                secret = self.api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{volume['secret']['secretName']}")
                for key, value in (secret.get("data") or {}).items():
                    (local / key).write_bytes(base64.b64decode(value))
            elif "configMap" in volume:
                config = self.api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/{volume['configMap']['name']}")
                for key, value in (config.get("data") or {}).items():
                    (local / key).write_text(value)
            elif "emptyDir" not in volume:
                raise KubeletError(f"volume {mount['name']}: only secret, configMap and emptyDir volumes are run")
            mounts[mount["mountPath"].rstrip("/")] = local
        return mounts

    def _service_account_kubeconfig(self, pod: dict, pod_dir: Path) -> Path:
        """A token of the pod's ServiceAccount, bound to the pod (as a kubelet's projected token is)."""
        meta = pod["metadata"]
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 3600,
                            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                               "uid": meta["uid"]}}}
        sa = pod["spec"]["serviceAccountName"]
        out = self.api.call("POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", request)
        path = pod_dir / "kubeconfig"
        path.write_text(kubeconfig(self.cluster.server, self.cluster.workdir / "pki/ca.crt",
                                   {"token": out["status"]["token"]}))
        return path

    @staticmethod
    def _probe_target(pod: dict, container: dict) -> tuple[str | None, float, float]:
        probe = container.get("readinessProbe") or {}
        http = probe.get("httpGet")
        if not http:
            return None, 1.0, 1.0
        port = http["port"]
        if isinstance(port, str) and not port.isdigit():
            named = [p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port]
            if not named:
                raise KubeletError(f"readinessProbe port {port!r} is not a container port")
            port = named[0]
        url = f"http://{pod['status']['podIP']}:{port}{http.get('path', '/')}"
        # Probe at least every second (tests wait on it), never longer than the probe's own timeout.
        return url, min(1.0, float(probe.get("periodSeconds", 10))), float(probe.get("timeoutSeconds", 1))

    # ------------------------------------------------------------- readiness
    def _probe(self, pod: dict, c: Container) -> None:
        if c.process.poll() is not None:
            if not c.exit_reported:
                self.say(f"{c.namespace}/{c.name} exited on its own with {c.process.returncode}")
                self._record_exit(c)
                self._patch_status(pod, c, ready=False, exit_code=c.process.returncode)
            return
        if time.monotonic() < c.next_probe:
            return
        c.next_probe = time.monotonic() + c.probe_period
        code = 200 if c.probe_url is None else self._http_status(c.probe_url, c.probe_timeout)
        c.probes = (c.probes + [code])[-50:]
        ready = code == 200
        pod_ready = any(cond["type"] == "Ready" and cond["status"] == "True"
                        for cond in pod["status"].get("conditions") or [])
        if ready != pod_ready or ready != c.ready:
            self._patch_status(pod, c, ready=ready)

    @staticmethod
    def _http_status(url: str, timeout: float) -> int:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError):
            return 0

    def _patch_status(self, pod: dict, c: Container, ready: bool, exit_code: int | None = None) -> None:
        stamp = now()
        flag = "True" if ready else "False"
        conditions = [cond for cond in pod["status"].get("conditions") or []
                      if cond["type"] not in ("Ready", "ContainersReady")]
        for kind in ("Ready", "ContainersReady"):
            cond = {"type": kind, "status": flag, "lastTransitionTime": stamp}
            if not ready:
                cond["reason"] = "ContainersNotReady"
            conditions.append(cond)
        if exit_code is None:
            state = {"running": {"startedAt": c.started_at}}
        else:
            state = {"terminated": {"exitCode": exit_code, "startedAt": c.started_at, "finishedAt": stamp,
                                    "reason": "Completed" if exit_code == 0 else "Error"}}
        status = {"conditions": conditions, "containerStatuses": [{
            "name": c.container_name, "image": c.image, "imageID": "", "ready": ready, "restartCount": 0,
            "started": exit_code is None, "state": state}]}
        try:
            self.api.call("PATCH", f"/api/v1/namespaces/{c.namespace}/pods/{c.name}/status", {"status": status},
                          "application/merge-patch+json")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            return
        c.ready = ready
        self.ready_history.setdefault(c.uid, []).append((ready, list(c.probes)))
        self.say(f"{c.namespace}/{c.name}: Ready={flag} (last probes {c.probes[-3:]})")

    # ------------------------------------------------------------- stopping
    def _terminate(self, pod: dict | None, c: Container | None) -> None:
        """Deleted pod: SIGTERM, wait for the drain (up to the grace period), then remove the Pod object."""
        if c is not None and c.process.poll() is None:
            if c.term_sent_at is None:
                grace = 30
                if pod is not None:
                    grace = pod["metadata"].get("deletionGracePeriodSeconds",
                                                pod["spec"].get("terminationGracePeriodSeconds", 30))
                c.term_sent_at = time.monotonic()
                c.kill_at = c.term_sent_at + max(1, int(grace))
                self.say(f"{c.namespace}/{c.name} deleted: SIGTERM (pid {c.process.pid}), grace {grace} s")
                c.process.send_signal(signal.SIGTERM)
                if pod is not None and c.ready:
                    self._patch_status(pod, c, ready=False)
            elif c.kill_at is not None and time.monotonic() > c.kill_at:
                self.say(f"{c.namespace}/{c.name}: grace period over: SIGKILL")
                self._kill(c)
            return
        if c is not None and not c.exit_reported:
            self.say(f"{c.namespace}/{c.name} exited with {c.process.returncode}")
            self._record_exit(c)
        if pod is not None:
            meta = pod["metadata"]
            try:
                self.api.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                              {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                               "preconditions": {"uid": meta["uid"]}})
                self.say(f"{meta['namespace']}/{meta['name']}: Pod object removed")
            except urllib.error.HTTPError as exc:
                if exc.code not in (404, 409):
                    raise
        if c is not None:
            with self._lock:
                self.containers.pop(c.uid, None)

    def _record_exit(self, c: Container) -> None:
        c.exit_reported = True
        with self._lock:
            self.exits.append(Exit(c.namespace, c.name, c.uid, c.process.returncode, c.term_sent_at is not None,
                                   c.process.returncode == -signal.SIGKILL))

    @staticmethod
    def _kill(c: Container) -> None:
        try:
            os.killpg(c.process.pid, signal.SIGKILL)  # its own session: the process and any children
        except ProcessLookupError:
            pass
