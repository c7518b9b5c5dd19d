"""The WhisperLive front end's protocol core, without sockets."""

from __future__ import annotations

import uuid

import pytest

from voxfleet import protocol as p


def options(**extra) -> dict:
    """The options message whisper-live 0.10.0's Client sends (client.py, on_open)."""
    return {"uid": str(uuid.uuid4()), "language": "en", "task": "transcribe", "model": "tiny.en", "use_vad": True,
            "send_last_n_segments": 10, "no_speech_thresh": 0.45, "clip_audio": False, "same_output_threshold": 10,
            "enable_translation": False, "target_language": "fr", "hotwords": None, "enable_diarization": False,
            "max_speakers": 10, "known_speakers": [], "word_timestamps": False, "initial_prompt": None,
            "vad_parameters": None, **extra}



def test_segment_list_keeps_the_clients_invariants():
    from stt_pod.stream import PartialEvent
    from stt_pod.whisperlive import SegmentList

    segs = SegmentList(last_n=2)
    assert segs.update(None) is None, "nothing to say before the first words"
    segs.update(PartialEvent("please call", 0.1, 0.8))
    segs.add_final("Please call", 0.1, 0.84)
    segs.add_final("Stella and", 0.80, 0.80)  # overlaps the previous one, and is empty in time
    segs.add_final("ask her", 1.2, 1.6)
    listed = segs.update(PartialEvent("please call", 0.1, 0.8))  # superseded by the finals
    assert [s["text"] for s in listed] == ["Please call", "Stella and", "ask her", ""], "every unsent final, even past last_n"
    assert [(s["start"], s["end"]) for s in listed[:3]] == [("0.100", "0.840"), ("0.840", "0.841"), ("1.200", "1.600")]
    assert listed[-1] == {"start": "1.600", "end": "1.600", "text": "", "completed": False}
    assert segs.update(PartialEvent("please call", 0.1, 0.8)) is None, "unchanged state is not resent"
    listed = segs.update(PartialEvent("to bring", 1.55, 2.3))  # starts a bit early: still the current partial
    assert listed == [
        {"start": "0.840", "end": "0.841", "text": "Stella and", "completed": True},
        {"start": "1.200", "end": "1.600", "text": "ask her", "completed": True},
        {"start": "1.600", "end": "2.300", "text": "to bring", "completed": False},
    ]


def test_options_map_onto_a_session_start():
    from stt_pod.whisperlive import is_whisperlive, parse_options

    opts = parse_options(options(task="translate", enable_translation=True))
    assert opts.start.audio == p.AudioFormat(16000, "float32", 1) and opts.last_n == 10
    assert len(opts.warnings) == 2
    assert parse_options(options(audio_format="int16")).start.audio.encoding == "pcm16"
    assert is_whisperlive(options()) and not is_whisperlive({"type": "start", "uid": "x"})
    for bad in ({"uid": 3}, options(audio_format="uint8"), options(send_last_n_segments=0), options(language=5)):
        with pytest.raises(p.ProtocolError):
            parse_options(bad)


def test_initial_prompt_hotwords_and_word_timestamps_reach_the_session():
    from stt_pod.whisperlive import parse_options

    start = parse_options(options(initial_prompt="Montreal", hotwords="Aligner", word_timestamps=True)).start
    assert start.prompt == "Montreal Aligner" and start.word_timestamps
    assert parse_options(options()).start.prompt == "" and not parse_options(options()).start.word_timestamps
    for bad in (options(initial_prompt=3), options(hotwords=["a"]), options(word_timestamps="yes"),
                options(initial_prompt="x" * (p.MAX_PROMPT_CHARS + 1))):
        with pytest.raises(p.ProtocolError):
            parse_options(bad)
