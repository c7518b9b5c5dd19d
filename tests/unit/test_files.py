"""stt_pod.files: uploads decoded with PyAV, and speech grouped into windows the model can hear."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from stt_pod.files import decode_upload, plan_windows
from voxfleet.openai_audio import RequestError

SR = 16000


def test_spans_are_grouped_into_windows_up_to_the_limit():
    spans = [(0, 100), (150, 300), (400, 900), (950, 1000)]
    assert plan_windows(spans, max_samples=500) == [(0, 300), (400, 900), (950, 1000)]
    assert plan_windows(spans, max_samples=10_000) == [(0, 1000)]
    assert plan_windows([], max_samples=500) == []


def test_a_span_longer_than_a_window_is_cut_into_windows():
    assert plan_windows([(0, 50), (100, 1200)], max_samples=500) == [(0, 50), (100, 600), (600, 1100), (1100, 1200)]
    for start, end in plan_windows([(7, 9999)], max_samples=1000):
        assert end - start <= 1000


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    data = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    soundfile.write(out, data, rate, format=fmt)
    return out.getvalue()


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("rate, channels, fmt", [(16000, 1, "WAV"), (44100, 2, "WAV"), (8000, 1, "FLAC")])
def test_any_rate_and_layout_becomes_16k_mono(rate, channels, fmt):
    audio = decode_upload(wav_bytes(tone(2.0, rate), rate, channels, fmt), max_seconds=60)
    assert audio.dtype == np.float32
    assert abs(len(audio) - 2 * SR) < SR // 50
    assert 0.3 < np.abs(audio).max() <= 1.0


def test_undecodable_bytes_are_400_with_the_decoders_reason():
    with pytest.raises(RequestError) as caught:
        decode_upload(b"this is not audio at all" * 100, max_seconds=60)
    assert caught.value.status == 400 and "could not be decoded" in caught.value.message


def test_audio_over_the_duration_limit_is_413():
    with pytest.raises(RequestError) as caught:
        decode_upload(wav_bytes(tone(3.0, SR), SR), max_seconds=1.0)
    assert caught.value.status == 413 and caught.value.code == "audio_too_long"
