"""Sessions survive the network (resume) and pods leave gracefully (drain)."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from tests.devset import assert_as_accurate_as_offline, assert_file_as_accurate_as_offline, clips
from tests.devset import wer as devset_wer
from tests.integration.pod_http import http_get, metric
from tests.integration.proxy import CuttingProxy
from tests.integration.wire import collect, errors, finals_text, open_session, pcm16_frames
from tests.speech import SENTENCES, conversation, words
from voxfleet import protocol as p
from voxfleet.client import TranscriptionError, transcribe
from voxfleet.protocol import CloseCode, ErrorCode
from voxfleet.tokens import TokenSigner

pytestmark = pytest.mark.integration

SECRET = "integration-test-secret"
RESUME_CLIP = "en_mfa_acoustic_corpus"
"""27 s of spontaneous speech with pauses: cut twice in its first 7 s."""
SAME_TEXT_MARGIN = 0.05
"""A resumed session decodes the same windows as an uninterrupted one; only batching may differ."""


async def test_resume_after_connection_loss_loses_and_repeats_nothing(pod_factory):
    pod = pod_factory("--token-secret", SECRET)
    [clip] = clips(RESUME_CLIP)
    async with CuttingProxy(pod.port) as proxy:
        cutter = asyncio.create_task(proxy.cut_after(3.0, 4.0))
        results = [r async for r in transcribe(proxy.url, clip.path, realtime=True, backoff=0.1)]
        await cutter
        assert proxy.connections >= 3, "the connection was never cut"
    finals = [r for r in results if r.final]
    assert [r.segment_id for r in finals] == list(range(len(finals))), "a final was lost or repeated"
    assert all(a.end <= b.start + 0.3 for a, b in zip(finals, finals[1:]))
    resumed = " ".join(r.text for r in finals)
    assert_as_accurate_as_offline((RESUME_CLIP,), resumed)
    # The same audio without the cuts: the same windows, so the same words.
    uninterrupted = " ".join([r.text async for r in transcribe(pod.url, clip.path, realtime=True) if r.final])
    assert devset_wer(uninterrupted, resumed) <= SAME_TEXT_MARGIN, (uninterrupted, resumed)
    assert metric(pod, "voxfleet_pod_resumes_total") >= 2
    assert metric(pod, "voxfleet_pod_frames_duplicate_total") >= 0


async def test_forged_expired_and_unknown_tokens_are_refused(pod_factory):
    pod = pod_factory("--token-secret", SECRET, "--pod-id", "pod-a")
    ws, ready = await open_session(pod.url)
    good = ready["resume_token"]
    body, mac = good.split(".")
    cases = {
        body + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"): ErrorCode.INVALID_TOKEN,  # altered signature
        TokenSigner.from_secret("another-secret").sign(ready["session_id"], "pod-a", 60): ErrorCode.INVALID_TOKEN,
        TokenSigner.from_secret(SECRET).sign(ready["session_id"], "pod-a", -5): ErrorCode.INVALID_TOKEN,  # expired
        TokenSigner.from_secret(SECRET).sign("no-such-session", "pod-a", 60): ErrorCode.UNKNOWN_SESSION,
        TokenSigner.from_secret(SECRET).sign(ready["session_id"], "pod-b", 60): ErrorCode.UNKNOWN_SESSION,
        good: ErrorCode.BAD_MESSAGE,  # still connected: a token is not a way to steal a live session
    }
    from websockets.asyncio.client import connect

    for token, code in cases.items():
        async with connect(pod.url) as other:
            await other.send(p.encode(p.resume_message(p.Resume(token))))
            messages, close_code = await collect(other, 10)
        assert errors(messages) == [code], (token, messages)
        assert close_code == CloseCode.POLICY
    await ws.close()


async def test_abandoned_session_is_flushed_and_released_after_grace(pod_factory):
    pod = pod_factory("--resume-grace-seconds", "1")
    async with CuttingProxy(pod.port) as proxy:
        ws, _ = await open_session(proxy.url)
        for seq, frame in enumerate(pcm16_frames(conversation(SENTENCES[8:9]))):
            await ws.send(p.pack_frame(seq, frame))
        await asyncio.sleep(0.5)
        proxy.cut()
    for _ in range(100):
        status = json.loads(http_get(pod.http + "/status")[1])
        if status["active_sessions"] == 0:
            break
        await asyncio.sleep(0.2)
    assert status["active_sessions"] == 0
    assert metric(pod, "voxfleet_pod_finals_total") >= 1, "the abandoned session's audio never became final"


async def test_sigterm_drains_active_sessions_then_exits_zero(pod_factory):
    pod = pod_factory("--drain-timeout-seconds", "120")
    sentences = SENTENCES[10:13]
    session = asyncio.create_task(_transcribe_all(pod.url, conversation(sentences)))
    await asyncio.sleep(2.0)
    pod.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    code, body = http_get(pod.http + "/readyz")
    assert code == 503 and "draining" in body
    status = json.loads(http_get(pod.http + "/status")[1])
    assert status["draining"] is True and status["free_slots"] == 0
    with pytest.raises(TranscriptionError) as refused:
        await _transcribe_all(pod.url, conversation(SENTENCES[13:14]))
    assert refused.value.code == ErrorCode.DRAINING and refused.value.close_code == CloseCode.TRY_AGAIN_LATER
    finals = await session
    assert_file_as_accurate_as_offline(conversation(sentences), " ".join(sentences), " ".join(r.text for r in finals))
    assert await asyncio.to_thread(pod.process.wait, 60) == 0


async def test_drain_timeout_flushes_accepted_audio_and_closes_1001(pod_factory):
    pod = pod_factory("--drain-timeout-seconds", "1")
    ws, _ = await open_session(pod.url)
    frames = pcm16_frames(conversation(SENTENCES[14:16]))
    for seq, frame in enumerate(frames[: len(frames) * 2 // 3]):  # never sends 'end'
        await ws.send(p.pack_frame(seq, frame))
    await asyncio.sleep(0.5)
    pod.process.send_signal(signal.SIGTERM)
    messages, close_code = await collect(ws, 60)
    assert close_code == CloseCode.GOING_AWAY
    assert messages[-1]["type"] == "end"
    finals = [m["text"] for m in messages if m["type"] == "final"]
    heard = set(words(finals_text(messages)))
    assert {"cat", "every", "afternoon"} <= heard, finals
    assert "flight" in heard, "the half-sent second sentence was not flushed to a final"
    assert await asyncio.to_thread(pod.process.wait, 60) == 0


async def test_health_endpoints(pod):
    assert http_get(pod.http + "/healthz")[0] == 200
    assert http_get(pod.http + "/readyz")[0] == 200
    code, text = http_get(pod.http + "/metrics")
    assert code == 200 and "voxfleet_pod_sessions_capacity 16.0" in text and "voxfleet_pod_ready 1.0" in text
    status = json.loads(http_get(pod.http + "/status")[1])
    assert status["capacity"] == 16 and status["ready"] and not status["draining"] and status["model"] == "tiny.en"
    assert http_get(pod.http + "/nope")[0] == 404


async def _transcribe_all(url, path):
    return [r async for r in transcribe(url, path, realtime=True) if r.final]
