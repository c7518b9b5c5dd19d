"""Reading an OpenAI transcription request's multipart form, bounded in size and time.

Pods and routers both take the upload whole (a pod decodes it, a router
keeps it to send again when a pod fails), so both refuse the same way: 400
for a request that is not a form with a file, 413 over the size limit, 408
for a client that sends its upload slower than the time limit allows (a
slow sender must not hold a connection and its buffer for ever).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from voxfleet.openai_audio import RequestError

FORM_OVERHEAD_BYTES = 64 << 10
"""Room for the form's other fields and multipart headers beside the file itself."""


@dataclass
class Upload:
    data: bytes
    filename: str
    content_type: str
    fields: list[tuple[str, str]]  # every text field in order; `timestamp_granularities[]` may repeat

    def field(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.fields if k == name), default)

    def values(self, *names: str) -> list[str]:
        return [v for k, v in self.fields if k in names]

    @property
    def stream(self) -> bool:
        """Whether the client asked for server-sent events (`stream=true`)."""
        return self.field("stream", "false").strip().lower() in ("true", "1")


async def read_upload(request: web.Request, max_bytes: int, timeout: float) -> Upload:
    """The form's file and fields, or RequestError (400, 408, 413) in OpenAI's shape."""
    too_large = RequestError(413, f"the upload is larger than this server's limit of {max_bytes} bytes", "file",
                             "file_too_large")
    if not request.content_type.startswith("multipart/form-data"):
        raise RequestError(400, "send the audio as multipart/form-data with a 'file' field", "file")
    if request.content_length is not None and request.content_length > max_bytes + FORM_OVERHEAD_BYTES:
        raise too_large  # said up front: not read at all
    try:
        post = await asyncio.wait_for(request.post(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the upload took longer than this server's limit of {timeout:g} s",
                           code="upload_timeout") from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except ValueError as exc:
        raise RequestError(400, f"the form could not be read: {exc}") from None
    upload = post.get("file")
    if upload is None or isinstance(upload, str) or not hasattr(upload, "file"):
        raise RequestError(400, "the form has no 'file' upload", "file")
    data = upload.file.read()
    upload.file.close()
    if len(data) > max_bytes:
        raise too_large
    fields = [(k, v) for k, v in post.items() if isinstance(v, str)]
    return Upload(data, upload.filename or "upload", upload.content_type or "application/octet-stream", fields)


def client_max_size(max_bytes: int) -> int:
    """aiohttp's `client_max_size` for an app taking uploads of `max_bytes`."""
    return max_bytes + FORM_OVERHEAD_BYTES
