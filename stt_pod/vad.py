"""Where the speech is: streaming voice activity detection for one session.

The pod decodes only speech, so a session that is silent costs nothing. Two
parts: `StreamingVad` runs the Silero VAD network that faster-whisper ships
(one ONNX session shared by the whole pod; per-session recurrent state), and
`Segmenter` is the pure state machine that turns per-chunk speech
probabilities into utterances, split where the speaker pauses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK = 512
"""Samples per VAD step at 16 kHz (32 ms), fixed by the Silero model."""
_CONTEXT = 64


class StreamingVad:
    """Speech probability per 32 ms chunk, carrying the network state across calls."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._session = get_vad_model().session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities for every whole chunk completed by `samples`."""
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        whole = len(data) // CHUNK * CHUNK
        self._pending = data[whole:].copy()
        if whole == 0:
            return np.zeros(0, dtype=np.float32)
        chunks = data[:whole].reshape(-1, CHUNK)
        contexts = np.concatenate([self._context[None], chunks[:-1, -_CONTEXT:]])
        batch = np.concatenate([contexts, chunks], axis=1).astype(np.float32, copy=False)
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = chunks[-1, -_CONTEXT:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class Utterance:
    """A span of speech in chunk indices, end exclusive."""

    start: int
    end: int


class Segmenter:
    """Chunk probabilities in, closed utterances out (pure; no model, no clock).

    Hysteresis (start at `threshold`, continue above `threshold - 0.15`) keeps
    soft word endings inside speech. An utterance closes after
    `min_silence` quiet chunks; one that reaches `max_chunks` is split at its
    least speech-like chunk in its last quarter, so no decode window grows
    without bound even if the speaker never pauses.
    """

    def __init__(self, threshold: float, min_silence: int, min_speech: int, max_chunks: int):
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_silence = max(1, min_silence)
        self.min_speech = max(1, min_speech)
        self.max_chunks = max(4, max_chunks)
        self.chunks = 0  # chunks seen so far
        self.start: int | None = None  # open utterance start
        self._last_speech = 0
        self._probs: list[float] = []  # of the open utterance

    @property
    def in_speech(self) -> bool:
        return self.start is not None

    def feed(self, probs: np.ndarray) -> list[Utterance]:
        closed: list[Utterance] = []
        for p in probs.tolist():
            i = self.chunks
            self.chunks += 1
            if self.start is None:
                if p >= self.threshold:
                    self.start, self._last_speech, self._probs = i, i, [p]
                continue
            self._probs.append(p)
            if p >= self.neg_threshold:
                self._last_speech = i
            if i - self._last_speech >= self.min_silence:
                self._close(self._last_speech + 1, closed)
            elif self.chunks - self.start >= self.max_chunks:
                self._split(closed)
        return closed

    def finish(self) -> list[Utterance]:
        """Close whatever speech is open at end of audio."""
        closed: list[Utterance] = []
        if self.start is not None:
            self._close(self.chunks, closed)
        return closed

    def _close(self, end: int, closed: list[Utterance]) -> None:
        assert self.start is not None
        if end - self.start >= self.min_speech:
            closed.append(Utterance(self.start, end))
        self.start, self._probs = None, []

    def _split(self, closed: list[Utterance]) -> None:
        assert self.start is not None
        tail_from = len(self._probs) * 3 // 4
        cut = tail_from + int(np.argmin(self._probs[tail_from:]))
        closed.append(Utterance(self.start, self.start + cut))
        self.start += cut
        self._probs = self._probs[cut:]
        self._last_speech = max(self._last_speech, self.start)
