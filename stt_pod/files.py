"""The file lane: a recorded upload decoded window by window in the batch slots live sessions leave free.

An upload is decoded with PyAV (any container and codec FFmpeg reads) and
transcribed the way faster-whisper transcribes a file offline, which on
recordings of people is the accurate way (dev set joined into one 7-minute
recording: 10.4 % WER sequential, 25.2 % with BatchedInferencePipeline's
independent VAD chunks): 30 s windows one after another, each conditioned on
the text before it, each starting where the last word its predecessor heard
completely ended, so no word is lost at a window's edge and a decoder that
stopped early resumes where it stopped. The VAD only skips windows with no
trace of a voice (Whisper would invent "you" in them): its usual threshold
would skip whispered speech too.

What makes it a batch lane: each window goes to the scheduler as `FILE`
work, behind every live job, and the windows of all files in progress share
model calls. A long file is cut at pauses into chapters of about
`chapter_seconds`, decoded side by side, so one long upload fills a batch too.
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
"""Whisper hears 30 s at most: one window."""
TAIL_SECONDS = 1.0
"""Words ending this close to the end of a window cut mid-audio may be cut too: the next window decodes them again."""
SILENT_PROBABILITY = 0.3
SILENT_PEAK = 10 ** (-50 / 20)
"""A window is not decoded when none of its VAD chunks rates `SILENT_PROBABILITY` and its loudest samples (99.9th
percentile) stay under -50 dBFS. Both, because neither alone is safe on the dev set: whispered clips peak at -33 to
-36 dBFS but the VAD, deep in a long file, rates them 0.15; silence and noise rate 0.11 at most."""
VAD_CHUNK = 512  # samples per Silero VAD probability
PAUSE_CHUNKS = 16  # about half a second: a pause where a chapter may be cut
MAX_WORD_SECONDS = 2.0
"""Longer words are alignment stretched over speech the decoder skipped (see `keep_words`)."""
PREVIOUS_CHARACTERS = 1000
"""Text kept for the next window's conditioning (the engine trims it to its token budget)."""
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


def plan_chapters(samples: int, speech: list[tuple[int, int]], chapter_samples: int) -> list[tuple[int, int]]:
    """Consecutive spans covering all `samples`, about `chapter_samples` long, cut in the middle of pauses.

    Each cut goes in the longest pause between two spans of `speech` within
    half a chapter after the nominal cut point; with no pause there, the
    chapter runs on to the next one (a chapter never cuts a word).
    """
    pauses = [(e1, s2) for (_, e1), (s2, _) in zip(speech, speech[1:]) if s2 > e1]
    chapters, start = [], 0
    while samples - start > chapter_samples * 1.5:
        target = start + chapter_samples
        near = [(s2 - e1, (e1 + s2) // 2) for e1, s2 in pauses if target <= (e1 + s2) // 2 < target + chapter_samples // 2]
        if not near:
            later = [(e1 + s2) // 2 for e1, s2 in pauses if (e1 + s2) // 2 >= target]
            if not later:
                break
            cut = later[0]
        else:
            cut = max(near)[1]
        if samples - cut < chapter_samples // 2:
            break
        chapters.append((start, cut))
        start = cut
    chapters.append((start, samples))
    return chapters


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero VAD's speech probability for every `VAD_CHUNK` samples (the model faster-whisper ships)."""
    from faster_whisper.vad import get_vad_model

    padded = np.pad(audio, (0, (-len(audio)) % VAD_CHUNK))
    return np.asarray(get_vad_model()(padded), dtype=np.float32).reshape(-1)


def speech_spans(probabilities: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Sample spans where chunks rate at least `threshold`, joined across pauses shorter than `PAUSE_CHUNKS`."""
    spans: list[tuple[int, int]] = []
    for i in np.flatnonzero(probabilities >= threshold):
        start, end = int(i) * VAD_CHUNK, (int(i) + 1) * VAD_CHUNK
        if spans and start - spans[-1][1] < PAUSE_CHUNKS * VAD_CHUNK:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def silent(probabilities: np.ndarray | None, audio: np.ndarray, start: int, end: int) -> bool:
    """Whether audio[start:end] holds no trace of a voice (see `SILENT_PEAK`)."""
    if probabilities is None or end <= start:
        return end <= start
    window = probabilities[start // VAD_CHUNK: -(-end // VAD_CHUNK)]
    if len(window) and float(window.max()) >= SILENT_PROBABILITY:
        return False
    return float(np.percentile(np.abs(audio[start:end]), 99.9)) < SILENT_PEAK


def keep_words(words: list[Word], window_seconds: float, last: bool) -> tuple[list[Word], float]:
    """The words of a window to keep, and where the next window starts (seconds into this one).

    The file's last window keeps everything. A window cut mid-audio keeps the
    words that end before its last `TAIL_SECONDS` and hands the rest to the
    next window, which starts where the last kept word ended (or at the tail,
    when none was kept: silence, or one long word). A word's end is taken as
    at most `MAX_WORD_SECONDS` after its start: when the decoder stops early
    (greedy decoding of a sonnet can say "2." for 30 s of speech), alignment
    stretches its last word over the speech it did not transcribe, and the
    next window must start there, not after it.
    """
    words = [w if w.end - w.start <= MAX_WORD_SECONDS else Word(w.text, w.start, w.start + MAX_WORD_SECONDS,
                                                                   w.probability) for w in words]
    if last:
        return words, window_seconds
    boundary = window_seconds - TAIL_SECONDS
    kept = [w for w in words if w.end <= boundary]
    return kept, (kept[-1].end if kept else boundary)


@dataclass(frozen=True)
class WindowResult:
    end: float  # the file is transcribed up to here (this chapter's part of it)
    segments: list[Segment]


Submit = Callable[[object, Job, str], asyncio.Future]
"""The scheduler's submit(key, job, priority)."""


async def _chapter(submit: Submit, audio: np.ndarray, speech: np.ndarray | None, start: int, end: int, prompt: str,
                   beam_size: int, priority: str, out: asyncio.Queue) -> None:
    """Decode audio[start:end] window after window, putting each window's result on `out`, then None."""
    key = ("file", next(_ids))
    window = int(WINDOW_SECONDS * SR)
    seek, previous = start, ""
    while seek < end:
        stop = min(end, seek + window)
        words: list[Word] = []
        if not silent(speech, audio, seek, stop):
            job = Job(FILE, seek, stop, audio[seek:stop], prompt=prompt, previous=previous, final=True,
                      beam_size=beam_size)
            words = await submit(key, job, priority) or []
        kept, advance = keep_words(words, (stop - seek) / SR, last=stop == end)
        offset = seek / SR
        timed = [TimedWord(w.text, w.start + offset, w.end + offset, w.probability) for w in kept]
        previous = (previous + "".join(w.text for w in kept))[-PREVIOUS_CHARACTERS:]
        seek = max(seek + 1, seek + int(advance * SR)) if stop < end else end
        await out.put(WindowResult(seek / SR, split_segments(timed)))
    await out.put(None)


async def transcribe_file(submit: Submit, audio: np.ndarray, chapters: list[tuple[int, int]], prompt: str,
                          beam_size: int = 0, priority: str = "low",
                          speech: np.ndarray | None = None) -> AsyncIterator[WindowResult]:
    """Every window's segments in file order, each as soon as it and everything before it is decoded.

    `speech`: the file's `speech_probabilities`, to skip silent windows (None: decode every window).
    """
    queues = [asyncio.Queue() for _ in chapters]
    tasks = [asyncio.ensure_future(_chapter(submit, audio, speech, s, e, prompt, beam_size, priority, q))
             for (s, e), q in zip(chapters, queues)]
    try:
        for queue, task in zip(queues, tasks):
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():  # the chapter failed before its next result: raise its error
                    getter.cancel()
                    task.result()
                    raise RuntimeError("a chapter ended without its end marker")
                result = getter.result()
                if result is None:
                    break
                yield result
    finally:
        for task in tasks:  # a client gone mid-file: its chapters stop, their queued windows are not decoded
            task.cancel()
