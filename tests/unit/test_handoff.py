"""voxfleet.handoff: WebSockets and the HTTP API's POSTs on one port, in-process over loopback."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from voxfleet.handoff import api_runner, handoff_connection, routes_to_http


def test_requests_that_may_carry_a_body_go_to_http():
    assert routes_to_http(b"POST /v1/audio/transcriptions HTTP/1.1\r\n")
    assert routes_to_http(b"PUT /status HTTP/1.1\r\n")
    assert not routes_to_http(b"GET /v1/audio/transcriptions HTTP/1.1\r\n")
    assert not routes_to_http(b"HEAD /healthz HTTP/1.1\r\n")
    assert not routes_to_http(b"GET / HTTP/1.1\r\n")


async def test_one_port_serves_a_websocket_and_a_multipart_post():
    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def upload(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response({"bytes": len(form["file"].file.read()), "model": form["model"]})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", upload)
    runner = await api_runner(app)
    server = await serve(echo, "127.0.0.1", 0, create_connection=handoff_connection(runner.server))
    port = next(iter(server.sockets)).getsockname()[1]
    try:
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("file", b"x" * 300_000, filename="a.wav")
            form.add_field("model", "whisper-1")
            async with http.post(f"http://127.0.0.1:{port}/v1/audio/transcriptions", data=form) as response:
                assert response.status == 200
                assert await response.json() == {"bytes": 300_000, "model": "whisper-1"}
                assert response.headers["Connection"] == "close"  # the next request is routed afresh
            async with http.post(f"http://127.0.0.1:{port}/status", data=b"x") as response:
                assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"
        async with connect(f"ws://127.0.0.1:{port}/") as ws:  # the server still serves WebSockets afterwards
            await ws.send(b"\x00\x01")
            assert await ws.recv() == b"\x00\x01"
    finally:
        server.close()
        await server.wait_closed()
        await runner.cleanup()
