"""What the benchmark says: one script of real speech per stream, and where its speech is.

Stream i always gets the same text and voice, whatever N is, so N=1 and N=16
share stream 0 exactly. Each stream is a conversation (tests/speech.py) of
distinct sentences in its own order, in voice VOICES[i % len(VOICES)], long
enough to fill the requested seconds. This module never touches the network.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.speech import SENTENCES, VOICES, conversation, require_tools, speak  # noqa: E402

GAP_SECONDS = 0.8
"""Silence between two sentences of a stream (conversation()'s default)."""


@dataclass(frozen=True)
class StreamScript:
    index: int
    voice: str
    sentences: tuple[str, ...]
    path: Path
    seconds: float
    speech: tuple[tuple[float, float], ...]
    """(start, end) of each sentence in stream time."""

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def require_speech_tools() -> None:
    """espeak-ng and sox synthesise the speech (scripts/install-system-deps.sh installs them)."""
    require_tools()


def _seconds(path: Path) -> float:
    import soundfile as sf

    return sf.info(str(path)).duration


def stream_script(index: int, seconds: float, gap: float = GAP_SECONDS) -> StreamScript:
    """Stream `index`: distinct sentences in a fixed per-stream order, at least `seconds` long."""
    voice = VOICES[index % len(VOICES)]
    order = random.Random(7919 * (index + 1)).sample(SENTENCES, len(SENTENCES))
    chosen: list[str] = []
    speech: list[tuple[float, float]] = []
    t = 0.0
    while t < seconds and len(chosen) < len(order):
        sentence = order[len(chosen)]
        d = _seconds(speak(sentence, voice))
        chosen.append(sentence)
        speech.append((t, t + d))
        t += d + gap
    path = conversation(chosen, voice, gap)
    return StreamScript(index, voice, tuple(chosen), path, _seconds(path), tuple(speech))


def devset_script(index: int, seconds: float, gap: float = GAP_SECONDS) -> StreamScript:
    """Stream `index` of recordings of people: English dev-set clips in a per-stream order, `gap` apart."""
    import soundfile as sf

    from tests.devset import clips
    from tests.speech import cache_dir

    order = random.Random(7919 * (index + 1)).sample(clips(), len(clips()))
    chosen, speech, parts, t = [], [], [], 0.0
    silence = np.zeros(int(gap * 16000), dtype=np.float32)
    for clip in order:
        if t >= seconds:
            break
        audio, _ = sf.read(str(clip.path), dtype="float32")
        chosen.append(clip.text)
        speech.append((t, t + len(audio) / 16000))
        parts += [audio, silence]
        t += len(audio) / 16000 + gap
    path = cache_dir() / f"devset-{index}-{seconds:g}-{gap:g}.wav"
    if not path.exists():
        sf.write(str(path), np.concatenate(parts), 16000, subtype="PCM_16")
    return StreamScript(index, "devset", tuple(chosen), path, _seconds(path), tuple(speech))


def scripts(n: int, seconds: float, speech: str = "devset") -> list[StreamScript]:
    """`speech`: "devset" (recordings of people, the default) or "espeak" (synthetic voices)."""
    make = devset_script if speech == "devset" else stream_script
    return [make(i, seconds) for i in range(n)]


def float32_16k(path: Path) -> np.ndarray:
    """Mono float32 samples at 16 kHz (what a WhisperLive client sends)."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != 16000:
        import soxr

        mono = soxr.resample(mono, rate, 16000)
    return np.ascontiguousarray(mono, dtype=np.float32)
