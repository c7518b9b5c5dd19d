"""Bad input gets a clear error and close code, and disturbs nobody else.

Each case runs while a healthy real-time session streams on the same pod; at
the end that session must still have all its words, in order.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from tests.devset import assert_file_as_accurate_as_offline
from tests.integration.wire import collect, errors, finals_text, open_session, pcm16_frames, start
from tests.speech import SENTENCES, conversation, speak, words
from voxfleet import protocol as p
from voxfleet.client import transcribe
from voxfleet.protocol import CloseCode, ErrorCode

pytestmark = pytest.mark.integration


async def first_message_case(url: str, message) -> tuple[list[dict], int | None]:
    async with connect(url, max_size=None) as ws:
        await ws.send(message)
        return await collect(ws, 10)


async def mid_stream_case(url: str, bad) -> tuple[list[dict], int | None]:
    """Two sentences of good audio, then something bad: the good audio still gets its finals."""
    ws, _ = await open_session(url)
    for seq, frame in enumerate(pcm16_frames(speak(SENTENCES[0]))):
        await ws.send(p.pack_frame(seq, frame))
    await ws.send(bad)
    return await collect(ws, 60)


async def healthy(url: str):
    sentences = SENTENCES[20:22]
    path = conversation(sentences, "en-gb")
    results = [r async for r in transcribe(url, path, realtime=True)]
    return path, sentences, results


def assert_healthy(path, sentences, results):
    finals = [r for r in results if r.final]
    assert [r.segment_id for r in finals] == list(range(len(finals)))
    assert_file_as_accurate_as_offline(path, " ".join(sentences), " ".join(r.text for r in finals))


@pytest.fixture
def small_frames_pod(pod_factory):
    return pod_factory("--max-frame-bytes", "65536", "--max-sessions", "8", "--start-timeout-seconds", "2")


async def test_bad_first_messages_get_errors_and_close_codes(small_frames_pod):
    url = small_frames_pod.url
    healthy_task = asyncio.create_task(healthy(url))
    cases = [
        ("{not json", ErrorCode.BAD_JSON, CloseCode.INVALID_DATA),
        ("[1, 2, 3]", ErrorCode.BAD_JSON, CloseCode.INVALID_DATA),
        (json.dumps({"type": "sing"}), ErrorCode.UNKNOWN_MESSAGE, CloseCode.POLICY),
        (p.pack_frame(0, b"\x00\x00" * 160), ErrorCode.AUDIO_BEFORE_START, CloseCode.POLICY),
        (start(sample_rate=1000), ErrorCode.UNSUPPORTED_AUDIO, CloseCode.UNSUPPORTED),
        (start(encoding="mp3"), ErrorCode.UNSUPPORTED_AUDIO, CloseCode.UNSUPPORTED),
        (start(channels=0), ErrorCode.UNSUPPORTED_AUDIO, CloseCode.UNSUPPORTED),
        (start(language="fr"), ErrorCode.UNSUPPORTED_LANGUAGE, CloseCode.UNSUPPORTED),  # tiny.en is English-only
        (start(priority="urgent"), ErrorCode.BAD_MESSAGE, CloseCode.POLICY),
        (start(sample_rate="16000"), ErrorCode.BAD_MESSAGE, CloseCode.POLICY),
        (json.dumps({"type": "end"}), ErrorCode.BAD_MESSAGE, CloseCode.POLICY),
        (json.dumps({"type": "resume", "token": "forged.token"}), ErrorCode.INVALID_TOKEN, CloseCode.POLICY),
    ]
    for message, code, close in cases:
        messages, close_code = await first_message_case(url, message)
        assert errors(messages) == [code], (message, messages)
        assert close_code == close, (message, close_code)
    assert_healthy(*await healthy_task)


async def test_bad_input_mid_stream_still_flushes_accepted_audio(small_frames_pod):
    url = small_frames_pod.url
    healthy_task = asyncio.create_task(healthy(url))
    cases = [
        (p.pack_frame(10_000, b"\x00\x00\x00"), ErrorCode.BAD_FRAME, CloseCode.INVALID_DATA),  # odd byte count
        (b"\x00\x01", ErrorCode.BAD_FRAME, CloseCode.INVALID_DATA),  # no room for a sequence header
        ("{oops", ErrorCode.BAD_JSON, CloseCode.INVALID_DATA),
        (start(), ErrorCode.BAD_MESSAGE, CloseCode.POLICY),  # a second start
    ]
    for bad, code, close in cases:
        messages, close_code = await mid_stream_case(url, bad)
        assert errors(messages) == [code], (bad, messages)
        assert close_code == close
        assert_file_as_accurate_as_offline(speak(SENTENCES[0]), SENTENCES[0], finals_text(messages))  # none lost
        assert messages[-1]["type"] == "end"
    assert_healthy(*await healthy_task)


async def test_oversize_frame_closes_1009(small_frames_pod):
    url = small_frames_pod.url
    healthy_task = asyncio.create_task(healthy(url))
    ws, _ = await open_session(url)
    await ws.send(p.pack_frame(0, b"\x00" * 70_000))
    _, close_code = await collect(ws, 10)
    assert close_code == CloseCode.TOO_BIG
    assert_healthy(*await healthy_task)


async def test_flood_of_tiny_frames_and_text_does_not_disturb_others(small_frames_pod):
    url = small_frames_pod.url
    healthy_task = asyncio.create_task(healthy(url))
    ws, _ = await open_session(url)
    for seq in range(3000):  # 3000 frames of one sample each, as fast as the socket takes them
        await ws.send(p.pack_frame(seq, b"\x00\x00"))
    await ws.send(p.encode(p.END))
    messages, close_code = await collect(ws, 30)
    assert close_code == CloseCode.NORMAL and messages[-1]["type"] == "end"
    assert_healthy(*await healthy_task)


async def test_silent_client_times_out_at_start(small_frames_pod):
    async with connect(small_frames_pod.url) as ws:
        messages, close_code = await collect(ws, 10)
    assert errors(messages) == [ErrorCode.START_TIMEOUT] and close_code == CloseCode.POLICY


async def test_full_pod_refuses_with_1013(pod_factory):
    pod = pod_factory("--max-sessions", "1")
    ws, _ = await open_session(pod.url)
    messages, close_code = await first_message_case(pod.url, start())
    assert errors(messages) == [ErrorCode.FULL] and close_code == CloseCode.TRY_AGAIN_LATER
    await ws.close()


async def test_idle_session_is_flushed_and_closed(pod_factory):
    pod = pod_factory("--idle-timeout-seconds", "2")
    ws, _ = await open_session(pod.url)
    for seq, frame in enumerate(pcm16_frames(speak(SENTENCES[3]))):
        await ws.send(p.pack_frame(seq, frame))
    messages, close_code = await collect(ws, 60)  # then the client goes quiet
    assert errors(messages) == [ErrorCode.IDLE_TIMEOUT] and close_code == CloseCode.POLICY
    assert {"mountains", "summer"} <= set(words(finals_text(messages))), "audio before the silence was lost"


async def test_session_length_limit(pod_factory):
    pod = pod_factory("--max-session-seconds", "2")
    messages, close_code = await mid_stream_case(pod.url, p.pack_frame(10_000, b""))
    assert errors(messages) == [ErrorCode.SESSION_TOO_LONG] and close_code == CloseCode.POLICY
    assert finals_text(messages), "the first two seconds were not flushed"
