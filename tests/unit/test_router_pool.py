"""The pool: discovery membership, /status polling over loopback HTTP, lost and refusing pods, failure threshold."""

from __future__ import annotations

import asyncio
import json

import pytest

from stt_router.discovery import Target
from stt_router.pool import Pool, get_json


async def status_server(status: dict, mode: dict | None = None):
    """A stand-in pod that answers GET /status with `status` (mutable); `mode["answer"]`: "ok", "error" (503) or
    "hang" (never answers: a poll that times out, as when the router itself is seconds behind)."""
    mode = mode if mode is not None else {"answer": "ok"}

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if mode["answer"] == "hang":
            await reader.read()  # until the poller gives up and closes
            writer.close()
            return
        if mode["answer"] == "error":
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
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
    for _ in range(3):  # the server is gone: unreachable after the third failed poll in a row
        assert pool.get("p-0").reachable
        await pool.poll_all()
    assert not pool.get("p-0").reachable


async def test_a_pod_is_unreachable_only_after_consecutive_failed_polls():
    mode = {"answer": "ok"}
    server, port = await status_server({"ready": True, "capacity": 2, "active_sessions": 0}, mode)
    pool = Pool("pack", 1.0, 0.05, failure_threshold=3)
    async with server:
        pool.set_targets([Target("p-0", f"ws://127.0.0.1:{port}", 0)])
        await pool.poll_all()
        pod = pool.get("p-0")
        assert pod.eligible
        for answer in ("hang", "error"):  # two failed rounds: timed out, then refused; it still takes sessions
            mode["answer"] = answer
            await pool.poll_all()
            assert pod.eligible and pool.choose() is pod and pool.ready_pods == 1
        assert pod.failed_polls == 2
        mode["answer"] = "ok"  # an answer resets the count
        await pool.poll_all()
        assert pod.failed_polls == 0
        mode["answer"] = "hang"
        for _ in range(2):
            await pool.poll_all()
            assert pod.eligible
        await pool.poll_all()  # the third in a row
        assert not pod.reachable and pool.choose() is None and pool.ready_pods == 0
        await pool.poll_all()  # and it stays so while polls fail
        assert not pod.reachable
        mode["answer"] = "ok"
        await pool.poll_all()
        assert pod.eligible


async def test_a_lost_connection_makes_a_pod_unreachable_at_once_whatever_the_threshold():
    server, port = await status_server({"ready": True, "capacity": 2, "active_sessions": 0})
    pool = Pool("pack", 1.0, 2.0, failure_threshold=5)
    async with server:
        pool.set_targets([Target("p-0", f"ws://127.0.0.1:{port}", 0)])
        await pool.poll_all()
        pool.lost("p-0")
        assert not pool.get("p-0").reachable and pool.choose() is None


async def test_a_threshold_of_one_is_the_old_behaviour():
    pool = Pool("pack", 1.0, 2.0, failure_threshold=1)
    pool.set_targets([Target("p-0", f"ws://127.0.0.1:{_closed_port()}", 0)])
    pool.get("p-0").report(ready=True, draining=False, capacity=1, active=0)
    await pool.poll_all()
    assert not pool.get("p-0").reachable


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
