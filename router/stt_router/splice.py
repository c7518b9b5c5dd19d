"""WebSocket connections with a fast path for relayed data frames.

websockets costs a relay about 15-20 us per message each way (its generator
parser, the message queue, a task switch in recv(), the send lock and drain):
four times per audio frame, thousands of frames a second. These connections
split the incoming byte stream into frames themselves (frames.py) and hand
websockets whole frames only, so its parser is always at a frame boundary.
That makes a switch possible at any moment when its message queue is empty:
`splice(on_message)` sends every following plain data frame (one text or
binary message in one frame) straight to `on_message`, synchronously, from
data_received; `send_now()` writes one data frame, without websockets, at
the end of the event loop's turn (see Outbox).

Everything else still goes through websockets, as whole frames: ping, pong,
close (so pongs, the closing handshake and close codes are websockets' own;
keepalive is websockets' too, but pings only quiet connections). A data
frame the fast path does not take (fragmented, with extension bits, invalid
UTF-8 text, larger than max_size) ends the splice for good on that
connection: from that frame on websockets parses the stream and recv()
reads it, with its own errors and close codes.

`unspliced()` completes when the splice ends (that fallback, a close frame,
the connection lost); the relay then goes back to recv(), which gives what is
left or raises ConnectionClosed as usual. Reading can be held for named
reasons (a full replay tail, a slow peer) and resumes when none is left.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from typing import Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import CLIENT, OPEN

from stt_router import frames as f
from stt_router.frames import apply_mask

_TEXT, _PLAIN = f.PLAIN_TEXT, f.PLAIN

log = logging.getLogger(__name__)

Message = bytes | str

KEEPALIVE_JITTER = 0.25
"""Each connection pings at its own period, between 75 % and 100 % of the configured interval. Connections
opened together (a burst of sessions, every client resuming after a restart) would otherwise ping together
for as long as they live: a thousand keepalive round trips in one go take the router's event loop a few
hundred milliseconds, which every frame in flight waits for (bench/router, 1000 streams)."""


class Outbox:
    """Frames from send_now(), written together at the end of the event loop's turn.

    A frame written the moment it is relayed wakes its peer process for that one frame; the frames
    relayed in one turn of the event loop, written together after it, wake each peer once. A router
    behind on its reading then catches up in cheap batches instead of paying a wake-up per frame.
    A frame waits at most for the rest of the turn it was read in. At 1000 streams on one router
    process (bench/router) this took the frames' p99 from 21-110 ms to 2-3 ms at the same CPU.
    One per event loop; writes keep their order per connection (websockets' own writes flush first)."""

    _of: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Outbox]" = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "Outbox":
        outbox = cls._of.get(loop)
        if outbox is None:
            outbox = cls._of[loop] = cls(loop)
        return outbox

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._writes: list[tuple[asyncio.Transport, bytes]] = []

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        writes = self._writes
        if not writes:
            self._loop.call_soon(self.flush)
        writes.append((transport, data))

    def flush(self) -> None:
        writes = self._writes
        if writes:
            self._writes = []
            for transport, data in writes:
                try:
                    transport.write(data)
                except Exception:  # one broken connection must not cost the others their frames
                    log.exception("relayed write failed; the connection is dropped")
                    transport.abort()


_HTTP, _FRAMES, _PASS = 0, 1, 2  # before the handshake's end, splitting frames, websockets alone


class SpliceMixin:
    """The fast path; mixed into websockets' asyncio ServerConnection and ClientConnection."""

    def _splice_init(self) -> None:
        self._mode = _HTTP
        self._http_tail = b""  # the last bytes of the handshake seen, to find its end across reads
        self._http_head = b""  # its first bytes: a client goes on in frames only after "101 Switching Protocols"
        self._rest = b""  # an incomplete frame, kept until the rest arrives
        self._sink: Callable[[Message], None] | None = None
        self._spliced: asyncio.Future | None = None
        self._holds: set[str] = set()
        self._masked = self.protocol.side is CLIENT
        self._frame = f.client_frame if self._masked else f.server_frame  # a client masks what it writes
        protocol = self.protocol  # the message size limit: websockets >= 17 names it max_message_size
        self._max_size = getattr(protocol, "max_message_size", getattr(protocol, "max_size", None))
        self._outbox = Outbox.of(self.loop)
        self.on_write_pause: Callable[[bool], None] | None = None  # told when the transport's buffer fills / drains
        self._reads = 0  # reads so far: what keepalive() looks at to skip the ping of a connection in use
        if self.ping_interval is not None:
            self.ping_interval *= random.uniform(1.0 - KEEPALIVE_JITTER, 1.0)

    # --- the switch

    def splice(self, on_message: Callable[[Message], None]) -> bool:
        """Send the following data messages to `on_message`; False: not now (messages are queued) or never."""
        if self._mode != _FRAMES or self.protocol.state is not OPEN or self._sink is not None:
            return False
        queue = getattr(getattr(self, "recv_messages", None), "frames", None)
        if queue is None or len(queue):
            return False  # recv() has messages to give first (or this websockets version is unknown)
        self._sink = on_message
        self._spliced = self.loop.create_future()
        return True

    def unsplice(self) -> None:
        self._sink = None
        if self._spliced is not None and not self._spliced.done():
            self._spliced.set_result(None)

    async def unspliced(self) -> None:
        if self._spliced is not None:
            await self._spliced

    @property
    def is_spliced(self) -> bool:
        return self._sink is not None

    # --- writing

    def send_now(self, message: Message) -> bool:
        """Write one data message at the end of this loop turn (Outbox), without waiting for the buffer
        to drain; False: not open."""
        if self.protocol.state is not OPEN:
            return False
        if message.__class__ is str:
            self._outbox.write(self.transport, self._frame(f.OP_TEXT, message.encode()))
        else:
            self._outbox.write(self.transport, self._frame(f.OP_BINARY, message))
        return True

    def send_data(self) -> None:
        """websockets' own writes (pong, close, send()) go after the data frames queued before them."""
        self._outbox.flush()
        super().send_data()

    # --- flow control

    def hold_reading(self, reason: str) -> None:
        if not self._holds:
            self.transport.pause_reading()
        self._holds.add(reason)

    def release_reading(self, reason: str) -> None:
        if reason in self._holds:
            self._holds.discard(reason)
            if not self._holds and not self.transport.is_closing():
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.on_write_pause is not None:
            self.on_write_pause(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_write_pause is not None:
            self.on_write_pause(False)

    # --- keepalive

    async def keepalive(self) -> None:
        """websockets' keepalive (a ping every interval, the connection failed with 1011 when its pong is
        later than the timeout), except that a connection which received anything during the interval is
        not pinged: a streaming session's frames, acks and results show its peer is there. Only quiet
        connections pay for ping round trips (a proxy's idle timeout, which nginx also uses)."""
        seen = self._reads
        try:
            while True:
                await asyncio.sleep(self.ping_interval)
                if self._reads != seen:
                    seen = self._reads
                    continue
                pong = await self.ping()
                if self.ping_timeout is not None:
                    try:
                        async with asyncio.timeout(self.ping_timeout):
                            await pong
                    except TimeoutError:
                        async with self.send_context():
                            self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                        return
                seen = self._reads  # the pong is a read too: the next interval starts now
        except Exception:
            log.warning("keepalive ping failed", exc_info=True)

    # --- reading

    def data_received(self, data: bytes) -> None:
        self._reads += 1
        if self._mode == _PASS:
            return super().data_received(data)
        if self._mode == _HTTP:
            if len(self._http_head) < 16:
                self._http_head = (self._http_head + data)[:16]
            seen = self._http_tail + data
            end = seen.find(b"\r\n\r\n")
            if end < 0:
                self._http_tail = seen[-3:]
                return super().data_received(data)
            cut = end + 4 - len(self._http_tail)
            super().data_received(data[:cut])
            self._http_tail = b""
            data = data[cut:]
            if self._masked and not self._http_head.startswith(b"HTTP/1.1 101 "):
                self._mode = _PASS  # a refused handshake: what follows is a body, not frames
                if data:
                    super().data_received(data)
                return
            self._mode = _FRAMES
            if not data:
                return
        if self._rest:
            data = self._rest + data
            self._rest = b""
        pos = fed = 0  # data[fed:pos] is whole frames for websockets, not yet given
        n = len(data)
        max_size = self._max_size
        read_header = f.read_header
        while pos < n:
            header = read_header(data, pos)
            if header is None:
                break
            first, at, end, mask_at = header
            if max_size is not None and end - at > max_size:
                return self._pass_from(data, fed, pos)  # websockets reports it (1009)
            if end > n:
                break
            if first in _PLAIN:
                sink = self._sink
                if sink is not None:
                    message = data[at:end] if mask_at < 0 else apply_mask(data[at:end], data[mask_at:at])
                    if first == _TEXT:
                        try:
                            message = message.decode()
                        except UnicodeDecodeError:
                            return self._pass_from(data, fed, pos)  # websockets reports it (1007)
                    if fed < pos:
                        super().data_received(data[fed:pos])  # control frames that came before it
                    fed = end
                    try:
                        sink(message)
                    except Exception:  # a relay bug must not take the event loop's reader down
                        log.exception("relay callback failed; the connection is dropped")
                        self.unsplice()
                        self.transport.abort()
                        return
            elif first & 0x0F >= f.OP_CLOSE:
                if first & 0x0F == f.OP_CLOSE:
                    self.unsplice()  # recv() takes over and sees the close
            else:
                return self._pass_from(data, fed, pos)  # fragmented or extended: websockets' alone
            pos = end
        if fed < pos:
            super().data_received(data[fed:pos])
        if pos < n:
            self._rest = data[pos:]

    def _pass_from(self, data: bytes, fed: int, pos: int) -> None:
        """A frame the fast path does not take: websockets parses the stream from it on, for good."""
        if fed < pos:
            super().data_received(data[fed:pos])
        self._mode = _PASS
        self.unsplice()
        super().data_received(data[pos:])

    def connection_lost(self, exc: Exception | None) -> None:
        self.unsplice()
        super().connection_lost(exc)


class RouterServerConnection(SpliceMixin, ServerConnection):
    """A client's connection to the router."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splice_init()


class PodConnection(SpliceMixin, ClientConnection):
    """The router's connection to a pod."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splice_init()
