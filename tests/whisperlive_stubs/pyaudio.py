"""A stand-in for PyAudio, so the real WhisperLive client imports and runs without audio devices.

`whisper_live.client` imports `pyaudio` at module level and opens a stream when a
client is built. The tests stream files, never a microphone or speakers; this module
plays the part of a silent sound card that keeps real time (a write or read of N
frames takes N / rate seconds, as a device would), so the client's pacing is unchanged.
Only tests put its folder on sys.path; it is never installed.
"""

from __future__ import annotations

import time

paInt8, paInt16, paInt24, paInt32, paFloat32 = 16, 8, 4, 2, 1
_WIDTH = {paInt8: 1, paInt16: 2, paInt24: 3, paInt32: 4, paFloat32: 4}


class Stream:
    def __init__(self, format: int = paInt16, channels: int = 1, rate: int = 16000, **_):
        self._frame_bytes = _WIDTH.get(format, 2) * channels
        self._rate = rate
        self._open = True

    def write(self, frames: bytes, *_, **__) -> None:
        time.sleep(len(frames) / self._frame_bytes / self._rate)

    def read(self, num_frames: int, *_, **__) -> bytes:
        time.sleep(num_frames / self._rate)
        return bytes(num_frames * self._frame_bytes)

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        self._open = False

    def is_active(self) -> bool:
        return self._open


class PyAudio:
    def open(self, *args, **kwargs) -> Stream:
        return Stream(*args, **kwargs)

    def get_format_from_width(self, width: int, unsigned: bool = True) -> int:
        return {1: paInt8, 2: paInt16, 3: paInt24, 4: paFloat32}[width]

    def get_sample_size(self, format: int) -> int:
        return _WIDTH[format]

    def terminate(self) -> None:
        pass
