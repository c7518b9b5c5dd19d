"""The real model: windows with different prompts and prefixes share one call."""

from __future__ import annotations

import pytest
import soundfile as sf

from stt_pod.engine import EngineConfig, Plain, WhisperEngine
from tests.devset import clips, wer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    return WhisperEngine(EngineConfig())


def test_windows_with_prompts_of_any_length_and_prefixes_decode_in_one_call(engine):
    [clip] = clips("en_jfk_ask_not")
    audio, _ = sf.read(str(clip.path), dtype="float32")
    windows = [
        Plain(audio),
        Plain(audio, previous="Thank you."),
        Plain(audio, prompt="Inaugural address, 1961.", previous=" ".join(["We observe today."] * 20)),
        Plain(audio, prefix="And so my fellow Americans,"),
        Plain(audio, final=True, prefix="And so my fellow Americans,"),
    ]
    plain, short, long_, prefixed, full = engine.decode(windows)
    for words in (plain, short, long_):
        assert wer(clip.text, "".join(w.text for w in words)) <= 0.2, words
    for words in (prefixed, full):  # the prefix is said first, and not returned
        text = "".join(w.text for w in words).lower()
        assert text.lstrip().startswith("ask") and "fellow" not in text, words
        assert words[0].start >= 2.0, words  # timed after the prefix's words: "ask" is said at about 3.5 s
    assert all(0.0 <= w.probability <= 1.0 for w in plain)
    assert all(a.start <= b.start for a, b in zip(plain, plain[1:]))
