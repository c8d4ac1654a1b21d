"""One safe GET: vetted addresses, pinned connection, no redirects, caps, per-host breaker.

:class:`HttpClientSettings` holds the rules every outgoing fetch shares (``[http_client]``);
each fetcher is handed them beside its own settings. :class:`PinnedGetter` applies them: it
is how :mod:`verifier.net.fetch` reaches a certificate repository or a CRL server, and
:mod:`verifier.net.rcd` a content host. For each GET it

1. fails fast if the host's circuit is open (``breaker_threshold`` consecutive host failures:
   DNS, connect, TLS, timeout, 5xx; a 4xx is the host answering, so a hostile x5u naming
   missing paths cannot shut a repository out). A 200 counts as success only once its whole
   body has arrived, so headers followed by a stalled body count as a timeout. After
   ``breaker_cooldown`` one trial is let through;
2. resolves the host itself and vets every address (:func:`verifier.net.ssrf.resolve_vetted`);
3. connects to a vetted address literally (the URL's host replaced by the IP), with TLS
   SNI and certificate hostname verification against the original host name
   (aiohttp ``server_hostname``) and the original ``Host`` header, so that no second DNS
   answer is ever consulted;
4. refuses redirects and any status but 200, reads at most ``max_bytes``, all within
   ``seconds`` in total.

At most ``max_per_host`` fetches run to one host at once; the others wait for a slot (up to
``connect_timeout``, as aiohttp bounds a wait for its pool) before their own time starts, and
one that gets none is answered 436 "busy" (caused by :class:`HostBusy`) without blaming the
host: the verifier's own queueing never opens a breaker. The session's pool has no per-host
limit of its own, so no wait hides in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
from cachetools import LRUCache
from yarl import URL

from ..__version__ import __version__
from ..core.errors import VerifierError, X5uFetchFailed
from ..core.x5u import DEFAULT_X5U_PORTS
from .ssrf import AddressPolicy, Resolver, resolve_vetted

__all__ = [
    "Answer",
    "HostBusy",
    "HttpClientSettings",
    "NotFound",
    "PinnedGetter",
    "SessionUser",
    "new_session",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpClientSettings:
    """``[http_client]``: the rules every outgoing fetch follows, for x5u certificates and
    RCD content (jcl, icn) alike. Size caps and cache lifetimes differ by use: they stay in
    ``[x5u]`` and ``[rcd]``.

    Held as ``Settings.http_client`` and handed to
    :class:`~verifier.net.fetch.CertificateFetcher` and
    :class:`~verifier.net.rcd.RcdContentFetcher` beside their own settings. Times are seconds.

    Raises (constructor):
        ValueError: a value out of range (naming the field).
    """

    ports: frozenset[int] = DEFAULT_X5U_PORTS
    """Ports allowed in x5u, jcl and icn URLs (ATIS-1000074: 443; AT&T's repository uses 8443)."""
    connect_timeout: float = 1.0
    """Time to open the TCP connection to one address of a host."""
    timeout: float = 2.0
    """Total time for one fetch: DNS, connect, TLS, headers and body."""
    ca_file: str | None = None
    """CA bundle for TLS to certificate repositories and content hosts; unset: the system's."""
    allow_private: bool = False
    """Allow loopback, private, link-local... addresses (tests, demos, private networks)."""
    private_allow: tuple[str, ...] = ()
    """Hosts (exact or ``.suffix``) and CIDRs allowed to be special-purpose addresses."""
    breaker_threshold: int = 5
    """Consecutive failures of a host (network, timeout, 5xx) that open its circuit."""
    breaker_cooldown: float = 30.0
    """How long an open circuit fails fast before one trial request is let through."""
    max_per_host: int = 8
    """Concurrent fetches to one host; more wait up to ``connect_timeout`` for a slot, then
    get 436 "busy" (not counted against the host)."""
    user_agent: str = f"verifier/{__version__}"
    """User-Agent sent to certificate repositories, CRL servers and content hosts."""

    def __post_init__(self) -> None:
        if not self.ports or any(not 0 < p < 65536 for p in self.ports):
            raise ValueError("ports must be a non-empty set of TCP ports")
        for name in ("connect_timeout", "timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.breaker_threshold < 1:
            raise ValueError("breaker_threshold must be >= 1")
        if self.max_per_host < 1:
            raise ValueError("max_per_host must be >= 1")
        if self.breaker_cooldown < 0:
            raise ValueError("breaker_cooldown must be >= 0")
        self.address_policy()

    def address_policy(self) -> AddressPolicy:
        """The special-purpose addresses allowed.

        Raises:
            ValueError: a ``private_allow`` entry that is neither a host nor a CIDR.
        """
        return AddressPolicy(allow_private=self.allow_private, allow=self.private_allow)


def new_session() -> aiohttp.ClientSession:
    """The client session for fetching what callers name (x5u, CRLs, RCD content): no
    cookies, no proxies from the environment (a proxy would bypass the address pinning),
    a bounded connection pool with no per-host limit (:class:`PinnedGetter` caps each host)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


class SessionUser:
    """Base of the fetchers (x5u, RCD content): ``async with`` opens the session when the
    caller gave none (:func:`new_session`); :meth:`close` cancels the fetches still running
    (``_inflight``) and closes the session if it is ours. Subclasses set ``_session``,
    ``_own_session`` and ``_inflight`` in their constructor."""

    _session: aiohttp.ClientSession | None
    _own_session: bool
    _inflight: Mapping[Any, asyncio.Task[Any]]
    _closed: bool

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = new_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel the fetches still running; close the session if it is ours."""
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_more()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _close_more(self) -> None:
        """What a subclass closes besides (before the session)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A 200 answer: its body, headers and lower-cased media type ("" if none)."""

    body: bytes
    headers: Mapping[str, str]
    content_type: str


class HostBusy(VerifierError):
    """The cause (``__cause__``) of an :class:`X5uFetchFailed` raised because the host
    already had ``max_per_host`` fetches running and no slot came free in time: the
    verifier's own queueing, not the host's fault, so not counted by the breaker and not
    to be remembered as the URL's failure. (A cause, not a subclass: the error classes and
    their slugs stay one per failure.) The x5u fetcher's budget of cold fetches refuses with
    a subclass, :class:`verifier.net.coldfetch.OverBudget`."""


class NotFound(VerifierError):
    """The cause (``__cause__``) of an :class:`X5uFetchFailed` raised because the host
    answered 404 or 410: the path does not exist there (the x5u fetcher remembers it per URL,
    longer than other failures)."""


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    open_until: float = 0.0
    trial_until: float = 0.0


class PinnedGetter:
    """GETs under the SSRF rules of ``client`` with a circuit breaker per host. Holds no
    session: the caller passes its ``aiohttp.ClientSession`` to each :meth:`get`.
    ``trial_timeout`` is how long a half-open circuit's one trial may take (the longest
    ``seconds`` its caller gives :meth:`get`).

    Raises (constructor):
        OSError: ``client.ca_file`` cannot be read or holds no certificate (ssl.SSLError).
    """

    def __init__(
        self,
        client: HttpClientSettings,
        *,
        resolver: Resolver,
        clock: Callable[[], float],
        trial_timeout: float,
        max_hosts: int = 10_000,
    ) -> None:
        self._policy = client.address_policy()
        self._resolver = resolver
        self._ssl = ssl.create_default_context(cafile=client.ca_file)
        self._clock = clock
        self._client_timeout = aiohttp.ClientTimeout(total=None, connect=client.connect_timeout)
        self._threshold = client.breaker_threshold
        self._cooldown = client.breaker_cooldown
        self._trial_timeout = trial_timeout
        self._user_agent = client.user_agent
        self._breakers: LRUCache[str, _Breaker] = LRUCache(maxsize=max_hosts)
        self._per_host = client.max_per_host
        self._slot_wait = client.connect_timeout
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._slot_users: Counter[str] = Counter()
        self.breaker_opens = 0
        self.busy: Counter[str] = Counter()
        """Fetches answered "busy" (no slot for their host in time), by host."""
        self.errors: Counter[str] = Counter()
        """Host failures (those the breaker counts), by host."""

    def open_circuits(self) -> int:
        clock = self._clock()
        return sum(
            1
            for b in self._breakers.values()
            if b.failures >= self._threshold and clock < b.open_until
        )

    # -- the breaker -----------------------------------------------------------------------

    def _check(self, host: str, *, trial: bool) -> None:
        """Fail fast if ``host``'s circuit is open; ``trial``: a half-open circuit's one
        trial is this request (otherwise only look)."""
        breaker = self._breakers.get(host)
        if breaker is None or breaker.failures < self._threshold:
            return
        clock = self._clock()
        if clock < breaker.open_until or clock < breaker.trial_until:
            raise X5uFetchFailed(
                f"circuit open for {host} after {breaker.failures} consecutive failures; "
                "failing fast until its cool-down ends"
            )
        if trial:  # half-open: this request is the one trial until it ends (or times out)
            breaker.trial_until = clock + self._trial_timeout

    def _succeeded(self, host: str) -> None:
        self._breakers.pop(host, None)

    def _host_down(self, host: str, detail: str) -> X5uFetchFailed:
        self.errors[host] += 1
        breaker = self._breakers.get(host)
        if breaker is None:
            breaker = self._breakers[host] = _Breaker()
        breaker.failures += 1
        breaker.trial_until = 0.0
        if breaker.failures >= self._threshold:
            breaker.open_until = self._clock() + self._cooldown
            self.breaker_opens += 1
            log.warning("x5u_breaker_open", extra={"host": host, "failures": breaker.failures})
        return X5uFetchFailed(detail)

    # -- the per-host slots -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, host: str, wait: float, what: str) -> AsyncIterator[None]:
        """Hold one of ``host``'s ``max_per_host`` slots, waiting up to ``wait`` for it.

        Raises:
            X5uFetchFailed: caused by :class:`HostBusy`, no slot came free within ``wait``.
        """
        slots = self._slots.get(host)
        if slots is None:
            slots = self._slots[host] = asyncio.Semaphore(self._per_host)
        self._slot_users[host] += 1
        try:
            try:
                async with asyncio.timeout(wait):
                    await slots.acquire()
            except TimeoutError:
                self.busy[host] += 1
                detail = (
                    f"{what} host {host} busy: {self._per_host} fetches to it already running "
                    f"and none ended within {wait:g} s"
                )
                raise X5uFetchFailed(detail) from HostBusy(detail)
            try:
                yield
            finally:
                slots.release()
        finally:
            self._slot_users[host] -= 1
            if not self._slot_users[host]:
                del self._slot_users[host]
                del self._slots[host]

    # -- the GET ---------------------------------------------------------------------------

    async def get(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        *,
        max_bytes: int,
        seconds: float,
        what: str,
        accept: str,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """GET ``url`` from a vetted address of its host: no redirects, capped, timed.
        ``headers`` are sent besides the client's own (the trust list's bearer token).

        The wait for a slot of the host (up to ``connect_timeout``) comes before ``seconds``.

        Raises:
            X5uRefused: an address of the host is refused (nothing was sent).
            X5uFetchFailed: no slot of the host came free in time (caused by
                :class:`HostBusy`; the host is not blamed), the host's circuit is open,
                DNS, connection, TLS, timeout, a status other than 200, or a body over
                ``max_bytes``.
        """
        host, port = url.host, url.port
        if not host or port is None:
            raise X5uFetchFailed(f"{what} URL has no host")
        self._check(host, trial=False)
        async with self._slot(host, self._slot_wait, what):
            self._check(host, trial=True)
            return await self._get(
                session, url, host, port, max_bytes, seconds, what, accept, headers
            )

    async def _get(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        host: str,
        port: int,
        max_bytes: int,
        seconds: float,
        what: str,
        accept: str,
        headers: Mapping[str, str] | None,
    ) -> Answer:
        https = url.scheme == "https"
        sent = {
            "Host": url.host_port_subcomponent or host,
            "Accept": accept,
            "Accept-Encoding": "identity",
            "User-Agent": self._user_agent,
            **(headers or {}),
        }
        try:
            async with asyncio.timeout(seconds):
                try:
                    addresses = await resolve_vetted(
                        host, port, policy=self._policy, resolver=self._resolver
                    )
                except OSError as exc:
                    detail = f"cannot resolve {what} host {host}: {exc}"
                    raise self._host_down(host, detail) from None
                last: Exception | None = None
                for address in addresses:
                    try:
                        async with session.get(
                            url.with_host(str(address)),
                            headers=sent,
                            allow_redirects=False,
                            ssl=self._ssl if https else True,
                            server_hostname=host if https else None,
                            timeout=self._client_timeout,
                            auto_decompress=False,
                        ) as resp:
                            return await self._read(resp, host, max_bytes, what)
                    except aiohttp.ClientConnectorCertificateError as exc:
                        detail = f"TLS certificate of {host} not accepted: {exc.certificate_error}"
                        raise self._host_down(host, detail) from None
                    except aiohttp.ClientConnectorError as exc:
                        last = exc
                        continue  # the next vetted address
                raise self._host_down(host, f"cannot connect to {what} host {host}: {last}")
        except TimeoutError:
            detail = f"{what} {host}: no complete answer within {seconds:g} s"
            raise self._host_down(host, detail) from None
        except aiohttp.ClientError as exc:
            raise self._host_down(host, f"{what} {host}: {type(exc).__name__}: {exc}") from None

    async def _read(
        self, resp: aiohttp.ClientResponse, host: str, max_bytes: int, what: str
    ) -> Answer:
        status = resp.status
        if status >= 500:
            raise self._host_down(host, f"{what} {host} answered HTTP {status}")
        if status != 200:
            self._succeeded(host)  # the host answered: a 3xx/4xx is the caller's URL at fault
        if 300 <= status < 400:
            location = resp.headers.get("Location", "?")
            raise X5uFetchFailed(
                f"{what} answered HTTP {status} redirect to {location!r}; "
                "redirects are not followed"
            )
        if status != 200:
            detail = f"{what} answered HTTP {status}, not 200"
            if status in (404, 410):
                raise X5uFetchFailed(detail) from NotFound(detail)
            raise X5uFetchFailed(detail)
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise X5uFetchFailed(
                f"{what} body is {resp.content_length} bytes; the limit is {max_bytes}"
            )
        body = bytearray()
        async for chunk in resp.content.iter_chunked(8192):
            body += chunk
            if len(body) > max_bytes:
                raise X5uFetchFailed(f"{what} body exceeds the limit of {max_bytes} bytes")
        self._succeeded(host)  # only a complete body: a stalled one times out as a host failure
        return Answer(
            body=bytes(body),
            headers=resp.headers,
            content_type=resp.content_type.lower() if "Content-Type" in resp.headers else "",
        )
