"""A bare native-protocol client for tests that must send what a good client never would."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxfleet import protocol as p


def pcm16_frames(path, seconds: float = 0.1) -> list[bytes]:
    data, rate = sf.read(str(path), dtype="int16")
    assert rate == 16000 and data.ndim == 1
    step = int(rate * seconds)
    return [data[i : i + step].astype("<i2").tobytes() for i in range(0, len(data), step)]


def start(**fields) -> str:
    return p.encode({"type": "start", "sample_rate": 16000, "encoding": "pcm16", "channels": 1, **fields})


async def collect(ws, timeout: float = 60) -> tuple[list[dict], int | None]:
    """Every message until the server closes, and its close code."""
    messages = []
    try:
        async with asyncio.timeout(timeout):
            async for raw in ws:
                messages.append(json.loads(raw))
    except ConnectionClosed:
        pass
    await ws.wait_closed()
    return messages, ws.close_code


def finals_text(messages: list[dict]) -> str:
    return " ".join(m["text"] for m in messages if m["type"] == "final")


def errors(messages: list[dict]) -> list[str]:
    return [m["code"] for m in messages if m["type"] == "error"]


async def open_session(url: str, **start_fields):
    ws = await connect(url, max_size=None)
    await ws.send(start(**start_fields))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws, ready


def silence(seconds: float) -> bytes:
    return np.zeros(int(16000 * seconds), dtype="<i2").tobytes()
