"""Clients that misbehave at the worst moment: the pod frees what they held and serves the rest."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.devset import assert_as_accurate_as_offline, clips
from tests.integration.pod_http import http_get
from tests.integration.wire import collect, errors, open_session, pcm16_frames, start
from voxfleet import protocol as p
from voxfleet.client import transcribe

pytestmark = pytest.mark.integration

DROPPED = 4
"""Clients that leave right behind their `start`, per way of leaving: twice the pod's slots."""


def frame(opcode: int, payload: bytes) -> bytes:
    """One client frame (masked with a zero key, which leaves the payload as it is), up to 64 KiB."""
    if len(payload) < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    return header + b"\0\0\0\0" + payload


async def raw_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection made by hand, so what follows the handshake is exactly what the test writes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port).encode())
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101"), response
    return reader, writer


async def leave_behind_start(port: int, how: str) -> None:
    """`start`, and in the same write (so the pod reads both at once) the way this client leaves."""
    reader, writer = await raw_open(port)
    tail = {"close": frame(0x8, struct.pack("!H", 1000)), "bad-utf8": frame(0x1, b"\xff\xfe"), "fin": b"",
            "reset": b""}[how]
    if how == "reset":  # SO_LINGER 0: close() sends a TCP reset
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.write(frame(0x1, start().encode()) + tail)
    if how == "fin":
        writer.write_eof()
    writer.close()


def active_sessions(pod) -> int:
    code, body = http_get(pod.http + "/status")
    assert code == 200, body
    return json.loads(body)["active_sessions"]


@pytest.mark.parametrize("how", ["close", "bad-utf8", "fin", "reset"])
async def test_a_client_gone_right_after_start_frees_its_slot(pod_factory, how):
    # Resume grace 1 s: a session whose `ready` went out before the pod saw the drop is held that long
    # for a resume; one whose `ready` could not be sent has no token to come back with.
    pod = pod_factory("--max-sessions", "2", "--resume-grace-seconds", "1")
    for _ in range(DROPPED):
        await leave_behind_start(pod.port, how)
    for _ in range(300):  # the leak this guards against lasted for ever; 30 s is a bound, not a timing
        if active_sessions(pod) == 0:
            break
        await asyncio.sleep(0.1)
    assert active_sessions(pod) == 0
    ws, ready = await open_session(pod.url)  # the slots are free for a real client
    assert ready["type"] == "ready"
    await ws.close()


BACKLOG_LIMIT = 8.0
"""--max-backlog-seconds for the fast-sender test: a few utterances, more than the context a session holds."""


async def test_a_fast_sender_is_held_to_its_backlog_limit_queued_finals_included(pod_factory):
    pod = pod_factory("--max-backlog-seconds", str(BACKLOG_LIMIT), "--max-window-seconds", "5")
    frames = pcm16_frames(clips("en_librivox_sonnet001")[0].path)  # 53 s of read speech, as fast as it goes
    acks: list[dict] = []
    async with connect(pod.url, max_size=None) as ws:
        await ws.send(start())
        assert json.loads(await ws.recv())["type"] == "ready"

        async def read() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "ack":
                    acks.append(message)

        reader = asyncio.create_task(read())
        for seq, frame in enumerate(frames):
            await ws.send(p.pack_frame(seq, frame))
        await ws.send(p.encode(p.END))
        await asyncio.wait_for(reader, 300)
    assert acks and acks[-1]["seq"] == len(frames) - 1
    # Every ack: the audio applied less the audio final is the undecoded backlog; the pod stops reading
    # past the limit (one frame may land on top, and acks are sampled between frames).
    worst = max((a["seq"] + 1) * 0.1 - a["committed_seconds"] for a in acks[:-1])
    assert worst <= BACKLOG_LIMIT + 0.2, (worst, acks)


async def http_status(port: int, request: str) -> int:
    """The status code a raw HTTP request gets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(line.split()[1])


def upgrade_request(port: int, *extra: str) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = [f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
               "Sec-WebSocket-Version: 13", *extra]
    return "GET / HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"


def plain_request(port: int, method: str, path: str) -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"


async def test_a_repeated_upgrade_header_or_a_write_method_is_refused_not_a_crash(pod):
    assert await http_status(pod.port, upgrade_request(pod.port, "Upgrade: websocket")) == 400
    for method in ("POST", "DELETE", "PUT"):
        assert await http_status(pod.port, plain_request(pod.port, method, "/status")) == 405, method
    assert await http_status(pod.port, plain_request(pod.port, "HEAD", "/healthz")) == 200
    ws, ready = await open_session(pod.url)  # and the pod serves on
    await ws.close()


async def test_a_bad_frame_held_for_reordering_is_reported_when_end_releases_it(pod):
    ws, _ = await open_session(pod.url, encoding="float32")
    await ws.send(p.pack_frame(0, struct.pack("<4f", 0.0, 0.1, -0.1, 0.0)))
    await ws.send(p.pack_frame(2, struct.pack("<4f", 0.0, float("nan"), 0.0, 0.0)))  # held: frame 1 is missing
    await ws.send(p.encode(p.END))  # releases it
    messages, code = await collect(ws)
    assert errors(messages) == ["bad_frame"] and code == 1007, (messages, code)
    assert messages[-1]["type"] == "end"  # the session still ends in order after the error


# --- a bounded fuzz beside a healthy session ------------------------------------------------

FUZZ_CASES = 240
"""Malformed sessions per run (seeded: the same inputs every run), 8 at a time."""
DOCUMENTED_CLOSES = {1000, 1002, 1003, 1007, 1008, 1009, 1013}
"""docs/protocol.md: what bad input may get. Never 1011 (the pod failed) or a dropped connection."""
FUZZ_MAX_FRAME = 65536


def fuzz_case(rng) -> list[str | bytes]:
    """The messages of one malformed session, from a seeded generator, ending with `end` (a junk value
    that happens to be valid, such as language None, opens a real session, which must end too)."""
    return _fuzz_messages(rng) + [p.encode(p.END)]


def _fuzz_messages(rng) -> list[str | bytes]:
    def junk_value():
        return rng.choice([None, True, -1, 0, 2**63, 1.5, float("1e308"), "", "x" * rng.randint(1, 3000), [], {},
                           [1, 2], {"a": {"b": [None]}}, "16000", "\u0000", "pcm16\u202e"])

    good = {"type": "start", "sample_rate": 16000, "encoding": "pcm16", "channels": 1}
    kind = rng.randrange(8)
    if kind == 0:  # random bytes first
        return [rng.randbytes(rng.randint(0, 64))]
    if kind == 1:  # random text first
        return [rng.randbytes(rng.randint(1, 64)).decode("latin-1")]
    if kind == 2:  # a start with one field of a wrong kind or out of range
        bad = dict(good)
        bad[rng.choice(["type", "sample_rate", "encoding", "channels", "language", "priority", "options"])] = junk_value()
        return [json.dumps(bad)]
    if kind == 3:  # options of the wrong kinds
        return [json.dumps({**good, "options": {rng.choice(["partials", "prompt", "word_timestamps", "previous_text"]):
                                                junk_value()}})]
    if kind == 4:  # a resume with a junk token or counters
        return [json.dumps({"type": "resume", "token": rng.choice(["", "a.b", "x" * 5000, "..", "\u00e9.\u00e9"]),
                            "last_seq": junk_value()})]
    messages: list[str | bytes] = [json.dumps(good)]
    if kind == 5:  # frames with random headers and lengths, some odd (not whole samples)
        for _ in range(rng.randint(1, 6)):
            messages.append(p.pack_frame(rng.choice([0, 1, 7, 2**31, 2**32 - 1]), rng.randbytes(rng.randint(0, 801))))
    elif kind == 6:  # text mid-stream that is not a message
        messages += [p.pack_frame(0, bytes(3200)), rng.choice(["{", "[]", json.dumps({"type": "start"}),
                                                               json.dumps({"type": "hello"}), "null"])]
    else:  # a frame over the size limit
        messages.append(p.pack_frame(0, bytes(FUZZ_MAX_FRAME + 2)))
    return messages


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_a_bounded_fuzz_beside_a_healthy_session_gets_documented_closes_and_disturbs_nothing(pod_factory):
    pod = pod_factory("--max-frame-bytes", str(FUZZ_MAX_FRAME), "--max-sessions", "12", "--start-timeout-seconds", "2")
    [clip] = clips("en_jfk_ask_not")
    warm = [r async for r in transcribe(pod.url, clip.path) if r.final]  # the pod's lazily made threads and files
    assert warm
    fds_before = open_fds(pod.process.pid)
    healthy = asyncio.create_task(_finals(transcribe(pod.url, clip.path, realtime=True)))
    rng = random.Random(20261207)
    cases = [fuzz_case(rng) for _ in range(FUZZ_CASES)]
    gate = asyncio.Semaphore(8)
    closes: list[int | None] = []

    async def run(messages):
        async with gate:
            async with connect(pod.url, max_size=None) as ws:
                try:
                    for message in messages:
                        await ws.send(message)
                except ConnectionClosed:
                    pass
                _, code = await collect(ws, 30)
                closes.append(code)

    await asyncio.gather(*(run(c) for c in cases))
    finals = await healthy
    assert len(closes) == FUZZ_CASES
    assert set(closes) <= DOCUMENTED_CLOSES, sorted(set(closes) - DOCUMENTED_CLOSES)
    # The healthy session: every final in order, as accurate as offline decoding of the same recording.
    assert [r.segment_id for r in finals] == list(range(len(finals)))
    assert_as_accurate_as_offline((clip.name,), " ".join(r.text for r in finals))
    # The pod: alive, every session released, its file descriptors back to their level, no traceback.
    for _ in range(300):
        if active_sessions(pod) == 0:
            break
        await asyncio.sleep(0.1)
    assert active_sessions(pod) == 0
    assert open_fds(pod.process.pid) <= fds_before + 2
    assert "Traceback" not in pod.log_text()


async def _finals(results):
    return [r async for r in results if r.final]


IDLE_CONNECTIONS = 2000


async def test_two_thousand_idle_connections_are_shed_and_disturb_nothing(pod_factory):
    pod = pod_factory("--start-timeout-seconds", "3")
    [clip] = clips("en_jfk_ask_not")
    assert [r async for r in transcribe(pod.url, clip.path) if r.final]  # warm: lazily made threads and files
    fds_before = open_fds(pod.process.pid)
    idle = [await raw_open(pod.port) for _ in range(IDLE_CONNECTIONS)]  # handshakes done, no `start`
    finals = [r async for r in transcribe(pod.url, clip.path) if r.final]  # served beside them
    assert_as_accurate_as_offline((clip.name,), " ".join(r.text for r in finals))

    async def shed(reader: asyncio.StreamReader) -> bool:
        """The pod closed it (start_timeout, 1008): the stream ends."""
        try:
            while await asyncio.wait_for(reader.read(4096), 60):
                pass
        except ConnectionError:
            pass
        return True

    assert all(await asyncio.gather(*(shed(reader) for reader, _ in idle)))
    for _, writer in idle:
        writer.close()
    for _ in range(300):
        if open_fds(pod.process.pid) <= fds_before + 2:
            break
        await asyncio.sleep(0.1)
    assert open_fds(pod.process.pid) <= fds_before + 2
    assert "Traceback" not in pod.log_text()


async def test_a_handshake_that_trickles_in_is_cut_off(pod):
    """Slowloris: a header line every 5 s; websockets' open timeout (10 s) closes the handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", pod.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    closed = False
    for i in range(120):  # up to 60 s of trickling
        writer.write(b"X-Slow: %d\r\n" % i if i % 10 == 0 else b"")
        try:
            await writer.drain()
            data = await asyncio.wait_for(reader.read(4096), 0.5)
        except asyncio.TimeoutError:
            continue
        except ConnectionError:
            data = b""
        if not data or data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 5"):
            closed = True
            break
    writer.close()
    assert closed, "the pod kept a handshake open for 60 s"
    ws, _ = await open_session(pod.url)  # and it serves on
    await ws.close()


async def test_a_client_that_never_reads_disturbs_nobody_and_is_released(pod_factory):
    pod = pod_factory("--resume-grace-seconds", "1")
    [long_clip] = clips("en_librivox_sonnet001")
    stubborn = []
    for _ in range(3):  # each sends a whole recording and reads nothing back, ever
        reader, writer = await raw_open(pod.port)
        writer.write(frame(0x1, start().encode()))
        for seq, audio in enumerate(pcm16_frames(long_clip.path)):
            writer.write(frame(0x2, p.pack_frame(seq, audio)))
        writer.write(frame(0x1, p.encode(p.END).encode()))
        stubborn.append(writer)
    [clip] = clips("en_jfk_ask_not")
    finals = [r async for r in transcribe(pod.url, clip.path, realtime=True) if r.final]
    assert [r.segment_id for r in finals] == list(range(len(finals)))
    assert_as_accurate_as_offline((clip.name,), " ".join(r.text for r in finals))
    for writer in stubborn:
        writer.transport.abort()
    for _ in range(600):  # their sessions finish decoding and are released; 60 s is a bound, not a timing
        if active_sessions(pod) == 0:
            break
        await asyncio.sleep(0.1)
    assert active_sessions(pod) == 0
