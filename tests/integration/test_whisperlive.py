"""The real WhisperLive client (PyPI whisper-live 0.10.0), unchanged, against a real pod.

The client comes from scripts/install-whisperlive-client.sh; its `pyaudio` import is
served by a stub (tests/whisperlive_stubs/) that only these tests put on sys.path.
The client is synchronous (websocket-client in a thread, busy-wait loops), so each
run of it goes through `in_thread`, which bounds it: a hang fails, it never blocks.
Exact message shapes, bad input, WAIT and drain are checked with a raw WebSocket.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.devset import assert_as_accurate_as_offline, clips
from tests.speech import SENTENCES, VOICES, conversation, wer, words
from voxfleet import protocol as p
from voxfleet.client import transcript

pytestmark = pytest.mark.integration

STUBS = Path(__file__).resolve().parents[1] / "whisperlive_stubs"
WER_BOUND = 0.35
"""tiny.en streams these voices at ~0.15-0.25 WER; the bound catches broken streaming, not accent."""
RECALL_BOUND = 0.5
"""Share of a sentence's own words that must arrive: a lost sentence scores ~0."""
SENTENCE_WER_BOUND = 0.5
"""One short sentence varies more than a conversation (4 words of 11 wrong happen)."""
TIME = re.compile(r"^\d+\.\d{3}$")


@pytest.fixture(scope="module")
def wl():
    """whisper_live.client, imported with the pyaudio stub ahead on sys.path."""
    sys.path.insert(0, str(STUBS))
    try:
        try:
            return importlib.import_module("whisper_live.client")
        except ImportError as exc:
            pytest.skip(f"WhisperLive client not installed ({exc}): run scripts/install-whisperlive-client.sh")
    finally:
        sys.path.remove(str(STUBS))


def in_thread(fn, timeout: float):
    """Run a blocking client call in a daemon thread; fail if it outlives `timeout`."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test below
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"the WhisperLive client did not finish within {timeout:g} s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def float_audio(path: Path, drop_tail_seconds: float = 0.0) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float32")
    assert rate == p.MODEL_SAMPLE_RATE and data.ndim == 1
    return data[: len(data) - int(drop_tail_seconds * rate)]


def recall(sentence: str, others: list[str], text: str) -> float:
    """Share of the words only `sentence` has (among the script's) that `text` contains."""
    own = set(words(sentence)) - set().union(*(set(words(o)) for o in others))
    return len(own & set(words(text))) / max(1, len(own))


def stream(wl, port: int, audio: np.ndarray, speed: float, chunk: int = 4096):
    """StreamingTranscriptionClient: send float32 frames at `speed` x real time, END_OF_AUDIO, wait for the close."""
    client = wl.StreamingTranscriptionClient("127.0.0.1", port, lang="en", model="tiny.en")
    client.connect()
    for i in range(0, len(audio), chunk):
        client.send(audio[i : i + chunk].tobytes(), pcm_format="float32")
        time.sleep(chunk / p.MODEL_SAMPLE_RATE / speed)
    started = time.monotonic()
    client.close(timeout=30)
    return client, time.monotonic() - started


def metric(pod, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"{pod.http}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? ([0-9.e+-]+)$", re.M)
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0


def options(**extra) -> dict:
    """The options message whisper-live 0.10.0's Client sends (client.py, on_open)."""
    return {"uid": str(uuid.uuid4()), "language": "en", "task": "transcribe", "model": "tiny.en", "use_vad": True,
            "send_last_n_segments": 10, "no_speech_thresh": 0.45, "clip_audio": False, "same_output_threshold": 10,
            "enable_translation": False, "target_language": "fr", "hotwords": None, "enable_diarization": False,
            "max_speakers": 10, "known_speakers": [], "word_timestamps": False, "initial_prompt": None,
            "vad_parameters": None, **extra}


async def receive_until_closed(ws) -> list[dict]:
    messages = []
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
    except ConnectionClosed:  # a close other than 1000: the test reads ws.close_code
        pass
    return messages


# --- the real client, end to end -------------------------------------------------


def test_transcription_client_end_to_end(wl, pod, tmp_path, monkeypatch):
    sentences = SENTENCES[:3]
    audio = conversation(sentences)
    monkeypatch.chdir(tmp_path)  # the client writes its resampled copy of the file to the working folder
    client = wl.TranscriptionClient("127.0.0.1", pod.port, lang="en", model="tiny.en", log_transcription=False,
                                    mute_audio_playback=True, output_transcription_path=str(tmp_path / "out.srt"))
    # After the file the client busy-waits until no new text came for this long (15 s by default).
    client.client.disconnect_if_no_response_for = 4
    text = in_thread(lambda: client(str(audio)), timeout=120)

    assert client.client.server_backend == "faster_whisper"
    assert wer(" ".join(sentences), text) <= WER_BOUND, text
    for i, sentence in enumerate(sentences):
        assert recall(sentence, sentences[:i] + sentences[i + 1 :], text) >= RECALL_BOUND, (sentence, text)
    spoken = [s for s in client.client.transcript if s["text"].strip()]
    assert spoken and all(s["completed"] for s in spoken), spoken
    assert all(TIME.match(s["start"]) and TIME.match(s["end"]) for s in spoken), spoken
    assert all(float(a["end"]) <= float(b["start"]) for a, b in zip(spoken, spoken[1:])), "segments overlap"
    assert (tmp_path / "out.srt").read_text().strip()


def speech_only(path: Path) -> np.ndarray:
    """The clip up to its last speech (by the pod's own VAD) and a few chunks more: no trailing silence."""
    from stt_pod.vad import CHUNK, StreamingVad

    audio = float_audio(path)
    speech = np.flatnonzero(StreamingVad().feed(audio) >= 0.35)
    return audio[: min(len(audio), (speech[-1] + 4) * CHUNK)]


@pytest.mark.parametrize("name", ["en_jfk_ask_not", "en_arctic_awb_a0007"])
def test_end_of_audio_flushes_every_word_before_the_close(wl, pod, name):
    # No trailing silence: the last utterance is still open when END_OF_AUDIO comes,
    # so only the flush at END_OF_AUDIO can make it final. Both clips start with "And".
    [clip] = clips(name)
    audio = speech_only(clip.path)
    client, closing = in_thread(lambda: stream(wl, pod.port, audio, speed=3.0), timeout=120)

    text = " ".join(s["text"] for s in client.transcript)
    assert client._client._server_disconnect, "no DISCONNECT before the close"
    assert closing < 20, f"the pod took {closing:.1f} s to flush and close"
    said, expected = words(text), words(clip.text)
    assert said[:1] == expected[:1] and said[-1:] == expected[-1:], (text, clip.text)  # first and last word
    assert_as_accurate_as_offline((name,), text)
    assert client.last_partial is None or not client.last_partial["text"], "a partial was left after the end"


async def test_native_and_whisperlive_sessions_share_a_pod(wl, pod):
    scripts = [SENTENCES[6:8], SENTENCES[8:10]]
    files = [conversation(scripts[0], VOICES[0]), conversation(scripts[1], VOICES[2])]
    before = {proto: metric(pod, "voxfleet_pod_sessions_total", protocol=proto) for proto in ("native", "whisperlive")}
    audio = float_audio(files[1])
    native, (client, _) = await asyncio.gather(
        transcript(pod.url, files[0], realtime=True),
        asyncio.to_thread(in_thread, lambda: stream(wl, pod.port, audio, speed=1.0), 120),
    )
    texts = [native, " ".join(s["text"] for s in client.transcript)]
    for i, (script, text) in enumerate(zip(scripts, texts)):
        assert wer(" ".join(script), text) <= WER_BOUND, (i, text)
        others = set(words(" ".join(scripts[1 - i]))) - set(words(" ".join(script)))
        leaked = set(words(text)) & others
        assert len(leaked) <= 1, f"session {i} heard the other session's words: {leaked}"
    for proto in ("native", "whisperlive"):
        assert metric(pod, "voxfleet_pod_sessions_total", protocol=proto) == before[proto] + 1, proto


# --- the wire, exactly -------------------------------------------------------------


async def test_message_shapes(pod):
    sentence = SENTENCES[10]
    audio = float_audio(conversation([sentence]))
    opts = options(send_last_n_segments=2)
    async with connect(pod.url, max_size=None) as ws:
        await ws.send(json.dumps(opts))
        assert json.loads(await ws.recv()) == {"uid": opts["uid"], "message": "SERVER_READY", "backend": "faster_whisper"}
        for i in range(0, len(audio), 4096):
            await ws.send(audio[i : i + 4096].tobytes())
        await ws.send(b"END_OF_AUDIO")
        messages = await receive_until_closed(ws)
        assert ws.close_code == 1000
    assert messages[-1] == {"uid": opts["uid"], "message": "DISCONNECT"}
    lists = [m for m in messages[:-1]]
    assert lists and all(set(m) == {"uid", "segments"} and m["uid"] == opts["uid"] for m in lists), lists
    for m in lists:
        for seg in m["segments"]:
            assert list(seg) == ["start", "end", "text", "completed"], seg
            assert TIME.match(seg["start"]) and TIME.match(seg["end"]) and isinstance(seg["completed"], bool), seg
        assert all(s["completed"] for s in m["segments"][:-1]), "only the last segment may be in progress"
    last = lists[-1]["segments"]
    assert last[-1]["completed"] is False and last[-1]["text"] == "", "the end leaves nothing in progress"
    text = " ".join(s["text"] for s in last if s["completed"])
    assert wer(sentence, text) <= SENTENCE_WER_BOUND, text


async def test_bad_input_gets_error_and_close_code(pod):
    good = float_audio(conversation([SENTENCES[11]]))[: 3 * 16000]
    cases = [
        (b"\x00" * 6, 1007, "bytes is not a whole number"),
        (np.array([0.1, np.nan, 0.2], dtype=np.float32).tobytes(), 1007, "NaN"),
        ("hello", 1008, "END_OF_AUDIO"),
    ]
    for bad, code, says in cases:
        opts = options()
        async with connect(pod.url, max_size=None) as ws:
            await ws.send(json.dumps(opts))
            assert json.loads(await ws.recv())["message"] == "SERVER_READY"
            for i in range(0, len(good), 4096):
                await ws.send(good[i : i + 4096].tobytes())
            await ws.send(bad)
            messages = await receive_until_closed(ws)
        assert ws.close_code == code, (bad, ws.close_code, messages)
        errors = [m for m in messages if m.get("status") == "ERROR"]
        assert len(errors) == 1 and says in errors[0]["message"] and errors[0]["uid"] == opts["uid"], messages
        assert messages[-1] == {"uid": opts["uid"], "message": "DISCONNECT"}
        assert "segments" in messages[-3], "the accepted audio's segments come before the error"

    opts = options(audio_format="uint8")
    async with connect(pod.url) as ws:
        await ws.send(json.dumps(opts))
        messages = await receive_until_closed(ws)
    assert ws.close_code == 1003
    assert messages == [{"uid": opts["uid"], "status": "ERROR", "message": messages[0]["message"]}]
    assert "uint8" in messages[0]["message"]
    # The pod took all that in its stride.
    assert urllib.request.urlopen(f"{pod.http}/readyz", timeout=5).status == 200
    text = await transcript(pod.url, conversation([SENTENCES[11]]))
    assert wer(SENTENCES[11], text) <= SENTENCE_WER_BOUND, text


# --- no room: WAIT -----------------------------------------------------------------


async def _wait_idle(pod, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while json.loads(urllib.request.urlopen(f"{pod.http}/status", timeout=5).read())["active_sessions"]:
        assert time.monotonic() < deadline, "sessions still open"
        await asyncio.sleep(0.05)


async def _hold_native_slot(pod):
    ws = await connect(pod.url)
    await ws.send(p.encode(p.start_message(p.Start(p.AudioFormat(16000, "pcm16", 1)))))
    assert json.loads(await ws.recv())["type"] == "ready"
    return ws


async def test_full_pod_answers_wait(wl, pod_factory):
    pod = pod_factory("--max-sessions", "1")
    holder = await _hold_native_slot(pod)
    try:
        opts = options()
        async with connect(pod.url) as ws:
            await ws.send(json.dumps(opts))
            messages = await receive_until_closed(ws)
        assert ws.close_code == 1000
        assert len(messages) == 1 and set(messages[0]) == {"uid", "status", "message"}, messages
        assert messages[0]["uid"] == opts["uid"] and messages[0]["status"] == "WAIT"
        assert isinstance(messages[0]["message"], (int, float)) and messages[0]["message"] >= 0

        # The real client sees it as WhisperLive's "server is full".
        client = wl.StreamingTranscriptionClient("127.0.0.1", pod.port, lang="en", model="tiny.en", ready_timeout=20)
        with pytest.raises(RuntimeError, match="full"):
            await asyncio.to_thread(in_thread, client.connect, 30)
        assert metric(pod, "voxfleet_pod_refusals_total", reason="full") >= 2
    finally:
        await holder.send(p.encode(p.END))
        await holder.wait_closed()
    await _wait_idle(pod)

    # The slot is shared by both protocols: free again, the WhisperLive client gets in.
    audio = float_audio(conversation([SENTENCES[12]]))
    client, _ = await asyncio.to_thread(in_thread, lambda: stream(wl, pod.port, audio, speed=4.0), 60)
    text = " ".join(s["text"] for s in client.transcript)
    assert wer(SENTENCES[12], text) <= SENTENCE_WER_BOUND, text


async def test_draining_pod_answers_wait_and_flushes_its_sessions(pod_factory):
    pod = pod_factory("--max-sessions", "4", "--drain-timeout-seconds", "5")
    audio = float_audio(conversation([SENTENCES[13]]), drop_tail_seconds=0.8)
    opts = options()
    async with connect(pod.url, max_size=None) as active:
        await active.send(json.dumps(opts))
        assert json.loads(await active.recv())["message"] == "SERVER_READY"
        for i in range(0, len(audio), 4096):
            await active.send(audio[i : i + 4096].tobytes())
        pod.process.send_signal(signal.SIGTERM)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{pod.http}/readyz", timeout=5)
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                break
            await asyncio.sleep(0.05)
        async with connect(pod.url) as late:
            waiting = options()
            await late.send(json.dumps(waiting))
            assert await receive_until_closed(late) == [{"uid": waiting["uid"], "status": "WAIT", "message": 0.0}]
        assert late.close_code == 1000
        # Its drain timeout over, the active session gets every word, a warning, DISCONNECT, close 1001.
        messages = await receive_until_closed(active)
    assert active.close_code == 1001
    assert messages[-1] == {"uid": opts["uid"], "message": "DISCONNECT"}
    assert messages[-2]["status"] == "WARNING"
    final = messages[-3]["segments"]
    text = " ".join(s["text"] for s in final if s["completed"])
    assert wer(SENTENCES[13], text) <= SENTENCE_WER_BOUND, text
    assert pod.process.wait(30) == 0, pod.log_text()
