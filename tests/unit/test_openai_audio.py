"""voxfleet.openai_audio: OpenAI's transcription responses, events and errors from words and times."""

from __future__ import annotations

import json

import pytest

from voxfleet import openai_audio as oa


def words(*spec: tuple[str, float, float]) -> list[oa.TimedWord]:
    return [oa.TimedWord(w, s, e, 0.9) for w, s, e in spec]


SENTENCES = words((" Hello", 0.0, 0.4), (" there.", 0.4, 0.9), (" How", 1.2, 1.4), (" are", 1.4, 1.6),
                  (" you?", 1.6, 2.0))


def transcript() -> oa.Transcript:
    return oa.Transcript(tuple(oa.split_segments(SENTENCES)), duration=2.5)


def test_segments_end_at_sentence_ends_pauses_and_the_length_limit():
    assert [s.text for s in oa.split_segments(SENTENCES)] == [" Hello there.", " How are you?"]
    paused = words((" one", 0.0, 0.3), (" two", 0.3, 0.6), (" three", 2.0, 2.3))
    assert [s.text for s in oa.split_segments(paused)] == [" one two", " three"]
    long = [oa.TimedWord(f" w{i}", i * 0.5, i * 0.5 + 0.4) for i in range(60)]
    segments = oa.split_segments(long)
    assert all(s.end - s.start <= oa.SEGMENT_MAX_SECONDS for s in segments)
    assert [w for s in segments for w in s.words] == long  # nothing lost or repeated


def test_json_and_text():
    body, content_type = oa.render(transcript(), "json")
    assert content_type == "application/json"
    assert json.loads(body)["text"] == "Hello there. How are you?"
    body, content_type = oa.render(transcript(), "text")
    assert body.decode() == "Hello there. How are you?\n" and content_type.startswith("text/plain")


def test_verbose_json_has_segments_by_default_and_words_when_asked():
    doc = json.loads(oa.render(transcript(), "verbose_json")[0])
    assert doc["duration"] == 2.5 and doc["language"] == "english"
    assert [(s["start"], s["end"], s["text"]) for s in doc["segments"]] == [(0.0, 0.9, " Hello there."),
                                                                             (1.2, 2.0, " How are you?")]
    assert "words" not in doc
    doc = json.loads(oa.render(transcript(), "verbose_json", ["word"])[0])
    assert "segments" not in doc
    assert doc["words"][1] == {"word": "there.", "start": 0.4, "end": 0.9}


def test_srt_and_vtt_timings():
    srt = oa.render(transcript(), "srt")[0].decode()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:00,900\nHello there.\n\n2\n00:00:01,200 --> 00:00:02,000\n")
    vtt = oa.render(oa.Transcript((oa.Segment(3723.5, 3724.25, words((" late.", 3723.5, 3724.25))),), 3725),
                    "vtt")[0].decode()
    assert vtt == "WEBVTT\n\n01:02:03.500 --> 01:02:04.250\nlate.\n"


@pytest.mark.parametrize("fmt, granularities", [("xml", []), ("json", ["word"]), ("verbose_json", ["letter"])])
def test_bad_formats_are_400_naming_the_parameter(fmt, granularities):
    with pytest.raises(oa.RequestError) as caught:
        oa.check_format(fmt, granularities)
    assert caught.value.status == 400
    error = json.loads(caught.value.body())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] in ("response_format", "timestamp_granularities")


def test_stream_events_are_server_sent_events():
    delta = oa.delta_event(" Hello")
    assert delta.startswith(b"data: ") and delta.endswith(b"\n\n")
    assert json.loads(delta[6:]) == {"type": "transcript.text.delta", "delta": " Hello"}
    done = json.loads(oa.done_event(transcript())[6:])
    assert done["type"] == "transcript.text.done" and done["text"] == "Hello there. How are you?"
