"""Router resume tokens: the whole pinning, signed; forged, altered, expired and foreign tokens refused; rotation."""

from __future__ import annotations

import base64
import json

import pytest

from stt_router.tokens import InvalidToken, Pin, RouterTokens, signer_for
from voxfleet import protocol as p
from voxfleet.tokens import TokenSigner

PIN = Pin("sid-1", "voxfleet-pod-2", "ws://127.0.0.1:9002", "pod-token.abc", seq_base=47, seg_base=3,
          time_offset=4.7, sample_rate=8000, encoding="float32", channels=2, language=None, priority="high",
          partials=False, principal="acme", failovers=1)


def test_round_trip_carries_the_whole_pinning():
    tokens = RouterTokens(signer_for(["s1"]), ttl=60)
    verified = tokens.verify(tokens.issue(PIN, now=1000.0), now=1001.0)
    assert verified.pin == PIN
    assert verified.expires == 1060.0
    assert PIN.start() == p.Start(p.AudioFormat(8000, "float32", 2), None, "high", False)


def test_any_replica_with_the_shared_secret_verifies():
    a = RouterTokens(signer_for(["shared"]), 60)
    b = RouterTokens(signer_for(["shared"]), 60)
    assert b.verify(a.issue(PIN)).pin == PIN


def test_rotation_new_secret_signs_old_still_verifies():
    old = RouterTokens(signer_for(["old"]), 60)
    rotated = RouterTokens(signer_for(["new", "old"]), 60)
    token = old.issue(PIN)
    assert rotated.verify(token).pin == PIN
    fresh = rotated.issue(PIN)
    assert rotated.verify(fresh).key_id != rotated.verify(token).key_id
    with pytest.raises(InvalidToken):
        old.verify(fresh)  # the old-only replica does not know the new secret
    retired = RouterTokens(signer_for(["new"]), 60)
    with pytest.raises(InvalidToken):
        retired.verify(token)


def test_expired_tokens_are_refused():
    tokens = RouterTokens(signer_for(["s"]), ttl=10)
    token = tokens.issue(PIN, now=1000.0)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token, now=1010.5)


def _tamper(token: str, **changes) -> str:
    body, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    pod = json.loads(claims["pod"])
    pod.update(changes)
    claims["pod"] = json.dumps(pod)
    new_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return new_body + "." + mac


@pytest.mark.parametrize("make", [
    lambda t: _tamper(t, url="ws://127.0.0.1:1"),  # altered: point it elsewhere
    lambda t: _tamper(t, seq_base=0),
    lambda t: t[:-3] + ("aaa" if not t.endswith("aaa") else "bbb"),  # altered signature
    lambda t: "garbage",
    lambda t: "a.b.c",
    lambda t: RouterTokens(signer_for(["another"]), 60).issue(PIN),  # forged with another secret
])
def test_forged_or_altered_tokens_are_refused(make):
    tokens = RouterTokens(signer_for(["s"]), 60)
    with pytest.raises(InvalidToken):
        tokens.verify(make(tokens.issue(PIN)))


def test_a_pods_own_token_is_not_a_router_token():
    signer = signer_for(["shared"])  # even with the same secret
    pod_token = signer.sign("pod-session", "voxfleet-pod-0", 60)
    with pytest.raises(InvalidToken, match="router"):
        RouterTokens(signer, 60).verify(pod_token)


def test_no_secret_means_a_random_one_per_process():
    a, b = RouterTokens(signer_for([]), 60), RouterTokens(signer_for([]), 60)
    with pytest.raises(InvalidToken):
        b.verify(a.issue(PIN))
    assert isinstance(signer_for([]), TokenSigner)
