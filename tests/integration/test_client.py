"""The Python client and `voxfleet transcribe` with live audio, piped audio and any container PyAV reads."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.devset import assert_as_accurate_as_offline, clips
from tests.integration.proxy import CuttingProxy
from voxfleet.client import LiveAudio, TranscriptionError, read_audio, transcribe, transcribe_sync, transcript
from voxfleet.protocol import AudioFormat

pytestmark = pytest.mark.integration

CLIP = "en_jfk_ask_not"
LONG_CLIP = "en_mfa_acoustic_corpus"
"""27 s of spontaneous speech with pauses: long enough to be cut twice."""


def pcm16(name: str) -> bytes:
    data, _ = sf.read(str(clips(name)[0].path), dtype="int16")
    return data.astype("<i2").tobytes()


async def live_chunks(data: bytes, seed: int, realtime: bool = True):
    """The bytes in chunks of random sizes (torn samples included), at real-time pace like a microphone."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rng.randrange(1, 9000)
        yield data[pos : pos + size]
        pos += size
        if realtime:
            await asyncio.sleep(size / 2 / 16000)


async def test_live_audio_in_chunks_of_any_size_gives_the_words(pod):
    live = LiveAudio(AudioFormat(16000, "pcm16", 1), live_chunks(pcm16(CLIP), seed=1))
    results = [r async for r in transcribe(pod.url, live, partials=True)]
    assert any(not r.final for r in results), "no partial while the audio was live"
    assert_as_accurate_as_offline((CLIP,), " ".join(r.text for r in results if r.final))


async def test_live_audio_survives_connection_loss_without_losing_or_repeating_a_frame(pod_factory):
    pod = pod_factory()
    async with CuttingProxy(pod.port) as proxy:
        cutter = asyncio.create_task(proxy.cut_after(3.0, 4.0))
        live = LiveAudio(AudioFormat(16000, "pcm16", 1), live_chunks(pcm16(LONG_CLIP), seed=2))
        results = [r async for r in transcribe(proxy.url, live, backoff=0.1) if r.final]
        await cutter
        assert proxy.connections >= 3, "the connection was never cut"
    assert [r.segment_id for r in results] == list(range(len(results))), "a final was lost or repeated"
    assert_as_accurate_as_offline((LONG_CLIP,), " ".join(r.text for r in results))


async def test_a_failing_live_source_ends_the_session_with_a_clear_error(pod):
    async def broken():
        yield pcm16(CLIP)[:32000]
        raise OSError("microphone unplugged")

    with pytest.raises(TranscriptionError, match="microphone unplugged"):
        [r async for r in transcribe(pod.url, LiveAudio(AudioFormat(), broken()))]


def test_transcribe_reads_raw_audio_from_stdin(pod):
    done = subprocess.run([sys.executable, "-m", "voxfleet", "transcribe", pod.url, "-", "--rate", "16000"],
                          input=pcm16(CLIP), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert_as_accurate_as_offline((CLIP,), done.stdout.decode())


def test_bad_raw_audio_options_are_one_clear_line(pod):
    done = subprocess.run([sys.executable, "-m", "voxfleet", "transcribe", pod.url, "-", "--rate", "0"],
                          input=b"", capture_output=True, timeout=60)
    assert done.returncode == 2 and "--rate" in done.stderr.decode() and b"Traceback" not in done.stderr


def write_with_pyav(path, codec: str, samples: np.ndarray, rate: int = 16000) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32),
                                           format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


async def test_containers_libsndfile_cannot_read_go_through_pyav(pod, tmp_path):
    data, _ = sf.read(str(clips(CLIP)[0].path), dtype="float32")
    path = tmp_path / "jfk.m4a"
    write_with_pyav(path, "aac", data)
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(path))
    audio = read_audio(path)
    assert audio.format.encoding == "float32" and abs(audio.seconds - len(data) / 16000) < 0.2
    assert_as_accurate_as_offline((CLIP,), await transcript(pod.url, path))


def test_a_file_that_is_not_audio_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.m4a"
    path.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(ValueError, match="cannot read"):
        read_audio(path)


def test_the_synchronous_wrapper_for_scripts(pod):
    assert_as_accurate_as_offline((CLIP,), transcribe_sync(pod.url, clips(CLIP)[0].path))
