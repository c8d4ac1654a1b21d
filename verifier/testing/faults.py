"""A TCP proxy on 127.0.0.1 that can be cut and restored: real network faults for tests.

Not production code. Put it between the service and Redis or PostgreSQL to show what an
outage does (``cut()`` closes every connection and refuses new ones; ``restore()`` accepts
again), without stopping the shared server itself::

    async with TcpProxy("127.0.0.1", 6379) as proxy:   # listens on 127.0.0.1:proxy.port
        ... redis://127.0.0.1:{proxy.port}/15 ...
        proxy.cut(); ...; proxy.restore()

``lose_reply(marker)`` is the nastier fault: the next reply from the target that contains
``marker`` is not delivered and the connections are cut, as when the network fails after a
server committed a write and before its acknowledgement arrived. New connections are
accepted again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:``port`` (ephemeral) to ``target_host``:``target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._up = True
        self._lose: bytes | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Close every proxied connection; refuse new ones until :meth:`restore`."""
        self._up = False
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        self._up = True

    def lose_reply(self, marker: bytes) -> None:
        """Cut every connection instead of delivering the next reply holding ``marker``
        within one read (once; the proxy stays up)."""
        self._lose = marker

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, reply=False)),
            asyncio.create_task(self._pipe(up_reader, writer, reply=True)),
        ]
        self._pipes.update(tasks)
        for task in tasks:
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, reply: bool
    ) -> None:
        try:
            while self._up:
                data = await reader.read(65536)
                if not data:
                    break
                if reply and self._lose is not None and self._lose in data:
                    self._lose = None
                    for each in list(self._writers):
                        each.close()
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()
