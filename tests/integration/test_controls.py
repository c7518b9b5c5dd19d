"""Live-session controls on the native protocol (flush, keepalive, configure, speech events), with real
pods, real speech and the real model, on loopback. No assertion is on timing; every wait is bounded."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.integration.conftest import start_server
from tests.integration.wire import collect, errors, finals_text, open_session, pcm16_frames, silence
from tests.speech import SENTENCES, speak, words
from voxfleet import protocol as p
from voxfleet.protocol import CloseCode, ErrorCode

pytestmark = pytest.mark.integration

WAIT = 60
"""Seconds any one reply may take (a loaded 2-core box decodes slowly)."""


async def send_audio(ws, frames: list[bytes], first_seq: int = 0) -> int:
    for i, frame in enumerate(frames):
        await ws.send(p.pack_frame(first_seq + i, frame))
    return first_seq + len(frames)


async def until(ws, kind: str, seen: list[dict]) -> dict:
    """Read (into `seen`) up to the first message of `kind`."""
    async with asyncio.timeout(WAIT):
        while True:
            message = json.loads(await ws.recv())
            seen.append(message)
            if message["type"] == kind:
                return message


def sentence_frames(*sentences: str) -> list[bytes]:
    return pcm16_frames(speak(" ".join(sentences)))


async def flush_mid_utterance(url: str) -> None:
    """Half a sentence, flush: a final and `flushed` naming it; the session goes on and hears the rest."""
    frames = sentence_frames(SENTENCES[0])
    half = len(frames) // 2
    ws, _ = await open_session(url)
    seq = await send_audio(ws, frames[:half])
    await ws.send(p.encode(p.FLUSH))
    seen: list[dict] = []
    flushed = await until(ws, "flushed", seen)
    finals = {m["segment_id"]: m for m in seen if m["type"] == "final"}
    assert flushed["segments"], f"the flush finalized nothing: {seen}"
    assert set(flushed["segments"]) <= set(finals), "flushed names a final it did not send first"
    assert not [m for m in seen if m["type"] in ("end", "error")]
    before = " ".join(m["text"] for m in finals.values())
    assert words(before), before
    seq = await send_audio(ws, frames[half:] + [silence(1.0)], seq)
    await ws.send(p.encode(p.END))
    rest, code = await collect(ws, WAIT)
    assert code == CloseCode.NORMAL and not errors(rest)
    later = [m for m in rest if m["type"] == "final"]
    assert later and later[0]["segment_id"] > max(flushed["segments"]), "nothing was heard after the flush"
    heard = set(words(before + " " + finals_text(rest)))
    spoken = set(words(SENTENCES[0]))
    assert len(heard & spoken) >= len(spoken) // 2, (before, finals_text(rest))


async def test_flush_mid_utterance_finalizes_it_and_the_session_goes_on(pod):
    await flush_mid_utterance(pod.url)


async def test_flush_with_nothing_open_says_so_at_once(pod):
    ws, _ = await open_session(pod.url)
    await send_audio(ws, [silence(0.5)])
    await ws.send(p.encode(p.FLUSH))
    seen: list[dict] = []
    assert (await until(ws, "flushed", seen))["segments"] == []
    await ws.send(p.encode(p.END))
    _, code = await collect(ws, WAIT)
    assert code == CloseCode.NORMAL


async def test_keepalive_holds_a_silent_session_past_the_idle_timeout(pod_factory):
    pod = pod_factory("--idle-timeout-seconds", "2", "--max-sessions", "4")
    # Without keepalives a silent session is closed for idleness: the timeout is short enough to matter.
    idle, _ = await open_session(pod.url)
    messages, code = await collect(idle, WAIT)
    assert errors(messages) == [ErrorCode.IDLE_TIMEOUT] and code == CloseCode.POLICY
    ws, _ = await open_session(pod.url)
    for _ in range(10):  # 5 s of silence on purpose: more than twice the idle timeout
        await ws.send(p.encode(p.KEEPALIVE))
        await asyncio.sleep(0.5)
    await send_audio(ws, sentence_frames(SENTENCES[1]) + [silence(1.0)])
    await ws.send(p.encode(p.END))
    messages, code = await collect(ws, WAIT)
    assert code == CloseCode.NORMAL and not errors(messages), messages
    assert words(finals_text(messages)), messages


async def test_configure_turns_partials_off_and_says_what_took_effect(pod):
    ws, _ = await open_session(pod.url)  # partials on by default
    await ws.send(p.encode({"type": "configure", "partials": False, "prompt": "Voxfleet", "final_silence_ms": 700}))
    seen: list[dict] = []
    configured = await until(ws, "configured", seen)
    assert configured == {"type": "configured", "partials": False, "prompt": "Voxfleet", "final_silence_ms": 700}
    await ws.send(p.encode({"type": "configure", "final_silence_ms": 500}))  # the others stay
    assert (await until(ws, "configured", seen))["partials"] is False
    frames = sentence_frames(SENTENCES[2], SENTENCES[3])
    for i in range(0, len(frames), 5):  # a little slower than a dump, so partials would come if they could
        await send_audio(ws, frames[i:i + 5], i)
        await asyncio.sleep(0.05)
    await send_audio(ws, [silence(1.0)], len(frames))
    await ws.send(p.encode(p.END))
    messages, code = await collect(ws, WAIT)
    assert code == CloseCode.NORMAL and words(finals_text(messages))
    assert not [m for m in seen + messages if m["type"] == "partial"], "a partial after partials were turned off"


@pytest.mark.parametrize("change", [{"final_silence_ms": 5}, {"partials": "no"}, {"prompt": "x" * 2001},
                                    {"language": "de"}])
async def test_a_bad_configure_is_a_bad_message(pod, change):
    ws, _ = await open_session(pod.url)
    await ws.send(p.encode({"type": "configure", **change}))
    messages, code = await collect(ws, WAIT)
    assert errors(messages) == [ErrorCode.BAD_MESSAGE] and code == CloseCode.POLICY


async def test_speech_events_come_in_order_around_speech(pod):
    ws, _ = await open_session(pod.url, options={"speech_events": True})
    await send_audio(ws, [silence(1.0)] + sentence_frames(SENTENCES[4]) + [silence(1.5)])
    await ws.send(p.encode(p.END))
    messages, code = await collect(ws, WAIT)
    assert code == CloseCode.NORMAL
    events = [m for m in messages if m["type"] in ("speech_started", "speech_stopped")]
    kinds = [m["type"] for m in events]
    assert kinds and kinds == ["speech_started", "speech_stopped"] * (len(kinds) // 2), kinds
    times = [m["at"] for m in events]
    assert times == sorted(times) and times[0] >= 0.5, times  # the first second was silence
    first_final = next(i for i, m in enumerate(messages) if m["type"] == "final")
    assert messages.index(events[1]) < first_final, "an utterance's final came before its speech_stopped"


async def test_no_speech_events_unless_asked(pod):
    ws, _ = await open_session(pod.url)
    await send_audio(ws, sentence_frames(SENTENCES[4]) + [silence(1.0)])
    await ws.send(p.encode(p.END))
    messages, _ = await collect(ws, WAIT)
    assert not [m for m in messages if m["type"].startswith("speech_")]


async def test_controls_before_start_are_refused(pod):
    from websockets.asyncio.client import connect

    async with connect(pod.url) as ws:
        await ws.send(p.encode(p.FLUSH))
        messages, code = await collect(ws, WAIT)
    assert errors(messages) == [ErrorCode.BAD_MESSAGE] and code == CloseCode.POLICY


async def test_flush_through_the_router(pod, tmp_path):
    router = start_server(tmp_path, "router", "--pods", pod.url, "--anonymous", "--status-interval-seconds", "0.25",
                          ready_seconds=30)
    try:
        await flush_mid_utterance(router.url)
    finally:
        router.stop(10)
