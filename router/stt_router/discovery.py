"""Where the pods are: the targets a pool is built from (pure).

A target is a pod's identity, address, ordinal and what the platform says of
it (listed as ready; terminating). A static list gives ordinals by list order;
Kubernetes gives them by StatefulSet pod name (see endpointslices.py). What a
pod says of itself (/status) is the pool's business, not discovery's.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    ordinal: int
    ready: bool = True  # the platform lists it as ready
    terminating: bool = False  # the platform is stopping it: no new sessions


def static_targets(urls: list[str]) -> list[Target]:
    """`--pods ws://a,ws://b`: each URL is its own name; list order is the ordinal."""
    seen: set[str] = set()
    targets = []
    for i, url in enumerate(urls):
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.port is None:
            raise ValueError(f"pod address {url!r} must look like ws://HOST:PORT")
        if url in seen:
            raise ValueError(f"pod address {url!r} is listed twice")
        seen.add(url)
        targets.append(Target(url, url, i))
    return targets


def status_url(ws_url: str, path: str = "/status") -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}{path}"
