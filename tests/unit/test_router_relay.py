"""The relay's order of frames: sent directly once the pod is up to date, never ahead of a replay.

Fake connections (a queue in, a list out, a gate that holds awaited sends as a full socket would) and a
fake router around the real NativeRelay and RelayState: no sockets, no clock. Every test runs twice: with
connections that read through recv() only, and with spliced ones (messages handed to the relay's
callback as they arrive, as splice.py does; anything else still through recv()).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from stt_router.metrics import RouterMetrics
from stt_router.placement import PodView
from stt_router.relay import NativeRelay
from stt_router.replay import RelayState
from stt_router.settings import RouterSettings
from stt_router.tokens import Pin, RouterTokens, signer_for
from voxfleet import protocol as p

AUDIO = b"\x00\x00" * 1600
CLOSED_NORMALLY = object()
DIED = object()


class FakeConnection:
    spliceable = False  # set per test run by the `mode` fixture

    def __init__(self) -> None:
        self.sent: list = []
        self.holds: set[str] = set()
        self.paused = False
        self.on_write_pause = None
        self._sink = None
        self._spliced: asyncio.Future | None = None
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.gate = asyncio.Event()
        self.gate.set()
        self.close_code: int | None = None
        self.state = SimpleNamespace(name="OPEN")
        self.transport = None

    async def send(self, message) -> None:
        await self.gate.wait()
        if self.close_code is not None:
            raise ConnectionClosedError(None, None)
        self.sent.append(message)

    async def recv(self):
        item = await self.inbox.get()
        if isinstance(item, BaseException):
            raise item
        if item is CLOSED_NORMALLY:
            self.close_code, self.state.name = 1000, "CLOSED"
            raise ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)
        if item is DIED:
            self.close_code, self.state.name = 1006, "CLOSED"
            raise ConnectionClosedError(None, None)
        return item

    def deliver(self, item) -> None:
        """What arrives next: to the spliced callback when it is a message, else to recv()."""
        if self._sink is not None and isinstance(item, (bytes, str)) and self.inbox.empty():
            self._sink(item)
            return
        if self._sink is not None:
            self._sink = None
            self._spliced.set_result(None)
        self.inbox.put_nowait(item)

    def splice(self, on_message) -> bool:
        if not self.spliceable or not self.inbox.empty() or self.close_code is not None:
            return False
        self._sink = on_message
        self._spliced = asyncio.get_running_loop().create_future()
        return True

    async def unspliced(self) -> None:
        await self._spliced

    @property
    def is_spliced(self) -> bool:
        return self._sink is not None

    def send_now(self, message) -> bool:
        if self.close_code is not None:
            return False
        self.sent.append(message)
        return True

    def hold_reading(self, reason: str) -> None:
        self.holds.add(reason)

    def release_reading(self, reason: str) -> None:
        self.holds.discard(reason)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.inbox.get()
        if item is CLOSED_NORMALLY:
            self.close_code, self.state.name = 1000, "CLOSED"
            raise StopAsyncIteration
        if item is DIED:
            self.close_code, self.state.name = 1006, "CLOSED"
            raise ConnectionClosedError(None, None)
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code, self.state.name = code, "CLOSED"

    def seqs(self) -> list[int]:
        return [p.unpack_frame(m)[0] for m in self.sent if isinstance(m, bytes)]


class FakeRouter:
    def __init__(self) -> None:
        self.settings = RouterSettings(pods="ws://127.0.0.1:1", anonymous=True)
        self.metrics = RouterMetrics()
        self.tokens = RouterTokens(signer_for(["test"]), 60)
        self.pool = SimpleNamespace(lost=lambda name: None)
        self.next_pods: list[FakeConnection] = []

    def release_pod(self, pod) -> None:
        pass

    def remember(self, pin) -> None:
        pass

    def forget(self, session_id) -> None:
        pass

    async def open_leg(self, first, priority, **kwargs):
        ws = self.next_pods.pop(0)
        return PodView("pod-1", "ws://127.0.0.1:2", 1), ws, {"type": "ready", "resume_token": "tok1"}, ""


@pytest.fixture(autouse=True, params=["recv", "spliced"])
def mode(request, monkeypatch):
    monkeypatch.setattr(FakeConnection, "spliceable", request.param == "spliced")
    return request.param


async def until(predicate, what: str) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    pytest.fail(f"{what} never happened")


def frame(seq: int) -> bytes:
    return p.pack_frame(seq, AUDIO)


async def start_relay(router: FakeRouter):
    client, pod_ws = FakeConnection(), FakeConnection()
    state = RelayState.new(Pin("sid", "pod-0", "ws://127.0.0.1:1", "tok0"), 30.0, 1 << 30)
    relay = NativeRelay(router, client, state)
    task = asyncio.create_task(relay.run(PodView("pod-0", "ws://127.0.0.1:1", 0), pod_ws))
    return relay, client, pod_ws, task


async def test_an_up_to_date_pod_gets_each_frame_straight_from_the_client_reader():
    router = FakeRouter()
    relay, client, pod_ws, task = await start_relay(router)
    sent = [frame(seq) for seq in range(10)]
    for message in sent:
        client.deliver(message)
    await until(lambda: len(pod_ws.sent) == 10, "ten frames at the pod")
    assert relay._live is pod_ws
    assert all(a is b for a, b in zip(pod_ws.sent, sent))  # as the client sent them: no copy
    pod_ws.deliver(p.encode(p.ack(9, 9, 1.0)))
    await until(lambda: client.sent, "the client's ack")
    assert client.sent == [p.encode(p.ack(9, 9, 1.0))] and len(relay.state.tail) == 0
    client.deliver(p.encode(p.END))
    await until(lambda: len(pod_ws.sent) == 11, "'end' at the pod")
    assert pod_ws.sent[-1] == p.encode(p.END)
    pod_ws.deliver(p.encode(p.end(0, 1.0)))
    pod_ws.deliver(CLOSED_NORMALLY)
    await asyncio.wait_for(task, 5)
    assert client.sent[-1] == p.encode(p.end(0, 1.0)) and client.close_code == 1000


async def test_frames_that_arrive_during_a_replay_wait_their_turn():
    router = FakeRouter()
    relay, client, first_pod, task = await start_relay(router)
    for seq in range(5):
        client.deliver(frame(seq))
    await until(lambda: first_pod.seqs() == [0, 1, 2, 3, 4], "frames at the first pod")
    second_pod = FakeConnection()
    second_pod.gate.clear()  # its socket is full: the replay stalls on the first frame
    router.next_pods.append(second_pod)
    first_pod.deliver(DIED)
    await until(lambda: relay.pod_ws is second_pod, "the failover")
    for seq in range(5, 8):  # the client goes on meanwhile
        client.deliver(frame(seq))
    await until(lambda: len(relay.state.tail) == 8, "new frames in the tail")
    assert relay._live is None and second_pod.sent == []
    second_pod.gate.set()
    await until(lambda: len(second_pod.seqs()) == 8, "the replay")
    for seq in range(8, 10):
        client.deliver(frame(seq))
    await until(lambda: len(second_pod.seqs()) == 10, "frames after the replay")
    assert second_pod.seqs() == list(range(10))  # in order, each once
    assert relay._live is second_pod
    assert [m["type"] for m in map(p.decode_json, client.sent)] == ["token"]
    client.deliver(ConnectionClosed(None, None))  # the client is lost: the pod keeps the session
    await asyncio.wait_for(task, 5)


async def test_a_frame_sent_straight_to_a_pod_that_just_died_goes_to_the_next_pod():
    router = FakeRouter()
    relay, client, first_pod, task = await start_relay(router)
    client.deliver(frame(0))
    await until(lambda: first_pod.seqs() == [0], "the first frame")
    first_pod.close_code = 1006  # its socket is gone; its reader has not noticed yet
    client.deliver(frame(1))  # the direct send fails
    await until(lambda: len(relay.state.tail) == 2, "frame 1 read")
    assert first_pod.seqs() == [0] and relay._live is None
    second_pod = FakeConnection()
    router.next_pods.append(second_pod)
    first_pod.deliver(DIED)
    await until(lambda: relay.pod_ws is second_pod, "the failover")
    client.deliver(frame(2))
    await until(lambda: len(second_pod.seqs()) == 3, "the replay and the next frame")
    assert second_pod.seqs() == [0, 1, 2]
    client.deliver(ConnectionClosed(Close(1000, ""), None))
    await asyncio.wait_for(task, 5)
    assert second_pod.close_code == 1000  # a client that left normally ends the pod session


async def test_a_full_replay_tail_stops_reading_the_client_until_the_pod_commits(mode):
    router = FakeRouter()
    client, pod_ws = FakeConnection(), FakeConnection()
    state = RelayState.new(Pin("sid", "pod-0", "ws://127.0.0.1:1", "tok0"), 0.25, 1 << 30)  # 3 frames of 0.1 s
    relay = NativeRelay(router, client, state)
    task = asyncio.create_task(relay.run(PodView("pod-0", "ws://127.0.0.1:1", 0), pod_ws))
    for seq in range(3):
        client.deliver(frame(seq))
    await until(lambda: pod_ws.seqs() == [0, 1, 2], "three frames at the pod")
    assert state.tail.full
    client.deliver(frame(3))
    await asyncio.sleep(0.01)
    if mode == "spliced":
        assert "tail full" in client.holds  # the transport stops reading the client
    else:
        assert pod_ws.seqs() == [0, 1, 2]  # the reader waits for room
    pod_ws.deliver(p.encode(p.ack(2, 2, 0.3)))
    await until(lambda: pod_ws.seqs() == [0, 1, 2, 3], "the next frame")
    assert not client.holds
    client.deliver(ConnectionClosed(None, None))
    await asyncio.wait_for(task, 5)


async def test_a_client_that_reads_slowly_holds_the_pod_reader():
    router = FakeRouter()
    relay, client, pod_ws, task = await start_relay(router)
    client.deliver(frame(0))
    await until(lambda: pod_ws.seqs() == [0], "the first frame")
    client.on_write_pause(True)  # what the client's transport says when its buffer fills
    assert "client slow" in pod_ws.holds
    client.on_write_pause(False)
    assert not pod_ws.holds
    client.deliver(ConnectionClosed(None, None))
    await asyncio.wait_for(task, 5)
