"""The operator's builtin autoscaler end to end: real pods, a real router, a real Prometheus.

An SttPool in autoscaling mode `builtin` (minReplicas 1, maxReplicas 2, one session
per pod) whose pods are real processes (tests/e2e/kubelet.py), scraped every second
by a real Prometheus (the Debian package's binary, scripts/install-prometheus.sh)
that the operator reads through spec.prometheus.url. Real speech goes through the
router pod, and the test shows, with every wait bounded and no assertion on time:

1. a burst (one session on the only pod, a second one that the router must queue)
   makes the operator raise the StatefulSet's replicas above minReplicas;
2. the new pod counts as capacity only once warm: the operator's decisions count it
   as starting (not ready) until its /readyz says 200, and the router places the
   queued session on it only then;
3. stopping Prometheus freezes the size (replicas unchanged over several control
   periods, each a fail-static decision; MetricsAvailable=False and one warning
   event), and starting it again resumes autoscaling;
4. once the burst is over the highest ordinal gets the drain mark while its session
   still runs, stays until that session ends, is then removed (its process drains
   and exits 0) and replicas go back to minReplicas; no session is cut: each one
   ends with the server's `end` and a reasonable WER.

Targets come from file_sd_configs, written by this test from the pool's Pods (IP,
name, namespace) as kubernetes_sd_configs with the usual relabelling would give
them (`namespace`, `pod` labels; a Pod stays a target until its object is gone).
Why not kubernetes_sd_configs itself: the Debian package builds Prometheus without
the Kubernetes service discovery (its NEWS: "Kubernetes support has been completely
removed"; `promtool check config` says "field kubernetes_sd_configs not found"), and
nothing else may be downloaded here.

Kept small: the machine has 2 cores. One CPU thread per pod, a 2 s control period,
short stabilization and idle windows. The longest wait is the operator's arrival-rate
window (prometheus.RATE_WINDOW, 1 min): while sessions arrived within it, the
Little's-law buffer keeps the burst pod.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.cluster import LOOPBACK, ClusterError, eventually, free_port, http_get, pod_ready
from tests.e2e.kubelet import PART_OF
from tests.devset import assert_as_accurate_as_offline, clips, offline_text
from voxfleet import protocol as p
from voxfleet.client import FRAME_SECONDS, Audio, read_audio

POOL = "scale"
STT_SELECTOR = f"app.kubernetes.io/instance={POOL},app.kubernetes.io/component=stt-pod"
ROUTER_SELECTOR = f"app.kubernetes.io/instance={POOL},app.kubernetes.io/component=router"
PERIOD = 2  # spec.autoscaling.intervalSeconds (and the operator's resync in tests/e2e/conftest.py)
DRAINING = "voxfleet.io/draining"
QUEUE_ATTEMPTS = 4  # starts of one session (each waits at most the router's queue wait)


# ------------------------------------------------------------------ Prometheus

class FileTargets:
    """The pool's Pods as Prometheus file_sd targets, rewritten every `interval` (a thread).

    What kubernetes_sd_configs (role: pod) plus the usual relabelling would give: one
    target per Pod with an IP, at its `ws` container port, labelled namespace and pod,
    kept until the Pod object is gone (a draining pod is still scraped)."""

    def __init__(self, api: Any, namespace: str, path: Path, interval: float = 1.0) -> None:
        self.api, self.namespace, self.path, self.interval = api, namespace, path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-sd", daemon=True)
        self.write([])

    def targets(self) -> list[dict]:
        selector = urllib.parse.quote(f"{PART_OF},app.kubernetes.io/instance={POOL}")
        pods = self.api.call("GET", f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}")["items"]
        out = []
        for pod in pods:
            ip = pod["status"].get("podIP")
            ports = [q["containerPort"] for c in pod["spec"]["containers"] for q in c.get("ports") or []
                     if q.get("name") == "ws"]
            if ip and ports:
                out.append({"targets": [f"{ip}:{ports[0]}"],
                            "labels": {"namespace": self.namespace, "pod": pod["metadata"]["name"]}})
        return sorted(out, key=lambda t: t["labels"]["pod"])

    def write(self, targets: list[dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        os.replace(tmp, self.path)  # Prometheus never reads half a file

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                targets = self.targets()
                if targets != last:
                    self.write(targets)
                    last = targets
            except Exception:  # the API server is busy: next round
                pass
            self._stop.wait(self.interval)

    def start(self) -> "FileTargets":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


class PrometheusServer:
    """The Prometheus binary on a loopback port of its own, scraping the file_sd targets every second."""

    def __init__(self, binary: str, workdir: Path, targets: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: voxfleet\n    file_sd_configs:\n"
            f"      - files: ['{targets}']\n        refresh_interval: 1s\n")
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "PrometheusServer":
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def up() -> bool:
            assert self.process.poll() is None, self.tail()
            return http_get(f"{self.url}/-/ready", 1)[0] == 200
        eventually(up, 60, 0.3, "Prometheus ready")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def query(self, promql: str) -> dict[str, float]:
        """An instant vector, by its `pod` label."""
        code, body = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        assert code == 200, (code, body[:500])
        return {r["metric"].get("pod", ""): float(r["value"][1]) for r in json.loads(body)["data"]["result"]}

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


# ------------------------------------------------------------------ sessions

@dataclass
class SessionRecord:
    """What a client saw of one session, in order."""
    name: str
    queued: int = 0  # "queued" messages before "ready"
    ready_at: float | None = None
    finals: list[str] = field(default_factory=list)
    ended: bool = False  # the server's {"type": "end"} arrived
    errors: list[dict] = field(default_factory=list)
    close_code: int | None = None
    held_frames: int = 0  # silence frames sent while held
    queue_timeouts: int = 0  # starts the router's queue refused (timed out) before one was placed

    @property
    def text(self) -> str:
        return " ".join(self.finals).strip()


async def stream_session(url: str, record: SessionRecord, parts: list[Audio], hold: threading.Event | None,
                         max_hold_frames: int) -> None:
    """One native-protocol session at real-time pace: parts[0], then (with `hold`) silence until
    `hold` is set (at most `max_hold_frames` frames: a live microphone in a pause), then the
    other parts, then `end`; reads finals until the server's `end`."""
    from websockets.asyncio.client import connect

    fmt = parts[0].format
    silence = bytes(int(fmt.sample_rate * FRAME_SECONDS) * fmt.bytes_per_frame)
    for attempt in range(QUEUE_ATTEMPTS):
        ws = await connect(url, open_timeout=10, max_size=None, compression=None)
        await ws.send(p.encode(p.start_message(p.Start(fmt, "en", "normal", False))))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if msg.get("type") == "queued":
                record.queued += 1
                continue
            break
        if msg.get("type") == "ready":
            break
        await ws.close()
        # The router's queue wait (30 s) ran out before a pod had room: the session never
        # started (nothing to cut), so start it again, as a client told 1013 would.
        if msg.get("code") != p.ErrorCode.QUEUE_TIMEOUT or attempt + 1 == QUEUE_ATTEMPTS:
            record.errors.append(msg)
            return
        record.queue_timeouts += 1
    record.ready_at = time.monotonic()
    async with ws:

        async def send() -> None:
            seq, t0 = 0, time.monotonic()

            async def frame(data: bytes) -> None:
                nonlocal seq
                delay = t0 + seq * FRAME_SECONDS - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(p.pack_frame(seq, data))
                seq += 1

            for data in parts[0].frames():
                await frame(data)
            if hold is not None:
                while not hold.is_set() and record.held_frames < max_hold_frames:
                    await frame(silence)
                    record.held_frames += 1
            for part in parts[1:]:
                for data in part.frames():
                    await frame(data)
            await ws.send(p.encode(p.END))

        sender = asyncio.create_task(send())
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    continue
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "final":
                    record.finals.append(msg["text"])
                elif kind == "error":
                    record.errors.append(msg)
                elif kind == "end":
                    record.ended = True
                    break
        finally:
            sender.cancel()
        await ws.wait_closed()
        record.close_code = ws.close_code


class SessionThread:
    """A session in a thread of its own (its own event loop), so the test can poll the cluster meanwhile."""

    def __init__(self, url: str, name: str, parts: list[Audio], hold: threading.Event | None = None,
                 max_hold_frames: int = 0) -> None:
        self.record = SessionRecord(name)
        self.error: BaseException | None = None
        self._args = (url, self.record, parts, hold, max_hold_frames)
        self._thread = threading.Thread(target=self._run, name=f"session-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(asyncio.wait_for(stream_session(*self._args), 400))
        except BaseException as exc:  # reported by join()
            self.error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)

    def join(self, timeout: float) -> SessionRecord:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"session {self.record.name} still running after {timeout:g} s"
        assert self.error is None, f"session {self.record.name} failed: {self.error!r}"
        return self.record


def assert_complete(record: SessionRecord, names: tuple[str, ...]) -> None:
    """Ended cleanly with every word: as accurate as offline decoding of the same recordings."""
    assert record.ended and not record.errors, record
    assert record.close_code in (1000, None), record
    assert_as_accurate_as_offline(names, record.text)


# ------------------------------------------------------------------ the test

def test_builtin_autoscaler_scales_on_prometheus_and_drains_without_cutting_sessions(
        cluster, operator_process, kubelet, live_namespace, prometheus_binary):
    ns, api = live_namespace, kubelet.api
    # Recordings of people; their offline transcripts first, so nothing below waits on the model.
    burst, held = ("en_jfk_ask_not",), ("en_arctic_awb_a0007", "en_librispeech_61-70968-0000")
    offline_text(*burst), offline_text(*held)
    burst_audio = read_audio(clips(*burst)[0].path)
    held_audio = [read_audio(c.path) for c in clips(*held)]

    workdir = cluster.workdir / f"prometheus-{ns}"
    workdir.mkdir()
    targets = FileTargets(api, ns, workdir / "targets.json")
    prometheus = PrometheusServer(prometheus_binary, workdir, targets.path)
    release = threading.Event()
    sessions: list[SessionThread] = []

    def get(path: str) -> dict:
        try:
            return api.call("GET", path)
        except OSError as exc:  # HTTP errors and timeouts: `eventually` tries again
            raise ClusterError(f"GET {path}: {exc}") from None

    def sts_replicas() -> int:
        return get(f"/apis/apps/v1/namespaces/{ns}/statefulsets/{POOL}-stt")["spec"]["replicas"]

    def pool_status() -> dict:
        return get(f"/apis/voxfleet.io/v1alpha1/namespaces/{ns}/sttpools/{POOL}").get("status") or {}

    def condition(status: dict, kind: str) -> dict:
        return next((c for c in status.get("conditions") or () if c["type"] == kind), {})

    def pods(selector: str) -> list[dict]:
        return get(f"/api/v1/namespaces/{ns}/pods?labelSelector={urllib.parse.quote(selector)}")["items"]

    def stt_pod(ordinal: int) -> dict | None:
        return next((q for q in pods(STT_SELECTOR) if q["metadata"]["name"] == f"{POOL}-stt-{ordinal}"), None)

    def events(reason: str) -> list[dict]:
        items = get(f"/api/v1/namespaces/{ns}/events")["items"]
        return [e for e in items if e.get("reason") == reason and e["involvedObject"].get("name") == POOL]

    decisions: dict[float, dict] = {}  # status.autoscaler.lastRun -> lastDecision, every one the test saw

    def last_decision() -> dict:
        auto = pool_status().get("autoscaler") or {}
        if auto.get("lastRun") is not None:
            decisions[auto["lastRun"]] = auto["lastDecision"]
        return auto

    def next_decisions(n: int, timeout: float, check=lambda d: None) -> list[dict]:
        """Wait for n more autoscaler periods; `check` runs on each new decision (and may assert)."""
        seen = (last_decision() or {}).get("lastRun")
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            assert time.monotonic() < deadline, f"only {len(out)} of {n} autoscaler periods in {timeout:g} s"
            auto = last_decision()
            if auto.get("lastRun") != seen:
                seen = auto["lastRun"]
                check(auto["lastDecision"])
                out.append(auto["lastDecision"])
            time.sleep(0.3)
        return out

    try:
        targets.start()
        prometheus.start()
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "voxfleet.io/v1alpha1", "kind": "SttPool",
            "metadata": {"name": POOL, "namespace": ns},
            "spec": {"image": "voxfleet:e2e", "minReplicas": 1, "maxReplicas": 2, "sessionsPerPod": 1,
                     "buffer": 0, "targetUtilization": 1.0,
                     "scaleUp": {"stabilizationSeconds": 0, "maxStep": 1},
                     "scaleDown": {"stabilizationSeconds": 2 * PERIOD, "maxStep": 1},
                     "idleSeconds": PERIOD, "drainTimeoutSeconds": 120,
                     "autoscaling": {"mode": "builtin", "intervalSeconds": PERIOD},
                     "prometheus": {"url": prometheus.url},
                     "model": {"name": "tiny.en", "device": "cpu"},
                     "resources": {"cpu": "100m", "memory": "1Gi"},
                     "podSettings": {"cpuThreads": 1}, "router": {"replicas": 1}},
        }))

        # ---- idle: one warm pod, the router, both scraped; the operator measures and holds minReplicas.
        def idle_pool() -> str:
            stt = pods(STT_SELECTOR)
            assert [q["metadata"]["name"] for q in stt] == [f"{POOL}-stt-0"] and pod_ready(stt[0]), stt
            routers = [q for q in pods(ROUTER_SELECTOR) if not q["metadata"].get("deletionTimestamp")]
            assert len(routers) == 1 and pod_ready(routers[0])
            ip = routers[0]["status"]["podIP"]
            code, body = http_get(f"http://{ip}:8080/status")
            assert code == 200 and [(q["name"], q["ready"]) for q in json.loads(body)["pods"]] == [
                (f"{POOL}-stt-0", True)], body
            up = prometheus.query("up")
            assert up.get(f"{POOL}-stt-0") == 1 and up.get(routers[0]["metadata"]["name"]) == 1, up
            status = pool_status()
            assert condition(status, "MetricsAvailable").get("status") == "True", status.get("conditions")
            assert status.get("activeSessions") == 0, status
            return ip
        router_ip = eventually(idle_pool, 300, 1, "pool idle at minReplicas: pod 0 and router Ready and "
                                                  "scraped, the operator measuring")
        router_url = f"ws://{router_ip}:8080"
        assert sts_replicas() == 1
        idle = next_decisions(2, 10 * PERIOD)
        assert all(d["replicas"] == 1 and d["action"] == "hold" for d in idle), idle

        def router_pods() -> dict[str, dict]:
            code, body = http_get(f"http://{router_ip}:8080/status")
            assert code == 200, code
            return {q["name"]: q for q in json.loads(body)["pods"]}

        # ---- 1. the burst: one session fills pod 0, the next one must wait in the router's queue.
        first = SessionThread(router_url, "first", [burst_audio])
        sessions.append(first)
        eventually(lambda: router_pods()[f"{POOL}-stt-0"]["router_sessions"] == 1, 30, 0.2,
                   "first session placed on pod 0")
        second = SessionThread(router_url, "held", held_audio, hold=release, max_hold_frames=int(240 / FRAME_SECONDS))
        sessions.append(second)
        eventually(lambda: sts_replicas() == 2, 120, 0.5, "the operator raises replicas above minReplicas")

        def scaled_up_for_load() -> bool:
            up = [d for d in decisions.values() if "scale-up" in d["action"]]
            # (the decision may fall between two polls; the status keeps its reason, written just
            # after the StatefulSet's replicas)
            assert up or "scale up 1 -> 2" in (pool_status().get("lastScaleReason") or ""), decisions
            return True
        eventually(scaled_up_for_load, 30, 0.5, "the scale-up recorded in the pool's status")

        # ---- 2. the new pod is capacity only once warm.
        samples: list[tuple[dict | None, int]] = []  # (the router's view of pod 1, then pod 1's own /readyz)

        def placed_on_pod_1() -> bool:
            last_decision()
            view = router_pods().get(f"{POOL}-stt-1")
            pod1 = stt_pod(1)
            ip = (pod1 or {}).get("status", {}).get("podIP")
            code = http_get(f"http://{ip}:8765/readyz", 1)[0] if ip else 0
            samples.append((view, code))
            return bool(view and view["router_sessions"] == 1)
        eventually(placed_on_pod_1, 150, 0.3, "the queued session placed on pod 1 once it is warm")
        assert second.record.queued >= 1, second.record  # no slot anywhere until pod 1 was warm
        # The router placed nothing on pod 1 before it was warm (its view first, then /readyz:
        # a pod that had a session then must answer 200 after), and it saw pod 1 not ready first.
        assert all(code == 200 for view, code in samples if view and view["router_sessions"]), samples
        assert any(view is None or not view["ready"] for view, _ in samples), samples
        pod1 = stt_pod(1)
        history = kubelet.ready_history[pod1["metadata"]["uid"]]
        first_true = next(i for i, (ready, _) in enumerate(history) if ready)
        assert history[first_true][1][-1] == 200  # Ready came from a passing /readyz of the real process

        record = first.join(120)
        assert_complete(record, burst)
        assert not second.done()
        # The operator measures the burst: both sessions, and the arrivals of the last minute.
        [busy] = next_decisions(1, 10 * PERIOD)
        assert busy["inputs"]["replicas"] == 2 and busy["inputs"]["arrivalRate"] > 0, busy

        # ---- 3. Prometheus stops: the size is frozen (fail static), said in status and one event.
        prometheus.stop()

        def frozen() -> dict:
            status = pool_status()
            cond = condition(status, "MetricsAvailable")
            assert cond.get("status") == "False" and cond.get("reason") == "PrometheusUnreachable", cond
            return status
        status = eventually(frozen, 10 * PERIOD, 0.5, "MetricsAvailable=False")
        assert "fail static" in condition(status, "MetricsAvailable")["message"]

        def still_two(d: dict) -> None:
            assert d["action"] == "fail-static" and d["replicas"] == 2, d
            assert sts_replicas() == 2
            assert DRAINING not in (stt_pod(1)["metadata"].get("annotations") or {})
        next_decisions(3, 15 * PERIOD, still_two)
        warnings = eventually(lambda: events("PrometheusUnreachable"), 10, 0.5, "the warning event")
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning", warnings  # once per outage

        prometheus.start()  # same port and TSDB: autoscaling resumes
        eventually(lambda: condition(pool_status(), "MetricsAvailable").get("status") == "True", 30 * PERIOD, 0.5,
                   "MetricsAvailable=True again")
        eventually(lambda: events("MetricsAvailable"), 10, 0.5, "the event saying metrics are back")

        # ---- 4. the burst is over: pod 1 is marked draining while its session still runs...
        def marked() -> bool:
            last_decision()
            pod = stt_pod(1)
            return pod is not None and (pod["metadata"].get("annotations") or {}).get(DRAINING) == "true"
        eventually(marked, 180, 0.5, "the drain mark on the highest ordinal")
        assert not second.done(), second.record  # the session on pod 1 was not ended for the drain
        assert sts_replicas() == 2
        eventually(lambda: router_pods()[f"{POOL}-stt-1"]["draining"], 30, 0.5, "the router honours the mark")

        # ... and stays while that session runs,
        def pinned(d: dict) -> None:
            assert "remove" not in d["action"] and d["replicas"] == 2, d
            assert sts_replicas() == 2 and stt_pod(1) is not None and not second.done()
        next_decisions(2, 15 * PERIOD, pinned)

        # ... which ends complete; then pod 1 goes, and the pool is back at minReplicas.
        release.set()
        record = second.join(120)
        assert_complete(record, held)
        assert record.held_frames < int(240 / FRAME_SECONDS), record  # released, not timed out

        def scaled_down() -> bool:
            last_decision()
            assert sts_replicas() == 1
            assert stt_pod(1) is None
            return True
        eventually(scaled_down, 30 * PERIOD, 0.5, "replicas back to minReplicas, pod 1 removed")
        exit_ = eventually(lambda: kubelet.exit_of(ns, f"{POOL}-stt-1"), 60, 0.5, "pod 1's process exited")
        assert exit_.terminated_by_kubelet and not exit_.killed and exit_.returncode == 0, exit_
        removal = [d for d in decisions.values() if "remove" in d["action"]]
        reason = (removal[0]["reason"] if removal else pool_status().get("lastScaleReason")) or ""
        assert "pod 1 (sessions ended)" in reason, (reason, decisions)
        assert not events("SessionsCut")
        log = next(kubelet.logs.glob(f"{ns}_{POOL}-stt-1_*.log")).read_text(errors="replace")
        assert "drain requested: refusing new sessions, 0 active" in log, log[-2000:]
        assert stt_pod(0) is not None and pod_ready(stt_pod(0))
    finally:
        release.set()
        for s in sessions:
            s.wait(30)
        prometheus.stop()
        targets.stop()
        cluster.kubectl("delete", "sttpool", POOL, "-n", ns, "--wait=false", check=False)
