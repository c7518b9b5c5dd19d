"""The router's pure helpers for OpenAI Realtime sessions (stt_router.realtime_relay)."""

from __future__ import annotations

from stt_router import realtime_relay as rt


def test_realtime_paths_with_any_query():
    assert rt.is_realtime_path("/v1/realtime")
    assert rt.is_realtime_path("/v1/realtime/")
    assert rt.is_realtime_path("/v1/realtime?intent=transcription&model=gpt-4o-transcribe")
    assert not rt.is_realtime_path("/v1/realtimes")
    assert not rt.is_realtime_path("/")
    assert not rt.is_realtime_path("/v1/stream?x=/v1/realtime")


def test_the_pod_leg_keeps_the_query_but_not_the_key():
    assert rt.pod_path("/v1/realtime") == "/v1/realtime"
    assert rt.pod_path("/v1/realtime?intent=transcription&model=gpt-4o-transcribe") == \
        "/v1/realtime?intent=transcription&model=gpt-4o-transcribe"
    assert rt.pod_path("/v1/realtime/?intent=transcription") == "/v1/realtime?intent=transcription"
    assert rt.pod_path("/v1/realtime?api_key=secret&intent=transcription") == "/v1/realtime?intent=transcription"
    assert rt.pod_path("/v1/realtime?api_key=secret") == "/v1/realtime"
    assert rt.pod_url("ws://10.0.0.7:8000/", "/v1/realtime?intent=transcription") == \
        "ws://10.0.0.7:8000/v1/realtime?intent=transcription"


def test_only_the_beta_header_is_forwarded():
    headers = {"OpenAI-Beta": "realtime=v1", "Authorization": "Bearer sk-secret", "X-API-Key": "k"}
    assert rt.forwarded_headers(headers) == {"OpenAI-Beta": "realtime=v1"}
    assert rt.forwarded_headers({"Authorization": "Bearer sk-secret"}) == {}


def test_error_events_have_openais_shape():
    event = rt.error_event("queue_full", "no free slot")
    assert event["type"] == "error" and event["event_id"].startswith("event_")
    assert event["error"] == {"type": "server_error", "code": "queue_full", "message": "no free slot",
                              "param": None, "event_id": None}
    assert rt.error_event("queue_timeout", "late")["error"]["type"] == "server_error"
    assert rt.error_event("invalid_api_key", "wrong key")["error"]["type"] == "invalid_request_error"


def test_a_pods_first_event_says_taken_or_refused():
    assert rt.opened({"type": "session.created", "session": {}})
    assert rt.opened({"type": "transcription_session.created"})
    assert not rt.opened({"type": "error"}) and not rt.opened("session.created")
    full = {"type": "error", "error": {"type": "server_error", "code": "full", "message": "all 1 sessions"}}
    assert rt.refusal(full) == "full"
    assert rt.refusal({"type": "error", "error": {"code": "draining"}}) == "draining"
    assert rt.refusal({"type": "error", "error": {"code": "internal"}}) is None  # relayed as the pod sent it
    assert rt.refusal({"type": "error", "code": "full"}) is None  # native errors are not OpenAI's
    assert rt.refusal({"type": "session.created"}) is None and rt.refusal([]) is None
