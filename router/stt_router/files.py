"""`POST /v1/audio/transcriptions` on the router: OpenAI's file transcription API, queued and relayed to pods.

The request comes on the router's one port (voxfleet.handoff gives POSTs to
aiohttp, WebSockets stay with websockets). The API key is checked as for
sessions (`Authorization: Bearer KEY`, as the openai SDK sends it, or
`X-API-Key`); a missing or wrong one gets 401 with OpenAI's error document.
The router reads the whole upload (at most `max_upload_bytes`: 413) and
keeps it until the answer is sent, so a job can be sent again: it waits in
the file queue (filequeue.py: jobs, bytes and wait bounded; 429 when full,
503 after `file_queue_timeout_seconds`), goes to a pod with a free file slot,
and the pod's answer is relayed as it comes: status, Content-Type and body,
or for `stream=true` the server-sent events one by one.

A pod that fails before its answer is complete (cannot be reached, resets
or closes the connection, is killed) costs an attempt and the job goes to
another pod, up to `file_attempts` pods; a pod that refuses it (429 busy,
503 loading or draining) costs no attempt: the job waits for a slot again,
within its queue deadline. Either way the client gets one complete answer,
or one error. A stream already partly relayed continues from the next pod
without repeats: that pod transcribes the file from the start, and the
`transcript.text.delta` events the client already has are counted and not
sent again (filequeue.DeltaSkipper); the `transcript.text.done` event is
the finishing pod's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from stt_router import apikeys
from stt_router.apikeys import AuthError, Principal
from stt_router.filequeue import DeltaSkipper, FileQueue, SseEvents, choose_file_pod
from stt_router.placement import PodView
from stt_router.splice import RouterServerConnection
from voxfleet import openai_audio as oa
from voxfleet.handoff import api_runner, handoff_connection
from voxfleet.uploads import client_max_size, read_upload

if TYPE_CHECKING:
    from stt_router.server import RouterServer

log = logging.getLogger(__name__)

RETRYABLE_STATUS = (429, 503)
"""A pod's answers that mean 'not now, not here' (busy, loading, draining): the job waits for another slot."""


class Refusal(Exception):
    """The router's own answer to a file job: an OpenAI error, and the metric reason it ends with."""

    def __init__(self, reason: str, error: oa.RequestError):
        super().__init__(error.message)
        self.reason, self.error = reason, error


class PodFailed(Exception):
    """One attempt on a pod gave no complete answer; `refused`: the pod said so (429, 503) before starting."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class ClientGone(Exception):
    """Writing to the client failed: it left."""


@dataclass(eq=False)
class FileJob:
    """One upload, kept until its answer is sent, and where it stands."""

    fields: list[tuple[str, str]]  # the form's other fields, in order, repeats kept
    data: bytes
    filename: str
    content_type: str
    stream: bool
    exclude: set[str] = field(default_factory=set)  # pods that failed it
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pod: PodView | None = None
    deadline: float = 0.0  # when it stops waiting for a slot (loop time); set when it is queued
    placed_under: int = 0  # the pod's report count when it was placed (PodView.file_released)
    response: web.StreamResponse | None = None  # the client's event stream, once opened
    skipper: DeltaSkipper = field(default_factory=DeltaSkipper)


def error_response(exc: oa.RequestError) -> web.Response:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return web.Response(status=exc.status, body=exc.body(), content_type="application/json", headers=headers)


def http_url(ws_url: str) -> str:
    """A pod's session URL (ws://host:port) as the base of its HTTP API."""
    if ws_url.startswith("wss://"):
        return "https://" + ws_url[len("wss://"):].rstrip("/")
    if ws_url.startswith("ws://"):
        return "http://" + ws_url[len("ws://"):].rstrip("/")
    return ws_url.rstrip("/")


def router_handoff_connection(http_factory):
    """The router's connections (splice.py's fast path) that hand HTTP API requests to aiohttp (voxfleet.handoff)."""
    handoff = handoff_connection(http_factory)

    class RouterHandoffConnection(handoff, RouterServerConnection):
        pass  # MRO: the handoff looks at the first bytes, then the splice reads frames, then websockets

    return RouterHandoffConnection


class FileLane:
    """The router's file endpoint: admission, the file queue, dispatch to pods, relaying and failover."""

    def __init__(self, router: "RouterServer"):
        self.router = router
        s = router.settings
        self.settings = s
        self.queue = FileQueue(s.max_file_queue, s.max_file_queue_bytes, s.file_queue_timeout_seconds)
        self.active = 0  # jobs placed on a pod now
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    # --- lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=client_max_size(self.settings.max_upload_bytes))
        app.router.add_post(oa.TRANSCRIPTIONS_PATH, self.transcriptions)
        return app

    async def start(self) -> None:
        self.runner = await api_runner(self.app())  # every answer closes its connection; handlers cancelled when
        # their client goes
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.pod_connect_timeout_seconds)
        self.session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                             auto_decompress=False)

    def connection_class(self):
        """`create_connection` for the router's websockets server."""
        return router_handoff_connection(self.runner.server)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()  # cancels the handlers still running
        if self.session is not None:
            await self.session.close()

    # --- dispatch (pure policy in filequeue.py)

    def dispatch(self) -> None:
        """Give free file slots to waiting jobs, in queue order."""
        pods = self.router.pool.pods
        for waiter in self.queue:
            if not any(p.file_free > 0 for p in pods.values()):
                break
            job: FileJob = waiter.item
            exclude = frozenset(job.exclude) if not job.exclude.issuperset(pods) else frozenset()
            pod = choose_file_pod(pods.values(), exclude)
            if pod is None:
                continue
            self.queue.remove(waiter)
            job.placed_under = pod.file_placed()
            job.pod = pod
            self.active += 1
            job.changed.set()
        self.update_gauges()

    def update_gauges(self) -> None:
        self.router.metrics.file_jobs_queued.set(len(self.queue))
        self.router.metrics.file_jobs_active.set(self.active)

    def _release(self, job: FileJob) -> None:
        pod, job.pod = job.pod, None
        if pod is not None:
            pod.file_released(job.placed_under)
            self.active -= 1
        self.dispatch()

    async def _place(self, job: FileJob, priority: str, deadline: float | None, bounded: bool) -> PodView:
        """A file slot for `job`, waiting in the file queue until `deadline` (None: the full wait from now)."""
        loop = asyncio.get_running_loop()
        job.changed.clear()
        # In line first, bounds after: a job a pod takes at once never waited, so the bounds are not its.
        waiter = self.queue.push(job, priority, len(job.data), loop.time(), deadline, bounded=False)
        job.deadline = waiter.deadline
        self.dispatch()
        if bounded and job.pod is None and self.queue.over_bounds():
            self.queue.remove(waiter)
            self.update_gauges()
            raise Refusal("queue_full", oa.RequestError(
                429, f"no file slot is free and the file queue is full ({len(self.queue)} jobs, {self.queue.bytes} "
                f"bytes waiting; at most {self.queue.max_jobs} and {self.queue.max_bytes})", code="queue_full",
                kind="server_error"))
        try:
            while job.pod is None:
                remaining = waiter.deadline - loop.time()
                if remaining <= 0:
                    raise Refusal("queue_timeout", oa.RequestError(
                        503, f"no pod had a free file slot within {self.queue.max_wait:g} s", code="queue_timeout",
                        kind="server_error"))
                job.changed.clear()
                try:
                    await asyncio.wait_for(job.changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            return job.pod
        except BaseException:
            if job.pod is not None:  # placed, but its handler is leaving (cancelled: the client went)
                self._release(job)
            raise
        finally:
            if job.pod is None:
                self.queue.remove(waiter)
            self.router.metrics.file_queue_wait.observe(loop.time() - waiter.enqueued)
            self.update_gauges()

    # --- the endpoint

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        metrics = self.router.metrics
        try:
            principal = self._authenticate(request)
            if self.router.draining:
                raise Refusal("draining", oa.RequestError(503, "this router is draining; try again",
                                                          code="draining", kind="server_error"))
            job = await read_job(request, self.settings.max_upload_bytes, self.settings.upload_timeout_seconds)
        except Refusal as exc:
            metrics.file_jobs.labels(exc.reason).inc()
            log.info("file job refused: %s", exc.error.message)
            return error_response(exc.error)
        metrics.file_upload_bytes.observe(len(job.data))
        try:
            response, reason = await self._run(request, job, principal)
        except Refusal as exc:
            metrics.file_jobs.labels(exc.reason).inc()
            log.info("file job %s refused: %s", job.filename, exc.error.message)
            return error_response(exc.error)
        except asyncio.CancelledError:
            metrics.file_jobs.labels("client_gone").inc()
            raise
        except ClientGone:
            metrics.file_jobs.labels("client_gone").inc()
            return job.response or web.Response(status=499)
        finally:
            job.data = b""  # the answer is sent (or never will be): the upload is not needed any more
        metrics.file_jobs.labels(reason).inc()
        return response

    def _authenticate(self, request: web.Request) -> Principal:
        try:
            return self.router.keys.authenticate(apikeys.presented_key(request.headers, request.path_qs))
        except AuthError as exc:
            raise Refusal("unauthorized", oa.RequestError(401, exc.message, code="invalid_api_key")) from None

    async def _run(self, request: web.Request, job: FileJob, principal: Principal) -> tuple[web.StreamResponse, str]:
        """Place and send the job until one pod answers it completely: (the response, the metric reason)."""
        attempts = self.settings.file_attempts
        failures = 0
        priority, deadline, bounded = principal.priority, None, True
        last = "no attempt"
        while True:
            try:
                pod = await self._place(job, priority, deadline, bounded)
            except Refusal as exc:
                if job.response is None:
                    raise
                await self._end_stream(job, exc.error.message)
                return job.response, "failed"
            try:
                return await self._attempt(request, job, pod)
            except PodFailed as exc:
                last = str(exc)
                if exc.refused:
                    self.router.metrics.file_retries.labels("refused").inc()
                    pod.refused_files = True  # until its next /status
                    log.info("file job %s: %s; it waits for another slot", job.filename, exc)
                    deadline = job.deadline  # no attempt spent, and no new wait: refusals cannot keep it forever
                else:
                    failures += 1
                    job.exclude.add(pod.name)
                    self.router.pool.lost(pod.name)
                    log.warning("file job %s: attempt %d of %d failed: %s", job.filename, failures, attempts, exc)
                    if failures >= attempts:
                        break
                    self.router.metrics.file_retries.labels("failed").inc()
                    deadline = None  # a fresh wait: it had waited and been admitted already
            finally:
                self._release(job)
            priority, bounded = "failover", False
        message = f"the file could not be transcribed: {failures} pods failed (last: {last})"
        if job.response is not None:
            await self._end_stream(job, message)
            return job.response, "failed"
        raise Refusal("failed", oa.RequestError(503, message, code="pods_failed", kind="server_error"))

    async def _attempt(self, request: web.Request, job: FileJob, pod: PodView) -> tuple[web.StreamResponse, str]:
        """Send the job to `pod` and relay its answer; raises PodFailed when the answer is not complete.

        A pod that hangs without closing the connection is seen by its /status polls: once they
        have failed `status_failure_threshold` times in a row, the attempt is given up (there is no
        read timeout on the answer itself: a long file takes minutes before its first byte)."""
        work = asyncio.ensure_future(self._exchange(request, job, pod))
        watch = asyncio.ensure_future(self._watch(pod))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            watch.cancel()
            await asyncio.gather(work, watch, return_exceptions=True)
            raise
        if work.done():
            watch.cancel()
            return work.result()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise PodFailed(f"pod {pod.name} stopped answering its /status polls ({pod.failed_polls} failed in a row)")

    async def _watch(self, pod: PodView) -> None:
        """Return when the pod's /status polls say it is gone (it hangs, or its host does)."""
        url, threshold = pod.url, self.router.pool.failure_threshold
        while pod.url == url and pod.failed_polls < threshold:
            await asyncio.sleep(self.settings.status_interval_seconds)

    async def _exchange(self, request: web.Request, job: FileJob, pod: PodView) -> tuple[web.StreamResponse, str]:
        form = aiohttp.FormData(quote_fields=False)
        for name, value in job.fields:
            form.add_field(name, value)
        form.add_field("file", job.data, filename=job.filename, content_type=job.content_type)
        url = http_url(pod.url) + oa.TRANSCRIPTIONS_PATH
        log.info("file job %s (%d bytes%s) sent to pod %s", job.filename, len(job.data),
                 ", streamed" if job.stream else "", pod.name)
        try:
            async with self.session.post(url, data=form, headers={"User-Agent": "voxfleet-router"}) as resp:
                if resp.status in RETRYABLE_STATUS:
                    await resp.read()
                    raise PodFailed(f"pod {pod.name} answered {resp.status}", refused=True)
                if job.stream and resp.status == 200 and resp.content_type == "text/event-stream":
                    return await self._relay_stream(request, job, pod, resp)
                body = await resp.read()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise PodFailed(f"pod {pod.name}: {type(exc).__name__}: {exc}") from None
        content_type = resp.headers.get("Content-Type", "application/octet-stream")
        if job.response is not None:  # the client's stream is open: an answer other than a stream ends it
            await self._end_stream(job, f"the pod answered {resp.status}: {body[:500].decode(errors='replace')}")
            return job.response, "failed"
        return web.Response(status=resp.status, body=body, headers={"Content-Type": content_type}), \
            "done" if resp.status < 300 else "refused"

    async def _relay_stream(self, request: web.Request, job: FileJob, pod: PodView,
                            resp: aiohttp.ClientResponse) -> tuple[web.StreamResponse, str]:
        """Relay a pod's event stream as it arrives, skipping the deltas the client already has."""
        if job.response is None:
            job.response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await _to_client(job.response.prepare(request))
        skipper = job.skipper
        skipper.new_attempt()
        events = SseEvents()
        async for chunk in resp.content.iter_any():
            for raw, obj in events.feed(chunk):
                if skipper.admit(obj):
                    await _to_client(job.response.write(raw))
                if skipper.done:
                    await _to_client(job.response.write_eof())
                    failed = obj is not None and obj.get("type") == "error"
                    return job.response, "failed" if failed else "done"
        raise PodFailed(f"pod {pod.name}: the event stream ended before its last event "
                        f"({skipper.sent} deltas relayed)")

    async def _end_stream(self, job: FileJob, message: str) -> None:
        """The client's stream is open and no pod will finish it: its last event is an error."""
        await _to_client(job.response.write(oa.error_event(message)))
        await _to_client(job.response.write_eof())


async def _to_client(write) -> None:
    try:
        await write
    except ConnectionError as exc:  # aiohttp's ClientConnectionResetError is one too
        raise ClientGone(str(exc)) from None


async def read_job(request: web.Request, max_upload_bytes: int, timeout: float) -> FileJob:
    """The multipart form as a job; Refusal: 400 when it is not one or has no file, 408 too slow, 413 too large."""
    try:
        upload = await read_upload(request, max_upload_bytes, timeout)
    except oa.RequestError as exc:
        raise Refusal({413: "too_large", 408: "upload_timeout"}.get(exc.status, "bad_request"), exc) from None
    return FileJob(upload.fields, upload.data, upload.filename, upload.content_type, upload.stream)
