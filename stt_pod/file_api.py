"""`POST /v1/audio/transcriptions` on a pod: OpenAI's file transcription API over the file lane.

The form fields are OpenAI's: `file`, `model` (any name: the pod answers
with its own model), `language`, `prompt`, `temperature` (accepted; the pod
decodes at 0 with Whisper's temperature fallback, as faster-whisper does),
`response_format`, `timestamp_granularities[]` and `stream`. Refusals use
OpenAI's error document: 400 for a form or file that cannot be used, 413 over
the upload or duration limit, 429 when `max_file_jobs` are running, 503 while
loading or draining.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from stt_pod.files import decode_upload, plan_chapters, speech_probabilities, speech_spans, transcribe_file
from voxfleet import openai_audio as oa
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR
from voxfleet.uploads import Upload, client_max_size, read_upload

if TYPE_CHECKING:
    from stt_pod.server import PodServer

log = logging.getLogger(__name__)

def error_response(exc: oa.RequestError) -> web.Response:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return web.Response(status=exc.status, body=exc.body(), content_type="application/json", headers=headers)


class FileApi:
    def __init__(self, pod: "PodServer"):
        self.pod = pod
        self.active = 0
        self.held_seconds = 0.0  # decoded audio of the files in progress, all in memory (4 bytes a sample)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=client_max_size(self.pod.settings.max_upload_bytes))
        app.router.add_post(oa.TRANSCRIPTIONS_PATH, self.transcriptions)
        return app

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        metrics = self.pod.metrics
        try:
            self._admit()
        except oa.RequestError as exc:
            metrics.file_jobs.labels("refused").inc()
            return error_response(exc)
        self.active += 1  # from the first byte: uploads in progress hold memory too
        metrics.file_jobs_active.set(self.active)
        try:
            s = self.pod.settings
            form = Form(await read_upload(request, s.max_upload_bytes, s.upload_timeout_seconds))
            return await self._transcribe(request, form)
        except oa.RequestError as exc:
            metrics.file_jobs.labels("refused").inc()
            return error_response(exc)
        except (asyncio.CancelledError, ConnectionResetError):
            metrics.file_jobs.labels("client_gone").inc()
            raise
        except Exception:
            log.exception("file transcription failed")
            metrics.file_jobs.labels("failed").inc()
            return error_response(oa.RequestError(500, "internal error while transcribing", kind="server_error"))
        finally:
            self.active -= 1
            metrics.file_jobs_active.set(self.active)

    def _admit(self) -> None:
        pod = self.pod
        if not pod.ready or pod.draining:
            reason = "draining" if pod.draining else "loading its model"
            raise oa.RequestError(503, f"this pod is {reason}; try another", code=reason.split()[0], kind="server_error")
        if self.active >= pod.settings.max_file_jobs:
            raise oa.RequestError(429, f"all {pod.settings.max_file_jobs} file slots of this pod are in use",
                                  code="busy", kind="server_error")

    async def _transcribe(self, request: web.Request, form: "Form") -> web.StreamResponse:
        pod = self.pod
        if not pod.engine.transcribes(form.language):
            raise oa.RequestError(400, f"this server transcribes {pod.engine.config.language!r} only; it cannot "
                                  f"transcribe {form.language!r}", "language", "unsupported_language")
        audio = await asyncio.to_thread(decode_upload, form.data, pod.settings.max_file_seconds)
        duration = len(audio) / SR
        form.data = b""  # decoded: the upload itself is not needed any more
        budget = pod.settings.max_file_audio_held_seconds
        if self.held_seconds and self.held_seconds + duration > budget:
            raise oa.RequestError(429, f"this pod holds {self.held_seconds:.0f} s of decoded uploads; this file's "
                                  f"{duration:.0f} s would pass its {budget:g} s limit", code="busy",
                                  kind="server_error")
        self.held_seconds += duration
        try:
            return await self._decode(request, form, audio, duration)
        finally:
            self.held_seconds -= duration

    async def _decode(self, request: web.Request, form: "Form", audio, duration: float) -> web.StreamResponse:
        pod = self.pod
        pod.metrics.file_audio_seconds.inc(duration)
        speech = await asyncio.to_thread(speech_probabilities, audio)
        spans = speech_spans(speech, pod.settings.vad_threshold)
        chapters = plan_chapters(len(audio), spans, int(pod.settings.file_chapter_seconds * SR))
        log.info("file %s: %.1f s of audio, %d chapter(s)", form.filename, duration, len(chapters))
        results = transcribe_file(pod.scheduler.submit, audio, chapters, form.prompt, pod.settings.file_beam_size,
                                  speech=speech)
        segments: list[oa.Segment] = []
        if not form.stream:
            async for result in results:
                segments.extend(result.segments)
            transcript = oa.Transcript(tuple(segments), duration)
            body, content_type = oa.render(transcript, form.response_format, form.granularities)
            pod.metrics.file_jobs.labels("done").inc()
            return web.Response(body=body, headers={"Content-Type": content_type})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            async for result in results:
                segments.extend(result.segments)
                text = " ".join(s.text.strip() for s in result.segments if s.text.strip())
                if text:
                    text = (" " if len(segments) > len(result.segments) else "") + text
                    await response.write(oa.delta_event(text, result.end, duration))
            await response.write(oa.done_event(oa.Transcript(tuple(segments), duration)))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # the status line is sent: the failure is the stream's last event
            log.exception("streamed file transcription failed")
            pod.metrics.file_jobs.labels("failed").inc()
            await response.write(oa.error_event(f"transcription failed: {exc}"))
            return response
        pod.metrics.file_jobs.labels("done").inc()
        await response.write_eof()
        return response


class Form:
    """The fields of a transcription request, checked."""

    def __init__(self, upload: Upload):
        self.data = upload.data
        self.filename = upload.filename
        self.language = upload.field("language") or None
        self.prompt = upload.field("prompt")
        self.response_format = upload.field("response_format") or "json"
        self.granularities = upload.values("timestamp_granularities[]", "timestamp_granularities")
        self.stream = upload.stream
        oa.check_format(self.response_format, self.granularities)
        try:
            float(upload.field("temperature") or 0)
        except ValueError:
            raise oa.RequestError(400, "temperature must be a number", "temperature") from None
