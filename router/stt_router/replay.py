"""One relayed session's bookkeeping, sans I/O: the replay tail and the numbering.

A session lives on a sequence of *legs*, one per pod session: the first pod,
then one more after each failover. Every leg numbers its frames, segments and
times from zero, so the router translates between the client's numbering
(continuous over the whole session) and the current leg's:

    client frame seq  = pod seq        + seq_base
    client segment id = pod segment id + seg_base
    client time       = pod time       + time_offset

The *tail* keeps, in order, every frame the pod has not yet committed (its
audio is not yet covered by finals the client received), bounded in seconds
and bytes so a stalled pod holds the client back instead of filling memory.
The commit point moves with the pod's `ack.committed_seq` and with every
final relayed (a final may arrive before the ack that vouches for it; a pod
that dies in between must not make its words repeat). When a pod dies, the
next leg replays the tail from just after the commit point, shifted by the
commit point's session time, and finals of the new leg that end before the
last relayed final are dropped: no word lost, no final repeated.

This module never touches a socket or a clock: the relay passes times in.
"""

from __future__ import annotations

import json
import re
import struct
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from voxfleet import protocol as p
from stt_router.tokens import Pin


HEADER = p.FRAME_HEADER.size
_SEQ = p.FRAME_HEADER

RECENT_FINALS = 32
"""Finals whose text a failover hands the new pod as context (it is cut to MAX_PROMPT_CHARS)."""

ACK = re.compile(r'\{"type":"ack","seq":-?\d+,"committed_seq":(-?\d+),"committed_seconds":(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\}')
"""A pod's `ack` exactly as voxfleet.protocol encodes it: read with a regex, not json.loads (one per frame).
Anything else (other spacing, key order or fields) takes the general JSON path."""


@dataclass(slots=True)
class TailFrame:
    seq: int  # client numbering
    data: bytes  # the frame as the client sent it: header (its seq) and audio
    seconds: float
    received: float  # when it arrived (relay latency)
    sent_once: bool = False

    @property
    def payload(self) -> memoryview:
        """The audio, without the header."""
        return memoryview(self.data)[HEADER:]


class ReplayTail:
    """Uncommitted frames in arrival order, bounded."""

    def __init__(self, max_seconds: float, max_bytes: int):
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.frames: deque[TailFrame] = deque()
        self.seconds = 0.0
        self.nbytes = 0
        self.start_time: float | None = 0.0  # session time where frames[0] starts; None: not known yet
        self.last_seq = -1  # highest seq ever appended
        self.full = False  # at its bound (one frame always fits, so a big frame cannot stall a session)

    def __len__(self) -> int:
        return len(self.frames)

    def _update_full(self) -> None:
        # an attribute, not a property: the relay reads it twice per frame
        self.full = bool(self.frames) and (self.seconds >= self.max_seconds - 1e-9 or self.nbytes >= self.max_bytes)

    def append(self, seq: int, payload: bytes, seconds: float, now: float) -> TailFrame:
        return self.append_data(seq, p.pack_frame(seq, payload), seconds, now)

    def append_data(self, seq: int, data: bytes, seconds: float, now: float) -> TailFrame:
        """Keep a whole client frame (header and audio, as received: no copy)."""
        frame = TailFrame(seq, data, seconds, now)
        self.frames.append(frame)
        self.seconds += seconds
        self.nbytes += len(data) - HEADER
        if seq > self.last_seq:
            self.last_seq = seq
        self._update_full()
        return frame

    def trim_through(self, seq: int) -> int:
        """Drop the frames up to `seq` (committed); returns how many."""
        n = 0
        frames = self.frames
        while frames and frames[0].seq <= seq:
            frame = frames.popleft()
            self.seconds -= frame.seconds
            self.nbytes -= len(frame.data) - HEADER
            if self.start_time is not None:
                self.start_time += frame.seconds
            n += 1
        if not frames:
            self.seconds, self.nbytes = 0.0, 0
        if n:
            self._update_full()
        return n

    def last_ending_by(self, t: float) -> int | None:
        """Highest seq whose audio ends at or before session time `t` (None: none, or times unknown)."""
        if self.start_time is None:
            return None
        end, found = self.start_time, None
        for frame in self.frames:
            end += frame.seconds
            if end > t + 1e-6:
                break
            found = frame.seq
        return found


@dataclass
class Leg:
    """The session on one pod."""

    pod: str
    url: str
    pod_token: str = ""
    seq_base: int = 0
    seg_base: int = 0
    time_offset: float = 0.0
    forward_from: int = 0  # client seq: frames below it are not sent to this pod (it has them or they are committed)
    cursor: int = 0  # index in the tail of the next frame to consider sending
    drop_finals_until: float | None = None  # a new leg's finals ending by then were already relayed
    trailer_sent: bool = False


@dataclass
class RelayState:
    """Everything the router knows about one native session."""

    pin: Pin
    tail: ReplayTail
    leg: Leg
    next_segment: int = 0  # client segment id of the next final
    last_final_end: float = 0.0  # client time where the last relayed final ends
    commit: int = -1  # client seq: frames up to here are covered by relayed finals
    committed_seconds: float = 0.0
    trailer: str | bytes | None = None  # what the client sent last ('end' or bad input), after all audio
    pending_end: dict | None = None  # the pod's 'end', relayed only if the pod ends the session for good
    pending_error: dict | None = None  # the same for its 'error' (a pod that fails may be failed over)
    pin_changed: bool = False  # the client should get a fresh token
    recent_finals: deque = field(default_factory=lambda: deque(maxlen=RECENT_FINALS))  # (end, text), client time
    _seconds_per_byte: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._seconds_per_byte = 1.0 / self.pin.start().audio.bytes_per_frame / self.pin.sample_rate

    def text_before_replay(self) -> str:
        """The final text the client has for audio before the replay: a new pod's decoding context."""
        return " ".join(text for end, text in self.recent_finals if end <= self.committed_seconds + 1e-6)[
            -p.MAX_PROMPT_CHARS:]

    @classmethod
    def new(cls, pin: Pin, max_seconds: float, max_bytes: int) -> "RelayState":
        leg = Leg(pin.pod, pin.url, pin.pod_token)
        return cls(pin, ReplayTail(max_seconds, max_bytes), leg)

    @classmethod
    def resumed(cls, pin: Pin, max_seconds: float, max_bytes: int, last_seq: int, last_segment_id: int,
                pod_next_seq: int) -> "RelayState":
        """A session picked up from a token: the client resends after `last_seq`; the pod has up to its next_seq."""
        tail = ReplayTail(max_seconds, max_bytes)
        tail.start_time = None  # learnt from the pod's first commit
        leg = Leg(pin.pod, pin.url, pin.pod_token, pin.seq_base, pin.seg_base, pin.time_offset,
                  forward_from=pod_next_seq + pin.seq_base)
        state = cls(pin, tail, leg, next_segment=max(last_segment_id + 1, pin.seg_base))
        state.commit = min(last_seq, pod_next_seq + pin.seq_base - 1)
        tail.last_seq = state.commit
        return state

    # --- client -> pod

    def seconds_of(self, payload_len: int) -> float:
        return payload_len * self._seconds_per_byte

    def accept_frame(self, seq: int, payload: bytes, now: float) -> bool:
        """Keep a client frame for sending and replay; False: an old or repeated one, dropped."""
        if seq <= self.tail.last_seq or seq <= self.commit:
            return False
        self.tail.append(seq, bytes(payload), self.seconds_of(len(payload)), now)
        return True

    def accept_message(self, data: bytes, now: float) -> TailFrame | None:
        """`accept_frame` for a binary message as received, kept without a copy; None: old or repeated.

        Raises ProtocolError for a frame without a sequence header (the pod answers it)."""
        try:
            seq = _SEQ.unpack_from(data)[0]
        except struct.error:
            p.unpack_frame(data)  # raises the protocol's own error
            raise
        tail = self.tail
        if seq <= tail.last_seq or seq <= self.commit:
            return None
        return tail.append_data(seq, data, (len(data) - HEADER) * self._seconds_per_byte, now)

    def next_to_send(self) -> TailFrame | None:
        """The next frame the current pod has not had, or None when it is up to date."""
        frames = self.tail.frames
        while self.leg.cursor < len(frames):
            frame = frames[self.leg.cursor]
            self.leg.cursor += 1
            if frame.seq >= self.leg.forward_from:
                return frame
        return None

    def pod_frame(self, frame: TailFrame) -> bytes:
        base = self.leg.seq_base
        if base == 0:
            return frame.data  # the pod numbers as the client does: the frame goes as it came
        return p.pack_frame(frame.seq - base, frame.payload)

    def trailer_due(self) -> bool:
        """The client's last message goes to the pod once every frame before it has."""
        return (self.trailer is not None and not self.leg.trailer_sent
                and self.leg.cursor >= len(self.tail.frames))

    # --- pod -> client

    def on_pod_message(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """Translate one pod message into what the client gets (maybe nothing)."""
        kind = msg.get("type")
        leg = self.leg
        if kind == "ack":
            return self._on_ack(msg)
        if kind == "final":
            start = float(msg["start"]) + leg.time_offset
            end = float(msg["end"]) + leg.time_offset
            if leg.drop_finals_until is not None and end <= leg.drop_finals_until + 1e-6:
                return []  # re-heard audio the previous pod had already finalised
            leg.drop_finals_until = None
            segment_id = self.next_segment
            self.next_segment += 1
            seg_base = segment_id - int(msg["segment_id"])
            if seg_base != leg.seg_base:
                leg.seg_base = seg_base
                self.pin_changed = True
            self.last_final_end = max(self.last_final_end, end)
            self.recent_finals.append((end, msg["text"]))
            words = msg.get("words")
            if isinstance(words, list):
                words = [(w["word"], float(w["start"]) + leg.time_offset, float(w["end"]) + leg.time_offset,
                          w.get("probability")) for w in words if isinstance(w, dict)]
            else:
                words = None
            out = [p.final(segment_id, msg["text"], start, end, words)]
            ack = self._advance(self.tail.last_ending_by(self.last_final_end), None)
            return out + ack
        if kind == "partial":
            return [p.partial(msg["text"], float(msg["start"]) + leg.time_offset, float(msg["end"]) + leg.time_offset)]
        if kind == "warning":
            out = dict(msg)
            for key in ("first", "last"):
                if isinstance(out.get(key), int):
                    out[key] += leg.seq_base
            return [out]
        if kind == "error":
            self.pending_error = dict(msg)
            return []
        if kind == "end":
            self.pending_end = p.end(self.next_segment, float(msg.get("audio_seconds", 0.0)) + leg.time_offset)
            return []
        if kind == "ready":
            return []  # one per leg, handled by the relay
        if kind == "flushed" and isinstance(msg.get("segments"), list):  # the pod's segment ids, as the client numbers them
            return [{**msg, "segments": [int(i) + leg.seg_base for i in msg["segments"] if isinstance(i, int)]}]
        if kind in ("speech_started", "speech_stopped") and isinstance(msg.get("at"), (int, float)):
            return [{**msg, "at": float(msg["at"]) + leg.time_offset}]  # session time, across pods
        return [msg]

    def pod_text(self, raw: str) -> Sequence[str]:
        """One text message of the pod, translated: what the client gets, encoded (maybe nothing).

        The pod's `ack` (one per frame or so) in its own encoding is read with a regex and the client's
        formatted directly, without a JSON round trip; anything else goes through `on_pod_message`.
        Raises ValueError for invalid JSON."""
        m = ACK.fullmatch(raw)
        if m is not None:
            leg = self.leg
            if self._move_commit(leg.seq_base + int(m[1]), float(m[2]) + leg.time_offset):
                return (ack_text(self.commit, max(self.committed_seconds, self.commit_time)),)
            return ()
        msg = json.loads(raw)
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        return [p.encode(out) for out in self.on_pod_message(msg)]

    def _on_ack(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        leg = self.leg
        pod_committed = int(msg.get("committed_seq", -1))
        seconds = float(msg.get("committed_seconds", 0.0)) + leg.time_offset
        seq = leg.seq_base + pod_committed  # -1 on a fresh leg maps to seq_base - 1: the replay point
        return self._advance(seq, seconds)

    def _advance(self, seq: int | None, seconds: float | None) -> list[dict[str, Any]]:
        """Move the commit point; an ack for the client when it moved."""
        if not self._move_commit(seq, seconds):
            return []
        return [p.ack(self.commit, self.commit, max(self.committed_seconds, self.commit_time))]

    def _move_commit(self, seq: int | None, seconds: float | None) -> bool:
        """Move the commit point (trim the tail); True when it moved."""
        if seconds is not None and seconds > self.committed_seconds:
            self.committed_seconds = seconds
        if seq is None or seq <= self.commit:
            return False
        self.commit = seq
        removed = self.tail.trim_through(seq)
        if removed:
            self.leg.cursor = max(0, self.leg.cursor - removed)
        if self.tail.start_time is None and seconds is not None:
            self.tail.start_time = seconds  # the pod's commit point: where the next frame starts, to a frame
        return True

    @property
    def commit_time(self) -> float:
        """Session time where replay after the commit point starts."""
        if self.tail.start_time is not None:
            return self.tail.start_time
        return max(self.committed_seconds, self.last_final_end)

    # --- failover

    def fail_over(self, pod: str, url: str) -> Leg:
        """Start the next leg on another pod: replay everything after the commit point."""
        self.pending_end = self.pending_error = None
        base = self.commit + 1
        self.leg = Leg(pod, url, "", seq_base=base, seg_base=self.next_segment, time_offset=self.commit_time,
                       forward_from=base, drop_finals_until=self.last_final_end)
        self.pin = replace(self.pin, failovers=self.pin.failovers + 1)
        return self.leg

    def leg_ready(self, pod_token: str) -> Pin:
        """The pod accepted the leg: the pinning the client's token should now carry."""
        self.leg.pod_token = pod_token
        self.pin_changed = False
        self.pin = replace(self.pin, pod=self.leg.pod, url=self.leg.url, pod_token=pod_token,
                           seq_base=self.leg.seq_base, seg_base=self.leg.seg_base, time_offset=round(self.leg.time_offset, 3))
        return self.pin

    def current_pin(self) -> Pin:
        self.pin_changed = False
        self.pin = replace(self.pin, seg_base=self.leg.seg_base)
        return self.pin


def ack_text(commit: int, seconds: float) -> str:
    """`p.encode(p.ack(commit, commit, seconds))`, formatted directly (the same text, byte for byte)."""
    return f'{{"type":"ack","seq":{commit},"committed_seq":{commit},"committed_seconds":{round(float(seconds), 3)!r}}}'
