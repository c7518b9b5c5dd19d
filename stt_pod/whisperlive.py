"""The WhisperLive WebSocket protocol, served by the pod: WhisperLive clients work unchanged.

Why it exists: existing WhisperLive clients (the PyPI `whisper-live` client and
the apps built on its protocol) can point at a pod instead of a WhisperLive
server. Their sessions are ordinary pod `Session`s: the same admission, slots,
batching scheduler and metrics as native sessions (label `whisperlive`).

The protocol, as whisper-live 0.10.0 speaks it (no sequence numbers, no resume):
- client: one JSON text message of options, `{"uid", "language", "task",
  "model", "use_vad", "send_last_n_segments", ...}`;
- server: `{"uid", "message": "SERVER_READY", "backend": "faster_whisper"}`,
  or `{"uid", "status": "WAIT", "message": <minutes, a number>}` and a close
  when there is no room;
- client: binary frames of raw float32 16 kHz mono samples (`audio_format`
  "int16" also accepted, as the 0.10.0 server does), then b"END_OF_AUDIO";
- server: `{"uid", "segments": [{"start": "1.230", "end": "2.000", "text",
  "completed"}]}`: recent completed segments, then the one in progress;
  `{"uid", "status": "ERROR" | "WARNING", "message"}`;
  `{"uid", "message": "DISCONNECT"}` when the server ends the session.

How it maps, and where it differs from WhisperLive on purpose:
- completed segments are the pod's finals (never revised or repeated as new);
  the segment in progress is the session's current partial. When nothing is in
  progress the list ends with an empty, not completed segment: the client keeps
  its last in-progress segment and adds it to its transcript at the end unless
  a newer one replaces it, so a partial its final superseded must be cleared;
- timestamps are made monotonic (a segment never starts before the previous
  one ended): the client drops a completed segment that starts earlier;
- END_OF_AUDIO flushes: every word spoken arrives in completed segments, then
  DISCONNECT, then close 1000 (WhisperLive drops what it had not finished);
- a list carries at least every completed segment the client has not been
  sent yet, even beyond `send_last_n_segments`, so none is skipped;
- bad input gets an ERROR status (after the finals of the audio accepted so
  far) and the native front end's close code; full or draining gets WAIT and
  close 1000, as WhisperLive's server does.

It must never let one client's input reach another session, trust a frame's
size or content, or block the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from stt_pod.session import EndEvent, Session, WarningEvent
from stt_pod.stream import FinalEvent, PartialEvent
from voxfleet import protocol as p
from voxfleet.protocol import CloseCode, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from stt_pod.server import PodServer

log = logging.getLogger(__name__)

PROTOCOL = "whisperlive"
"""The session's protocol, as metrics label it."""

BACKEND = "faster_whisper"
"""What SERVER_READY names: the pod runs faster-whisper's models, and the client
keeps completed segments only from a server that says so."""

END_OF_AUDIO = b"END_OF_AUDIO"

AUDIO_FORMATS = {"float32": "float32", "int16": "pcm16"}
"""WhisperLive's `audio_format` option, to the pod's encodings (16 kHz mono)."""

DEFAULT_LAST_N = 10
"""WhisperLive's default for `send_last_n_segments`."""

MAX_LAST_N = 100
"""Most completed segments repeated in one message (the bound on its size)."""

STALE_PARTIAL_SECONDS = 0.1
"""A partial starting this much before the last final ended was superseded by it."""

WAIT_LINGER_SECONDS = 1.0
"""After WAIT, how long the client has to close first. The whisper-live client
notes WAIT in a flag that its close handler clears; a server that closes at once
can race it into waiting forever for SERVER_READY."""


# --- the protocol, sans I/O -------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What a client's first message asks for, as the pod will serve it."""

    uid: str
    start: p.Start
    last_n: int
    warnings: tuple[str, ...] = ()


def is_whisperlive(obj: dict) -> bool:
    """A first message that is WhisperLive's options, not a native message."""
    return "uid" in obj and "type" not in obj


def parse_options(obj: dict) -> Options:
    """Validate a client's options; raises ProtocolError for what cannot be served."""
    uid = obj.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'uid' must be a non-empty string")
    audio_format = obj.get("audio_format") or "float32"
    if audio_format not in AUDIO_FORMATS:
        raise ProtocolError(ErrorCode.UNSUPPORTED_AUDIO,
                            f"audio_format {audio_format!r} is not one of {', '.join(AUDIO_FORMATS)}",
                            CloseCode.UNSUPPORTED)
    language = obj.get("language")
    if language is not None and not isinstance(language, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'language' must be a string or null")
    last_n = obj.get("send_last_n_segments")
    if last_n is None:
        last_n = DEFAULT_LAST_N
    elif not isinstance(last_n, int) or isinstance(last_n, bool) or last_n < 1:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'send_last_n_segments' must be a positive integer")
    warnings = []
    if obj.get("task") not in (None, "transcribe"):
        warnings.append(f"task {obj.get('task')!r} is not served here; transcribing instead")
    if obj.get("enable_translation"):
        warnings.append("translation is not served here; transcribing only")
    if obj.get("enable_diarization") or obj.get("known_speakers"):
        warnings.append("speaker diarization is not served here")
    prompts = [obj.get(key) for key in ("initial_prompt", "hotwords")]
    if any(x is not None and not isinstance(x, str) for x in prompts):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'initial_prompt' and 'hotwords' must be strings or null")
    prompt = " ".join(x.strip() for x in prompts if x and x.strip())
    if len(prompt) > p.MAX_PROMPT_CHARS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'initial_prompt' and 'hotwords' exceed {p.MAX_PROMPT_CHARS} characters")
    word_timestamps = obj.get("word_timestamps") or False
    if not isinstance(word_timestamps, bool):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'word_timestamps' must be a boolean")
    audio = p.AudioFormat(p.MODEL_SAMPLE_RATE, AUDIO_FORMATS[audio_format], 1)
    start = p.Start(audio, language or None, prompt=prompt, word_timestamps=word_timestamps)
    return Options(uid, start, min(last_n, MAX_LAST_N), tuple(warnings))


def segment(start_ms: int, end_ms: int, text: str, completed: bool) -> dict[str, Any]:
    """One segment as WhisperLive formats it: times are strings with three decimals."""
    return {"start": f"{start_ms / 1000:.3f}", "end": f"{end_ms / 1000:.3f}", "text": text, "completed": completed}


class SegmentList:
    """Turns a session's finals and partial into the segment lists a client is sent."""

    def __init__(self, last_n: int = DEFAULT_LAST_N):
        self.last_n = last_n
        self._sent: deque[dict] = deque(maxlen=last_n)  # completed, already in a message
        self._unsent: list[dict] = []  # completed, not yet in any message
        self._end_ms = 0  # where the last completed segment ends: no segment starts before
        self._final_end = 0.0  # the same, unrounded, for telling a superseded partial
        self._count = 0
        self._shown: tuple | None = (0, "0.000", "0.000", "")  # nothing to say before the first words

    def add_final(self, text: str, start: float, end: float, words: list[dict] | None = None) -> None:
        """`words`: WhisperLive's word timestamps (word, start, end, probability), when the client asked."""
        start_ms = max(round(start * 1000), self._end_ms)
        end_ms = max(round(end * 1000), start_ms + 1)  # never empty: the client compares start with end
        completed = segment(start_ms, end_ms, text, True)
        if words is not None:
            completed["words"] = words
        self._unsent.append(completed)
        self._end_ms = end_ms
        self._final_end = max(self._final_end, end)
        self._count += 1

    def in_progress(self, partial: PartialEvent | None) -> dict[str, Any]:
        """The last, not completed segment: the partial unless a later final superseded it."""
        if partial is not None and partial.text and partial.start >= self._final_end - STALE_PARTIAL_SECONDS:
            start_ms = max(round(partial.start * 1000), self._end_ms)
            return segment(start_ms, max(round(partial.end * 1000), start_ms), partial.text, False)
        return segment(self._end_ms, self._end_ms, "", False)

    def update(self, partial: PartialEvent | None, force: bool = False) -> list[dict[str, Any]] | None:
        """The list to send now, or None when the client already has this state."""
        tail = self.in_progress(partial)
        shown = (self._count, tail["start"], tail["end"], tail["text"])
        if shown == self._shown and not force:
            return None
        self._shown = shown
        room = self.last_n - len(self._unsent)
        context = list(self._sent)[-room:] if room > 0 else []
        listed = context + self._unsent + [tail]
        self._sent.extend(self._unsent)
        self._unsent = []
        return listed


def ready_message(uid: str) -> dict[str, Any]:
    return {"uid": uid, "message": "SERVER_READY", "backend": BACKEND}


def segments_message(uid: str, segments: list[dict[str, Any]]) -> dict[str, Any]:
    return {"uid": uid, "segments": segments}


def status_message(uid: Any, status: str, message: Any) -> dict[str, Any]:
    """WAIT (message: minutes, a number), ERROR or WARNING (message: text)."""
    return {"uid": uid, "status": status, "message": message}


def disconnect_message(uid: str) -> dict[str, Any]:
    return {"uid": uid, "message": "DISCONNECT"}


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message)


# --- the connection -------------------------------------------------------------


async def serve_whisperlive(pod: "PodServer", ws: ServerConnection, options: dict) -> None:
    uid = options.get("uid")
    try:
        opts = parse_options(options)
        session = pod.open_session(opts.start, PROTOCOL)
    except ProtocolError as exc:
        pod.metrics.refusals.labels(exc.code).inc()
        if exc.code in (ErrorCode.FULL, ErrorCode.DRAINING):
            return await _wait(pod, ws, uid, exc)
        log.info("WhisperLive client refused: %s: %s", exc.code, exc.message)
        return await refuse(ws, uid, exc)
    session.connected = True
    try:
        for warning in opts.warnings:
            await ws.send(encode(status_message(opts.uid, "WARNING", warning)))
        await ws.send(encode(ready_message(opts.uid)))
        await _serve(pod, ws, session, opts)
    except ConnectionClosed:
        _lost(pod, session)
    except Exception:
        log.exception("session %s: WhisperLive connection failed", session.id)
        _lost(pod, session)
        await refuse(ws, opts.uid, ProtocolError(ErrorCode.INTERNAL, "internal error", CloseCode.INTERNAL))


async def _serve(pod: "PodServer", ws: ServerConnection, session: Session, opts: Options) -> None:
    writer = asyncio.create_task(_write(ws, session, opts.uid, SegmentList(opts.last_n)))
    reader = asyncio.create_task(_read(pod, ws, session))
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    if writer in done and not writer.cancelled() and writer.exception() is None:
        # Every segment, then DISCONNECT, went out: free the slot, close with the session's code.
        # (Released first: the client's side of the closing handshake may take seconds;
        # websocket-client's close() waits up to 3 s for a close frame its reader thread ate.)
        end = session.ended
        pod.release(session)
        reason = end.error.code if end and end.error else "end of session"
        await ws.close(end.close_code if end else CloseCode.NORMAL, reason)
        return
    # The connection dropped, or a task failed. WhisperLive has no resume: the
    # session flushes (for the metrics and the log) and is released.
    for task in done:
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed):
            raise exc
    _lost(pod, session)


def _lost(pod: "PodServer", session: Session) -> None:
    if session.id in pod.sessions and session.connected:
        session.connected = False
        pod.detach(session, resumable=False)


async def _read(pod: "PodServer", ws: ServerConnection, session: Session) -> None:
    settings = pod.settings
    seq = session.orderer.next_seq
    while True:
        try:
            message = await asyncio.wait_for(ws.recv(), settings.idle_timeout_seconds)
        except asyncio.TimeoutError:
            _fail(pod, session, ProtocolError(ErrorCode.IDLE_TIMEOUT,
                                              f"no message for {settings.idle_timeout_seconds:g} s"))
            return await _wait_forever()
        try:
            if message == END_OF_AUDIO or message == END_OF_AUDIO.decode():
                session.finish()
                return await _wait_forever()
            if isinstance(message, str):
                raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                    "after the options, send binary float32 audio frames or END_OF_AUDIO")
            session.accept_frame(seq, message)
            seq += 1
            if session.audio_seconds > settings.max_session_seconds:
                raise ProtocolError(ErrorCode.SESSION_TOO_LONG,
                                    f"session exceeds {settings.max_session_seconds:g} s of audio")
            await session.wait_for_backlog(settings.max_backlog_seconds)
        except ProtocolError as exc:
            _fail(pod, session, exc)
            return await _wait_forever()


def _fail(pod: "PodServer", session: Session, exc: ProtocolError) -> None:
    """End the session for cause: its accepted audio still becomes segments, then ERROR."""
    log.info("session %s: %s: %s", session.id, exc.code, exc.message)
    pod.metrics.refusals.labels(exc.code).inc()
    session.finish(exc.close_code, exc)


async def _wait_forever() -> None:
    """The reader's work is done; it stays until the writer closes the socket."""
    await asyncio.Event().wait()


async def _write(ws: ServerConnection, session: Session, uid: str, segments: SegmentList) -> None:
    cursor = session.outbox_base
    while True:
        session.changed.clear()
        for event in session.events_from(cursor):
            cursor += 1
            if isinstance(event, FinalEvent):
                words = ([p.word_entry(w.text.strip(), w.start, w.end, w.probability) for w in event.words]
                         if session.start.word_timestamps else None)
                segments.add_final(event.text, event.start, event.end, words)
            elif isinstance(event, WarningEvent):
                await ws.send(encode(status_message(uid, "WARNING", event.message)))
            elif isinstance(event, EndEvent):
                await ws.send(encode(segments_message(uid, segments.update(None, force=True))))
                if event.error is not None:
                    await ws.send(encode(status_message(uid, "ERROR", event.error.message)))
                elif event.close_code == CloseCode.GOING_AWAY:
                    await ws.send(encode(status_message(uid, "WARNING", "this pod is shutting down; connect again")))
                await ws.send(encode(disconnect_message(uid)))
                return
        listed = segments.update(session.partial)
        if listed is not None:
            await ws.send(encode(segments_message(uid, listed)))
        await session.changed.wait()


def _wait_minutes(pod: "PodServer", exc: ProtocolError) -> float:
    """WhisperLive's estimate: when the soonest-ending session reaches its limit.

    A pod that is loading or draining says 0: try again now (a router places
    the retry elsewhere)."""
    if exc.code != ErrorCode.FULL or not pod.ready or pod.draining or not pod.sessions:
        return 0.0
    limit = pod.settings.max_session_seconds
    return max(0.0, min(limit - s.audio_seconds for s in pod.sessions.values())) / 60


async def _wait(pod: "PodServer", ws: ServerConnection, uid: Any, exc: ProtocolError) -> None:
    """No room: WAIT, then close 1000 as WhisperLive does (once the client had time to see it)."""
    try:
        await ws.send(encode(status_message(uid, "WAIT", _wait_minutes(pod, exc))))
        try:
            await asyncio.wait_for(ws.wait_closed(), WAIT_LINGER_SECONDS)
        except asyncio.TimeoutError:
            pass
        await ws.close(CloseCode.NORMAL, exc.code)
    except ConnectionClosed:
        pass


async def refuse(ws: ServerConnection, uid: Any, exc: ProtocolError) -> None:
    """ERROR with the reason, then the close code the native front end would use."""
    try:
        await ws.send(encode(status_message(uid, "ERROR", exc.message)))
        await ws.close(exc.close_code, exc.code)
    except ConnectionClosed:
        pass


__all__ = ["is_whisperlive", "serve_whisperlive", "parse_options", "SegmentList", "Options"]
