"""OpenAI's Realtime API in transcription mode, served by the pod: its clients work unchanged.

Why it exists: apps written against `wss://api.openai.com/v1/realtime?intent=transcription`
(the official `openai` SDKs' `client.realtime.connect(...)`, and the older
`client.beta.realtime` with `transcription_session.*` events) can point at a pod
instead. Their sessions are ordinary pod `Session`s: the same admission, slots,
batching scheduler and metrics as native and WhisperLive sessions (label `realtime`).

The protocol, as the `openai` package's types spell it (JSON text events both ways):
- the server speaks first: `session.created` (or `transcription_session.created` for a
  client sending `OpenAI-Beta: realtime=v1`), the effective configuration;
- client `session.update` / `transcription_session.update`: input format (16-bit PCM,
  24 kHz unless the client names another rate), language, prompt, turn detection
  (`server_vad` with threshold / silence_duration_ms / prefix_padding_ms, or null) and
  `include` (logprobs); answered by `session.updated` / `transcription_session.updated`;
- client `input_audio_buffer.append` (base64 audio), `.commit`, `.clear`;
- server `input_audio_buffer.speech_started` / `.speech_stopped` (server VAD only),
  `input_audio_buffer.committed`, `conversation.item.input_audio_transcription.delta`
  and `.completed`, `input_audio_buffer.cleared`, and `error`.

How it maps onto a pod session:
- the pod `Session` opens at the first audio (the format is settled by then; the slot is
  checked when the socket opens, as for the other front ends, and taken at the first audio);
- an *item* is one final segment: its `completed` carries the final's text. Before it, the
  item is `committed` once: when the VAD closes its speech (server VAD), when the client
  commits, or just before `completed` when neither happened (turn detection off, or a final
  the pod made mid-speech). Words of a final are attributed to committed items by their time,
  so every committed item gets exactly one `completed` (empty when it held no words);
- `delta` events come from the pod's partials while the item is spoken: the partial's words
  past those this item already sent. Partials may revise words; the deltas never do, and the
  `completed` transcript is the one to keep;
- `commit` finalizes what was heard so far now (`Session.flush`) and the session goes on;
  a commit with no audio since the last commit gets `input_audio_buffer_commit_empty`;
- `clear` is answered with `cleared` and empties the commit buffer, but audio the pod has
  heard is still transcribed (it decodes audio as it arrives);
- turn detection: `threshold`, `silence_duration_ms` and `prefix_padding_ms` set the
  session's VAD threshold, final silence and speech pad (defaults: the pod's); null turns the
  speech events off and the client commits; `semantic_vad` is served as the pod's VAD;
- bad events (bad JSON, unknown type, bad base64, audio that is not whole samples, a
  configuration the pod cannot serve) get an `error` event and the session goes on; the
  limits end it as on the native front end, with its close codes: oversize message 1009,
  session too long or idle 1008, full or draining 1013 (after an `error` event), and
  `MAX_ERRORS` bad events 1008 or 1007. Authorization is the router's job: a bearer token is
  ignored here.

It must never let one client's input reach another session, trust an event's size or
content, or block the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from stt_pod.session import EndEvent, Session
from stt_pod.stream import FinalEvent, SpeechWatch
from stt_pod.words import Word, join
from voxfleet import protocol as p
from voxfleet.protocol import CloseCode, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from stt_pod.server import PodServer

log = logging.getLogger(__name__)

PROTOCOL = "realtime"
"""The session's protocol, as metrics label it."""

PATH = "/v1/realtime"
"""Where OpenAI's SDKs connect (`{base}/realtime`, with `?intent=transcription` or `?model=...`)."""

DEFAULT_RATE = 24_000
"""OpenAI's input rate for `audio/pcm` and `pcm16`."""

PCM_FORMATS = ("audio/pcm", "pcm16")
OTHER_FORMATS = ("audio/pcmu", "audio/pcma", "g711_ulaw", "g711_alaw")
LOGPROBS = "item.input_audio_transcription.logprobs"
TURN_DETECTION = ("server_vad", "semantic_vad")
MAX_SILENCE_MS = 10_000
MAX_PADDING_MS = 2_000
MAX_ERRORS = 100
"""Bad events one connection may send before it is closed (with the last one's close code)."""

SLICE_SECONDS = 0.1
"""Appended audio goes into the session in slices this long, so every VAD turn is seen."""

COMMIT_EMPTY = "input_audio_buffer_commit_empty"
"""OpenAI's error code for a commit with no audio since the last one."""


# --- the configuration, sans I/O -------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """A session's effective configuration: what session.created / updated report."""

    model: str
    rate: int = DEFAULT_RATE
    language: str | None = None
    prompt: str = ""
    turn_detection: str | None = "server_vad"  # None: the client commits; no speech events
    threshold: float = 0.35
    silence_ms: int = 500
    padding_ms: int = 200
    include: tuple[str, ...] = ()

    @property
    def logprobs(self) -> bool:
        return LOGPROBS in self.include

    def locked(self) -> tuple:
        """What the pod session is built from: fixed once audio has come."""
        return self.rate, self.language, self.prompt, self.threshold, self.silence_ms, self.padding_ms

    def stream_options(self) -> dict[str, Any]:
        """The session's StreamConfig fields this configuration sets."""
        return {"vad_threshold": self.threshold, "final_silence": self.silence_ms / 1000,
                "speech_pad": self.padding_ms / 1000}

    def start(self) -> p.Start:
        return p.Start(p.AudioFormat(self.rate, "pcm16", 1), self.language, prompt=self.prompt)


def default_config(settings) -> Config:
    """Turn detection defaults to the pod's own VAD settings, not OpenAI's numbers."""
    return Config(settings.model, threshold=settings.vad_threshold, silence_ms=settings.final_silence_ms,
                  padding_ms=settings.speech_pad_ms)


def _bad(message: str, close_code: int = CloseCode.POLICY, code: str = ErrorCode.BAD_MESSAGE) -> ProtocolError:
    return ProtocolError(code, message, close_code)


def _get(obj: dict, key: str, kind: type | tuple, what: str) -> Any:
    value = obj[key]
    if value is not None and (not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool))):
        raise _bad(f"'{what}' has the wrong type")
    return value


def _format(value: Any, config: Config) -> Config:
    if value is None:
        return config
    kind, rate = (value, None) if isinstance(value, str) else (None, None)
    if isinstance(value, dict):
        kind, rate = value.get("type", "audio/pcm"), value.get("rate")
    elif not isinstance(value, str):
        raise _bad("'format' must be an object or a string")
    if kind in OTHER_FORMATS:
        raise _bad(f"audio format {kind!r} is not served here; send 16-bit PCM ('audio/pcm')",
                   CloseCode.UNSUPPORTED, ErrorCode.UNSUPPORTED_AUDIO)
    if kind not in PCM_FORMATS:
        raise _bad(f"audio format {kind!r} is not one of {', '.join(PCM_FORMATS)}", CloseCode.UNSUPPORTED,
                   ErrorCode.UNSUPPORTED_AUDIO)
    if rate is None:
        return replace(config, rate=DEFAULT_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool) or not p.MIN_SAMPLE_RATE <= rate <= p.MAX_SAMPLE_RATE:
        raise _bad(f"rate {rate!r} outside {p.MIN_SAMPLE_RATE}..{p.MAX_SAMPLE_RATE}", CloseCode.UNSUPPORTED,
                   ErrorCode.UNSUPPORTED_AUDIO)
    return replace(config, rate=rate)


def _transcription(value: Any, config: Config) -> Config:
    if value is None:
        return config
    if not isinstance(value, dict):
        raise _bad("'transcription' must be an object or null")
    if "language" in value:
        language = _get(value, "language", str, "language") or None
        if language is not None and len(language) > p.MAX_LANGUAGE_CHARS:
            raise _bad(f"'language' is longer than {p.MAX_LANGUAGE_CHARS} characters")
        config = replace(config, language=language)
    if "prompt" in value or "keywords" in value:
        prompt = _get(value, "prompt", str, "prompt") if "prompt" in value else None
        keywords = _get(value, "keywords", list, "keywords") if "keywords" in value else None
        if keywords and not all(isinstance(k, str) for k in keywords):
            raise _bad("'keywords' must be strings")
        text = " ".join(x.strip() for x in [prompt or "", *(keywords or [])] if x.strip())
        if len(text) > p.MAX_PROMPT_CHARS:
            raise _bad(f"'prompt' and 'keywords' exceed {p.MAX_PROMPT_CHARS} characters")
        config = replace(config, prompt=text)
    return config


def _turn_detection(value: Any, config: Config) -> Config:
    if value is None:
        return replace(config, turn_detection=None)
    if not isinstance(value, dict):
        raise _bad("'turn_detection' must be an object or null")
    kind = value.get("type", "server_vad")
    if kind not in TURN_DETECTION:
        raise _bad(f"turn_detection type {kind!r} is not one of {', '.join(TURN_DETECTION)}")
    config = replace(config, turn_detection=kind)
    if value.get("threshold") is not None:
        threshold = _get(value, "threshold", (int, float), "threshold")
        if not 0 < threshold < 1:
            raise _bad("'threshold' must lie between 0 and 1")
        config = replace(config, threshold=float(threshold))
    for key, bound, name in (("silence_duration_ms", MAX_SILENCE_MS, "silence_ms"),
                             ("prefix_padding_ms", MAX_PADDING_MS, "padding_ms")):
        if value.get(key) is not None:
            ms = _get(value, key, int, key)
            if not 0 <= ms <= bound:
                raise _bad(f"'{key}' must lie in 0..{bound}")
            config = replace(config, **{name: ms})
    return config


def _include(value: Any, config: Config) -> Config:
    if value is None:
        return replace(config, include=())
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _bad("'include' must be a list of strings")
    unknown = [x for x in value if x != LOGPROBS]
    if unknown:
        raise _bad(f"'include' values {unknown} are not served here (only {LOGPROBS!r})")
    return replace(config, include=tuple(dict.fromkeys(value)))


def parse_update(event: dict, config: Config) -> Config:
    """The configuration after a session.update / transcription_session.update; ProtocolError if unservable.

    Both shapes are read: the GA one (`session.audio.input.{format, transcription,
    turn_detection}`) and the beta one (`session.input_audio_format`,
    `input_audio_transcription`, `turn_detection`). Fields not present are left as they were.
    """
    session = event.get("session")
    if not isinstance(session, dict):
        raise _bad("'session' must be an object")
    if session.get("type", "transcription") != "transcription":
        raise _bad(f"this endpoint serves transcription sessions only, not {session.get('type')!r}; "
                   "connect with ?intent=transcription and send session.type 'transcription'")
    audio = session.get("audio")
    if audio is not None and not isinstance(audio, dict):
        raise _bad("'audio' must be an object")
    audio_input = (audio or {}).get("input") or {}
    if not isinstance(audio_input, dict):
        raise _bad("'audio.input' must be an object")
    for source, fmt, transcription, turn in ((audio_input, "format", "transcription", "turn_detection"),
                                              (session, "input_audio_format", "input_audio_transcription",
                                               "turn_detection")):
        if fmt in source:
            config = _format(source[fmt], config)
        if transcription in source:
            config = _transcription(source[transcription], config)
        if turn in source:
            config = _turn_detection(source[turn], config)
    if "include" in session:
        config = _include(session["include"], config)
    return config


def session_object(config: Config, session_id: str, beta: bool) -> dict[str, Any]:
    """The session as session.created / updated show it (GA), or the beta transcription session."""
    transcription = {"model": config.model, "language": config.language, "prompt": config.prompt}
    turn = None if config.turn_detection is None else {
        "type": config.turn_detection, "threshold": config.threshold, "prefix_padding_ms": config.padding_ms,
        "silence_duration_ms": config.silence_ms}
    if beta:
        return {"id": session_id, "object": "realtime.transcription_session", "modalities": ["text"],
                "input_audio_format": "pcm16", "input_audio_transcription": transcription, "turn_detection": turn,
                "input_audio_noise_reduction": None, "include": list(config.include)}
    return {"type": "transcription", "object": "realtime.transcription_session", "id": session_id,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": config.rate}, "transcription": transcription,
                                "noise_reduction": None, "turn_detection": turn}},
            "include": list(config.include)}


# --- server events, sans I/O ----------------------------------------------------------------


def event_id() -> str:
    return "event_" + uuid.uuid4().hex[:20]


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": event_id(), **fields}


def session_event(config: Config, session_id: str, beta: bool, updated: bool) -> dict[str, Any]:
    kind = ("transcription_session." if beta else "session.") + ("updated" if updated else "created")
    return server_event(kind, session=session_object(config, session_id, beta))


def error_event(exc: ProtocolError, client_event_id: str | None = None) -> dict[str, Any]:
    """OpenAI's error event; `code` is the voxfleet error code (docs/protocol.md)."""
    server_side = exc.code in (ErrorCode.INTERNAL, ErrorCode.FULL, ErrorCode.DRAINING)
    return server_event("error", error={"type": "server_error" if server_side else "invalid_request_error",
                                        "code": exc.code, "message": exc.message, "param": None,
                                        "event_id": client_event_id})


def logprobs(words: list[Word]) -> list[dict[str, Any]]:
    """One entry per word, from the decoder's word probability (a word stands for its tokens)."""
    return [{"token": w.text, "logprob": math.log(max(w.probability, 1e-12)), "bytes": list(w.text.encode())}
            for w in words if w.probability is not None]


@dataclass
class Item:
    id: str
    start: float  # session seconds where its audio begins
    end: float | None = None  # where its turn ended (None: still open)
    words_sent: int = 0  # partial words already sent as deltas
    announced: bool = False  # its `committed` event went out


@dataclass
class Items:
    """Turns VAD turns, commits, partials and finals into OpenAI's item events.

    Items are cut where the pod's VAD closes a turn (every final is one turn, or several
    merged) and where the client commits. With server VAD a turn's item is committed when
    it closes; without turn detection it is committed when its transcript is ready or at
    the client's next commit, whichever comes first. `committed` events go out in item order.
    """

    logprobs: bool = False
    new_id: Callable[[], str] = field(default=lambda: "item_" + uuid.uuid4().hex[:20])
    current: Item | None = None
    pending: deque = field(default_factory=deque)  # turns ended, awaiting their transcript (oldest first)
    previous_id: str | None = None  # the last item committed
    last_end: float = 0.0

    def _current(self, start: float | None = None) -> Item:
        if self.current is None:
            self.current = Item(self.new_id(), self.last_end if start is None else start)
        return self.current

    def _close(self, item: Item, at: float) -> None:
        """The item's turn ended at `at`: it waits for its transcript."""
        item.end = max(at, item.start)
        self.last_end = max(self.last_end, item.end)
        if self.current is item:
            self.current = None
        self.pending.append(item)

    def _announce(self, upto: Item | None = None) -> list[dict[str, Any]]:
        """`committed` for the waiting items not announced yet, oldest first, up to `upto`."""
        events = []
        for item in self.pending:
            if not item.announced:
                item.announced = True
                events.append(server_event("input_audio_buffer.committed", item_id=item.id,
                                           previous_item_id=self.previous_id))
                self.previous_id = item.id
            if item is upto:
                break
        return events

    def _completed(self, item: Item, words: list[Word]) -> list[dict[str, Any]]:
        """The oldest waiting item's transcript (announced first if it was not)."""
        events = self._announce(item)
        self.pending.remove(item)
        seconds = max(0.0, (item.end or item.start) - item.start)
        event = server_event("conversation.item.input_audio_transcription.completed", item_id=item.id,
                             content_index=0, transcript=join(words), usage={"type": "duration",
                                                                              "seconds": round(seconds, 3)})
        if self.logprobs:
            event["logprobs"] = logprobs(words)
        return events + [event]

    def speech_started(self, at: float) -> list[dict[str, Any]]:
        item = self._current(at)
        return [server_event("input_audio_buffer.speech_started", item_id=item.id, audio_start_ms=round(at * 1000))]

    def speech_stopped(self, at: float) -> list[dict[str, Any]]:
        """Server VAD closed the turn: its item is committed, its final will follow."""
        item = self._current()
        stopped = server_event("input_audio_buffer.speech_stopped", item_id=item.id, audio_end_ms=round(at * 1000))
        self._close(item, at)
        return [stopped] + self._announce(item)

    def turn_closed(self, at: float) -> None:
        """The VAD closed a turn without turn detection: its item waits, not yet committed."""
        self._close(self._current(), at)

    def commit(self, at: float, flushed: bool) -> list[dict[str, Any]]:
        """The client committed; `flushed`: open speech was closed now (its final will follow).

        The commit's item is the open one; with no open speech, the last turn not yet committed;
        with neither, a new item of no speech, completed at once (empty)."""
        if flushed or self.current is not None and self.current.words_sent:
            item = self._current()
            self._close(item, at)
            return self._announce(item)
        hidden = [i for i in self.pending if not i.announced]
        if hidden:
            return self._announce(hidden[-1])
        item = Item(self.new_id(), self.last_end)
        if self.current is not None:  # an open item with nothing said: it is this one
            item = self.current
        self._close(item, at)
        return self._completed(item, [])

    def partial(self, text: str) -> list[dict[str, Any]]:
        """A delta with the partial's words past those the open item already sent."""
        said = text.split()
        item = self._current()
        if len(said) <= item.words_sent:
            return []
        delta = " ".join(said[item.words_sent:])
        if item.words_sent:
            delta = " " + delta
        item.words_sent = len(said)
        return [server_event("conversation.item.input_audio_transcription.delta", item_id=item.id, content_index=0,
                             delta=delta)]

    def final(self, words: list[Word]) -> list[dict[str, Any]]:
        """A final's words, to the items whose turns they were spoken in (the open item if no turn ended)."""
        events: list[dict[str, Any]] = []
        words = list(words)
        while words:
            if not self.pending:  # a final of speech whose turn has not ended (a forced split, partial commits)
                self._close(self._current(min(self.last_end, words[0].start)), words[-1].end)
            item = self.pending[0]
            mine = words if len(self.pending) == 1 else [w for w in words if w.start < item.end]
            words = words[len(mine):]
            events += self._completed(item, mine)
        return events

    def end(self) -> list[dict[str, Any]]:
        """The session ends: every item still waiting is completed (empty)."""
        events: list[dict[str, Any]] = []
        while self.pending:
            events += self._completed(self.pending[0], [])
        return events


def decode_audio(event: dict) -> bytes:
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise _bad("'audio' must be a base64 string")
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("'audio' is not valid base64", CloseCode.INVALID_DATA, ErrorCode.BAD_FRAME) from None
    if len(data) % 2:
        raise _bad(f"{len(data)} bytes is not a whole number of 16-bit PCM samples", CloseCode.INVALID_DATA,
                   ErrorCode.BAD_FRAME)
    return data


def is_realtime_path(path: str) -> bool:
    return path.split("?")[0].rstrip("/") == PATH


def is_beta(request) -> bool:
    return "realtime=v1" in (request.headers.get("OpenAI-Beta") or "") if request is not None else False


# --- the connection -------------------------------------------------------------------------


class _Fatal(Exception):
    def __init__(self, error: ProtocolError):
        self.error = error


class Connection:
    """One client: its configuration, its pod session once audio comes, and the events to send."""

    def __init__(self, pod: "PodServer", ws: ServerConnection, beta: bool):
        self.pod, self.ws, self.beta = pod, ws, beta
        self.id = "sess_" + uuid.uuid4().hex[:24]
        self.config = default_config(pod.settings)
        self.items = Items()
        self.session: Session | None = None
        self.out: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.seq = 0
        self.errors = 0
        self.buffered = False  # audio appended since the last commit
        self.speech: SpeechWatch | None = None  # the session's speech edges, once it opens
        self.cursor = 0
        self.partial_version = 0
        self.close_with: tuple[int, str] | None = None
        self.event_id: str | None = None  # the client event being handled, for its error

    def emit(self, events: list[dict[str, Any]]) -> None:
        self.out += events
        self.wake.set()

    # --- client events

    def handle(self, message: str | bytes) -> None:
        """Apply one client event; ProtocolError: a bad one (the session goes on), _Fatal: the end."""
        if isinstance(message, bytes):
            raise _bad("send JSON text events; audio goes base64 in input_audio_buffer.append",
                       CloseCode.INVALID_DATA, ErrorCode.BAD_FRAME)
        event = p.decode_json(message)
        self.event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        kind = event.get("type")
        if kind in ("session.update", "transcription_session.update"):
            self.update(event, beta=kind.startswith("transcription_session"))
        elif kind == "input_audio_buffer.append":
            self.append(decode_audio(event))
        elif kind == "input_audio_buffer.commit":
            self.commit()
        elif kind == "input_audio_buffer.clear":
            self.buffered = False
            self.emit([server_event("input_audio_buffer.cleared")])
        else:
            raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"event type {kind!r} is not served here "
                                "(a transcription session takes session.update and input_audio_buffer.*)")

    def update(self, event: dict, beta: bool) -> None:
        config = parse_update(event, self.config)
        if config.language != self.config.language and not self.pod.engine.transcribes(config.language):
            raise ProtocolError(ErrorCode.UNSUPPORTED_LANGUAGE, f"this pod transcribes "
                                f"{self.pod.engine.config.language!r} only; it cannot transcribe {config.language!r}",
                                CloseCode.UNSUPPORTED)
        if self.session is not None and config.locked() != self.config.locked():
            raise _bad("the input format, language, prompt and VAD settings cannot change once audio has come; "
                       "open a new session")
        self.config = config
        self.items.logprobs = config.logprobs
        self.emit([session_event(config, self.id, beta, updated=True)])

    def open(self) -> Session:
        if self.session is None:
            try:
                session = self.pod.open_session(self.config.start(), PROTOCOL, **self.config.stream_options())
            except ProtocolError as exc:
                raise _Fatal(exc) from None
            session.changed = self.wake  # one signal wakes the writer: the session's results and the reader's events
            session.connected = True
            self.session = session
            self.speech = SpeechWatch(session.stream)
            self.cursor = session.outbox_base
        return self.session

    def append(self, data: bytes) -> None:
        if not data:
            return
        session = self.open()
        step = int(self.config.rate * SLICE_SECONDS) * 2
        for i in range(0, len(data), step):
            session.accept_frame(self.seq, data[i:i + step])
            self.seq += 1
            self.buffered = True
            self.watch_speech()
        limit = self.pod.settings.max_session_seconds
        if session.audio_seconds > limit:
            raise _Fatal(ProtocolError(ErrorCode.SESSION_TOO_LONG, f"session exceeds {limit:g} s of audio"))

    def watch_speech(self) -> None:
        """Turn the session's VAD into speech events (server VAD) and item boundaries."""
        self.collect()  # partials before a turn ends belong to the item it ends
        for edge, at in self.speech.poll():
            if self.config.turn_detection is None:
                if edge == "stopped":
                    self.items.turn_closed(at)
            elif edge == "stopped":
                self.emit(self.items.speech_stopped(at))
                self.buffered = False
            elif at is None:  # closed before it was reported: it began where the last item ended
                self.emit(self.items.speech_started(self.items.last_end))
            else:
                self.emit(self.items.speech_started(max(at - self.config.padding_ms / 1000, self.items.last_end)))

    def commit(self) -> None:
        if not self.buffered or self.session is None:
            raise ProtocolError(COMMIT_EMPTY, "the input audio buffer is empty: nothing was appended since the last "
                                "commit")
        self.watch_speech()
        flushed = self.session.flush()
        self.speech.skip()
        self.buffered = False
        self.emit(self.items.commit(self.session.stream.total / p.MODEL_SAMPLE_RATE, flushed))

    # --- session results

    def collect(self) -> None:
        """The session's new finals, partial and end, as events."""
        session = self.session
        if session is None:
            return
        for event in session.events_from(self.cursor):
            self.cursor += 1
            if isinstance(event, FinalEvent):
                self.emit(self.items.final(list(event.words)))
            elif isinstance(event, EndEvent):
                self.emit(self.items.end())
                if event.error is not None:
                    self.emit([error_event(event.error)])
                self.close_with = (event.close_code, event.error.code if event.error else "end of session")
        if session.partial_version != self.partial_version:
            self.partial_version = session.partial_version
            if session.partial is not None and session.partial.text:
                self.emit(self.items.partial(session.partial.text))

    def fail(self, exc: ProtocolError) -> None:
        """End the connection for cause: the accepted audio still becomes transcripts, then the error."""
        log.info("realtime %s: %s: %s", self.id, exc.code, exc.message)
        self.pod.metrics.refusals.labels(exc.code).inc()
        if self.session is not None:
            self.session.finish(exc.close_code, exc)
        else:
            self.emit([error_event(exc)])
            self.close_with = (exc.close_code, exc.code)
        self.wake.set()


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


async def serve_realtime(pod: "PodServer", ws: ServerConnection) -> None:
    conn = Connection(pod, ws, is_beta(ws.request))
    try:
        pod.admit()
    except ProtocolError as exc:
        pod.metrics.refusals.labels(exc.code).inc()
        log.info("realtime client refused: %s: %s", exc.code, exc.message)
        try:
            await ws.send(encode(error_event(exc)))
            await ws.close(exc.close_code, exc.code)
        except ConnectionClosed:
            pass
        return
    try:
        await ws.send(encode(session_event(conn.config, conn.id, conn.beta, updated=False)))
        await _serve(conn)
    except ConnectionClosed:
        _lost(conn)
    except Exception:
        log.exception("realtime %s: connection failed", conn.id)
        _lost(conn)
        try:
            await ws.send(encode(error_event(ProtocolError(ErrorCode.INTERNAL, "internal error"))))
            await ws.close(CloseCode.INTERNAL, ErrorCode.INTERNAL)
        except ConnectionClosed:
            pass


async def _serve(conn: Connection) -> None:
    writer = asyncio.create_task(_write(conn))
    reader = asyncio.create_task(_read(conn))
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    if writer in done and not writer.cancelled() and writer.exception() is None:
        if conn.session is not None:
            conn.pod.release(conn.session)
        code, reason = conn.close_with or (CloseCode.NORMAL, "end of session")
        await conn.ws.close(code, reason)
        return
    for task in done:
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed):
            raise exc
    _lost(conn)


def _lost(conn: Connection) -> None:
    """The client went away (OpenAI's clients end a session by closing): no resume, the slot is freed."""
    session = conn.session
    if session is not None and session.id in conn.pod.sessions and session.connected:
        session.connected = False
        conn.pod.detach(session, resumable=False)


async def _read(conn: Connection) -> None:
    settings = conn.pod.settings
    while True:
        try:
            message = await asyncio.wait_for(conn.ws.recv(), settings.idle_timeout_seconds)
        except asyncio.TimeoutError:
            conn.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no event for {settings.idle_timeout_seconds:g} s"))
            return await _wait_forever()
        conn.event_id = None
        try:
            conn.handle(message)
        except _Fatal as fatal:
            conn.fail(fatal.error)
            return await _wait_forever()
        except ProtocolError as exc:
            conn.errors += 1
            if conn.errors >= MAX_ERRORS:
                conn.fail(ProtocolError(exc.code, f"{MAX_ERRORS} bad events; the last: {exc.message}", exc.close_code))
                return await _wait_forever()
            conn.emit([error_event(exc, conn.event_id)])
        if conn.session is not None:
            await conn.session.wait_for_backlog(settings.max_backlog_seconds)


async def _wait_forever() -> None:
    """The reader's work is done; it stays until the writer closes the socket."""
    await asyncio.Event().wait()


async def _write(conn: Connection) -> None:
    while True:
        conn.wake.clear()
        conn.collect()
        out, conn.out = conn.out, []
        for event in out:
            await conn.ws.send(encode(event))
        if conn.close_with is not None and not conn.out:
            return
        await conn.wake.wait()


__all__ = ["serve_realtime", "is_realtime_path", "parse_update", "Items", "Config", "PROTOCOL"]
