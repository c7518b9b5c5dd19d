"""The STT pod process: one model, many sessions, HTTP and WebSocket on one port.

It binds first (so /healthz answers while the model loads), loads and warms
the model, and only then reports ready. Every connection's first message says
which protocol it speaks (native `start`/`resume`, or WhisperLive's `uid`
object); a connection to /v1/realtime speaks OpenAI's Realtime API (stt_pod.realtime).
SIGTERM starts a drain: /readyz turns 503, new sessions are refused with 1013,
active ones continue until they end or `drain_timeout_seconds` passes; then
every remaining session is flushed to finals and closed 1001.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import signal
import socket
import time
from dataclasses import replace

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from stt_pod import native, realtime, whisperlive
from stt_pod.engine import EngineConfig, WhisperEngine
from stt_pod.file_api import FileApi
from stt_pod.metrics import PodMetrics
from stt_pod.scheduler import BatchScheduler
from stt_pod.session import Session
from stt_pod.settings import PodSettings
from stt_pod.stream import SessionStream, StreamConfig
from stt_pod.vad import StreamingVad
from voxfleet import protocol as p
from voxfleet.endpoints import METRICS_CONTENT_TYPE, NOT_FOUND, refuse_malformed, respond, ws_urls
from voxfleet.handoff import api_runner, handoff_connection
from voxfleet.protocol import CloseCode, ErrorCode, ProtocolError
from voxfleet.tokens import InvalidToken, TokenSigner

log = logging.getLogger(__name__)

FLUSH_SECONDS = 60.0
"""After a drain (or a second stop signal), how long connected clients get to receive their last finals
and close. Sessions without a client are released at once; with the leak of sessions that never got
`ready` fixed, nothing waits here for ghosts."""


class PodServer:
    def __init__(self, settings: PodSettings):
        settings.validate()
        self.settings = settings
        self.pod_id = settings.pod_id or socket.gethostname()
        self.metrics = PodMetrics()
        self.metrics.sessions_capacity.set(settings.max_sessions)
        self.signer = TokenSigner.from_secret(settings.token_secret)
        self.engine: WhisperEngine | None = None
        self.scheduler: BatchScheduler | None = None
        self.sessions: dict[str, Session] = {}
        self._grace: dict[str, asyncio.Task] = {}
        self.ready = False
        self.draining = False
        self.server: Server | None = None
        self.files = FileApi(self)
        self._http: web.AppRunner | None = None
        self._stopped = asyncio.Event()

    # --- lifecycle

    async def start(self) -> None:
        s = self.settings
        self._http = await api_runner(self.files.app())
        self.server = await serve(
            self._handle, s.host, s.port,
            create_connection=handoff_connection(self._http.server),
            process_request=self._process_request,
            max_size=s.max_frame_bytes,
            ping_interval=20, ping_timeout=20,
            compression=None,
            server_header="voxfleet-pod",
        )
        log.info("pod %s listening on %s", self.pod_id, ", ".join(self.urls))
        started = time.monotonic()
        config = EngineConfig(s.model, s.device, s.compute_type, s.cpu_threads, s.beam_size,
                              s.final_beam_size, s.encode_pad_seconds, s.encode_bucket_seconds,
                              final_input_seconds=s.final_input_seconds,
                              partial_input_seconds=s.partial_input_seconds, prompt_tokens=s.prompt_tokens,
                              temperature_fallback=s.temperature_fallback)
        self.engine = await asyncio.to_thread(WhisperEngine, config)
        warm = await asyncio.to_thread(self.engine.warm_up)
        self.metrics.model_load_seconds.set(time.monotonic() - started)
        self.scheduler = BatchScheduler(
            self.engine.decode, s.max_batch, s.batch_window_ms / 1000, s.partial_max_wait_ms / 1000, self.metrics,
            file_batch_with_live=s.file_batch_with_live,
            live_quiet=lambda: all(session.quiet for session in self.sessions.values()),
        )
        self.scheduler.start()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("model %s loaded in %.2f s, warm-up %.2f s: ready", s.model, self.engine.load_seconds, warm)

    @property
    def urls(self) -> list[str]:
        return ws_urls(self.server)

    @property
    def port(self) -> int:
        return next(iter(self.server.sockets)).getsockname()[1]

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        await self._stopped.wait()

    def _on_signal(self) -> None:
        if not self.draining:
            log.info("drain requested: refusing new sessions, %d active", len(self.sessions))
            asyncio.get_running_loop().create_task(self.drain())
        else:
            log.info("second stop signal: flushing all sessions now")
            asyncio.get_running_loop().create_task(self._close_all())

    async def drain(self) -> None:
        """Stop admitting, let sessions and file jobs finish (bounded), flush the rest, stop."""
        self.draining = True
        self.metrics.draining.set(1)
        deadline = time.monotonic() + self.settings.drain_timeout_seconds
        while (self.sessions or self.files.active) and time.monotonic() < deadline and not self._stopped.is_set():
            await asyncio.sleep(0.2)
        await self._close_all()

    async def _close_all(self) -> None:
        for session in list(self.sessions.values()):
            session.finish(CloseCode.GOING_AWAY)
        deadline = time.monotonic() + FLUSH_SECONDS
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions.values()):
                if session.ended and not session.connected:
                    self.release(session)  # nobody to deliver to
            await asyncio.sleep(0.05)  # connected ones send their finals and close
        await self.stop()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self.ready = False
        self.metrics.ready.set(0)
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        if self._http:
            await self._http.cleanup()
        if self.scheduler:
            await self.scheduler.stop()
        self._stopped.set()

    # --- sessions

    def admit(self) -> None:
        if not self.ready:
            raise ProtocolError(ErrorCode.FULL, "the model is still loading", CloseCode.TRY_AGAIN_LATER)
        if self.draining:
            raise ProtocolError(ErrorCode.DRAINING, "this pod is draining; connect again", CloseCode.TRY_AGAIN_LATER)
        if len(self.sessions) >= self.settings.max_sessions:
            raise ProtocolError(ErrorCode.FULL, f"all {self.settings.max_sessions} sessions are in use",
                                CloseCode.TRY_AGAIN_LATER)

    def open_session(self, start: p.Start, protocol: str, **stream_options) -> Session:
        """`stream_options`: StreamConfig fields the session sets itself (the realtime front end's turn detection)."""
        self.admit()
        s = self.settings
        if not self.engine.transcribes(start.language):
            kind = "multilingual" if self.engine.model.model.is_multilingual else "English-only"
            raise ProtocolError(ErrorCode.UNSUPPORTED_LANGUAGE,
                                f"this pod transcribes {self.engine.config.language!r} only (model {s.model}, "
                                f"{kind}); it cannot transcribe {start.language!r}", CloseCode.UNSUPPORTED)
        config = StreamConfig(
            partial_interval=s.partial_interval_ms / 1000, max_window=s.max_window_seconds,
            final_silence=s.final_silence_ms / 1000, vad_threshold=s.vad_threshold,
            speech_pad=s.speech_pad_ms / 1000, min_speech=s.min_speech_ms / 1000, partials=start.partials,
            partial_commits=s.partial_commits,
            context_seconds=s.context_seconds, final_merge_seconds=s.final_merge_seconds, prompt=start.prompt,
            previous_text=start.previous_text,
        )
        config = replace(config, **stream_options)
        stream = SessionStream(config, StreamingVad().feed)
        session = Session(start, stream, self.scheduler, self.metrics, s.max_reorder_frames, protocol)
        self.sessions[session.id] = session
        self.scheduler.live_sessions = len(self.sessions)
        self.metrics.sessions_total.labels(protocol).inc()
        self.metrics.sessions_active.set(len(self.sessions))
        log.info("session %s opened (%s, %s, %d Hz %s x%d)", session.id, protocol, start.priority,
                 start.audio.sample_rate, start.audio.encoding, start.audio.channels)
        return session

    def token_for(self, session: Session) -> str:
        ttl = self.settings.resume_grace_seconds + self.settings.max_session_seconds
        return self.signer.sign(session.id, self.pod_id, ttl)

    def resume_session(self, token: str) -> Session:
        try:
            claims = self.signer.verify(token)
        except InvalidToken as exc:
            raise ProtocolError(ErrorCode.INVALID_TOKEN, str(exc), CloseCode.POLICY) from None
        session = self.sessions.get(claims.session_id)
        if claims.pod != self.pod_id or session is None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "that session is not on this pod (ended, or grace period over)",
                                CloseCode.POLICY)
        if session.connected:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "that session is still connected", CloseCode.POLICY)
        grace = self._grace.pop(session.id, None)
        if grace:
            grace.cancel()
        self.metrics.resumes.inc()
        log.info("session %s resumed", session.id)
        return session

    def detach(self, session: Session, resumable: bool = True) -> None:
        """The client went away mid-session: wait for a resume, then flush and release."""
        if session.ended or not resumable:
            session.finish()
            self._grace[session.id] = asyncio.get_running_loop().create_task(self._release_when_done(session, 0))
            return
        log.info("session %s lost its connection; holding it %g s for a resume", session.id,
                 self.settings.resume_grace_seconds)
        self._grace[session.id] = asyncio.get_running_loop().create_task(
            self._release_when_done(session, self.settings.resume_grace_seconds))

    async def _release_when_done(self, session: Session, grace: float) -> None:
        await asyncio.sleep(grace)
        session.finish()
        while not session.ended:
            await asyncio.sleep(0.05)
        self._grace.pop(session.id, None)
        self.release(session)

    def release(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None:
            log.info("session %s closed: %.1f s audio, %d finals", session.id, session.audio_seconds,
                     session.stream.next_segment_id)
        self.metrics.sessions_active.set(len(self.sessions))
        if self.scheduler:
            self.scheduler.live_sessions = len(self.sessions)

    # --- connections

    async def _handle(self, ws: ServerConnection) -> None:
        if realtime.is_realtime_path(ws.request.path):  # OpenAI's Realtime API: the server speaks first
            return await realtime.serve_realtime(self, ws)
        try:
            first = await asyncio.wait_for(ws.recv(), self.settings.start_timeout_seconds)
        except asyncio.TimeoutError:
            self.metrics.refusals.labels(ErrorCode.START_TIMEOUT).inc()
            return await native.refuse(ws, ProtocolError(ErrorCode.START_TIMEOUT, "no start message in time"))
        except ConnectionClosed:
            return
        try:
            if isinstance(first, bytes):
                raise ProtocolError(ErrorCode.AUDIO_BEFORE_START, "send a 'start' message before audio")
            obj = p.decode_json(first)
            if whisperlive.is_whisperlive(obj):
                return await whisperlive.serve_whisperlive(self, ws, obj)
            message = p.parse_client_message(first)
            await native.serve_native(self, ws, message)
        except ProtocolError as exc:
            self.metrics.refusals.labels(exc.code).inc()
            await native.refuse(ws, exc)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection failed")
            await native.refuse(ws, ProtocolError(ErrorCode.INTERNAL, "internal error", CloseCode.INTERNAL))

    def status(self) -> dict:
        return {
            "pod": self.pod_id,
            "ready": self.ready and not self.draining,
            "draining": self.draining,
            "capacity": self.settings.max_sessions,
            "active_sessions": len(self.sessions),
            "free_slots": max(0, self.settings.max_sessions - len(self.sessions)) if not self.draining else 0,
            "queue_length": self.scheduler.queue_length if self.scheduler else 0,
            "file_capacity": self.settings.max_file_jobs,
            "file_jobs": self.files.active,
            "file_free": max(0, self.settings.max_file_jobs - self.files.active) if self.ready and not self.draining else 0,
            "model": self.settings.model,
            "device": self.settings.device,
            "max_batch": self.settings.max_batch,
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        refused = refuse_malformed(request, "Upgrade")
        if refused is not None:
            return refused
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if request.path.split("?")[0] in ("/", "/v1/stream") or realtime.is_realtime_path(request.path):
                return None
            return respond(http.HTTPStatus.NOT_FOUND, "no WebSocket endpoint here; connect to /\n")
        path = request.path.split("?")[0]
        if path == "/healthz":
            return respond(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.ready and not self.draining:
                return respond(http.HTTPStatus.OK, "ready\n")
            reason = "draining" if self.draining else "loading model"
            return respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n")
        if path == "/metrics":
            return respond(http.HTTPStatus.OK, self.metrics.render(), METRICS_CONTENT_TYPE)
        if path == "/status":
            return respond(http.HTTPStatus.OK, json.dumps(self.status()) + "\n", "application/json")
        return respond(http.HTTPStatus.NOT_FOUND, NOT_FOUND)


async def run_pod(settings: PodSettings) -> None:
    pod = PodServer(settings)
    await pod.start()
    await pod.run_until_stopped()
