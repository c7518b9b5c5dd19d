"""A live session: ordered audio in, decode work out, results kept for delivery.

Glue between a protocol front end (native or WhisperLive), the session's
`SessionStream` and the pod's shared `BatchScheduler`. It outlives its
WebSocket: results go to an outbox that a connection reads from a cursor, so
a client that drops and resumes gets the finals produced while it was away,
and a drain can flush a session whose client is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

from stt_pod.audio import AudioDecoder
from stt_pod.metrics import PodMetrics
from stt_pod.ordering import FrameOrderer
from stt_pod.scheduler import BatchScheduler
from stt_pod.stream import FINAL, FinalEvent, Job, PartialEvent, SessionStream, SpeechWatch
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR
from voxfleet.protocol import CloseCode, Configure, ErrorCode, ProtocolError, Start

log = logging.getLogger(__name__)

MAX_FINAL_HISTORY = 2000
"""Finals kept for redelivery on resume; older ones were surely received."""


@dataclass(frozen=True)
class EndEvent:
    """The session is over: every final is in the outbox before this."""

    close_code: int
    audio_seconds: float
    segments: int
    error: ProtocolError | None = None


@dataclass(frozen=True)
class WarningEvent:
    code: str
    message: str
    first: int
    last: int


@dataclass(frozen=True)
class FlushedEvent:
    """A client's flush is done: the finals it produced (these segment ids) are in the outbox before this."""

    segments: tuple[int, ...]


@dataclass(frozen=True)
class SpeechEvent:
    """The VAD heard speech start, or its utterance close (sessions that asked for speech events)."""

    started: bool
    at: float  # session seconds


Event = FinalEvent | WarningEvent | FlushedEvent | SpeechEvent | EndEvent


class Session:
    def __init__(self, start: Start, stream: SessionStream, scheduler: BatchScheduler,
                 metrics: PodMetrics, max_reorder_frames: int, protocol: str = "native"):
        self.id = uuid.uuid4().hex
        self.start = start
        self.protocol = protocol
        self.stream = stream
        self.decoder = AudioDecoder(start.audio)
        self.orderer = FrameOrderer(max_reorder_frames)
        self._scheduler = scheduler
        self._metrics = metrics
        self.outbox: list[Event] = []  # finals, warnings, end; partials are not history
        self.outbox_base = 0  # index of outbox[0] since the session began
        self.partial: PartialEvent | None = None
        self.partial_version = 0
        self.changed = asyncio.Event()  # set when there is something new to send
        self._in_flight: set[asyncio.Future] = set()
        self.ended: EndEvent | None = None
        self.connected = False
        self.last_activity = time.monotonic()
        self._backlog_ok = asyncio.Event()
        self._backlog_ok.set()
        self._frame_ends: deque[tuple[int, int]] = deque()  # (seq, session samples after it)
        self._committed_seq = -1
        self._end_close_code = CloseCode.NORMAL
        self._end_error: ProtocolError | None = None
        self._flushes: deque[tuple[int, int]] = deque()  # per pending flush: (utterances to settle, first segment id)
        self._speech = SpeechWatch(stream) if start.speech_events else None
        self._last_stopped = 0.0

    # --- audio in

    @property
    def audio_seconds(self) -> float:
        return self.stream.total / SR

    def accept_frame(self, seq: int, payload: bytes) -> None:
        """Apply one binary frame (any order); raises ProtocolError on bad audio."""
        self.last_activity = time.monotonic()
        if self.stream.finished:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "audio after end of audio")
        self.decoder.check(payload)
        ordered = self.orderer.push(seq, bytes(payload))
        self._apply(ordered)

    def _apply(self, ordered) -> None:
        if ordered.duplicate:
            self._metrics.frames_duplicate.inc()
        for first, last in ordered.skipped:
            self._metrics.frames_gap.inc()
            self._post(WarningEvent("gap", f"audio frames {first}..{last} never arrived; skipped", first, last))
        now = time.monotonic()
        for seq, payload in ordered.frames:
            samples = self.decoder.decode(payload)
            self._feed(samples, now)
            self._frame_ends.append((seq, self.stream.total))
        self._watch_speech()
        self.pump()

    def _feed(self, samples: np.ndarray, now: float) -> None:
        self.stream.feed(samples, now)
        self._metrics.audio_seconds.inc(len(samples) / SR)

    def ack(self) -> tuple[int, int, float]:
        """(highest frame applied, highest frame whose audio is all final, seconds final)."""
        committed = self.stream.committed if not self.ended else self.stream.total
        while self._frame_ends and self._frame_ends[0][1] <= committed:
            self._committed_seq = self._frame_ends.popleft()[0]
        if self.ended and not self._frame_ends:
            self._committed_seq = self.orderer.last_applied
        return self.orderer.last_applied, self._committed_seq, committed / SR

    async def wait_for_backlog(self, max_seconds: float) -> None:
        """Backpressure: hold the reader while too much audio awaits decoding."""
        while self.stream.backlog_seconds > max_seconds and not self.ended:
            self._backlog_ok.clear()
            await self._backlog_ok.wait()

    def finish(self, close_code: int = CloseCode.NORMAL, error: ProtocolError | None = None) -> None:
        """End of audio (or end forced by the pod): flush every remaining final."""
        if self.stream.finished:
            return
        self._end_close_code, self._end_error = close_code, error
        try:
            self._apply(self.orderer.flush())
            self._feed(self.decoder.flush(), time.monotonic())
        except ProtocolError as exc:  # held frames were bad: keep what was good, and say so as for any bad frame
            log.info("session %s: dropping bad held audio at end: %s", self.id, exc.message)
            self._metrics.refusals.labels(exc.code).inc()
            if self._end_error is None:
                self._end_close_code, self._end_error = exc.close_code, exc
        self.stream.finish()
        self._watch_speech()
        self.pump()

    def flush(self) -> bool:
        """Finalize the speech heard so far now, without ending the session (a client's commit).

        True when open speech was closed (its final will follow)."""
        if self.stream.finished:
            return False
        closed = self.stream.flush()
        self._watch_speech()
        self.pump()
        return closed

    def request_flush(self) -> None:
        """A native client's `flush`: finalize what was heard so far; a FlushedEvent follows its finals."""
        if self.stream.finished:
            return
        self.flush()
        self._flushes.append((self.stream.utterances, self.stream.next_segment_id))
        self._check_flushes()

    def configure(self, change: Configure) -> None:
        """A native client's `configure`: new options from the next window (and the open utterance's silence)."""
        self.last_activity = time.monotonic()
        silence = None if change.final_silence_ms is None else change.final_silence_ms / 1000
        self.stream.configure(change.partials, change.prompt, silence)
        if change.partials is False and self.partial is not None:
            self.partial = None
            self.partial_version += 1

    def _watch_speech(self) -> None:
        if self._speech is None:
            return
        for edge, at in self._speech.poll():
            if edge == "stopped":
                self._last_stopped = at
                self._post(SpeechEvent(False, at))
            else:  # a start never reported (a short utterance closed at once) began after the last one stopped
                self._post(SpeechEvent(True, self._last_stopped if at is None else at))
    @property
    def quiet(self) -> bool:
        """No utterance open, no decode pending: this session's next final is at least an utterance away."""
        return not self._in_flight and not self.stream.segmenter.in_speech and not self.stream.wants_final()

    # --- decode work

    def pump(self) -> None:
        """Hand the stream's new work to the scheduler."""
        if self.stream.wants_final() and self.stream.partial_in_flight:
            self._scheduler.withdraw_partial(self)  # its future resolves None: see _done
        for job in self.stream.jobs():
            future = self._scheduler.submit(self, job, self.start.priority)
            self._in_flight.add(future)
            future.add_done_callback(lambda f, job=job: self._done(job, f))
        self._check_flushes()
        self._check_end()

    def _check_flushes(self) -> None:
        while self._flushes and self.stream.settled >= self._flushes[0][0]:
            _, first = self._flushes.popleft()
            self._post(FlushedEvent(tuple(range(first, self.stream.next_segment_id))))

    def _done(self, job: Job, future: asyncio.Future) -> None:
        self._in_flight.discard(future)
        if future.cancelled():
            words = None
        elif future.exception() is not None:
            log.error("session %s: decode failed: %r", self.id, future.exception())
            words = None
            if self._end_error is None:
                self._end_close_code = CloseCode.INTERNAL
                self._end_error = ProtocolError(ErrorCode.INTERNAL, "decoding failed", CloseCode.INTERNAL)
        else:
            words = future.result()
        for event in self.stream.on_result(job, words, time.monotonic()):
            if isinstance(event, FinalEvent):
                self._metrics.finals.inc()
                if event.latency is not None:
                    self._metrics.final_latency.observe(event.latency)
                self._post(event)
            elif self.connected and self.stream.config.partials:
                self._metrics.partials.inc()
                self.partial = event
                self.partial_version += 1
                self._notify()
        if job.kind == FINAL and self.partial is not None:
            self.partial = None  # the final covers what the partial showed
            self.partial_version += 1
            self._notify()
        self._backlog_ok.set()  # the reader re-checks its backlog
        self.pump()

    def _check_end(self) -> None:
        if self.ended is None and self.stream.done:
            self.ended = EndEvent(self._end_close_code, self.audio_seconds, self.stream.next_segment_id, self._end_error)
            self._post(self.ended)
            self._backlog_ok.set()

    # --- results out

    def _post(self, event: Event) -> None:
        self.outbox.append(event)
        if len(self.outbox) > MAX_FINAL_HISTORY:
            drop = len(self.outbox) - MAX_FINAL_HISTORY
            del self.outbox[:drop]
            self.outbox_base += drop
        self._notify()

    def _notify(self) -> None:
        self.changed.set()

    def cursor_after_segment(self, segment_id: int) -> int:
        """Outbox position just past final `segment_id` (for resume)."""
        for i, event in enumerate(self.outbox):
            if isinstance(event, FinalEvent) and event.segment_id > segment_id:
                return self.outbox_base + i
        return self.outbox_base + len(self.outbox)

    def events_from(self, cursor: int) -> list[Event]:
        return self.outbox[max(0, cursor - self.outbox_base):]
