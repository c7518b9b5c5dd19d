"""The operator's Prometheus reader with a real Prometheus scraping real pods, on loopback.

Prometheus (the Debian package's binary: scripts/install-prometheus.sh) runs
here with its own config, a temporary TSDB and a free loopback port; it
scrapes two real pods every second, labelled as kubernetes_sd would label
them (namespace, pod = `<pool>-stt-<ordinal>`). Real sessions with real
speech at real-time pace fill the pods; the reader must see them, the policy
must ask for a pod when free slots fall below the buffer, and once
Prometheus is stopped the reader gives None and the policy holds the size.

Two pods of 2 slots and short speech: the box has 2 cores. No assertion is
on timing; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from stt_operator import prometheus as prom
from tests.integration.conftest import PodProcess, free_port, start_pod
from tests.speech import SENTENCES, conversation
from voxfleet.autoscale import PoolPolicy, decide
from voxfleet.cli import wait_ready
from voxfleet.client import transcribe

pytestmark = pytest.mark.integration

POOL, NAMESPACE = "itest", "speech"


class PrometheusProcess:
    def __init__(self, binary: str, workdir: Path, pods: list[PodProcess]):
        self.port = free_port()
        self.workdir = workdir
        groups = "".join(
            f"      - targets: ['127.0.0.1:{p.port}']\n"
            f"        labels: {{namespace: '{NAMESPACE}', pod: '{POOL}-stt-{i}'}}\n" for i, p in enumerate(pods))
        config = workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          "scrape_configs:\n  - job_name: stt-pods\n    static_configs:\n" + groups)
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdout=out, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        try:
            wait_ready(f"{self.url}/-/ready", timeout, self.process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"Prometheus not ready ({exc}):\n{self.log.read_text(errors='replace')[-3000:]}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: run scripts/install-prometheus.sh")
    return binary


def up_targets(url: str) -> int:
    with urllib.request.urlopen(f"{url}/api/v1/query?query=sum(up%7Bjob%3D%22stt-pods%22%7D)", timeout=2) as r:
        result = json.loads(r.read())["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def test_reader_sees_real_sessions_and_the_policy_scales_up_then_holds_without_prometheus(
        tmp_path, prometheus_binary):
    env = {"VOXFLEET_POD_CPU_THREADS": "1"}
    pods = [start_pod(tmp_path, "--max-sessions", "2", env=env) for _ in range(2)]
    server = PrometheusProcess(prometheus_binary, tmp_path, pods)
    try:
        server.wait_ready()
        for _ in range(150):  # both pods scraped
            if up_targets(server.url) == 2:
                break
            time.sleep(0.2)
        assert up_targets(server.url) == 2, server.log.read_text(errors="replace")[-3000:]

        client = prom.PrometheusClient(server.url)
        queries = prom.queries_for(POOL, NAMESPACE)
        policy = PoolPolicy(min_replicas=1, max_replicas=4, sessions_per_pod=2, buffer=2)

        idle = prom.read(client, queries, time.time(), replicas=2, routers=False)
        assert idle.reachable and idle.observations.active_sessions == 0, idle.errors
        assert idle.observations.free_slots == 4 and idle.observations.ready_replicas == 2

        audio = conversation(SENTENCES[:3])
        seen: list[prom.Reading] = []

        async def session(url: str) -> list[str]:
            return [r.text async for r in transcribe(url, audio, realtime=True) if r.final]

        async def burst() -> list[list[str]]:
            # 3 sessions over 4 slots: 2 on pod 0, 1 on pod 1.
            tasks = [asyncio.create_task(session(u)) for u in (pods[0].url, pods[0].url, pods[1].url)]
            for _ in range(120):  # bounded: until Prometheus has scraped all three
                reading = await prom.read_async(client, queries, time.time(), replicas=2, routers=False)
                seen.append(reading)
                if reading.observations.active_sessions == 3 or all(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.5)
            return await asyncio.gather(*tasks)

        texts = asyncio.run(burst())
        assert all(texts), texts  # every session was served to its end

        busy = seen[-1]
        obs = busy.observations
        assert obs.active_sessions == 3, [(r.observations, r.errors) for r in seen[-3:]]
        assert obs.capacity_per_pod == 2
        assert obs.ready_replicas == 2
        assert obs.free_slots == 1
        assert obs.queue_length == 0
        assert obs.pod_sessions == {0: 2, 1: 1}
        decision = decide(obs, policy)
        assert decision.metrics_available
        assert "scale-up" in decision.actions and decision.replicas > 2, decision.reason

        server.stop()
        down = prom.read(client, queries, time.time(), replicas=2, routers=False)
        assert not down.reachable and "cannot reach Prometheus" in down.errors[0]
        o = down.observations
        assert (o.ready_replicas, o.active_sessions, o.free_slots, o.queue_length) == (None, None, None, None)
        held = decide(o, policy, decision.state)
        assert held.replicas == 2 and not held.metrics_available and held.action == "fail-static"
    finally:
        server.stop()
        for p in pods:
            p.stop(30)
