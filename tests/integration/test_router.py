"""The router with real pods, real router processes, the real client and real speech, on loopback.

Pods are kept few and small (2 pods, 2 slots each) and speech short: the box
has 2 cores. No assertion is on timing; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stt_router.apikeys import hash_key
from stt_router.frames import OP_TEXT, client_frame
from stt_router.tokens import Pin, RouterTokens, signer_for
from tests.integration.conftest import ServerProcess, free_port, start_server
from tests.integration.pod_http import http_get
from tests.integration.proxy import CuttingProxy
from tests.integration.test_robustness import (active_sessions, http_status, leave_behind_start, plain_request,
                                                upgrade_request)
from tests.integration.wire import collect, pcm16_frames, start
from tests.devset import assert_as_accurate_as_offline, clips
from tests.devset import wer as devset_wer
from tests.speech import SENTENCES, conversation, wer, words
from voxfleet import protocol as p
from voxfleet.cli import bundled_sample
from voxfleet.client import transcribe

pytestmark = pytest.mark.integration

WER_BOUND = 0.30
"""As for one pod (tests/integration/test_transcription.py): the bound catches lost or repeated sentences."""
FAILOVER_TEXT_MARGIN = 0.1
"""The pod a session moves to has its earlier text (the prompt) but not its earlier audio, so the first
utterance after the move is heard with less context than on the first pod: a word or two may differ."""


# --- router processes -------------------------------------------------------------


@pytest.fixture
def router_factory(tmp_path):
    started: list[ServerProcess] = []

    def make(pods: list[ServerProcess], *args: str) -> ServerProcess:
        router = start_server(tmp_path, "router", "--pods", ",".join(pod.url for pod in pods),
                              "--status-interval-seconds", "0.25", *args, ready_seconds=30)
        started.append(router)
        return router

    yield make
    for router in started:
        router.stop(10)


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    """Two pods with two slots each: what pack and the queue are tested on."""
    from tests.integration.conftest import start_pod

    folder = tmp_path_factory.mktemp("small-pool")
    pods = [start_pod(folder, "--max-sessions", "2", "--pod-id", f"pool-pod-{i}") for i in range(2)]
    yield pods
    for pod in pods:
        pod.stop(30)


# --- helpers ----------------------------------------------------------------------


def status(server) -> dict:
    code, body = http_get(f"{server.http}/status")
    assert code == 200, body
    return json.loads(body)


def metric(server, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    _, text = http_get(f"{server.http}/metrics")
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + " ") or line.startswith(name + "{")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


async def until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(0.1)


async def until_idle(pods, timeout: float = 30) -> None:
    await until(lambda: all(status(pod)["active_sessions"] == 0 for pod in pods), timeout, "idle pods")


async def hold(url: str, headers: dict | None = None, **fields):
    """A session that holds a slot: opened, no audio yet."""
    ws = await connect(url, max_size=None, additional_headers=headers)
    await ws.send(start(**fields))
    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert msg["type"] == "ready", msg
    return ws


async def release(ws) -> None:
    await ws.send(p.encode(p.END))
    await collect(ws, 30)


async def refused(url: str, first: str | bytes, headers: dict | None = None) -> tuple[list[dict], int | None]:
    async with connect(url, max_size=None, additional_headers=headers) as ws:
        await ws.send(first)
        return await collect(ws, 30)


def check_continuous(finals, sentences: list[str]) -> str:
    """One session's finals: ids 0..n-1, in time order without overlap, no sentence lost or said twice."""
    text = " ".join(r.text for r in finals)
    assert [r.segment_id for r in finals] == list(range(len(finals))), "segment ids repeated, skipped or out of order"
    assert all(a.end <= b.start + 0.3 for a, b in zip(finals, finals[1:])), [(r.start, r.end, r.text) for r in finals]
    script = " ".join(sentences)
    assert wer(script, text) <= WER_BOUND, text
    assert len(words(text)) <= len(words(script)) + 3, f"words repeated: {text}"
    return text


# --- placement and the queue ---------------------------------------------------------


async def test_pack_fills_the_first_pod_first_and_serves_health(small_pool, router_factory):
    a, b = small_pool
    router = router_factory(small_pool, "--anonymous")
    assert http_get(f"{router.http}/healthz")[0] == 200
    assert http_get(f"{router.http}/readyz")[0] == 200
    assert http_get(f"{router.http}/nothing")[0] == 404
    held = []
    try:
        for expected in [(1, 0), (2, 0), (2, 1)]:
            held.append(await hold(router.url))
            assert (status(a)["active_sessions"], status(b)["active_sessions"]) == expected
        assert [pod["router_sessions"] for pod in status(router)["pods"]] == [2, 1]
    finally:
        for ws in held:
            await release(ws)
    await until_idle(small_pool)
    assert metric(router, "voxfleet_router_placements_total", ordinal="0") == 2
    assert metric(router, "voxfleet_router_placements_total", ordinal="1") == 1
    for name in ("voxfleet_router_sessions_active", "voxfleet_router_sessions_queued", "voxfleet_router_queue_wait_seconds_bucket",
                 "voxfleet_router_relay_latency_seconds_bucket", "voxfleet_router_pods_ready"):
        assert f"\n{name}" in http_get(f"{router.http}/metrics")[1], name


async def test_full_pool_queues_by_priority_with_positions_then_times_out(small_pool, router_factory):
    router = router_factory(small_pool, "--anonymous", "--anonymous-priority", "high", "--max-queue", "3")
    holders = [await hold(router.url) for _ in range(4)]  # every slot of both pods
    waiting: dict[str, object] = {}
    events: asyncio.Queue = asyncio.Queue()

    async def watch(name: str, ws) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            await events.put((name, msg))
            if msg["type"] != "queued":
                return

    async def next_event():
        return await asyncio.wait_for(events.get(), 30)

    tasks = []
    try:
        for name in ("low", "normal", "high"):  # arrival order is the reverse of priority
            ws = await connect(router.url, max_size=None)
            await ws.send(start(priority=name))
            waiting[name] = ws
            tasks.append(asyncio.create_task(watch(name, ws)))
        told: dict[str, int] = {}
        while told != {"high": 1, "normal": 2, "low": 3}:
            name, msg = await next_event()
            assert msg["type"] == "queued", msg
            told[name] = msg["position"]
        assert metric(router, "voxfleet_router_sessions_queued") == 3

        # The queue is full: the next one is refused at once.
        messages, code = await refused(router.url, start())
        assert code == 1013 and messages[-1]["code"] == "queue_full", messages

        # A second replica with a short wait limit refuses after it.
        impatient = router_factory(small_pool, "--anonymous", "--max-queue-wait-seconds", "1")
        messages, code = await refused(impatient.url, start())
        assert [m["type"] for m in messages] == ["queued", "error"], messages
        assert messages[-1]["code"] == "queue_timeout" and code == 1013

        # Slots come free one by one: high, then normal, then low.
        served = []
        for holder in holders[:3]:
            await release(holder)
            while True:
                name, msg = await next_event()
                if msg["type"] == "ready":
                    served.append(name)
                    break
                assert msg["type"] == "queued"
        assert served == ["high", "normal", "low"]
    finally:
        for task in tasks:
            task.cancel()
        for ws in [*holders[3:], *waiting.values()]:
            try:
                await release(ws)
            except ConnectionClosed:
                pass
    await until_idle(small_pool)
    assert metric(router, "voxfleet_router_refusals_total", reason="queue_full") == 1


async def test_draining_pod_gets_no_new_sessions(pod_factory, router_factory):
    a = pod_factory("--max-sessions", "2", "--pod-id", "drain-a")
    b = pod_factory("--max-sessions", "2", "--pod-id", "drain-b")
    router = router_factory([a, b], "--anonymous")
    first = await hold(router.url)
    assert status(a)["active_sessions"] == 1
    a.process.send_signal(signal.SIGTERM)  # drains: keeps its session, takes no new one
    await until(lambda: not status(router)["pods"][0]["ready"], 30, "router sees the drain")
    second = await hold(router.url)
    assert status(b)["active_sessions"] == 1 and status(a)["active_sessions"] == 1
    await release(second)
    await release(first)
    assert a.process.wait(30) == 0


# --- failover and resume -------------------------------------------------------------


async def test_pod_killed_mid_session_moves_it_without_losing_or_repeating_words(pod_factory, router_factory):
    a = pod_factory("--max-sessions", "2", "--pod-id", "failover-a")
    b = pod_factory("--max-sessions", "2", "--pod-id", "failover-b")
    router = router_factory([a, b], "--anonymous")
    sentences = SENTENCES[12:15]
    finals = []
    killed = False
    async for result in transcribe(router.url, conversation(sentences), realtime=True, partials=True):
        if result.final:
            finals.append(result)
        elif finals and not killed:  # one sentence final, the next one under way: kill its pod
            assert status(a)["active_sessions"] == 1 and status(b)["active_sessions"] == 0
            a.process.kill()
            a.process.wait(10)
            killed = True
    assert killed
    check_continuous(finals, sentences)
    assert metric(router, "voxfleet_router_failovers_total", result="moved") == 1
    assert metric(router, "voxfleet_router_replayed_audio_seconds_total") > 0  # the sentence under way
    assert metric(b, "voxfleet_pod_sessions_total") == 1


async def test_a_failover_gives_the_words_an_uninterrupted_stream_gets(pod_factory, router_factory):
    a = pod_factory("--max-sessions", "2", "--pod-id", "same-a")
    b = pod_factory("--max-sessions", "2", "--pod-id", "same-b")
    router = router_factory([a, b], "--anonymous")
    [clip] = clips("en_mfa_acoustic_corpus")  # 27 s of spontaneous speech, several utterances
    uninterrupted = [r async for r in transcribe(router.url, clip.path, realtime=True) if r.final]
    finals = []
    async for result in transcribe(router.url, clip.path, realtime=True):
        finals.append(result)
        if len(finals) == 2:  # two utterances final, the third under way: kill the pod
            a.process.kill()
            a.process.wait(10)
    assert metric(router, "voxfleet_router_failovers_total", result="moved") == 1
    assert [r.segment_id for r in finals] == list(range(len(finals)))
    moved, straight = " ".join(r.text for r in finals), " ".join(r.text for r in uninterrupted)
    assert devset_wer(straight, moved) <= FAILOVER_TEXT_MARGIN, (straight, moved)
    assert_as_accurate_as_offline((clip.name,), moved)


async def test_resume_through_a_second_router_replica(pod, router_factory):
    secret = ["--token-secrets", f"test-{uuid.uuid4().hex}"]
    first = router_factory([pod], "--anonymous", *secret)
    second = router_factory([pod], "--anonymous", *secret)
    sentences = SENTENCES[15:18]
    finals = []
    async with CuttingProxy(first.port) as proxy:  # the client's one address, as an ingress would be
        async for result in transcribe(proxy.url, conversation(sentences), realtime=True, partials=True):
            if result.final:
                finals.append(result)
            elif finals and proxy.target_port == first.port:
                # mid-sentence, the first replica dies; the address now leads to the second
                proxy.target_port = second.port
                first.process.kill()
                first.process.wait(10)
                proxy.cut()
        assert proxy.connections == 2
    check_continuous(finals, sentences)
    assert metric(second, "voxfleet_router_sessions_total", kind="resume") == 1


async def test_forged_altered_and_expired_tokens_are_refused(pod, router_factory):
    secret = f"test-{uuid.uuid4().hex}"
    router = router_factory([pod], "--anonymous", "--token-secrets", secret)
    async with connect(router.url) as ws:  # a real token to alter
        await ws.send(start())
        token = json.loads(await ws.recv())["resume_token"]
        await ws.send(p.encode(p.END))
    resumes_before = metric(pod, "voxfleet_pod_resumes_total")
    pin = Pin("sid", pod.url, pod.url, "not-a-pod-token")
    body, mac = token.split(".")
    bad = {
        "garbage": "garbage",
        "altered": body[:-2] + ("AA" if not body.endswith("AA") else "BB") + "." + mac,
        "forged": RouterTokens(signer_for(["another-secret"]), 60).issue(pin),
        "expired": RouterTokens(signer_for([secret]), -5).issue(pin),
    }
    for name, bad_token in bad.items():
        messages, code = await refused(router.url, p.encode(p.resume_message(p.Resume(bad_token))))
        assert code == 1008 and [m["code"] for m in messages] == ["invalid_token"], (name, messages)
    assert "expired" in messages[0]["message"]
    assert metric(pod, "voxfleet_pod_resumes_total") == resumes_before
    # Signed by the router but naming no session the pod holds: the pod's refusal comes through.
    valid = RouterTokens(signer_for([secret]), 60).issue(pin)
    messages, code = await refused(router.url, p.encode(p.resume_message(p.Resume(valid))))
    assert code == 1008 and messages[0]["code"] in ("invalid_token", "unknown_session"), messages


# --- several worker processes on one port -------------------------------------------


def worker_statuses(server, want: int = 2, tries: int = 400) -> dict[int, dict]:
    """/status of each worker: every request is a new connection, which the kernel hands to any worker.

    A worker the parent started may still be loading when the parent is ready: keep asking a while."""
    seen: dict[int, dict] = {}
    for _ in range(tries):
        s = status(server)
        seen[s["worker"]] = s
        if len(seen) == want:
            break
        time.sleep(0.05)
    return seen


def holder(server) -> int | None:
    """The worker relaying the one session open (None: none holds it)."""
    held = [w for w, s in worker_statuses(server).items() if s["sessions"]]
    assert len(held) <= 1, held
    return held[0] if held else None


async def open_native(url: str, first: str) -> tuple[object, dict]:
    ws = await connect(url, max_size=None)
    await ws.send(first)
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 30))


async def test_two_workers_share_the_port_and_verify_each_others_tokens(pod, router_factory):
    router = router_factory([pod], "--anonymous", "--workers", "2")  # no --token-secrets: the parent makes one
    seen = worker_statuses(router)
    assert sorted(seen) == [0, 1], seen
    assert seen[0]["pid"] == router.process.pid != seen[1]["pid"]
    assert all(s["ready"] for s in seen.values())

    sample = bundled_sample()

    async def text() -> str:
        return " ".join([r.text async for r in transcribe(router.url, sample) if r.final])

    for result in await asyncio.gather(text(), text()):  # two clients at once through the one port
        assert "country" in result.lower(), result

    # A session, resumed (its client lost each time) until a resume lands on the worker that did not issue
    # the token it presents: that worker verified the other's signature and reached the pod session.
    ws, ready = await open_native(router.url, start())
    assert ready["type"] == "ready", ready
    await until(lambda: holder(router) is not None, 30, "a worker holds the session")
    issuer = holder(router)
    crossed = False
    for _ in range(30):
        ws.transport.abort()
        await until(lambda: holder(router) is None, 30, "the worker sees its client lost")
        resume = p.encode(p.resume_message(p.Resume(ready["resume_token"])))
        ws, ready = await open_native(router.url, resume)
        assert ready["type"] == "ready" and ready["resumed"], ready
        await until(lambda: holder(router) is not None, 30, "a worker holds the resumed session")
        now = holder(router)
        if now != issuer:
            crossed = True
            break
        issuer = now
    assert crossed, "every resume landed on the worker that issued the token"
    await release(ws)
    await until_idle([pod])

    worker_pid = seen[1]["pid"]
    assert router.stop() == 0, router.log_text()  # SIGTERM to the parent drains both
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


async def test_a_client_gone_right_after_start_frees_its_slot_in_the_router_and_the_pod(pod_factory, router_factory):
    pod = pod_factory("--max-sessions", "2", "--resume-grace-seconds", "1")
    router = router_factory([pod], "--anonymous", "--max-queue-wait-seconds", "5")
    for how in ("close", "fin", "reset"):
        for _ in range(2):  # as many as the pod has slots
            await leave_behind_start(router.port, how)

    def counted() -> tuple[int, int]:
        [view] = json.loads(http_get(router.http + "/status")[1])["pods"]
        return view["router_sessions"], active_sessions(pod)

    for _ in range(300):  # a leaked leg lasted for ever; 30 s is a bound, not a timing
        if counted() == (0, 0):
            break
        await asyncio.sleep(0.1)
    assert counted() == (0, 0)
    # Placed, not refused with queue_timeout after 5 s: no ghost holds a slot. (It may queue for a status
    # poll or two: the router's view of the pod's free slots lags the pod by one poll.)
    async with connect(router.url, max_size=None) as ws:
        await ws.send(start())
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        while first["type"] == "queued":
            first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert first["type"] == "ready", first
        await release(ws)


async def test_repeated_headers_are_bad_requests_not_crashes(pod, router_factory):
    router = router_factory([pod], "--anonymous")
    for extra in (["Upgrade: websocket"], ["Authorization: Bearer a", "Authorization: Bearer b"]):
        assert await http_status(router.port, upgrade_request(router.port, *extra)) == 400, extra
    assert await http_status(router.port, plain_request(router.port, "POST", "/status")) == 405
    ws = await hold(router.url)  # and the router serves on
    await release(ws)


# --- access --------------------------------------------------------------------------


async def test_api_keys_are_checked_before_any_pod_is_touched(pod, router_factory, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"acme {hash_key('acme-key')} 1 high\n")
    router = router_factory([pod], "--api-keys", str(keys))
    sessions_before = metric(pod, "voxfleet_pod_sessions_total")
    messages, code = await refused(router.url, start())
    assert code == 1008 and [m["code"] for m in messages] == ["missing_api_key"], messages
    messages, code = await refused(router.url, start(), headers={"Authorization": "Bearer wrong-key"})
    assert code == 1008 and [m["code"] for m in messages] == ["invalid_api_key"], messages
    assert metric(pod, "voxfleet_pod_sessions_total") == sessions_before

    ws = await hold(router.url, headers={"Authorization": "Bearer acme-key"})
    messages, code = await refused(f"{router.url}/?api_key=acme-key", start())  # over its limit of 1
    assert code == 1008 and [m["code"] for m in messages] == ["key_limit"], messages
    await release(ws)
    sample = bundled_sample()
    text = " ".join([r.text async for r in transcribe(router.url, sample, headers={"X-API-Key": "acme-key"}) if r.final])
    assert "country" in text.lower(), text


async def test_a_resume_token_works_only_for_the_principal_that_opened_the_session(pod, router_factory, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"acme {hash_key('acme-key')} 4 normal\nbeta {hash_key('beta-key')} 4 normal\n")
    router = router_factory([pod], "--api-keys", str(keys), "--anonymous")
    principals = {"acme": {"Authorization": "Bearer acme-key"}, "beta": {"Authorization": "Bearer beta-key"},
                  "no key": None}

    async def open_(headers):
        ws = await connect(router.url, max_size=None, additional_headers=headers)
        await ws.send(start())
        ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert ready["type"] == "ready", ready
        return ws, ready["resume_token"]

    for owner, owner_headers in principals.items():
        ws, token = await open_(owner_headers)
        for other, headers in principals.items():
            if other == owner:
                continue
            messages, code = await refused(router.url, p.encode({"type": "resume", "token": token}), headers=headers)
            assert code == 1008 and [m["code"] for m in messages] == [p.ErrorCode.INVALID_TOKEN], (owner, other, messages)
        # the owner's session was not touched by any of those; the owner itself may take it over
        async with connect(router.url, max_size=None, additional_headers=owner_headers) as again:
            await again.send(p.encode({"type": "resume", "token": token}))
            ready = json.loads(await asyncio.wait_for(again.recv(), 30))
            assert ready["type"] == "ready" and ready["resumed"], (owner, ready)
            await release(again)
        await ws.wait_closed()


# --- both protocols, bad input ---------------------------------------------------------


async def test_bad_input_through_the_router_is_answered_as_the_pod_answers(pod, router_factory):
    router = router_factory([pod], "--anonymous")
    openings = [b"\x00\x00\x00\x01", "{not json", p.encode({"type": "hello"}), p.encode(p.END),
                start(sample_rate=4000), start(encoding="mu-law")]
    for first in openings:
        direct = await refused(pod.url, first)
        routed = await refused(router.url, first)
        assert [m.get("code") for m in routed[0]] == [m.get("code") for m in direct[0]], (first, direct, routed)
        assert routed[1] == direct[1], (first, direct, routed)

    frames = pcm16_frames(bundled_sample())[:20]
    for bad in (b"\x00\x01", p.pack_frame(len(frames), b"\x00\x00\x00"), start()):
        results = []
        for url in (pod.url, router.url):
            async with connect(url, max_size=None) as ws:
                await ws.send(start())
                assert json.loads(await ws.recv())["type"] == "ready"
                for seq, frame in enumerate(frames):
                    await ws.send(p.pack_frame(seq, frame))
                await ws.send(bad)
                messages, code = await collect(ws, 60)
            results.append(([m["code"] for m in messages if m["type"] == "error"],
                            [m["type"] for m in messages if m["type"] in ("error", "end")], code))
        assert results[1] == results[0], (bad, results)


async def test_frames_the_fast_path_does_not_take_are_answered_as_the_pod_answers(pod, router_factory):
    """Mid-session, once the router relays frames itself (router/stt_router/splice.py): a ping, an audio
    message in fragments, text that is not UTF-8, a message over the size limit. Through the router each
    ends the way it ends at the pod directly: the same messages, the same close code."""
    router = router_factory([pod], "--anonymous")
    frames = pcm16_frames(bundled_sample())[:20]

    async def fragmented(ws, seq: int) -> None:
        data = p.pack_frame(seq, frames[seq])
        await ws.send([data[:100], data[100:1000], data[1000:]])

    async def not_utf8(ws, seq: int) -> None:
        ws.transport.write(client_frame(OP_TEXT, b'{"type":"end"\xff}'))

    async def oversize(ws, seq: int) -> None:
        await ws.send(p.pack_frame(seq, b"\x00\x00" * (1 << 20)))

    async def ping(ws, seq: int) -> None:
        await asyncio.wait_for(await ws.ping(), 30)  # answered while the session goes on

    for disturb in (ping, fragmented, not_utf8, oversize):
        results = []
        for url in (pod.url, router.url):
            async with connect(url, max_size=None) as ws:
                await ws.send(start())
                assert json.loads(await ws.recv())["type"] == "ready"
                for seq in range(10):
                    await ws.send(p.pack_frame(seq, frames[seq]))
                await asyncio.sleep(0.3)  # the router has spliced both sides by now
                await disturb(ws, 10)
                try:
                    for seq in range(11, len(frames)):
                        await ws.send(p.pack_frame(seq, frames[seq]))
                    await ws.send(p.encode(p.END))
                except ConnectionClosed:
                    pass
                messages, code = await collect(ws, 60)
            results.append(([m["code"] for m in messages if m["type"] == "error"],
                            [m["type"] for m in messages if m["type"] in ("error", "end")], code))
        assert results[1] == results[0], (disturb.__name__, results)
        assert results[0][2] in ((1000,) if disturb in (ping, fragmented) else (1007, 1009)), results


def whisperlive_options(**extra) -> dict:
    return {"uid": str(uuid.uuid4()), "language": "en", "task": "transcribe", "model": "tiny.en", "use_vad": True,
            "send_last_n_segments": 10, **extra}


async def test_whisperlive_protocol_through_the_router(pod, router_factory):
    router = router_factory([pod], "--anonymous")
    sentence = SENTENCES[10]
    audio, rate = sf.read(str(conversation([sentence])), dtype="float32")
    opts = whisperlive_options()
    messages = []
    async with connect(router.url, max_size=None) as ws:
        await ws.send(json.dumps(opts))
        assert json.loads(await ws.recv()) == {"uid": opts["uid"], "message": "SERVER_READY", "backend": "faster_whisper"}
        for i in range(0, len(audio), 4096):
            await ws.send(audio[i : i + 4096].astype(np.float32).tobytes())
        await ws.send(b"END_OF_AUDIO")
        try:
            async with asyncio.timeout(60):
                async for raw in ws:
                    messages.append(json.loads(raw))
        except ConnectionClosed:
            pass
        assert ws.close_code == 1000
    assert messages[-1] == {"uid": opts["uid"], "message": "DISCONNECT"}
    segments = messages[-2]["segments"]
    text = " ".join(s["text"] for s in segments if s["completed"])
    assert wer(sentence, text) <= 0.5, text
    assert metric(router, "voxfleet_router_sessions_total", protocol="whisperlive") == 1


def test_real_whisperlive_client_through_the_router(pod, router_factory):
    stubs = Path(__file__).resolve().parents[1] / "whisperlive_stubs"
    sys.path.insert(0, str(stubs))
    try:
        wl = importlib.import_module("whisper_live.client")
    except ImportError as exc:
        pytest.skip(f"WhisperLive client not installed ({exc}): run scripts/install-whisperlive-client.sh")
    finally:
        sys.path.remove(str(stubs))
    router = router_factory([pod], "--anonymous")
    sentence = SENTENCES[11]
    audio, _ = sf.read(str(conversation([sentence])), dtype="float32")
    out: dict = {}

    def run() -> None:
        try:
            client = wl.StreamingTranscriptionClient("127.0.0.1", router.port, lang="en", model="tiny.en")
            client.connect()
            for i in range(0, len(audio), 4096):
                client.send(audio[i : i + 4096].tobytes(), pcm_format="float32")
                time.sleep(4096 / 16000 / 4)
            client.close(timeout=30)
            out["text"] = " ".join(s["text"] for s in client.transcript)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(90)
    assert not thread.is_alive(), "the WhisperLive client did not finish"
    if "error" in out:
        raise out["error"]
    assert wer(sentence, out["text"]) <= 0.5, out["text"]


# --- voxfleet up -----------------------------------------------------------------------


def test_voxfleet_up_transcribes_the_sample_and_stops_cleanly(tmp_path):
    port = free_port()
    log = open(tmp_path / "up.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "voxfleet", "up", "--port", str(port), "--pods", "2",
                                "--max-sessions", "2"], stdout=subprocess.PIPE, stderr=log, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        printed = []
        deadline = time.monotonic() + 180
        while not any(line.startswith("try:") for line in printed):
            assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "up.log").read_text()
            try:
                printed.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        assert f"ws://127.0.0.1:{port}" in printed[0], printed
        example = next(line for line in printed if line.startswith("try:")).split()[1:]
        assert example[:3] == ["voxfleet", "transcribe", f"ws://127.0.0.1:{port}"] and Path(example[3]).exists()
        pod_ports = [int(u.rsplit(":", 1)[1].rstrip(",)")) for u in printed[0].split() if u.startswith("ws://127.0.0.1:")][1:]
        assert len(pod_ports) == 2, printed

        done = subprocess.run([sys.executable, "-m", "voxfleet", *example[1:]], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert {"ask", "country"} <= set(words(done.stdout)), done.stdout
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(120)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()
    for p_ in [port, *pod_ports]:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p_)) != 0, f"port {p_} still open after up stopped"
