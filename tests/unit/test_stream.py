"""stt_pod.stream.SessionStream, driven by a fake VAD and a fake decoder.

The fake VAD says "speech" for every 512-sample chunk whose audio is loud, so
speech is wherever the synthetic audio has a tone. The fake decoder knows the
session's words (absolute times) and answers a job with the words that lie
wholly inside its window, in times relative to the window, like the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from stt_pod.stream import (
    FINAL,
    PARTIAL,
    PREFIX_MARGIN,
    FinalEvent,
    Job,
    PartialEvent,
    SessionStream,
    SpeechWatch,
    StreamConfig,
)
from stt_pod.vad import CHUNK
from stt_pod.words import Word

SR = 16_000
FRAME = 1_600  # 100 ms frames, as a client sends them
CONTEXT = int(StreamConfig().context_seconds * SR)


class FakeVad:
    """Speech probability per whole chunk: louder audio, higher probability."""

    def __init__(self) -> None:
        self.pending = np.zeros(0, dtype=np.float32)
        self.calls = 0

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        self.calls += 1
        data = np.concatenate([self.pending, samples])
        whole = len(data) // CHUNK * CHUNK
        self.pending = data[whole:]
        chunks = data[:whole].reshape(-1, CHUNK)
        return np.clip(np.abs(chunks).max(axis=1) * 2, 0.0, 1.0).astype(np.float32)


def tone(seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SR)), dtype=np.float32)


def spoken(start: float, *texts: str, step: float = 0.4, length: float = 0.3) -> list[Word]:
    """Words from `start` (session seconds), one every `step`."""
    return [Word(" " + t, start + i * step, start + i * step + length) for i, t in enumerate(texts)]


@dataclass
class Harness:
    """Plays the session's caller: feeds frames, hands out jobs, answers them."""

    config: StreamConfig = field(default_factory=StreamConfig)
    truth: list[Word] = field(default_factory=list)
    answer_kinds: tuple[str, ...] = (FINAL, PARTIAL)  # answered at once; others wait for answer()

    def __post_init__(self) -> None:
        self.vad = FakeVad()
        self.stream = SessionStream(self.config, self.vad)
        self.audio = np.zeros(0, dtype=np.float32)
        self.now = 0.0
        self.jobs: list[Job] = []  # every job handed out, in order
        self.pending: list[Job] = []  # handed out, not answered
        self.events: list[FinalEvent | PartialEvent] = []
        self.max_partials_in_flight = 0
        self.backlog: list[float] = []

    # --- the caller's side

    def feed(self, audio: np.ndarray, frame: int = FRAME) -> None:
        for i in range(0, len(audio), frame):
            piece = audio[i:i + frame]
            self.audio = np.concatenate([self.audio, piece])
            self.now += len(piece) / SR
            self.stream.feed(piece, self.now)
            self.pump()
            self.backlog.append(self.stream.backlog_seconds)

    def finish(self) -> None:
        self.stream.finish()
        self.pump()

    def pump(self) -> None:
        while True:
            new = self.stream.jobs()
            self.jobs += new
            self.pending += new
            self.max_partials_in_flight = max(self.max_partials_in_flight, sum(j.kind == PARTIAL for j in self.pending))
            ready = [j for j in self.pending if j.kind in self.answer_kinds]
            if not ready:
                return
            for job in ready:
                self._answer(job, self.decode(job))

    def answer(self, job: Job, words: list[Word] | None | type(...) = ...) -> list:
        before = len(self.events)
        self._answer(job, self.decode(job) if words is ... else words)
        got = self.events[before:]
        self.pump()
        return got

    def _answer(self, job: Job, words: list[Word] | None) -> None:
        self.pending.remove(job)
        self.events += self.stream.on_result(job, words, self.now)

    # --- the model's side

    def decode(self, job: Job) -> list[Word]:
        # the job's audio must be the session's audio at the job's place
        np.testing.assert_array_equal(job.audio, self.audio[job.start:job.end])
        lo, hi = job.start / SR, job.end / SR
        heard = [w.shifted(-lo) for w in self.truth if w.start >= lo - 1e-9 and w.end <= hi + 1e-9]
        said = job.prefix.split()  # like the engine: the forced prefix is said first and not returned
        assert [w.key for w in heard[: len(said)]] == [Word(" " + t, 0, 0).key for t in said], (job, heard)
        return heard[len(said):]

    # --- what came out

    @property
    def finals(self) -> list[FinalEvent]:
        return [e for e in self.events if isinstance(e, FinalEvent)]

    @property
    def partials(self) -> list[PartialEvent]:
        return [e for e in self.events if isinstance(e, PartialEvent)]

    def final_words(self) -> list[str]:
        return " ".join(e.text for e in self.finals).split()

    def kinds(self) -> list[str]:
        return [j.kind for j in self.jobs]


PAD = int(StreamConfig().speech_pad * SR)


def no_partials(**kw) -> StreamConfig:
    return StreamConfig(partials=False, **kw)


# --- silence ---------------------------------------------------------------------------


def test_silence_produces_no_jobs_and_no_events():
    h = Harness()
    h.feed(silence(20))
    h.finish()
    assert h.jobs == [] and h.events == []
    assert h.stream.done
    assert h.vad.calls == 200  # the VAD saw every frame


def test_quiet_noise_below_the_threshold_is_silence():
    h = Harness()
    h.feed(tone(5, amp=0.1))  # probability 0.2 < 0.5
    h.finish()
    assert h.jobs == []


def test_speech_shorter_than_min_speech_gets_no_job():
    h = Harness(no_partials())
    h.feed(np.concatenate([silence(1), tone(0.1), silence(2)]))
    h.finish()
    assert h.jobs == []


# --- finals ------------------------------------------------------------------------------


def test_a_closed_utterance_becomes_one_final_job_with_pad():
    h = Harness(no_partials(), truth=spoken(1.1, "hello", "world"))
    h.feed(np.concatenate([silence(1), tone(1.5), silence(1.5)]))
    # closed by the silence, before end of audio
    assert h.kinds() == [FINAL]
    [job] = h.jobs
    speech_start, speech_end = 1 * SR, int(2.5 * SR)
    assert speech_start - PAD - CHUNK < job.utterance_start <= speech_start - PAD
    assert job.start == job.utterance_start  # no final words before it: no context
    assert speech_end + PAD <= job.end < speech_end + PAD + CHUNK
    assert len(job.audio) == job.end - job.start
    assert job.offset == pytest.approx(job.start / SR)
    [final] = h.finals
    assert final.segment_id == 0
    assert final.text == "hello world"
    assert final.start == pytest.approx(1.1) and final.end == pytest.approx(1.8)  # session times
    h.finish()
    assert h.kinds() == [FINAL] and h.stream.done


def test_speech_at_the_very_start_has_its_pad_clipped():
    h = Harness(no_partials(), truth=spoken(0.1, "go"))
    h.feed(np.concatenate([tone(1), silence(1)]))
    [job] = h.jobs
    assert job.start == 0
    assert [e.text for e in h.finals] == ["go"]


def test_each_utterance_gets_its_own_final_with_consecutive_ids():
    truth = spoken(1.0, "one", "two") + spoken(4.0, "three") + spoken(7.0, "four", "five", "six")
    h = Harness(no_partials(), truth=truth)
    h.feed(np.concatenate([silence(1), tone(1), silence(2), tone(1), silence(2), tone(1.5), silence(2)]))
    assert h.kinds() == [FINAL] * 3
    assert [e.text for e in h.finals] == ["one two", "three", "four five six"]
    assert [e.segment_id for e in h.finals] == [0, 1, 2]
    assert h.stream.next_segment_id == 3
    starts = [j.start for j in h.jobs]
    assert starts == sorted(starts)


def test_utterances_that_close_while_a_final_decodes_are_decoded_together():
    truth = spoken(0.5, "a") + spoken(2.5, "b") + spoken(4.5, "c")
    h = Harness(no_partials(), truth=truth, answer_kinds=())
    h.feed(np.concatenate([silence(0.5), tone(0.5), silence(1.5), tone(0.5), silence(1.5), tone(0.5), silence(1.5)]))
    [first] = h.pending  # one final in flight: the other two utterances wait for it
    assert h.stream.finals_in_flight == 1 and h.stream.wants_final()
    h.answer(first)
    [merged] = h.pending  # ... and then go in one window, one encoder pass
    assert merged.start < 2.5 * SR and merged.end > 5.0 * SR
    h.answer(merged)
    assert [(e.segment_id, e.text) for e in h.finals] == [(0, "a"), (1, "b c")]
    h.finish()
    assert h.stream.done


def test_a_merged_final_never_spans_more_than_final_merge_seconds():
    truth = [w for k in range(6) for w in spoken(0.5 + 2 * k, f"w{k}")]
    h = Harness(no_partials(final_merge_seconds=4.0), truth=truth, answer_kinds=())
    h.feed(np.concatenate([silence(0.5)] + [np.concatenate([tone(0.5), silence(1.5)]) for _ in range(6)]))
    spans = []
    while h.pending:
        [job] = h.pending
        spans.append((job.end - job.utterance_start) / SR)
        h.answer(job)
    assert len(spans) >= 3 and max(spans) <= 4.0
    assert " ".join(e.text for e in h.finals) == " ".join(f"w{k}" for k in range(6))


def test_without_merging_finals_of_consecutive_utterances_are_in_flight_together():
    truth = spoken(0.5, "a") + spoken(2.5, "b") + spoken(4.5, "c")
    h = Harness(no_partials(final_merge_seconds=0), truth=truth, answer_kinds=())
    h.feed(np.concatenate([silence(0.5), tone(0.5), silence(1.5), tone(0.5), silence(1.5), tone(0.5), silence(1.5)]))
    assert h.kinds() == [FINAL] * 3 and h.stream.finals_in_flight == 3
    for job in list(h.pending):
        h.answer(job)
    assert [e.text for e in h.finals] == ["a", "b", "c"]
    assert [e.segment_id for e in h.finals] == [0, 1, 2]


def test_a_final_with_no_words_says_nothing_and_uses_no_segment_id():
    h = Harness(no_partials(), truth=spoken(5.0, "later"))
    h.feed(np.concatenate([silence(1), tone(1), silence(2)]))  # a cough: no words in it
    h.feed(np.concatenate([silence(1), tone(1), silence(2)]))
    assert h.kinds() == [FINAL, FINAL]
    assert [(e.segment_id, e.text) for e in h.finals] == [(0, "later")]


def test_a_dropped_final_is_forgotten_and_the_session_can_end():
    h = Harness(no_partials(), truth=spoken(1.1, "lost"), answer_kinds=())
    h.feed(np.concatenate([silence(1), tone(1), silence(1)]))
    [job] = h.pending
    h.finish()
    assert not h.stream.done
    assert h.answer(job, None) == []
    assert h.stream.done and h.finals == []


# --- partials and agreement ----------------------------------------------------------------


def test_partials_come_every_partial_interval_while_speech_continues():
    config = StreamConfig(partial_interval=1.0)
    h = Harness(config, truth=spoken(1.0, *[f"w{i}" for i in range(15)]))
    h.feed(np.concatenate([silence(1), tone(6), silence(1.5)]))
    partial_jobs = [j for j in h.jobs if j.kind == PARTIAL]
    assert len(partial_jobs) >= 6 - 1
    ends = [j.end for j in partial_jobs]
    assert all(b - a >= config.partial_interval * SR for a, b in zip(ends, ends[1:]))
    for j in partial_jobs:  # every window starts at its utterance's start (and its context before it)
        assert j.start == partial_jobs[0].start and j.utterance_start == partial_jobs[0].utterance_start
        assert SR - PAD - CHUNK < j.utterance_start <= SR - PAD
    assert h.kinds()[-1] == FINAL and h.kinds().count(FINAL) == 1


def test_at_most_one_partial_is_in_flight():
    h = Harness(truth=spoken(1.0, *[f"w{i}" for i in range(10)]), answer_kinds=(FINAL,))
    h.feed(np.concatenate([silence(1), tone(5)]))
    assert h.kinds() == [PARTIAL]  # nothing more while it is unanswered
    h.answer(h.pending[0])
    assert h.kinds() == [PARTIAL, PARTIAL]  # 5 s of new speech since: the next one is due at once
    assert h.jobs[1].end == len(h.audio)
    h.answer(h.pending[0])
    assert len(h.jobs) == 2  # no new audio since the last one was made: none due
    h.feed(tone(0.5))
    assert len(h.jobs) == 2  # less than partial_interval of new audio
    h.feed(tone(0.6))
    assert h.kinds() == [PARTIAL] * 3
    h.feed(tone(3))
    assert h.kinds() == [PARTIAL] * 3
    assert h.max_partials_in_flight == 1


def test_no_final_job_while_a_partial_is_in_flight():
    h = Harness(truth=spoken(1.0, "x", "y"), answer_kinds=(FINAL,))
    h.feed(np.concatenate([silence(1), tone(1.5), silence(1.5)]))
    assert h.kinds() == [PARTIAL] and h.stream.wants_final()
    events = h.answer(h.pending[0])  # answered late: the utterance has closed meanwhile
    assert events == []  # a stale partial says nothing
    assert h.kinds() == [PARTIAL, FINAL]
    assert [e.text for e in h.finals] == ["x y"]


def test_no_partial_while_a_final_is_pending():
    truth = spoken(1.0, "a", "b") + spoken(3.5, *[f"c{i}" for i in range(8)])
    h = Harness(truth=truth, answer_kinds=(PARTIAL,))
    h.feed(np.concatenate([silence(1), tone(1), silence(1)]))
    finals = [j for j in h.pending if j.kind == FINAL]
    assert len(finals) == 1
    h.feed(tone(4))  # new speech, long enough for several partials
    assert h.kinds().count(PARTIAL) == h.kinds().index(FINAL)  # none after the final job
    h.answer(finals[0])
    assert h.kinds()[-1] == PARTIAL  # now they resume


def test_agreed_words_become_finals_and_the_utterance_final_does_not_repeat_them():
    texts = [f"w{i}" for i in range(12)]
    h = Harness(StreamConfig(partial_interval=0.5, partial_commits=True), truth=spoken(1.0, *texts))
    h.feed(np.concatenate([silence(1), tone(5), silence(1.5)]))
    h.finish()
    final_job_at = h.kinds().index(FINAL)
    assert h.finals[0].segment_id == 0
    assert len(h.finals) >= 2  # some words were committed by agreement, before the utterance closed
    assert h.final_words() == texts  # every word once, in order
    assert [e.segment_id for e in h.finals] == list(range(len(h.finals)))
    assert final_job_at == len(h.kinds()) - 1
    for a, b in zip(h.finals, h.finals[1:]):
        assert b.start >= a.end


def test_without_partial_commits_partials_show_the_whole_open_utterance_and_its_final_says_every_word():
    texts = [f"w{i}" for i in range(12)]
    h = Harness(StreamConfig(partial_interval=0.5), truth=spoken(1.0, *texts))
    h.feed(np.concatenate([silence(1), tone(5)]))
    assert h.partials and not h.finals  # no word is final before the utterance closes
    shown = [e.text.split() for e in h.partials]
    assert all(words == texts[: len(words)] for words in shown)  # always from the utterance's first word
    h.feed(silence(1.5))
    h.finish()
    assert len(h.finals) == 1 and h.final_words() == texts


def test_partial_events_show_what_follows_the_committed_words():
    texts = [f"w{i}" for i in range(8)]
    truth = spoken(1.0, *texts)
    h = Harness(StreamConfig(partial_interval=0.5, partial_commits=True), truth=truth)
    h.feed(np.concatenate([silence(1), tone(3.5)]))
    assert h.partials and h.finals
    committed: list[str] = []
    for event in h.events:  # in the order the client would see them
        shown = event.text.split()
        if isinstance(event, FinalEvent):
            committed += shown
            continue
        assert shown == texts[len(committed):len(committed) + len(shown)]
        if shown:
            first, last = truth[len(committed)], truth[len(committed) + len(shown) - 1]
            assert (event.start, event.end) == (pytest.approx(first.start), pytest.approx(last.end))
    assert committed == texts[:len(committed)]


def test_a_hypothesis_that_changes_is_not_committed():
    h = Harness(StreamConfig(partial_interval=0.5, context_seconds=0), answer_kinds=())
    h.feed(np.concatenate([silence(1), tone(1.5)]))
    first = h.pending[0]
    h.answer(first, [Word(" ice", 0.2, 0.5), Word(" cream", 0.6, 0.9)])
    h.feed(tone(0.6))
    second = h.pending[0]
    events = h.answer(second, [Word(" I", 0.2, 0.4), Word(" scream", 0.5, 0.9)])
    assert [type(e) for e in events] == [PartialEvent]
    assert events[0].text == "I scream"
    assert h.finals == []


def test_a_dropped_partial_changes_nothing():
    h = Harness(truth=spoken(1.0, "a", "b", "c"), answer_kinds=(FINAL,))
    h.feed(np.concatenate([silence(1), tone(2)]))
    dropped = h.pending[0]
    assert h.answer(dropped, None) == []
    assert h.events == [] and h.stream.agreement.previous == []
    [again] = h.pending  # the next partial is due at once: its window holds the same speech and more
    assert again is not dropped and again.start == dropped.start and again.end > dropped.end


def test_partials_off_means_finals_only():
    h = Harness(no_partials(), truth=spoken(1.0, *[f"w{i}" for i in range(10)]))
    h.feed(np.concatenate([silence(1), tone(5), silence(1)]))
    assert h.kinds() == [FINAL]
    assert h.final_words() == [f"w{i}" for i in range(10)]


# --- end of audio --------------------------------------------------------------------------


def test_finish_closes_open_speech_and_done_waits_for_every_result():
    h = Harness(truth=spoken(1.0, "still", "talking"), answer_kinds=())
    h.feed(np.concatenate([silence(1), tone(2)]))  # speech still open, a partial in flight
    [partial] = h.pending
    h.finish()
    assert h.stream.finished and not h.stream.done
    assert h.kinds() == [PARTIAL]  # the final waits for the partial
    assert h.answer(partial) == []  # after end of audio only finals count
    assert h.kinds() == [PARTIAL, FINAL] and not h.stream.done
    [final] = [j for j in h.pending if j.kind == FINAL]
    assert final.end == len(h.audio)  # to the end of what was received
    h.answer(final)
    assert h.stream.done
    assert [e.text for e in h.finals] == ["still talking"]


def test_finish_with_nothing_pending_is_done_at_once():
    h = Harness()
    h.feed(silence(1))
    assert not h.stream.done
    h.finish()
    assert h.stream.done


def test_audio_after_finish_is_ignored():
    h = Harness()
    h.finish()
    h.feed(tone(3))
    assert h.stream.total == 0 and h.jobs == []


def test_finish_twice_makes_one_final():
    h = Harness(no_partials(), truth=spoken(0.5, "once"))
    h.feed(np.concatenate([silence(0.5), tone(1)]))
    h.finish()
    h.finish()
    assert h.kinds() == [FINAL] and [e.text for e in h.finals] == ["once"]


def test_flush_finalizes_open_speech_and_the_stream_goes_on():
    h = Harness(no_partials(), truth=spoken(0.5, "commit", "this") + spoken(3.5, "and", "then", "more"))
    h.feed(np.concatenate([silence(0.5), tone(1.2)]))  # still speaking: no silence has closed it
    assert h.kinds() == [] and h.stream.segmenter.in_speech
    assert h.stream.flush() is True
    h.pump()
    assert h.kinds() == [FINAL] and h.jobs[0].end == len(h.audio)  # to everything heard so far
    assert [e.text for e in h.finals] == ["commit this"] and not h.stream.finished
    h.feed(np.concatenate([silence(1.3), tone(1.5), silence(1)]))  # speech after the commit: a final of its own
    assert [e.text for e in h.finals] == ["commit this", "and then more"] and [e.segment_id for e in h.finals] == [0, 1]
    h.finish()
    assert h.stream.done


def test_flush_without_open_speech_closes_nothing():
    h = Harness(no_partials(), truth=spoken(0.5, "done"))
    h.feed(np.concatenate([silence(0.5), tone(0.6), silence(1)]))  # closed by its silence already
    assert h.stream.flush() is False
    h.pump()
    assert h.kinds() == [FINAL] and [e.text for e in h.finals] == ["done"]
    h.finish()
    assert h.stream.flush() is False  # after the end: nothing


def test_flush_waits_for_a_partial_in_flight_like_an_utterance_end():
    h = Harness(truth=spoken(0.5, "still", "talking"), answer_kinds=())
    h.feed(np.concatenate([silence(0.5), tone(2)]))
    [partial] = h.pending
    assert h.stream.flush() and h.stream.wants_final()
    h.pump()
    assert h.kinds() == [PARTIAL]  # no final while a partial is in flight; the session withdraws it
    assert h.answer(partial, None) == []
    [final] = [j for j in h.pending if j.kind == FINAL]
    h.answer(final)
    assert [e.text for e in h.finals] == ["still talking"]


def test_utterances_counts_every_closed_span_of_speech():
    h = Harness(no_partials())
    h.feed(np.concatenate([silence(0.5), tone(0.6), silence(1), tone(0.6)]))
    assert h.stream.utterances == 1
    h.stream.flush()
    assert h.stream.utterances == 2
    h.feed(np.concatenate([silence(1.5), tone(0.05), silence(1)]))  # shorter than min_speech: no utterance
    assert h.stream.utterances == 2


def test_settled_counts_utterances_whose_finals_are_out():
    h = Harness(no_partials(), truth=spoken(0.5, "one") + spoken(2.5, "two"), answer_kinds=())
    h.feed(np.concatenate([silence(0.5), tone(0.6), silence(1)]))
    assert h.stream.utterances == 1 and h.stream.settled == 0  # its final is in flight
    h.feed(np.concatenate([silence(0.4), tone(0.6)]))
    assert h.stream.flush() and h.stream.utterances == 2 and h.stream.settled == 0
    [first] = h.pending
    h.answer(first)
    assert h.stream.settled == 1  # the second waits for its own final
    [second] = h.pending
    h.answer(second)
    assert h.stream.settled == 2 and [e.text for e in h.finals] == ["one", "two"]


def test_settled_moves_past_an_utterance_with_nothing_to_decode():
    h = Harness(no_partials())
    assert h.stream.settled == 0
    h.feed(silence(1))
    assert not h.stream.flush() and h.stream.settled == 0 == h.stream.utterances


def test_configure_changes_partials_prompt_and_final_silence():
    h = Harness(truth=spoken(0.5, "a", "b", "c", "d"))
    h.stream.configure(partials=False, prompt="Voxfleet", final_silence=1.0)
    assert h.stream.config.partials is False and h.stream.config.prompt == "Voxfleet"
    h.feed(np.concatenate([silence(0.5), tone(2), silence(0.7)]))  # 0.7 s of quiet: not yet the new 1 s
    assert h.kinds() == [] and h.stream.segmenter.in_speech
    h.feed(silence(0.5))
    assert h.kinds() == [FINAL] and h.jobs[0].prompt == "Voxfleet"
    h.stream.configure(final_silence=0.5)  # None keeps the others
    assert h.stream.config.final_silence == 0.5 and h.stream.config.prompt == "Voxfleet"


def test_speech_watch_reports_start_then_stop_per_utterance():
    h = Harness(no_partials())
    watch = SpeechWatch(h.stream)
    edges = []
    for piece in (silence(0.5), tone(0.6), silence(1), tone(0.6)):
        h.feed(piece)
        edges += watch.poll()
    assert [e for e, _ in edges] == ["started", "stopped", "started"]
    assert edges[0][1] == pytest.approx(0.5, abs=0.05) and edges[1][1] > 1.1 and edges[2][1] > 2.0
    h.stream.flush()  # a flush closes the open speech: stopped
    assert [e for e, _ in watch.poll()] == ["stopped"]
    h.feed(np.concatenate([silence(1), tone(0.4)]))
    h.stream.flush()  # speech that began and closed between two polls: its start comes late, without a time
    assert watch.poll() == [("started", None), ("stopped", h.stream.total / SR)]


# --- bounds ----------------------------------------------------------------------------------


def test_the_window_never_exceeds_max_window():
    config = StreamConfig(max_window=3.0, partial_interval=0.7)
    texts = [f"w{i}" for i in range(45)]
    h = Harness(config, truth=spoken(1.0, *texts))
    h.feed(np.concatenate([silence(1), tone(20), silence(1)]))
    h.finish()
    limit = config.max_window * SR + 2 * PAD + CHUNK
    assert all(j.end - j.utterance_start <= limit for j in h.jobs)
    assert all(len(j.audio) <= limit + CONTEXT for j in h.jobs)
    assert h.kinds().count(FINAL) >= 20 // 3  # the long speech was split
    assert h.stream.done


def test_backlog_stays_bounded_over_a_long_silent_stream():
    h = Harness()
    h.feed(silence(120))
    assert max(h.backlog) < (PAD + CHUNK + FRAME) / SR + 0.01


def test_backlog_stays_bounded_over_a_long_speech_stream():
    config = StreamConfig(max_window=4.0)
    h = Harness(config)
    h.feed(np.concatenate([silence(1), tone(120)]))
    bound = config.max_window + (2 * PAD + CHUNK + FRAME) / SR
    assert max(h.backlog) <= bound


def test_queued_final_jobs_count_as_backlog():
    # A fast sender: five utterances arrive before any decode comes back.
    h = Harness(no_partials(), answer_kinds=())
    h.feed(np.concatenate([np.concatenate([tone(1.0), silence(1.0)]) for _ in range(5)]))
    assert h.kinds() == [FINAL] and len(h.pending) == 1  # one in flight; the others wait to be decoded together
    assert h.stream.backlog_seconds >= 4 * 2.0  # their audio is not final yet
    while h.pending:
        h.answer(h.pending[0])
    assert h.kinds() == [FINAL, FINAL]
    assert h.stream.backlog_seconds < 1.0


def test_long_speech_says_no_word_twice_and_keeps_their_order():
    config = StreamConfig(max_window=3.0, partial_interval=0.7)
    texts = [f"w{i}" for i in range(40)]
    h = Harness(config, truth=spoken(1.0, *texts, step=0.45, length=0.2))
    h.feed(np.concatenate([silence(1), tone(18.5), silence(1)]))
    h.finish()
    got = [int(w[1:]) for w in h.final_words()]
    assert got == sorted(set(got))  # nothing said twice, nothing out of order
    assert len(got) >= len(texts) * 0.8


# --- latency ------------------------------------------------------------------------------------


def test_agreed_final_latency_is_from_the_arrival_of_its_last_word():
    h = Harness(StreamConfig(partial_commits=True), truth=spoken(1.0, "a", "b", "c", "d", "e", "f"), answer_kinds=())
    h.feed(np.concatenate([silence(1), tone(1.0)]))  # the first partial: a second into speech, at 2.0 s
    [first] = h.pending
    assert first.end == int(2.0 * SR)
    assert h.answer(first)[0].text == "a b"  # a partial event: nothing agreed yet ("c" is cut off)
    h.feed(tone(1.0))  # the next at 3.0 s
    h.now = 20.0
    events = h.answer(h.pending[0])
    [final] = [e for e in events if isinstance(e, FinalEvent)]
    assert final.text == "a b"  # what both hypotheses held
    arrival = 1.7  # "b" ends at 1.7 s, in the frame that arrived at now = 1.7 (the clock is the audio sent)
    assert final.latency == pytest.approx(h.now - arrival, abs=FRAME / SR)


def test_final_latency_is_from_the_arrival_of_the_last_word():
    h = Harness(no_partials(), truth=spoken(1.0, "a", "b"), answer_kinds=())
    h.feed(np.concatenate([silence(1), tone(1)]))
    while not h.pending:  # the silence that closes the utterance
        h.feed(silence(0.1))
    [final] = h.answer(h.pending[0])  # decoded at once
    arrival = 1.7  # "b" ends at 1.7 s, in the frame that arrived at now = 1.7
    assert final.latency == pytest.approx(h.now - arrival, abs=FRAME / SR)


# --- bugs ---------------------------------------------------------------------------------------


def test_a_word_repeated_after_a_pause_is_kept():
    truth = [Word(" No.", 1.0, 1.3), Word(" No.", 2.0, 2.3)]
    h = Harness(no_partials(), truth=truth)
    h.feed(np.concatenate([silence(1), tone(0.3), silence(0.7), tone(0.3), silence(1.5)]))
    h.finish()
    assert h.kinds() == [FINAL, FINAL]  # two utterances, each decoded once
    assert [e.text for e in h.finals] == ["No.", "No."]


def test_unbroken_speech_longer_than_max_window_loses_no_word():
    config = StreamConfig(max_window=3.0, partial_interval=0.7)
    texts = [f"w{i}" for i in range(45)]
    h = Harness(config, truth=spoken(1.0, *texts))
    h.feed(np.concatenate([silence(1), tone(18.5), silence(1)]))
    h.finish()
    assert h.final_words() == texts


def test_a_word_just_after_a_forced_split_is_not_lost():
    config = StreamConfig(max_window=2.0, partials=False)  # split at 62 chunks of an utterance
    start_chunk = 32  # speech from 1.024 s
    dip_chunk = start_chunk + 50  # in the last quarter: the split point
    audio = np.concatenate([silence(start_chunk * CHUNK / SR), tone(4.0), silence(1.5)])
    lo, hi = dip_chunk * CHUNK, (dip_chunk + 1) * CHUNK
    audio[lo:hi] *= 0.4  # a softer chunk: speech still, but the least speech-like
    cut = dip_chunk * CHUNK / SR
    truth = spoken(1.1, "alpha", "beta", "gamma", step=0.5) + [Word(" to", cut + 0.05, cut + 0.28)] \
        + spoken(cut + 0.5, "delta", "epsilon", step=0.5)
    h = Harness(config, truth=truth)
    h.feed(audio)
    h.finish()
    first = h.jobs[0]
    assert first.end == dip_chunk * CHUNK + PAD  # the split happened where the test put it
    assert h.final_words() == ["alpha", "beta", "gamma", "to", "delta", "epsilon"]


# --- context ------------------------------------------------------------------------------------


def test_a_window_holds_the_audio_before_its_utterance_and_the_final_text_before_that():
    config = no_partials(context_seconds=2.0, prompt="Glossary: voxfleet.")
    first, second, third = spoken(1.0, "one", "two"), spoken(3.0, "three"), spoken(5.0, "four")
    h = Harness(config, truth=first + second + third)
    h.feed(np.concatenate([silence(1), tone(0.8), silence(1.2), tone(0.4), silence(1.6), tone(0.4), silence(1.5)]))
    assert h.kinds() == [FINAL, FINAL, FINAL]
    jobs = h.jobs
    assert jobs[0].start == jobs[0].utterance_start  # nothing final before it: no context
    assert all(j.prompt == "Glossary: voxfleet." for j in jobs)
    # The second window's context holds "one two": its forced prefix, so not said again.
    assert jobs[1].previous == "" and jobs[1].prefix == "one two"
    assert jobs[1].start == int((1.0 - PREFIX_MARGIN) * SR)  # cut just before the first final word
    assert jobs[2].previous == "one two" and jobs[2].prefix == "three"  # context: 2 s back, "three" only
    assert jobs[2].start == int((3.0 - PREFIX_MARGIN) * SR)
    assert [e.text for e in h.finals] == ["one two", "three", "four"]


def test_no_context_means_windows_of_their_utterance_only():
    h = Harness(no_partials(context_seconds=0.0), truth=spoken(3.0, "a"))
    h.feed(np.concatenate([silence(3), tone(0.4), silence(1)]))
    [job] = h.jobs
    assert job.start == job.utterance_start


def test_held_context_is_not_backlog():
    config = StreamConfig(context_seconds=5.0)
    h = Harness(config)
    h.feed(silence(30))
    assert max(h.backlog) < (PAD + CHUNK + FRAME) / SR + 0.01
