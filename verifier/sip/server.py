"""The SIP listeners (UDP and TCP) and their server transactions (RFC 3261 section 17.2).

INVITE: verified by the :class:`~verifier.service.Service` the HTTP API uses, answered 302
(or the policy's 603/608); the final response is kept per transaction, so a retransmitted
INVITE gets it again without a second verification, and over UDP it is retransmitted
(Timer G) until the ACK or Timer H. OPTIONS: 200. ACK: absorbed. CANCEL: 200 while its
INVITE transaction is held (a 487 for the INVITE if it is still being verified), 481 when
there is none. Over ``max_message``: 513 when the start can be read. Other methods: 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import re
import secrets
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self, cast

from prometheus_client import Counter as PromCounter

from ..core.sip import SipError, invite_from_headers
from ..core.verify import CallInfo
from ..service import Service, VerifyRequest
from .config import SipSettings
from .message import (
    BadRequest,
    Dropped,
    Oversize,
    Request,
    ack_key,
    frame,
    parse_request,
    readable_head,
    response,
)
from .redirect import verdict_answer

__all__ = ["RECEIVE_BUFFER", "T1", "T2", "TIMER_H", "SipServer"]

log = logging.getLogger(__name__)

T1 = 0.5
"""RFC 3261 round-trip estimate: the first retransmission interval (Timer G)."""
T2 = 4.0
"""The longest retransmission interval."""
TIMER_H = 64 * T1
"""How long a final response waits for its ACK (32 s)."""
TIMER_I = 5.0
"""How long an acknowledged UDP transaction absorbs retransmitted ACKs (T4)."""
RECEIVE_BUFFER = 4 * 1024 * 1024
"""SO_RCVBUF asked for each UDP listener (the kernel caps it at net.core.rmem_max)."""
TICK = 0.05
"""The timer wheel's resolution: Timers G, H and I fire up to this late."""
ALLOW = "INVITE, ACK, CANCEL, OPTIONS"
JUDGED_SOURCES = 4096
"""Source hosts whose allow verdict is remembered (then forgotten all at once)."""
_URI = re.compile(r"(?:sips?|tel):[^<>\"\s]+", re.IGNORECASE)

Send = Callable[[bytes], None]


@dataclass(slots=True, eq=False)
class _Transaction:
    """One INVITE server transaction, keyed by the top Via's branch and sent-by."""

    key: tuple[str, str]
    send: Send
    udp: bool
    to_tag: str
    final: bytes | None = None
    cancelled: bool = False
    acked: bool = False
    slot: int = 0
    """The timer wheel's slot it waits in for Timer G, H or I (0: none)."""
    interval: float = T1
    """Timer G's next interval."""
    ends: float = 0.0
    """Timer H: the end of waiting for the ACK."""


class SipServer:
    """The SIP front end of ``service``; ``async with`` opens the listeners and closes them.

    ``stats`` counts what is not a verification: ``denied`` (source not allowed),
    ``dropped`` (unreadable), ``bad`` (answered 400), ``oversize``, ``retransmissions``;
    the service's metrics have them as ``verifier_sip_messages_total{kind}`` (one server per
    :class:`~verifier.metrics.Metrics`: the counter is registered there).
    """

    def __init__(self, service: Service, settings: SipSettings, *, reuse_port: bool = False):
        self.service = service
        self.settings = settings
        self.reuse_port = reuse_port
        self.stats: Counter[str] = Counter()
        self._counter = PromCounter(
            "verifier_sip_messages",
            "SIP messages not verified (denied, dropped, bad, oversize) and INVITE retransmissions",
            ["kind"],
            registry=service.metrics.registry,
        )
        self._latency = service.metrics.latency.labels("sip_redirect")
        self.addresses: list[tuple[str, str, int]] = []
        """(transport, host, port) of each listener once open (the port 0 picked)."""
        self._allow = [ipaddress.ip_network(c, strict=False) for c in settings.allow]
        self._judged: dict[str, bool] = {}
        """Source host -> allowed: a datagram's source is judged once, not parsed each time."""
        self._transactions: OrderedDict[tuple[str, str], _Transaction] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closers: list[Callable[[], None]] = []
        self._servers: list[asyncio.Server] = []
        self._ids = itertools.count(1)
        self._prefix = f"sip-{secrets.token_hex(4)}-"
        self._tags = itertools.count(1)
        self._tag_prefix = secrets.token_hex(4)
        # One timer for every transaction (a wheel of TICK slots, one asyncio timer armed for
        # its earliest slot), not one per transaction: slot -> the transactions due in it.
        self._wheel: dict[int, dict[_Transaction, None]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._armed = 0
        self._sweeping = False

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        try:
            for where in self.settings.listeners():
                if where.transport == "udp":
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Datagrams(self),
                        local_addr=(where.host, where.port),
                        reuse_port=self.reuse_port or None,
                    )
                    self._closers.append(transport.close)
                    # A burst (a switch's retransmissions, a busy hour) queues, not drops.
                    transport.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER
                    )
                    port = transport.get_extra_info("sockname")[1]
                else:
                    server = await loop.create_server(
                        lambda: _Stream(self),
                        where.host,
                        where.port,
                        reuse_port=self.reuse_port or None,
                    )
                    self._servers.append(server)
                    port = server.sockets[0].getsockname()[1]
                self.addresses.append((where.transport, where.host, port))
        except BaseException:
            await self.close()
            raise
        log.info("sip_listening", extra={"listen": [f"{t}:{h}:{p}" for t, h, p in self.addresses]})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, let verifications in flight answer, forget the transactions."""
        for server in self._servers:
            server.close()
        for closer in self._closers:
            closer()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._closers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._wheel.clear()
        self._transactions.clear()

    def count(self, kind: str) -> None:
        self.stats[kind] += 1
        self._counter.labels(kind).inc()

    @property
    def transactions(self) -> int:
        """INVITE server transactions held now (at most ``max_transactions``)."""
        return len(self._transactions)

    async def settled(self) -> None:
        """Return once the verifications in flight have answered."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- receiving ------------------------------------------------------------------------

    def allowed(self, host: str) -> bool:
        verdict = self._judged.get(host)
        if verdict is None:
            if len(self._judged) >= JUDGED_SOURCES:
                self._judged.clear()  # a flood of sources costs their judging again, not memory
            verdict = self._judged[host] = self._judge(host)
        return verdict

    def _judge(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allow)

    def receive(self, data: bytes, source: tuple[str, int], send: Send, *, udp: bool) -> None:
        """Handle one message; nothing it contains raises out of here."""
        if len(data) > self.settings.max_message:
            self.oversize(data, source, send)
            return
        key = ack_key(data)
        if key is not None and self._ack(key):
            return  # the ACK of a final response held: nothing else in it is read
        try:
            request = parse_request(data, stream=not udp)
        except BadRequest as exc:
            self.count("bad")
            if exc.request.method != "ACK":  # an ACK is never answered (RFC 3261 17.1.1.1)
                warning = [("Warning", _warning(exc.reason))]
                self._answer(exc.request, 400, "Bad Request", send, source, warning)
            return
        except Dropped as exc:
            self.count("dropped")
            log.debug("sip_dropped", extra={"why": str(exc), "source": source[0]})
            return
        method = request.method
        if method == "INVITE":
            self._invite(request, source, send, udp=udp)
        elif method == "ACK":
            self._ack((request.branch, request.sent_by))
        elif method == "CANCEL":
            self._cancel(request, source, send)
        elif method == "OPTIONS":
            self._answer(
                request, 200, "OK", send, source, [("Allow", ALLOW), ("Accept", "application/sdp")]
            )
        else:
            self._answer(request, 405, "Method Not Allowed", send, source, [("Allow", ALLOW)])

    def oversize(self, data: bytes | bytearray, source: tuple[str, int], send: Send) -> None:
        """Count a message over ``max_message``; answer it ``513 Message Too Large`` when
        its start (Via, From, To, Call-ID) can be read, statelessly."""
        self.count("oversize")
        request = readable_head(data, self.settings.max_message)
        if request is not None and request.method != "ACK":
            self._answer(request, 513, "Message Too Large", send, source, [])

    def _answer(
        self,
        request: Request,
        code: int,
        text: str,
        send: Send,
        source: tuple[str, int],
        headers: list[tuple[str, str]],
        to_tag: str = "",
    ) -> bytes:
        data = response(
            request,
            code,
            text,
            headers,
            to_tag=to_tag or self._tag(),
            received=source[0],
            source_port=source[1],
        )
        send(data)
        return data

    # -- INVITE server transactions -------------------------------------------------------

    def _invite(self, request: Request, source: tuple[str, int], send: Send, *, udp: bool) -> None:
        key = (request.branch, request.sent_by)
        txn = self._transactions.get(key)
        if txn is not None:
            self.count("retransmissions")
            if txn.final is not None:
                send(txn.final)
            else:
                self._answer(request, 100, "Trying", send, source, [])
            return
        txn = _Transaction(key=key, send=send, udp=udp, to_tag=self._tag())
        self._remember(txn)
        if not _URI.fullmatch(request.ruri):
            self._final(
                txn,
                self._answer(request, 416, "Unsupported URI Scheme", send, source, [], txn.to_tag),
            )
            return
        try:
            sip = invite_from_headers(request.method, request.ruri, request.headers)
            item = VerifyRequest(
                identity=sip.identity,
                call=CallInfo(from_=sip.from_, pai=sip.calling_pai(), to=sip.to, ruri=sip.ruri),
                date=sip.date_epoch(),
            )
        except SipError as exc:
            self.count("bad")
            self._final(
                txn,
                self._answer(
                    request,
                    400,
                    "Bad Request",
                    send,
                    source,
                    [("Warning", _warning(str(exc)))],
                    txn.to_tag,
                ),
            )
            return
        task = asyncio.create_task(self._verify(txn, request, item, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _verify(
        self, txn: _Transaction, request: Request, item: VerifyRequest, source: tuple[str, int]
    ) -> None:
        started = time.perf_counter()
        service = self.service
        headers: list[tuple[str, str]]
        try:
            outcome = await service.verify(item, "sip_redirect", f"{self._prefix}{next(self._ids)}")
        except Exception:  # a verification never raises by contract; a bug gets a 500
            log.exception("sip_verification_failed")
            code, text, headers = 500, "Server Internal Error", []
        else:
            code, text, headers = verdict_answer(outcome, request.ruri, self.settings)
            self._latency.observe(time.perf_counter() - started)
        if txn.cancelled:
            code, text, headers = 487, "Request Terminated", []
        self._final(txn, self._answer(request, code, text, txn.send, source, headers, txn.to_tag))

    def _tag(self) -> str:
        """A To tag (RFC 3261 section 19.3): this server's random prefix and a count."""
        return f"{self._tag_prefix}{next(self._tags):x}"

    def _remember(self, txn: _Transaction) -> None:
        transactions = self._transactions
        transactions[txn.key] = txn
        while len(transactions) > self.settings.max_transactions:
            _, old = transactions.popitem(last=False)
            self._unschedule(old)

    def _final(self, txn: _Transaction, data: bytes) -> None:
        """The final response is sent: keep it; over UDP resend it until ACK or Timer H."""
        txn.final = data
        if self._transactions.get(txn.key) is not txn:
            return  # pushed out by newer transactions while it was being verified
        now = asyncio.get_running_loop().time()
        txn.ends = now + TIMER_H
        self._schedule(txn, now + T1 if txn.udp else txn.ends)

    def _schedule(self, txn: _Transaction, due: float) -> None:
        self._unschedule(txn)
        txn.slot = slot = int(due / TICK) + 1
        wheel = self._wheel
        entries = wheel.get(slot)
        if entries is None:
            wheel[slot] = {txn: None}
        else:
            entries[txn] = None
        if not self._sweeping and (self._sweeper is None or slot < self._armed):
            self._arm(slot)

    def _arm(self, slot: int) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._armed = slot
        self._sweeper = asyncio.get_running_loop().call_at(slot * TICK, self._sweep)

    def _sweep(self) -> None:
        """Act on every transaction due by now; arm the timer for the next slot with any."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        current = max(int(now / TICK), self._armed)  # the loop may run a timer a hair early
        wheel = self._wheel
        self._sweeping = True
        try:
            for slot in sorted(slot for slot in wheel if slot <= current):
                for txn in wheel.pop(slot):
                    txn.slot = 0
                    self._due(txn, now)
        finally:
            self._sweeping = False
        if wheel:
            self._arm(min(wheel))

    def _due(self, txn: _Transaction, now: float) -> None:
        if txn.acked or not txn.udp or now >= txn.ends or txn.final is None:
            self._forget(txn)  # Timer I after the ACK, or Timer H
            return
        txn.send(txn.final)  # Timer G
        txn.interval = min(2 * txn.interval, T2)
        self._schedule(txn, min(now + txn.interval, txn.ends))

    def _unschedule(self, txn: _Transaction) -> None:
        if txn.slot:
            entries = self._wheel.get(txn.slot)
            if entries is not None:
                entries.pop(txn, None)
                if not entries:
                    del self._wheel[txn.slot]
            txn.slot = 0

    def _forget(self, txn: _Transaction) -> None:
        self._unschedule(txn)
        if self._transactions.get(txn.key) is txn:
            del self._transactions[txn.key]

    def _ack(self, key: tuple[str, str]) -> bool:
        """Absorb the ACK of transaction ``key``'s final response: whether one was waiting."""
        txn = self._transactions.get(key)
        if txn is None or txn.final is None or txn.acked:
            return False
        txn.acked = True
        if txn.udp:
            self._schedule(txn, asyncio.get_running_loop().time() + TIMER_I)
        else:
            self._forget(txn)
        return True

    def _cancel(self, request: Request, source: tuple[str, int], send: Send) -> None:
        """RFC 3261 section 9.2 to the letter: a CANCEL matching a transaction held is
        answered 200 (and turns an INVITE still being verified into a 487; one already
        answered is left alone); one matching none gets 481."""
        txn = self._transactions.get((request.branch, request.sent_by))
        if txn is None:
            self._answer(request, 481, "Call/Transaction Does Not Exist", send, source, [])
            return
        if txn.final is None:
            txn.cancelled = True
        self._answer(request, 200, "OK", send, source, [], txn.to_tag)


def _warning(text: str) -> str:
    """A ``Warning: 399`` value (RFC 3261 section 20.43) saying why, safe to echo."""
    cleaned = "".join(ch for ch in text if 0x20 <= ord(ch) < 0x7F and ch not in '"\\')[:100]
    return f'399 verifier "{cleaned}"'


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        host, port = str(addr[0]), int(str(addr[1]))
        server = self.server
        if not server.allowed(host):
            server.count("denied")
            return
        transport = self.transport
        if transport is None:  # pragma: no cover - asyncio calls connection_made first
            return

        def send(data: bytes) -> None:
            with contextlib.suppress(OSError):
                transport.sendto(data, (host, port))

        server.receive(data, (host, port), send, udp=True)


class _Stream(asyncio.Protocol):
    """One TCP connection: messages framed by Content-Length, several per connection."""

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.source = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.source = (str(peer[0]), int(peer[1]))
        if not self.server.allowed(self.source[0]):
            self.server.count("denied")
            transport.abort()
            return
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        buffer = self.buffer
        buffer += data
        limit = self.server.settings.max_message
        while True:
            while buffer[:2] == b"\r\n":
                del buffer[:2]
            try:
                size = frame(buffer, limit)
            except Oversize:
                self.server.oversize(buffer, self.source, self._send)
                transport.close()  # after the 513, if any, is written
                self.transport = None
                return
            except Dropped:
                self.server.count("dropped")
                transport.abort()
                self.transport = None
                return
            if not size:
                return
            message = bytes(buffer[:size])
            del buffer[:size]
            self.server.receive(message, self.source, self._send, udp=False)

    def _send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
