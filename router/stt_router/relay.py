"""Relaying one session between its client and its pod (the asyncio shell around replay.py).

A native session runs three tasks: the client reader (frames into the replay
tail, held back while the tail is full: backpressure, not memory), the pod
sender (the tail to the pod, in order, then the client's last message) and
the pod reader (the pod's messages, translated, to the client). The client
reader outlives pods; the other two live one leg each.

The pod sender only catches a leg up (the replay after a failover, or frames
that arrived while a leg was being opened). Once the pod has every frame, the
leg is *live* and the client reader sends each new frame itself, as it reads
it: no task switch per frame. The switch happens without an await between
the sender's last check and the flag, so a frame can never overtake one that
is still to be replayed.

Both readers splice their connections whenever they can (splice.py): then a
client frame goes to the pod, and a pod message to the client, from inside
the event loop's read callback, with no websockets message queue, task
switch or send lock on the way. Flow control is the transports' own: a full
replay tail holds the client's reading, a client that reads slower than its
pod talks holds the pod's.

How a leg ends decides what happens next:
- the pod closed normally (1000, or with an error for bad input): its held
  `end`/`error` go to the client and the client is closed the same way;
- the pod died (no close frame), restarts (1012), failed (1011) or drained
  the session out (1001): the session moves to another pod, replaying the
  uncommitted tail (bounded by `max_failovers`);
- the client went away: a normal close ends the pod session too; any other
  loss drops the pod connection abruptly, so the pod holds the session for a
  resume through any router replica.

WhisperLive sessions, and OpenAI Realtime sessions (realtime_relay.RealtimeRelay, the same
relay), are relayed message for message without failover: neither protocol has sequence
numbers, so a pod that fails or drains them closes their client with its own code.

This runs once per audio frame (10 a second per session, thousands a second
per router): no JSON, no task switch, no await, no metric lock per frame on
the common path; the relay latency histogram sees one frame in
`LATENCY_SAMPLE`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from stt_router.placement import PodView
from stt_router.replay import RelayState
from stt_router.splice import PodConnection, RouterServerConnection
from voxfleet import protocol as p
from voxfleet.protocol import CloseCode, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from stt_router.server import RouterServer

log = logging.getLogger(__name__)

SERVICE_RESTART = 1012
"""Close code telling a client to resume its session (through any replica)."""

FAILOVER_CLOSES = {1001, 1006, 1011, 1012, 1014}
"""Pod close codes after which the session continues elsewhere: going away, no close frame, failed, restart, bad gateway."""

LATENCY_SAMPLE = 16
"""The relay latency histogram observes one frame in this many (per session, every path alike): a
Prometheus observation takes a lock, and the distribution does not need every frame."""


TAIL_FULL, CLIENT_SLOW, PEER_SLOW = "tail full", "client slow", "peer slow"
"""Why a relay holds reading: the client (its replay tail is full), the pod (the client does not keep up),
either side of a WhisperLive session (the other does not keep up)."""


def abort(ws: ClientConnection | ServerConnection) -> None:
    """Drop a connection without a close frame: the peer sees it lost, not ended."""
    transport = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()


class NativeRelay:
    def __init__(self, router: "RouterServer", client: RouterServerConnection, state: RelayState):
        self.router = router
        self.client = client
        self.state = state
        self.pod: PodView | None = None
        self.pod_ws: PodConnection | None = None
        self._wake = asyncio.Event()  # new frames or a trailer for the pod sender
        self._space = asyncio.Event()  # the tail has room again
        self._space.set()
        self._tail_held = False  # the client is held back for a full tail (`_space` cleared or reading held)
        self._client_done = asyncio.get_running_loop().create_future()
        self._detached = False
        self._live: PodConnection | None = None  # the pod connection the client reader sends to directly
        self._sample = 0  # frames sent since the last latency observation
        self._controls: deque[tuple[int, str]] = deque()  # (seq of the client frame before it, message) for the sender
        client.on_write_pause = self._client_write_paused

    @property
    def session_id(self) -> str:
        return self.state.pin.session_id

    async def run(self, pod: PodView, pod_ws: PodConnection) -> None:
        self.pod, self.pod_ws = pod, pod_ws
        reader = asyncio.create_task(self._read_client())
        try:
            while True:
                outcome = await self._run_leg()
                if outcome == "client_gone":
                    normal = self._client_done.result()
                    await self._leave_pod(normal)
                    return
                if outcome == "done":
                    return
                if not await self._fail_over():
                    return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if self.pod_ws is not None and self.pod_ws.state.name != "CLOSED":
                abort(self.pod_ws)
            if self.pod is not None:
                self.router.release_pod(self.pod)
                self.pod = None

    async def detach(self) -> None:
        """This session is being resumed elsewhere: drop both sides without ending it."""
        self._detached = True
        abort(self.client)
        if self.pod_ws is not None:
            abort(self.pod_ws)

    async def shutdown(self) -> None:
        """The router stops: tell the client to resume (through another replica), keep the pod session."""
        self._detached = True
        if self.pod_ws is not None:
            abort(self.pod_ws)
        try:
            await self.client.close(SERVICE_RESTART, "router restarting; resume")
        except ConnectionClosed:
            pass

    # --- client side

    async def _read_client(self) -> None:
        """Read the client until it goes: spliced (frames straight to `_client_message`) whenever the
        connection allows it, through recv() otherwise (before the splice, and after a frame it does not take)."""
        client, space = self.client, self._space
        normal = False
        try:
            while True:
                if client.splice(self._client_message):
                    if self.state.tail.full:
                        self._tail_held = True
                        client.hold_reading(TAIL_FULL)
                    await client.unspliced()
                if self.state.tail.full:
                    self._tail_held = True
                    space.clear()
                    await space.wait()
                    continue
                self._client_message(await client.recv())
        except ConnectionClosed as exc:
            normal = exc.rcvd is not None and exc.rcvd.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY)
        finally:
            if not self._client_done.done():
                self._client_done.set_result(normal)

    def _client_message(self, message: bytes | str) -> None:
        """One client message: into the replay tail and on to a live pod at once, or to the pod sender."""
        state = self.state
        if state.trailer is not None:
            return  # after 'end' or bad input the pod reads nothing more either
        ws = self._live
        if message.__class__ is bytes:
            try:
                frame = state.accept_message(message, time.monotonic())
            except ProtocolError:
                state.trailer = message  # the pod answers it as it answers any bad frame
                self._wake.set()
                return
            if frame is None:
                self.router.metrics.refusals.labels("duplicate_frame").inc()
                return
            if state.tail.full and self.client.is_spliced:
                self._tail_held = True
                self.client.hold_reading(TAIL_FULL)  # until the pod commits: backpressure, not memory
            if ws is not None:  # the pod has every frame before this one: send it now
                frame = state.next_to_send()
                if frame is not None:
                    if ws.send_now(state.pod_frame(frame)):
                        self._sent(frame)
                    elif self._live is ws:
                        self._live = None  # the leg ends; its pod reader handles that
                return
        elif _is_control(message):
            # flush, keepalive, configure: to the pod in order with the frames (the pod answers them)
            if ws is not None:  # the pod has every frame before it
                if not ws.send_now(message) and self._live is ws:
                    self._live = None
                return
            self._controls.append((state.tail.last_seq, message))
        else:
            state.trailer = message  # 'end', or a message the pod will refuse
            if ws is not None and state.trailer_due():
                state.leg.trailer_sent = True
                if not ws.send_now(message) and self._live is ws:
                    self._live = None
                return
        self._wake.set()  # the pod sender catches up (it clears `_live` first)

    def _sent(self, frame) -> None:
        """A frame went to a pod: the relay latency of its first trip, for one frame in LATENCY_SAMPLE."""
        if not frame.sent_once:
            frame.sent_once = True
            self._sample += 1
            if self._sample >= LATENCY_SAMPLE:
                self._sample = 0
                self.router.metrics.relay_latency.observe(time.monotonic() - frame.received)

    async def _send_client(self, message: dict) -> None:
        await self.client.send(p.encode(message))

    # --- pod side

    async def _run_leg(self) -> str:
        sender = asyncio.create_task(self._send_pod())
        reader = asyncio.create_task(self._read_pod())
        try:
            done, _ = await asyncio.wait({reader, self._client_done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._live = None  # the client reader sends nothing more on this leg
            sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        if self._client_done in done and reader not in done:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            return "client_gone"
        try:
            reader.result()
        except ConnectionClosed:
            pass
        if self._detached:
            return "done"
        code = self.pod_ws.close_code if self.pod_ws is not None else 1006
        if code in FAILOVER_CLOSES and self.router.settings.max_failovers > self.state.pin.failovers:
            return "failover"
        await self._finish(code)
        return "done"

    async def _send_pod(self) -> None:
        """Catch the pod up with the tail (and the trailer), then leave new frames to the client reader.

        While this task sends, `_live` is None and the client reader only wakes it; once the pod has
        every frame (checked with no await before the flag is set), the reader sends each new frame
        itself, so a frame never overtakes one still waiting here. Whatever the reader cannot send
        directly, it wakes this task for."""
        state, ws, wake = self.state, self.pod_ws, self._wake
        while True:
            self._live = None
            wake.clear()
            controls = self._controls
            while (frame := state.next_to_send()) is not None:
                while controls and controls[0][0] < frame.seq:
                    await ws.send(controls.popleft()[1])
                await ws.send(state.pod_frame(frame))
                self._sent(frame)
            while controls:
                await ws.send(controls.popleft()[1])
            if state.trailer_due():
                state.leg.trailer_sent = True
                await ws.send(state.trailer)
                continue
            if state.trailer is None:
                self._live = ws
            await wake.wait()

    async def _read_pod(self) -> None:
        """Read the pod until the leg ends (ConnectionClosed): spliced whenever the connection allows it."""
        pod_ws = self.pod_ws
        self._client_write_paused(self.client.paused)
        while True:
            if pod_ws.splice(self._pod_message):
                await pod_ws.unspliced()
            self._pod_message(await pod_ws.recv())

    def _pod_message(self, raw: bytes | str) -> None:
        """One pod message, translated, to the client at once (a client that is gone: its reader says so)."""
        if raw.__class__ is not str:
            return  # the native protocol sends the client no binary messages
        state = self.state
        try:
            outs = state.pod_text(raw)
        except ValueError:
            log.warning("session %s: pod sent invalid JSON; ignored", self.session_id)
            return
        if self._tail_held and not state.tail.full:
            self._tail_held = False
            self._space.set()
            self.client.release_reading(TAIL_FULL)
        send = self.client.send_now
        for out in outs:
            send(out)
        if state.pin_changed:
            pin = state.current_pin()
            self.router.remember(pin)
            send(p.encode(p.token(self.router.tokens.issue(pin))))

    def _client_write_paused(self, paused: bool) -> None:
        """The client reads slower than the pod talks: stop reading the pod until it catches up."""
        if self.pod_ws is None:
            return
        if paused:
            self.pod_ws.hold_reading(CLIENT_SLOW)
        else:
            self.pod_ws.release_reading(CLIENT_SLOW)

    async def _finish(self, code: int) -> None:
        """The pod ended the session for good: relay its last words and close the same way."""
        state = self.state
        try:
            if state.pending_error is not None:
                await self._send_client(state.pending_error)
            if state.pending_end is not None:
                await self._send_client(state.pending_end)
            elif code not in (CloseCode.NORMAL,):
                if state.pending_error is None:
                    await self._send_client(p.error(ErrorCode.INTERNAL, "the pod holding this session was lost"))
                code = CloseCode.INTERNAL if code in FAILOVER_CLOSES else code
            await self.client.close(code, "end of session" if code == CloseCode.NORMAL else "closed by the pod")
        except ConnectionClosed:
            pass
        if code == CloseCode.NORMAL:
            self.router.forget(self.session_id)

    async def _leave_pod(self, normal: bool) -> None:
        if self.pod_ws is None:
            return
        if normal and not self._detached:
            try:
                await asyncio.wait_for(self.pod_ws.close(CloseCode.NORMAL, "client left"), 5)
            except (ConnectionClosed, asyncio.TimeoutError):
                abort(self.pod_ws)
            self.router.forget(self.session_id)
        else:
            abort(self.pod_ws)  # the pod keeps the session for a resume

    async def _fail_over(self) -> bool:
        old = self.pod
        state = self.state
        log.warning("session %s lost pod %s (close %s); moving it with %d frames (%.1f s) to replay",
                    self.session_id, old.name if old else "?", self.pod_ws.close_code if self.pod_ws else None,
                    len(state.tail), state.tail.seconds)
        if old is not None:
            if self.pod_ws is not None and self.pod_ws.close_code == 1006:
                self.router.pool.lost(old.name)
            self.router.release_pod(old)
            self.pod = None
        exclude = frozenset({old.name}) if old is not None else frozenset()
        try:
            pod, pod_ws, reply, _ = await self.router.open_leg(
                p.encode(p.start_message(replace(state.pin.start(), previous_text=state.text_before_replay()))),
                "failover", exclude=exclude, client=self.client,
                notify=None, bounded=False)
        except ProtocolError as exc:
            self.router.metrics.failovers.labels("failed").inc()
            log.warning("session %s: failover failed: %s", self.session_id, exc.message)
            try:
                await self._send_client(p.error(ErrorCode.INTERNAL, f"the pod was lost and the session could not move: {exc.message}"))
                await self.client.close(CloseCode.INTERNAL, "pod lost")
            except ConnectionClosed:
                pass
            return False
        if reply.get("type") != "ready":
            self.router.metrics.failovers.labels("failed").inc()
            try:
                await self._send_client(reply)
                await self.client.close(pod_ws.close_code or CloseCode.INTERNAL, "pod refused the session")
            except ConnectionClosed:
                pass
            self.router.release_pod(pod)
            return False
        state.fail_over(pod.name, pod.url)
        self.pod, self.pod_ws = pod, pod_ws
        pin = state.leg_ready(reply["resume_token"])
        self.router.remember(pin)
        self.router.metrics.failovers.labels("moved").inc()
        self.router.metrics.replayed_seconds.inc(state.tail.seconds)
        log.info("session %s continues on pod %s from frame %d (t=%.2f s, segment %d)", self.session_id, pod.name,
                 state.leg.seq_base, state.leg.time_offset, state.leg.seg_base)
        try:
            await self._send_client(p.token(self.router.tokens.issue(pin)))
        except ConnectionClosed:
            pass  # the client reader reports it
        self._wake.set()
        return True


class WhisperLiveRelay:
    """Message-for-message relay of a WhisperLive session (no failover: its protocol has no sequence numbers)."""

    def __init__(self, router: "RouterServer", client: RouterServerConnection, pod: PodView, pod_ws: PodConnection):
        self.router, self.client, self.pod, self.pod_ws = router, client, pod, pod_ws

    async def run(self) -> None:
        up = asyncio.create_task(self._pipe(self.client, self.pod_ws, upstream=True))
        down = asyncio.create_task(self._pipe(self.pod_ws, self.client, upstream=False))
        try:
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if up in done:  # the client closed: end the pod side the same way
                code = self.client.close_code
                if code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                    await _close_quietly(self.pod_ws, CloseCode.NORMAL, "client left")
                else:
                    abort(self.pod_ws)
            else:  # the pod closed: tell the client how
                code = self.pod_ws.close_code
                if code is None or code == 1006:
                    code = CloseCode.INTERNAL
                await _close_quietly(self.client, code, self.pod_ws.close_reason or "closed by the pod")
        finally:
            if self.pod_ws.state.name != "CLOSED":
                abort(self.pod_ws)
            self.router.release_pod(self.pod)

    async def _pipe(self, src, dst, upstream: bool) -> None:
        """Every message of `src` to `dst`, spliced whenever `src` allows it; ends when `src` closes."""
        latency, monotonic, send = self.router.metrics.relay_latency, time.monotonic, dst.send_now
        sample = 0

        def forward(message: bytes | str) -> None:
            nonlocal sample
            if upstream and message.__class__ is bytes:
                sample += 1
                if sample >= LATENCY_SAMPLE:
                    sample = 0
                    received = monotonic()
                    send(message)
                    latency.observe(monotonic() - received)
                    return
            send(message)

        def dst_paused(paused: bool) -> None:  # dst reads slower than src talks
            (src.hold_reading if paused else src.release_reading)(PEER_SLOW)

        dst.on_write_pause = dst_paused
        try:
            while True:
                if src.splice(forward):
                    await src.unspliced()
                forward(await src.recv())
        except ConnectionClosed:
            pass


def _is_control(message: str) -> bool:
    """A mid-session control message (p.CONTROLS) rather than the session's last ('end', or bad input)."""
    try:
        obj = json.loads(message)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("type") in p.CONTROLS


async def _close_quietly(ws, code: int, reason: str) -> None:
    try:
        await asyncio.wait_for(ws.close(code, reason[:100]), 5)
    except (ConnectionClosed, asyncio.TimeoutError):
        abort(ws)
