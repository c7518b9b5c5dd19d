"""voxfleet.tokens: signed, expiring session tokens with key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from voxfleet.tokens import InvalidToken, SessionClaims, TokenSigner

NOW = 1_700_000_000.0
SECRET = b"s3cret-for-tests"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(claims, secret: bytes = SECRET) -> str:
    """A token with arbitrary claims, correctly signed with `secret`."""
    body = b64(json.dumps(claims).encode())
    return body + "." + b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner({"k1": SECRET})


def test_round_trip(signer):
    token = signer.sign("sess-1", "pod-3", ttl=30, now=NOW)
    assert signer.verify(token, now=NOW + 10) == SessionClaims("sess-1", "pod-3", NOW + 30, "k1")


def test_a_token_is_url_safe(signer):
    token = signer.sign("s/+=?&", "pod", ttl=30, now=NOW)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_another_signer_with_the_same_secret_verifies(signer):
    assert TokenSigner({"k1": SECRET}).verify(signer.sign("s", "p", 30, now=NOW), now=NOW).session_id == "s"


def test_from_secret_is_deterministic_across_processes():
    token = TokenSigner.from_secret("shared").sign("s", "p", 30, now=NOW)
    assert TokenSigner.from_secret("shared").verify(token, now=NOW).pod == "p"
    with pytest.raises(InvalidToken):
        TokenSigner.from_secret("other").verify(token, now=NOW)


def test_empty_secret_means_a_random_one():
    token = TokenSigner.from_secret("").sign("s", "p", 30, now=NOW)
    with pytest.raises(InvalidToken):
        TokenSigner.from_secret("").verify(token, now=NOW)



def test_no_secrets_at_all_is_refused():
    with pytest.raises(ValueError):
        TokenSigner({})


# --- forgery and expiry ----------------------------------------------------------


def test_altered_body_fails(signer):
    body, mac = signer.sign("sess-1", "pod-3", 30, now=NOW).split(".")
    claims = json.loads(unb64(body))
    claims["pod"] = "pod-4"  # steer the session elsewhere, keep the old signature
    with pytest.raises(InvalidToken):
        signer.verify(b64(json.dumps(claims, separators=(",", ":")).encode()) + "." + mac, now=NOW)


def test_extended_expiry_fails(signer):
    body, mac = signer.sign("s", "p", 30, now=NOW).split(".")
    claims = json.loads(unb64(body))
    claims["exp"] += 3600
    with pytest.raises(InvalidToken):
        signer.verify(b64(json.dumps(claims, separators=(",", ":")).encode()) + "." + mac, now=NOW + 60)


def test_altered_signature_fails(signer):
    body, mac = signer.sign("s", "p", 30, now=NOW).split(".")
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    with pytest.raises(InvalidToken):
        signer.verify(body + "." + flipped, now=NOW)


def test_truncated_signature_fails(signer):
    token = signer.sign("s", "p", 30, now=NOW)
    with pytest.raises(InvalidToken):
        signer.verify(token[:-2], now=NOW)


def test_wrong_secret_under_the_same_key_id_fails(signer):
    token = TokenSigner({"k1": b"another secret"}).sign("s", "p", 30, now=NOW)
    with pytest.raises(InvalidToken):
        signer.verify(token, now=NOW)


def test_unknown_key_id_fails(signer):
    with pytest.raises(InvalidToken):
        signer.verify(TokenSigner({"k9": SECRET}).sign("s", "p", 30, now=NOW), now=NOW)


def test_expired_token_fails(signer):
    token = signer.sign("s", "p", ttl=30, now=NOW)
    assert signer.verify(token, now=NOW + 29.9).session_id == "s"
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(token, now=NOW + 30.1)


def test_expiry_uses_the_wall_clock_when_now_is_not_given(signer):
    with pytest.raises(InvalidToken):
        signer.verify(signer.sign("s", "p", ttl=30, now=NOW))  # signed in 2023
    assert signer.verify(signer.sign("s", "p", ttl=30)).session_id == "s"


@pytest.mark.parametrize("token", [
    "", ".", "abc", "a.b.c", "!!!.x", "abc.", ".abc",
    b64(b"not json") + ".x",
    b64(b"[1, 2]") + ".x",
    b64(b'"kid"') + ".x",
    b64(b"7") + ".x",
    b64(b'{"sid": "s"}') + ".x",  # no key id
    b64(b"\xff\xfe\x00") + ".x",
])
def test_malformed_tokens_fail(signer, token):
    with pytest.raises(InvalidToken):
        signer.verify(token, now=NOW)


@pytest.mark.parametrize("claims", [
    {"kid": "k1", "pod": "p", "exp": NOW + 30},  # no session id
    {"kid": "k1", "sid": "s", "exp": NOW + 30},  # no pod
    {"kid": "k1", "sid": "s", "pod": "p"},  # no expiry
    {"kid": "k1", "sid": "s", "pod": "p", "exp": "soon"},
    {"kid": "k1", "sid": "s", "pod": "p", "exp": None},
])
def test_signed_but_incomplete_claims_fail(signer, claims):
    with pytest.raises(InvalidToken):
        signer.verify(forge(claims), now=NOW)



def test_a_non_ascii_signature_fails_as_invalid(signer):
    body = signer.sign("s", "p", 30, now=NOW).split(".")[0]
    with pytest.raises(InvalidToken):
        signer.verify(body + ".é", now=NOW)



@pytest.mark.parametrize("kid", [[], {}])
def test_an_unhashable_key_id_fails_as_invalid(signer, kid):
    with pytest.raises(InvalidToken):
        signer.verify(b64(json.dumps({"kid": kid}).encode()) + ".x", now=NOW)



def test_now_zero_is_a_time_not_missing(signer):
    # A fake clock that starts at 0 (as looptime's does) must be honoured.
    token = signer.sign("s", "p", ttl=30, now=0.0)
    assert signer.verify(token, now=10.0).expires == 30.0


# --- rotation --------------------------------------------------------------------


def test_rotation_accepts_tokens_of_the_old_key():
    old = TokenSigner({"old": b"old secret"})
    rotated = TokenSigner({"new": b"new secret", "old": b"old secret"})
    token = old.sign("s", "p", 30, now=NOW)
    assert rotated.verify(token, now=NOW) == SessionClaims("s", "p", NOW + 30, "old")


def test_rotation_signs_with_the_first_key():
    rotated = TokenSigner({"new": b"new secret", "old": b"old secret"})
    token = rotated.sign("s", "p", 30, now=NOW)
    assert rotated.verify(token, now=NOW).key_id == "new"
    assert TokenSigner({"new": b"new secret"}).verify(token, now=NOW).session_id == "s"
    with pytest.raises(InvalidToken):  # a pod still on the old key alone cannot take it
        TokenSigner({"old": b"old secret"}).verify(token, now=NOW)


def test_a_retired_key_no_longer_verifies():
    token = TokenSigner({"old": b"old secret"}).sign("s", "p", 30, now=NOW)
    with pytest.raises(InvalidToken):
        TokenSigner({"new": b"new secret"}).verify(token, now=NOW)
