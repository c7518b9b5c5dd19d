"""One stream over OpenAI's Realtime API in transcription mode (the pod's /v1/realtime), timed on arrival.

A plain client of the protocol, doing what an app streaming a file through
`client.realtime.connect(extra_query={"intent": "transcription"})` does:

- connect to `/v1/realtime?intent=transcription`; the server speaks first
  (`session.created`); an `error` event or a close before it is a refusal;
- `session.update`: pcm16 at 24 kHz (OpenAI's default rate), language en,
  turn detection `server_vad` (the pod's own threshold and silence); wait for
  `session.updated`;
- audio: the stream's recording resampled to 24 kHz pcm16, base64 in 100 ms
  `input_audio_buffer.append` events at real-time pace;
- results: `...input_audio_transcription.delta` (partial text; its arrival is a
  partial arrival), `...completed` (one final transcript per item; the
  transcript is the completed items' text in order);
- end: after the last append, `input_audio_buffer.commit` (what a client does at
  the end of its audio, so open speech is finalized now), then wait until every
  committed item has its `completed` (an `input_audio_buffer_commit_empty`
  error means nothing was left open), and close.

Latency. Stream time 0 is when the first append is sent; the pod's
audio_start_ms / audio_end_ms count from the first sample it received, at the
same pace. A completed item's latency is its arrival minus the stream time
where the item's audio ends:
- the `audio_end_ms` of the item's `input_audio_buffer.speech_stopped` (server
  VAD closed the turn): OpenAI defines it as the end of the audio the turn
  covers, *including* the trailing `silence_duration_ms` the VAD waited for;
- for the item our final commit closed: the end of the audio sent;
- for an item the pod cut mid-speech (a forced split: `committed` with no
  `speech_stopped`): the stream time when its `committed` arrived (an upper
  bound of its end, so its latency is, if anything, understated).
The native client's latency is arrival minus the final's `end`, its last word's
end, so it includes the VAD's silence wait; a Realtime client cannot see word
times, and arrival minus `audio_end_ms` leaves that wait out. To compare like
with like, `speech_end=True` measures from `audio_end_ms - silence_duration_ms`
instead (the VAD's end of speech: the last word's end plus at most the VAD's
speech padding); run.py does so by default (--realtime-latency).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np

from stats import StreamRecord, gaps_inside_speech
from workload import StreamScript

from tests.speech import wer

RATE = 24_000
"""OpenAI's default input rate for audio/pcm."""
APPEND_SECONDS = 0.1
PATH = "/v1/realtime?intent=transcription"
READY_TIMEOUT = 60.0
SETTLE_TIMEOUT = 120.0
"""Bound on the wait for the last completed item after the final commit (the caller's cap bounds it too)."""
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
COMMIT_EMPTY = "input_audio_buffer_commit_empty"
REFUSAL_CLOSE_CODES = {1001, 1013}
REFUSAL_CODES = {"full", "draining"}


def pcm16_24k(path) -> bytes:
    """Mono 16-bit little-endian PCM at 24 kHz, as a Realtime client sends it."""
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)
    return (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes()


def session_update(language: str = "en") -> dict:
    return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": RATE},
        "transcription": {"model": "gpt-4o-transcribe", "language": language},
        "turn_detection": {"type": "server_vad"}}}}}


class _Refused(Exception):
    pass


def _silence_ms(session: dict) -> float:
    td = (((session.get("audio") or {}).get("input") or {}).get("turn_detection")
          or session.get("turn_detection") or {})
    return float(td.get("silence_duration_ms") or 0)


async def run_stream(url: str, script: StreamScript, record: StreamRecord, *, speech_end: bool = True) -> None:
    """Fill `record` as items complete; the caller bounds the time (cancels on its cap).

    `url` is the pod's ws://host:port; `speech_end`: measure from audio_end_ms minus the
    session's silence_duration_ms (see the module docstring) instead of audio_end_ms."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    audio = pcm16_24k(script.path)
    step = int(RATE * APPEND_SECONDS) * 2
    seconds = len(audio) / 2 / RATE
    committed: list[str] = []
    completed: dict[str, str] = {}
    ends: dict[str, float] = {}  # item id -> stream time where its audio ends
    state = {"sent_all": False, "commit_answered": False, "error": None, "silence": 0.0}
    changed = asyncio.Event()
    t0 = time.monotonic()
    try:
        async with connect(url.rstrip("/") + PATH, open_timeout=30, max_size=None, compression=None) as ws:
            session = await _await_event(ws, ("session.created", "transcription_session.created"))
            state["silence"] = _silence_ms(session.get("session") or {}) / 1000
            await ws.send(json.dumps(session_update()))
            updated = await _await_event(ws, ("session.updated", "transcription_session.updated"))
            state["silence"] = _silence_ms(updated.get("session") or {}) / 1000
            shift = state["silence"] if speech_end else 0.0

            t0 = time.monotonic()

            def on_event(event: dict) -> None:
                now = time.monotonic() - t0
                kind = event.get("type")
                item = event.get("item_id")
                if kind == "input_audio_buffer.speech_stopped":
                    ends[item] = max(0.0, event["audio_end_ms"] / 1000 - shift)
                elif kind == "input_audio_buffer.committed":
                    if item not in committed:
                        committed.append(item)
                    if state["sent_all"]:
                        state["commit_answered"] = True
                        ends.setdefault(item, seconds)  # the item our final commit closed
                    else:
                        ends.setdefault(item, min(now, seconds))  # cut mid-speech: when it was committed
                elif kind == COMPLETED:
                    if item not in committed:
                        committed.append(item)
                    if state["sent_all"]:
                        state["commit_answered"] = True
                    completed[item] = event.get("transcript") or ""
                    if completed[item].strip():
                        end = ends.get(item, min(now, seconds))
                        record.final_ends.append(end)
                        record.final_latencies.append(now - end)
                elif kind == DELTA:
                    record.partial_arrivals.append(now)
                elif kind == "error":
                    err = event.get("error") or {}
                    if err.get("code") == COMMIT_EMPTY and state["sent_all"]:
                        state["commit_answered"] = True
                    elif state["error"] is None:
                        state["error"] = f"{err.get('code')}: {err.get('message')}"
                changed.set()

            async def receive() -> None:
                async for raw in ws:
                    if isinstance(raw, str):
                        on_event(json.loads(raw))

            receiver = asyncio.create_task(receive())
            try:
                for k, i in enumerate(range(0, len(audio), step)):
                    delay = t0 + k * APPEND_SECONDS - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if receiver.done():
                        break
                    await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                              "audio": base64.b64encode(audio[i:i + step]).decode()}))
                state["sent_all"] = True
                if not receiver.done():
                    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

                def settled() -> bool:
                    return state["commit_answered"] and all(i in completed for i in committed)

                async with asyncio.timeout(SETTLE_TIMEOUT):
                    while not settled() and not receiver.done():
                        changed.clear()
                        await changed.wait()
                if receiver.done() and receiver.exception() is not None:
                    raise receiver.exception()
                if receiver.done() and not settled():
                    raise RuntimeError(f"the pod closed the session before its last item completed"
                                       f" ({len(completed)} of {len(committed)} items)"
                                       + (f"; {state['error']}" if state["error"] else ""))
                if state["error"]:
                    record.detail = state["error"]
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
    except _Refused as exc:
        record.outcome = "refused"
        record.detail = str(exc)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        record.outcome = "refused" if code in REFUSAL_CLOSE_CODES and not completed else "error"
        record.detail = f"closed ({code}{': ' + exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else ''})" + (
            f"; {state['error']}" if state["error"] else "")
    except (OSError, asyncio.TimeoutError, RuntimeError) as exc:
        record.outcome = "error"
        record.detail = f"{type(exc).__name__}: {exc}"
    finally:
        record.wall_seconds = time.monotonic() - t0
        record.transcript = " ".join(completed[i].strip() for i in committed if completed.get(i, "").strip())
        record.partial_gaps = gaps_inside_speech(record.partial_arrivals, list(script.speech))
        if record.outcome == "ok" or completed:
            record.wer = wer(script.text, record.transcript)


async def _await_event(ws, kinds: tuple[str, ...]) -> dict:
    """The next event of one of `kinds`; an `error` or a close first is a refusal."""
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            raise _Refused(f"closed before {kinds[0]} ({exc.rcvd.code if exc.rcvd else 'no close frame'}"
                           f"{': ' + exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else ''})") from None
        except asyncio.TimeoutError:
            raise _Refused(f"no {kinds[0]} within {READY_TIMEOUT:g} s") from None
        if isinstance(raw, bytes):
            continue
        event = json.loads(raw)
        if event.get("type") in kinds:
            return event
        if event.get("type") == "error":
            err = event.get("error") or {}
            raise _Refused(f"{err.get('code')}: {err.get('message')}")
