"""One pod, real speech: accuracy alone and among many concurrent sessions."""

from __future__ import annotations

import asyncio

import pytest

from tests.devset import assert_as_accurate_as_offline, assert_file_as_accurate_as_offline, clips
from tests.speech import SENTENCES, VOICES, conversation, reformat, words
from voxfleet.client import transcribe, transcript

pytestmark = pytest.mark.integration

MARKER_LETTERS = 3
"""Words this long or longer tell sessions apart; "I", "on" and "a" come out of any misheard sentence."""


async def test_single_session_transcript_is_as_accurate_as_offline(pod):
    sentences = SENTENCES[:4]
    path = conversation(sentences)
    assert_file_as_accurate_as_offline(path, " ".join(sentences), await transcript(pod.url, path))


async def test_realtime_stream_gets_partials_and_ordered_finals(pod):
    [clip] = clips("en_jfk_ask_not")
    results = [r async for r in transcribe(pod.url, clip.path, realtime=True, partials=True)]
    finals = [r for r in results if r.final]
    assert any(not r.final for r in results), "no partial while speech went on"
    assert [r.segment_id for r in finals] == list(range(len(finals))), "finals repeated or out of order"
    assert all(a.end <= b.start + 0.3 for a, b in zip(finals, finals[1:])), "finals overlap in time"
    assert_as_accurate_as_offline((clip.name,), " ".join(r.text for r in finals))


@pytest.mark.parametrize("rate,channels,encoding", [
    (8000, 1, "pcm16"),  # telephone band
    (44100, 2, "float32"),
    (48000, 1, "float32"),
])
async def test_any_rate_channels_and_encoding(pod, rate, channels, encoding):
    [clip] = clips("en_jfk_ask_not")  # a recording of a person: espeak at 8 kHz is a coin toss even offline
    path = reformat(clip.path, rate, channels, encoding)
    text = await transcript(pod.url, path)
    # A wrong resampler or downmix gives nonsense, far worse than offline decoding of the same file.
    assert_file_as_accurate_as_offline(path, clip.text, text)


async def test_concurrent_sessions_each_get_their_own_words(pod):
    n = 6
    scripts = [[SENTENCES[(2 * i + 8) % len(SENTENCES)], SENTENCES[(2 * i + 9) % len(SENTENCES)]] for i in range(n)]
    files = [conversation(s, VOICES[i % len(VOICES)]) for i, s in enumerate(scripts)]
    texts = await asyncio.gather(*(transcript(pod.url, f, realtime=True) for f in files))
    vocab = [{w for w in words(" ".join(s)) if len(w) >= MARKER_LETTERS} for s in scripts]
    for i, (script, text) in enumerate(zip(scripts, texts)):
        assert_file_as_accurate_as_offline(files[i], " ".join(script), text)
        others = set().union(*(v for j, v in enumerate(vocab) if j != i)) - vocab[i]
        leaked = set(words(text)) & others
        assert len(leaked) <= 1, f"session {i} heard another session's words: {leaked}"
