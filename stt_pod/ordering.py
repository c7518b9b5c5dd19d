"""Applies a session's audio frames in sequence order (pure logic).

Frames carry a sequence number so that a replay after failover or resume can
be deduplicated and a client bug shows up as a reported gap instead of
silently shifted audio. Out-of-order frames wait in a bounded hold; when the
hold is full, the missing frames are declared lost and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Ordered:
    """What one pushed frame released."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)  # in order, ready to apply
    duplicate: bool = False
    skipped: list[tuple[int, int]] = field(default_factory=list)  # [first, last] seq never received


class FrameOrderer:
    def __init__(self, max_held: int = 64, next_seq: int = 0):
        self.max_held = max(0, max_held)
        self.next_seq = next_seq
        self._held: dict[int, bytes] = {}

    @property
    def last_applied(self) -> int:
        return self.next_seq - 1

    def push(self, seq: int, payload: bytes) -> Ordered:
        out = Ordered()
        if seq < self.next_seq or seq in self._held:
            out.duplicate = True
            return out
        self._held[seq] = payload
        self._release(out)
        while len(self._held) > self.max_held:
            self._skip_to(min(self._held), out)
            self._release(out)
        return out

    def flush(self) -> Ordered:
        """End of audio: apply everything held, skipping what never came."""
        out = Ordered()
        while self._held:
            self._skip_to(min(self._held), out)
            self._release(out)
        return out

    def _release(self, out: Ordered) -> None:
        while self.next_seq in self._held:
            out.frames.append((self.next_seq, self._held.pop(self.next_seq)))
            self.next_seq += 1

    def _skip_to(self, seq: int, out: Ordered) -> None:
        if seq > self.next_seq:
            out.skipped.append((self.next_seq, seq - 1))
            self.next_seq = seq
