"""The OpenAI audio API's wire format: transcription responses, streamed events and errors.

Pods render transcripts with it and routers send its errors, so a client
written for `POST /v1/audio/transcriptions` (the `openai` package, curl
scripts, subtitle tools) reads voxfleet's answers unchanged. Pure: words and
times in, bytes out.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("segment", "word")

SEGMENT_MAX_SECONDS = 12.0
"""A segment (a subtitle line) ends at a sentence end, at a pause, or at this length."""
SEGMENT_PAUSE_SECONDS = 1.0
_SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass(frozen=True)
class TimedWord:
    word: str  # with its leading space, as the model spelled it
    start: float
    end: float
    probability: float | None = None


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    words: tuple[TimedWord, ...] = field(default=())

    @property
    def text(self) -> str:
        return "".join(w.word for w in self.words)


@dataclass(frozen=True)
class Transcript:
    segments: tuple[Segment, ...]
    duration: float  # seconds of audio in the upload
    language: str = "english"

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def split_segments(words: list[TimedWord]) -> list[Segment]:
    """Words of one stretch of speech into segments: at sentence ends, pauses, or `SEGMENT_MAX_SECONDS`."""
    segments: list[Segment] = []
    current: list[TimedWord] = []
    for word in words:
        if current and (word.start - current[-1].end > SEGMENT_PAUSE_SECONDS
                        or word.end - current[0].start > SEGMENT_MAX_SECONDS):
            segments.append(Segment(current[0].start, current[-1].end, tuple(current)))
            current = []
        current.append(word)
        if word.word.strip().endswith(_SENTENCE_END):
            segments.append(Segment(current[0].start, current[-1].end, tuple(current)))
            current = []
    if current:
        segments.append(Segment(current[0].start, current[-1].end, tuple(current)))
    return segments


class RequestError(ValueError):
    """A request the API refuses: an HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> bytes:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> bytes:
    """OpenAI's error document, which its SDK turns into the matching exception's message."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def check_format(response_format: str, granularities: list[str]) -> None:
    if response_format not in RESPONSE_FORMATS:
        raise RequestError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {response_format!r}",
                           "response_format")
    for g in granularities:
        if g not in GRANULARITIES:
            raise RequestError(400, f"timestamp_granularities[] takes {' and '.join(GRANULARITIES)}; got {g!r}",
                               "timestamp_granularities")
    if granularities and response_format != "verbose_json":
        raise RequestError(400, "timestamp_granularities[] needs response_format verbose_json",
                           "timestamp_granularities")


def render(transcript: Transcript, response_format: str, granularities: list[str] = ()) -> tuple[bytes, str]:
    """The response body and its content type."""
    if response_format == "text":
        return (transcript.text + "\n").encode(), "text/plain; charset=utf-8"
    if response_format == "srt":
        return _subtitles(transcript, ",", srt=True).encode(), "application/x-subrip; charset=utf-8"
    if response_format == "vtt":
        return ("WEBVTT\n\n" + _subtitles(transcript, ".", srt=False)).encode(), "text/vtt; charset=utf-8"
    body: dict = {"text": transcript.text}
    if response_format == "verbose_json":
        body = {"task": "transcribe", "language": transcript.language, "duration": round(transcript.duration, 3),
                "text": transcript.text}
        if "segment" in granularities or not granularities:
            body["segments"] = [_segment_entry(i, s) for i, s in enumerate(transcript.segments)]
        if "word" in granularities:
            body["words"] = [{"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
                             for s in transcript.segments for w in s.words]
    body["usage"] = {"type": "duration", "seconds": math.ceil(transcript.duration)}
    return json.dumps(body).encode(), "application/json"


def _segment_entry(index: int, segment: Segment) -> dict:
    probabilities = [w.probability for w in segment.words if w.probability]
    text = segment.text
    return {
        "id": index, "seek": int(segment.start * 100), "start": round(segment.start, 3), "end": round(segment.end, 3),
        "text": text, "tokens": [], "temperature": 0.0,
        "avg_logprob": round(sum(math.log(p) for p in probabilities) / len(probabilities), 4) if probabilities else 0.0,
        "compression_ratio": round(_compression_ratio(text), 4), "no_speech_prob": 0.0,
    }


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _subtitles(transcript: Transcript, decimal: str, srt: bool) -> str:
    blocks = []
    for i, s in enumerate(transcript.segments, 1):
        timing = f"{_clock(s.start, decimal)} --> {_clock(s.end, decimal)}"
        blocks.append(f"{i}\n{timing}\n{s.text.strip()}\n" if srt else f"{timing}\n{s.text.strip()}\n")
    return "\n".join(blocks)


def _clock(seconds: float, decimal: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def delta_event(text: str, seconds: float | None = None, duration: float | None = None) -> bytes:
    """One server-sent event of a streamed transcription: text that follows what was sent before.

    voxfleet adds `progress` (seconds of the file transcribed so far, of `duration`), which OpenAI's
    clients ignore and voxfleet's shows.
    """
    event: dict = {"type": "transcript.text.delta", "delta": text}
    if seconds is not None and duration is not None:
        event["progress"] = {"seconds": round(seconds, 2), "duration": round(duration, 2)}
    return _sse(event)


def done_event(transcript: Transcript) -> bytes:
    return _sse({"type": "transcript.text.done", "text": transcript.text,
                 "usage": {"type": "duration", "seconds": math.ceil(transcript.duration)}})


def error_event(message: str) -> bytes:
    """A failure after the stream began (the status line is already sent): the stream's last event."""
    return _sse({"type": "error", "error": {"message": message, "type": "server_error"}})


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"
