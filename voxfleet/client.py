"""Python client for the native protocol: stream audio, get partials and finals.

    async for result in transcribe("ws://127.0.0.1:8765", "talk.wav"):
        if result.final:
            print(result.text)

It keeps every audio frame the server has not acknowledged, and when the
connection drops (not a normal close) it reconnects with the session's resume
token (bounded retries, exponential backoff) and resends from where the
server says it stopped: no audio lost, none applied twice, no final repeated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from voxfleet import protocol as p
from voxfleet.protocol import AudioFormat, CloseCode

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.1
"""Audio per binary frame the client sends."""


@dataclass(frozen=True)
class Result:
    final: bool
    text: str
    start: float
    end: float
    segment_id: int | None = None
    words: tuple[dict, ...] = ()  # finals of a session that asked for word_timestamps: word, start, end, probability


class TranscriptionError(Exception):
    """The server refused or ended the session with an error."""

    def __init__(self, code: str, message: str, close_code: int | None = None):
        super().__init__(f"{code}: {message}" + (f" (close {close_code})" if close_code else ""))
        self.code = code
        self.message = message
        self.close_code = close_code


@dataclass
class Audio:
    """Audio as it goes on the wire: its format and its raw little-endian bytes."""

    format: AudioFormat
    data: bytes

    @property
    def seconds(self) -> float:
        return self.format.seconds(len(self.data))

    def frames(self, seconds: float = FRAME_SECONDS) -> list[bytes]:
        step = max(1, int(self.format.sample_rate * seconds)) * self.format.bytes_per_frame
        return [self.data[i : i + step] for i in range(0, len(self.data), step)]


def check_url(url: str) -> str:
    """`url` if it is a WebSocket URL, else a ValueError saying what to give instead."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r} is not a URL: give ws://host:port (or wss:// behind TLS)")
    if scheme in ("http", "https"):
        raise ValueError(f"{url!r} is an HTTP URL: voxfleet streams over WebSocket, give "
                         f"{'wss' if scheme == 'https' else 'ws'}://{rest}")
    if scheme not in ("ws", "wss"):
        raise ValueError(f"{url!r}: the scheme must be ws:// or wss://, not {scheme}://")
    if not rest.split("/", 1)[0]:
        raise ValueError(f"{url!r} names no host: give ws://host:port")
    return url


def read_audio(path: str | Path) -> Audio:
    """A WAV (or any file libsndfile reads): 16-bit stays pcm16, anything else goes as float32."""
    import soundfile as sf

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such audio file: {path}")
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as exc:
        raise ValueError(f"cannot read {path} as audio: {exc}") from None
    encoding = "pcm16" if info.subtype in ("PCM_16", "PCM_S8", "PCM_U8") else "float32"
    data, rate = sf.read(str(path), dtype="int16" if encoding == "pcm16" else "float32", always_2d=True)
    return Audio(AudioFormat(int(rate), encoding, data.shape[1]), np.ascontiguousarray(data).astype("<" + data.dtype.str[1:]).tobytes())


async def transcribe(
    url: str,
    audio: Audio | str | Path,
    *,
    realtime: bool = False,
    partials: bool = False,
    language: str | None = "en",
    priority: str = "normal",
    prompt: str = "",
    word_timestamps: bool = False,
    max_retries: int = 5,
    backoff: float = 0.2,
    open_timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    api_key: str | None = None,
) -> AsyncIterator[Result]:
    """Stream `audio` and yield results as they come; raises TranscriptionError on refusal.

    `api_key` goes in the X-API-Key header (not the URL, which proxies log).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    check_url(url)
    if api_key:
        headers = {**(headers or {}), "X-API-Key": api_key}
    if not isinstance(audio, Audio):
        audio = read_audio(audio)
    frames = audio.frames()
    start = p.Start(audio.format, language, priority, partials, prompt, word_timestamps)
    token: str | None = None
    last_segment = -1
    acked = -1
    attempt = 0
    started = time.monotonic()
    while True:
        try:
            async with connect(url, open_timeout=open_timeout, max_size=None, compression=None,
                               additional_headers=headers) as ws:
                if token is None:
                    await ws.send(p.encode(p.start_message(start)))
                else:
                    await ws.send(p.encode(p.resume_message(p.Resume(token, acked, last_segment))))
                ready = json.loads(await ws.recv())
                while ready.get("type") == "queued":  # a router holds us until a pod has room
                    log.info("queued at position %s of %s", ready.get("position"), ready.get("queue_length"))
                    ready = json.loads(await ws.recv())
                if ready.get("type") == "error":
                    await ws.wait_closed()
                    raise TranscriptionError(ready["code"], ready["message"], ws.close_code)
                token = ready["resume_token"]
                attempt = 0
                sender = asyncio.create_task(_send(ws, frames, ready.get("next_seq", 0), realtime, started))
                error: TranscriptionError | None = None
                try:
                    async for raw in ws:
                        msg = json.loads(raw)
                        kind = msg.get("type")
                        if kind == "final":
                            if msg["segment_id"] > last_segment:
                                last_segment = msg["segment_id"]
                                yield Result(True, msg["text"], msg["start"], msg["end"], msg["segment_id"],
                                             tuple(msg.get("words", ())))
                        elif kind == "partial" and partials:
                            yield Result(False, msg["text"], msg["start"], msg["end"])
                        elif kind == "ack":
                            acked = max(acked, msg["seq"])
                        elif kind == "token":
                            token = msg["resume_token"]
                        elif kind == "error":
                            error = TranscriptionError(msg["code"], msg["message"])
                        elif kind == "warning":
                            log.warning("server: %s", msg.get("message"))
                        elif kind == "end":
                            break
                finally:
                    sender.cancel()
                await ws.wait_closed()
                code = ws.close_code
                if error is not None:
                    raise TranscriptionError(error.code, error.message, code)
                if code not in (CloseCode.NORMAL, None):
                    raise TranscriptionError("closed", ws.close_reason or "closed by the server", code)
                return
        except TranscriptionError:
            raise
        except InvalidStatus as exc:
            raise TranscriptionError("http", f"server answered HTTP {exc.response.status_code}") from None
        except (ConnectionClosed, OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
            attempt += 1
            if token is None and isinstance(exc, OSError) and attempt > max_retries:
                raise TranscriptionError("unreachable", str(exc)) from None
            if attempt > max_retries:
                raise TranscriptionError("connection_lost", f"gave up after {max_retries} reconnects: {exc}") from None
            if isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code in (
                CloseCode.NORMAL, CloseCode.POLICY, CloseCode.TRY_AGAIN_LATER, CloseCode.TOO_BIG
            ):
                raise TranscriptionError("closed", exc.rcvd.reason or "closed", exc.rcvd.code) from None
            delay = backoff * 2 ** (attempt - 1)
            log.info("connection lost (%s); resuming in %.1f s (try %d/%d)", exc, delay, attempt, max_retries)
            await asyncio.sleep(delay)


async def _send(ws, frames: list[bytes], first: int, realtime: bool, started: float) -> None:
    loop_start = time.monotonic()
    for seq in range(first, len(frames)):
        if realtime:
            due = started + seq * FRAME_SECONDS
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(p.pack_frame(seq, frames[seq]))
        if not realtime and (seq & 15) == 0:
            await asyncio.sleep(0)
    await ws.send(p.encode(p.END))
    log.debug("sent %d frames in %.2f s", len(frames) - first, time.monotonic() - loop_start)


async def transcript(url: str, audio: Audio | str | Path, **kwargs) -> str:
    """The whole final transcript of `audio` as one string."""
    return " ".join([r.text async for r in transcribe(url, audio, **kwargs) if r.final]).strip()
