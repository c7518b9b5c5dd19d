"""Python client for the native protocol: stream audio, get partials and finals.

    async for result in transcribe("ws://127.0.0.1:8765", "talk.wav"):
        if result.final:
            print(result.text)

    # live audio: any async iterable of raw little-endian bytes, sent as it comes
    live = LiveAudio(AudioFormat(16000, "pcm16", 1), microphone_chunks())
    async for result in transcribe("ws://127.0.0.1:8765", live, partials=True): ...

    text = transcribe_sync("ws://127.0.0.1:8765", "talk.wav")   # scripts without asyncio

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
from typing import AsyncIterable, AsyncIterator

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


def frame_bytes(audio_format: AudioFormat, seconds: float = FRAME_SECONDS) -> int:
    """Bytes of one binary frame of `seconds` of audio: whole samples of every channel."""
    return max(1, int(audio_format.sample_rate * seconds)) * audio_format.bytes_per_frame


@dataclass
class Audio:
    """Audio as it goes on the wire: its format and its raw little-endian bytes."""

    format: AudioFormat
    data: bytes

    @property
    def seconds(self) -> float:
        return self.format.seconds(len(self.data))

    def frames(self, seconds: float = FRAME_SECONDS) -> list[bytes]:
        step = frame_bytes(self.format, seconds)
        return [self.data[i : i + step] for i in range(0, len(self.data), step)]


@dataclass
class LiveAudio:
    """Audio that is sent as it arrives (a microphone, a pipe, a call), in chunks of any size."""

    format: AudioFormat
    chunks: AsyncIterable[bytes]  # raw little-endian samples in `format`; the session ends when it does


class _Frames:
    """A session's audio as numbered frames, kept until the server acknowledges them (for a resend on resume).

    Live audio is read by its own task, not by a connection's sender: a
    dropped connection must not interrupt the source, which goes on filling
    frames while the client reconnects.
    """

    def __init__(self, audio: Audio | LiveAudio):
        self.format = audio.format
        self._frames: dict[int, bytes] = {}  # not yet acknowledged, from `_oldest` on
        self._oldest = 0
        self.count = 0
        self.complete = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None
        if isinstance(audio, Audio):
            for frame in audio.frames():
                self._add(frame)
            self.complete = True
        else:
            self._reader = asyncio.get_running_loop().create_task(self._read(audio.chunks), name="live-audio")

    def _add(self, frame: bytes) -> None:
        self._frames[self.count] = frame
        self.count += 1
        self._changed.set()

    async def _read(self, chunks: AsyncIterable[bytes]) -> None:
        step = frame_bytes(self.format)
        pending = b""
        try:
            async for chunk in chunks:
                pending += bytes(chunk)
                while len(pending) >= step:
                    self._add(pending[:step])
                    pending = pending[step:]
            whole = len(pending) - len(pending) % self.format.bytes_per_frame  # a torn last sample is dropped
            if whole:
                self._add(pending[:whole])
        except Exception as exc:  # the source failed: the session ends with what was read, and the error is raised
            self.error = exc
        finally:
            self.complete = True
            self._changed.set()

    async def get(self, seq: int) -> bytes | None:
        """Frame `seq`, waiting for live audio to bring it; None after the last frame."""
        while seq >= self.count and not self.complete:
            self._changed.clear()
            await self._changed.wait()
        return self._frames.get(seq) if seq < self.count else None

    def acknowledged(self, seq: int) -> None:
        """The server has frames up to `seq`: a resume will never ask for them again."""
        while self._oldest <= min(seq, self.count - 1):
            del self._frames[self._oldest]
            self._oldest += 1

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()


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
    """Any audio file: libsndfile's formats (WAV, FLAC, OGG, MP3) as they are, anything else PyAV decodes
    (M4A, Opus, WebM, a video's sound track) as float32. 16-bit stays pcm16; the rest goes as float32."""
    import soundfile as sf

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such audio file: {path}")
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError:
        return _read_with_pyav(path)
    encoding = "pcm16" if info.subtype in ("PCM_16", "PCM_S8", "PCM_U8") else "float32"
    data, rate = sf.read(str(path), dtype="int16" if encoding == "pcm16" else "float32", always_2d=True)
    return Audio(AudioFormat(int(rate), encoding, data.shape[1]), np.ascontiguousarray(data).astype("<" + data.dtype.str[1:]).tobytes())


def _read_with_pyav(path: str | Path) -> Audio:
    import av

    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise ValueError(f"{path} has no audio stream")
            rate = stream.codec_context.sample_rate
            channels = 1 if stream.codec_context.channels == 1 else 2  # more are mixed down to stereo
            resampler = av.AudioResampler(format="flt", layout="mono" if channels == 1 else "stereo", rate=rate)
            pieces = [frame.to_ndarray().reshape(-1) for packet in container.demux(stream) for decoded in packet.decode()
                      for frame in resampler.resample(decoded)]
            pieces += [frame.to_ndarray().reshape(-1) for frame in resampler.resample(None)]
    except av.FFmpegError as exc:
        raise ValueError(f"cannot read {path} as audio: {exc}") from None
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return Audio(AudioFormat(int(rate), "float32", channels), samples.astype("<f4").tobytes())


async def transcribe(
    url: str,
    audio: Audio | LiveAudio | str | Path,
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

    `audio` is a file, an `Audio`, or a `LiveAudio` sent as it arrives
    (`realtime` paces a file or `Audio` like a live source). `api_key` goes
    in the X-API-Key header (not the URL, which proxies log).
    """
    check_url(url)
    if api_key:
        headers = {**(headers or {}), "X-API-Key": api_key}
    if not isinstance(audio, (Audio, LiveAudio)):
        audio = read_audio(audio)
    realtime = realtime and isinstance(audio, Audio)
    frames = _Frames(audio)
    try:
        async for result in _session(url, frames, p.Start(audio.format, language, priority, partials, prompt,
                                                          word_timestamps), realtime, partials, max_retries,
                                     backoff, open_timeout, headers):
            yield result
    finally:
        frames.close()
    if frames.error is not None:
        raise TranscriptionError("audio_source", f"the live audio failed: {frames.error!r}")


async def _session(url: str, frames: _Frames, start: p.Start, realtime: bool, partials: bool, max_retries: int,
                   backoff: float, open_timeout: float, headers: dict[str, str] | None) -> AsyncIterator[Result]:
    """One session over as many connections as it takes: start, then resume after each drop."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

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
                            frames.acknowledged(acked)
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


async def _send(ws, frames: _Frames, first: int, realtime: bool, started: float) -> None:
    seq = first
    while (frame := await frames.get(seq)) is not None:
        if realtime:
            delay = started + seq * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(p.pack_frame(seq, frame))
        if not realtime and (seq & 15) == 0:
            await asyncio.sleep(0)
        seq += 1
    await ws.send(p.encode(p.END))
    log.debug("sent frames %d-%d", first, seq - 1)


async def transcript(url: str, audio: Audio | LiveAudio | str | Path, **kwargs) -> str:
    """The whole final transcript of `audio` as one string."""
    return " ".join([r.text async for r in transcribe(url, audio, **kwargs) if r.final]).strip()


def stdin_audio(audio_format: AudioFormat, chunk_bytes: int = 1 << 14) -> LiveAudio:
    """Raw samples piped into this process (`arecord ... | voxfleet transcribe URL -`), as live audio.

    Read by a daemon thread: a blocking read must neither stall the event
    loop nor keep the process alive after the session ended.
    """
    import sys
    import threading

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def read() -> None:
        while True:
            chunk = sys.stdin.buffer.read1(chunk_bytes)
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            if not chunk:
                return

    threading.Thread(target=read, name="stdin-audio", daemon=True).start()

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await queue.get():
            yield chunk

    return LiveAudio(audio_format, chunks())


def transcribe_sync(url: str, audio: Audio | str | Path, **kwargs) -> str:
    """`transcript` for scripts without an event loop: the final text of a file (or `Audio`)."""
    return asyncio.run(transcript(url, audio, **kwargs))
