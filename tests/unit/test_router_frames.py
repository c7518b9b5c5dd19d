"""The fast path's frame codec against websockets' own (the reference for RFC 6455 framing)."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from stt_router import frames as f

SIZES = [0, 1, 125, 126, 3204, 65535, 65536, 70000]


def parse_with_websockets(data: bytes, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None, extensions=[])
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("websockets wanted more bytes")


@pytest.mark.parametrize("size", SIZES)
def test_frames_written_here_parse_the_same_in_websockets(size):
    payload = os.urandom(size)
    server = parse_with_websockets(f.server_frame(f.OP_BINARY, payload), mask=False)
    client = parse_with_websockets(f.client_frame(f.OP_BINARY, payload), mask=True)
    for frame in (server, client):
        assert frame.opcode is Opcode.BINARY and frame.fin and bytes(frame.data) == payload


def test_client_frames_have_fresh_masks_across_reads_of_the_random_source():
    keys = f.MaskKeys(keys_per_read=4)
    drawn = [keys.next() for _ in range(64)]  # 16 reads of the OS's random source
    assert all(len(k) == 4 for k in drawn)
    assert len(set(drawn)) > 60  # equal keys by chance: about 2**-32 per pair
    frames = {f.client_frame(f.OP_TEXT, b"x" * 10)[2:6] for _ in range(16)}
    assert len(frames) > 12


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("masked", [False, True])
def test_headers_and_payloads_read_here_match_what_websockets_wrote(size, masked):
    payload = os.urandom(size)
    data = Frame(Opcode.BINARY, payload).serialize(mask=masked, extensions=[])
    stream = b"junk" + data + b"next"
    header = f.read_header(stream, 4)
    assert header is not None
    first, payload_at, end, mask_at = header
    assert end == 4 + len(data) and end - payload_at == size
    assert first == f.FIN | f.OP_BINARY and first in f.PLAIN
    assert (mask_at >= 0) == masked
    masked_payload = stream[payload_at:end]
    assert (f.apply_mask(masked_payload, stream[mask_at:payload_at]) if masked else masked_payload) == payload


@pytest.mark.parametrize("size", [10, 300, 70000])
def test_an_incomplete_header_reads_as_none(size):
    data = Frame(Opcode.TEXT, b"a" * size).serialize(mask=True, extensions=[])
    header_len = f.read_header(data, 0)[1]
    for cut in range(header_len):
        assert f.read_header(data[:cut], 0) is None


def test_only_whole_unextended_data_frames_are_plain():
    assert f.FIN | f.OP_TEXT in f.PLAIN and f.FIN | f.OP_BINARY in f.PLAIN
    assert f.OP_BINARY not in f.PLAIN  # a first fragment
    assert f.FIN | f.OP_CONTINUATION not in f.PLAIN
    assert f.FIN | 0x40 | f.OP_TEXT not in f.PLAIN  # RSV1: compressed
    assert f.FIN | f.OP_PING not in f.PLAIN and f.FIN | f.OP_CLOSE not in f.PLAIN
    assert f.FIN | 0x3 not in f.PLAIN  # a reserved opcode