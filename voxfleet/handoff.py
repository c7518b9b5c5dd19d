"""One port for WebSocket sessions and the HTTP API: requests with a body go to aiohttp.

Pods and routers serve WebSockets (and their GET probes) with `websockets`,
whose HTTP parser reads no request body. The OpenAI-compatible file endpoint
is a multipart POST, so each new connection's request line is read first:
a method other than GET or HEAD (`POST /v1/audio/...`) hands the
connection, bytes already read included, to an aiohttp request handler,
which reads bodies; GETs (WebSocket upgrades, probes) go on to websockets
untouched. The
WebSocket hot path gains one check on its first bytes, and clients need one
base URL for everything.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import web
from websockets.asyncio.server import ServerConnection

READ_ONLY = (b"GET", b"HEAD")
"""Methods websockets serves (upgrades, probes, metrics); the others, which may carry a body, go to aiohttp."""
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
    return head.partition(b" ")[0] not in READ_ONLY


async def _close_after(request: web.Request, response: web.StreamResponse) -> None:
    response.force_close()  # aiohttp prepares its headers before this hook: say it too
    response.headers["Connection"] = "close"


async def _not_allowed(request: web.Request) -> web.Response:
    return web.Response(status=405, text=f"method {request.method} not allowed here: GET only\n",
                        headers={"Allow": "GET, HEAD"})


async def api_runner(app: web.Application) -> web.AppRunner:
    """A started aiohttp runner for `app`, whose `.server` goes to `handoff_connection`.

    Every answer closes its connection: a kept-alive connection belongs to
    aiohttp, so a client's next request (a probe, a WebSocket) must come on a
    new one to be routed afresh. Handlers are cancelled when their client goes.
    """
    app.router.add_route("*", "/{path:.*}", _not_allowed)  # after the app's own routes: what they do not take
    app.on_response_prepare.append(_close_after)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    return runner


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
