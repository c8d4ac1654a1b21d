"""The fleet's shared tier on Redis: certificate chains, fetch failures, fetch locks, replays.

Several instances of the service behind one Redis (redis-py asyncio) share what each of
them learnt, so that a cold x5u is fetched once per fleet, not once per instance:

* :class:`RedisLink` holds the connection pool and the link's health. Every operation is
  bounded by ``RedisSettings.timeout`` (100-200 ms) of Redis's time (while this process is
  busy the deadline moves on, at most three times); after an error, Redis is skipped for
  ``retry_after`` seconds and each instance works alone (its memory tier, direct
  fetches, its own replay cache), then Redis is tried again: recovery needs no one.
  ``healthy``, ``last_error`` and the counters feed /readyz and /metrics.
* :class:`RedisTier` is the fetcher's :class:`~verifier.net.fetch.SharedTier`, behind the
  in-process memory tier (a local hit never leaves the process). It keeps the fetched
  bytes with their lifetime and fetch facts (never a validated credential: each instance
  validates what it reads against its own trust store), the fetch failures with their
  slug, detail and expiry, and one fetch lock per x5u (``SET NX PX``; a dead holder's
  lock expires after ``lock_ttl``). Waiters poll the entry every ``poll_interval``.
* :class:`RedisReplayCache` flags a PASSporT signature seen by any instance within the
  window (``SET NX PX``), falling back to a local :class:`~verifier.core.replay.ReplayCache`
  while Redis is away.

Keys, under ``key_prefix``: ``x5u:{<sha256 of x5u>}:chain`` / ``:fail`` / ``:lock`` (one
hash slot per x5u) and ``replay:<sha256 of signature>``. Every key expires.

Use it as::

    async with RedisLink(RedisSettings(url="redis://127.0.0.1:6379/0")) as link:
        fetcher = CertificateFetcher(trust, settings, shared=RedisTier(link))
        replays = RedisReplayCache(link, max_size=100_000, window=120.0)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..core.errors import VerifierError
from ..core.replay import ReplayCache, replay_key
from .cache import StoredChain
from .fetch import SharedFailure

__all__ = [
    "RedisDown",
    "RedisLink",
    "RedisReplayCache",
    "RedisSettings",
    "RedisTier",
    "RedisTierStats",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0"""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSettings:
    """The shared tier's knobs, with their defaults. Times are seconds.

    Raises (constructor):
        ValueError: a value out of range (naming the field).
    """

    url: str | None = field(default=None, repr=False)
    """``redis://[user:password@]host:port/db`` (or rediss://, unix://); None: no Redis."""
    key_prefix: str = "verifier:"
    """Prepended to every key: instances that share it share their caches."""
    timeout: float = 0.15
    """Longest wait for one Redis operation (connecting included), in Redis's time: while this
    process is busy the deadline moves on, at most three times; then each instance is alone."""
    retry_after: float = 5.0
    """After a Redis error, how long Redis is skipped before it is tried again."""
    lock_ttl: float = 5.0
    """Expiry of a fetch lock: the longest a dead holder delays the others (fetch + CRL time)."""
    poll_interval: float = 0.025
    """How often an instance waiting for another's fetch looks for its result."""
    max_connections: int = 64
    """Most connections to Redis held by one instance."""

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        if not self.key_prefix:
            raise ValueError("key_prefix must not be empty")
        for name in ("timeout", "lock_ttl", "poll_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if self.poll_interval >= self.lock_ttl:
            raise ValueError("poll_interval must be shorter than lock_ttl")


_LATE_EXTENSIONS = 3


class _RedisDeadline:
    """Ends an operation (``bound.reschedule(now)``: TimeoutError) ``timeout`` seconds
    after it started, counted in Redis's time rather than this event loop's.

    When the process was busy for most of that time (its CPU time, all threads, over half
    the wall time), or the deadline's own callback runs late, this loop had other work (a
    burst of cold x5u validating their chains, say) and Redis's answer may be waiting in
    the socket or in the queue of ready callbacks: the deadline then moves on by another
    ``timeout`` (at most :data:`_LATE_EXTENSIONS` times). A Redis that is slow while the
    process is idle meets the deadline on time and fails the operation. Without this, a
    burst of concurrent cold loads made every Redis answer "too late" (benchmarks/RESULTS.md,
    Shared Redis tier).
    """

    __slots__ = ("_bound", "_cpu", "_due", "_handle", "_left", "_loop", "_start", "_timeout")

    def __init__(self, bound: asyncio.Timeout, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._bound = bound
        self._timeout = timeout
        self._left = _LATE_EXTENSIONS
        self._start = self._loop.time()
        self._cpu = time.process_time()
        self._due = self._start + timeout
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        cpu = time.process_time()
        busy = cpu - self._cpu > (now - self._start) / 2 or now - self._due > self._timeout / 4
        if busy and self._left > 0:
            self._left -= 1
            self._start, self._cpu = now, cpu
            self._due = now + self._timeout
            self._handle = self._loop.call_at(self._due, self._fire)
        else:
            self._bound.reschedule(now)

    def cancel(self) -> None:
        self._handle.cancel()


class RedisDown(VerifierError):
    """Redis was skipped (recent error) or failed this operation; the caller goes on alone."""


class RedisLink:
    """One Redis client and its health, shared by the tier and the replay cache.

    Build it with ``async with RedisLink(settings)`` (it creates and closes its client) or
    pass a ``client`` that the caller owns and closes. ``monotonic`` paces the retries.

    Raises (constructor):
        ValueError: ``settings.url`` is None and no ``client`` is given.
    """

    def __init__(
        self,
        settings: RedisSettings,
        *,
        client: Redis | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is None:
            if settings.url is None:
                raise ValueError("RedisSettings.url is None: the shared tier is disabled")
            # call() bounds every operation (_RedisDeadline); redis-py's own timeouts, for
            # a free connection, connecting and reading, are only a backstop behind it.
            backstop = settings.timeout * (_LATE_EXTENSIONS + 2)
            pool = BlockingConnectionPool.from_url(
                settings.url,
                max_connections=settings.max_connections,
                timeout=backstop,
                socket_timeout=backstop,
                socket_connect_timeout=backstop,
                retry=Retry(NoBackoff(), 1),  # one retry: a pooled connection gone stale
            )
            client = Redis.from_pool(pool)
            self._own_client = True
        else:
            self._own_client = False
        self.settings = settings
        self.client = client
        self._monotonic = monotonic
        self._skip_until = 0.0
        self.healthy = True
        """False from an error until Redis answers again."""
        self.last_error: str | None = None
        """The last error, as ``Type: message``; kept after recovery."""
        self.errors = 0
        self.fallbacks = 0
        self.closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client if it is ours."""
        if self._own_client and not self.closed:
            self.closed = True
            await self.client.aclose()

    def key(self, *parts: str) -> str:
        return self.settings.key_prefix + ":".join(parts)

    async def call(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        """``await op(client)`` within the timeout.

        Raises:
            RedisDown: Redis is being skipped after an error, or failed now (counted).
        """
        if self._monotonic() < self._skip_until:
            self.fallbacks += 1
            raise RedisDown(self.last_error)
        try:
            async with asyncio.timeout(None) as bound:
                deadline = _RedisDeadline(bound, self.settings.timeout)
                try:
                    result = await op(self.client)
                finally:
                    deadline.cancel()
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            self.fallbacks += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._skip_until = self._monotonic() + self.settings.retry_after
            if self.healthy:
                self.healthy = False
                log.warning("redis_unavailable", extra={"error": self.last_error})
            raise RedisDown(self.last_error) from None
        if not self.healthy:
            self.healthy = True
            log.info("redis_recovered")
        return result

    async def ping(self) -> bool:
        """Whether Redis answers now (no I/O while it is being skipped), for /readyz."""
        try:
            return bool(await self.call(lambda client: client.ping()))
        except RedisDown:
            return False

    def stats(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "last_error": self.last_error,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
        }


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(slots=True)
class RedisTierStats:
    """Counters of the shared tier (the link counts errors and fallbacks)."""

    hits: int = 0
    misses: int = 0
    failure_hits: int = 0
    saves: int = 0
    lock_acquired: int = 0
    lock_waits: int = 0
    lock_timeouts: int = 0
    malformed: int = 0


class RedisTier:
    """The fleet's certificate tier on Redis: a :class:`~verifier.net.fetch.SharedTier`.

    Entries are JSON: a chain is ``{"x5u", "body" (base64), "fetched_at", "expires_at"}``,
    a failure ``{"x5u", "slug", "detail", "expires_at"}``; each key expires with its entry.
    Whatever is read is checked for shape and x5u here; the fetcher validates the chain.
    ``clock`` (epoch seconds) must be the fetcher's: it judges expiry.
    """

    def __init__(self, link: RedisLink, *, clock: Callable[[], float] = time.time) -> None:
        self.link = link
        self._clock = clock
        self._release = link.client.register_script(_RELEASE)
        self.counters = RedisTierStats()

    @property
    def healthy(self) -> bool:
        return self.link.healthy

    @property
    def last_error(self) -> str | None:
        return self.link.last_error

    def _keys(self, x5u: str) -> tuple[str, str, str]:
        stem = self.link.key("x5u", "{" + _digest(x5u) + "}")
        return f"{stem}:chain", f"{stem}:fail", f"{stem}:lock"

    def _ms_until(self, at: float) -> int:
        return int((at - self._clock()) * 1000)

    # -- the SharedTier protocol -----------------------------------------------------------

    async def load(self, x5u: str) -> StoredChain | SharedFailure | None:
        chain_key, fail_key, _ = self._keys(x5u)
        try:
            raw = await self.link.call(lambda client: client.mget([chain_key, fail_key]))
        except RedisDown:
            return None
        found = self._parse(x5u, raw[0], raw[1])
        if found is None:
            self.counters.misses += 1
        return found

    async def save(self, x5u: str, chain: StoredChain) -> None:
        ttl = self._ms_until(chain.expires_at)
        if ttl <= 0:
            return
        chain_key, fail_key, _ = self._keys(x5u)
        value = json.dumps(
            {
                "x5u": x5u,
                "body": base64.b64encode(chain.body).decode(),
                "fetched_at": chain.fetched_at,
                "expires_at": chain.expires_at,
            }
        )

        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(chain_key, value, px=ttl)
                pipe.delete(fail_key)
                await pipe.execute()

        try:
            await self.link.call(write)
        except RedisDown:
            return
        self.counters.saves += 1

    async def save_failure(self, x5u: str, failure: SharedFailure) -> None:
        ttl = self._ms_until(failure.expires_at)
        if ttl <= 0:
            return
        _, fail_key, _ = self._keys(x5u)
        value = json.dumps(
            {
                "x5u": x5u,
                "slug": failure.slug,
                "detail": failure.detail,
                "expires_at": failure.expires_at,
            }
        )
        try:
            await self.link.call(lambda client: client.set(fail_key, value, px=ttl))
        except RedisDown:
            return
        self.counters.saves += 1

    async def acquire(self, x5u: str) -> str | None:
        _, _, lock_key = self._keys(x5u)
        token = secrets.token_hex(16)
        ttl = int(self.link.settings.lock_ttl * 1000)
        try:
            taken = await self.link.call(
                lambda client: client.set(lock_key, token, nx=True, px=ttl)
            )
        except RedisDown:
            return ""  # no lock to be had: fetch alone
        if not taken:
            return None
        self.counters.lock_acquired += 1
        return token

    async def wait(self, x5u: str, seconds: float) -> StoredChain | SharedFailure | None:
        self.counters.lock_waits += 1
        keys = self._keys(x5u)
        deadline = time.monotonic() + seconds
        while True:
            await asyncio.sleep(
                max(0.0, min(self.link.settings.poll_interval, deadline - time.monotonic()))
            )
            try:
                chain, failure, holder = await self.link.call(
                    lambda client: client.mget(list(keys))
                )
            except RedisDown:
                return None
            found = self._parse(x5u, chain, failure)
            if found is not None or holder is None:
                return found  # a result, or the holder gone without one: take over
            if time.monotonic() >= deadline:
                self.counters.lock_timeouts += 1
                return None

    async def release(self, x5u: str, token: str) -> None:
        if not token:
            return
        _, _, lock_key = self._keys(x5u)
        try:
            await self.link.call(lambda client: self._release(keys=[lock_key], args=[token]))
        except RedisDown:
            return  # the lock expires by itself

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self, x5u: str, chain: Any, failure: Any) -> StoredChain | SharedFailure | None:
        now = self._clock()
        if chain is not None:
            stored = self._chain(x5u, chain)
            if stored is not None and stored.expires_at > now:
                self.counters.hits += 1
                return stored
        if failure is not None:
            failed = self._failure(x5u, failure)
            if failed is not None and failed.expires_at > now:
                self.counters.failure_hits += 1
                return failed
        return None

    def _json(self, x5u: str, raw: Any) -> dict[str, Any] | None:
        try:
            data = json.loads(raw)
        except (TypeError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("x5u") == x5u:
            return data
        self.counters.malformed += 1
        log.warning("redis_entry_malformed", extra={"x5u": x5u})
        return None

    def _chain(self, x5u: str, raw: Any) -> StoredChain | None:
        data = self._json(x5u, raw)
        if data is None:
            return None
        try:
            return StoredChain(
                body=base64.b64decode(data["body"], validate=True),
                fetched_at=float(data["fetched_at"]),
                expires_at=float(data["expires_at"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            self.counters.malformed += 1
            return None

    def _failure(self, x5u: str, raw: Any) -> SharedFailure | None:
        data = self._json(x5u, raw)
        if data is None:
            return None
        slug, detail = data.get("slug"), data.get("detail")
        try:
            expires_at = float(data["expires_at"])
        except (KeyError, TypeError, ValueError):
            expires_at = None
        if not isinstance(slug, str) or not isinstance(detail, str) or expires_at is None:
            self.counters.malformed += 1
            return None
        return SharedFailure(slug=slug, detail=detail, expires_at=expires_at)

    # -- metrics ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The link's health and the tier's counters, for /readyz and /metrics."""
        out = self.link.stats()
        out.update(
            {name: getattr(self.counters, name) for name in self.counters.__dataclass_fields__}
        )
        return out


class RedisReplayCache:
    """Replay detection for the fleet: ``await seen(signature)`` is True when any instance
    saw this signature within ``window`` seconds (keyed by
    :func:`~verifier.core.replay.replay_key`, as the local set is).

    Every signature is also kept in :attr:`local` (a :class:`ReplayCache` of ``max_size``),
    which answers while Redis is away: repeats through this one instance are still caught.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        max_size: int,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.local = ReplayCache(max_size, window, clock=clock)
        self._ttl = max(1, int(window * 1000))
        self.replays = 0
        self.local_answers = 0

    @property
    def healthy(self) -> bool:
        return self.link.healthy

    @property
    def last_error(self) -> str | None:
        return self.link.last_error

    async def seen(self, signature: str) -> bool:
        key = self.link.key("replay", _digest(replay_key(signature)))
        known_here = self.local.seen(signature)
        try:
            created = await self.link.call(
                lambda client: client.set(key, b"1", nx=True, px=self._ttl)
            )
        except RedisDown:
            self.local_answers += 1
            repeat = known_here
        else:
            repeat = not created
        if repeat:
            self.replays += 1
        return repeat

    def stats(self) -> dict[str, Any]:
        out = self.link.stats()
        out.update({"replays": self.replays, "local_answers": self.local_answers})
        return out
