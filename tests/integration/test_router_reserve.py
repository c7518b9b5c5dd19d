"""Reserved capacity through a real router and a real pod (issue #18): `--reserve high=0.5` on a pod of 4 slots.

Best-effort (a `low` key) fills the slots that are not reserved and then queues; a `high` key's
session still gets `ready` at once, and when the high sessions leave their slots go back to the
reserve, not to the queued best effort. No assertion is on timing; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from stt_router.apikeys import hash_key
from tests.integration import test_router
from tests.integration.test_router import hold, metric, release, status, until
from tests.integration.wire import start

pytestmark = pytest.mark.integration
router_factory = test_router.router_factory  # the same fixture: routers on loopback, stopped after the test

HIGH = {"Authorization": "Bearer acme-key"}
LOW = {"Authorization": "Bearer trial-key"}


async def queued(url: str, headers: dict):
    """A session that has to wait: its first message says `queued`."""
    ws = await connect(url, max_size=None, additional_headers=headers)
    await ws.send(start())
    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert msg["type"] == "queued", msg
    return ws


async def still_waiting(ws, router, polls: int = 8) -> None:
    """The router polled its pod `polls` more times and `ws` got nothing: it still waits."""
    before = metric(router, "voxfleet_router_queue_wait_seconds_count")
    for _ in range(polls):  # --status-interval-seconds 0.25: each pass covers one poll
        try:
            raw = await asyncio.wait_for(ws.recv(), 0.25)
        except asyncio.TimeoutError:
            continue
        pytest.fail(f"a queued best-effort session was told {raw}")
    assert metric(router, "voxfleet_router_queue_wait_seconds_count") == before
    assert status(router)["queued"] == 1


async def test_a_high_key_gets_a_reserved_slot_while_best_effort_queues(pod_factory, router_factory, tmp_path):
    pod = pod_factory("--max-sessions", "4", "--pod-id", "reserve-pod")
    keys = tmp_path / "keys"
    keys.write_text(f"acme {hash_key('acme-key')} 4 high\ntrial {hash_key('trial-key')} 8 low\n")
    router = router_factory([pod], "--api-keys", str(keys), "--reserve", "high=0.5",
                            "--max-queue-wait-seconds", "120")
    await until(lambda: status(router)["reserve"] == {"high": {"slots": 2, "in_use": 0}}, 30, "2 slots reserved")

    low = [await hold(router.url, LOW) for _ in range(2)]  # every slot that is not reserved
    waiting = await queued(router.url, LOW)  # 2 slots free, both high's: best effort waits
    assert status(router)["free_slots"] == 2
    high = []
    try:
        # The key client jumps the queue: `ready` at once, twice (its whole reserve).
        high = [await hold(router.url, HIGH, priority="high") for _ in range(2)]
        assert status(router)["reserve"] == {"high": {"slots": 2, "in_use": 2}}
        assert metric(router, "voxfleet_router_reserved_slots", priority="high") == 2
        assert metric(router, "voxfleet_router_reserved_slots_in_use", priority="high") == 2

        # High sessions leave: their slots go back to the reserve, the queued best effort keeps waiting.
        for ws in high:
            await release(ws)
        high = []
        await until(lambda: status(pod)["active_sessions"] == 2, 30, "the high sessions gone from the pod")
        await until(lambda: status(router)["free_slots"] == 2, 30, "the router seeing 2 free slots")
        assert status(router)["reserve"] == {"high": {"slots": 2, "in_use": 0}}
        await still_waiting(waiting, router)

        # A high session again gets a slot at once, with best effort still waiting.
        again = await hold(router.url, HIGH, priority="high")
        await release(again)

        # A best-effort slot comes free: the queued session takes it.
        await release(low.pop())
        msg = json.loads(await asyncio.wait_for(waiting.recv(), 30))
        assert msg["type"] == "ready", msg
        low.append(waiting)
        waiting = None
    finally:
        for ws in [*high, *low, *([waiting] if waiting is not None else [])]:
            try:
                await release(ws)
            except Exception:
                pass
    await until(lambda: status(pod)["active_sessions"] == 0, 30, "an idle pod")
    assert metric(router, "voxfleet_router_reserved_slots_in_use", priority="high") == 0
