"""A TCP proxy on loopback that can cut every connection, as a flaky network would."""

from __future__ import annotations

import asyncio


class CuttingProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def __aenter__(self) -> "CuttingProxy":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.cut()
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def cut_after(self, *delays: float) -> None:
        """Cut every connection after each delay in turn (seconds, each from the cut before)."""
        for delay in delays:
            await asyncio.sleep(delay)
            self.cut()

    def cut(self) -> None:
        """Drop every open connection without a close handshake (TCP reset)."""
        for a, b in self._pairs:
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._pairs.append((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort() if dst.transport else None

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
