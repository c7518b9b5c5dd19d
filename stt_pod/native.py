"""The native voxfleet protocol front end of the pod (docs/protocol.md).

One coroutine per connection: a reader applies frames and control messages
to the `Session`, a writer sends what the session's outbox gains. A normal
end flushes every final, sends `end` and closes 1000; bad input gets an
`error`, the accepted audio is still flushed to finals, then a close with the
error's code; a dropped connection leaves the session waiting for a resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from stt_pod.session import EndEvent, FlushedEvent, Session, SpeechEvent, WarningEvent
from stt_pod.stream import FinalEvent
from voxfleet import protocol as p
from voxfleet.protocol import CloseCode, ErrorCode, ProtocolError
from voxfleet.tokens import InvalidToken

if TYPE_CHECKING:
    from stt_pod.server import PodServer

log = logging.getLogger(__name__)

ACK_INTERVAL = 0.5
"""Seconds between acknowledgements of applied audio."""


async def serve_native(pod: "PodServer", ws: ServerConnection, first: p.ClientMessage) -> None:
    if not isinstance(first, (p.Start, p.Resume)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'{type(first).__name__.lower()}' before 'start'")
    if isinstance(first, p.Start):
        session = pod.open_session(first, "native")
        cursor = session.outbox_base
        resumed = False
    else:
        session = pod.resume_session(first.token)
        cursor = session.cursor_after_segment(first.last_segment_id)
        resumed = True
    session.connected = True
    try:
        await ws.send(p.encode(p.ready(session.id, pod.token_for(session), session.orderer.next_seq, resumed)))
    except ConnectionClosed:
        # Gone before it heard of the session. A new one has no token to come back with: its slot
        # is freed now (a failed start); a resumed one keeps the rest of its grace period.
        session.connected = False
        if resumed:
            pod.detach(session)
        else:
            pod.metrics.refusals.labels(ErrorCode.CONNECTION_LOST).inc()
            pod.release(session)
        raise
    writer = asyncio.create_task(_write(ws, session, cursor))
    reader = asyncio.create_task(_read(pod, ws, session))
    done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    if writer in done and writer.exception() is None:
        # The session ended and every result was sent: close with its code.
        end = session.ended
        reader.cancel()
        await ws.close(end.close_code if end else CloseCode.NORMAL, "end of session")
        pod.release(session)
        return
    # The connection dropped (or the writer failed). A client that closed
    # normally without 'end' has left; any other loss may come back to resume.
    session.connected = False
    left = reader in done and isinstance(reader.exception(), ConnectionClosedOK)
    for task in (reader, writer):
        task.cancel()
    await asyncio.gather(reader, writer, return_exceptions=True)
    pod.detach(session, resumable=not left)


async def _read(pod: "PodServer", ws: ServerConnection, session: Session) -> None:
    settings = pod.settings
    while True:
        try:
            message = await asyncio.wait_for(ws.recv(), settings.idle_timeout_seconds)
        except asyncio.TimeoutError:
            _fail(session, ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no message for {settings.idle_timeout_seconds:g} s"))
            return await _wait_forever()
        try:
            if isinstance(message, bytes):
                seq, payload = p.unpack_frame(message)
                session.accept_frame(seq, payload)
                if session.audio_seconds > settings.max_session_seconds:
                    raise ProtocolError(ErrorCode.SESSION_TOO_LONG, f"session exceeds {settings.max_session_seconds:g} s of audio")
                await session.wait_for_backlog(settings.max_backlog_seconds)
            else:
                msg = p.parse_client_message(message)
                if isinstance(msg, p.Keepalive):
                    session.last_activity = time.monotonic()  # the idle wait above restarts: any message does
                elif isinstance(msg, p.Flush):
                    session.request_flush()
                elif isinstance(msg, p.Configure):
                    session.configure(msg)
                    config = session.stream.config
                    await ws.send(p.encode(p.configured(config.partials, config.prompt,
                                                        round(config.final_silence * 1000))))
                elif isinstance(msg, p.End):
                    session.finish()
                    return await _wait_forever()
                else:
                    raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'{type(msg).__name__.lower()}' only opens a session")
        except ProtocolError as exc:
            pod.metrics.refusals.labels(exc.code).inc()
            _fail(session, exc)
            return await _wait_forever()


def _fail(session: Session, exc: ProtocolError) -> None:
    log.info("session %s: %s: %s", session.id, exc.code, exc.message)
    session.finish(exc.close_code, exc)


async def _wait_forever() -> None:
    """The reader's work is done; it stays until the writer closes the socket."""
    await asyncio.Event().wait()


async def _write(ws: ServerConnection, session: Session, cursor: int) -> None:
    partial_sent = session.partial_version
    acked: tuple = (-1, -1, 0.0)  # nothing applied yet: nothing to acknowledge
    loop = asyncio.get_running_loop()
    next_ack = loop.time()
    while True:
        session.changed.clear()
        # Taken before sending: every final the ack vouches for is in this round.
        ack = session.ack()
        for event in session.events_from(cursor):
            cursor += 1
            if isinstance(event, FinalEvent):
                words = ([(w.text.strip(), w.start, w.end, w.probability) for w in event.words]
                         if session.start.word_timestamps else None)
                await ws.send(p.encode(p.final(event.segment_id, event.text, event.start, event.end, words)))
            elif isinstance(event, SpeechEvent):
                await ws.send(p.encode(p.speech_started(event.at) if event.started else p.speech_stopped(event.at)))
            elif isinstance(event, FlushedEvent):
                await ws.send(p.encode(p.flushed(list(event.segments))))
            elif isinstance(event, WarningEvent):
                await ws.send(p.encode(p.warning(event.code, event.message, first=event.first, last=event.last)))
            elif isinstance(event, EndEvent):
                if event.error is not None:
                    await ws.send(p.encode(event.error.to_message()))
                await ws.send(p.encode(p.ack(*session.ack())))
                await ws.send(p.encode(p.end(event.segments, event.audio_seconds)))
                return
        if session.partial_version != partial_sent and session.partial is not None:
            partial_sent = session.partial_version
            pe = session.partial
            await ws.send(p.encode(p.partial(pe.text, pe.start, pe.end)))
        if ack != acked and loop.time() >= next_ack:
            acked = ack
            next_ack = loop.time() + ACK_INTERVAL
            await ws.send(p.encode(p.ack(*ack)))
        try:
            await asyncio.wait_for(session.changed.wait(), ACK_INTERVAL)
        except asyncio.TimeoutError:
            pass


async def refuse(ws: ServerConnection, exc: ProtocolError) -> None:
    try:
        await ws.send(p.encode(exc.to_message()))
        await ws.close(exc.close_code, exc.code)
    except ConnectionClosed:
        pass


__all__ = ["serve_native", "refuse", "InvalidToken"]
