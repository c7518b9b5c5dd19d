"""One session's streaming decoder, sans I/O: audio in, decode jobs and results out.

The state machine behind every session, whatever its protocol. It owns the
session's 16 kHz audio, finds speech with the VAD, decides what to decode and
when, and turns decode results into partials and finals:

- a closed utterance (speech, then `final_silence_ms` of quiet) becomes a
  *final* job over just that utterance;
- while speech goes on, every `partial_interval_ms` of new audio becomes a
  *partial* job over the open utterance, shown as the partial. Partials hear
  a cut encoder input (the engine's), so by default they only show text and
  finals decide every word; with `partial_commits`, LocalAgreement-2 commits
  the words two consecutive partials agree on as finals (lower latency, more
  errors: docs/benchmarks.md);
- windows always start at their utterance's start, not at the last committed
  word: Whisper hears a sentence much better from its beginning, and words
  already committed are recognised by their time and dropped;
- context: a final's window also holds up to `context_seconds` of the audio
  before its utterance (a partial's only with `partial_context`), and every
  window carries the session's final text from before its audio
  (`Job.previous`, the decoder's prompt) and its own `prompt`. Whisper is
  trained on speech in its context; an utterance heard alone loses words;
- the speech in a window never exceeds `max_window_seconds` (the segmenter
  splits long speech), so the cost per second of audio does not grow with
  session length.

At most one partial is in flight, and finals are only created when none is,
so the commit point a result is compared with is never stale: nothing is said twice.
A session has one final in flight at a time: the utterances that close
meanwhile wait and are decoded together in one window (up to
`final_merge_seconds`), so a loaded pod spends one encoder pass on several
utterances of a session instead of one each, and a fast upload goes through
in long windows, as offline decoding reads a file. With
`final_merge_seconds` 0, each utterance is its own final, all in flight at once.
It knows no sockets and no clock: callers pass the wall time in, so tests
drive it directly.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from stt_pod.agreement import LocalAgreement
from stt_pod.vad import CHUNK, Segmenter
from stt_pod.words import Word, join
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR

FINAL = "final"
PARTIAL = "partial"
FILE = "file"  # a window of an uploaded file (stt_pod.files): decoded like a final, after all live work

MAX_HISTORY_WORDS = 150
"""Final words kept for the prompt: more than the engine's token budget can use."""

PREFIX_MARGIN = 0.1
"""A window with final words in it starts this long before the first of them (word starts are approximate)."""


@dataclass(frozen=True)
class StreamConfig:
    partial_interval: float = 1.0
    max_window: float = 15.0
    final_silence: float = 0.5
    vad_threshold: float = 0.35
    speech_pad: float = 0.2
    min_speech: float = 0.25
    partials: bool = True
    partial_commits: bool = False  # words two partials agree on become finals early (LocalAgreement); off:
    #                                partials only show text and every word is decided by a final
    context_seconds: float = 5.0
    hear_context: bool = True  # a final keeps words it heard in its context audio after the last final word
    partial_context: bool = False  # partials hear the context audio too (they only show text: cheaper without)
    final_merge_seconds: float = 20.0  # utterances that closed while the session's last final was decoding are
    #                                    decoded together, up to this span (0: each alone, all in flight at once)
    prompt: str = ""  # the session's initial prompt / hotwords, before every window
    previous_text: str = ""  # what was said before this session's audio (a session moved from another pod)


@dataclass(eq=False)
class Job:
    """A window of one session's audio to decode."""

    kind: str
    start: int  # first sample, in session samples
    end: int  # one past the last sample
    audio: np.ndarray = field(repr=False)
    speech_end: int = 0  # a final commits up to here: its end without the trailing pad
    prompt: str = ""  # the session's own prompt
    previous: str = ""  # the session's final text before `start`
    utterance_start: int = 0  # where the window's own speech starts; before it is context
    prefix: str = ""  # final words inside the window: the decoder is made to say them first, then goes on
    final: bool = False  # a final's decode: the engine's final beam and encoder input, not the partials'
    beam_size: int = 0  # 0: the engine's beam for the kind; file windows bring the pod's --file-beam-size
    first_utterance: int = -1  # a final's first utterance (in closing order), for `SessionStream.settled`

    @property
    def overlaps_finals(self) -> bool:
        """Final words lie in this window's audio (its context, or its own utterance's agreed words)."""
        return bool(self.prefix)

    @property
    def offset(self) -> float:
        return self.start / SR


@dataclass(frozen=True)
class FinalEvent:
    segment_id: int
    text: str
    start: float
    end: float
    latency: float | None  # wall seconds from the segment's last audio arriving to now
    words: tuple[Word, ...] = ()  # session times


@dataclass(frozen=True)
class PartialEvent:
    text: str
    start: float
    end: float


class SessionStream:
    def __init__(self, config: StreamConfig, vad: Callable[[np.ndarray], np.ndarray]):
        self.config = config
        self._vad = vad
        chunk_seconds = CHUNK / SR
        self.segmenter = Segmenter(
            threshold=config.vad_threshold,
            min_silence=round(config.final_silence / chunk_seconds),
            min_speech=round(config.min_speech / chunk_seconds),
            max_chunks=int(config.max_window / chunk_seconds),
        )
        self._pad = int(config.speech_pad * SR)
        self._context = int(config.context_seconds * SR)
        self._history: deque[Word] = deque(maxlen=MAX_HISTORY_WORDS)  # final words, for the prompt
        if config.previous_text.strip():  # before any audio of this session: prompt only, never prefix
            self._history.append(Word(" " + config.previous_text.strip(), -1.0, -1.0))
        self._chunks: deque[np.ndarray] = deque()  # the held audio, as it arrived (no copying per frame)
        self._buffer_start = 0  # session sample index of the first held sample
        self.total = 0  # samples received
        self.committed = 0  # audio before this sample is final (or was silence)
        self._closed: deque[tuple[int, int, int]] = deque()  # (start, end, speech end) awaiting a final job
        self.finals_in_flight = 0
        self.partial_in_flight = False
        self._last_partial_end = 0
        self._last_partial_text = ""
        self.agreement = LocalAgreement()
        self.next_segment_id = 0
        self.utterances = 0  # utterances closed so far (VAD, forced split, flush or finish): speech a final will cover
        self._final_firsts: list[int] = []  # first utterance of each final in flight
        self.finished = False
        self._arrival_samples: list[int] = []  # samples received after each feed
        self._arrival_times: list[float] = []

    # --- input

    def feed(self, samples: np.ndarray, now: float) -> None:
        if self.finished or not len(samples):
            return
        self._chunks.append(samples)
        self.total += len(samples)
        self._arrival_samples.append(self.total)
        self._arrival_times.append(now)
        for utt in self.segmenter.feed(self._vad(samples)):
            self._close(utt.start * CHUNK, utt.end * CHUNK)

    def finish(self) -> None:
        """End of audio: whatever speech is open becomes a final."""
        if self.finished:
            return
        for utt in self.segmenter.finish():
            self._close(utt.start * CHUNK, min(utt.end * CHUNK, self.total))
        self.finished = True

    def flush(self) -> bool:
        """Close the open utterance now, as at end of audio, but keep listening (a client's "commit").

        What was heard so far becomes a final; audio fed afterwards starts afresh. True when
        speech was open (a final will cover it)."""
        if self.finished:
            return False
        closed = self.segmenter.finish()
        for utt in closed:
            self._close(utt.start * CHUNK, min(utt.end * CHUNK, self.total))
        return bool(closed)

    def configure(self, partials: bool | None = None, prompt: str | None = None,
                  final_silence: float | None = None) -> None:
        """Change the session's options mid-stream (a client's `configure`); None keeps a value.

        A new final silence applies to the open utterance too; a new prompt to windows made from now on."""
        changes = {k: v for k, v in (("partials", partials), ("prompt", prompt), ("final_silence", final_silence))
                   if v is not None}
        self.config = replace(self.config, **changes)
        if final_silence is not None:
            self.segmenter.min_silence = max(1, round(final_silence / (CHUNK / SR)))

    @property
    def settled(self) -> int:
        """How many utterances, in closing order, have all their finals produced (or had nothing to decode)."""
        if self._final_firsts:
            return min(self._final_firsts)
        return self.utterances - len(self._closed)

    def _close(self, start: int, end: int) -> None:
        self.utterances += 1
        self._closed.append((max(start - self._pad, 0), min(end + self._pad, self.total), min(end, self.total)))

    # --- what to decode

    @property
    def done(self) -> bool:
        """Finished, and every final has been produced."""
        return self.finished and not self._closed and not self.finals_in_flight and not self.partial_in_flight

    @property
    def backlog_seconds(self) -> float:
        """Audio received but not yet final, queued final jobs included: what a fast sender has piled up.

        (Not the audio held: a final job carries a copy of its audio, so the held buffer moves on
        as soon as a job is handed out, while its decode may still be far down the queue.)
        """
        return (self.total - self.committed) / SR

    def wants_final(self) -> bool:
        return bool(self._closed)

    def jobs(self) -> list[Job]:
        """New decode work, to hand to the scheduler now."""
        jobs: list[Job] = []
        if self.partial_in_flight:
            return jobs
        merge = int(self.config.final_merge_seconds * SR)
        while self._closed and not (merge and self.finals_in_flight + len(jobs)):
            first = self.utterances - len(self._closed)
            start, end, speech_end = self._closed.popleft()
            while merge and self._closed and self._closed[0][1] - start <= merge:
                _, end, speech_end = self._closed.popleft()
            if end - max(start, self.committed) >= CHUNK:
                jobs.append(self._job(FINAL, start, end, speech_end))
                jobs[-1].first_utterance = first
                self._final_firsts.append(first)
            else:
                self.committed = max(self.committed, speech_end)
        self.finals_in_flight += len(jobs)
        if not jobs and self._partial_due():
            start = self.segmenter.start * CHUNK - self._pad
            jobs.append(self._job(PARTIAL, start, self.total))
            self.partial_in_flight = True
            self._last_partial_end = self.total
        self._trim()
        return jobs

    def _partial_due(self) -> bool:
        return (
            self.config.partials
            and not self.finished
            and not self.finals_in_flight
            and self.segmenter.in_speech
            and self.total - max(self._last_partial_end, self.segmenter.start * CHUNK) >= self.config.partial_interval * SR
        )

    def _job(self, kind: str, start: int, end: int, speech_end: int | None = None) -> Job:
        """A window over [start, end) and up to `context_seconds` before it, cut where a final word starts.

        Final words inside the window become the decoder's forced prefix, so
        it continues after them instead of saying them again; the final text
        before the window is its prompt.
        """
        own = max(start, self._buffer_start)
        context = self._context if kind == FINAL or self.config.partial_context else 0
        lower = max(own - context, self._buffer_start) / SR
        history = list(self._history)
        first = next((i for i, w in enumerate(history) if w.start >= lower), len(history))
        before, inside = history[:first], history[first:]
        window = own
        if inside:
            edge = inside[0].start - PREFIX_MARGIN
            if before:
                edge = max(edge, before[-1].end)
            window = min(own, max(int(edge * SR), self._buffer_start))
        return Job(kind, window, end, self._audio(window, end), end if speech_end is None else speech_end,
                   self.config.prompt, join(before), own, join(inside), kind == FINAL)

    def _audio(self, start: int, end: int) -> np.ndarray:
        """A copy of held samples [start, end)."""
        if len(self._chunks) > 1:
            self._chunks = deque([np.concatenate(self._chunks)])  # joined once, when a job needs it
        held = self._chunks[0] if self._chunks else np.zeros(0, dtype=np.float32)
        return held[start - self._buffer_start : end - self._buffer_start].copy()

    def _trim(self) -> None:
        """Drop audio that no future job can need."""
        keep = self.total - self._pad - CHUNK  # the VAD may not have seen the last chunk yet
        if self._closed:
            keep = min(keep, self._closed[0][0])
        if self.segmenter.in_speech:
            keep = min(keep, self.segmenter.start * CHUNK - self._pad)
        keep = max(keep, self._buffer_start)
        held = max(keep - self._context, self._buffer_start)  # and the context before it
        if held > self._buffer_start:
            drop = held - self._buffer_start
            while self._chunks and len(self._chunks[0]) <= drop:
                drop -= len(self._chunks[0])
                self._chunks.popleft()
            if drop and self._chunks:
                self._chunks[0] = self._chunks[0][drop:]
            self._buffer_start = held
        if not self._closed and not self.finals_in_flight:
            self.committed = max(self.committed, min(keep, self._last_final_safe()))
        cut = bisect.bisect_left(self._arrival_samples, min(keep, self.committed))  # latency of pending finals
        if cut > 1:
            del self._arrival_samples[: cut - 1], self._arrival_times[: cut - 1]

    def _last_final_safe(self) -> int:
        """Silence before an open utterance is committed too: nothing to say there."""
        return self.segmenter.start * CHUNK - self._pad if self.segmenter.in_speech else self.total - self._pad - CHUNK

    # --- results

    def on_result(self, job: Job, words: list[Word] | None, now: float) -> list[FinalEvent | PartialEvent]:
        """Apply a decode result; `None` means the scheduler dropped the job."""
        if job.kind == PARTIAL:
            self.partial_in_flight = False
            if words is None or self.finished or self._closed:
                return []
            hypothesis = [w.shifted(job.offset) for w in words]
            overlap = job.utterance_start < self.committed and not job.overlaps_finals
            if self.config.partial_commits:
                agreed, tentative = self.agreement.update(hypothesis, self.committed / SR, overlap)
            else:
                agreed, tentative = [], self.agreement.fresh(hypothesis, self.committed / SR, overlap)
            events: list[FinalEvent | PartialEvent] = []
            if agreed:
                self.committed = max(self.committed, int(agreed[-1].end * SR))
                events.append(self._final(agreed, now))
            text = join(tentative)
            if text != self._last_partial_text:
                self._last_partial_text = text
                start = tentative[0].start if tentative else self.committed / SR
                events.append(PartialEvent(text, start, tentative[-1].end if tentative else start))
            return events
        self.finals_in_flight -= 1
        if job.first_utterance in self._final_firsts:
            self._final_firsts.remove(job.first_utterance)
        since = self.committed / SR
        if self.config.hear_context and not self.finals_in_flight:
            # Whisper, not the VAD, decides what in the context audio is speech: words it heard
            # after the last final word (whispers, falsetto the VAD missed) are new, not silence.
            since = min(since, max(job.start / SR, self._last_final_end))
        fresh = self.agreement.fresh(
            [w.shifted(job.offset) for w in (words or [])], since,
            job.utterance_start < self.committed and not job.overlaps_finals
        )
        # Commit to the end of the speech, not of the pad: after a forced split the
        # pad is the next piece's first word, which that piece must still say.
        last_word = int(fresh[-1].end * SR) if fresh else 0
        self.committed = max(self.committed, job.speech_end, min(last_word, job.end))
        self.agreement.reset()
        self._last_partial_text = ""
        if not join(fresh):
            return []
        self.agreement.commit(fresh)
        return [self._final(fresh, now)]

    @property
    def _last_final_end(self) -> float:
        return self._history[-1].end if self._history else 0.0

    def _final(self, words: list[Word], now: float) -> FinalEvent:
        self._history.extend(words)
        segment_id = self.next_segment_id
        self.next_segment_id += 1
        end_sample = min(int(words[-1].end * SR), self.total)
        return FinalEvent(segment_id, join(words), words[0].start, words[-1].end, self._latency(end_sample, now),
                          tuple(words))

    def _latency(self, sample: int, now: float) -> float | None:
        i = bisect.bisect_left(self._arrival_samples, sample)
        if i >= len(self._arrival_times):
            return None
        return max(0.0, now - self._arrival_times[i])


class SpeechWatch:
    """Speech started / stopped, from a stream's VAD: the events a client may ask for (native
    `speech_events`, Realtime's server VAD). `poll` after feeding audio (and after a flush)."""

    def __init__(self, stream: SessionStream):
        self.stream = stream
        self.utterances = stream.utterances  # the stream's closed utterances already accounted for
        self.speaking = False  # speech began and was reported, its utterance not yet closed

    def poll(self) -> list[tuple[str, float | None]]:
        """New edges, in order: ("stopped", at) when an utterance closed (at: the audio received so
        far, a "started" with at None first if its speech was never reported), ("started", at) once open
        speech has lasted `min_speech` (at: where the VAD heard it begin)."""
        stream, seg = self.stream, self.stream.segmenter
        edges: list[tuple[str, float | None]] = []
        if stream.utterances != self.utterances:
            self.utterances = stream.utterances
            if not self.speaking:
                edges.append(("started", None))
            edges.append(("stopped", stream.total / SR))
            self.speaking = False
        if seg.in_speech and not self.speaking and seg.chunks - seg.start >= seg.min_speech:
            self.speaking = True
            edges.append(("started", seg.start * CHUNK / SR))
        return edges

    def skip(self) -> None:
        """Account for every utterance closed so far without reporting it (Realtime's commit)."""
        self.utterances = self.stream.utterances
        self.speaking = False
