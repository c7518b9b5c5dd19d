"""Reserved capacity: a share of the pool's session slots that only one priority class may take (pure policy).

`--reserve high=0.2` keeps 20 % of the pool's session slots (rounded up) for
`high` sessions, the class API keys give their key clients: a session of any
other class never takes the last of those slots, and slots that `high`
sessions do not use are not lent away, they stay free for them. A class may
take a slot when the free slots exceed what is still reserved, unused, for
the *other* classes; its own reserve is its own. The reserve is a share of
the pool's total slots (the capacity of the pods that take sessions now), so
it grows and shrinks with the pool. A class that uses more than its reserve
takes the rest from the shared slots like anyone else.

No sockets, no clock: the router passes the pool's total and free slots and
the slots each class holds (its own accounting), and asks `may_take`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

CLASSES = ("high", "normal", "low")
"""Classes that may reserve: a client's priority classes (stt_router.apikeys.PRIORITY_ORDER)."""


def reserved_slots(total: int, share: float) -> int:
    """Slots a share of `total` reserves: rounded up (a share above 0 of a non-empty pool keeps at least one)."""
    if total <= 0 or share <= 0:
        return 0
    return min(total, math.ceil(share * total - 1e-9))


def parse_reserve(text: str) -> dict[str, float]:
    """'high=0.2,normal=0.05' -> {'high': 0.2, 'normal': 0.05}; raises ValueError for a wrong one.

    Classes are the client priority classes, each at most once; every share is in [0, 1) and
    together they stay below 1 (something must be left for everyone else)."""
    shares: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"reserve {part!r}: expected CLASS=SHARE, e.g. high=0.2")
        if name not in CLASSES:
            raise ValueError(f"reserve {part!r}: {name!r} is not a priority class ({', '.join(CLASSES)})")
        if name in shares:
            raise ValueError(f"reserve: {name!r} appears twice")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"reserve {part!r}: {value.strip()!r} is not a number") from None
        if not 0 <= share < 1 or math.isnan(share):
            raise ValueError(f"reserve {part!r}: a share must be in [0, 1)")
        shares[name] = share
    check_shares(shares)
    return shares


def check_shares(shares: Mapping[str, float]) -> None:
    """ValueError unless every class is known, every share in [0, 1) and their sum below 1."""
    for name, share in shares.items():
        if name not in CLASSES:
            raise ValueError(f"reserve: {name!r} is not a priority class ({', '.join(CLASSES)})")
        if not 0 <= share < 1:
            raise ValueError(f"reserve: the share of {name} must be in [0, 1), not {share!r}")
    if sum(shares.values()) >= 1:
        raise ValueError("reserve: the shares must add up to less than 1")


def format_reserve(shares: Mapping[str, float]) -> str:
    """The setting's text for `shares` (inverse of parse_reserve); '' for none."""
    return ",".join(f"{name}={shares[name]:g}" for name in CLASSES if shares.get(name))


@dataclass(frozen=True)
class Reserve:
    """The reserve of each class, as shares of the pool's total session slots."""

    shares: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_shares(self.shares)

    @classmethod
    def parse(cls, text: str) -> "Reserve":
        return cls(parse_reserve(text))

    def __bool__(self) -> bool:
        return any(share > 0 for share in self.shares.values())

    def slots(self, total: int) -> dict[str, int]:
        """Slots reserved for each reserving class in a pool of `total` slots."""
        return {name: reserved_slots(total, share) for name, share in self.shares.items() if share > 0}

    def unused(self, total: int, in_use: Mapping[str, int]) -> dict[str, int]:
        """Reserved slots each class does not use now: held free for it."""
        return {name: max(0, n - max(0, in_use.get(name, 0))) for name, n in self.slots(total).items()}

    def available(self, cls: str, total: int, free: int, in_use: Mapping[str, int]) -> int:
        """Free slots a session of `cls` may take: the free ones less those still reserved for other classes."""
        return max(0, free - self.held_for(cls, total, in_use))

    def may_take(self, cls: str, total: int, free: int, in_use: Mapping[str, int]) -> bool:
        """Whether a session of `cls` may take a slot now."""
        return self.available(cls, total, free, in_use) > 0

    def held_for(self, cls: str, total: int, in_use: Mapping[str, int]) -> int:
        """Free slots kept from sessions of `cls` (reserved for other classes, unused)."""
        return sum(n for name, n in self.unused(total, in_use).items() if name != cls)
