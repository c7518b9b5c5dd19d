"""stt_pod.vad.Segmenter: per-chunk speech probabilities in, utterances out."""

from __future__ import annotations

import numpy as np
import pytest

from stt_pod.vad import Segmenter, Utterance


def seg(threshold=0.5, min_silence=3, min_speech=2, max_chunks=1000) -> Segmenter:
    return Segmenter(threshold=threshold, min_silence=min_silence, min_speech=min_speech, max_chunks=max_chunks)


def feed(s: Segmenter, probs) -> list[Utterance]:
    return s.feed(np.asarray(probs, dtype=np.float32))


def test_silence_is_no_speech():
    s = seg()
    assert feed(s, [0.0] * 50) == [] and not s.in_speech and s.finish() == []


def test_speech_then_min_silence_closes_at_the_last_speech_chunk():
    s = seg(min_silence=3)
    assert feed(s, [0, 0, 1, 1, 1, 0, 0]) == []  # two quiet chunks: still open
    assert s.in_speech and s.start == 2
    assert feed(s, [0]) == [Utterance(2, 5)]  # the third quiet chunk closes it
    assert not s.in_speech


def test_a_pause_shorter_than_min_silence_does_not_split():
    s = seg(min_silence=3)
    out = feed(s, [1, 1, 0, 0, 1, 1, 0, 0, 0])
    assert out == [Utterance(0, 6)]


def test_hysteresis_continues_below_the_start_threshold():
    s = seg(threshold=0.5, min_silence=2)
    assert feed(s, [0.4, 0.45, 0.49]) == [] and not s.in_speech  # never reaches 0.5: no start
    out = feed(s, [0.6, 0.4, 0.4, 0.4, 0.2, 0.2])  # 0.4 >= 0.5 - 0.15 keeps speech going
    assert out == [Utterance(3, 7)]


def test_below_the_continue_threshold_is_silence():
    s = seg(threshold=0.5, min_silence=2)
    out = feed(s, [0.9, 0.9, 0.3, 0.3])  # 0.3 < 0.35
    assert out == [Utterance(0, 2)]


def test_starting_needs_the_full_threshold():
    s = seg(threshold=0.5)
    feed(s, [0.5])
    assert s.in_speech and s.start == 0


def test_too_short_speech_is_ignored():
    s = seg(min_silence=2, min_speech=3)
    assert feed(s, [0, 1, 1, 0, 0, 0]) == []  # two chunks of speech
    assert not s.in_speech
    assert feed(s, [1, 1, 1, 0, 0]) == [Utterance(6, 9)]  # three is enough


def test_consecutive_utterances():
    s = seg(min_silence=2, min_speech=1)
    out = feed(s, [1, 1, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0])
    assert out == [Utterance(0, 2), Utterance(5, 6), Utterance(8, 11)]


def test_feeding_chunk_by_chunk_gives_the_same_utterances():
    rng = np.random.default_rng(7)
    probs = (rng.random(400) > 0.45).astype(np.float32) * rng.random(400)
    whole = seg(min_silence=4, min_speech=3, max_chunks=40)
    at_once = whole.feed(probs) + whole.finish()
    piecewise_seg = seg(min_silence=4, min_speech=3, max_chunks=40)
    piecewise: list[Utterance] = []
    for i in range(0, 400, 7):
        piecewise += piecewise_seg.feed(probs[i:i + 7])
    piecewise += piecewise_seg.finish()
    assert at_once and piecewise == at_once


def test_chunks_counts_everything_seen():
    s = seg()
    feed(s, [0] * 5)
    feed(s, [1] * 3)
    assert s.chunks == 8


# --- end of audio --------------------------------------------------------------------


def test_finish_closes_open_speech():
    s = seg(min_silence=5)
    feed(s, [0, 0, 1, 1, 1])
    [utt] = s.finish()
    assert utt == Utterance(2, 5)
    assert not s.in_speech
    assert s.finish() == []


def test_finish_covers_all_the_speech_after_a_short_pause():
    s = seg(min_silence=5)
    feed(s, [1, 1, 1, 0, 0])
    [utt] = s.finish()
    assert utt.start == 0 and 3 <= utt.end <= 5


def test_finish_drops_too_short_speech():
    s = seg(min_speech=3, min_silence=5)
    feed(s, [0, 1, 1])
    assert s.finish() == []


# --- long speech ---------------------------------------------------------------------


def test_long_speech_is_split_at_the_least_speech_like_chunk_of_its_last_quarter():
    s = seg(min_silence=3, max_chunks=20)
    probs = [0.0, 0.0] + [1.0] * 40
    probs[2 + 3] = 0.4  # a deeper dip, but early in the utterance: not eligible
    probs[2 + 17] = 0.6  # in the last quarter (chunks 15..19 of the utterance)
    out = feed(s, probs[:2 + 20])
    assert out == [Utterance(2, 2 + 17)]
    assert s.in_speech and s.start == 2 + 17  # the rest goes on as the next utterance


def test_every_piece_of_unbroken_speech_is_bounded_and_contiguous():
    s = seg(min_silence=3, max_chunks=20)
    rng = np.random.default_rng(3)
    probs = [0.0] * 3 + list(0.6 + 0.4 * rng.random(200)) + [0.0] * 5
    out = feed(s, probs)
    assert len(out) >= 200 // 20
    assert out[0].start == 3 and out[-1].end == 203
    for a, b in zip(out, out[1:]):
        assert b.start == a.end  # nothing lost, nothing twice
    assert all(u.end - u.start < 20 for u in out)
    for u in out[:-1]:  # each cut is at the quietest chunk of the last quarter before it
        window = probs[u.start:u.start + 20]
        tail_from = 20 * 3 // 4
        assert u.end - u.start >= tail_from
        assert probs[u.end] == pytest.approx(min(window[tail_from:]))


def test_max_chunks_has_a_floor():
    s = seg(min_silence=100, max_chunks=1)
    out = feed(s, [1.0] * 3)
    assert out == []  # never splits into pieces shorter than a few chunks
