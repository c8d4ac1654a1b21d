"""The fast lane for ``POST /stir/v1/verification``: what switches send for every call.

aiohttp's request machinery (request and response objects, router, middleware, stream
reader and writer) costs more per call than the verification's own Python work. This
module serves the one hot request shape without it, and hands everything else to aiohttp,
which stays the server of record:

- :class:`FastProtocol` is the protocol of every accepted connection. While a connection
  sends nothing but plain ``POST /stir/v1/verification`` HTTP/1.1 requests, it recognises
  them (a strict subset of HTTP/1.1, below), answers them through the same
  :data:`Answer` function as the aiohttp handler, and writes the response itself.
- The first request it does not recognise (another path or method, a query string,
  chunked encoding, an unusual header, a body over the limit, HTTP/1.0...) hands
  the connection to aiohttp for good: aiohttp's own protocol gets the connection and every
  byte not yet answered, so it parses, refuses (411, 413, 415...) and answers as it always
  does. Nothing is parsed twice; no request is answered by both.

Recognised, and nothing else: the request line exactly ``POST /stir/v1/verification
HTTP/1.1``; header names that are RFC 9110 tokens, values of visible ASCII, space and tab,
at most 8 KiB of headers; ``Content-Length`` once, 1-8 digits, not 0, within the body limit;
no ``Transfer-Encoding`` or ``Upgrade``; ``Content-Type`` ``application/json`` (parameters
allowed); ``Connection`` absent, ``keep-alive`` or ``close``; ``Expect`` absent or
``100-continue`` (answered ``100 Continue`` while the body is awaited); no header that the
answer depends on (Content-Type, Accept, Authorization, X-RequestID, Connection, Expect)
twice.
A request that is recognised is answered exactly as aiohttp's handler answers it (a test
compares the two, request by request).

Requests on one connection are answered one at a time, in order (pipelined requests wait
in the buffer). A connection idle for :data:`KEEPALIVE` seconds is closed, as aiohttp does;
so is one that has not completed a request in that time (a partial request dribbled in a
byte at a time keeps no connection open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

__all__ = ["KEEPALIVE", "Answer", "FastFront", "FastSite", "Headers"]

log = logging.getLogger(__name__)

KEEPALIVE = 75.0
"""Seconds an idle connection is kept (aiohttp's default keep-alive timeout)."""
_MAX_HEAD = 8190
_REQUEST_LINE = b"POST /stir/v1/verification HTTP/1.1\r\n"
_LINE = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e]*"  # an RFC 9110 token, ":", the value
_BLOCK = re.compile(_LINE + rb"(?:\r\n" + _LINE + rb")*")
_SINGLE = frozenset(
    {"content-length", "content-type", "accept", "authorization"}
    | {"x-requestid", "connection", "expect"}
)
_REFUSED = frozenset({"transfer-encoding", "upgrade"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SERVER = b"Server: " + SERVER_SOFTWARE.encode("ascii") + b"\r\n"
_REASONS = (
    {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden"}
    | {404: b"Not Found", 406: b"Not Acceptable", 413: b"Request Entity Too Large"}
    | {415: b"Unsupported Media Type", 500: b"Internal Server Error", 503: b"Service Unavailable"}
)


def _head(status: int) -> bytes:
    """An answer's status line and fixed headers, up to the Content-Length value."""
    reason = _REASONS.get(status, b"Unknown")
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: " % (
        status,
        reason,
    )


_OK_HEAD = _head(200)

Headers = dict[str, str]
"""A recognised request's headers: lower-case names (each at most once) to values."""
Answer = Callable[[bytes, Headers], Awaitable[tuple[int, bytes, list[tuple[str, str]]]]]
"""``answer(body, headers)`` -> (status, JSON body, extra headers), never raising."""
Accepts = Callable[[Headers], bool]
"""Whether aiohttp's handler would take these headers without refusing (Accept, token)."""


class FastFront:
    """What the fast connections of one application share: the answer, the limits, the
    list of connections (for shutdown and the idle sweep) and the Date header."""

    def __init__(
        self, answer: Answer, accepts: Accepts, *, body_limit: int, keepalive: float = KEEPALIVE
    ) -> None:
        self.answer = answer
        self.keepalive = keepalive
        self.accepts = accepts
        self.body_limit = body_limit
        self.connections: set[FastProtocol] = set()
        self.closing = False
        self.handed_over = 0
        """Connections given to aiohttp (a figure for tests and curiosity)."""
        self._date_second = -1
        self._date = b""
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True).encode("ascii")
        return self._date

    def protocol_factory(self, server: web.Server) -> Callable[[], FastProtocol]:
        return lambda: FastProtocol(self, server)

    def added(self, conn: FastProtocol) -> None:
        self.connections.add(conn)
        if self._sweeper is None and not self.closing:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.keepalive / 5, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - self.keepalive
        for conn in list(self.connections):
            if not conn.busy and conn.last_active < deadline:
                conn.close()
        if self.connections and not self.closing:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.keepalive / 5, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop taking requests: close idle connections now, the others once their request
        is answered (within ``grace`` seconds, then they are closed anyway)."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        if any(c.busy for c in self.connections):
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace)
        for conn in list(self.connections):
            conn.close()

    def answered(self) -> None:
        """A connection finished a request (while closing: maybe the last one)."""
        if self._drained is not None and not any(c.busy for c in self.connections):
            self._drained.set()


class FastProtocol(asyncio.Protocol):
    """One connection: served here while its requests are the hot shape, else by aiohttp."""

    __slots__ = (
        "_buffer",
        "_eof",
        "_front",
        "_head",
        "_held",
        "_inner",
        "_server",
        "_task",
        "_transport",
        "_write_paused",
        "busy",
        "last_active",
    )

    def __init__(self, front: FastFront, server: web.Server) -> None:
        self._front = front
        self._server = server
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.busy = False
        self._held = False
        self._eof = False
        self._head: tuple[Headers, int] | None = None
        """The head of the request whose body is still arriving: its headers, and where
        the request ends in the buffer."""
        self._write_paused = False
        self._task: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._front.closing:
            transport.close()
            return
        self._front.added(self)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._buffer += data
        if not self.busy:
            self._serve()
        elif len(self._buffer) > self._front.body_limit + _MAX_HEAD and self._transport:
            # Pipelined requests pile up behind a slow one: read no more until it is done.
            self._held = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        # The client will send no more: answer what is in flight, then close.
        self._eof = True
        return True if self.busy else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.connections.discard(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
        self._transport = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()
        elif self._transport is not None:
            self._write_paused = True
            self._transport.pause_reading()  # a client that does not read gets no more

    def resume_writing(self) -> None:
        if self._write_paused and self._transport is not None:
            self._write_paused = False
            self._transport.resume_reading()  # also after a hand-over: aiohttp never paused
        if self._inner is not None:
            self._inner.resume_writing()

    # -- serving ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._inner is None and self._transport is not None:
            self._transport.close()

    def _serve(self) -> None:
        """Answer the request at the head of the buffer when it is complete and ours; hand
        the connection to aiohttp when it is not ours."""
        buffer = self._buffer
        if not buffer:
            return
        head = bytes(buffer[: len(_REQUEST_LINE)])
        if not _REQUEST_LINE.startswith(head):
            self._hand_over()
            return
        end = buffer.find(b"\r\n\r\n", 0, _MAX_HEAD + 4)
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                self._hand_over()
            return
        if self._head is None:
            headers = _headers(bytes(buffer[len(_REQUEST_LINE) : end]))
            if headers is None or not self._front.accepts(headers):
                self._hand_over()
                return
            length = headers.get("content-length", "")
            if not (0 < len(length) <= 8 and length.isdigit()):
                self._hand_over()
                return
            size = int(length)
            if not 0 < size <= self._front.body_limit:
                self._hand_over()
                return
            self._head = (headers, end + 4 + size)
            if "expect" in headers and len(buffer) < end + 4 + size and self._transport:
                self._transport.write(_CONTINUE)  # the client waits for this before the body
        headers, stop = self._head
        if len(buffer) < stop:
            return  # the rest of the body is on its way (the head is judged once)
        self._head = None
        body = bytes(buffer[end + 4 : stop])
        del buffer[:stop]
        self.busy = True
        self._task = asyncio.get_running_loop().create_task(self._respond(body, headers))

    async def _respond(self, body: bytes, headers: Headers) -> None:
        try:
            status, payload, extra = await self._front.answer(body, headers)
        except asyncio.CancelledError:  # pragma: no cover - the loop is closing
            self.busy = False
            raise
        transport = self._transport
        keep = headers.get("connection", "").lower() != "close" and not self._front.closing
        if transport is not None and not transport.is_closing():
            head = _OK_HEAD if status == 200 else _head(status)
            tail = b"".join([f"{k}: {v}\r\n".encode("latin-1") for k, v in extra])
            if not keep:
                tail += b"Connection: close\r\n"
            transport.write(
                b"%s%d\r\nDate: %s\r\n%s%s\r\n%s"
                % (head, len(payload), self._front.date(), _SERVER, tail, payload)
            )
            if not keep:
                transport.close()
        self.busy = False
        self.last_active = time.monotonic()
        if self._held and self._transport is not None:
            self._held = False
            self._transport.resume_reading()
        if keep and self._transport is not None:
            self._serve()
            if self._eof and not self.busy and self._inner is None:
                self._transport.close()  # the client sent its last request (half-close)
        elif self._front.closing:
            self._front.answered()

    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, from the first unanswered byte."""
        transport = self._transport
        if transport is None:
            return
        self._front.connections.discard(self)
        self._front.handed_over += 1
        inner = self._server()
        self._inner = inner
        inner.connection_made(transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            inner.data_received(data)


def _headers(block: bytes) -> Headers | None:
    """The header lines of a request (after the request line), or None when anything in
    them is outside what the fast lane takes."""
    # One match proves every line a token, a colon and a value of visible ASCII, space and
    # tab (no obs-fold, bare CR or LF, NUL): the first colon of a line ends its name.
    if _BLOCK.fullmatch(block) is None:
        return None  # also no header at all (no Content-Length)
    headers: Headers = {}
    for line in block.decode("ascii").split("\r\n"):
        name, _, value = line.partition(":")
        key = name.lower()
        if key in _REFUSED or (key in headers and key in _SINGLE):
            return None
        headers[key] = value.strip(" \t")
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        return None
    if headers.get("connection", "keep-alive").lower() not in ("keep-alive", "close"):
        return None
    if headers.get("expect", "100-continue").lower() != "100-continue":
        return None  # an expectation we cannot meet: aiohttp answers 417
    return headers


class FastSite(web.TCPSite):
    """A TCP site whose connections start in the fast lane (see the module docstring)."""

    def __init__(self, runner: web.AppRunner, front: FastFront, *args: Any, **kwargs: Any) -> None:
        super().__init__(runner, *args, **kwargs)
        self._front = front

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        if server is None:  # pragma: no cover - the runner is set up before its sites
            raise RuntimeError("the runner is not set up")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._front.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:  # pragma: no cover - a TCP server always has its socket
            self._bound_port = self._port
