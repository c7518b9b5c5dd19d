"""Who may open sessions, how many at once, and at which priority (pure policy).

Keys are stored hashed (SHA-256 of the key; keys are long random strings, so
a plain hash is enough and a leaked file gives no key away), one per line:

    # name       hash                                          max  priority
    acme         sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b...  10  high
    trial        sha256:60303ae22b998861bce3b28f33eec1be758a213c...   1  low

`max` is the most concurrent sessions of that key on one router replica (0: no
limit) and `priority` the highest priority class its sessions may ask for (a
client asks in its `start`; it gets the lower of the two). A Kubernetes
Secret mounted as a folder works too: every file in it is read.

A presented key is hashed and compared with every stored hash in constant
time, whatever matches. There is no implicit open door: without keys, only
an explicit anonymous mode (`--anonymous`) lets clients in. This module reads
no sockets; `presented_key` takes the request's headers and path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

PRIORITY_ORDER = ("high", "normal", "low")
HASH_PREFIX = "sha256:"
ANONYMOUS = "anonymous"
"""The principal of clients without a key (with --anonymous); no key may have this name."""


class AuthError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Principal:
    """Who a session belongs to, for limits, priority and logs."""

    name: str
    max_sessions: int = 0  # 0: no limit
    priority: str = "normal"  # highest class it may use
    anonymous: bool = False


@dataclass(frozen=True)
class KeyRule:
    principal: Principal
    digest: bytes


def hash_key(key: str) -> str:
    """What goes in the keys file for `key`."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str, source: str = "keys") -> list[KeyRule]:
    rules: list[KeyRule] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{source}:{number}"
        if not 2 <= len(fields) <= 4:
            raise ValueError(f"{where}: expected 'name sha256:HEX [max_sessions] [priority]'")
        name, digest = fields[0], fields[1]
        if not digest.startswith(HASH_PREFIX) or len(digest) != len(HASH_PREFIX) + 64:
            raise ValueError(f"{where}: the key must be stored as sha256:<64 hex digits>, never in clear")
        try:
            raw_digest = bytes.fromhex(digest[len(HASH_PREFIX):])
        except ValueError:
            raise ValueError(f"{where}: {digest!r} is not hexadecimal") from None
        max_sessions = 0
        if len(fields) >= 3:
            if not fields[2].isdigit():
                raise ValueError(f"{where}: max_sessions {fields[2]!r} is not a whole number")
            max_sessions = int(fields[2])
        priority = fields[3] if len(fields) == 4 else "normal"
        if priority not in PRIORITY_ORDER:
            raise ValueError(f"{where}: priority {priority!r} is not one of {', '.join(PRIORITY_ORDER)}")
        if name == ANONYMOUS:
            # Sessions, limits and resume tokens belong to a principal by name: a key called this would
            # be the clients without a key, and could take over their sessions.
            raise ValueError(f"{where}: {ANONYMOUS!r} is reserved for clients without a key; name the key otherwise")
        if name in names:
            raise ValueError(f"{where}: key name {name!r} appears twice")
        names.add(name)
        rules.append(KeyRule(Principal(name, max_sessions, priority), raw_digest))
    return rules


def read_keys(path: str | os.PathLike) -> list[KeyRule]:
    """A keys file, or a folder (Secret mount) whose every visible file is one."""
    p = Path(path)
    if p.is_dir():
        rules: list[KeyRule] = []
        for child in sorted(p.iterdir()):
            if child.name.startswith(".") or not child.is_file():
                continue  # Secret mounts hold ..data links beside the files
            rules += parse_keys(child.read_text(), str(child))
        seen = [r.principal.name for r in rules]
        dupes = {n for n in seen if seen.count(n) > 1}
        if dupes:
            raise ValueError(f"{p}: key names appear twice: {', '.join(sorted(dupes))}")
        return rules
    return parse_keys(p.read_text(), str(p))


class ApiKeys:
    def __init__(self, rules: list[KeyRule], anonymous: Principal | None = None):
        """`anonymous`: the principal of clients without a key; None refuses them."""
        self._rules = list(rules)
        self._anonymous = anonymous

    @property
    def anonymous_allowed(self) -> bool:
        return self._anonymous is not None

    def authenticate(self, presented: str | None) -> Principal:
        """The principal of a presented key; raises AuthError for a missing or wrong one."""
        if not presented:
            if self._anonymous is None:
                raise AuthError("missing_api_key", "an API key is required (Authorization: Bearer KEY)")
            return self._anonymous
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        for rule in self._rules:  # no early exit: the time does not say which rule matched
            if hmac.compare_digest(digest, rule.digest) and found is None:
                found = rule.principal
        if found is None:
            raise AuthError("invalid_api_key", "that API key is not valid")
        return found


def presented_key(headers: Mapping[str, str], path: str) -> str | None:
    """The key from `Authorization: Bearer`, `X-API-Key`, or `?api_key=` (browsers cannot set headers)."""
    auth = headers.get("Authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    if headers.get("X-API-Key"):
        return headers["X-API-Key"].strip() or None
    values = parse_qs(urlsplit(path).query).get("api_key")
    return values[0] if values else None


def effective_priority(requested: str, allowed: str) -> str:
    """The lower of what the client asks and what its key allows."""
    return PRIORITY_ORDER[max(PRIORITY_ORDER.index(requested), PRIORITY_ORDER.index(allowed))]


class KeyLimits:
    """Concurrent sessions per principal on this replica."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def acquire(self, principal: Principal) -> bool:
        n = self._counts.get(principal.name, 0)
        if principal.max_sessions and n >= principal.max_sessions:
            return False
        self._counts[principal.name] = n + 1
        return True

    def release(self, principal: Principal) -> None:
        n = self._counts.get(principal.name, 0) - 1
        if n > 0:
            self._counts[principal.name] = n
        else:
            self._counts.pop(principal.name, None)

    def count(self, principal: Principal) -> int:
        return self._counts.get(principal.name, 0)
