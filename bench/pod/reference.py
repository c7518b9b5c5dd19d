"""Each stream's offline WER: how hard its voice and text are for the model, load aside.

Streams differ in voice (VOICES cycle with the stream index), and tiny.en
hears some espeak voices worse than others, so the mean WER at N streams
moves with the voices in the mix even with no load at all. The headline
therefore compares each stream's streaming WER with the same model
transcribing the same file offline (faster-whisper, beam 5, English, whole
file at once), and asks whether that excess grows with N. Runs in this
process, before any server is timed.
"""

from __future__ import annotations

from workload import StreamScript

from tests.speech import wer


def offline_wers(scripts: list[StreamScript], model_path: str, compute_type: str = "int8") -> list[float]:
    from faster_whisper import WhisperModel

    model = WhisperModel(model_path, device="cpu", compute_type=compute_type)
    out = []
    for script in scripts:
        segments, _ = model.transcribe(str(script.path), language="en", beam_size=5)
        out.append(wer(script.text, " ".join(s.text.strip() for s in segments)))
    return out
