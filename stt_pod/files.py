"""The file lane: a recorded upload, cut at silences into windows, decoded in the batch slots live sessions leave free.

An upload is decoded with PyAV (any container and codec FFmpeg reads), cut
where the speaker pauses (Silero VAD, as faster-whisper's batched pipeline
does) into windows of at most Whisper's 30 s, and every window of every
queued file goes to the scheduler at once as `FILE` work. The scheduler puts
file windows behind every live job, so short clips from many requests share
model calls and a live final never waits for a file window in the queue.

Windows are decoded independently (no previous-text conditioning, like
BatchedInferencePipeline), so even one long file fills a batch.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import numpy as np

from stt_pod.stream import FILE, Job
from stt_pod.words import Word
from voxfleet.openai_audio import RequestError, Segment, TimedWord, split_segments
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR

WINDOW_SECONDS = 30.0
"""Whisper hears at most 30 s: a window never spans more."""
VAD_MIN_SILENCE_MS = 160  # faster-whisper's batched pipeline: cut at short pauses, keep windows full
_ids = itertools.count()


def decode_upload(data: bytes, max_seconds: float) -> np.ndarray:
    """16 kHz mono float32 samples of an uploaded file, or RequestError (400 undecodable, 413 too long)."""
    import av

    limit = int(max_seconds * SR)
    chunks, total = [], 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise RequestError(400, "the file has no audio stream", "file", "invalid_file")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SR)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    total += len(chunk)
                    if total > limit:
                        raise RequestError(413, f"the audio is longer than this server's limit of {max_seconds:g} s",
                                           "file", "audio_too_long")
                    chunks.append(chunk)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except RequestError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise RequestError(400, f"the file could not be decoded as audio: {exc}", "file", "invalid_file") from None
    if not chunks:
        raise RequestError(400, "the file holds no audio samples", "file", "invalid_file")
    return (np.concatenate(chunks).astype(np.float32) / 32768.0)[:limit]


def plan_windows(speech: list[tuple[int, int]], max_samples: int) -> list[tuple[int, int]]:
    """Spans of speech (sample ranges, in order) grouped into windows of at most `max_samples`.

    A window runs from its first span's start to its last span's end (pauses
    inside are kept: Whisper reads them); a span longer than a window (the VAD
    found no pause) is cut into window-sized pieces.
    """
    windows: list[tuple[int, int]] = []
    start = end = None
    for s, e in speech:
        while e - s > max_samples:
            if start is not None:
                windows.append((start, end))
                start = None
            windows.append((s, s + max_samples))
            s += max_samples
        if start is not None and e - start <= max_samples:
            end = e
            continue
        if start is not None:
            windows.append((start, end))
        start, end = s, e
    if start is not None:
        windows.append((start, end))
    return windows


def speech_windows(audio: np.ndarray, window_seconds: float = WINDOW_SECONDS) -> list[tuple[int, int]]:
    """Where to cut a file: windows of speech, silences between them dropped."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(max_speech_duration_s=window_seconds, min_silence_duration_ms=VAD_MIN_SILENCE_MS)
    spans = [(int(t["start"]), int(t["end"])) for t in get_speech_timestamps(audio, options)]
    return plan_windows(spans, int(window_seconds * SR))


@dataclass(frozen=True)
class WindowResult:
    index: int
    offset: float  # seconds into the file
    segments: list[Segment]


Submit = Callable[[object, Job, str], asyncio.Future]
"""The scheduler's submit(key, job, priority)."""


async def transcribe_windows(submit: Submit, audio: np.ndarray, windows: list[tuple[int, int]], prompt: str,
                             priority: str = "low") -> AsyncIterator[WindowResult]:
    """Every window's segments, in file order, each as soon as it and those before it are decoded."""
    key = ("file", next(_ids))
    futures = [submit(key, Job(FILE, s, e, audio[s:e], prompt=prompt, final=True), priority) for s, e in windows]
    try:
        for index, ((start, _), future) in enumerate(zip(windows, futures)):
            words: list[Word] = await future or []
            offset = start / SR
            timed = [TimedWord(w.text, w.start + offset, w.end + offset, w.probability) for w in words]
            yield WindowResult(index, offset, split_segments(timed))
    finally:
        for future in futures:  # a client gone mid-file: its windows still queued are not decoded
            future.cancel()
