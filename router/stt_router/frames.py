"""RFC 6455 frames at the byte level, for the relay's fast path (splice.py). Pure: no sockets.

Only what a relay needs: where the next frame of a byte stream starts and
ends, and how to write one unfragmented data frame. Everything else about
WebSocket (handshake, close, ping, fragmentation, validation) stays with the
websockets library, which sees whole frames only.
"""

from __future__ import annotations

import os
import struct

try:  # the C helper websockets ships; the same function in pure Python otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

FIN = 0x80
RSV = 0x70
MASKED = 0x80

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


Header = tuple[int, int, int, int]
"""(first byte: FIN, RSV bits and opcode; payload offset; payload end; mask key offset, or -1: not masked).
A plain tuple, not a NamedTuple: the fast path reads one per frame, and a NamedTuple's constructor is a
Python call."""


def read_header(buf: bytes | bytearray, pos: int) -> Header | None:
    """The header of the frame starting at `pos`, or None while it is incomplete."""
    have = len(buf) - pos
    if have < 2:
        return None
    first, second = buf[pos], buf[pos + 1]
    length = second & 0x7F
    at = pos + 2
    if length == 126:
        if have < 4:
            return None
        length = _U16.unpack_from(buf, at)[0]
        at += 2
    elif length == 127:
        if have < 10:
            return None
        length = _U64.unpack_from(buf, at)[0]
        at += 8
    if second & MASKED:
        if len(buf) < at + 4:
            return None
        return first, at + 4, at + 4 + length, at
    return first, at, at + length, -1


PLAIN_TEXT = FIN | OP_TEXT
PLAIN = frozenset({PLAIN_TEXT, FIN | OP_BINARY})
"""First bytes of a whole text or binary message in one frame, no extension bits: the only frames the
fast path takes."""


_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def _header(opcode: int, n: int, mask_bit: int) -> bytes:
    if n < 126:
        return _SHORT.pack(FIN | opcode, mask_bit | n)
    if n < 65536:
        return _MEDIUM.pack(FIN | opcode, mask_bit | 126, n)
    return _LONG.pack(FIN | opcode, mask_bit | 127, n)


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented frame as a server writes it (not masked)."""
    return _header(opcode, len(payload), 0) + payload


class MaskKeys:
    """Fresh masking keys from the OS's random source (RFC 6455 5.3: unpredictable), read 4 KiB at a
    time: one system call per 1024 frames instead of one per frame."""

    def __init__(self, keys_per_read: int = 1024):
        self._size = 4 * keys_per_read
        self._pool = b""
        self._at = self._size

    def next(self) -> bytes:
        at = self._at
        if at >= self._size:
            self._pool, at = os.urandom(self._size), 0
        self._at = at + 4
        return self._pool[at:at + 4]


_MASK_KEYS = MaskKeys()


def client_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One unfragmented frame as a client writes it: masked with a fresh random key (RFC 6455 5.3)."""
    if mask is None:
        mask = _MASK_KEYS.next()
    return b"".join((_header(opcode, len(payload), MASKED), mask, apply_mask(payload, mask)))
