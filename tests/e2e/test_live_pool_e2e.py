"""An SttPool whose pods are real processes (tests/e2e/kubelet.py): the STT pods load
the model and turn Ready only when their own /readyz says so, the router pod finds
them by watching Pods (with its ServiceAccount's token: its RBAC is real), a client
transcribes real speech through the router pod's IP; with the operator's drain mark
on pod 0 the next session lands on pod 1, and a scale-down during that session drains
pod 1's process: the session ends complete, the process exits 0, then its Pod goes.

Kept small: two STT pods of one CPU thread each (the machine has 2 cores, shared)."""

from __future__ import annotations

import asyncio
import ipaddress
import json

from tests.e2e.cluster import eventually, http_get, pod_ready
from tests.e2e.kubelet import LOOPBACK_NET
from tests.speech import SENTENCES, conversation, require_tools, wer
from voxfleet.client import transcript

POOL = "live"
STT_SELECTOR = f"app.kubernetes.io/instance={POOL},app.kubernetes.io/component=stt-pod"
ROUTER_SELECTOR = f"app.kubernetes.io/instance={POOL},app.kubernetes.io/component=router"


def pods(cluster, namespace: str, selector: str) -> list[dict]:
    return cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]


def test_live_pool_serves_speech_and_drains_on_scale_down(cluster, operator_process, kubelet, live_namespace):
    require_tools()
    ns = live_namespace
    audio = conversation(SENTENCES[2:4])
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "voxfleet.io/v1alpha1", "kind": "SttPool",
        "metadata": {"name": POOL, "namespace": ns},
        "spec": {"image": "voxfleet:e2e", "minReplicas": 2, "maxReplicas": 2, "sessionsPerPod": 2, "buffer": 0,
                 "autoscaling": {"mode": "external"}, "drainTimeoutSeconds": 20,
                 "model": {"name": "tiny.en", "device": "cpu"},
                 "resources": {"cpu": "100m", "memory": "1Gi"},
                 "podSettings": {"cpuThreads": 1}, "router": {"replicas": 1}},
    }))

    # The STT pods: real processes on their pod IPs, Ready only once their /readyz answered 200.
    def stt_ready():
        items = pods(cluster, ns, STT_SELECTOR)
        assert len(items) == 2 and all(pod_ready(p) for p in items), [
            (p["metadata"]["name"], p["status"].get("podIP"), [c["status"] for c in p["status"].get("conditions", [])
                                                            if c["type"] == "Ready"]) for p in items]
        return items
    stt = eventually(stt_ready, 300, interval=1, what="2 STT pods Ready (real processes)")
    assert sorted(p["metadata"]["name"] for p in stt) == [f"{POOL}-stt-0", f"{POOL}-stt-1"]
    for p in stt:
        ip = p["status"]["podIP"]
        assert ipaddress.ip_address(ip) in LOOPBACK_NET
        c = kubelet.container(ns, p["metadata"]["name"])
        assert c is not None and c.process.poll() is None and c.pod_ip == ip
        assert http_get(f"http://{ip}:8765/readyz")[0] == 200  # the real pod, on the pod's own address
        history = kubelet.ready_history[p["metadata"]["uid"]]
        # kwok left it not Ready; the first Ready=True came from a passing probe of the real process.
        first_true = next(i for i, (is_ready, _) in enumerate(history) if is_ready)
        assert history[first_true][1][-1] == 200

    # The router: a real process too, which found both pods by watching Pods.
    def router_ready():
        items = [p for p in pods(cluster, ns, ROUTER_SELECTOR) if not p["metadata"].get("deletionTimestamp")]
        assert len(items) == 1 and pod_ready(items[0]), [p["status"].get("conditions") for p in items]
        ip = items[0]["status"]["podIP"]
        code, body = http_get(f"http://{ip}:8080/status")
        assert code == 200
        status = json.loads(body)
        assert sorted((q["name"], q["ready"]) for q in status["pods"]) == [
            (f"{POOL}-stt-0", True), (f"{POOL}-stt-1", True)], status["pods"]
        return ip
    router_ip = eventually(router_ready, 120, interval=1, what="router pod Ready, both STT pods known and ready")
    assert ipaddress.ip_address(router_ip) in LOOPBACK_NET
    router = kubelet.container(ns, pods(cluster, ns, ROUTER_SELECTOR)[0]["metadata"]["name"])
    assert router is not None and router.process.poll() is None

    # Real speech through the router pod's IP.
    text = asyncio.run(asyncio.wait_for(transcript(f"ws://{router_ip}:8080", audio), 180))
    reference = " ".join(SENTENCES[2:4])
    assert wer(reference, text) <= 0.35, (reference, text)

    # The operator's drain mark on live-stt-0 (as its autoscaler sets it): the router, which
    # watches the Pods, places no new session there, so the next one lands on live-stt-1.
    def router_pods():
        code, body = http_get(f"http://{router_ip}:8080/status")
        assert code == 200
        return {q["name"]: q for q in json.loads(body)["pods"]}

    def mark(draining: bool):
        cluster.kubectl("annotate", "--overwrite", "pod", f"{POOL}-stt-0", "-n", ns,
                        "voxfleet.io/draining=true" if draining else "voxfleet.io/draining-")

    mark(True)
    eventually(lambda: router_pods()[f"{POOL}-stt-0"]["draining"], 30, what="router honours the drain mark")
    late_audio = conversation(SENTENCES[6:8])

    async def session_during_scale_down() -> str:
        session = asyncio.create_task(transcript(f"ws://{router_ip}:8080", late_audio, realtime=True))
        try:
            def on_stt_1():
                assert not session.done(), "the session ended before the scale-down"
                assert router_pods()[f"{POOL}-stt-1"]["router_sessions"] == 1
                return True
            await asyncio.to_thread(eventually, on_stt_1, 30, 0.2, "a session on live-stt-1")
            # Scale down (the prewarmed minimum too, or it would hold 2): the highest pod is
            # deleted while its session runs; it drains: the session goes on to its end.
            await asyncio.to_thread(cluster.kubectl, "patch", "sttpool", POOL, "-n", ns, "--type=merge",
                                    "-p", json.dumps({"spec": {"minReplicas": 1, "replicas": 1}}))
            return await asyncio.wait_for(session, 180)
        finally:
            session.cancel()

    late_text = asyncio.run(session_during_scale_down())
    late_reference = " ".join(SENTENCES[6:8])
    assert wer(late_reference, late_text) <= 0.35, (late_reference, late_text)

    def drained():
        exit_ = kubelet.exit_of(ns, f"{POOL}-stt-1")
        assert exit_ is not None, "no exit yet"
        return exit_
    exit_ = eventually(drained, 120, interval=1, what=f"{POOL}-stt-1 drained and exited")
    assert exit_.terminated_by_kubelet and not exit_.killed and exit_.returncode == 0, exit_
    log = next(kubelet.logs.glob(f"{ns}_{POOL}-stt-1_*.log")).read_text(errors="replace")
    assert "drain requested: refusing new sessions, 1 active" in log, log[-2000:]  # SIGTERM mid-session

    def one_left():
        names = [p["metadata"]["name"] for p in pods(cluster, ns, STT_SELECTOR)]
        assert names == [f"{POOL}-stt-0"], names
        code, body = http_get(f"http://{router_ip}:8080/status")
        assert [q["name"] for q in json.loads(body)["pods"]] == [f"{POOL}-stt-0"]
        return True
    eventually(one_left, 60, interval=1, what="one STT pod left, and the router knows")
    zero = kubelet.container(ns, f"{POOL}-stt-0")
    assert zero is not None and zero.process.poll() is None
    mark(False)
    eventually(lambda: router_pods()[f"{POOL}-stt-0"]["ready"], 30, what="drain mark removed: placeable again")
