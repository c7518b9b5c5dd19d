"""API keys: hashed at rest, constant-time lookup, limits and priority classes, explicit anonymous mode."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers

from stt_router.apikeys import (ApiKeys, AuthError, KeyLimits, Principal, effective_priority, hash_key, parse_keys,
                                presented_key, read_keys)

KEYS = f"""
# name   hash   max  priority
acme     {hash_key("acme-secret")}  2  high
trial    {hash_key("trial-secret")}   # defaults: no limit, normal
"""


def test_a_stored_key_authenticates_as_its_principal():
    keys = ApiKeys(parse_keys(KEYS))
    acme = keys.authenticate("acme-secret")
    assert acme == Principal("acme", 2, "high")
    assert keys.authenticate("trial-secret") == Principal("trial", 0, "normal")


@pytest.mark.parametrize("presented,code", [(None, "missing_api_key"), ("", "missing_api_key"),
                                            ("acme-secreT", "invalid_api_key"), ("x" * 500, "invalid_api_key")])
def test_missing_or_wrong_keys_are_refused_without_anonymous_mode(presented, code):
    with pytest.raises(AuthError) as err:
        ApiKeys(parse_keys(KEYS)).authenticate(presented)
    assert err.value.code == code


def test_anonymous_mode_is_explicit_and_keys_still_work_in_it():
    anon = Principal("anonymous", 3, "low", anonymous=True)
    keys = ApiKeys(parse_keys(KEYS), anonymous=anon)
    assert keys.authenticate(None) is anon
    assert keys.authenticate("acme-secret").name == "acme"
    with pytest.raises(AuthError):
        keys.authenticate("wrong")  # a wrong key is not anonymous
    assert not ApiKeys([]).anonymous_allowed


def test_keys_are_never_stored_in_clear():
    with pytest.raises(ValueError, match="sha256"):
        parse_keys("acme acme-secret 2 high")


@pytest.mark.parametrize("line,match", [
    ("acme", "expected"),
    (f"acme {hash_key('a')} many", "whole number"),
    (f"acme {hash_key('a')} 1 urgent", "priority"),
    ("acme sha256:" + "zz" * 32, "hexadecimal"),
    (f"acme {hash_key('a')}\nacme {hash_key('b')}", "twice"),
    (f"anonymous {hash_key('a')}", "reserved"),  # else its holder would own the key-less clients' sessions
])
def test_bad_key_files_say_which_line(line, match):
    with pytest.raises(ValueError, match=match):
        parse_keys(line, "keys.txt")


def test_a_secret_mount_folder_is_read_file_by_file(tmp_path):
    (tmp_path / "team-a").write_text(f"a {hash_key('ka')} 1 high\n")
    (tmp_path / "team-b").write_text(f"b {hash_key('kb')}\n")
    (tmp_path / "..data").mkdir()  # what a Secret mount holds beside the files
    (tmp_path / ".hidden").write_text("not a key file")
    rules = read_keys(tmp_path)
    assert sorted(r.principal.name for r in rules) == ["a", "b"]
    single = tmp_path / "team-a"
    assert [r.principal.name for r in read_keys(single)] == ["a"]


def test_presented_key_from_header_or_query():
    assert presented_key({"Authorization": "Bearer k1"}, "/") == "k1"
    assert presented_key(Headers([("authorization", "bearer k1")]), "/") == "k1"  # header names fold case
    assert presented_key({"X-API-Key": "k2"}, "/") == "k2"
    assert presented_key({}, "/?api_key=k3&x=1") == "k3"
    assert presented_key({"Authorization": "Basic abc"}, "/") is None
    assert presented_key({}, "/") is None


@pytest.mark.parametrize("requested,allowed,result", [
    ("high", "normal", "normal"), ("low", "high", "low"), ("normal", "high", "normal"), ("high", "high", "high"),
])
def test_a_key_caps_the_priority_a_client_asks_for(requested, allowed, result):
    assert effective_priority(requested, allowed) == result


def test_concurrent_session_limit_per_key():
    limits = KeyLimits()
    acme = Principal("acme", 2)
    unlimited = Principal("free", 0)
    assert limits.acquire(acme) and limits.acquire(acme)
    assert not limits.acquire(acme)
    limits.release(acme)
    assert limits.acquire(acme)
    assert all(limits.acquire(unlimited) for _ in range(100))
    for _ in range(3):
        limits.release(acme)
    assert limits.count(acme) == 0
