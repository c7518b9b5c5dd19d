"""One port for WebSocket sessions and the HTTP API: requests with a body go to aiohttp.

Pods and routers serve WebSockets (and their GET probes) with `websockets`,
whose HTTP parser reads no request body. The OpenAI-compatible file endpoint
is a multipart POST, so each new connection's request line is read first:
`POST /v1/...` hands the connection, bytes already read included, to an
aiohttp request handler; anything else goes on to websockets untouched. The
WebSocket hot path gains one check on its first bytes, and clients need one
base URL for everything.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from websockets.asyncio.server import ServerConnection

API_PREFIX = b"/v1/audio/"
"""Paths served by the HTTP API (POST only); every other request is the WebSocket server's."""
MAX_REQUEST_LINE = 8192
"""Bytes read while looking for the end of the request line; a longer one is left to websockets to refuse."""

HTTP, WEBSOCKET = "http", "websocket"


class _Detached:
    """What the WebSocket side holds once the HTTP side owns the transport: its cleanup must not close it."""

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True


def routes_to_http(head: bytes) -> bool:
    """Whether a request starting with `head` (its request line at least) is the HTTP API's."""
    method, _, rest = head.partition(b" ")
    return method == b"POST" and rest.startswith(API_PREFIX)


def handoff_connection(http_factory: Callable[[], asyncio.Protocol]):
    """A `create_connection` for websockets' `serve` that gives HTTP API requests to `http_factory`'s protocols.

    `http_factory` is an aiohttp `web.Server` (an `AppRunner`'s `.server`):
    calling it makes one request handler protocol.
    """

    class HandoffConnection(ServerConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._head = b""
            self._route: asyncio.Future[str] = self.loop.create_future()

        def data_received(self, data: bytes) -> None:
            if self._route.done():
                return super().data_received(data)
            self._head += data
            if b"\r\n" not in self._head and len(self._head) < MAX_REQUEST_LINE:
                return  # the request line is not complete yet
            head, self._head = self._head, b""
            if routes_to_http(head):
                transport = self.transport
                protocol = http_factory()
                transport.set_protocol(protocol)
                protocol.connection_made(transport)
                self.transport = _Detached()
                self._route.set_result(HTTP)
                protocol.data_received(head)
            else:
                self._route.set_result(WEBSOCKET)
                super().data_received(head)

        async def handshake(self, *args, **kwargs) -> None:
            await asyncio.wait([self._route, self.connection_lost_waiter], return_when=asyncio.FIRST_COMPLETED)
            if self._route.done() and self._route.result() == HTTP:
                return  # not OPEN: websockets drops this connection object; aiohttp serves the socket
            await super().handshake(*args, **kwargs)

    return HandoffConnection
