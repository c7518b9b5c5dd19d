"""The router's spliced connections (router/stt_router/splice.py) over real loopback sockets.

A websockets server built on RouterServerConnection and a PodConnection client
(the two kinds the router uses) talk to plain websockets peers: what the fast
path delivers and writes must be exactly what websockets would have, and
everything it does not take must still reach websockets whole.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from stt_router import frames as f
from stt_router.splice import PodConnection, RouterServerConnection

pytestmark = pytest.mark.integration


class Spliced:
    """A server handler that splices its connection as soon as it can and records what arrives how."""

    def __init__(self) -> None:
        self.spliced: list = []
        self.received: list = []
        self.connection: RouterServerConnection | None = None
        self.ended = asyncio.Event()
        self.close_code: int | None = None

    async def __call__(self, ws: RouterServerConnection) -> None:
        self.connection = ws
        try:
            while True:
                if ws.splice(self.spliced.append):
                    await ws.unspliced()
                self.received.append(await ws.recv())
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        finally:
            self.ended.set()


async def until(predicate, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{what} never happened")


@pytest.fixture
async def spliced_server():
    handler = Spliced()
    async with serve(handler, "127.0.0.1", 0, create_connection=RouterServerConnection, max_size=1 << 16,
                     compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield handler, f"ws://127.0.0.1:{port}"


async def test_data_messages_go_to_the_callback_in_order_and_control_frames_to_websockets(spliced_server):
    handler, url = spliced_server
    async with connect(url, compression=None) as ws:
        messages = [bytes([i]) * (i * 700) for i in range(1, 30)] + ["text é", b""]
        for message in messages:
            await ws.send(message)
        pong = await ws.ping(b"still there?")
        await asyncio.wait_for(pong, 10)  # websockets answered the ping while the data went past it
        await until(lambda: len(handler.spliced) + len(handler.received) == len(messages), "every message")
        assert handler.received + handler.spliced == messages  # whatever recv() got first, then the rest
        assert handler.spliced and handler.connection.is_spliced
        await ws.close()
    await asyncio.wait_for(handler.ended.wait(), 10)
    assert handler.close_code == 1000  # the close frame ended the splice; recv() saw it


async def test_a_fragmented_message_hands_the_stream_back_to_websockets_for_good(spliced_server):
    handler, url = spliced_server
    async with connect(url, compression=None) as ws:
        await ws.send(b"one")
        await until(lambda: handler.connection is not None and handler.connection.is_spliced, "the splice")
        await ws.send([b"fr", b"ag", b"ments"])
        await ws.send(b"after")
        await until(lambda: b"after" in handler.received, "the message after the fragments")
        assert handler.spliced == [b"one"] and handler.received == [b"fragments", b"after"]
        assert not handler.connection.is_spliced and not handler.connection.splice(handler.spliced.append)


async def test_invalid_utf8_and_oversize_messages_close_as_websockets_closes(spliced_server):
    handler, url = spliced_server
    async with connect(url, compression=None) as ws:
        await ws.send(b"one")
        await until(lambda: handler.connection is not None and handler.connection.is_spliced, "the splice")
        ws.transport.write(bytes([0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28]))  # masked text frame, invalid UTF-8
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1007
    handler.ended.clear()
    async with connect(url, compression=None, max_size=None) as ws:
        await ws.send(b"one")
        await until(lambda: handler.connection.is_spliced, "the splice")
        await ws.send(b"\0" * ((1 << 16) + 1))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1009


async def test_held_reading_delivers_nothing_until_released(spliced_server):
    handler, url = spliced_server
    async with connect(url, compression=None) as ws:
        await ws.send(b"one")
        await until(lambda: handler.spliced == [b"one"], "the first message")
        handler.connection.hold_reading("test")
        await ws.send(b"two")
        await asyncio.sleep(0.2)
        assert handler.spliced == [b"one"]
        handler.connection.release_reading("test")
        await until(lambda: handler.spliced == [b"one", b"two"], "the held message")


async def test_send_now_writes_frames_plain_websockets_peers_accept():
    """The client side masks (a websockets server refuses unmasked client frames); the server side does not."""
    got: list = []

    async def echo(ws) -> None:
        async for message in ws:
            got.append(message)
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=PodConnection, compression=None,
                           max_size=None) as pod:
            sent = [b"\x01" * 70000, "ack é", b"\x02" * 200]
            for message in sent:
                assert pod.send_now(message)
            echoed = [await asyncio.wait_for(pod.recv(), 10) for _ in sent]
    assert got == sent and echoed == sent
    assert not pod.send_now(b"after close")

    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=PodConnection, compression=None) as pod:
            assert pod.send_now(b"queued")  # written at the end of the loop's turn...
            await pod.send(b"sent")  # ...but websockets' own write goes after it all the same
            assert [await asyncio.wait_for(pod.recv(), 10) for _ in range(2)] == [b"queued", b"sent"]

    handler = Spliced()
    async with serve(handler, "127.0.0.1", 0, create_connection=RouterServerConnection, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            await ws.send(b"hello")
            await until(lambda: handler.connection is not None and handler.connection.is_spliced, "the splice")
            assert handler.connection.send_now("to the client")
            assert await asyncio.wait_for(ws.recv(), 10) == "to the client"
            with pytest.raises(ConnectionClosedOK):
                await ws.close()
                await ws.recv()


async def test_a_refused_handshake_fails_at_once_with_its_status():
    """A server that answers the upgrade with an HTTP error and a body: the body is not read as frames."""
    from websockets.exceptions import InvalidStatus

    async def refuse(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"no WebSocket endpoint here; connect to /\n" * 3
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{port}/nowhere", create_connection=PodConnection, open_timeout=10)
    assert refused.value.response.status_code == 404


async def raw_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that does only the upgrade: what it writes and answers is the test's choice (no automatic pong)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    return reader, writer


async def read_frames(reader: asyncio.StreamReader, got: list[tuple[int, bytes]]) -> None:
    """(opcode, payload) of every frame a server sends (unmasked), until it closes."""
    while True:
        first, second = await reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        got.append((first & 0x0F, await reader.readexactly(n)))


async def test_keepalive_pings_only_a_quiet_connection_and_fails_it_when_the_pong_is_late():
    handler = Spliced()
    async with serve(handler, "127.0.0.1", 0, create_connection=RouterServerConnection, compression=None,
                     ping_interval=1.0, ping_timeout=0.5) as server:
        reader, writer = await raw_websocket(server.sockets[0].getsockname()[1])
        got: list[tuple[int, bytes]] = []
        frames = asyncio.create_task(read_frames(reader, got))
        for i in range(50):  # 2.5 s of traffic, a frame every 50 ms: over two ping periods
            writer.write(f.client_frame(f.OP_BINARY, bytes([i])))
            await asyncio.sleep(0.05)
        await until(lambda: len(handler.spliced) + len(handler.received) == 50, "every frame")
        assert got == []  # a connection in use is not pinged
        await until(lambda: any(op == f.OP_PING for op, _ in got), "a ping once the connection is quiet")
        await until(lambda: any(op == f.OP_CLOSE for op, _ in got), "the close after an unanswered ping")
        close = next(payload for op, payload in got if op == f.OP_CLOSE)
        assert struct.unpack("!H", close[:2])[0] == 1011
        frames.cancel()
        writer.close()
