"""`voxfleet up --min-pods 1 --max-pods 2`'s scaler with real pods, a real router and real speech, on loopback.

A full pod makes the scaler start a second one; the router, which was told
both ports at start, places on it once it is warm; when the load is gone the
second pod drains and is removed. Pods have 2 slots and the policy's scale-down
windows are set to 0 so the test need not wait minutes. No timing
assertions; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import urllib.request

import pytest

from tests.integration.conftest import free_port
from tests.speech import SENTENCES, conversation
from voxfleet.client import transcribe
from voxfleet.up import LocalFleet

pytestmark = pytest.mark.integration


def pod_status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def test_up_scales_out_for_a_full_pod_and_back_in_when_idle():
    fleet = LocalFleet(port=free_port(), max_sessions=2, min_pods=1, max_pods=2, scale_interval=0.5,
                       env={**os.environ, "VOXFLEET_POD_CPU_THREADS": "1"})
    fleet.policy = dataclasses.replace(fleet.policy, buffer=1, scale_down_stabilization_seconds=0, idle_seconds=0)
    long_audio = conversation(SENTENCES[:5])
    short_audio = conversation(SENTENCES[:1])
    log: list[str] = []
    try:
        fleet.start()
        assert sorted(fleet.procs) == [0]

        async def session(audio) -> list[str]:
            return [r.text async for r in transcribe(fleet.url, audio, realtime=True) if r.final]

        async def scenario() -> tuple[list[list[str]], dict | None]:
            # Two sessions fill pod 0 (2 slots): free slots 0 < buffer 1.
            busy = [asyncio.create_task(session(long_audio)) for _ in range(2)]
            second = None
            for _ in range(240):  # bounded: until pod 1 is started and warm
                decision = await asyncio.to_thread(fleet.scale_step)
                log.append(f"{decision.action}: {decision.reason}")
                obs_ready = decision.inputs.get("readyReplicas")
                if 1 in fleet.procs and obs_ready == 2:
                    break
                if all(t.done() for t in busy):
                    break
                await asyncio.sleep(0.5)
            assert 1 in fleet.procs, log[-5:]
            if not all(t.done() for t in busy):
                # Pod 0 is full: the router must place a new session on pod 1.
                third = asyncio.create_task(session(short_audio))
                for _ in range(60):
                    second = pod_status(fleet.ports[1])
                    if second and second["active_sessions"] >= 1 or third.done():
                        break
                    await asyncio.sleep(0.25)
                busy.append(third)
            return await asyncio.gather(*busy), second

        texts, second = asyncio.run(scenario())
        assert all(texts), texts  # every session served to its end, none cut
        assert second is not None and second["active_sessions"] >= 1, (second, log[-5:])

        # Idle now: pod 1 drains (SIGTERM), exits once empty, and is removed.
        for _ in range(240):
            decision = fleet.scale_step()
            log.append(f"{decision.action}: {decision.reason}")
            if sorted(fleet.procs) == [0] and decision.replicas == 1:
                break
            time.sleep(0.5)
        assert sorted(fleet.procs) == [0] and fleet.replicas == 1, log[-8:]
        assert any("drain" in line for line in log), log
        assert fleet.failed() is None
    finally:
        fleet.stop()
