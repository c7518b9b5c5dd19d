"""OpenAI Realtime sessions through the router (issue #19): real pods, a real router with API keys, the official client.

The client is `AsyncOpenAI(api_key=KEY, websocket_base_url=ws://router/v1).realtime.connect(...)`,
as in tests/integration/test_realtime.py (whose helpers this reuses) but pointed at the router,
which checks the key, queues, places and relays. Loopback only; every wait is bounded, nothing is timed.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stt_router.apikeys import hash_key
from tests.devset import assert_as_accurate_as_offline
from tests.integration.conftest import ServerProcess, start_server
from tests.integration.test_realtime import (SERVER_VAD, Transcript, commit_and_settle, pcm24, receive_until_closed,
                                             session, silence, stream, transcription)
from tests.integration.test_router import hold, metric, release, status, until

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.integration

KEY = "acme-realtime-key"
WAIT = 120
"""Bound on any one exchange."""


@pytest.fixture
def keys(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"acme {hash_key(KEY)} 4 high\n")
    return path


@pytest.fixture
def router_factory(tmp_path, keys):
    started: list[ServerProcess] = []

    def make(pods: list[ServerProcess], *args: str) -> ServerProcess:
        router = start_server(tmp_path, "router", "--pods", ",".join(pod.url for pod in pods),
                              "--api-keys", str(keys), "--status-interval-seconds", "0.25", *args, ready_seconds=30)
        started.append(router)
        return router

    yield make
    for router in started:
        router.stop(10)


def sdk(router, key: str = KEY):
    return openai.AsyncOpenAI(api_key=key, base_url=f"{router.http}/v1", websocket_base_url=f"{router.url}/v1")


def realtime(router, key: str = KEY):
    return sdk(router, key).realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"})


async def transcribe_through(conn, seen: Transcript, name: str) -> None:
    """After the created event: configure, stream the clip, commit and wait for every transcript."""
    await conn.send({"type": "session.update", "session": transcription(SERVER_VAD)})
    updated = await asyncio.wait_for(conn.recv(), WAIT)
    assert updated.type == "session.updated", updated
    listener = asyncio.create_task(seen.listen(conn))
    try:
        await stream(conn, seen, pcm24(name) + silence(1.0))
        await commit_and_settle(conn, seen)
    finally:
        listener.cancel()


async def test_the_openai_client_transcribes_through_the_router(pod, router_factory):
    router = router_factory([pod])
    name = "en_mfa_acoustic_corpus"
    pod_sessions = metric(pod, "voxfleet_pod_sessions_total", protocol="realtime")
    seen = Transcript()
    async with realtime(router) as conn:
        created, updated, listener = await session(conn, seen, transcription(SERVER_VAD))
        try:
            assert created.type == "session.created" and created.session.type == "transcription"
            assert updated.type == "session.updated"
            assert metric(router, "voxfleet_router_sessions_active", protocol="realtime") == 1
            await stream(conn, seen, pcm24(name) + silence(1.0))
            await commit_and_settle(conn, seen)
        finally:
            listener.cancel()
    assert seen.deltas_while_sending > 0, "deltas are relayed as they come"
    assert_as_accurate_as_offline((name,), seen.text)
    assert metric(router, "voxfleet_router_sessions_total", protocol="realtime", kind="start") == 1
    assert metric(pod, "voxfleet_pod_sessions_total", protocol="realtime") == pod_sessions + 1
    await until(lambda: metric(router, "voxfleet_router_sessions_active", protocol="realtime") == 0,
                what="the session leaves the router")
    await until(lambda: status(router)["pods"][0]["router_sessions"] == 0, what="its slot freed")


async def test_the_beta_header_reaches_the_pod(pod, router_factory):
    router = router_factory([pod])
    async with sdk(router).beta.realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        created = await asyncio.wait_for(conn.recv(), WAIT)
    assert created.type == "transcription_session.created", created


async def test_a_missing_or_wrong_key_is_refused_before_any_pod_is_touched(pod, router_factory):
    router = router_factory([pod])
    pod_sessions = metric(pod, "voxfleet_pod_sessions_total", protocol="realtime")
    async with realtime(router, key="wrong-key") as conn:
        error = await asyncio.wait_for(conn.recv(), WAIT)
        assert error.type == "error" and error.error.code == "invalid_api_key", error
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(conn.recv(), WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    async with connect(f"{router.url}/v1/realtime?intent=transcription") as bare:  # no key at all
        messages = await receive_until_closed(bare)
    assert bare.close_code == 1008
    assert [(m["type"], m["error"]["code"]) for m in messages] == [("error", "missing_api_key")], messages
    assert metric(router, "voxfleet_router_refusals_total", reason="invalid_api_key") == 1
    assert metric(router, "voxfleet_router_refusals_total", reason="missing_api_key") == 1
    assert metric(router, "voxfleet_router_sessions_total", protocol="realtime") == 0
    assert metric(pod, "voxfleet_pod_sessions_total", protocol="realtime") == pod_sessions


async def test_a_client_waits_in_the_queue_silently_and_gets_its_session_when_a_slot_frees_past_the_limit_1013(pod_factory, router_factory):
    small = pod_factory("--max-sessions", "1", "--pod-id", "rt-queue")
    router = router_factory([small], "--max-queue", "1")
    name = "en_jfk_ask_not"
    first = await realtime(router).enter()
    try:
        assert (await asyncio.wait_for(first.recv(), WAIT)).type == "session.created"  # holds the only slot
        waiting = await realtime(router).enter()
        try:
            heard = asyncio.create_task(waiting.recv())
            await until(lambda: status(router)["queued"] == 1, what="the second client queued")
            assert not heard.done(), "a queued client gets no events"
            async with connect(f"{router.url}/v1/realtime?intent=transcription",
                               additional_headers={"Authorization": f"Bearer {KEY}"}) as third:  # no room to wait
                messages = await receive_until_closed(third)
            assert third.close_code == 1013 and third.close_reason == "queue_full"
            assert [(m["type"], m["error"]["type"], m["error"]["code"]) for m in messages] == \
                [("error", "server_error", "queue_full")], messages
            await first.close()  # its slot frees: the waiting client is placed
            created = await asyncio.wait_for(heard, WAIT)
            assert created.type == "session.created", created
            assert status(router)["queued"] == 0
            seen = Transcript()
            await transcribe_through(waiting, seen, name)
        finally:
            await waiting.close()
    finally:
        await first.close()
    assert_as_accurate_as_offline((name,), seen.text)
    assert metric(router, "voxfleet_router_sessions_total", protocol="realtime", kind="start") == 2


async def test_a_pod_that_is_full_before_any_audio_is_passed_over(pod_factory, router_factory):
    full = pod_factory("--max-sessions", "1", "--pod-id", "rt-full")
    free = pod_factory("--max-sessions", "1", "--pod-id", "rt-free")
    # Polls far apart: the router still sees `full` as free when a session is placed (pack: ordinal 0 first).
    router = router_factory([full, free], "--status-interval-seconds", "600")
    name = "en_arctic_a0009"
    holder = await hold(full.url)  # the full pod's one slot, taken behind the router's back
    try:
        assert status(full)["active_sessions"] == 1
        view = {v["url"]: v for v in status(router)["pods"]}
        assert view[full.url]["free_slots"] == 1, "the router's view of the full pod is not stale"
        refused_before = metric(full, "voxfleet_pod_refusals_total", reason="full")
        seen = Transcript()
        async with realtime(router) as conn:
            created = await asyncio.wait_for(conn.recv(), WAIT)
            assert created.type == "session.created", created  # the refusal never reached the client
            await transcribe_through(conn, seen, name)
    finally:
        await release(holder)
    assert metric(full, "voxfleet_pod_refusals_total", reason="full") == refused_before + 1
    assert metric(free, "voxfleet_pod_sessions_total", protocol="realtime") == 1
    assert metric(router, "voxfleet_router_placements_total", ordinal="1") == 1
    assert metric(router, "voxfleet_router_placements_total", ordinal="0") == 0
    assert_as_accurate_as_offline((name,), seen.text)


async def test_the_pods_close_reaches_the_client_and_a_bad_event_is_relayed_as_is(pod_factory, router_factory):
    small = pod_factory("--max-sessions", "1", "--idle-timeout-seconds", "2", "--pod-id", "rt-idle")
    router = router_factory([small])
    headers = {"Authorization": f"Bearer {KEY}"}
    async with connect(f"{router.url}/v1/realtime?intent=transcription", additional_headers=headers) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["type"] == "session.created"
        await ws.send("{not json")
        bad = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert bad["type"] == "error" and bad["error"]["code"] == "bad_json", bad
        messages = await receive_until_closed(ws)  # then nothing: the pod's idle timeout ends it
    assert ws.close_code == 1008 and ws.close_reason == "idle_timeout"
    assert messages[-1]["type"] == "error" and messages[-1]["error"]["code"] == "idle_timeout"
