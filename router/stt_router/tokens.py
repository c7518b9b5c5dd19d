"""Router resume tokens: everything a replica needs to find a session again.

Replicas share no store, so the token carries the session's whole pinning:
which pod holds it (name and address), that pod's own resume token, and how
the pod's numbering maps to the client's after failovers (frame and segment
bases, time offset), plus what a new pod would need to continue it (audio
format, language, priority) and whose key opened it. It is signed with
`voxfleet.tokens.TokenSigner` (HMAC-SHA256, key ids, rotation: the first
secret signs, every listed secret verifies); the pinning travels in the
signed `pod` claim as compact JSON. Forged, altered and expired tokens raise
`InvalidToken`. Nothing in it is secret from its holder; it is tamper-proof,
not confidential (the pod token inside is itself signed by the pod).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from voxfleet import protocol as p
from voxfleet.tokens import InvalidToken, TokenSigner

__all__ = ["Pin", "RouterTokens", "InvalidToken", "signer_for"]


@dataclass(frozen=True)
class Pin:
    """A session's pinning to one pod, and the client's view of that pod's numbering."""

    session_id: str  # the router's session id (what the client sees)
    pod: str  # pod name (StatefulSet name, or the URL of a static pod)
    url: str  # pod address when the token was issued
    pod_token: str  # the pod's own resume token for its session
    seq_base: int = 0  # client frame seq = pod frame seq + seq_base
    seg_base: int = 0  # client segment id = pod segment id + seg_base
    time_offset: float = 0.0  # client time = pod time + time_offset
    sample_rate: int = p.MODEL_SAMPLE_RATE
    encoding: str = "pcm16"
    channels: int = 1
    language: str | None = "en"
    priority: str = "normal"
    partials: bool = True
    prompt: str = ""  # the session's start options, so a failover opens the same session elsewhere
    word_timestamps: bool = False
    principal: str = ""  # API key name that opened the session
    failovers: int = 0
    protocol: str = "native"

    def start(self) -> p.Start:
        return p.Start(p.AudioFormat(self.sample_rate, self.encoding, self.channels), self.language, self.priority,
                       self.partials, self.prompt, self.word_timestamps)

    @classmethod
    def for_start(cls, start: p.Start, **fields) -> "Pin":
        return cls(sample_rate=start.audio.sample_rate, encoding=start.audio.encoding, channels=start.audio.channels,
                   language=start.language, priority=start.priority, partials=start.partials, prompt=start.prompt,
                   word_timestamps=start.word_timestamps, **fields)


@dataclass(frozen=True)
class VerifiedPin:
    pin: Pin
    expires: float
    key_id: str


_FIELDS = {f.name: f for f in dataclasses.fields(Pin)}


def signer_for(secrets: list[str]) -> TokenSigner:
    """A signer for configured secrets (first signs, all verify); none: random per process."""
    if not secrets:
        return TokenSigner()
    return TokenSigner({hashlib.sha256(s.encode()).hexdigest()[:8]: s.encode() for s in secrets})


class RouterTokens:
    def __init__(self, signer: TokenSigner, ttl: float):
        self.signer = signer
        self.ttl = ttl

    def issue(self, pin: Pin, now: float | None = None) -> str:
        body = {k: v for k, v in dataclasses.asdict(pin).items() if k != "session_id" and v != _FIELDS[k].default}
        return self.signer.sign(pin.session_id, json.dumps(body, separators=(",", ":")), self.ttl, now)

    def verify(self, token: str, now: float | None = None) -> VerifiedPin:
        claims = self.signer.verify(token, now)
        try:
            body = json.loads(claims.pod)
            if not isinstance(body, dict) or not set(body) <= set(_FIELDS):
                raise TypeError("unexpected claims")
            pin = Pin(session_id=claims.session_id, **body)
            if not (isinstance(pin.pod, str) and isinstance(pin.url, str) and isinstance(pin.pod_token, str)
                    and all(isinstance(getattr(pin, k), int) for k in ("seq_base", "seg_base", "failovers"))):
                raise TypeError("bad claim types")
        except (ValueError, TypeError):
            raise InvalidToken("token was not issued by a router") from None
        return VerifiedPin(pin, claims.expires, claims.key_id)
