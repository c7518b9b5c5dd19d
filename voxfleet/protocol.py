"""The native voxfleet wire protocol, sans I/O.

Everything a client, a pod and a router must agree on lives here: message
shapes, the binary audio frame layout, error codes and WebSocket close codes.
Parsing never raises anything but `ProtocolError`, which carries the error
code and close code the peer should see, so every transport answers bad input
the same way. See docs/protocol.md for the narrative version.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

# --- audio -----------------------------------------------------------------

MODEL_SAMPLE_RATE = 16_000
"""What the model hears; every session is resampled to this."""

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
MAX_CHANNELS = 8
MAX_PROMPT_CHARS = 2_000
"""Longest initial prompt a session may give (the model reads at most 223 tokens of it)."""
MAX_LANGUAGE_CHARS = 16
"""Longest `language` code: ISO 639 codes and Whisper's language names are shorter."""
MIN_FINAL_SILENCE_MS = 100
MAX_FINAL_SILENCE_MS = 10_000
"""Bounds of a session's endpointing silence (`configure`'s `final_silence_ms`); Realtime's cap is the same."""
MAX_TOKEN_CHARS = 4_096
"""Longest resume token: a router's token holds the whole pinning, well under this."""

ENCODINGS = {"pcm16": 2, "float32": 4}
"""Accepted sample encodings (little-endian) and their sample width in bytes."""

PRIORITIES = ("high", "normal", "low")

FRAME_HEADER = struct.Struct(">I")
"""A binary frame is a big-endian uint32 sequence number, then audio samples."""

MAX_SEQ = 2**32 - 1


def pack_frame(seq: int, audio: bytes) -> bytes:
    return FRAME_HEADER.pack(seq) + audio


def unpack_frame(data: bytes) -> tuple[int, memoryview]:
    if len(data) < FRAME_HEADER.size:
        raise ProtocolError("bad_frame", f"binary frame of {len(data)} bytes has no sequence header", CloseCode.INVALID_DATA)
    (seq,) = FRAME_HEADER.unpack_from(data)
    return seq, memoryview(data)[FRAME_HEADER.size :]


# --- close and error codes -----------------------------------------------------


class CloseCode:
    """WebSocket close codes, used with the meaning RFC 6455 gives them."""

    NORMAL = 1000  # session ended, every final delivered
    GOING_AWAY = 1001  # pod draining or shutting down
    UNSUPPORTED = 1003  # audio format the pod cannot take
    INVALID_DATA = 1007  # malformed JSON or audio payload
    POLICY = 1008  # protocol misuse, limits, bad or forged tokens
    TOO_BIG = 1009  # frame over max_frame_bytes
    INTERNAL = 1011  # the pod failed
    TRY_AGAIN_LATER = 1013  # full or draining: try another pod or later


class ErrorCode:
    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_MESSAGE = "unknown_message"
    AUDIO_BEFORE_START = "audio_before_start"
    UNSUPPORTED_AUDIO = "unsupported_audio"
    UNSUPPORTED_LANGUAGE = "unsupported_language"  # a language the pod's model does not transcribe (1003)
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    FULL = "full"
    DRAINING = "draining"
    SESSION_TOO_LONG = "session_too_long"
    IDLE_TIMEOUT = "idle_timeout"
    START_TIMEOUT = "start_timeout"
    INVALID_TOKEN = "invalid_token"
    UNKNOWN_SESSION = "unknown_session"
    QUEUE_FULL = "queue_full"  # router: no free slot and no room to wait (1013)
    QUEUE_TIMEOUT = "queue_timeout"  # router: waited the longest allowed (1013)
    MISSING_API_KEY = "missing_api_key"  # router (1008)
    INVALID_API_KEY = "invalid_api_key"  # router (1008)
    KEY_LIMIT = "key_limit"  # router: the key's concurrent sessions are all in use (1008)
    INTERNAL = "internal"
    CONNECTION_LOST = "connection_lost"  # never sent: a metrics reason for a client gone before `ready`


class ProtocolError(Exception):
    """Bad input from a peer: what to tell it and how to close."""

    def __init__(self, code: str, message: str, close_code: int = CloseCode.POLICY):
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code

    def to_message(self) -> dict[str, Any]:
        return error(self.code, self.message)


# --- client messages -----------------------------------------------------------


@dataclass(frozen=True)
class AudioFormat:
    sample_rate: int = MODEL_SAMPLE_RATE
    encoding: str = "pcm16"
    channels: int = 1

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample across all channels."""
        return ENCODINGS[self.encoding] * self.channels

    def seconds(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_frame / self.sample_rate


@dataclass(frozen=True)
class Start:
    """First message of a new session."""

    audio: AudioFormat = field(default_factory=AudioFormat)
    language: str | None = "en"
    priority: str = "normal"
    partials: bool = True
    prompt: str = ""  # initial prompt / hotwords: names and terms the session is likely to say
    word_timestamps: bool = False  # finals carry each word's times and probability
    previous_text: str = ""  # what the session said before this audio (a router moving it): decoding context
    speech_events: bool = False  # send speech_started / speech_stopped from the session's VAD


@dataclass(frozen=True)
class Resume:
    """First message of a reconnect: continue the session the token names."""

    token: str
    last_seq: int = -1  # highest audio seq the client saw acknowledged
    last_segment_id: int = -1  # highest final segment id the client received


@dataclass(frozen=True)
class End:
    """End of audio: flush every remaining final, then close 1000."""


@dataclass(frozen=True)
class Flush:
    """Finalize everything heard so far now; the session goes on. Answered by `flushed`."""


@dataclass(frozen=True)
class Keepalive:
    """A client silent on purpose: the idle timeout counts from here."""


@dataclass(frozen=True)
class Configure:
    """Change a live session's options; a field left None keeps its value. Answered by `configured`."""

    partials: bool | None = None
    prompt: str | None = None
    final_silence_ms: int | None = None


CONTROLS = ("flush", "keepalive", "configure")
"""Client messages that may come mid-session (between audio frames): a router relays them in order."""

ClientMessage = Start | Resume | End | Flush | Keepalive | Configure


def _require(obj: dict, key: str, kind: type | tuple, default: Any = ...) -> Any:
    if key not in obj:
        if default is ...:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'{key}' is required")
        return default
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'{key}' must be {getattr(kind, '__name__', kind)}")
    return value


def parse_audio_format(obj: dict) -> AudioFormat:
    rate = _require(obj, "sample_rate", int, MODEL_SAMPLE_RATE)
    encoding = _require(obj, "encoding", str, "pcm16")
    channels = _require(obj, "channels", int, 1)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_AUDIO,
            f"sample_rate {rate} outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}",
            CloseCode.UNSUPPORTED,
        )
    if encoding not in ENCODINGS:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_AUDIO,
            f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}",
            CloseCode.UNSUPPORTED,
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_AUDIO, f"channels {channels} outside 1..{MAX_CHANNELS}", CloseCode.UNSUPPORTED
        )
    return AudioFormat(rate, encoding, channels)


def decode_json(text: str | bytes) -> dict:
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc!s:.200}", CloseCode.INVALID_DATA) from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "a message must be a JSON object", CloseCode.INVALID_DATA)
    return obj


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse one JSON text message from a client."""
    obj = decode_json(text)
    kind = obj.get("type")
    if kind == "start":
        language = _require(obj, "language", (str, type(None)), "en")
        if language is not None and len(language) > MAX_LANGUAGE_CHARS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'language' is longer than {MAX_LANGUAGE_CHARS} characters")
        priority = _require(obj, "priority", str, "normal")
        if priority not in PRIORITIES:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"priority must be one of {', '.join(PRIORITIES)}")
        options = _require(obj, "options", dict, {})
        partials = _require(options, "partials", bool, True)
        prompt = _require(options, "prompt", str, "")
        word_timestamps = _require(options, "word_timestamps", bool, False)
        previous_text = _require(options, "previous_text", str, "")
        speech_events = _require(options, "speech_events", bool, False)
        if len(prompt) > MAX_PROMPT_CHARS or len(previous_text) > MAX_PROMPT_CHARS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'prompt' or 'previous_text' is longer than {MAX_PROMPT_CHARS} characters")
        return Start(parse_audio_format(obj), language or None, priority, partials, prompt, word_timestamps,
                     previous_text, speech_events)
    if kind == "resume":
        token = _require(obj, "token", str)
        if len(token) > MAX_TOKEN_CHARS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'token' is longer than {MAX_TOKEN_CHARS} characters")
        last_seq = _require(obj, "last_seq", int, -1)
        last_segment_id = _require(obj, "last_segment_id", int, -1)
        return Resume(token, last_seq, last_segment_id)
    if kind == "end":
        return End()
    if kind == "flush":
        return Flush()
    if kind == "keepalive":
        return Keepalive()
    if kind == "configure":
        return parse_configure(obj)
    raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {kind!r}")


def parse_configure(obj: dict) -> Configure:
    """A `configure` message, validated as `start` validates the same options."""
    partials = _require(obj, "partials", bool, None)
    prompt = _require(obj, "prompt", str, None)
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'prompt' is longer than {MAX_PROMPT_CHARS} characters")
    silence = _require(obj, "final_silence_ms", int, None)
    if silence is not None and not MIN_FINAL_SILENCE_MS <= silence <= MAX_FINAL_SILENCE_MS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"'final_silence_ms' must lie in {MIN_FINAL_SILENCE_MS}..{MAX_FINAL_SILENCE_MS}")
    unknown = sorted(set(obj) - {"type", "partials", "prompt", "final_silence_ms"})
    if unknown:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'configure' cannot change {', '.join(map(repr, unknown))}")
    return Configure(partials, prompt, silence)


def start_message(start: Start) -> dict[str, Any]:
    return {
        "type": "start",
        "sample_rate": start.audio.sample_rate,
        "encoding": start.audio.encoding,
        "channels": start.audio.channels,
        "language": start.language,
        "priority": start.priority,
        "options": {"partials": start.partials, "prompt": start.prompt, "word_timestamps": start.word_timestamps,
                    "previous_text": start.previous_text, "speech_events": start.speech_events},
    }


def resume_message(resume: Resume) -> dict[str, Any]:
    return {
        "type": "resume",
        "token": resume.token,
        "last_seq": resume.last_seq,
        "last_segment_id": resume.last_segment_id,
    }


END = {"type": "end"}
FLUSH = {"type": "flush"}
KEEPALIVE = {"type": "keepalive"}


def configure_message(configure: Configure) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "configure"}
    for key in ("partials", "prompt", "final_silence_ms"):
        value = getattr(configure, key)
        if value is not None:
            message[key] = value
    return message

# --- server messages -----------------------------------------------------------


def ready(session_id: str, resume_token: str, next_seq: int = 0, resumed: bool = False) -> dict[str, Any]:
    return {
        "type": "ready",
        "session_id": session_id,
        "resume_token": resume_token,
        "next_seq": next_seq,
        "resumed": resumed,
    }


def queued(position: int, queue_length: int) -> dict[str, Any]:
    """Router: no pod has a free slot yet; you are `position` in line (1 is next)."""
    return {"type": "queued", "position": position, "queue_length": queue_length}


def token(resume_token: str) -> dict[str, Any]:
    """Router: the session moved (failover); resume with this token from now on."""
    return {"type": "token", "resume_token": resume_token}


def partial(text: str, start: float, end: float) -> dict[str, Any]:
    return {"type": "partial", "text": text, "start": round(start, 3), "end": round(end, 3)}


def final(segment_id: int, text: str, start: float, end: float,
          words: list[tuple[str, float, float, float | None]] | None = None) -> dict[str, Any]:
    """`words`, when the session asked for word timestamps: (word, start, end, probability) each."""
    message = {"type": "final", "segment_id": segment_id, "text": text, "start": round(start, 3), "end": round(end, 3)}
    if words is not None:
        message["words"] = [word_entry(*w) for w in words]
    return message


def word_entry(word: str, start: float, end: float, probability: float | None) -> dict[str, Any]:
    entry = {"word": word, "start": round(start, 3), "end": round(end, 3)}
    if probability is not None:
        entry["probability"] = round(probability, 4)
    return entry


def flushed(segments: list[int]) -> dict[str, Any]:
    """A `flush` is done: its finals (these segment ids; none if nothing was open) were sent before this."""
    return {"type": "flushed", "segments": list(segments)}


def configured(partials: bool, prompt: str, final_silence_ms: int) -> dict[str, Any]:
    """A `configure` took effect: the session's options now."""
    return {"type": "configured", "partials": partials, "prompt": prompt, "final_silence_ms": final_silence_ms}


def speech_started(at: float) -> dict[str, Any]:
    """The VAD heard speech begin at `at` session seconds (sessions started with `speech_events`)."""
    return {"type": "speech_started", "at": round(at, 3)}


def speech_stopped(at: float) -> dict[str, Any]:
    """The utterance closed at `at` session seconds (silence, a forced split, a flush or the end): its final follows."""
    return {"type": "speech_stopped", "at": round(at, 3)}


def ack(seq: int, committed_seq: int, committed_seconds: float) -> dict[str, Any]:
    """`seq`: highest frame applied (safe while this pod lives; a resume resends after it).
    `committed_seq`: highest frame whose audio is entirely covered by finals already sent
    (safe even if the pod dies; a router replays only what comes after it)."""
    return {"type": "ack", "seq": seq, "committed_seq": committed_seq, "committed_seconds": round(committed_seconds, 3)}


def warning(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "warning", "code": code, "message": message, **extra}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def end(segments: int, audio_seconds: float) -> dict[str, Any]:
    return {"type": "end", "segments": segments, "audio_seconds": round(audio_seconds, 3)}


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
