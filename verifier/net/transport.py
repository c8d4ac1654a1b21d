"""One safe GET: vetted addresses, pinned connection, no redirects, caps, per-host breaker.

:class:`PinnedGetter` is how :mod:`verifier.net.fetch` reaches a certificate repository or a CRL
server. For each GET it

1. fails fast if the host's circuit is open (``threshold`` consecutive host failures:
   DNS, connect, TLS, timeout, 5xx; a 4xx is the host answering, so a hostile x5u naming
   missing paths cannot shut a repository out). After ``cooldown`` one trial is let through;
2. resolves the host itself and vets every address (:func:`verifier.net.ssrf.resolve_vetted`);
3. connects to a vetted address literally (the URL's host replaced by the IP), with TLS
   SNI and certificate hostname verification against the original host name
   (aiohttp ``server_hostname``) and the original ``Host`` header, so that no second DNS
   answer is ever consulted;
4. refuses redirects and any status but 200, reads at most ``max_bytes``, all within
   ``seconds`` in total.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
from cachetools import LRUCache
from yarl import URL

from ..core.errors import X5uFetchFailed
from .ssrf import AddressPolicy, Resolver, resolve_vetted

__all__ = ["Answer", "PinnedGetter", "SessionUser", "new_session"]

log = logging.getLogger(__name__)


def new_session() -> aiohttp.ClientSession:
    """The client session for fetching what callers name (x5u, CRLs, RCD content): no
    cookies, no proxies from the environment (a proxy would bypass the address pinning),
    a bounded connection pool."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=8),
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


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    open_until: float = 0.0
    trial_until: float = 0.0


class PinnedGetter:
    """GETs under the SSRF rules with a circuit breaker per host. Holds no session: the
    caller passes its ``aiohttp.ClientSession`` to each :meth:`get`."""

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        resolver: Resolver,
        ssl_context: ssl.SSLContext,
        clock: Callable[[], float],
        connect_timeout: float,
        threshold: int,
        cooldown: float,
        trial_timeout: float,
        user_agent: str,
        max_hosts: int = 10_000,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._ssl = ssl_context
        self._clock = clock
        self._client_timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        self._threshold = threshold
        self._cooldown = cooldown
        self._trial_timeout = trial_timeout
        self._user_agent = user_agent
        self._breakers: LRUCache[str, _Breaker] = LRUCache(maxsize=max_hosts)
        self.breaker_opens = 0
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

    def _check(self, host: str) -> None:
        breaker = self._breakers.get(host)
        if breaker is None or breaker.failures < self._threshold:
            return
        clock = self._clock()
        if clock < breaker.open_until or clock < breaker.trial_until:
            raise X5uFetchFailed(
                f"circuit open for {host} after {breaker.failures} consecutive failures; "
                "failing fast until its cool-down ends"
            )
        # half-open: this request is the one trial until it ends (or would have timed out)
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
    ) -> Answer:
        """GET ``url`` from a vetted address of its host: no redirects, capped, timed.

        Raises:
            X5uRefused: an address of the host is refused (nothing was sent).
            X5uFetchFailed: the host's circuit is open, DNS, connection, TLS, timeout,
                a status other than 200, or a body over ``max_bytes``.
        """
        host, port = url.host, url.port
        if not host or port is None:
            raise X5uFetchFailed(f"{what} URL has no host")
        self._check(host)
        https = url.scheme == "https"
        headers = {
            "Host": url.host_port_subcomponent or host,
            "Accept": accept,
            "Accept-Encoding": "identity",
            "User-Agent": self._user_agent,
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
                            headers=headers,
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
        self._succeeded(host)
        if 300 <= status < 400:
            location = resp.headers.get("Location", "?")
            raise X5uFetchFailed(
                f"{what} answered HTTP {status} redirect to {location!r}; "
                "redirects are not followed"
            )
        if status != 200:
            raise X5uFetchFailed(f"{what} answered HTTP {status}, not 200")
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise X5uFetchFailed(
                f"{what} body is {resp.content_length} bytes; the limit is {max_bytes}"
            )
        body = bytearray()
        async for chunk in resp.content.iter_chunked(8192):
            body += chunk
            if len(body) > max_bytes:
                raise X5uFetchFailed(f"{what} body exceeds the limit of {max_bytes} bytes")
        return Answer(
            body=bytes(body),
            headers=resp.headers,
            content_type=resp.content_type.lower() if "Content-Type" in resp.headers else "",
        )
