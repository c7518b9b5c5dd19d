"""The router's own Python work per relayed frame, in one process, without sockets.

    python bench/router/relay_cost.py [--sessions 1000] [--rounds 40] [--relay native|forward]

Builds `--sessions` real relays (NativeRelay over the router's own spliced
client and pod connections, websockets' protocol objects underneath), with
transports that only count what is written, and lets each session relay one
audio frame (100 ms, client to pod) and the pod's ack (pod to client) per
round, going round robin over the sessions as 1000 real streams would. It
prints the CPU time per frame and ack. No system calls are in the
measurement, and one event loop turn per round (relayed frames are written at
the end of a turn): it isolates what a change to splice.py, relay.py,
replay.py or frames.py costs, which the end-to-end benchmark (run.py) can
only show through the noise of the whole machine. `--relay forward` passes
each message to the other side unchanged over the same connections: the cost
of splitting, unmasking, masking and writing frames alone, without the
replay tail and the translation.

CPU time is noisy on a shared machine; instruction counts are not. For a
stable figure, count instructions with valgrind (rounds R2 minus rounds R1
removes the set-up):

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/tmp/a python bench/router/relay_cost.py --rounds 10
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/tmp/b python bench/router/relay_cost.py --rounds 30
    cg_diff /tmp/a /tmp/b | cg_annotate /dev/stdin | head   # PROGRAM TOTALS / (20 * sessions)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "router"))

from websockets.client import ClientProtocol  # noqa: E402
from websockets.protocol import OPEN  # noqa: E402
from websockets.server import ServerProtocol  # noqa: E402
from websockets.uri import parse_uri  # noqa: E402

from stt_router import frames as f  # noqa: E402
from stt_router.metrics import RouterMetrics  # noqa: E402
from stt_router.placement import PodView  # noqa: E402
from stt_router.relay import NativeRelay  # noqa: E402
from stt_router.replay import RelayState  # noqa: E402
from stt_router.settings import RouterSettings  # noqa: E402
from stt_router.splice import _FRAMES, PodConnection, RouterServerConnection  # noqa: E402
from stt_router.tokens import Pin, RouterTokens, signer_for  # noqa: E402
from voxfleet import protocol as p  # noqa: E402

AUDIO_BYTES = 3200
POD = PodView("pod-0", "ws://127.0.0.1:1", 0)


class CountingTransport(asyncio.Transport):
    """Takes every write and keeps only the count: the socket is not what is measured here."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high=None, low=None) -> None: ...

    def get_extra_info(self, name, default=None):
        return default


class Router:
    """What a relay asks of its router, and nothing else."""

    def __init__(self) -> None:
        self.settings = RouterSettings(pods=POD.url, anonymous=True)
        self.metrics = RouterMetrics()
        self.tokens = RouterTokens(signer_for(["bench"]), 60)

    def release_pod(self, pod) -> None: ...
    def remember(self, pin) -> None: ...
    def forget(self, session_id) -> None: ...


def opened(connection):
    """A connection past its handshake: websockets OPEN, the splice splitting frames."""
    connection.connection_made(CountingTransport())
    connection.protocol.state = OPEN
    connection._mode = _FRAMES
    return connection


async def measure(sessions: int, rounds: int, relay_kind: str = "native") -> float:
    router = Router()
    server = SimpleNamespace(logger=None, handler=lambda c: asyncio.sleep(3600), handler_tasks=set())
    relays = []
    for i in range(sessions):
        client = opened(RouterServerConnection(ServerProtocol(), server))
        pod = opened(PodConnection(ClientProtocol(parse_uri(POD.url))))
        if relay_kind == "native":
            relay = NativeRelay(router, client, RelayState.new(Pin(f"s{i}", POD.name, POD.url, "t"), 30.0, 1 << 30))
            relays.append((client, pod, asyncio.create_task(relay.run(POD, pod)), relay))
        else:  # forward: each message straight to the other side, unchanged (no tail, no translation)
            client.splice(pod.send_now)
            pod.splice(client.send_now)
            relays.append((client, pod, None, None))
    for _ in range(5):
        await asyncio.sleep(0)  # the readers splice and the pod senders hand over to the client readers
    if not all((relay is None or relay._live is pod) and client.is_spliced and pod.is_spliced
               for client, pod, _, relay in relays):
        raise SystemExit("the relays did not reach their spliced, live state: nothing comparable to measure")
    audio, mask = os.urandom(AUDIO_BYTES), os.urandom(4)
    frames = [f.client_frame(f.OP_BINARY, p.pack_frame(k, audio), mask) for k in range(rounds)]
    acks = [f.server_frame(f.OP_TEXT, p.encode(p.ack(k, k, (k + 1) * 0.1)).encode()) for k in range(rounds)]
    gc.collect()
    started = time.process_time()
    for k in range(rounds):
        frame, ack = frames[k], acks[k]
        for client, pod, _, _ in relays:
            client.data_received(frame)
            pod.data_received(ack)
        await asyncio.sleep(0)  # the end of the loop's turn: the relayed frames are written (Outbox)
    spent = time.process_time() - started
    client, pod, _, _ = relays[0]
    if pod.transport.writes != rounds or client.transport.writes != rounds:
        raise SystemExit(f"expected {rounds} writes each way, got {pod.transport.writes} / {client.transport.writes}")
    for _, _, task, _ in relays:
        if task is not None:
            task.cancel()
    return spent / (sessions * rounds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000, help="relays, visited round robin (default 1000)")
    ap.add_argument("--rounds", type=int, default=40, help="frames (and acks) per session (default 40)")
    ap.add_argument("--relay", choices=("native", "forward"), default="native",
                    help="native: the router's NativeRelay (default); forward: the same connections, each message "
                         "passed to the other side unchanged: what splitting, (un)masking and writing frames cost "
                         "without the replay tail and the translation")
    args = ap.parse_args(argv)
    per = asyncio.run(measure(args.sessions, args.rounds, args.relay))
    print(f"{per * 1e6:.2f} us CPU per frame and ack ({args.relay}, {args.sessions} sessions x {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
