"""One stream over the WhisperLive WebSocket protocol, timed on arrival.

Our own client side of the protocol, written from whisper_live/client.py
(whisper-live 0.10.0), doing what its TranscriptionTeeClient does with a file:

- hello: one JSON text message with uid, language, task, model, use_vad and
  the client's other defaults; then wait for {"message": "SERVER_READY"}.
  {"status": "WAIT"} means the server is full (refused), {"status": "ERROR"}
  a server error; a native voxfleet {"type": "error"} or a close before
  SERVER_READY also counts as refused (the pod without its WhisperLive front end);
- audio: float32 mono 16 kHz, 4096-sample chunks (256 ms) at real-time pace;
- results: {"uid", "segments": [...]}: the last few completed segments plus
  the current incomplete one; a completed segment joins the transcript when
  its start is at or after the end of the last one kept (client.py's rule);
- end: after the audio, wait until the incomplete segment's text has not
  changed for `linger` seconds (client.py waits 15 s), send b"END_OF_AUDIO",
  close; the transcript is the completed segments plus the last incomplete
  one (write_srt_file's rule).

Stream time 0 is when the first chunk is sent; WhisperLive's segment times
count from the first sample it received, so a completed segment's latency is
its arrival minus (start + its `end`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import numpy as np

from stats import StreamRecord
from workload import StreamScript, float32_16k

from tests.speech import wer

CHUNK = 4096
RATE = 16000
END_OF_AUDIO = b"END_OF_AUDIO"
READY_TIMEOUT = 60.0
"""WhisperLive loads the model on the first connection; give it time."""


def hello(uid: str, model: str) -> dict:
    """The first message, as whisper_live.client.Client.on_open sends it (defaults kept)."""
    return {
        "uid": uid,
        "language": "en",
        "task": "transcribe",
        "model": model,
        "use_vad": True,
        "send_last_n_segments": 10,
        "no_speech_thresh": 0.45,
        "clip_audio": False,
        "same_output_threshold": 10,
        "enable_translation": False,
        "target_language": "fr",
        "hotwords": None,
        "enable_diarization": False,
        "max_speakers": 10,
        "known_speakers": [],
        "word_timestamps": False,
        "initial_prompt": None,
        "vad_parameters": None,
    }


class _Refused(Exception):
    pass


async def run_stream(url: str, script: StreamScript, record: StreamRecord, *, model: str = "tiny.en",
                     linger: float = 15.0) -> None:
    """Fill `record` as segments arrive; the caller bounds the time (cancels on its cap)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    audio = float32_16k(script.path)
    uid = str(uuid.uuid4())
    transcript: list[dict] = []
    last_incomplete: dict | None = None
    t0 = time.monotonic()
    try:
        async with connect(url, open_timeout=30, max_size=None, compression=None) as ws:
            await ws.send(json.dumps(hello(uid, model)))
            await _await_ready(ws)

            t0 = time.monotonic()
            last_change = [t0]
            last_text = [None]
            sender = asyncio.create_task(_send_audio(ws, audio, t0))

            def on_message(msg: dict) -> None:
                nonlocal last_incomplete
                segments = msg.get("segments")
                if not segments:
                    return
                now = time.monotonic() - t0
                for i, seg in enumerate(segments):
                    if i == len(segments) - 1 and not seg.get("completed", False):
                        last_incomplete = seg
                    elif seg.get("completed", False):
                        if not transcript or float(seg["start"]) >= float(transcript[-1]["end"]):
                            transcript.append(seg)
                            end = float(seg["end"])
                            record.final_ends.append(end)
                            record.final_latencies.append(now - end)
                if segments[-1]["text"] != last_text[0]:
                    last_text[0] = segments[-1]["text"]
                    last_change[0] = time.monotonic()

            async def receive() -> None:
                async for raw in ws:
                    if isinstance(raw, str):
                        on_message(json.loads(raw))

            receiver = asyncio.create_task(receive())
            try:
                await sender
                # client.py: wait until nothing new has been said for `linger` seconds.
                while not receiver.done() and time.monotonic() - last_change[0] < linger:
                    await asyncio.sleep(0.1)
                if not receiver.done():
                    try:
                        await ws.send(END_OF_AUDIO)
                    except ConnectionClosed:
                        pass
                    try:
                        await asyncio.wait_for(asyncio.shield(receiver), 5.0)
                    except asyncio.TimeoutError:
                        pass
                if receiver.done() and receiver.exception() and not isinstance(receiver.exception(), ConnectionClosed):
                    raise receiver.exception()
            finally:
                sender.cancel()
                receiver.cancel()
    except _Refused as exc:
        record.outcome = "refused"
        record.detail = str(exc)
    except (ConnectionClosed, OSError, asyncio.TimeoutError) as exc:
        record.outcome = "error"
        record.detail = f"{type(exc).__name__}: {exc}"
    finally:
        record.wall_seconds = time.monotonic() - t0
        texts = [seg["text"].strip() for seg in transcript]
        if last_incomplete is not None and (not texts or texts[-1] != last_incomplete["text"].strip()):
            texts.append(last_incomplete["text"].strip())
        record.transcript = " ".join(texts).strip()
        if record.outcome == "ok" or texts:
            record.wer = wer(script.text, record.transcript)


async def _await_ready(ws) -> None:
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            raise _Refused(f"closed before SERVER_READY ({exc.rcvd.code if exc.rcvd else 'no close frame'}"
                           f"{': ' + exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else ''})") from None
        except asyncio.TimeoutError:
            raise _Refused(f"no SERVER_READY within {READY_TIMEOUT:g} s") from None
        if isinstance(raw, bytes):
            continue
        msg = json.loads(raw)
        if msg.get("message") == "SERVER_READY":
            return
        status = msg.get("status")
        if status == "WAIT":
            raise _Refused(f"server full (WAIT {msg.get('message')})")
        if status == "ERROR":
            raise _Refused(f"server error: {msg.get('message')}")
        if msg.get("type") == "error":  # a voxfleet pod that does not speak WhisperLive yet
            raise _Refused(f"{msg.get('code')}: {msg.get('message')}")


async def _send_audio(ws, audio: np.ndarray, t0: float) -> None:
    """Chunk k goes at t0 + k * 256 ms, like TranscriptionTeeClient.play_file with playback muted."""
    seconds = CHUNK / RATE
    for k, i in enumerate(range(0, len(audio), CHUNK)):
        delay = t0 + k * seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(audio[i : i + CHUNK].tobytes())
