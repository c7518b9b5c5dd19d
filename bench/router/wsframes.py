"""The least of RFC 6455 that the load generator and the stand-in pod need, sans I/O.

Why not the `websockets` library, as the router does? The router is what this
benchmark measures, on a 2-core machine that also runs the load generator and
the stand-in pods. Every microsecond those spend per frame is taken from the
router (and from nginx), so both ends speak WebSocket through this module:
handshakes as bytes, frames built with one header per message, a parser that
unmasks with websockets' C `apply_mask`. Client frames are masked as the RFC
requires (a random key per connection); the audio payload starts at offset 4,
a multiple of the key length, so it is masked once per connection and only
the 4-byte sequence header is masked per frame.

It is not a general WebSocket implementation: no extensions, no subprotocols,
no UTF-8 validation, and it must never be used outside bench/.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

from websockets.frames import apply_mask  # the C speedup when built, pure Python otherwise

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

MAX_MESSAGE_BYTES = 1 << 20
"""Larger messages are a protocol error here (the benchmark's messages are a few KiB)."""

MAX_HEAD_BYTES = 16 * 1024
"""An HTTP head (request or response) longer than this is refused."""


class WsError(Exception):
    """The peer broke the protocol (as far as this module checks it)."""


# --- handshakes ----------------------------------------------------------------


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def client_request(host: str, port: int, path: str, key: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: voxfleet-bench\r\n\r\n").encode()


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """(first line, headers with lower-case names) of an HTTP head without its blank line."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def check_response(head: bytes, key: str) -> None:
    """Raise WsError unless `head` is the server's 101 for our `key`."""
    first, headers = parse_head(head)
    parts = first.split()
    if len(parts) < 2 or parts[1] != "101":
        raise WsError(f"handshake refused: {first!r}")
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise WsError("handshake: wrong Sec-WebSocket-Accept")


def server_response(key: str) -> bytes:
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_for(key)}\r\nServer: voxfleet-standin\r\n\r\n").encode()


def http_response(status: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


# --- frames --------------------------------------------------------------------


def _header(opcode: int, length: int, masked: bool) -> bytes:
    first = 0x80 | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return struct.pack("!BB", first, mask_bit | length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    return struct.pack("!BBQ", first, mask_bit | 127, length)


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked frame (server to client)."""
    return _header(opcode, len(payload), False) + payload


def client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """A masked frame (client to server)."""
    return _header(opcode, len(payload), True) + mask + apply_mask(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:120]


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


class AudioFramer:
    """Binary frames `seq (uint32 BE) + audio`, masked, for one connection: the audio is masked once."""

    def __init__(self, audio: bytes, mask: bytes):
        self.mask = mask
        self.head = _header(OP_BINARY, 4 + len(audio), True) + mask
        self.masked_audio = apply_mask(audio, mask)  # offset 4 is a multiple of the key length
        self._mask_int = int.from_bytes(mask, "big")

    def frame(self, seq: int) -> bytes:
        return self.head + (seq ^ self._mask_int).to_bytes(4, "big") + self.masked_audio


class FrameParser:
    """Incremental frame parser: feed bytes, get complete messages `(opcode, payload)`.

    Control frames come out as they arrive (also between the fragments of a
    message); fragmented data messages come out whole."""

    def __init__(self, expect_masked: bool):
        self.expect_masked = expect_masked
        self.buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_op = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            fin, opcode, masked, length = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            if bool(masked) != self.expect_masked:
                raise WsError("frame masking is wrong for this direction")
            at = pos + 2
            if length == 126:
                if end - at < 2:
                    break
                length = (buf[at] << 8) | buf[at + 1]
                at += 2
            elif length == 127:
                if end - at < 8:
                    break
                length = int.from_bytes(buf[at:at + 8], "big")
                at += 8
            if length > MAX_MESSAGE_BYTES:
                raise WsError(f"frame of {length} bytes")
            if masked:
                if end - at < 4:
                    break
                mask = bytes(buf[at:at + 4])
                at += 4
            if end - at < length:
                break
            payload = bytes(buf[at:at + length])
            if masked:
                payload = apply_mask(payload, mask)
            pos = at + length
            if opcode >= 0x8:
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                self._fragments.append(payload)
                if fin:
                    out.append((self._fragment_op, b"".join(self._fragments)))
                    self._fragments = []
            elif not fin:
                self._fragment_op, self._fragments = opcode, [payload]
            else:
                out.append((opcode, payload))
        if pos:
            del buf[:pos]
        return out
