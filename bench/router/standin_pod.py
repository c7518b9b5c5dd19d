"""A stand-in STT pod for the router benchmark: speaks the native protocol, runs no model.

    python bench/router/standin_pod.py --port 8001 [--host 127.0.0.1] [--pod-id standin-0] [--capacity 100000]

The router benchmark measures what a proxy adds to each frame's trip, so the
pods behind it must answer at once and cost next to nothing. This one:

- answers `start` with `ready` (session id, an opaque resume token), like a pod;
- answers every binary frame `seq + audio` at once with the pod's own `ack`
  message, `{"type": "ack", "seq": S, "committed_seq": S, "committed_seconds": T}`:
  a real pod acks every 0.5 s and commits only behind its finals; this one
  commits every frame, so through a router each frame comes back as exactly
  one ack carrying its sequence number, and the router's replay tail stays
  one frame long (the router still does its whole per-frame work: parse,
  keep, forward, translate the ack, trim);
- answers `end` with `ack`, `end` and close 1000; answers pings;
- serves /healthz, /readyz and /status like stt_pod.server (a large capacity,
  free slots) and a small /metrics.

It is a benchmark fixture only: no resume, no audio checks, no limits beyond
the frame size. WebSocket framing comes from bench/router/wsframes.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repository root, for bench.common

import wsframes as wf  # noqa: E402
from bench.common.processes import raise_open_file_limit  # noqa: E402

BYTES_PER_SAMPLE = {"pcm16": 2, "float32": 4}


class StandinPod:
    def __init__(self, pod_id: str, capacity: int):
        self.pod_id = pod_id
        self.capacity = capacity
        self.sessions = 0
        self.sessions_total = 0
        self.frames_total = 0

    def status(self) -> dict:
        return {
            "pod": self.pod_id,
            "ready": True,
            "draining": False,
            "capacity": self.capacity,
            "active_sessions": self.sessions,
            "free_slots": max(0, self.capacity - self.sessions),
            "queue_length": 0,
            "model": "standin",
            "device": "none",
            "max_batch": 1,
            "frames_total": self.frames_total,
            "sessions_total": self.sessions_total,
        }

    def http(self, path: str) -> bytes:
        path = path.split("?")[0]
        if path == "/healthz":
            return wf.http_response(200, "OK", b"ok\n")
        if path == "/readyz":
            return wf.http_response(200, "OK", b"ready\n")
        if path == "/status":
            return wf.http_response(200, "OK", json.dumps(self.status()).encode() + b"\n", "application/json")
        if path == "/metrics":
            body = (f"voxfleet_pod_sessions_active {self.sessions}\n"
                    f"voxfleet_pod_sessions_capacity {self.capacity}\n"
                    f"voxfleet_pod_ready 1\n").encode()
            return wf.http_response(200, "OK", body, "text/plain; version=0.0.4; charset=utf-8")
        return wf.http_response(404, "Not Found", b"not found\n")


class Connection(asyncio.Protocol):
    """One client connection: an HTTP request, or a WebSocket session."""

    def __init__(self, pod: StandinPod):
        self.pod = pod
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.parser: wf.FrameParser | None = None
        self.session: str | None = None
        self.bytes_per_second = 32000.0
        self.audio_bytes = 0
        self.closing = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.session is not None:
            self.pod.sessions -= 1
            self.session = None

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > wf.MAX_HEAD_BYTES:
                    self.transport.close()
                return
            first, headers = wf.parse_head(bytes(self.head[:end]))
            rest = bytes(self.head[end + 4:])
            parts = first.split()
            path = parts[1] if len(parts) > 1 else "/"
            if headers.get("upgrade", "").lower() != "websocket":
                self.transport.write(self.pod.http(path))
                self.transport.close()
                return
            self.transport.write(wf.server_response(headers.get("sec-websocket-key", "")))
            self.parser = wf.FrameParser(expect_masked=True)
            data = rest
            if not data:
                return
        try:
            messages = self.parser.feed(data)
        except wf.WsError:
            self._close(1002, "protocol error")
            return
        for opcode, payload in messages:
            if opcode == wf.OP_BINARY:
                self._on_frame(payload)
            elif opcode == wf.OP_TEXT:
                self._on_text(payload)
            elif opcode == wf.OP_PING:
                self.transport.write(wf.server_frame(wf.OP_PONG, payload))
            elif opcode == wf.OP_CLOSE:
                if not self.closing:
                    self.closing = True
                    self.transport.write(wf.server_frame(wf.OP_CLOSE, payload[:2]))
                self.transport.close()
                return

    def _send_json(self, text: str) -> None:
        self.transport.write(wf.server_frame(wf.OP_TEXT, text.encode()))

    def _on_frame(self, payload: bytes) -> None:
        if self.session is None or self.closing or len(payload) < 4:
            return self._error("bad_frame", "binary frame before start or without a sequence header", 1007)
        seq = int.from_bytes(payload[:4], "big")
        self.audio_bytes += len(payload) - 4
        self.pod.frames_total += 1
        seconds = self.audio_bytes / self.bytes_per_second
        self._send_json(f'{{"type":"ack","seq":{seq},"committed_seq":{seq},"committed_seconds":{seconds:.3f}}}')

    def _on_text(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return self._error("bad_json", "not valid JSON", 1007)
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "start" and self.session is None:
            rate = int(msg.get("sample_rate", 16000))
            width = BYTES_PER_SAMPLE.get(msg.get("encoding", "pcm16"), 2)
            self.bytes_per_second = float(rate * width * int(msg.get("channels", 1)))
            self.session = uuid.uuid4().hex
            self.pod.sessions += 1
            self.pod.sessions_total += 1
            self._send_json(json.dumps({"type": "ready", "session_id": self.session,
                                        "resume_token": f"standin.{self.pod.pod_id}.{self.session}",
                                        "next_seq": 0, "resumed": False}, separators=(",", ":")))
        elif kind == "end" and self.session is not None:
            seconds = self.audio_bytes / self.bytes_per_second
            self._send_json(json.dumps({"type": "end", "segments": 0, "audio_seconds": round(seconds, 3)}))
            self._close(1000, "end of session")
        elif kind == "resume":
            self._error("unknown_session", "a stand-in pod keeps no sessions to resume", 1008)
        else:
            self._error("bad_message", f"unexpected {kind!r}", 1008)

    def _error(self, code: str, message: str, close: int) -> None:
        self._send_json(json.dumps({"type": "error", "code": code, "message": message}))
        self._close(close, code)

    def _close(self, code: int, reason: str) -> None:
        """Send our close frame; the peer's answer closes the TCP connection (or the timer does)."""
        if self.closing:
            return
        self.closing = True
        self.transport.write(wf.server_frame(wf.OP_CLOSE, wf.close_payload(code, reason)))
        asyncio.get_running_loop().call_later(5.0, self.transport.abort)


async def serve(host: str, port: int, pod_id: str, capacity: int) -> None:
    pod = StandinPod(pod_id, capacity)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(pod), host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"stand-in pod {pod_id} listening on ws://{host}:{port} (capacity {capacity})", flush=True)
    await stop.wait()
    server.close()
    print(f"stand-in pod {pod_id} stopped: {pod.sessions_total} sessions, {pod.frames_total} frames", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pod-id", default="standin-0", help="name reported on /status")
    ap.add_argument("--capacity", type=int, default=100_000, help="sessions reported as capacity on /status")
    args = ap.parse_args(argv)
    raise_open_file_limit()
    asyncio.run(serve(args.host, args.port, args.pod_id, args.capacity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
