"""Streaming accuracy on recordings of people, judged against offline decoding of the same files.

The reference is computed here, on this machine, with the same model
(`WhisperModel.transcribe`, faster-whisper's defaults): a bound on absolute
WER would test the machine's numerics and the speaker, not the streaming.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.devset import STREAM_SET, assert_as_accurate_as_offline, clips, offline_text, pooled_wer
from voxfleet.client import transcribe, transcript

pytestmark = pytest.mark.integration

POOLED_MARGIN = 0.03
"""Pooled streaming WER over STREAM_SET (265 words) may exceed offline by this much. The target is 0.01,
met on all 39 clips in process (bench/pod/accuracy.py, about +1 point); on these 265 words alone, one
clip's window luck moves the pooled WER by a point or two, so the bound leaves that room."""


async def test_one_realtime_stream_is_about_as_accurate_as_offline(pod):
    streamed = [await transcript(pod.url, c.path, realtime=True) for c in clips(*STREAM_SET)]
    got = pooled_wer([c.text for c in clips(*STREAM_SET)], streamed)
    offline = pooled_wer([c.text for c in clips(*STREAM_SET)], [offline_text(n) for n in STREAM_SET])
    print(f"one stream: pooled WER {got:.4f}, offline {offline:.4f}")
    assert got <= offline + POOLED_MARGIN, (got, offline, streamed)


async def test_eight_concurrent_streams_are_about_as_accurate_as_offline(pod):
    selected = clips(*STREAM_SET)
    streamed = await asyncio.gather(*(transcript(pod.url, c.path, realtime=True) for c in selected))
    got = pooled_wer([c.text for c in selected], list(streamed))
    offline = pooled_wer([c.text for c in selected], [offline_text(c.name) for c in selected])
    print(f"eight streams: pooled WER {got:.4f}, offline {offline:.4f}")
    assert got <= offline + POOLED_MARGIN, (got, offline, streamed)


async def _finals(url: str, path, **options) -> list:
    return [r async for r in transcribe(url, path, **options) if r.final]


HOTWORD_CLIPS = ("en_mfa_whatscalled", "en_mfa_words", "en_mfa_um", "en_mfa_breaths")
"""The speaker says "Montreal Forced Aligner" in each; tiny.en hears "aligner" as "a liner" without help."""


async def test_the_prompt_option_reaches_the_decoder(pod):
    selected = clips(*HOTWORD_CLIPS)
    plain = [" ".join(r.text for r in await _finals(pod.url, c.path)) for c in selected]
    prompted = [" ".join(r.text for r in await _finals(pod.url, c.path, prompt="Montreal Forced Aligner"))
                for c in selected]
    assert not any("aligner" in t.lower() for t in plain), plain
    assert any("aligner" in t.lower() for t in prompted), prompted  # one clip alone is a coin toss
    references = [c.text for c in selected]
    assert pooled_wer(references, prompted) < pooled_wer(references, plain), (plain, prompted)


async def test_word_timestamps_lie_inside_their_final_and_increase(pod):
    [clip] = clips("en_jfk_ask_not")
    finals = await _finals(pod.url, clip.path, word_timestamps=True)
    assert finals and all(r.words for r in finals), finals
    for r in finals:
        assert " ".join(w["word"] for w in r.words) == r.text
        starts = [w["start"] for w in r.words]
        assert starts == sorted(starts)
        assert all(r.start - 0.01 <= w["start"] <= w["end"] <= r.end + 0.01 for w in r.words), r
        assert all(0.0 <= w["probability"] <= 1.0 for w in r.words)
    assert_as_accurate_as_offline((clip.name,), " ".join(r.text for r in finals))
    without = await _finals(pod.url, clip.path)
    assert all(not r.words for r in without)
