"""The pool: discovery membership, /status polling over loopback HTTP, lost and refusing pods."""

from __future__ import annotations

import asyncio
import json

import pytest

from stt_router.discovery import Target
from stt_router.pool import Pool, get_json


async def status_server(status: dict):
    """A stand-in pod that answers GET /status with `status` (mutable)."""

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps(status).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_polls_fill_in_what_each_pod_says():
    status = {"ready": True, "draining": False, "capacity": 4, "active_sessions": 1}
    server, port = await status_server(status)
    changes = []
    pool = Pool("pack", 1.0, 2.0, on_change=lambda: changes.append(1))
    async with server:
        pool.set_targets([Target("p-0", f"ws://127.0.0.1:{port}", 0)])
        pod = pool.get("p-0")
        assert not pod.eligible  # nothing is placed on a pod before it answered
        await pool.poll_all()
        assert pod.eligible and pod.capacity == 4 and pod.free_slots == 3
        assert pool.choose() is pod
        status.update(draining=True, ready=False)
        await pool.poll_all()
        assert pool.choose() is None and pool.ready_pods == 0
    assert changes


async def test_unreachable_and_lost_pods_get_nothing():
    server, port = await status_server({"ready": True, "capacity": 2, "active_sessions": 0})
    pool = Pool("pack", 1.0, 2.0)
    async with server:
        pool.set_targets([Target("p-0", f"ws://127.0.0.1:{port}", 0)])
        await pool.poll_all()
        assert pool.choose() is not None
        pool.lost("p-0")
        assert pool.choose() is None
        await pool.poll_all()
        assert pool.choose() is not None
        pool.refused("p-0", draining=False)
        assert pool.choose() is None
    await pool.poll_all()  # the server is gone
    assert not pool.get("p-0").reachable


async def test_membership_follows_discovery():
    pool = Pool("pack", 1.0, 2.0)
    pool.set_targets([Target("p-0", "ws://127.0.0.1:1", 0), Target("p-1", "ws://127.0.0.1:2", 1)])
    pool.get("p-1").report(ready=True, draining=False, capacity=1, active=0)
    pool.set_targets([Target("p-1", "ws://127.0.0.1:3", 1, terminating=True)])
    assert list(pool.pods) == ["p-1"]
    pod = pool.get("p-1")
    assert pod.url == "ws://127.0.0.1:3" and not pod.reachable and pod.terminating


async def test_get_json_refuses_errors_and_non_objects():
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(ValueError):
            await get_json(f"http://127.0.0.1:{port}/status", 2.0)
    with pytest.raises(OSError):
        await get_json(f"http://127.0.0.1:{port}/status", 2.0)
