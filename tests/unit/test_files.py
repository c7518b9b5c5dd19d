"""stt_pod.files: uploads decoded with PyAV, and speech grouped into windows the model can hear."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile

from stt_pod.files import TAIL_SECONDS, decode_upload, keep_words, plan_chapters
from stt_pod.words import Word
from voxfleet.openai_audio import RequestError

SR = 16000


def test_chapters_cover_the_file_and_cut_in_the_longest_nearby_pause():
    speech = [(0, 90), (100, 190), (230, 290), (300, 390), (395, 500), (560, 700)]
    chapters = plan_chapters(700, speech, chapter_samples=200)
    assert chapters[0][0] == 0 and chapters[-1][1] == 700
    assert all(a[1] == b[0] for a, b in zip(chapters, chapters[1:]))  # no gap, no overlap
    assert chapters[0] == (0, 210)  # the 40-sample pause after 190, not the 10-sample one after 290
    for _, cut in chapters[:-1]:
        assert not any(s < cut < e for s, e in speech)  # never inside speech


def test_a_short_file_or_one_without_pauses_is_one_chapter():
    assert plan_chapters(250, [(0, 250)], chapter_samples=200) == [(0, 250)]
    assert plan_chapters(5000, [(0, 5000)], chapter_samples=200) == [(0, 5000)]


def w(text: str, start: float, end: float) -> Word:
    return Word(text, start, end)


def test_a_cut_window_hands_its_tail_words_to_the_next_window():
    words = [w(" one", 1.0, 2.0), w(" two", 27.5, 28.5), w(" thr", 29.2, 30.0)]
    kept, advance = keep_words(words, 30.0, last=False)
    assert kept == words[:2] and advance == 28.5
    kept, advance = keep_words(words, 30.0, last=True)  # the file's end: nothing comes after
    assert kept == words


def test_a_window_with_nothing_complete_moves_on_to_its_tail():
    kept, advance = keep_words([w(" long", 29.5, 30.0)], 30.0, last=False)
    assert kept == [] and advance == 30.0 - TAIL_SECONDS
    assert keep_words([], 30.0, last=False) == ([], 30.0 - TAIL_SECONDS)


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


async def test_windows_follow_each_other_without_losing_or_repeating_a_word():
    """A fake model that hears a word every 1.5 s of the file (named by its time) and drops cut words."""
    import asyncio

    from stt_pod.files import transcribe_file

    seen: list = []

    def submit(key, job, priority):
        seen.append(job)
        words = []
        t = math.ceil(job.start / SR / 1.5) * 1.5
        while t + 0.5 <= job.end / SR:
            words.append(Word(f" w{t:g}", t - job.start / SR, t + 0.5 - job.start / SR))
            t += 1.5
        future = asyncio.get_running_loop().create_future()
        future.set_result(words)
        return future

    samples = 200 * SR
    chapters = [(0, 95 * SR), (95 * SR, samples)]
    text = []
    async for result in transcribe_file(submit, np.zeros(samples, dtype=np.float32), chapters, "hotwords"):
        text += [w.word.strip() for s in result.segments for w in s.words]
    expected = [f"w{i * 1.5:g}" for i in range(int(200 / 1.5) + 1) if i * 1.5 + 0.5 <= 200]
    assert text == expected
    assert all(job.prompt == "hotwords" and job.final for job in seen)
    assert any(job.previous.endswith(" w28.5") for job in seen)  # the next window hears the text before it


def test_only_windows_without_a_voice_or_any_sound_count_as_silent():
    from stt_pod.files import VAD_CHUNK, silent

    quiet = np.zeros(10 * VAD_CHUNK, dtype=np.float32)
    whisper = (0.01 * np.sin(np.arange(10 * VAD_CHUNK) / 3)).astype(np.float32)  # -40 dBFS
    unlikely, likely = np.full(10, 0.1, dtype=np.float32), np.full(10, 0.1, dtype=np.float32)
    likely[4] = 0.6
    assert silent(unlikely, quiet, 0, len(quiet))
    assert not silent(unlikely, whisper, 0, len(whisper))  # the VAD may rate a whisper low: its sound counts
    assert not silent(likely, quiet, 0, len(quiet))
    assert not silent(None, quiet, 0, len(quiet))  # no VAD: every window is decoded


def test_a_word_stretched_over_skipped_speech_does_not_move_the_next_window_past_it():
    from stt_pod.files import MAX_WORD_SECONDS

    kept, advance = keep_words([w(" 2.", 0.5, 23.2)], 30.0, last=False)  # greedy decoding said only "2."
    assert advance == 0.5 + MAX_WORD_SECONDS
    assert kept[0].end == 0.5 + MAX_WORD_SECONDS  # and its time is told as a word's, not as 22 s
