"""The plain-HTTP side of a voxfleet port: probes, metrics and status beside the WebSocket.

Pods and routers answer /healthz, /readyz, /metrics and /status on the port
their WebSocket clients use (websockets' `process_request`), so a probe or a
scrape needs no second listener. This is the one way they build those answers.
"""

from __future__ import annotations

import http

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NOT_FOUND = "not found: try /healthz, /readyz, /metrics, /status, or a WebSocket on /\n"


def respond(status: http.HTTPStatus, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> Response:
    data = body.encode() if isinstance(body, str) else body
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data))), ("Connection", "close")])
    return Response(status.value, status.phrase, headers, data)


def ws_urls(server) -> list[str]:
    """The ws:// address of every socket a websockets server listens on (empty before it starts)."""
    if server is None:
        return []
    return [f"ws://{host}:{port}" for host, port, *_ in (sock.getsockname() for sock in server.sockets)]


def refuse_malformed(request: Request, *single: str) -> Response | None:
    """An answer for a request no endpoint here takes, else None.

    405 for a method other than GET or HEAD: every endpoint here only reads.
    400 for a repeated header that must appear once (`single`: Upgrade,
    Authorization, ...): websockets' `Headers.get` raises on one, and
    unchecked that is a 500 and a traceback.
    """
    if request.method not in ("GET", "HEAD"):
        response = respond(http.HTTPStatus.METHOD_NOT_ALLOWED, f"method {request.method} not allowed: GET only\n")
        response.headers["Allow"] = "GET, HEAD"
        return response
    for name in single:
        if len(request.headers.get_all(name)) > 1:
            return respond(http.HTTPStatus.BAD_REQUEST, f"bad request: more than one {name} header\n")
    return None
