"""OpenAI Realtime transcription sessions through the router (`/v1/realtime`, issue #19).

The pod serves OpenAI's Realtime API in transcription mode (stt_pod/realtime.py); the
router takes the same WebSocket on its own port and pins it to a pod:

- the API key comes from the handshake (`Authorization: Bearer`, as the official clients
  send it, or `X-API-Key`, `?api_key=`); a refusal is an OpenAI `error` event, then the
  close the router gives every session it refuses (1008 for keys, 1013 for a full queue);
- admission is that of every session: one slot, the key's priority class, reserved
  capacity, the queue. A queued client hears nothing until its pod speaks (OpenAI's
  protocol has no queue event); the server speaks first, so the pod's `session.created`
  (or `transcription_session.created`) is the first event the client gets;
- the pod leg is `ws://<pod>/v1/realtime?<the client's query>` (without an `api_key`),
  with the client's `OpenAI-Beta` header; a pod that answers it full or draining (an
  `error` event, then 1013) is passed over for another, as for the other protocols.
  Nothing of the client's has been relayed by then;
- from then on messages are relayed one for one, text and binary, both ways
  (`RealtimeRelay`), and the pod's close code and reason reach the client.

No failover: the protocol has no sequence numbers or resume, so once the client's events
go to a pod the session lives and dies there; a pod that fails (1011), drains (1001) or
is lost closes the client with its code (1011 for a connection lost without a close).
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

from stt_router.relay import WhisperLiveRelay
from voxfleet.protocol import ErrorCode

PATH = "/v1/realtime"
PROTOCOL = "realtime"
"""The protocol label of these sessions in the router's metrics."""
CREATED = frozenset({"session.created", "transcription_session.created"})
"""The pod's first event when it takes the session."""
FORWARDED_HEADERS = ("OpenAI-Beta",)
"""Handshake headers the pod leg carries (`OpenAI-Beta: realtime=v1` selects the beta events)."""
SERVER_SIDE = frozenset({ErrorCode.INTERNAL, ErrorCode.FULL, ErrorCode.DRAINING, ErrorCode.QUEUE_FULL,
                         "queue_timeout"})
"""Error codes that are the service's, not the request's (OpenAI's `server_error` type)."""
REFUSED = frozenset({ErrorCode.FULL, ErrorCode.DRAINING})


def is_realtime_path(path: str) -> bool:
    """`/v1/realtime`, with any query (a trailing slash too)."""
    return urlsplit(path).path.rstrip("/") == PATH


def pod_path(path: str) -> str:
    """The pod leg's path: `/v1/realtime` and the client's query, less any `api_key` (the router's business)."""
    query = urlsplit(path).query
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "api_key"]
    if len(kept) == len(parse_qsl(query, keep_blank_values=True)):
        return PATH + ("?" + query if query else "")  # as the client wrote it
    return PATH + ("?" + urlencode(kept) if kept else "")


def pod_url(base: str, path: str) -> str:
    return base.rstrip("/") + pod_path(path)


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in FORWARDED_HEADERS if headers.get(name)}


def error_event(code: str, message: str) -> dict[str, Any]:
    """An OpenAI `error` event, as the pod writes them (`code`: the voxfleet error code)."""
    kind = "server_error" if code in SERVER_SIDE else "invalid_request_error"
    return {"type": "error", "event_id": "event_" + uuid.uuid4().hex[:20],
            "error": {"type": kind, "code": code, "message": message, "param": None, "event_id": None}}


def refusal(reply: Any) -> str | None:
    """The pod's first event refuses the session as full or draining: its code (else None)."""
    if not isinstance(reply, dict) or reply.get("type") != "error":
        return None
    error = reply.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if code in REFUSED else None


def opened(reply: Any) -> bool:
    return isinstance(reply, dict) and reply.get("type") in CREATED


class RealtimeRelay(WhisperLiveRelay):
    """Message-for-message relay of an OpenAI Realtime session, both ways, text and binary.

    No failover: the protocol has no sequence numbers, so audio the pod has taken cannot be
    replayed elsewhere. When the pod closes, the client is closed with its code and reason
    (a pod lost without a close frame: 1011); when the client leaves normally the pod leg is
    closed normally, otherwise dropped (the pod frees the slot either way: Realtime sessions
    are not resumable). The only retry is before the relay starts (server.open_leg): a pod
    whose first event refuses the session as full or draining is passed over."""
