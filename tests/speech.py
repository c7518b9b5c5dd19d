"""Real speech for tests and benchmarks, spoken by espeak-ng and shaped by sox.

Nothing is downloaded: each utterance is synthesised once into a cache folder
(VOXFLEET_SPEECH_CACHE, default ~/.cache/voxfleet/speech) keyed by its text,
voice and format. Texts are everyday sentences with distinct vocabularies, so
concurrent sessions can be told apart by their words. (tiny.en transcribes
these espeak voices offline, beam 5, at 14-20% WER: the floor a test bound
stands on.)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

SENTENCES = [
    "Please call Stella and ask her to bring these things from the store.",
    "The weather today is cloudy with a chance of rain in the afternoon.",
    "My brother plays the guitar in a small band on weekends.",
    "We took the early train to the mountains last summer.",
    "The library opens at nine in the morning and closes at six.",
    "She bought fresh bread, cheese and apples at the market.",
    "Our team finished the project two days before the deadline.",
    "The children built a big castle out of sand at the beach.",
    "He forgot his umbrella and got wet on the way home.",
    "The doctor said I should drink more water every day.",
    "Turn left at the next corner and the museum is on your right.",
    "Coffee tastes better when the beans are freshly ground.",
    "The old bridge was closed for repairs during the winter.",
    "I would like to book a table for four people tonight.",
    "The cat sleeps on the warm windowsill every afternoon.",
    "Our flight was delayed because of a storm over the ocean.",
    "The teacher asked the students to read the first chapter.",
    "A gentle breeze moved the leaves of the tall oak tree.",
    "The new phone has a bigger screen and a faster camera.",
    "Farmers harvest the wheat at the end of the summer.",
    "Remember to lock the door when you leave the house.",
    "The orchestra played a beautiful song at the concert.",
    "Pilots check the engines carefully before every flight.",
    "The garden is full of roses, tulips and sunflowers.",
]

VOICES = ["en-us", "en-gb", "en-us+m3", "en-gb+f3", "en-us+f2", "en-gb-x-rp"]


def require_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run scripts/install-system-deps.sh")


def cache_dir() -> Path:
    d = Path(os.environ.get("VOXFLEET_SPEECH_CACHE", Path.home() / ".cache" / "voxfleet" / "speech"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def speak(text: str, voice: str = "en-us", rate: int = 16000, channels: int = 1, encoding: str = "pcm16",
          words_per_minute: int = 160, pause_ms: int = 0) -> Path:
    """A WAV file of `text` in the requested format (pcm16 or float32)."""
    require_tools()
    key = hashlib.sha256(repr((text, voice, rate, channels, encoding, words_per_minute, pause_ms)).encode()).hexdigest()[:16]
    out = cache_dir() / f"{key}.wav"
    if out.exists():
        return out
    raw = out.with_suffix(".raw.wav")
    args = ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(raw)]
    if pause_ms:
        args += ["-g", str(max(1, pause_ms // 10))]
    subprocess.run(args + [text], check=True, capture_output=True)
    _sox_convert(raw, out, rate, channels, encoding)
    raw.unlink()
    return out


def reformat(path: Path, rate: int, channels: int = 1, encoding: str = "pcm16") -> Path:
    """A copy of a recording at another rate, channel count or encoding (pcm16 or float32), made by sox."""
    require_tools()
    key = hashlib.sha256(repr((path.read_bytes(), rate, channels, encoding)).encode()).hexdigest()[:16]
    out = cache_dir() / f"{path.stem}-{rate}-{channels}-{encoding}-{key}.wav"
    if not out.exists():
        _sox_convert(path, out, rate, channels, encoding)
    return out


def _sox_convert(src: Path, out: Path, rate: int, channels: int, encoding: str) -> None:
    fmt = ["-b", "16", "-e", "signed-integer"] if encoding == "pcm16" else ["-b", "32", "-e", "floating-point"]
    tmp = out.with_suffix(".tmp.wav")
    subprocess.run(["sox", str(src), "-r", str(rate), "-c", str(channels), *fmt, str(tmp)], check=True, capture_output=True)
    tmp.rename(out)


def conversation(sentences: list[str], voice: str = "en-us", gap_seconds: float = 0.8, rate: int = 16000) -> Path:
    """Several sentences with silence between them: several utterances in one stream."""
    key = hashlib.sha256(repr((sentences, voice, gap_seconds, rate)).encode()).hexdigest()[:16]
    out = cache_dir() / f"conv-{key}.wav"
    if out.exists():
        return out
    parts = [str(speak(s, voice, rate)) for s in sentences]
    gap = cache_dir() / f"silence-{gap_seconds}-{rate}.wav"
    if not gap.exists():
        subprocess.run(["sox", "-n", "-r", str(rate), "-c", "1", "-b", "16", str(gap), "trim", "0", str(gap_seconds)],
                       check=True, capture_output=True)
    seq = [p for part in parts for p in (part, str(gap))]
    tmp = out.with_suffix(".tmp.wav")
    subprocess.run(["sox", *seq, str(tmp)], check=True, capture_output=True)
    tmp.rename(out)
    return out


def words(text: str) -> list[str]:
    """Normalised words, for WER and for telling sessions apart."""
    text = text.lower().replace("'s", "s")
    return re.sub(r"[^a-z0-9 ]+", " ", text).split()


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(" ".join(words(reference)), " ".join(words(hypothesis)) or "<empty>")
