"""Recordings of real people with exact transcripts, and the offline decode they are judged against.

The clips in tests/data/devset/ are the English part of the team's dev set
(shared/devset: public-domain, CC and MIT recordings found in PyPI packages;
MANIFEST.tsv and licenses/ say where each came from). Synthetic espeak speech
hides the errors that matter (a word lost at a window edge, a sentence heard
without its context), so accuracy is judged here, and never by an absolute
bound: a stream's WER is compared with the same model decoding the same files
offline (`WhisperModel.transcribe`, faster-whisper's defaults) on the same
machine, computed in the same run.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

from tests.speech import words

DEVSET = Path(__file__).resolve().parent / "data" / "devset"


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    text: str
    seconds: float
    speaker: str

    @property
    def words(self) -> int:
        return len(words(self.text))


@functools.cache
def all_clips() -> tuple[Clip, ...]:
    with open(DEVSET / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return tuple(
        Clip(r["file"][:-4], DEVSET / r["file"], (DEVSET / (r["file"][:-4] + ".txt")).read_text().strip(),
             float(r["seconds"]), r["speaker"])
        for r in rows
    )


def clips(*names: str) -> list[Clip]:
    """The named clips (all of them when none is named), in the order asked."""
    by_name = {c.name: c for c in all_clips()}
    return [by_name[n] for n in names] if names else list(all_clips())


STREAM_SET = ("en_jfk_ask_not", "en_librivox_sonnet001", "en_mfa_acoustic_corpus", "en_librispeech_61-70968-0000",
              "en_arctic_awb_a0007", "en_arctic_a0009", "en_mfa_truck", "en_mfa_redfox_normal")
"""Clips the integration tests stream (about 115 s, 8 voices, 265 words): read and spontaneous speech."""


def pooled_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word errors over all clips divided by all reference words (a long clip weighs more)."""
    import jiwer

    refs = [" ".join(words(r)) for r in references]
    hyps = [" ".join(words(h)) or "<empty>" for h in hypotheses]
    return jiwer.wer(refs, hyps)


CLIP_MARGIN = 0.15
"""How much worse than offline one clip's stream may be in a test about something else (resume, drain,
flush): a lost or repeated phrase costs more; one word of a 22-word clip costs 0.045."""


def wer(reference: str, hypothesis: str) -> float:
    return pooled_wer([reference], [hypothesis])


@functools.cache
def offline_text(*names: str) -> str:
    """The named clips decoded offline one by one, joined: what a stream of them is compared with."""
    model = _shared_model()
    return " ".join(offline_transcript(model, c.path) for c in clips(*names))


@functools.cache
def offline_file(path: Path) -> str:
    """Any file (synthetic speech too) decoded offline: the floor a stream of it is judged against."""
    return offline_transcript(_shared_model(), path)


def assert_file_as_accurate_as_offline(path: Path, reference: str, streamed: str, margin: float = CLIP_MARGIN) -> None:
    got, floor = wer(reference, streamed), wer(reference, offline_file(path))
    assert got <= floor + margin, f"WER {got:.3f} > offline {floor:.3f} + {margin}: {streamed!r}"


def reference_text(*names: str) -> str:
    return " ".join(c.text for c in clips(*names))


def assert_as_accurate_as_offline(names: tuple[str, ...], streamed: str, margin: float = CLIP_MARGIN) -> None:
    reference = reference_text(*names)
    offline = offline_text(*names)
    got, floor = wer(reference, streamed), wer(reference, offline)
    assert got <= floor + margin, f"WER {got:.3f} > offline {floor:.3f} + {margin}: {streamed!r} vs offline {offline!r}"


@functools.cache
def _shared_model():
    return offline_model()


def offline_model(model: str = "tiny.en", compute_type: str = "int8"):
    from faster_whisper import WhisperModel

    from stt_pod.engine import resolve_model

    return WhisperModel(resolve_model(model), device="cpu", compute_type=compute_type, local_files_only=True)


def offline_transcript(model, path: Path) -> str:
    """The whole file at once, as a user of faster-whisper would decode it (its defaults, English)."""
    segments, _ = model.transcribe(str(path), language="en")
    return " ".join(s.text.strip() for s in segments)
