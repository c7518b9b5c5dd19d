"""The OpenAI Realtime front end's event translation, without sockets.

Every server event is validated against the `openai` package's own pydantic types
(`RealtimeServerEvent`, strict), so a field the SDK needs can never go missing.
"""

from __future__ import annotations

import base64
import math

import pytest
from pydantic import TypeAdapter

from stt_pod.realtime import (
    COMMIT_EMPTY,
    LOGPROBS,
    Config,
    Items,
    decode_audio,
    error_event,
    is_realtime_path,
    parse_update,
    server_event,
    session_event,
)
from stt_pod.words import Word
from voxfleet import protocol as p

openai_types = pytest.importorskip("openai.types.realtime.realtime_server_event")
SERVER_EVENT = TypeAdapter(openai_types.RealtimeServerEvent)


def valid(events: list[dict]) -> list[dict]:
    """Each event parses as the SDK's type for it; returned as they were."""
    for event in events:
        parsed = SERVER_EVENT.validate_python(event)
        assert parsed.type == event["type"], event
    return events


def counter():
    n = iter(range(1000))
    return lambda: f"item_{next(n)}"


def words(start: float, *texts: str, step: float = 0.4) -> list[Word]:
    return [Word(" " + t, start + i * step, start + i * step + 0.3, 0.5) for i, t in enumerate(texts)]


def kinds(events: list[dict]) -> list[str]:
    return [e["type"].rsplit(".", 1)[-1] if "transcription" in e["type"] else e["type"] for e in events]


# --- configuration --------------------------------------------------------------------------


def ga_update(**input_fields) -> dict:
    return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": input_fields}}}


def test_a_ga_update_sets_format_language_prompt_and_turn_detection():
    config = Config("tiny.en")
    new = parse_update(ga_update(format={"type": "audio/pcm", "rate": 16000},
                                 transcription={"model": "gpt-4o-transcribe", "language": "en", "prompt": "Montreal",
                                                "keywords": ["Aligner"]},
                                 turn_detection={"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700,
                                                 "prefix_padding_ms": 300}), config)
    assert (new.rate, new.language, new.prompt) == (16000, "en", "Montreal Aligner")
    assert (new.turn_detection, new.threshold, new.silence_ms, new.padding_ms) == ("server_vad", 0.6, 700, 300)
    assert new.stream_options() == {"vad_threshold": 0.6, "final_silence": 0.7, "speech_pad": 0.3}
    assert new.start() == p.Start(p.AudioFormat(16000, "pcm16", 1), "en", prompt="Montreal Aligner")
    # Fields left out stay; null turn detection keeps the VAD numbers for the pod's own segmenting.
    off = parse_update(ga_update(turn_detection=None), new)
    assert off.turn_detection is None and off.locked() == new.locked()
    assert parse_update(ga_update(format={"type": "audio/pcm"}), new).rate == 24000


def test_a_beta_update_is_read_too():
    event = {"type": "transcription_session.update", "session": {
        "input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}, "include": [LOGPROBS]}}
    new = parse_update(event, Config("tiny.en", rate=16000))
    assert (new.rate, new.language, new.silence_ms, new.logprobs) == (24000, "en", 300, True)


@pytest.mark.parametrize("update, code, close", [
    (ga_update(format={"type": "audio/pcmu"}), p.ErrorCode.UNSUPPORTED_AUDIO, 1003),
    (ga_update(format={"type": "audio/pcm", "rate": 96000}), p.ErrorCode.UNSUPPORTED_AUDIO, 1003),
    (ga_update(format={"type": "audio/pcm", "rate": "24000"}), p.ErrorCode.UNSUPPORTED_AUDIO, 1003),
    (ga_update(turn_detection={"type": "server_vad", "threshold": 1.5}), p.ErrorCode.BAD_MESSAGE, 1008),
    (ga_update(turn_detection={"type": "push_to_talk"}), p.ErrorCode.BAD_MESSAGE, 1008),
    (ga_update(turn_detection={"type": "server_vad", "silence_duration_ms": -1}), p.ErrorCode.BAD_MESSAGE, 1008),
    (ga_update(transcription={"language": 5}), p.ErrorCode.BAD_MESSAGE, 1008),
    (ga_update(transcription={"prompt": "x" * (p.MAX_PROMPT_CHARS + 1)}), p.ErrorCode.BAD_MESSAGE, 1008),
    ({"type": "session.update", "session": {"type": "realtime"}}, p.ErrorCode.BAD_MESSAGE, 1008),
    ({"type": "session.update", "session": {"include": ["item.input_audio_transcription.tokens"]}},
     p.ErrorCode.BAD_MESSAGE, 1008),
    ({"type": "session.update"}, p.ErrorCode.BAD_MESSAGE, 1008),
])
def test_an_update_the_pod_cannot_serve_is_refused(update, code, close):
    with pytest.raises(p.ProtocolError) as err:
        parse_update(update, Config("tiny.en"))
    assert (err.value.code, err.value.close_code) == (code, close)


def test_session_events_are_what_the_sdk_parses():
    config = Config("tiny.en", language="en", include=(LOGPROBS,))
    created, updated = valid([session_event(config, "sess_1", beta=False, updated=False),
                              session_event(config, "sess_1", beta=False, updated=True)])
    assert (created["type"], updated["type"]) == ("session.created", "session.updated")
    session = SERVER_EVENT.validate_python(created).session
    assert session.type == "transcription" and session.audio.input.format.rate == 24000
    assert session.audio.input.turn_detection.threshold == 0.35 and session.include == [LOGPROBS]
    beta = session_event(config, "sess_1", beta=True, updated=True)
    assert beta["type"] == "transcription_session.updated"
    assert beta["session"]["input_audio_format"] == "pcm16" and beta["session"]["turn_detection"]["type"] == "server_vad"
    off = session_event(Config("tiny.en", turn_detection=None), "sess_1", beta=False, updated=True)
    assert valid([off])[0]["session"]["audio"]["input"]["turn_detection"] is None


def test_errors_have_openais_shape_and_name_the_client_event():
    [event] = valid([error_event(p.ProtocolError(p.ErrorCode.BAD_JSON, "not JSON", 1007), "evt_7")])
    assert event["error"] == {"type": "invalid_request_error", "code": "bad_json", "message": "not JSON",
                              "param": None, "event_id": "evt_7"}
    assert error_event(p.ProtocolError(p.ErrorCode.FULL, "full"))["error"]["type"] == "server_error"


def test_audio_must_be_base64_of_whole_pcm16_samples():
    assert decode_audio({"audio": base64.b64encode(b"\x01\x00\x02\x00").decode()}) == b"\x01\x00\x02\x00"
    for bad in ({"audio": "***"}, {"audio": base64.b64encode(b"\x01\x00\x02").decode()}, {"audio": 5}, {}):
        with pytest.raises(p.ProtocolError) as err:
            decode_audio(bad)
        assert err.value.code in (p.ErrorCode.BAD_FRAME, p.ErrorCode.BAD_MESSAGE)


def test_paths():
    assert is_realtime_path("/v1/realtime?intent=transcription") and is_realtime_path("/v1/realtime")
    assert is_realtime_path("/v1/realtime?model=gpt-4o-transcribe&intent=transcription")
    assert not is_realtime_path("/") and not is_realtime_path("/v1/realtimex")


# --- items ------------------------------------------------------------------------------------


def test_a_turn_under_server_vad():
    items = Items(new_id=counter())
    events = valid(items.speech_started(0.3) + items.partial("ask not") + items.partial("ask not what")
                   + items.partial("ask not what") + items.speech_stopped(2.5))
    assert kinds(events) == ["input_audio_buffer.speech_started", "delta", "delta",
                             "input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    assert {e["item_id"] for e in events} == {"item_0"}
    assert [e["delta"] for e in events[1:3]] == ["ask not", " what"], "only the new words, once"
    assert events[0]["audio_start_ms"] == 300 and events[3]["audio_end_ms"] == 2500
    assert events[4]["previous_item_id"] is None
    [done] = valid(items.final(words(0.4, "Ask", "not", "what.")))
    assert done["item_id"] == "item_0" and done["transcript"] == "Ask not what." and done["content_index"] == 0
    assert done["usage"] == {"type": "duration", "seconds": 2.2} and "logprobs" not in done
    # The next turn is a new item, after the first.
    events = valid(items.speech_started(3.0) + items.speech_stopped(4.0))
    assert events[0]["item_id"] == "item_1" and events[2]["previous_item_id"] == "item_0"


def test_a_revised_partial_adds_only_its_further_words():
    items = Items(new_id=counter())
    assert [e["delta"] for e in items.partial("and so my") + items.partial("and so am I fellow")] == [
        "and so my", " I fellow"]
    assert items.partial("and so") == []


def test_a_final_covering_two_committed_turns_is_split_by_word_time():
    items = Items(new_id=counter())
    items.speech_started(0.0), items.speech_stopped(2.0)
    items.speech_started(2.0), items.speech_stopped(4.0)
    events = valid(items.final(words(0.5, "one", "two") + words(2.5, "three")))
    assert [(e["item_id"], e["transcript"]) for e in events] == [("item_0", "one two"), ("item_1", "three")]


def test_a_turn_without_words_completes_empty_once_later_words_come():
    items = Items(new_id=counter())
    items.speech_started(0.0), items.speech_stopped(1.0)  # a cough: its final had no words
    items.speech_started(1.5), items.speech_stopped(3.0)
    events = valid(items.final(words(1.6, "hello")))
    assert [(e["item_id"], e["transcript"]) for e in events] == [("item_0", ""), ("item_1", "hello")]
    items.speech_started(3.5), items.speech_stopped(5.0)
    assert [(e["item_id"], e["transcript"]) for e in valid(items.end())] == [("item_2", "")]


def test_a_final_of_speech_not_committed_commits_it_first():
    items = Items(new_id=counter())  # turn detection off, or a final the pod made mid-speech
    deltas = items.partial("to be")
    events = valid(items.final(words(0.2, "To", "be.")))
    assert kinds(events) == ["input_audio_buffer.committed", "completed"]
    assert deltas[0]["item_id"] == events[0]["item_id"] == events[1]["item_id"]
    assert valid(items.partial("or not"))[0]["item_id"] != events[0]["item_id"]


def test_a_client_commit():
    items = Items(new_id=counter())
    items.partial("so far")
    committed = valid(items.commit(1.2, flushed=True))
    assert kinds(committed) == ["input_audio_buffer.committed"]
    assert valid(items.final(words(0.3, "So", "far.")))[0]["item_id"] == committed[0]["item_id"]
    # A commit of audio with no speech in it: nothing will come, so it completes now, empty.
    events = valid(items.commit(2.0, flushed=False))
    assert kinds(events) == ["input_audio_buffer.committed", "completed"] and events[1]["transcript"] == ""
    # Speech the VAD closed while turn detection was off: the commit is that turn's, and waits for its final.
    items.turn_closed(3.0)
    [committed] = valid(items.commit(3.2, flushed=False))
    assert valid(items.final(words(2.2, "yes")))[0]["item_id"] == committed["item_id"]


def test_without_turn_detection_turns_are_committed_in_order_when_ready_or_at_the_commit():
    items = Items(new_id=counter())
    assert items.partial("one") and items.turn_closed(1.0) is None  # the VAD cut a turn: no event yet
    events = valid(items.final(words(0.2, "One.")))
    assert kinds(events) == ["input_audio_buffer.committed", "completed"] and events[0]["item_id"] == "item_0"
    items.turn_closed(2.0)  # a turn whose final is still decoding ...
    items.partial("three")
    events = valid(items.commit(3.0, flushed=True))  # ... when the client commits the speech after it
    assert [(e["type"], e["item_id"]) for e in events] == [("input_audio_buffer.committed", "item_1"),
                                                           ("input_audio_buffer.committed", "item_2")]
    assert events[1]["previous_item_id"] == "item_1"
    events = valid(items.final(words(1.2, "two") + words(2.4, "three")))
    assert [(e["item_id"], e["transcript"]) for e in events] == [("item_1", "two"), ("item_2", "three")]


def test_logprobs_come_from_word_probabilities():
    items = Items(logprobs=True, new_id=counter())
    [_, done] = valid(items.final([Word(" Hi", 0.0, 0.2, 0.5), Word(" there", 0.3, 0.5, None)]))
    assert done["logprobs"] == [{"token": " Hi", "logprob": math.log(0.5), "bytes": list(b" Hi")}]


def test_other_server_events_parse():
    valid([server_event("input_audio_buffer.cleared")])
    assert COMMIT_EMPTY == "input_audio_buffer_commit_empty"
