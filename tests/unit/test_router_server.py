"""The router's readiness: its own health (serving, not draining, a pod it can place on, or just started), not one
round of pod polls; and the event-loop lag gauge. A real RouterServer on 127.0.0.1:0 with a /status stand-in."""

from __future__ import annotations

import asyncio
import http
import time

from stt_router.metrics import RouterMetrics, watch_event_loop_lag
from stt_router.server import RouterServer
from stt_router.settings import RouterSettings
from tests.unit.test_router_pool import status_server


def readyz(router: RouterServer) -> tuple[int, str]:
    """What /readyz answers, through the same code path as HTTP."""
    response = router._process_request(None, _Request("/readyz"))
    return response.status_code, response.body.decode()


class _Request:
    def __init__(self, path: str):
        from websockets.datastructures import Headers

        self.path = path
        self.method = "GET"
        self.headers = Headers()


async def make_router(port: int, **kwargs) -> RouterServer:
    settings = RouterSettings(host="127.0.0.1", port=0, pods=f"ws://127.0.0.1:{port}", anonymous=True,
                              status_interval_seconds=3600, status_timeout_seconds=0.05, **kwargs)
    router = RouterServer(settings)
    await router.start()
    router.pool.stop()  # the test polls by hand: no background round in between
    await asyncio.wait_for(router._tasks[0], 5)
    return router


async def test_one_slow_poll_round_does_not_make_the_router_unready():
    mode = {"answer": "ok"}
    server, port = await status_server({"ready": True, "capacity": 2, "active_sessions": 0}, mode)
    async with server:
        router = await make_router(port, startup_grace_seconds=0, status_failure_threshold=3)
        try:
            assert readyz(router) == (http.HTTPStatus.OK, "ready\n")
            mode["answer"] = "hang"  # every poll times out, as when the router's own loop is seconds behind
            for _ in range(2):
                await router.pool.poll_all()
                assert readyz(router)[0] == http.HTTPStatus.OK
            await router.pool.poll_all()  # the third failure in a row: the pod is unreachable now
            assert readyz(router) == (http.HTTPStatus.SERVICE_UNAVAILABLE, "not ready: no ready pod\n")
            mode["answer"] = "ok"
            await router.pool.poll_all()
            assert readyz(router)[0] == http.HTTPStatus.OK
        finally:
            await router.stop()


async def test_a_router_that_just_started_is_ready_before_its_pods():
    server, port = await status_server({"ready": False, "capacity": 2, "active_sessions": 0})  # still warming
    async with server:
        router = await make_router(port, startup_grace_seconds=3600)
        try:
            assert router.pool.ready_pods == 0
            assert readyz(router)[0] == http.HTTPStatus.OK  # sessions queue until a pod is ready
            router._started = time.monotonic() - 3601  # the grace is over
            assert readyz(router) == (http.HTTPStatus.SERVICE_UNAVAILABLE, "not ready: no ready pod\n")
        finally:
            await router.stop()


async def test_draining_and_stopped_routers_are_not_ready():
    server, port = await status_server({"ready": True, "capacity": 2, "active_sessions": 0})
    async with server:
        router = await make_router(port)
        router.draining = True
        assert readyz(router) == (http.HTTPStatus.SERVICE_UNAVAILABLE, "not ready: draining\n")
        await router.stop()
    router = RouterServer(RouterSettings(pods="ws://127.0.0.1:1", anonymous=True))
    assert router.not_ready_reason() == "not serving"  # never started


async def test_status_says_which_worker_answered():
    server, port = await status_server({"ready": True, "capacity": 2, "active_sessions": 0})
    async with server:
        router = await make_router(port)
        try:
            status = router.status()
            assert status["worker"] == 0 and status["ready"] and status["pods"][0]["reachable"]
        finally:
            await router.stop()


async def test_event_loop_lag_gauge_shows_a_blocked_loop():
    metrics = RouterMetrics()
    task = asyncio.create_task(watch_event_loop_lag(metrics.event_loop_lag, interval=0.01, window=1000))
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # the loop is stuck; the monitor's 10 ms sleep ends at least 190 ms late
        for _ in range(200):
            if metrics.event_loop_lag._value.get() >= 0.15:
                break
            await asyncio.sleep(0.01)
        assert metrics.event_loop_lag._value.get() >= 0.15
        assert b"voxfleet_router_event_loop_lag_seconds" in metrics.render()
    finally:
        task.cancel()
