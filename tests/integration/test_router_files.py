"""The router's file endpoint with real pods, real router processes, the real model and the `openai` client.

Loopback only; no assertion on timing; every wait is an event or a poll with
a deadline. Pods are killed with SIGKILL mid-job to check that the client
still gets one complete answer.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile

from stt_router.apikeys import hash_key
from tests.devset import CLIP_MARGIN, clips, offline_file, reference_text, wer
from tests.integration.conftest import ServerProcess, start_pod, start_server
from tests.integration.pod_http import http_get
from voxfleet.protocol import MODEL_SAMPLE_RATE as SR

pytestmark = pytest.mark.integration

KEY = "file-key-" + uuid.uuid4().hex
CLIP = "en_jfk_ask_not"
TALK = ("en_jfk_ask_not", "en_librivox_sonnet001", "en_mfa_acoustic_corpus", "en_arctic_a0009")
"""Four voices, about 100 s with pauses: several windows, so a stream has several deltas."""
LONG = ("en_librivox_sonnet001", "en_librivox_sonnet002", "en_mfa_acoustic_corpus", "en_librivox_sonnet003",
        "en_mfa_cold_corpus")
"""About 215 s: long enough that a job is still running when its pod is seen working on it and killed."""


def concatenate(folder: Path, name: str, names: tuple[str, ...]) -> Path:
    """The clips in one 16 kHz WAV, a second of silence between them."""
    parts = []
    for clip in clips(*names):
        audio, rate = soundfile.read(clip.path, dtype="float32")
        assert rate == SR
        parts += [audio, np.zeros(SR, dtype=np.float32)]
    path = folder / f"{name}.wav"
    soundfile.write(path, np.concatenate(parts), SR)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("router-files")
    return {"talk": concatenate(folder, "talk", TALK), "long": concatenate(folder, "long", LONG)}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys"
    path.write_text(f"acme {hash_key(KEY)} 4 normal\n")
    return path


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    """Two pods that stay up for the tests that kill none."""
    folder = tmp_path_factory.mktemp("file-pods")
    started = [start_pod(folder, "--pod-id", f"file-pod-{i}", "--max-sessions", "2") for i in range(2)]
    yield started
    for pod in started:
        pod.stop(30)


@pytest.fixture
def router_factory(tmp_path, keys_file):
    started: list[ServerProcess] = []

    def make(pods: list[ServerProcess], *args: str) -> ServerProcess:
        router = start_server(tmp_path, "router", "--pods", ",".join(pod.url for pod in pods), "--api-keys",
                              str(keys_file), "--status-interval-seconds", "0.25", *args, ready_seconds=30)
        started.append(router)
        return router

    yield make
    for router in started:
        router.stop(10)


@pytest.fixture
def router(pods, router_factory) -> ServerProcess:
    return router_factory(pods)


def client(server: ServerProcess, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http}/v1", api_key=key, max_retries=0)


def status(server: ServerProcess) -> dict:
    code, body = http_get(f"{server.http}/status")
    assert code == 200, body
    return json.loads(body)


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    _, text = http_get(f"{server.http}/metrics")
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + " ") or line.startswith(name + "{")) and \
                all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


def until(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout:g} s")
        time.sleep(0.05)
    return value


def working(pods: list[ServerProcess]) -> ServerProcess | None:
    """The pod transcribing a file now, if any."""
    for pod in pods:
        if pod.process.poll() is None and status(pod).get("file_jobs", 0) > 0:
            return pod
    return None


def relaying(router: ServerProcess, pods: list[ServerProcess]) -> ServerProcess | None:
    """The pod the router has a file job on now, if any."""
    by_url = {pod.url: pod for pod in pods}
    return next((by_url[p["url"]] for p in status(router)["pods"] if p["router_file_jobs"] > 0), None)


def post(server: ServerProcess, path: Path, headers: dict[str, str], **fields: str) -> tuple[int, str, bytes]:
    """A multipart POST without the SDK: (status, Content-Type, body)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{server.http}/v1/audio/transcriptions", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **headers})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def assert_near_offline(path: Path, reference: str, text: str, margin: float = CLIP_MARGIN) -> None:
    got, floor = wer(reference, text), wer(reference, offline_file(path))
    assert got <= floor + margin, f"WER {got:.3f} > offline {floor:.3f} + {margin}: {text!r}"


# --- answers through the router ------------------------------------------------------


def test_the_openai_client_gets_a_clip_transcribed_through_the_router(router):
    clip = clips(CLIP)[0]
    result = client(router).audio.transcriptions.create(model="whisper-1", file=clip.path.open("rb"))
    assert_near_offline(clip.path, clip.text, result.text)
    assert metric(router, "voxfleet_router_file_jobs_total", reason="done") == 1
    assert metric(router, "voxfleet_router_file_upload_bytes_count") == 1


def test_a_streamed_transcription_relays_every_event(router, files):
    events = list(client(router).audio.transcriptions.create(model="whisper-1", file=files["talk"].open("rb"),
                                                              stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done"
    assert len(deltas) >= 2, "a file of several windows streams more than one delta"
    assert "".join(deltas) == events[-1].text
    assert_near_offline(files["talk"], reference_text(*TALK), events[-1].text)


def test_the_pods_status_content_type_and_body_are_relayed(router):
    clip = clips(CLIP)[0]
    code, content_type, body = post(router, clip.path, {"X-API-Key": KEY}, model="whisper-1", response_format="srt")
    assert code == 200 and content_type.startswith("application/x-subrip"), (code, content_type, body)
    assert body.startswith(b"1\n00:00:0")
    code, content_type, body = post(router, clip.path, {"X-API-Key": KEY}, response_format="nonsense")
    assert code == 400 and content_type == "application/json"
    assert json.loads(body)["error"]["param"] == "response_format"  # the pod's own answer


# --- keys ---------------------------------------------------------------------------


def test_a_missing_or_wrong_key_is_refused_before_any_pod_is_asked(router, pods):
    clip = clips(CLIP)[0]
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(router, "not-the-key").audio.transcriptions.create(model="whisper-1", file=clip.path.open("rb"))
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as missing:
        client(router).audio.transcriptions.create(model="whisper-1", file=clip.path.open("rb"),
                                                   extra_headers={"Authorization": openai.Omit()})
    assert missing.value.code == "invalid_api_key"
    code, _, body = post(router, clip.path, {})
    assert code == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert metric(router, "voxfleet_router_file_jobs_total", reason="unauthorized") == 3
    assert metric(router, "voxfleet_router_file_upload_bytes_count") == 0


def test_a_keyless_router_takes_anonymous_files(pods, tmp_path):
    router = start_server(tmp_path, "router", "--pods", ",".join(p.url for p in pods), "--anonymous",
                          ready_seconds=30)
    try:
        clip = clips(CLIP)[0]
        code, _, body = post(router, clip.path, {})
        assert code == 200, body
        assert wer(clip.text, json.loads(body)["text"]) <= wer(clip.text, offline_file(clip.path)) + CLIP_MARGIN
    finally:
        router.stop(10)


# --- limits -------------------------------------------------------------------------


def test_an_upload_over_the_routers_limit_gets_413(pods, router_factory):
    router = router_factory(pods, "--max-upload-bytes", "1000")
    with pytest.raises(openai.APIStatusError) as refused:
        client(router).audio.transcriptions.create(model="whisper-1", file=clips(CLIP)[0].path.open("rb"))
    assert refused.value.status_code == 413 and refused.value.code == "file_too_large"
    assert metric(router, "voxfleet_router_file_jobs_total", reason="too_large") == 1


def test_jobs_wait_for_a_file_slot_and_a_full_file_queue_gets_429(router_factory, tmp_path, files):
    pod = start_pod(tmp_path, "--pod-id", "one-slot", "--max-file-jobs", "1", "--max-sessions", "1")
    try:
        router = router_factory([pod], "--max-file-queue", "1")
        results: dict[str, object] = {}

        def run(name: str, path: Path) -> None:
            try:
                results[name] = client(router).audio.transcriptions.create(model="whisper-1", file=path.open("rb"))
            except Exception as exc:  # noqa: BLE001 - the test reads it below
                results[name] = exc

        first = threading.Thread(target=run, args=("first", files["long"]))
        first.start()
        until(lambda: status(router)["file_jobs"] == 1, what="the first job on the pod")
        second = threading.Thread(target=run, args=("second", clips(CLIP)[0].path))
        second.start()
        until(lambda: status(router)["file_jobs_queued"] == 1, what="the second job in the file queue")
        with pytest.raises(openai.RateLimitError) as full:
            client(router).audio.transcriptions.create(model="whisper-1", file=clips(CLIP)[0].path.open("rb"))
        assert full.value.code == "queue_full"
        first.join(300)
        second.join(300)
        assert not isinstance(results["first"], Exception), results["first"]
        assert not isinstance(results["second"], Exception), results["second"]
        assert_near_offline(clips(CLIP)[0].path, clips(CLIP)[0].text, results["second"].text)
        assert metric(router, "voxfleet_router_file_jobs_total", reason="done") == 2
        assert metric(router, "voxfleet_router_file_jobs_total", reason="queue_full") == 1
        assert metric(router, "voxfleet_router_file_jobs_queued") == 0
    finally:
        pod.stop(30)


# --- failover -----------------------------------------------------------------------


@pytest.fixture
def doomed_pods(tmp_path):
    """Two pods of which a test kills one. One window per model call: a stream's deltas come one by one (with
    batches of 8, the windows of LONG would be decoded together and its deltas come all at once)."""
    started = [start_pod(tmp_path, "--pod-id", f"doomed-{i}", "--max-sessions", "2", "--max-batch", "1")
               for i in range(2)]
    yield started
    for pod in started:
        pod.stop(10)


def test_a_job_whose_pod_is_killed_is_answered_by_another_pod(doomed_pods, router_factory, files):
    router = router_factory(doomed_pods)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["ok"] = client(router).audio.transcriptions.create(model="whisper-1", file=files["long"].open("rb"))
        except Exception as exc:  # noqa: BLE001 - the test reads it below
            result["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    victim = until(lambda: working(doomed_pods), what="a pod transcribing the file")
    victim.process.kill()
    job.join(300)
    assert "error" not in result, result.get("error")
    assert_near_offline(files["long"], reference_text(*LONG), result["ok"].text)
    assert metric(router, "voxfleet_router_file_retries_total", reason="failed") == 1
    assert metric(router, "voxfleet_router_file_jobs_total", reason="done") == 1


def test_a_stream_whose_pod_is_killed_goes_on_from_another_pod_without_repeats(doomed_pods, router_factory, files):
    router = router_factory(doomed_pods)
    stream = client(router).audio.transcriptions.create(model="whisper-1", file=files["long"].open("rb"), stream=True)
    events = []
    for event in stream:
        events.append(event)
        if len(events) == 1:
            assert event.type == "transcript.text.delta"
            victim = until(lambda: relaying(router, doomed_pods), what="the pod streaming the file")
            victim.process.kill()
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events].count("transcript.text.done") == 1 and events[-1].type == "transcript.text.done"
    reference = reference_text(*LONG)
    assert_near_offline(files["long"], reference, events[-1].text)
    joined = "".join(deltas)
    assert_near_offline(files["long"], reference, joined)
    # The deltas the client had were not sent again: the first (a whole window, a seventh of the words)
    # appears once, and the deltas say what the done event says, within a word or two.
    assert joined.count(deltas[0].strip()) == 1
    assert wer(events[-1].text, joined) < 0.05, (joined, events[-1].text)
    assert metric(router, "voxfleet_router_file_retries_total", reason="failed") == 1


def test_a_job_whose_pod_hangs_fails_over_when_its_status_polls_fail(doomed_pods, router_factory, files):
    router = router_factory(doomed_pods, "--status-timeout-seconds", "0.5")
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["ok"] = client(router).audio.transcriptions.create(model="whisper-1", file=files["long"].open("rb"))
        except Exception as exc:  # noqa: BLE001 - the test reads it below
            result["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    victim = until(lambda: working(doomed_pods), what="a pod transcribing the file")
    victim.process.send_signal(signal.SIGSTOP)  # alive, connection open, answering nothing
    try:
        job.join(300)
    finally:
        victim.process.send_signal(signal.SIGCONT)
    assert "error" not in result, result.get("error")
    assert_near_offline(files["long"], reference_text(*LONG), result["ok"].text)
    assert metric(router, "voxfleet_router_file_retries_total", reason="failed") == 1


def test_a_client_that_leaves_mid_job_frees_the_pods_file_slot(pods, router, files):
    import http.client

    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + files["long"].read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=60)
    connection.request("POST", "/v1/audio/transcriptions", body=body,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "X-API-Key": KEY})
    until(lambda: working(pods), what="a pod transcribing the file")
    connection.close()  # before any answer: the router cancels the pod's request, whose slot frees
    until(lambda: metric(router, "voxfleet_router_file_jobs_total", reason="client_gone") == 1, what="client_gone")
    until(lambda: status(router)["file_jobs"] == 0 and not working(pods), what="every file slot free again")
    assert sum(metric(pod, "voxfleet_pod_file_jobs_total", reason="client_gone") for pod in pods) >= 1


def test_a_draining_router_finishes_its_file_jobs_and_refuses_new_ones(pods, router, files):
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["ok"] = client(router).audio.transcriptions.create(model="whisper-1", file=files["long"].open("rb"))
        except Exception as exc:  # noqa: BLE001 - the test reads it below
            result["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    until(lambda: status(router)["file_jobs"] == 1, what="the job on a pod")
    router.process.send_signal(signal.SIGTERM)
    until(lambda: status(router)["draining"], what="the router draining")
    with pytest.raises(openai.InternalServerError) as refused:
        client(router).audio.transcriptions.create(model="whisper-1", file=clips(CLIP)[0].path.open("rb"))
    assert refused.value.status_code == 503 and refused.value.code == "draining"
    job.join(300)
    assert "error" not in result, result.get("error")
    assert_near_offline(files["long"], reference_text(*LONG), result["ok"].text)
    assert router.process.wait(60) == 0
