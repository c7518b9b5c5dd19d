"""OpenAI's Realtime API in transcription mode against a real pod, with the official `openai` client.

The client is `AsyncOpenAI(...).realtime.connect(extra_query={"intent": "transcription"})`,
pointed at the pod with `websocket_base_url=ws://127.0.0.1:PORT/v1`; it sends its usual
`Authorization: Bearer` header, which the pod ignores. Speech is the dev set's real
recordings, resampled to OpenAI's 24 kHz pcm16 and sent base64 in 100 ms appends, faster
than real time. Close codes are checked with a bare WebSocket, which sees them directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import soxr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.devset import assert_as_accurate_as_offline, clips

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.integration

RATE = 24_000
CHUNK_BYTES = RATE // 10 * 2  # 100 ms of pcm16
PACE = 0.025
"""Seconds between 100 ms appends: four times real time."""
WAIT = 120
"""Bound on any one exchange; a hang fails the test, it never blocks the run."""
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


def pcm24(name: str) -> bytes:
    [clip] = clips(name)
    data, rate = sf.read(str(clip.path), dtype="float32")
    assert data.ndim == 1
    return (np.clip(soxr.resample(data, rate, RATE), -1, 1) * 32767).astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def silence(seconds: float) -> bytes:
    return np.zeros(int(RATE * seconds), dtype="<i2").tobytes()


def sdk(pod):
    return openai.AsyncOpenAI(api_key="sk-ignored-by-the-pod", base_url=f"{pod.http}/v1",
                              websocket_base_url=f"{pod.url}/v1")


def transcription(turn_detection: dict | None = None, **extra) -> dict:
    return {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": RATE}, "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
        "turn_detection": turn_detection}}, **extra}


SERVER_VAD = {"type": "server_vad", "threshold": 0.35, "silence_duration_ms": 500, "prefix_padding_ms": 200}


async def send_audio(conn, pcm: bytes) -> None:
    for i in range(0, len(pcm), CHUNK_BYTES):
        await conn.input_audio_buffer.append(audio=b64(pcm[i : i + CHUNK_BYTES]))
        await asyncio.sleep(PACE)


class Transcript:
    """What a client keeps: events in order, items in commit order, and each item's transcript.

    One task receives (`listen`); the test waits for a state with `until`.
    """

    def __init__(self) -> None:
        self.events: list = []
        self.committed: list[str] = []
        self.completed: dict[str, str] = {}
        self.sending = False
        self.deltas_while_sending = 0
        self.close_code: int | None = None
        self._changed = asyncio.Event()

    def add(self, event) -> None:
        self.events.append(event)
        if event.type == "input_audio_buffer.committed":
            assert event.item_id not in self.committed, "an item committed twice"
            self.committed.append(event.item_id)
        elif event.type == COMPLETED:
            assert event.item_id in self.committed, "completed before it was committed"
            assert event.item_id not in self.completed, "an item completed twice"
            self.completed[event.item_id] = event.transcript
        elif event.type == DELTA and self.sending:
            self.deltas_while_sending += 1
        self._changed.set()

    async def listen(self, conn) -> None:
        """Receive until the pod closes; `close_code` says how."""
        try:
            while True:
                self.add(await conn.recv())
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None

    @property
    def settled(self) -> bool:
        return bool(self.committed) and len(self.completed) == len(self.committed)

    @property
    def text(self) -> str:
        return " ".join(self.completed[i] for i in self.committed if self.completed.get(i))

    def of(self, kind: str) -> list:
        return [e for e in self.events if e.type == kind]

    async def until(self, done) -> None:
        """Wait until `done()` holds (checked after each event)."""
        async with asyncio.timeout(WAIT):
            while not done():
                self._changed.clear()
                await self._changed.wait()


async def session(conn, seen: Transcript, update: dict, *, beta: bool = False):
    """The created event, then the update and its answer; `seen` listens from then on."""
    created = await conn.recv()
    await conn.send({"type": "transcription_session.update" if beta else "session.update", "session": update})
    updated = await conn.recv()
    listener = asyncio.create_task(seen.listen(conn))
    return created, updated, listener


async def stream(conn, seen: Transcript, pcm: bytes) -> None:
    seen.sending = True
    try:
        await send_audio(conn, pcm)
    finally:
        seen.sending = False


async def commit_and_settle(conn, seen: Transcript) -> str:
    """Commit; wait for the transcripts of every item up to the commit's own. Returns the commit's item.

    The pod answers events in order, so the commit's item is the last one committed before the
    answer to an update sent right after it (finals of earlier speech commit items of their own).
    """
    before = len(seen.events)
    await conn.input_audio_buffer.commit()
    await conn.session.update(session={"type": "transcription"})
    await seen.until(lambda: any(e.type == "session.updated" for e in seen.events[before:]))
    answer = next(i for i in range(before, len(seen.events)) if seen.events[i].type == "session.updated")
    item = [e for e in seen.events[before:answer] if e.type == "input_audio_buffer.committed"][-1].item_id
    upto = seen.committed[: seen.committed.index(item) + 1]
    await seen.until(lambda: all(i in seen.completed for i in upto))
    return item


def metric(pod, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"{pod.http}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# --- the official client, end to end -----------------------------------------------------------


async def test_sdk_streams_a_recording_with_deltas_before_the_end_and_offline_accuracy(pod):
    name = "en_mfa_acoustic_corpus"
    before = metric(pod, "voxfleet_pod_sessions_total", protocol="realtime")
    seen = Transcript()
    async with sdk(pod).realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        created, updated, listener = await session(
            conn, seen, transcription(SERVER_VAD, include=["item.input_audio_transcription.logprobs"]))
        try:
            assert created.type == "session.created" and created.session.type == "transcription"
            assert created.session.audio.input.format.rate == RATE
            assert updated.type == "session.updated"
            assert updated.session.include == ["item.input_audio_transcription.logprobs"]
            assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
            await stream(conn, seen, pcm24(name) + silence(1.0))
            await commit_and_settle(conn, seen)
        finally:
            listener.cancel()

    assert seen.deltas_while_sending > 0, "no delta arrived before the audio was all sent"
    assert seen.of("input_audio_buffer.speech_started") and seen.of("input_audio_buffer.speech_stopped")
    items = set(seen.committed)
    assert {e.item_id for e in seen.of(DELTA)} <= items, "a delta for an item that never came"
    assert {e.item_id for e in seen.of("input_audio_buffer.speech_stopped")} <= items
    completed = seen.of(COMPLETED)
    assert all(e.usage.type == "duration" and e.content_index == 0 for e in completed)
    assert any(e.logprobs for e in completed), "logprobs were asked for"
    assert_as_accurate_as_offline((name,), seen.text)
    assert metric(pod, "voxfleet_pod_sessions_total", protocol="realtime") == before + 1


async def test_commit_finalizes_what_was_heard_and_the_session_goes_on(pod):
    first, second = "en_jfk_ask_not", "en_arctic_a0009"
    seen = Transcript()
    async with sdk(pod).realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        _, updated, listener = await session(conn, seen, transcription(None))  # no turn detection: the client commits
        try:
            assert updated.session.audio.input.turn_detection is None
            await stream(conn, seen, pcm24(first))  # no trailing silence: the last words are still open speech
            item = await commit_and_settle(conn, seen)
            assert seen.completed[item], "the commit's item has the last words"
            assert not seen.of("input_audio_buffer.speech_started"), "no speech events without turn detection"
            heard_first = seen.text

            await stream(conn, seen, pcm24(second))  # the same session goes on
            await commit_and_settle(conn, seen)
            await conn.input_audio_buffer.clear()
            await seen.until(lambda: seen.events[-1].type == "input_audio_buffer.cleared")
        finally:
            listener.cancel()

    assert_as_accurate_as_offline((first,), heard_first)
    assert_as_accurate_as_offline((first, second), seen.text)


async def test_bad_events_get_error_events_and_the_session_goes_on(pod):
    seen = Transcript()
    async with sdk(pod).realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        assert (await conn.recv()).type == "session.created"
        bad = [
            ("{not json", "bad_json"),
            (json.dumps({"type": "response.create", "event_id": "evt_1"}), "unknown_message"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%not base64", "event_id": "evt_2"}), "bad_frame"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02\x03")}), "bad_frame"),
            (json.dumps({"type": "input_audio_buffer.commit", "event_id": "evt_3"}), "input_audio_buffer_commit_empty"),
            (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcmu"}}}}}), "unsupported_audio"),
            (json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "transcription": {"language": "fr"}}}}}), "unsupported_language"),
            (b"\x00\x01", "bad_frame"),
        ]
        for raw, code in bad:
            await conn.send_raw(raw)
            error = await conn.recv()
            assert error.type == "error" and error.error.code == code, (raw, error)
            assert error.error.type == "invalid_request_error" and error.error.message
            sent = json.loads(raw) if isinstance(raw, str) and raw.startswith('{"') else {}
            assert error.error.event_id == sent.get("event_id"), "the error names the client event"

        listener = asyncio.create_task(seen.listen(conn))
        try:
            name = "en_librispeech_61-70968-0000"
            await stream(conn, seen, pcm24(name) + silence(0.5))
            await commit_and_settle(conn, seen)
        finally:
            listener.cancel()
    assert not seen.of("error")
    assert_as_accurate_as_offline((name,), seen.text)


async def test_the_beta_client_gets_transcription_session_events(pod):
    seen = Transcript()
    update = {"input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1", "language": "en"},
              "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}
    async with sdk(pod).beta.realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        created, updated, listener = await session(conn, seen, update, beta=True)
        try:
            assert created.type == "transcription_session.created", created
            assert updated.type == "transcription_session.updated"
            assert updated.session.turn_detection.silence_duration_ms == 400
            assert updated.session.input_audio_format == "pcm16"
            name = "en_arctic_awb_a0007"
            await stream(conn, seen, pcm24(name) + silence(1.0))
            await seen.until(lambda: seen.settled and seen.of("input_audio_buffer.speech_stopped"))
        finally:
            listener.cancel()
    assert_as_accurate_as_offline((name,), seen.text)


# --- limits and close codes, on a bare WebSocket ----------------------------------------------------


async def receive_until_closed(ws) -> list[dict]:
    messages = []
    try:
        async with asyncio.timeout(WAIT):
            async for raw in ws:
                messages.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return messages


async def test_limits_close_with_the_native_codes(pod_factory):
    pod = pod_factory("--max-sessions", "1", "--idle-timeout-seconds", "3", "--max-frame-bytes", "65536")
    url = f"{pod.url}/v1/realtime?intent=transcription"
    async with connect(url, additional_headers={"Authorization": "Bearer anything"}) as holder:
        assert json.loads(await holder.recv())["type"] == "session.created"
        await holder.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(silence(0.2))}))  # takes the slot
        await holder.send(json.dumps({"type": "input_audio_buffer.commit"}))
        answered = [json.loads(await holder.recv()) for _ in range(2)]  # the slot is taken once this is answered
        assert [m["type"] for m in answered] == ["input_audio_buffer.committed", COMPLETED], answered
        assert answered[1]["transcript"] == "", "a commit of silence completes at once, empty"

        async with connect(url) as full:  # no room: an error, then 1013 as on the native front end
            messages = await receive_until_closed(full)
        assert full.close_code == 1013
        assert [m["type"] for m in messages] == ["error"] and messages[0]["error"]["code"] == "full"

        # Sent nothing for the idle timeout: error, then 1008.
        messages = await receive_until_closed(holder)
    assert holder.close_code == 1008
    assert messages[-1]["type"] == "error" and messages[-1]["error"]["code"] == "idle_timeout"

    async with connect(url, max_size=None) as big:
        assert json.loads(await big.recv())["type"] == "session.created"
        await big.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(silence(2.0))}))  # 128 kB
        await receive_until_closed(big)
    assert big.close_code == 1009
    # The pod is fine, and a connection to a path it does not serve is refused before the upgrade.
    assert urllib.request.urlopen(f"{pod.http}/readyz", timeout=5).status == 200
    with pytest.raises(InvalidStatus):
        async with connect(f"{pod.url}/v1/realtimes"):
            pass


async def test_a_16_khz_client_says_so_in_its_format(pod):
    name = "en_mfa_redfox_normal"
    [clip] = clips(name)
    data, rate = sf.read(str(clip.path), dtype="int16")
    assert rate == 16000
    seen = Transcript()
    update = transcription(SERVER_VAD)
    update["audio"]["input"]["format"]["rate"] = 16000
    async with sdk(pod).realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        _, updated, listener = await session(conn, seen, update)
        try:
            assert updated.session.audio.input.format.rate == 16000
            seen.sending = True
            pcm = data.astype("<i2").tobytes() + np.zeros(16000, dtype="<i2").tobytes()
            for i in range(0, len(pcm), 3200):  # 100 ms at 16 kHz
                await conn.input_audio_buffer.append(audio=b64(pcm[i : i + 3200]))
                await asyncio.sleep(PACE)
            seen.sending = False
            await commit_and_settle(conn, seen)
        finally:
            listener.cancel()
    assert_as_accurate_as_offline((name,), seen.text)


async def test_a_drain_completes_the_open_turn_and_closes_1001(pod_factory):
    pod = pod_factory("--drain-timeout-seconds", "1")
    name = "en_jfk_ask_not"
    seen = Transcript()
    async with sdk(pod).realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        _, _, listener = await session(conn, seen, transcription(SERVER_VAD))
        await stream(conn, seen, pcm24(name))  # no trailing silence: the last turn is still open
        pod.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            await listener
    assert seen.close_code == 1001
    assert seen.settled, "every committed item was completed before the close"
    assert_as_accurate_as_offline((name,), seen.text)
    assert pod.process.wait(30) == 0, pod.log_text()
