"""The `voxfleet` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.devset import assert_file_as_accurate_as_offline, clips
from tests.integration.wire import open_session
from tests.speech import SENTENCES, conversation
from voxfleet.cli import bundled_sample

pytestmark = pytest.mark.integration


def voxfleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxfleet", *args], capture_output=True, text=True, timeout=timeout)


def test_transcribe_prints_the_transcript(pod):
    sentences = SENTENCES[22:24]
    path = conversation(sentences)
    done = voxfleet("transcribe", pod.url, str(path))
    assert done.returncode == 0, done.stderr
    assert_file_as_accurate_as_offline(path, " ".join(sentences), done.stdout)


def test_transcribe_file_api_uploads_and_prints_a_sentence_per_line(pod, tmp_path):
    jfk = clips("en_jfk_ask_not")[0]
    done = voxfleet("transcribe", pod.url, str(jfk.path), "--file-api")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) >= 2  # two sentences
    assert_file_as_accurate_as_offline(jfk.path, jfk.text, done.stdout)
    junk = tmp_path / "notes.mp3"
    junk.write_bytes(b"not audio" * 100)
    done = voxfleet("transcribe", pod.url, str(junk), "--file-api")
    assert done.returncode == 2 and "could not be decoded" in done.stderr and "Traceback" not in done.stderr


def test_transcribe_shows_partials_on_stderr_with_realtime(pod):
    done = voxfleet("transcribe", pod.url, str(conversation(SENTENCES[0:1])), "--realtime", "--partials")
    assert done.returncode == 0 and "…" in done.stderr and done.stdout.strip()
    assert "\033[" not in done.stderr  # a pipe gets one line per partial, no terminal escape codes


async def test_refusal_exits_nonzero_with_a_clear_message(pod_factory):
    pod = pod_factory("--max-sessions", "1")
    ws, _ = await open_session(pod.url)
    import asyncio

    done = await asyncio.to_thread(voxfleet, "transcribe", pod.url, str(bundled_sample()))
    await ws.close()
    assert done.returncode != 0 and "full" in done.stderr and "1013" in done.stderr, done.stderr


def test_unreachable_and_missing_file_exit_nonzero(tmp_path):
    done = voxfleet("transcribe", "ws://127.0.0.1:9", str(bundled_sample()), timeout=60)
    assert done.returncode != 0 and "voxfleet transcribe:" in done.stderr
    done = voxfleet("transcribe", "ws://127.0.0.1:9", str(tmp_path / "missing.wav"))
    assert done.returncode != 0 and "voxfleet transcribe:" in done.stderr


def test_bad_setting_in_environment_is_a_clear_error():
    done = subprocess.run([sys.executable, "-m", "voxfleet", "pod"], capture_output=True, text=True, timeout=30,
                          env={"VOXFLEET_POD_MAX_SESSIONS": "many", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "VOXFLEET_POD_MAX_SESSIONS" in done.stderr


def test_version():
    from voxfleet import __version__

    done = voxfleet("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"voxfleet {__version__}"


@pytest.mark.parametrize("url, hint", [("http://127.0.0.1:9", "ws://127.0.0.1:9"), ("127.0.0.1:9", "ws://host:port"),
                                       ("ftp://127.0.0.1:9", "ws://"), ("ws://", "names no host")])
def test_a_url_that_is_not_a_websocket_url_is_one_clear_line(url, hint):
    done = voxfleet("transcribe", url, str(bundled_sample()))
    assert done.returncode == 2 and hint in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_model_that_is_not_installed_is_one_clear_line(tmp_path):
    for model in ("small.en", str(tmp_path)):  # a name not in any cache; a directory with no model in it
        done = voxfleet("pod", "--port", "0", "--model", model, timeout=60)
        assert done.returncode == 2 and model in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "tiny.en" in done.stderr or "model.bin" in done.stderr


def test_a_busy_port_is_one_clear_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = voxfleet("pod", "--port", str(port), timeout=60)
    assert done.returncode == 2 and "address already in use" in done.stderr and "Traceback" not in done.stderr


def test_demo_transcribes_a_recording_of_a_person_and_shows_what_was_said():
    from voxfleet.cli import bundled_sample_text
    from voxfleet.up import free_port

    done = voxfleet("demo", "--port", str(free_port()), "--pods", "1", timeout=180)
    assert done.returncode == 0, done.stderr
    assert f"(what was said: {bundled_sample_text()})" in done.stderr
    assert_file_as_accurate_as_offline(bundled_sample(), bundled_sample_text(), done.stdout)


def test_demo_on_a_busy_port_says_so_instead_of_using_whoever_holds_it():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = voxfleet("demo", "--port", str(taken.getsockname()[1]), "--pods", "1", timeout=120)
    assert done.returncode == 1 and "in use" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not done.stdout.strip()  # nothing was transcribed


def test_an_invalid_setting_names_its_flag_and_its_environment_variable():
    done = voxfleet("pod", "--max-sessions", "-1")
    assert done.returncode == 2 and "--max-sessions" in done.stderr and "VOXFLEET_POD_MAX_SESSIONS" in done.stderr
    assert "Traceback" not in done.stderr
