"""A recognised word with its place in the session's audio, and how words become text."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NON_WORD = re.compile(r"[^\w']+")


@dataclass(frozen=True)
class Word:
    text: str  # as the model spelled it, with its leading space and punctuation
    start: float  # seconds of session audio
    end: float
    probability: float | None = None  # the model's confidence, where the decode gave one

    @property
    def key(self) -> str:
        """The word without case or punctuation, for comparing hypotheses."""
        return _NON_WORD.sub("", self.text.lower())

    def shifted(self, seconds: float) -> "Word":
        return Word(self.text, self.start + seconds, self.end + seconds, self.probability)


def join(words: list[Word]) -> str:
    return "".join(w.text for w in words).strip()
