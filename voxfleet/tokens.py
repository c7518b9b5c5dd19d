"""Signed session tokens: reconnect to a session without any shared store.

A token names a session, the pod that holds it and when it expires, signed
with HMAC-SHA256. Several secrets may verify (rotation: sign with the first,
accept any), each named by a key id so verification needs no trial and error.
Forged, altered and expired tokens all fail with `InvalidToken`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class SessionClaims:
    session_id: str
    pod: str
    expires: float
    key_id: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, secrets_by_id: dict[str, bytes] | None = None):
        """`secrets_by_id`: key id -> secret; the first signs, all verify."""
        self._secrets = dict({"k0": secrets.token_bytes(32)} if secrets_by_id is None else secrets_by_id)
        if not self._secrets:
            raise ValueError("at least one secret is needed")
        self._signing_id = next(iter(self._secrets))

    @classmethod
    def from_secret(cls, secret: str) -> "TokenSigner":
        """One secret from configuration; empty means a random per-process secret."""
        if not secret:
            return cls()
        return cls({hashlib.sha256(secret.encode()).hexdigest()[:8]: secret.encode()})

    def sign(self, session_id: str, pod: str, ttl: float, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims = {"sid": session_id, "pod": pod, "exp": round(now + ttl, 3), "kid": self._signing_id}
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return body + "." + self._mac(self._signing_id, body)

    def verify(self, token: str, now: float | None = None) -> SessionClaims:
        try:
            body, mac = token.split(".")
            claims = json.loads(_unb64(body))
            kid = claims["kid"]
        except (ValueError, KeyError, TypeError):
            raise InvalidToken("malformed token") from None
        if not isinstance(kid, str) or kid not in self._secrets or not hmac.compare_digest(
            mac.encode("utf-8", "replace"), self._mac(kid, body).encode()
        ):
            raise InvalidToken("token signature does not verify")
        try:
            parsed = SessionClaims(str(claims["sid"]), str(claims["pod"]), float(claims["exp"]), kid)
        except (KeyError, TypeError, ValueError):
            raise InvalidToken("malformed token claims") from None
        if parsed.expires < (time.time() if now is None else now):
            raise InvalidToken("token expired")
        return parsed

    def _mac(self, kid: str, body: str) -> str:
        return _b64(hmac.new(self._secrets[kid], body.encode(), hashlib.sha256).digest())
