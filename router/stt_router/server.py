"""The router process: authenticate, place, queue, pin and relay; HTTP and WebSocket on one port.

Every connection's first message says what it wants: a native `start`
(place it on a pod, queueing when none has room), a native `resume` (verify
the router token and reconnect to the pod it names: no shared store between
replicas) or a WhisperLive opening (`uid`; placed, then relayed as is). A WebSocket to
`/v1/realtime` is an OpenAI Realtime session (realtime_relay.py): the server speaks first, so
it is admitted at the handshake and relayed as is from the pod's first event. The
API key is checked before any pod is touched. SIGTERM drains: /readyz turns
503, new sessions are refused with 1013, sessions continue until they end or
`drain_timeout_seconds` passes; the rest are told to resume (close 1012)
while their pods keep them. /readyz is the router's own health: it serves,
it does not drain, and it knows a pod that takes sessions (or it has just
started: sessions queue meanwhile); one slow round of pod polls does not
change it (pool.py). With `--workers` above 1, workers.py runs this server in
several processes on one port. `POST /v1/audio/transcriptions` (OpenAI's
file API) comes on the same port and is files.py's: a queue and pods' file
slots of its own, apart from sessions.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import http
import json
import logging
import os
import signal
import socket
import time
import uuid
from typing import Awaitable, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.http11 import Request, Response

from stt_router import apikeys, placement, workers
from stt_router import realtime_relay as rt
from stt_router.apikeys import ANONYMOUS, ApiKeys, AuthError, KeyLimits, Principal
from stt_router.discovery import static_targets
from stt_router.files import FileLane
from stt_router.metrics import RouterMetrics, watch_event_loop_lag
from stt_router.placement import PodView
from stt_router.pool import Pool
from stt_router.queue import QueueFull, SessionQueue
from stt_router.realtime_relay import RealtimeRelay
from stt_router.relay import NativeRelay, WhisperLiveRelay, abort
from stt_router.replay import RelayState
from stt_router.reserve import Reserve
from stt_router.settings import RouterSettings
from stt_router.splice import PodConnection
from stt_router.tokens import InvalidToken, Pin, RouterTokens, signer_for
from voxfleet import protocol as p
from voxfleet.endpoints import METRICS_CONTENT_TYPE, NOT_FOUND, refuse_malformed, respond, ws_urls
from voxfleet.protocol import CloseCode, ErrorCode, ProtocolError

log = logging.getLogger(__name__)

REFUSED_BY_POD = {ErrorCode.FULL, ErrorCode.DRAINING}
MAX_REMEMBERED_PINS = 10_000


def is_whisperlive(obj: dict) -> bool:
    """WhisperLive's first message is an options object with a `uid` and no `type`."""
    return "uid" in obj and "type" not in obj


@dataclasses.dataclass(eq=False)
class SessionSlots:
    """The pod slots one session holds (0 or 1; 2 for a moment during a failover), and its priority class.

    Reserved capacity counts slots by class. The session's handler task owns this object (in
    `_SESSION`, a context variable of that task): every place and release of its slots happens
    in that task (open_leg, the relay's run and failover), also where the release does not name
    the session (`release_pod`)."""

    cls: str
    held: int = 0


_SESSION: contextvars.ContextVar[SessionSlots | None] = contextvars.ContextVar("voxfleet_session_slots", default=None)


@dataclasses.dataclass(eq=False)
class Ticket:
    """A session's place in the queue, as its waiting coroutine sees it."""

    exclude: frozenset[str]
    slots: SessionSlots = dataclasses.field(default_factory=lambda: SessionSlots("normal"))
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    pod: PodView | None = None
    position: int | None = None


class RouterServer:
    def __init__(self, settings: RouterSettings, *, worker: int = 0, reuse_port: bool = False):
        settings.validate()
        self.settings = settings
        self.router_id = settings.router_id or socket.gethostname()
        self.worker = worker  # index among the processes serving this port (0: the only one, or their parent)
        self.reuse_port = reuse_port
        self.metrics = RouterMetrics()
        self.pool = Pool(settings.placement, settings.status_interval_seconds, settings.status_timeout_seconds,
                         self._dispatch, failure_threshold=settings.status_failure_threshold)
        self.queue = SessionQueue(settings.max_queue, settings.max_queue_wait_seconds)
        self.reserve = Reserve.parse(settings.reserve)
        self.in_use: collections.Counter[str] = collections.Counter()  # slots held through this router, by class
        for cls in self.reserve.shares:
            self.metrics.reserved_slots.labels(cls)
            self.metrics.reserved_slots_in_use.labels(cls)
        anonymous = Principal(ANONYMOUS, settings.anonymous_max_sessions, settings.anonymous_priority, True) \
            if settings.anonymous else None
        rules = apikeys.read_keys(settings.api_keys) if settings.api_keys else []
        self.keys = ApiKeys(rules, anonymous)
        self.limits = KeyLimits()
        self.tokens = RouterTokens(signer_for(settings.secrets()), settings.token_ttl_seconds)
        self.relays: dict[str, NativeRelay] = {}
        self.whisperlive: set[WhisperLiveRelay] = set()
        self.realtime: set[RealtimeRelay] = set()
        self.files = FileLane(self)  # POST /v1/audio/transcriptions (files.py)
        self._pins: collections.OrderedDict[str, Pin] = collections.OrderedDict()
        self.draining = False
        self.server: Server | None = None
        self._tasks: list[asyncio.Task] = []
        self._watcher = None
        self._stopped = asyncio.Event()
        self._started: float | None = None  # time.monotonic() when it began to serve
        self._on_signal_hook: Callable[[int], None] | None = None

    # --- lifecycle

    async def start(self) -> None:
        s = self.settings
        if s.discover == "static":
            self.pool.set_targets(static_targets(s.pod_urls()))
        elif s.discover == "kubernetes-pods":
            from stt_router.podwatch import PodWatcher

            self._watcher = PodWatcher.from_cluster(s.namespace, s.selector, s.pod_port, self.pool.set_targets)
            self._tasks.append(asyncio.create_task(self._watcher.run()))
        else:
            from stt_router.endpointslices import EndpointSliceWatcher

            selector = f"kubernetes.io/service-name={s.service_name}" if s.service_name else s.selector
            self._watcher = EndpointSliceWatcher.from_cluster(s.namespace, selector, s.pod_port, self.pool.set_targets)
            self._tasks.append(asyncio.create_task(self._watcher.run()))
        await self.pool.poll_all()
        self._tasks.append(asyncio.create_task(self.pool.run()))
        self._tasks.append(asyncio.create_task(watch_event_loop_lag(self.metrics.event_loop_lag)))
        await self.files.start()
        self.server = await serve(
            self._handle, s.host, s.port,
            process_request=self._process_request,
            max_size=s.max_frame_bytes,
            ping_interval=s.ping_interval_seconds, ping_timeout=s.ping_timeout_seconds,
            compression=None,
            server_header="voxfleet-router",
            reuse_port=self.reuse_port or None,
            create_connection=self.files.connection_class(),  # RouterServerConnection, POSTs handed to aiohttp
        )
        self._started = time.monotonic()
        self.metrics.ready.set(1)
        log.info("router %s listening on %s; %d pods known, %d ready; placement %s", self.router_id,
                 ", ".join(self.urls), len(self.pool.pods), self.pool.ready_pods, s.placement)

    @property
    def urls(self) -> list[str]:
        return ws_urls(self.server)

    @property
    def port(self) -> int:
        """The port it serves (the one picked, for port 0)."""
        return self.server.sockets[0].getsockname()[1] if self.server and self.server.sockets else self.settings.port

    async def run_until_stopped(self, on_signal: Callable[[int], None] | None = None) -> None:
        """Serve until stopped; SIGTERM or SIGINT drains, a second one stops at once. `on_signal` hears each first."""
        loop = asyncio.get_running_loop()
        self._on_signal_hook = on_signal
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        await self._stopped.wait()

    def _on_signal(self, sig: int = signal.SIGTERM) -> None:
        loop = asyncio.get_running_loop()
        if self._on_signal_hook is not None:
            self._on_signal_hook(sig)
        if not self.draining:
            log.info("drain requested: refusing new sessions, %d active, %d queued", len(self.relays), len(self.queue))
            loop.create_task(self.drain())
        else:
            log.info("second stop signal: handing every session back now")
            loop.create_task(self.stop())

    async def drain(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)
        self.metrics.draining.set(1)
        for waiter in list(self.queue):
            waiter.item.changed.set()  # they see `draining` and leave
        deadline = time.monotonic() + self.settings.drain_timeout_seconds
        while ((self.relays or self.whisperlive or self.realtime or self.files.active or len(self.files.queue))
               and time.monotonic() < deadline and not self._stopped.is_set()):
            await asyncio.sleep(0.2)
        await self.stop()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self.draining = True
        self.metrics.ready.set(0)
        await asyncio.gather(*(relay.shutdown() for relay in list(self.relays.values())), return_exceptions=True)
        for wl in [*self.whisperlive, *self.realtime]:
            abort(wl.pod_ws)
        self.pool.stop()
        if self._watcher is not None:
            self._watcher.stop()
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        await self.files.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._stopped.set()

    # --- placement and the queue

    def _dispatch(self) -> None:
        """Give free slots to the queue, in order; tell the others their new place.

        With reserved capacity (--reserve) a waiter whose class may not take any of the free
        slots (they are all reserved, unused, for other classes) is passed over, and one behind it
        whose class has a reserve takes a reserved slot."""
        for waiter in list(self.queue):
            ticket = waiter.item
            if self.reserve:
                free = self.pool.free_slots
                if free <= 0:
                    break
                if not self.reserve.may_take(ticket.slots.cls, self._total_slots(), free, self.in_use):
                    continue
            pod = self.pool.choose(ticket.exclude)
            if pod is None:
                break
            self.queue.remove(waiter)
            pod.placed()
            self._hold(ticket.slots)
            ticket.pod = pod
            ticket.changed.set()
        for waiter, position in self.queue.positions():
            if waiter.item.position != position:
                waiter.item.position = position
                waiter.item.changed.set()
        self.files.dispatch()
        self._update_gauges()

    def _update_gauges(self) -> None:
        now = asyncio.get_running_loop().time()
        self.metrics.sessions_queued.set(len(self.queue))
        self.metrics.queue_oldest_wait.set(self.queue.oldest_wait(now))
        self.metrics.pods_known.set(len(self.pool.pods))
        self.metrics.pods_ready.set(self.pool.ready_pods)
        self.metrics.free_slots.set(self.pool.free_slots)
        if self.reserve:
            for cls, n in self.reserve.slots(self._total_slots()).items():
                self.metrics.reserved_slots.labels(cls).set(n)
                self.metrics.reserved_slots_in_use.labels(cls).set(min(n, self.in_use[cls]))

    def _total_slots(self) -> int:
        return placement.total_slots(self.pool.pods.values())

    def _hold(self, slots: SessionSlots) -> None:
        slots.held += 1
        self.in_use[slots.cls] += 1

    def _session(self, cls: str) -> SessionSlots:
        """The slots of the session this task serves, of class `cls` (its first placement sets it)."""
        slots = _SESSION.get()
        if slots is None or (slots.held == 0 and slots.cls != cls and cls != "failover"):
            slots = SessionSlots("normal" if cls == "failover" else cls)
            _SESSION.set(slots)
        return slots

    def reserve_status(self) -> dict:
        """Each reserving class: slots reserved now, and held by its sessions through this router."""
        total = self._total_slots()
        return {cls: {"slots": n, "in_use": self.in_use[cls]} for cls, n in self.reserve.slots(total).items()}

    async def acquire(self, priority: str, client: ServerConnection | None,
                      notify: Callable[[int], Awaitable[None]] | None, exclude: frozenset[str] = frozenset(),
                      bounded: bool = True) -> PodView:
        """A pod slot for one session, waiting in the queue if need be; raises ProtocolError when refused."""
        loop = asyncio.get_running_loop()
        if self.draining and bounded:
            raise ProtocolError(ErrorCode.DRAINING, "this router is draining; connect again", CloseCode.TRY_AGAIN_LATER)
        ticket = Ticket(exclude, self._session(priority))
        try:
            waiter = self.queue.push(ticket, priority, loop.time(), bounded)
        except QueueFull as exc:
            raise ProtocolError("queue_full", f"no free slot and the queue is full ({exc})", CloseCode.TRY_AGAIN_LATER) from None
        self._dispatch()
        closed = asyncio.ensure_future(client.wait_closed()) if client is not None else None
        told = None
        try:
            while ticket.pod is None:
                if self.draining and bounded:
                    raise ProtocolError(ErrorCode.DRAINING, "this router is draining; connect again",
                                        CloseCode.TRY_AGAIN_LATER)
                if notify is not None and ticket.position is not None and ticket.position != told:
                    told = ticket.position
                    await notify(told)
                ticket.changed.clear()
                if ticket.pod is not None:
                    break
                remaining = waiter.deadline - loop.time()
                if remaining <= 0:
                    raise ProtocolError("queue_timeout", f"no pod slot came free within {self.queue.max_wait:g} s",
                                        CloseCode.TRY_AGAIN_LATER)
                changed = asyncio.ensure_future(ticket.changed.wait())
                waits = {changed} | ({closed} if closed is not None else set())
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if closed is not None and closed.done() and ticket.pod is None:
                    raise ConnectionClosed(None, None)
            return ticket.pod
        except BaseException:
            if ticket.pod is not None:
                self.release_pod(ticket.pod)
                ticket.pod = None
            raise
        finally:
            if closed is not None:
                closed.cancel()
            if ticket.pod is None:
                self.queue.remove(waiter)
            self.metrics.queue_wait.observe(loop.time() - waiter.enqueued)
            self._dispatch()

    def release_pod(self, pod: PodView) -> None:
        slots = _SESSION.get()
        if slots is not None and slots.held > 0:
            slots.held -= 1
            self.in_use[slots.cls] -= 1
            if self.in_use[slots.cls] <= 0:
                del self.in_use[slots.cls]
        pod.released()
        self._dispatch()

    async def open_leg(self, first_message: str | None, priority: str, *, client: ServerConnection | None,
                       notify: Callable[[int], Awaitable[None]] | None, exclude: frozenset[str] = frozenset(),
                       bounded: bool = True, path: str = "", headers: dict[str, str] | None = None,
                       ) -> tuple[PodView, ClientConnection, dict, str]:
        """Place a session and open it on the pod: (pod, connection, the pod's first reply, as sent).

        `first_message` goes to the pod first (None: the pod speaks first, as Realtime pods do);
        `path` and `headers` are the pod leg's (a Realtime session's `/v1/realtime?...`).
        A pod that refuses as full or draining, or cannot be reached, is passed
        over and the session is placed again (bounded tries)."""
        tries = max(3, len(self.pool.pods) + 1)
        last = "no pod"
        for _ in range(tries):
            pod = await self.acquire(priority, client, notify, exclude, bounded)
            try:
                pod_ws = await self._connect_pod(pod.url.rstrip("/") + path if path else pod.url, headers)
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                last = f"pod {pod.name} unreachable: {exc}"
                self.pool.lost(pod.name)
                self.release_pod(pod)
                continue
            try:
                if first_message is not None:
                    await pod_ws.send(first_message)
                raw = await asyncio.wait_for(pod_ws.recv(), self.settings.pod_connect_timeout_seconds)
                reply = json.loads(raw) if isinstance(raw, str) else {}
                if not isinstance(reply, dict):
                    raise ValueError("the pod's first reply is not a JSON object")
            except (ConnectionClosed, asyncio.TimeoutError, ValueError) as exc:
                last = f"pod {pod.name} did not answer: {exc or type(exc).__name__}"
                abort(pod_ws)
                self.pool.lost(pod.name)
                self.release_pod(pod)
                continue
            code = reply.get("code") if reply.get("type") == "error" else None
            code = code if code in REFUSED_BY_POD else rt.refusal(reply)  # a Realtime pod's error event
            if code is not None or reply.get("status") == "WAIT":  # WAIT: WhisperLive's way of saying full
                last = f"pod {pod.name}: {reply.get('message') or code}"
                self.pool.refused(pod.name, code == ErrorCode.DRAINING)
                abort(pod_ws)
                self.release_pod(pod)
                continue
            if (reply.get("type") == "ready" or reply.get("message") == "SERVER_READY" or "uid" in reply
                    or rt.opened(reply)):
                self.metrics.placements.labels(str(pod.ordinal)).inc()
            return pod, pod_ws, reply, raw
        raise ProtocolError(ErrorCode.FULL, f"no pod took the session after {tries} tries ({last})",
                            CloseCode.TRY_AGAIN_LATER)

    async def _connect_pod(self, url: str, headers: dict[str, str] | None = None) -> PodConnection:
        return await connect(url, additional_headers=headers, open_timeout=self.settings.pod_connect_timeout_seconds, max_size=None,
                             compression=None, ping_interval=self.settings.ping_interval_seconds,
                             ping_timeout=self.settings.ping_timeout_seconds, close_timeout=5,
                             user_agent_header="voxfleet-router", create_connection=PodConnection)

    # --- sessions

    async def _handle(self, ws: ServerConnection) -> None:
        if rt.is_realtime_path(ws.request.path):
            return await self._handle_realtime(ws)
        protocol = "native"
        uid = None
        try:
            try:
                first = await asyncio.wait_for(ws.recv(), self.settings.start_timeout_seconds)
            except asyncio.TimeoutError:
                raise ProtocolError(ErrorCode.START_TIMEOUT, "no start message in time") from None
            if isinstance(first, bytes):
                raise ProtocolError(ErrorCode.AUDIO_BEFORE_START, "send a 'start' message before audio")
            obj = p.decode_json(first)
            if is_whisperlive(obj):
                protocol, uid = "whisperlive", obj.get("uid")
            principal = self._authenticate(ws)
            if self.draining:
                raise ProtocolError(ErrorCode.DRAINING, "this router is draining; connect again",
                                    CloseCode.TRY_AGAIN_LATER)
            if protocol == "whisperlive":
                return await self._serve_whisperlive(ws, first, uid, principal)
            message = p.parse_client_message(first)
            if isinstance(message, p.Start):
                return await self._serve_start(ws, message, principal)
            if isinstance(message, p.Resume):
                return await self._serve_resume(ws, message, principal)
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'end' before 'start'")
        except ProtocolError as exc:
            await self._refuse(ws, exc, uid if protocol == "whisperlive" else None)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection failed")
            await self._refuse(ws, ProtocolError(ErrorCode.INTERNAL, "internal error", CloseCode.INTERNAL))

    def _authenticate(self, ws: ServerConnection) -> Principal:
        request = ws.request
        try:
            return self.keys.authenticate(apikeys.presented_key(request.headers, request.path))
        except AuthError as exc:
            raise ProtocolError(exc.code, exc.message, CloseCode.POLICY) from None

    async def _refuse(self, ws: ServerConnection, exc: ProtocolError, uid: str | None = None,
                      realtime: bool = False) -> None:
        self.metrics.refusals.labels(exc.code).inc()
        log.info("refused %s: %s: %s", ws.remote_address, exc.code, exc.message)
        if realtime:
            message = rt.error_event(exc.code, exc.message)
        elif uid is not None:
            message = {"uid": uid, "status": "ERROR", "message": exc.message}
        else:
            message = exc.to_message()
        try:
            await ws.send(p.encode(message))
            await ws.close(exc.close_code, exc.code)
        except ConnectionClosed:
            pass

    def _limit(self, principal: Principal) -> None:
        if not self.limits.acquire(principal):
            raise ProtocolError("key_limit", f"this key may hold {principal.max_sessions} sessions at once",
                                CloseCode.POLICY)

    async def _serve_start(self, ws: ServerConnection, start: p.Start, principal: Principal) -> None:
        start = dataclasses.replace(start, priority=apikeys.effective_priority(start.priority, principal.priority))
        self._limit(principal)
        try:
            async def notify(position: int) -> None:
                await ws.send(p.encode(p.queued(position, len(self.queue))))

            pod, pod_ws, reply, _ = await self.open_leg(p.encode(p.start_message(start)), start.priority,
                                                     client=ws, notify=notify)
            if reply.get("type") != "ready":  # the pod refused the start itself: answer as it did
                await pod_ws.wait_closed()
                self.release_pod(pod)
                code = reply.get("code", ErrorCode.INTERNAL)
                raise ProtocolError(code, reply.get("message", "the pod refused"), pod_ws.close_code or CloseCode.INTERNAL)
            sid = uuid.uuid4().hex
            pin = Pin.for_start(start, session_id=sid, pod=pod.name, url=pod.url, pod_token=reply["resume_token"],
                                principal=principal.name)
            state = RelayState.new(pin, self.settings.max_replay_seconds, self.settings.max_replay_bytes)
            self.remember(pin)
            try:
                await ws.send(p.encode(p.ready(sid, self.tokens.issue(pin), 0, False)))
            except ConnectionClosed:  # gone before it got a token: nobody can resume it, so end it on the pod
                await _close_pod_leg(pod_ws)
                self.release_pod(pod)
                raise
            await self._relay(ws, state, pod, pod_ws, "start")
        finally:
            self.limits.release(principal)

    async def _serve_resume(self, ws: ServerConnection, resume: p.Resume, principal: Principal) -> None:
        try:
            pin = self.tokens.verify(resume.token).pin
        except InvalidToken as exc:
            raise ProtocolError(ErrorCode.INVALID_TOKEN, str(exc), CloseCode.POLICY) from None
        if pin.principal != principal.name:  # no key is a principal too: it resumes only its own sessions
            raise ProtocolError(ErrorCode.INVALID_TOKEN, "that token belongs to another API key", CloseCode.POLICY)
        local = self.relays.get(pin.session_id)
        if local is not None:  # its client came back before we saw it leave
            await local.detach()
            for _ in range(100):
                if pin.session_id not in self.relays:
                    break
                await asyncio.sleep(0.05)
        pin = self._pins.get(pin.session_id, pin)  # this replica may know a newer pinning (after a failover)
        pod = self.pool.get(pin.pod)
        if pod is None or pod.url != pin.url:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"the pod that held this session ({pin.pod}) is gone",
                                CloseCode.POLICY)
        self._limit(principal)
        try:
            message = p.resume_message(p.Resume(pin.pod_token, max(-1, resume.last_seq - pin.seq_base),
                                                max(-1, resume.last_segment_id - pin.seg_base)))
            try:
                pod_ws = await self._connect_pod(pod.url)
                await pod_ws.send(p.encode(message))
                raw = await asyncio.wait_for(pod_ws.recv(), self.settings.pod_connect_timeout_seconds)
                reply = json.loads(raw)
                if not isinstance(reply, dict):
                    raise ValueError("the pod's first reply is not a JSON object")
            except (OSError, InvalidHandshake, ConnectionClosed, asyncio.TimeoutError, ValueError) as exc:
                raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"the pod that held this session cannot be reached: {exc}",
                                    CloseCode.POLICY) from None
            if reply.get("type") != "ready":
                abort(pod_ws)
                raise ProtocolError(reply.get("code", ErrorCode.UNKNOWN_SESSION), reply.get("message", "resume refused"),
                                    CloseCode.POLICY)
            pod.own_sessions += 1
            self._hold(self._session(pin.priority))
            pin = dataclasses.replace(pin, pod_token=reply["resume_token"])
            state = RelayState.resumed(pin, self.settings.max_replay_seconds, self.settings.max_replay_bytes,
                                       resume.last_seq, resume.last_segment_id, int(reply.get("next_seq", 0)))
            self.remember(pin)
            next_seq = min(resume.last_seq + 1, int(reply.get("next_seq", 0)) + pin.seq_base)
            try:
                await ws.send(p.encode(p.ready(pin.session_id, self.tokens.issue(pin), max(0, next_seq), True)))
            except ConnectionClosed:  # it still holds its token: the pod keeps the session for another resume
                abort(pod_ws)
                self.release_pod(pod)
                raise
            await self._relay(ws, state, pod, pod_ws, "resume")
        finally:
            self.limits.release(principal)

    async def _relay(self, ws: ServerConnection, state: RelayState, pod: PodView, pod_ws: ClientConnection,
                     kind: str) -> None:
        relay = NativeRelay(self, ws, state)
        sid = state.pin.session_id
        self.relays[sid] = relay
        self.metrics.sessions_total.labels("native", kind).inc()
        self.metrics.sessions_active.labels("native").inc()
        log.info("session %s %s on pod %s (%s priority)", sid, "opened" if kind == "start" else "resumed", pod.name,
                 state.pin.priority)
        try:
            await relay.run(pod, pod_ws)
        finally:
            if self.relays.get(sid) is relay:
                del self.relays[sid]
            self.metrics.sessions_active.labels("native").dec()
            log.info("session %s left this router", sid)

    async def _serve_whisperlive(self, ws: ServerConnection, first: str, uid, principal: Principal) -> None:
        self._limit(principal)
        try:
            async def notify(position: int) -> None:
                minutes = round(self.queue.max_wait / 60, 1)
                await ws.send(json.dumps({"uid": uid, "status": "WAIT", "message": minutes}))

            pod, pod_ws, _, raw = await self.open_leg(first, "normal", client=ws, notify=notify)
            await ws.send(raw)  # WhisperLive's answer, as the pod wrote it
            relay = WhisperLiveRelay(self, ws, pod, pod_ws)
            self.whisperlive.add(relay)
            self.metrics.sessions_total.labels("whisperlive", "start").inc()
            self.metrics.sessions_active.labels("whisperlive").inc()
            try:
                await relay.run()
            finally:
                self.whisperlive.discard(relay)
                self.metrics.sessions_active.labels("whisperlive").dec()
        finally:
            self.limits.release(principal)

    async def _handle_realtime(self, ws: ServerConnection) -> None:
        """An OpenAI Realtime client (realtime_relay.py): admitted at the handshake, since the server speaks first."""
        try:
            principal = self._authenticate(ws)
            if self.draining:
                raise ProtocolError(ErrorCode.DRAINING, "this router is draining; connect again",
                                    CloseCode.TRY_AGAIN_LATER)
            await self._serve_realtime(ws, principal)
        except ProtocolError as exc:
            await self._refuse(ws, exc, realtime=True)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("realtime connection failed")
            await self._refuse(ws, ProtocolError(ErrorCode.INTERNAL, "internal error", CloseCode.INTERNAL),
                               realtime=True)

    async def _serve_realtime(self, ws: ServerConnection, principal: Principal) -> None:
        self._limit(principal)
        try:
            request = ws.request
            pod, pod_ws, _, raw = await self.open_leg(None, principal.priority, client=ws, notify=None,
                                                      path=rt.pod_path(request.path),
                                                      headers=rt.forwarded_headers(request.headers))
            try:
                await ws.send(raw)  # the pod's session.created, as it wrote it
            except ConnectionClosed:
                await _close_pod_leg(pod_ws)
                self.release_pod(pod)
                raise
            relay = RealtimeRelay(self, ws, pod, pod_ws)
            self.realtime.add(relay)
            self.metrics.sessions_total.labels("realtime", "start").inc()
            self.metrics.sessions_active.labels("realtime").inc()
            log.info("realtime session on pod %s (%s priority)", pod.name, principal.priority)
            try:
                await relay.run()
            finally:
                self.realtime.discard(relay)
                self.metrics.sessions_active.labels("realtime").dec()
        finally:
            self.limits.release(principal)

    # --- pins a replica remembers (the client may hold an older token after a failover)

    def remember(self, pin: Pin) -> None:
        self._pins[pin.session_id] = pin
        self._pins.move_to_end(pin.session_id)
        while len(self._pins) > MAX_REMEMBERED_PINS:
            self._pins.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._pins.pop(session_id, None)

    # --- HTTP

    def status(self) -> dict:
        return {
            "router": self.router_id,
            "worker": self.worker,
            "pid": os.getpid(),
            "ready": self.is_ready,
            "draining": self.draining,
            "sessions": len(self.relays) + len(self.whisperlive) + len(self.realtime),
            "queued": len(self.queue),
            "free_slots": self.pool.free_slots,
            "reserve": self.reserve_status(),
            "file_jobs": self.files.active,
            "file_jobs_queued": len(self.files.queue),
            "placement": self.settings.placement,
            "pods": [
                {"name": v.name, "url": v.url, "ordinal": v.ordinal, "ready": v.eligible, "draining": v.draining or v.terminating,
                 "reachable": v.reachable, "capacity": v.capacity, "load": v.load, "free_slots": v.free_slots,
                 "router_sessions": v.own_sessions, "file_free": v.file_free, "router_file_jobs": v.own_files}
                for v in self.pool.views()
            ],
        }

    @property
    def is_ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why /readyz says 503, or None: ready. The router's own state, not one round of pod polls."""
        if self.draining:
            return "draining"
        if self.server is None or self._started is None or not self.server.is_serving():
            return "not serving"
        if self.pool.ready_pods > 0:
            return None
        if time.monotonic() - self._started < self.settings.startup_grace_seconds:
            return None  # just started: pods may still be warming; sessions queue
        return "no ready pod"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        refused = refuse_malformed(request, "Upgrade", "Authorization", "X-API-Key")
        if refused is not None:
            return refused
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if path in ("/", "/v1/stream") or rt.is_realtime_path(path):
                return None
            return respond(http.HTTPStatus.NOT_FOUND, "no WebSocket endpoint here; connect to / or /v1/realtime\n")
        if path == "/healthz":
            return respond(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            reason = self.not_ready_reason()
            if reason is None:
                return respond(http.HTTPStatus.OK, "ready\n")
            return respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n")
        if path == "/metrics":
            self._update_gauges()
            self.metrics.ready.set(1 if self.is_ready else 0)
            self.metrics.replay_bytes.set(sum(relay.state.tail.nbytes for relay in self.relays.values()))
            return respond(http.HTTPStatus.OK, self.metrics.render(), METRICS_CONTENT_TYPE)
        if path == "/status":
            return respond(http.HTTPStatus.OK, json.dumps(self.status()) + "\n", "application/json")
        return respond(http.HTTPStatus.NOT_FOUND, NOT_FOUND)


async def run_router(settings: RouterSettings) -> None:
    if settings.workers > 1:
        return await workers.run_with_workers(settings)
    index = workers.worker_index()
    if index:
        workers.die_with_parent()
    router = RouterServer(settings, worker=index, reuse_port=index > 0)
    await router.start()
    await router.run_until_stopped()


async def _close_pod_leg(pod_ws: ClientConnection) -> None:
    """End a pod leg normally: the pod releases the session at once instead of holding it for a resume."""
    try:
        await asyncio.wait_for(pod_ws.close(CloseCode.NORMAL, "client left"), 5)
    except (ConnectionClosed, asyncio.TimeoutError):
        abort(pod_ws)
