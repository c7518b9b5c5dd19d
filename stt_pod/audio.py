"""Turns a session's wire audio into what the model hears: 16 kHz mono float32.

One `AudioDecoder` per session, because resampling is stateful across frames
(soxr's streaming resampler keeps its filter history, so frame edges do not
click). It validates sizes but never trusts them: a misaligned frame is a
`ProtocolError`, not a crash.
"""

from __future__ import annotations

import numpy as np
import soxr

from voxfleet.protocol import MODEL_SAMPLE_RATE, AudioFormat, CloseCode, ErrorCode, ProtocolError

_DTYPES = {"pcm16": np.dtype("<i2"), "float32": np.dtype("<f4")}


class AudioDecoder:
    def __init__(self, fmt: AudioFormat):
        self.format = fmt
        self._dtype = _DTYPES[fmt.encoding]
        self._resampler = (
            soxr.ResampleStream(fmt.sample_rate, MODEL_SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if fmt.sample_rate != MODEL_SAMPLE_RATE
            else None
        )

    def check(self, payload: bytes | memoryview) -> None:
        """Reject a payload that is not whole samples, before it is queued."""
        if len(payload) % self.format.bytes_per_frame:
            raise ProtocolError(
                ErrorCode.BAD_FRAME,
                f"{len(payload)} bytes is not a whole number of {self.format.encoding} "
                f"samples for {self.format.channels} channel(s)",
                CloseCode.INVALID_DATA,
            )

    def decode(self, payload: bytes | memoryview) -> np.ndarray:
        """Samples of one frame, at the model's rate, mono."""
        self.check(payload)
        samples = np.frombuffer(payload, dtype=self._dtype)
        if self.format.encoding == "pcm16":
            samples = samples.astype(np.float32) / 32768.0
        else:
            samples = samples.astype(np.float32)
            if not np.all(np.isfinite(samples)):
                raise ProtocolError(ErrorCode.BAD_FRAME, "float32 audio contains NaN or infinity", CloseCode.INVALID_DATA)
        if self.format.channels > 1:
            samples = samples.reshape(-1, self.format.channels).mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return np.clip(samples, -1.0, 1.0)

    def flush(self) -> np.ndarray:
        """The resampler's tail at end of audio."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
