"""LocalAgreement-2: when a partial word becomes final (pure logic).

A streaming decoder sees each stretch of speech several times as the window
grows. A word is committed once two consecutive hypotheses agree on it (the
policy of whisper_streaming, Macháček et al. 2023); what they do not yet agree
on is shown as the partial. Committed words are never revised, so this module
also removes words a later window repeats from what was already committed.
"""

from __future__ import annotations

from stt_pod.words import Word

MAX_OVERLAP_WORDS = 5
"""Longest run of already-committed words a new window may repeat at its start."""

OVERLAP_SECONDS = 1.0
"""A new window's first words count as a repeat only this close to the commit point."""

TIME_TOLERANCE = 0.1
"""Word edges from alignment are this imprecise; a word ending before the commit point less this is old."""


class LocalAgreement:
    def __init__(self) -> None:
        self.previous: list[Word] = []  # last hypothesis, past the commit point
        self.committed: list[Word] = []  # recent committed words, for overlap removal

    def fresh(self, hypothesis: list[Word], committed_until: float, overlap: bool = True) -> list[Word]:
        """The part of `hypothesis` not already committed.

        `overlap`: the window covered committed audio, so its first words may
        repeat committed ones (a window that starts after the commit point
        cannot, and a word said twice there is really said twice).
        """
        words = [w for w in hypothesis if w.end > committed_until + TIME_TOLERANCE or w.start >= committed_until - TIME_TOLERANCE]
        if overlap and words and self.committed and abs(words[0].start - committed_until) < OVERLAP_SECONDS:
            tail = [w.key for w in self.committed[-MAX_OVERLAP_WORDS:]]
            for n in range(min(len(tail), len(words)), 0, -1):
                if tail[-n:] == [w.key for w in words[:n]]:
                    words = words[n:]
                    break
        return words

    def update(self, hypothesis: list[Word], committed_until: float, overlap: bool = True) -> tuple[list[Word], list[Word]]:
        """Feed a new hypothesis; returns (newly agreed words, still tentative words)."""
        words = self.fresh(hypothesis, committed_until, overlap)
        agreed: list[Word] = []
        for old, new in zip(self.previous, words):
            if not new.key or old.key != new.key:
                break
            agreed.append(new)
        self.previous = words[len(agreed):]
        self.commit(agreed)
        return agreed, self.previous

    def commit(self, words: list[Word]) -> None:
        self.committed = (self.committed + words)[-MAX_OVERLAP_WORDS:]

    def reset(self) -> None:
        """Forget the tentative hypothesis (its utterance got its final)."""
        self.previous = []
