"""WhisperLive-compatible front end (placeholder until it is written)."""

from __future__ import annotations


def is_whisperlive(obj: dict) -> bool:
    return "uid" in obj and "type" not in obj


async def serve_whisperlive(pod, ws, options: dict) -> None:
    from voxfleet.protocol import CloseCode, ErrorCode, ProtocolError

    raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, "the WhisperLive protocol is not served yet", CloseCode.POLICY)
