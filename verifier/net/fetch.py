"""Certificate retrieval: x5u fetch, the chain cache, revocation. The only network I/O.

:class:`CertificateFetcher` is the pipeline's :class:`~verifier.core.verify.CredentialSource`.
``await fetcher.get(x5u, now=...)`` returns the validated Credential for an x5u:

1. **Memory tier** (:class:`~verifier.net.cache.MemoryTier`): a fresh entry is returned at the
   cost of a dict lookup and the validity check at ``now``. An entry past its lifetime but
   inside its grace period is served while one background refresh runs
   (stale-while-revalidate).
2. **Negative cache**: a failure is remembered, with its reason, for ``failure_ttl``; a
   404 or 410 for ``not_found_ttl``, in a memory of its own
   (:class:`~verifier.net.coldfetch.ColdFetchBudget`).
3. **Single flight**: concurrent misses for one x5u await one shared load.
4. The load tries the **stores** (preloaded certificates, the on-disk warm cache, stores
   given by the caller), re-validating what they hold, then the fleet's **shared tier** if
   one is given (:class:`SharedTier`: its chain, validated here, or its fetch failure; on
   a miss one instance of the fleet fetches while the others wait), then the **network**: the x5u
   URL rules (:mod:`verifier.core.x5u`), the host allow/deny lists, the host's **budget of
   cold fetches** (:mod:`verifier.net.coldfetch`), then one GET by
   :class:`~verifier.net.transport.PinnedGetter`: the per-host **circuit breaker**, DNS
   resolution with every address vetted (:mod:`verifier.net.ssrf`), a connection pinned to a
   vetted address (TLS SNI and hostname verification against the x5u host), no
   redirects, a total timeout and a body cap.
5. The chain is validated against the trust store, then checked against its CRLs
   (:mod:`verifier.net.crl`); its lifetime comes from ``Cache-Control``/``Expires``, clamped
   to the configured bounds and never past the earliest notAfter or a CRL's nextUpdate.
   Parsing and validating a chain costs milliseconds of CPU (several signature checks), so
   the loads take turns: one chain per event-loop turn (:class:`_Turnstile`), and a flood of
   new x5u cannot hold up, for more than one validation at a time, the calls whose chain
   is cached.
6. **Vouching.** A chain fetched from the network (or from the fleet's tier) waits on
   probation in the memory tier until a PASSporT's signature verifies under it (the
   pipeline calls :meth:`CertificateFetcher.vouched`): anyone can serve a copy of a real
   chain at URLs of their own, and only its signer can make a signature verify under it.
   Vouched, it joins the main cache, the stores get it (the fleet's tier for its whole
   lifetime: until then only for ``failure_ttl``, for the instances waiting on the fetch),
   and the host's cold-fetch token comes back. A copy no signature uses keeps its token
   spent, churns only the probation segment and is never written to disk.

Use it as ``async with CertificateFetcher(trust, settings, client=http_client) as fetcher:``
(it opens and closes its own ``aiohttp.ClientSession``), or pass a ``session`` that the
caller owns and call :meth:`CertificateFetcher.close` on teardown. No state lives at module
level.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from cachetools import LRUCache
from cryptography import x509
from yarl import URL

from ..core import errors
from ..core.certs import Credential, TrustStore, load_chain
from ..core.errors import VerificationError, X5uFetchFailed, X5uRefused
from ..core.x5u import check_x5u_url
from .cache import (
    CacheEntry,
    ChainStore,
    DiskStore,
    MemoryTier,
    PreloadStore,
    StoredChain,
    clamp,
    lifetime_from_headers,
)
from .coldfetch import ColdFetchBudget
from .crl import CrlChecker, CrlMode, Revocation, check_published
from .ssrf import Resolver, host_matches, system_resolver
from .transport import Answer, HostBusy, HttpClientSettings, NotFound, PinnedGetter, SessionUser

__all__ = ["CertificateFetcher", "FetchSettings", "FetchStats", "SharedFailure", "SharedTier"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_ACCEPT = "application/pem-certificate-chain, application/x-pem-file, application/pkix-cert"
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_UNVOUCHED = frozenset({"network", "shared"})
"""Where a chain comes from that no signature has yet verified under, here."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchSettings:
    """The knobs of certificate retrieval that are its own, with their defaults; the rules
    every fetch shares (ports, timeouts, TLS, addresses, breaker) are the fetcher's
    :class:`~verifier.net.transport.HttpClientSettings`. Times are seconds.

    Raises (constructor):
        ValueError: a value out of range (naming the field).
    """

    max_body: int = 32 * 1024
    """Largest x5u body read, in bytes; a longer one fails (436)."""
    default_ttl: float = 3600.0
    """Lifetime when the repository gives neither Cache-Control nor Expires."""
    min_ttl: float = 300.0
    """Shortest lifetime of a cached chain, whatever the repository says (no-store too)."""
    max_ttl: float = 86400.0
    """Longest lifetime of a cached chain (never past its notAfter or a CRL's nextUpdate)."""
    failure_ttl: float = 30.0
    """How long a failure (fetch, chain, CRL) is remembered and answered from the cache."""
    not_found_ttl: float = 300.0
    """How long an x5u answered 404 or 410 is remembered (apart from other failures)."""
    not_found_size: int = 10_000
    """Most x5u answered 404 or 410 remembered (the least recently asked are forgotten)."""
    cold_fetch_rate: float = 5.0
    """New x5u per second that one host may fail to serve (404, HTML, bad chain, a chain no
    signature verifies under) before more are refused 436 "busy" without a request: a
    fetch whose chain a call's signature verifies under costs nothing. Paths in a directory
    that has served such a chain have a budget of their own of the same size; 0: no
    limit."""
    cold_fetch_burst: int = 100
    """New x5u of one host that may be in flight or have failed at once before
    ``cold_fetch_rate`` applies."""
    cold_fetch_unknown_hosts_rate: float = 20.0
    """New x5u per second that the hosts which have never served a chain a call's signature
    verified under may fail to serve, all together, before more of theirs are refused 436
    "busy" (besides each host's own budget): a forger cannot multiply its budget by
    its number of hosts. Known hosts never wait on it; 0: no limit."""
    cold_fetch_unknown_hosts_burst: int = 200
    """New x5u of unknown hosts that may be in flight or have failed at once, all together,
    before ``cold_fetch_unknown_hosts_rate`` applies."""
    stale_grace: float = 3600.0
    """How long past its lifetime an entry may be served while a refresh runs."""
    cache_size: int = 10_000
    """Most x5u entries held in memory that a call's signature has verified under, besides
    a tenth as many newly fetched ones on probation (and failures remembered, and
    breakers)."""
    host_allow: tuple[str, ...] = ()
    """If not empty, the only x5u hosts (exact or ``.suffix``) that are fetched."""
    host_deny: tuple[str, ...] = ()
    """x5u hosts (exact or ``.suffix``) that are never fetched."""
    warm_cache_dir: str | None = None
    """Directory of fetched chains kept across restarts (re-validated when loaded)."""
    preload_dir: str | None = None
    """A directory with ``index.json`` mapping x5u -> PEM file: never fetched."""
    crl_check: bool = True
    """Check the chain's CRLs (distribution points and ``crl_files``)."""
    crl_mode: CrlMode = "open"
    """When no CRL can be had: "open" verifies with a warning, "closed" fails (437)."""
    crl_files: tuple[str, ...] = ()
    """CRL files (PEM or DER), matched to certificates by issuer."""
    crl_max_bytes: int = 1024 * 1024
    """Largest CRL read, in bytes."""
    crl_timeout: float = 3.0
    """Total time for one CRL fetch (http allowed, RFC 5280)."""

    def __post_init__(self) -> None:
        if self.crl_timeout <= 0:
            raise ValueError("crl_timeout must be > 0")
        for name in (
            "max_body",
            "crl_max_bytes",
            "cache_size",
            "not_found_size",
            "cold_fetch_burst",
            "cold_fetch_unknown_hosts_burst",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in (
            "default_ttl",
            "min_ttl",
            "failure_ttl",
            "not_found_ttl",
            "stale_grace",
            "cold_fetch_rate",
            "cold_fetch_unknown_hosts_rate",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.min_ttl > self.max_ttl:
            raise ValueError("min_ttl must not exceed max_ttl")
        if self.crl_mode not in ("open", "closed"):
            raise ValueError(f"crl_mode must be 'open' or 'closed', not {self.crl_mode!r}")


@dataclass(slots=True)
class FetchStats:
    """Counters of the cache, for metrics (the transport counts errors and breaker opens)."""

    hits: int = 0
    misses: int = 0
    stale_served: int = 0
    negative_hits: int = 0
    coalesced: int = 0
    fetches: int = 0
    refreshes: int = 0
    store_hits: int = 0
    reload_kept: int = 0
    """Cached chains validated again against changed anchors, and kept."""
    reload_drops: int = 0
    """Cached chains dropped because they no longer validate against changed anchors."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedFailure:
    """A fetch failure another instance of the fleet met: answered until ``expires_at``."""

    slug: str
    detail: str
    expires_at: float


class SharedTier(Protocol):
    """The fleet's shared cache behind the stores (:class:`verifier.net.redis_tier.RedisTier`).

    No method raises for an unavailable tier: reads miss, writes are dropped, and
    ``acquire`` says "fetch it yourself", so an outage costs the fleet its sharing only.
    """

    async def load(self, x5u: str) -> StoredChain | SharedFailure | None:
        """The unexpired chain or failure published for ``x5u``; None: a miss."""
        ...

    async def save(self, x5u: str, chain: StoredChain) -> None: ...

    async def save_failure(self, x5u: str, failure: SharedFailure) -> None: ...

    async def acquire(self, x5u: str) -> str | None:
        """A token: this instance fetches ``x5u`` (empty: no lock could be taken); None:
        another instance holds the fetch lock."""
        ...

    async def wait(self, x5u: str, seconds: float) -> StoredChain | SharedFailure | None:
        """The holder's result; None when the lock is gone without one, or after ``seconds``."""
        ...

    async def release(self, x5u: str, token: str) -> None: ...


class _Turnstile:
    """Runs CPU-heavy steps one at a time, each in an event-loop turn of its own, after
    whatever was ready when it was asked for: so a burst of loads reaching validation in
    the same turn takes turns with the calls served from the cache, instead of holding the
    loop for all of them back to back.

    Not a thread: pyca/cryptography's chain verification keeps the GIL, so a thread would
    hand the loop back only every switch interval (5 ms) while it has work queued.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def run(self, step: Callable[[], _T]) -> _T:
        async with self._lock:  # FIFO: loads are validated in the order they were ready
            await asyncio.sleep(0)  # let what is ready (cached calls among it) run first
            return step()


def _fresh(exc: VerificationError) -> VerificationError:
    """A new exception like ``exc``: a shared one re-raised would pile up tracebacks."""
    return type(exc)(exc.detail)


class CertificateFetcher(SessionUser):
    """The x5u credential source: fetch, validate, cache. See the module docstring.

    ``client`` holds the rules it shares with every outgoing fetch (ports, timeouts, TLS,
    addresses, breaker); ``trust`` can be swapped with :meth:`set_trust` (SIGHUP reload);
    ``clock`` (epoch seconds) drives lifetimes, the negative cache and the breaker;
    ``resolver`` answers DNS (tests fake other networks with it); ``stores`` are extra tiers
    behind memory; ``on_load(outcome, seconds)`` is told how each load (fetch and
    validation) went: ``"ok"`` or the failure's slug (the service feeds its latency
    histogram with it); ``shared`` is the fleet's tier, consulted after the stores and
    before the network.

    Raises (constructor):
        ValueError: a session created with ``trust_env=True`` (a proxy would bypass the
            address pinning), or unreadable preload/CRL files.
        OSError: ``client.ca_file`` cannot be read or holds no certificate.
    """

    def __init__(
        self,
        trust: TrustStore,
        settings: FetchSettings | None = None,
        *,
        client: HttpClientSettings | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        resolver: Resolver = system_resolver,
        stores: Sequence[ChainStore] = (),
        on_load: Callable[[str, float], None] | None = None,
        shared: SharedTier | None = None,
    ) -> None:
        self.settings = settings = settings or FetchSettings()
        self.client = client = client or HttpClientSettings()
        if session is not None and session.trust_env:
            raise ValueError("the fetcher's session must not use trust_env (proxies)")
        self._trust = trust
        self._generation = 0
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._on_load = on_load
        self._getter = PinnedGetter(
            client,
            resolver=resolver,
            clock=clock,
            trial_timeout=max(client.timeout, settings.crl_timeout),
            max_hosts=settings.cache_size,
        )
        self._memory = MemoryTier(settings.cache_size)
        self._negative: LRUCache[str, tuple[VerificationError, float]] = LRUCache(
            maxsize=settings.cache_size
        )
        self._budget = ColdFetchBudget(
            rate=settings.cold_fetch_rate,
            burst=settings.cold_fetch_burst,
            not_found_ttl=settings.not_found_ttl,
            not_found_size=settings.not_found_size,
            size=settings.cache_size,
            clock=clock,
            unknown_hosts_rate=settings.cold_fetch_unknown_hosts_rate,
            unknown_hosts_burst=settings.cold_fetch_unknown_hosts_burst,
        )
        self._inflight: dict[str, asyncio.Task[CacheEntry | VerificationError]] = {}
        self._preload = PreloadStore(settings.preload_dir) if settings.preload_dir else None
        self._disk = DiskStore(settings.warm_cache_dir) if settings.warm_cache_dir else None
        chain_stores: list[ChainStore] = []
        if self._preload is not None:
            chain_stores.append(self._preload)
        if self._disk is not None:
            chain_stores.append(self._disk)
        self._stores = (*chain_stores, *stores)
        self._shared = shared
        self._crl = (
            CrlChecker(
                fetch=self._fetch_crl,
                clock=clock,
                mode=settings.crl_mode,
                files=settings.crl_files,
                max_bytes=settings.crl_max_bytes,
                failure_ttl=settings.failure_ttl,
            )
            if settings.crl_check
            else None
        )
        self._published: tuple[x509.CertificateRevocationList, ...] = ()
        self._turns = _Turnstile()
        self._saving: set[asyncio.Task[None]] = set()
        self.counters = FetchStats()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def _close_more(self) -> None:
        """Loads and refreshes are cancelled by :meth:`close`; then the stores' writes
        finish, then the CRL checker closes."""
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)
        if self._crl is not None:
            await self._crl.close()

    # -- trust -----------------------------------------------------------------------------

    @property
    def trust(self) -> TrustStore:
        return self._trust

    def set_trust(self, trust: TrustStore) -> None:
        """Swap the trust anchors (SIGHUP reload). The same anchors and policy change nothing.
        Other ones: each cached chain is validated again when next asked for (no refetch) and
        dropped only if it no longer validates; remembered failures are forgotten; loads
        already running finish for their callers but are not cached."""
        same = trust.same_trust(self._trust)
        self._trust = trust
        if same:
            return
        self._generation += 1
        self._negative.clear()

    def soonest_expiring(self, n: int) -> list[tuple[str, float]]:
        """(SPC, notAfter) of the ``n`` cached signer certificates that expire first, one per
        SPC (a chain's notAfter is its earliest certificate's)."""
        earliest: dict[str, float] = {}
        for entry in self._memory.entries():
            info = entry.credential.certificate
            spc = ",".join(info.spc) if info is not None and info.spc else "-"
            earliest[spc] = min(earliest.get(spc, math.inf), entry.credential.not_after)
        return heapq.nsmallest(n, earliest.items(), key=lambda item: item[1])

    def set_published_crls(self, crls: Sequence[x509.CertificateRevocationList]) -> None:
        """Swap the STI-PA's published CRLs (checked with every chain, whatever ``crl_check``
        says). New ones re-check each cached chain when next asked for, as :meth:`set_trust`."""
        crls = tuple(crls)
        if crls == self._published:
            return
        self._published = crls
        self._generation += 1
        self._negative.clear()

    def _revalidate(self, x5u: str, entry: CacheEntry, now: float) -> CacheEntry | None:
        """``entry`` validated against the current anchors (its chain, not refetched), or None
        (dropped) if it no longer validates. Its lifetimes and revocation state stay."""
        old = entry.credential
        try:
            credential = self._trust.validate(old.certificates, now)
            check_published(self._published, credential.certificates, now)
        except VerificationError as exc:
            self._memory.delete(x5u)
            self.counters.reload_drops += 1
            log.info("x5u_dropped_on_reload", extra={"x5u": x5u, "slug": exc.slug})
            return None
        self.counters.reload_kept += 1
        entry.credential = dataclasses.replace(credential, warnings=old.warnings)
        entry.generation = self._generation
        return entry

    # -- the credential source -------------------------------------------------------------

    async def get(self, x5u: str, *, now: float) -> Credential:
        """The validated Credential for ``x5u``, checked to be valid at ``now``.

        Raises:
            X5uRefused: 436, the URL rules, host lists or address vetting refuse x5u.
            X5uFetchFailed: 436, no certificate could be had (network, status, body, breaker).
            CertificateError: 437, the chain is untrusted, expired, revoked, has no SPC, or
                its revocation status is unknown in fail-closed mode.
        """
        clock = self._clock()
        entry = self._memory.get(x5u)
        if entry is not None and entry.generation != self._generation:
            entry = self._revalidate(x5u, entry, now)
        if entry is not None:
            if clock < entry.fresh_until:
                self.counters.hits += 1
                entry.credential.check_time(now)
                return entry.credential
            if clock < entry.stale_until:
                self.counters.stale_served += 1
                if entry.next_refresh <= clock:
                    entry.next_refresh = clock + self.settings.failure_ttl
                    self._start_load(x5u, clock, refresh=True)
                entry.credential.check_time(now)
                return entry.credential
            self._memory.delete(x5u)
        missing = self._budget.remembered(x5u)
        if missing is not None:
            raise X5uFetchFailed(missing)
        failed = self._negative.get(x5u)
        if failed is not None:
            if clock < failed[1]:
                self.counters.negative_hits += 1
                raise _fresh(failed[0])
            self._negative.pop(x5u, None)
        self.counters.misses += 1
        task = self._inflight.get(x5u)
        if task is None:
            task = self._start_load(x5u, now, refresh=False)
        else:
            self.counters.coalesced += 1
        got = await asyncio.shield(task)
        if isinstance(got, VerificationError):
            raise _fresh(got)
        got.credential.check_time(now)
        return got.credential

    def _start_load(
        self, x5u: str, now: float, *, refresh: bool
    ) -> asyncio.Task[CacheEntry | VerificationError]:
        task = self._inflight.get(x5u)
        if task is not None and not task.done():  # a done one awaits only its forgetting
            return task
        if self._closed:
            raise RuntimeError("the fetcher is closed")
        if refresh:
            self.counters.refreshes += 1
        task = asyncio.create_task(self._load(x5u, now, self._generation))
        self._inflight[x5u] = task
        task.add_done_callback(lambda t: self._forget(x5u, t))
        return task

    def _forget(self, x5u: str, task: asyncio.Task[CacheEntry | VerificationError]) -> None:
        if self._inflight.get(x5u) is task:
            del self._inflight[x5u]

    async def _load(self, x5u: str, now: float, generation: int) -> CacheEntry | VerificationError:
        started = time.perf_counter()
        try:
            entry = await self._obtain(x5u, now, generation)
        except VerificationError as exc:
            if self._on_load is not None:
                self._on_load(exc.slug, time.perf_counter() - started)
            if isinstance(exc.__cause__, NotFound):
                self._budget.not_found(x5u, exc.detail)
            elif generation == self._generation and not isinstance(exc.__cause__, HostBusy):
                self._negative[x5u] = (exc, self._clock() + self.settings.failure_ttl)
                if isinstance(exc, errors.UnsupportedCredential):
                    self._memory.delete(x5u)  # a definitive answer ends stale serving
            log.info("x5u_failed", extra={"x5u": x5u, "slug": exc.slug, "detail": exc.detail})
            return exc
        if self._on_load is not None:
            self._on_load("ok", time.perf_counter() - started)
        # A chain fetched (or shared by the fleet) is vouched for by the first PASSporT whose
        # signature verifies under it (:meth:`vouched`); until then it is on probation.
        vouched = entry.source not in _UNVOUCHED or self._memory.vouched(x5u)
        if generation == self._generation and entry.fresh_until > self._clock():
            self._memory.put(x5u, entry, vouched=vouched)
            self._negative.pop(x5u, None)
        if vouched:
            self._credit(x5u, entry)
        return entry

    def vouched(self, x5u: str) -> None:
        """A PASSporT naming ``x5u`` verified under its credential: a chain on probation
        joins the main cache, the stores get it (the fleet's tier for its whole lifetime),
        and the host's cold-fetch token comes back. Anyone can serve a copy of a real chain
        at a URL of their own; only its signer can make a signature verify under it."""
        entry = self._memory.promote(x5u)
        if entry is not None:
            self._credit(x5u, entry)

    def _credit(self, x5u: str, entry: CacheEntry) -> None:
        self._budget.served(URL(x5u, encoded=True), fetched=entry.source == "network")
        stored, entry.unsaved = entry.unsaved, None
        if stored is not None and not self._closed:
            task = asyncio.create_task(self._save(x5u, stored))
            self._saving.add(task)
            task.add_done_callback(self._saving.discard)

    async def _save(self, x5u: str, stored: StoredChain) -> None:
        for store in self._stores:
            await store.save(x5u, stored)
        if self._shared is not None:
            await self._shared.save(x5u, stored)

    async def _obtain(self, x5u: str, now: float, generation: int) -> CacheEntry:
        target = check_x5u_url(x5u, self.client.ports)
        settings = self.settings
        if settings.host_deny and host_matches(target.host, settings.host_deny):
            raise X5uRefused(f"x5u host {target.host} is on the deny list")
        if settings.host_allow and not host_matches(target.host, settings.host_allow):
            raise X5uRefused(f"x5u host {target.host} is not on the allow list")
        for store in self._stores:
            stored = await store.load(x5u)
            if stored is None or stored.expires_at <= self._clock():
                continue
            try:
                credential, revocation = await self._validate(stored.body, now)
            except VerificationError:
                if store is self._preload:
                    raise
                log.info("x5u_store_entry_invalid", extra={"x5u": x5u})
                continue
            self.counters.store_hits += 1
            source = "preload" if store is self._preload else type(store).__name__
            return self._entry(credential, revocation, stored.expires_at, generation, source)
        if self._shared is not None:
            return await self._via_shared(self._shared, x5u, now, generation)
        return await self._network(x5u, now, generation)

    async def _via_shared(
        self, shared: SharedTier, x5u: str, now: float, generation: int
    ) -> CacheEntry:
        """The shared tier's chain (validated here) or failure; on a miss, fetch under the
        fleet's lock, or wait for its holder up to the fetch timeout, then fetch anyway."""
        deadline = time.monotonic() + self.client.timeout
        found = await shared.load(x5u)
        token: str | None = None
        while True:
            if isinstance(found, SharedFailure) and found.slug == X5uFetchFailed.slug:
                raise X5uFetchFailed(found.detail)
            if isinstance(found, StoredChain):
                try:
                    credential, revocation = await self._validate(found.body, now)
                except VerificationError:
                    log.info("x5u_shared_entry_invalid", extra={"x5u": x5u})
                    break  # fetch it ourselves
                self.counters.store_hits += 1
                end = min(found.expires_at, self._clock() + self.settings.max_ttl)
                return self._entry(credential, revocation, end, generation, "shared")
            token = await shared.acquire(x5u)
            if token is not None or time.monotonic() >= deadline:
                break
            found = await shared.wait(x5u, deadline - time.monotonic())
        try:
            return await self._network(x5u, now, generation)
        except X5uFetchFailed as exc:  # the repository's fault: spare it the fleet's retries
            if isinstance(exc.__cause__, HostBusy):  # our own queueing: not the repository's
                raise
            expires_at = self._clock() + self.settings.failure_ttl
            await shared.save_failure(
                x5u, SharedFailure(slug=exc.slug, detail=exc.detail, expires_at=expires_at)
            )
            raise
        finally:
            if token:
                await shared.release(x5u, token)

    async def _network(self, x5u: str, now: float, generation: int) -> CacheEntry:
        settings = self.settings
        answer = await self._fetch_x5u(x5u)
        credential, revocation = await self._validate(answer.body, now)
        clock = self._clock()
        lifetime = clamp(
            lifetime_from_headers(answer.headers, now=clock),
            default=settings.default_ttl,
            minimum=settings.min_ttl,
            maximum=settings.max_ttl,
        )
        entry = self._entry(credential, revocation, clock + lifetime, generation, "network")
        no_store = "no-store" in answer.headers.get("Cache-Control", "").lower()
        if not no_store and entry.fresh_until > clock:
            entry.unsaved = StoredChain(
                body=answer.body, fetched_at=clock, expires_at=entry.fresh_until
            )
            if self._shared is not None:  # the fleet's waiters get it now, briefly until vouched
                briefly = min(entry.fresh_until, clock + settings.failure_ttl)
                await self._shared.save(x5u, dataclasses.replace(entry.unsaved, expires_at=briefly))
        return entry

    async def _validate(self, body: bytes, now: float) -> tuple[Credential, Revocation]:
        credential = await self._turns.run(lambda: self._check_chain(body, now))
        if self._crl is None:
            return credential, Revocation(
                credential=credential, next_update=float("inf"), complete=True
            )
        revocation = await self._crl.check(credential)
        return revocation.credential, revocation

    def _check_chain(self, body: bytes, now: float) -> Credential:
        """Parse ``body``, validate its chain to the anchors, check the published CRLs."""
        try:
            chain = load_chain(body)
        except errors.CertificateInvalid as exc:
            raise X5uFetchFailed(f"x5u body is not a certificate chain: {exc.detail}") from None
        credential = self._trust.validate(chain, now)
        check_published(self._published, credential.certificates, now)
        return credential

    def _entry(
        self,
        credential: Credential,
        revocation: Revocation,
        lifetime_end: float,
        generation: int,
        source: str,
    ) -> CacheEntry:
        clock = self._clock()
        fresh = min(lifetime_end, credential.not_after, revocation.next_update)
        if not revocation.complete:  # failed open: ask for the CRL again soon
            fresh = min(fresh, clock + self.settings.failure_ttl)
        stale = min(fresh + self.settings.stale_grace, credential.not_after)
        if self.settings.crl_mode == "closed":
            stale = min(stale, revocation.next_update)
        return CacheEntry(
            credential=credential,
            fetched_at=clock,
            fresh_until=fresh,
            stale_until=stale,
            generation=generation,
            source=source,
        )

    # -- the network -----------------------------------------------------------------------

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("no session: use `async with CertificateFetcher(...)`")
        return self._session

    async def _fetch_x5u(self, x5u: str) -> Answer:
        """The x5u body (the URL rules were applied by the caller).

        Raises:
            X5uRefused, X5uFetchFailed: see :meth:`PinnedGetter.get`; HTML is refused too.
        """
        url = URL(x5u, encoded=True)
        self._budget.take(url)
        self.counters.fetches += 1
        answer = await self._getter.get(
            self._session_or_fail(),
            url,
            max_bytes=self.settings.max_body,
            seconds=self.client.timeout,
            what="x5u",
            accept=_ACCEPT,
        )
        if answer.content_type in _HTML_TYPES or answer.body.lstrip()[:1] == b"<":
            raise X5uFetchFailed(
                f"x5u answered {answer.content_type or 'a body'} that looks like HTML, "
                "not a certificate"
            )
        return answer

    async def _fetch_crl(self, url: str) -> bytes:
        """A CRL's bytes: http or https, any port, same address rules and caps as x5u.

        Raises:
            X5uRefused, X5uFetchFailed: as for x5u (the CRL checker keeps the detail).
        """
        try:
            parsed = URL(url, encoded=True)
        except ValueError as exc:
            raise X5uRefused(f"CRL URL is not valid: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host or parsed.port is None:
            raise X5uRefused(f"CRL URL {url!r} is not http(s) with a host")
        if parsed.user is not None or parsed.password is not None:
            raise X5uRefused("CRL URL must not carry userinfo")
        answer = await self._getter.get(
            self._session_or_fail(),
            parsed,
            max_bytes=self.settings.crl_max_bytes,
            seconds=self.settings.crl_timeout,
            what="CRL",
            accept="application/pkix-crl, */*",
        )
        return answer.body

    # -- metrics ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The counters and sizes, for metrics."""
        out: dict[str, Any] = {
            f.name: getattr(self.counters, f.name) for f in dataclasses.fields(self.counters)
        }
        out["fetch_errors"] = dict(self._getter.errors)
        out["breaker_opens"] = self._getter.breaker_opens
        out["fetch_busy"] = sum(self._getter.busy.values())
        out["fetch_rate_limited"] = sum(self._budget.refused.values())
        out["not_found_hits"] = self._budget.not_found_hits
        out["not_found_size"] = len(self._budget)
        out["breakers_open"] = self._getter.open_circuits()
        out["cache_size"] = len(self._memory)
        out["negative_size"] = len(self._negative)
        out["crl_cache_size"] = len(self._crl) if self._crl is not None else 0
        out["crl_fetches"] = self._crl.fetches if self._crl is not None else 0
        out["crl_failures"] = self._crl.failures if self._crl is not None else 0
        return out
