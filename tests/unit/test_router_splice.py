"""Connection-level choices of the router's spliced connections that need no socket."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from websockets.client import ClientProtocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from stt_router.splice import KEEPALIVE_JITTER, Outbox, PodConnection, RouterServerConnection


async def test_each_connection_pings_at_a_period_of_its_own_never_longer_than_the_interval():
    server = SimpleNamespace(logger=None)
    clients = [RouterServerConnection(ServerProtocol(), server, ping_interval=20.0) for _ in range(40)]
    pods = [PodConnection(ClientProtocol(parse_uri("ws://127.0.0.1:1/")), ping_interval=20.0) for _ in range(40)]
    periods = [c.ping_interval for c in clients + pods]
    assert all(20.0 * (1 - KEEPALIVE_JITTER) <= t <= 20.0 for t in periods)
    assert len(set(periods)) == len(periods)  # connections opened together do not ping together
    assert max(periods) - min(periods) > 20.0 * KEEPALIVE_JITTER / 2


async def test_no_keepalive_stays_no_keepalive():
    assert RouterServerConnection(ServerProtocol(), SimpleNamespace(logger=None), ping_interval=None).ping_interval is None


class Recorder:
    def __init__(self, fail: bool = False):
        self.written: list[bytes] = []
        self.fail = fail
        self.aborted = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("broken transport")
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


async def test_the_outbox_writes_at_the_end_of_the_turn_in_order_and_one_broken_transport_costs_no_other():
    outbox = Outbox(asyncio.get_running_loop())
    a, broken, b = Recorder(), Recorder(fail=True), Recorder()
    for transport, data in ((a, b"1"), (broken, b"x"), (b, b"2"), (a, b"3")):
        outbox.write(transport, data)
    assert a.written == [] and b.written == []  # nothing before the turn ends
    await asyncio.sleep(0)
    assert a.written == [b"1", b"3"] and b.written == [b"2"]
    assert broken.aborted and not a.aborted
    outbox.write(a, b"4")
    outbox.flush()  # websockets' own writes flush first: nothing queued may follow them
    assert a.written[-1] == b"4"
