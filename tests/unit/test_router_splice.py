"""Connection-level choices of the router's spliced connections that need no socket."""

from __future__ import annotations

from types import SimpleNamespace

from websockets.client import ClientProtocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from stt_router.splice import KEEPALIVE_JITTER, PodConnection, RouterServerConnection


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
