"""A recorded file through the file lane: one upload to `POST /v1/audio/transcriptions`, text streamed back.

    async for delta in transcribe_upload("ws://127.0.0.1:8000", "meeting.m4a"):
        print(delta.text, delta.seconds, delta.duration)

What `voxfleet transcribe --file-api` uses. The file is sent as it is
(the server decodes it), and the answer is streamed (`stream=true`), so a
long file shows its text and progress as its windows are decoded. Any
OpenAI-compatible client works too; this one speaks voxfleet's URLs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from voxfleet.client import TranscriptionError
from voxfleet.openai_audio import TRANSCRIPTIONS_PATH


@dataclass(frozen=True)
class Delta:
    text: str  # follows the text before it (a leading space where one belongs)
    seconds: float | None  # how much of the file is transcribed, where the server says
    duration: float | None


def http_url(url: str) -> str:
    """The HTTP base of a ws:// or wss:// URL (pods and routers serve both on one port)."""
    scheme, _, rest = url.partition("://")
    return ("https" if scheme in ("wss", "https") else "http") + "://" + rest.split("/", 1)[0]


async def transcribe_upload(url: str, path: str | Path, api_key: str | None = None, language: str | None = None,
                            prompt: str | None = None, timeout: float = 3600.0) -> AsyncIterator[Delta]:
    """The transcript of the file at `path`, piece by piece; TranscriptionError with the server's reason."""
    import aiohttp

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such audio file: {path}")
    form = aiohttp.FormData()
    form.add_field("file", path.read_bytes(), filename=path.name)
    form.add_field("model", "whisper-1")
    form.add_field("stream", "true")
    for name, value in (("language", language), ("prompt", prompt)):
        if value:
            form.add_field(name, value)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.post(http_url(url) + TRANSCRIPTIONS_PATH, data=form, headers=headers) as response:
                if response.status != 200:
                    raise TranscriptionError("http", f"{response.status}: {_reason(await response.read())}")
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    event = json.loads(line[6:])
                    if event.get("type") == "transcript.text.delta":
                        progress = event.get("progress") or {}
                        yield Delta(event["delta"], progress.get("seconds"), progress.get("duration"))
                    elif event.get("type") == "error":
                        raise TranscriptionError("stream", _reason(line[6:]))
                    elif event.get("type") == "transcript.text.done":
                        return
                raise TranscriptionError("stream", "the server closed the stream before the transcript was done")
    except aiohttp.ClientError as exc:
        raise TranscriptionError("connection", f"{http_url(url)}: {exc}") from None


def _reason(body: bytes) -> str:
    """The message of an OpenAI-shaped error document, else the body itself."""
    try:
        error = json.loads(body)["error"]
        return error["message"] if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip()[:500]
