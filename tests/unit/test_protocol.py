"""voxfleet.protocol: client message parsing, its error and close codes, the frame layout."""

from __future__ import annotations

import json

import pytest

from voxfleet.protocol import (
    MAX_SEQ,
    AudioFormat,
    CloseCode,
    End,
    ErrorCode,
    ProtocolError,
    Resume,
    Start,
    encode,
    pack_frame,
    parse_client_message,
    resume_message,
    start_message,
    unpack_frame,
)


def parse(obj) -> Start | Resume | End:
    return parse_client_message(json.dumps(obj))


def refused(text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    return info.value


# --- well-formed messages ------------------------------------------------------


def test_start_with_nothing_but_its_type_takes_the_defaults():
    start = parse({"type": "start"})
    assert start == Start(AudioFormat(16_000, "pcm16", 1), "en", "normal", True)


def test_start_with_every_field():
    start = parse({
        "type": "start", "sample_rate": 44_100, "encoding": "float32", "channels": 2,
        "language": "de", "priority": "high", "options": {"partials": False},
    })
    assert start == Start(AudioFormat(44_100, "float32", 2), "de", "high", False)


@pytest.mark.parametrize("language", [None, ""])
def test_start_without_a_language_means_detect(language):
    assert parse({"type": "start", "language": language}).language is None


@pytest.mark.parametrize("rate", [8_000, 48_000])
def test_sample_rate_bounds_are_inclusive(rate):
    assert parse({"type": "start", "sample_rate": rate}).audio.sample_rate == rate


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_every_priority_is_accepted(priority):
    assert parse({"type": "start", "priority": priority}).priority == priority


def test_start_message_round_trips():
    start = Start(AudioFormat(8_000, "float32", 2), "fr", "low", False)
    assert parse_client_message(encode(start_message(start))) == start


def test_start_accepts_bytes():
    assert isinstance(parse_client_message(b'{"type":"start"}'), Start)


def test_resume_with_defaults():
    assert parse({"type": "resume", "token": "abc"}) == Resume("abc", -1, -1)


def test_resume_round_trips():
    resume = Resume("tok.en", 41, 7)
    assert parse_client_message(encode(resume_message(resume))) == resume


def test_end():
    assert parse({"type": "end"}) == End()


def test_unknown_extra_fields_are_ignored():
    assert parse({"type": "end", "future_field": 1}) == End()


# --- refusals ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "{", "not json", '{"type": "start",}', b"\xff\xfe{}"])
def test_bad_json_is_invalid_data(text):
    err = refused(text)
    assert (err.code, err.close_code) == (ErrorCode.BAD_JSON, CloseCode.INVALID_DATA)


@pytest.mark.parametrize("text", ["[]", '"start"', "1", "null", '[{"type": "start"}]'])
def test_a_message_that_is_not_an_object_is_invalid_data(text):
    err = refused(text)
    assert (err.code, err.close_code) == (ErrorCode.BAD_JSON, CloseCode.INVALID_DATA)


@pytest.mark.parametrize("obj", [{}, {"type": "stop"}, {"type": None}, {"type": ["start"]}, {"type": "START"}])
def test_unknown_message_type_is_a_policy_error(obj):
    err = refused(json.dumps(obj))
    assert (err.code, err.close_code) == (ErrorCode.UNKNOWN_MESSAGE, CloseCode.POLICY)


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "start", "sample_rate": "16000"},
        {"type": "start", "sample_rate": 16000.0},
        {"type": "start", "sample_rate": True},  # bool is an int to Python, not to us
        {"type": "start", "channels": True},
        {"type": "start", "channels": 1.0},
        {"type": "start", "encoding": 2},
        {"type": "start", "language": 5},
        {"type": "start", "priority": 1},
        {"type": "start", "options": []},
        {"type": "start", "options": {"partials": "no"}},
        {"type": "start", "options": {"partials": 0}},
        {"type": "resume"},  # token is required
        {"type": "resume", "token": 5},
        {"type": "resume", "token": None},
        {"type": "resume", "token": "t", "last_seq": "3"},
        {"type": "resume", "token": "t", "last_seq": False},
        {"type": "resume", "token": "t", "last_segment_id": 1.5},
        {"type": "resume", "token": "t", "last_segment_id": True},
    ],
)
def test_bad_field_types_are_bad_messages(obj):
    err = refused(json.dumps(obj))
    assert (err.code, err.close_code) == (ErrorCode.BAD_MESSAGE, CloseCode.POLICY)


def test_the_error_names_the_field():
    assert "last_seq" in refused(json.dumps({"type": "resume", "token": "t", "last_seq": True})).message


@pytest.mark.parametrize("obj", [
    {"type": "start", "language": "x" * 800_000},
    {"type": "start", "options": {"prompt": "x" * 2_001}},
    {"type": "resume", "token": "x" * 100_000},
])
def test_every_string_field_is_bounded(obj):
    err = refused(json.dumps(obj))
    assert (err.code, err.close_code) == (ErrorCode.BAD_MESSAGE, CloseCode.POLICY)
    assert "longer than" in err.message


@pytest.mark.parametrize("priority", ["urgent", "", "HIGH"])
def test_unknown_priority_is_a_bad_message(priority):
    err = refused(json.dumps({"type": "start", "priority": priority}))
    assert (err.code, err.close_code) == (ErrorCode.BAD_MESSAGE, CloseCode.POLICY)


@pytest.mark.parametrize(
    "audio",
    [
        {"sample_rate": 7_999},
        {"sample_rate": 48_001},
        {"sample_rate": 0},
        {"sample_rate": -16_000},
        {"encoding": "mulaw"},
        {"encoding": "PCM16"},
        {"encoding": "float64"},
        {"channels": 0},
        {"channels": 9},
        {"channels": -1},
    ],
)
def test_audio_the_pod_cannot_take_is_unsupported(audio):
    err = refused(json.dumps({"type": "start", **audio}))
    assert (err.code, err.close_code) == (ErrorCode.UNSUPPORTED_AUDIO, CloseCode.UNSUPPORTED)


def test_protocol_error_renders_as_an_error_message():
    err = refused(json.dumps({"type": "nope"}))
    assert err.to_message() == {"type": "error", "code": ErrorCode.UNKNOWN_MESSAGE, "message": err.message}



def test_deeply_nested_json_is_refused_as_bad_json():
    # Well under the pod's 1 MiB max_frame_bytes; the module promises that
    # parsing raises nothing but ProtocolError.
    err = refused('{"type": "start", "options": ' + "[" * 100_000 + "}")
    assert (err.code, err.close_code) == (ErrorCode.BAD_JSON, CloseCode.INVALID_DATA)


# --- binary frames ---------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 255, 256, 65_536, MAX_SEQ])
def test_frame_round_trip(seq):
    audio = bytes(range(256)) * 3
    got_seq, got_audio = unpack_frame(pack_frame(seq, audio))
    assert got_seq == seq
    assert bytes(got_audio) == audio


def test_frame_header_is_big_endian_uint32():
    assert pack_frame(0x01020304, b"\xaa") == b"\x01\x02\x03\x04\xaa"


def test_a_frame_of_just_the_header_has_no_audio():
    seq, audio = unpack_frame(pack_frame(7, b""))
    assert seq == 7 and len(audio) == 0


@pytest.mark.parametrize("size", [0, 1, 3])
def test_a_frame_shorter_than_its_header_is_invalid_data(size):
    with pytest.raises(ProtocolError) as info:
        unpack_frame(b"\x00" * size)
    assert (info.value.code, info.value.close_code) == (ErrorCode.BAD_FRAME, CloseCode.INVALID_DATA)


def test_audio_format_sizes():
    fmt = AudioFormat(8_000, "float32", 2)
    assert fmt.bytes_per_frame == 8
    assert fmt.seconds(8 * 8_000) == pytest.approx(1.0)


def test_start_options_prompt_word_timestamps_and_previous_text():
    start = parse({"type": "start", "options": {"prompt": "Montreal Forced Aligner", "word_timestamps": True,
                                                 "previous_text": "So this is the corpus."}})
    assert (start.prompt, start.word_timestamps, start.previous_text) == (
        "Montreal Forced Aligner", True, "So this is the corpus.")
    assert parse(start_message(start)) == start
    assert parse({"type": "start"}).prompt == "" and not parse({"type": "start"}).word_timestamps


@pytest.mark.parametrize("options", [{"prompt": 3}, {"word_timestamps": "yes"}, {"previous_text": None},
                                     {"prompt": "x" * 2001}, {"previous_text": "x" * 2001}])
def test_bad_start_options_are_bad_messages(options):
    error = refused(json.dumps({"type": "start", "options": options}))
    assert error.code == ErrorCode.BAD_MESSAGE


def test_a_final_carries_its_words_only_when_given():
    from voxfleet.protocol import final

    assert "words" not in final(0, "hi", 0.0, 1.0)
    message = final(0, "hi there", 0.0, 1.0, [("hi", 0.0, 0.4, 0.91234), ("there", 0.5, 1.0, None)])
    assert message["words"] == [{"word": "hi", "start": 0.0, "end": 0.4, "probability": 0.9123},
                                {"word": "there", "start": 0.5, "end": 1.0}]


# --- live-session controls -----------------------------------------------------


def test_flush_and_keepalive():
    from voxfleet.protocol import FLUSH, KEEPALIVE, Flush, Keepalive

    assert parse(FLUSH) == Flush() and parse(KEEPALIVE) == Keepalive()


def test_configure_takes_only_what_it_changes():
    from voxfleet.protocol import Configure

    assert parse({"type": "configure"}) == Configure(None, None, None)
    assert parse({"type": "configure", "partials": False}) == Configure(False, None, None)
    assert parse({"type": "configure", "prompt": "Voxfleet", "final_silence_ms": 800}) == Configure(None, "Voxfleet", 800)


@pytest.mark.parametrize("ms", [100, 10_000])
def test_final_silence_bounds_are_inclusive(ms):
    assert parse({"type": "configure", "final_silence_ms": ms}).final_silence_ms == ms


def test_configure_message_round_trips():
    from voxfleet.protocol import Configure, configure_message

    for change in (Configure(), Configure(True, "", 100), Configure(None, "names", None)):
        assert parse(configure_message(change)) == change


@pytest.mark.parametrize("obj", [
    {"partials": "no"}, {"partials": 0}, {"prompt": 3}, {"prompt": None}, {"prompt": "x" * 2001},
    {"final_silence_ms": 99}, {"final_silence_ms": 10_001}, {"final_silence_ms": 500.0}, {"final_silence_ms": True},
    {"final_silence_ms": "500"}, {"language": "de"}, {"sample_rate": 8000},
])
def test_bad_configure_values_are_bad_messages(obj):
    error = refused(json.dumps({"type": "configure", **obj}))
    assert (error.code, error.close_code) == (ErrorCode.BAD_MESSAGE, CloseCode.POLICY)
    assert error.message


def test_speech_events_is_a_start_option():
    start = parse({"type": "start", "options": {"speech_events": True}})
    assert start.speech_events and not parse({"type": "start"}).speech_events
    assert parse(start_message(start)) == start
    assert refused(json.dumps({"type": "start", "options": {"speech_events": 1}})).code == ErrorCode.BAD_MESSAGE


def test_control_replies():
    from voxfleet.protocol import configured, flushed, speech_started, speech_stopped

    assert flushed([3, 4]) == {"type": "flushed", "segments": [3, 4]} and flushed([])["segments"] == []
    assert configured(False, "x", 800) == {"type": "configured", "partials": False, "prompt": "x",
                                           "final_silence_ms": 800}
    assert speech_started(1.23456) == {"type": "speech_started", "at": 1.235}
    assert speech_stopped(2.0) == {"type": "speech_stopped", "at": 2.0}
