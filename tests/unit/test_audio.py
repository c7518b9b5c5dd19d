"""stt_pod.audio: wire audio to 16 kHz mono float32, validated."""

from __future__ import annotations

import numpy as np
import pytest

from stt_pod.audio import AudioDecoder
from voxfleet.protocol import MODEL_SAMPLE_RATE, AudioFormat, CloseCode, ErrorCode, ProtocolError


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def stream(decoder: AudioDecoder, payload: bytes, frame_bytes: int) -> np.ndarray:
    parts = [decoder.decode(payload[i:i + frame_bytes]) for i in range(0, len(payload), frame_bytes)]
    return np.concatenate(parts + [decoder.flush()])


def test_pcm16_is_scaled_to_plus_minus_one():
    d = AudioDecoder(AudioFormat(16_000, "pcm16", 1))
    out = d.decode(np.array([0, 16384, -16384, 32767, -32768], dtype="<i2").tobytes())
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -0.5, 32767 / 32768, -1.0])


def test_pcm16_is_little_endian():
    d = AudioDecoder(AudioFormat(16_000, "pcm16", 1))
    assert d.decode(b"\x00\x40")[0] == pytest.approx(0.5)  # 0x4000


def test_float32_passes_through():
    d = AudioDecoder(AudioFormat(16_000, "float32", 1))
    samples = np.array([0.0, 0.25, -0.75, 1.0], dtype="<f4")
    out = d.decode(samples.tobytes())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, samples)


def test_float32_out_of_range_is_clipped():
    d = AudioDecoder(AudioFormat(16_000, "float32", 1))
    np.testing.assert_array_equal(d.decode(np.array([3.0, -2.0], dtype="<f4").tobytes()), [1.0, -1.0])


def test_memoryview_payload_from_a_frame():
    d = AudioDecoder(AudioFormat(16_000, "pcm16", 1))
    frame = b"\x00\x00\x00\x07" + np.array([100, -100], dtype="<i2").tobytes()
    np.testing.assert_allclose(d.decode(memoryview(frame)[4:]), [100 / 32768, -100 / 32768])


def test_empty_payload_is_no_samples():
    assert len(AudioDecoder(AudioFormat(16_000, "pcm16", 1)).decode(b"")) == 0


@pytest.mark.parametrize("encoding, dtype", [("pcm16", "<i2"), ("float32", "<f4")])
def test_stereo_is_downmixed_to_the_mean(encoding, dtype):
    d = AudioDecoder(AudioFormat(16_000, encoding, 2))
    scale = 32768 if encoding == "pcm16" else 1
    left = np.array([0.5, 0.25, -0.5], dtype=np.float32)
    right = np.array([0.0, 0.25, 0.5], dtype=np.float32)
    interleaved = np.stack([left, right], axis=1).reshape(-1) * scale
    out = d.decode(interleaved.astype(dtype).tobytes())
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-4)


def test_four_channels_downmix():
    d = AudioDecoder(AudioFormat(16_000, "float32", 4))
    out = d.decode(np.array([0.4, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype="<f4").tobytes())
    np.testing.assert_allclose(out, [0.1, 1.0])


def test_16k_needs_no_flush():
    d = AudioDecoder(AudioFormat(16_000, "float32", 1))
    d.decode(np.zeros(100, dtype="<f4").tobytes())
    assert len(d.flush()) == 0


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("encoding", ["pcm16", "float32"])
def test_resampling_gives_the_model_rate(rate, encoding):
    seconds = 1.3
    x = sine(440, rate, seconds)
    payload = (x * 32767).astype("<i2").tobytes() if encoding == "pcm16" else x.astype("<f4").tobytes()
    d = AudioDecoder(AudioFormat(rate, encoding, 1))
    # ragged frames (a tenth of a second, rounded to whole samples) as a client sends them
    width = 2 if encoding == "pcm16" else 4
    out = stream(d, payload, int(rate * 0.1) * width)
    expected = len(x) * MODEL_SAMPLE_RATE / rate
    assert out.dtype == np.float32
    assert abs(len(out) - expected) <= 1
    assert peak_frequency(out, MODEL_SAMPLE_RATE) == pytest.approx(440, abs=2)
    # the level survives too (no gain or loss in the passband)
    middle = out[len(out) // 4: 3 * len(out) // 4]
    assert np.sqrt(np.mean(middle ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_without_flush_the_output_is_short_by_at_most_the_resampler_delay():
    d = AudioDecoder(AudioFormat(48_000, "float32", 1))
    x = sine(300, 48_000, 1.0)
    got = sum(len(d.decode(x[i:i + 4800].tobytes())) for i in range(0, len(x), 4800))
    tail = len(d.flush())
    assert got + tail == 16_000
    assert 0 < tail < 16_000 * 0.05  # a few ms of filter delay, not a buffer of audio


def test_resampling_is_continuous_across_frames():
    """One stream in many small frames equals the same audio in one frame."""
    x = sine(1000, 44_100, 0.5)
    whole = stream(AudioDecoder(AudioFormat(44_100, "float32", 1)), x.tobytes(), len(x) * 4)
    framed = stream(AudioDecoder(AudioFormat(44_100, "float32", 1)), x.tobytes(), 441 * 4)
    assert len(whole) == len(framed)
    np.testing.assert_allclose(framed, whole, atol=1e-4)


def test_stereo_at_48k_is_downmixed_then_resampled():
    left = sine(440, 48_000, 0.5)
    right = sine(440, 48_000, 0.5)
    d = AudioDecoder(AudioFormat(48_000, "float32", 2))
    out = stream(d, np.stack([left, right], axis=1).reshape(-1).tobytes(), 4800 * 8)
    assert abs(len(out) - 8000) <= 1
    assert peak_frequency(out, MODEL_SAMPLE_RATE) == pytest.approx(440, abs=2)


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, size", [
    (AudioFormat(16_000, "pcm16", 1), 3),
    (AudioFormat(16_000, "pcm16", 2), 6),
    (AudioFormat(16_000, "float32", 1), 6),
    (AudioFormat(16_000, "float32", 2), 12),
    (AudioFormat(44_100, "pcm16", 1), 1),
])
def test_misaligned_payload_is_invalid_data(fmt, size):
    with pytest.raises(ProtocolError) as info:
        AudioDecoder(fmt).decode(b"\x00" * size)
    assert info.value.close_code == CloseCode.INVALID_DATA
    assert info.value.code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("channels", [1, 2])
def test_non_finite_floats_are_invalid_data(bad, channels):
    samples = np.zeros(8, dtype="<f4")
    samples[5] = bad
    with pytest.raises(ProtocolError) as info:
        AudioDecoder(AudioFormat(16_000, "float32", channels)).decode(samples.tobytes())
    assert info.value.close_code == CloseCode.INVALID_DATA


def test_check_refuses_a_misaligned_payload_without_decoding_anything():
    d = AudioDecoder(AudioFormat(16_000, "float32", 2))
    d.check(b"\x00" * 16)  # two whole stereo samples
    with pytest.raises(ProtocolError) as info:
        d.check(memoryview(b"\x00" * 12))
    assert (info.value.code, info.value.close_code) == (ErrorCode.BAD_FRAME, CloseCode.INVALID_DATA)


def test_a_bad_frame_does_not_spoil_the_stream():
    d = AudioDecoder(AudioFormat(8_000, "float32", 1))
    x = sine(440, 8_000, 0.5)
    first = d.decode(x[:2000].tobytes())
    with pytest.raises(ProtocolError):
        d.decode(np.full(10, np.nan, dtype="<f4").tobytes())
    rest = d.decode(x[2000:].tobytes())
    out = np.concatenate([first, rest, d.flush()])
    assert abs(len(out) - 8000) <= 1
    assert np.all(np.isfinite(out))
