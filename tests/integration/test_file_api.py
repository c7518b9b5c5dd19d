"""The pod's OpenAI-compatible file endpoint, with the real model on real speech and the real `openai` client."""

from __future__ import annotations

import io
import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile

from tests.devset import CLIP_MARGIN, clips, offline_file, pooled_wer, reference_text, wer
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR

pytestmark = pytest.mark.integration

TALK = ("en_jfk_ask_not", "en_librivox_sonnet001", "en_mfa_acoustic_corpus", "en_arctic_a0009")
"""Four voices, about 45 s with pauses between them: more than one 30 s window."""
SHORT = "en_arctic_a0009"


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> Path:
    """The TALK clips in one 16 kHz WAV, a second of silence between them."""
    parts = []
    for clip in clips(*TALK):
        audio, rate = soundfile.read(clip.path, dtype="float32")
        assert rate == SR
        parts += [audio, np.zeros(SR, dtype=np.float32)]
    path = tmp_path_factory.mktemp("files") / "talk.wav"
    soundfile.write(path, np.concatenate(parts), SR)
    return path


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http}/v1", api_key="unused", max_retries=0)


def assert_near_offline(path: Path, reference: str, text: str, margin: float = CLIP_MARGIN) -> None:
    got, floor = wer(reference, text), wer(reference, offline_file(path))
    assert got <= floor + margin, f"WER {got:.3f} > offline {floor:.3f} + {margin}: {text!r}"


def encode(path: Path, container: str, codec: str, rate: int) -> bytes:
    """A WAV re-encoded by PyAV (FFmpeg), as a phone or a browser would have recorded it."""
    import av

    audio, source_rate = soundfile.read(path, dtype="float32")
    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as box:
        stream = box.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray((audio * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = source_rate
        for piece in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(piece):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return out.getvalue()


def test_the_openai_client_gets_the_transcript_of_a_long_file(pod, talk):
    result = client(pod).audio.transcriptions.create(model="whisper-1", file=talk.open("rb"))
    assert_near_offline(talk, reference_text(*TALK), result.text)


def test_the_openai_client_streams_deltas_then_the_whole_text(pod, talk):
    events = list(client(pod).audio.transcriptions.create(model="whisper-1", file=talk.open("rb"), stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert len(deltas) >= 2, "a file of two windows or more streams more than one delta"
    assert "".join(deltas) == events[-1].text
    assert_near_offline(talk, reference_text(*TALK), events[-1].text)


def test_verbose_json_has_ordered_segments_and_words_inside_the_audio(pod, talk):
    result = client(pod).audio.transcriptions.create(model="whisper-1", file=talk.open("rb"),
                                                     response_format="verbose_json",
                                                     timestamp_granularities=["segment", "word"])
    duration = soundfile.info(talk).duration
    assert abs(result.duration - duration) < 0.1
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and len(starts) >= 4
    assert all(0 <= s.start < s.end <= duration + 0.5 for s in result.segments)
    letters = re.compile(r"\W")  # words come stripped: "self" and "-substantial" are one word in the text
    assert letters.sub("", "".join(w.word for w in result.words)) == letters.sub("", result.text)
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] < duration
    # Times say who spoke when: the words that start inside the first clip are that clip's words.
    first = clips(TALK[0])[0]
    first_words = " ".join(w.word for w in result.words if w.start < first.seconds)
    assert wer(first.text, first_words) <= wer(first.text, offline_file(first.path)) + CLIP_MARGIN, first_words


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
def test_text_and_subtitle_formats(pod, response_format):
    path = clips(SHORT)[0].path
    body = client(pod).audio.transcriptions.create(model="whisper-1", file=path.open("rb"),
                                                   response_format=response_format)
    text = body if isinstance(body, str) else body.text
    if response_format == "text":
        spoken = text
    else:
        cues = re.findall(r"(\d\d:\d\d:\d\d[.,]\d{3}) --> (\d\d:\d\d:\d\d[.,]\d{3})\n(.+)", text)
        assert cues, text
        assert text.startswith("WEBVTT\n\n" if response_format == "vtt" else "1\n")
        spoken = " ".join(c[2] for c in cues)
    assert_near_offline(path, clips(SHORT)[0].text, spoken)


@pytest.mark.parametrize("container, codec, rate", [("mp3", "libmp3lame", 44100), ("ogg", "libopus", 48000),
                                                     ("webm", "libopus", 48000), ("ipod", "aac", 22050)])
def test_compressed_uploads(pod, container, codec, rate):
    chosen = clips("en_jfk_ask_not", SHORT)
    data = {c.name: encode(c.path, container, codec, rate) for c in chosen}
    texts = [client(pod).audio.transcriptions.create(model="whisper-1", file=(f"{name}.{container}", payload)).text
             for name, payload in data.items()]
    offline = [offline_file(c.path) for c in chosen]
    references = [c.text for c in chosen]
    assert pooled_wer(references, texts) <= pooled_wer(references, offline) + CLIP_MARGIN, texts


def test_bad_uploads_get_openai_errors_and_the_pod_serves_on(pod, tmp_path):
    api = client(pod)
    with pytest.raises(openai.BadRequestError, match="could not be decoded"):
        api.audio.transcriptions.create(model="whisper-1", file=("notes.mp3", b"\x00\x01garbage" * 500))
    with pytest.raises(openai.BadRequestError, match="response_format"):
        api.audio.transcriptions.create(model="whisper-1", file=clips(SHORT)[0].path.open("rb"),
                                        response_format="xml")  # type: ignore[arg-type]
    silent = tmp_path / "silence.wav"
    soundfile.write(silent, np.zeros(3 * SR, dtype=np.float32), SR)
    assert api.audio.transcriptions.create(model="whisper-1", file=silent.open("rb")).text == ""
    request = urllib.request.Request(f"{pod.http}/v1/audio/transcriptions", data=b"x=1", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400 and json.loads(caught.value.read())["error"]["param"] == "file"
    status = json.loads(urllib.request.urlopen(f"{pod.http}/status", timeout=10).read())
    assert status["file_jobs"] == 0 and status["file_free"] == status["file_capacity"]
    metrics = urllib.request.urlopen(f"{pod.http}/metrics", timeout=10).read().decode()
    assert re.search(r'voxfleet_pod_file_jobs_total\{reason="refused"\} [1-9]', metrics)


def test_uploads_over_the_limits_are_413(pod_factory):
    small = pod_factory("--max-upload-bytes", "100000", "--max-file-seconds", "5")
    api = client(small)
    with pytest.raises(openai.APIStatusError) as caught:
        api.audio.transcriptions.create(model="whisper-1", file=("big.wav", b"\x00" * 200_000))
    assert caught.value.status_code == 413 and "larger than" in str(caught.value)
    jfk = clips("en_jfk_ask_not")[0]  # 11 s of audio in 350 kB of WAV: decoded, then too long
    with pytest.raises(openai.APIStatusError) as caught:
        api.audio.transcriptions.create(model="whisper-1", file=("jfk.mp3", encode(jfk.path, "mp3", "libmp3lame", 16000)))
    assert caught.value.status_code == 413 and "longer than" in str(caught.value)
    short = clips(SHORT)[0]
    assert wer(short.text, api.audio.transcriptions.create(model="whisper-1", file=short.path.open("rb")).text) < 0.5


def test_an_upload_slower_than_the_limit_is_408_and_frees_its_slot(pod_factory):
    import socket

    slow = pod_factory("--upload-timeout-seconds", "1", "--max-file-jobs", "1")
    boundary = "voxfleetboundary"
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", slow.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\x00" * 1000)  # then nothing more
        answer = sock.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"upload_timeout"' in answer
    short = clips(SHORT)[0]  # the one file slot is free again
    assert wer(short.text, client(slow).audio.transcriptions.create(model="whisper-1",
                                                                  file=short.path.open("rb")).text) < 0.5
