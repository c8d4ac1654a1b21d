"""Rich Call Data (RFC 9795) at the network edge: ``rcdi`` keys as JSON pointers, canonical
JSON for digests of inline values, fetching referenced content, and :func:`verify_rcd`.

The rules themselves, and what of them was checked against which section of RFC 9795, are
in :mod:`verifier.core.rcd`; this module re-exports its API. JSON pointers (RFC 6901) are
the ``jsonpointer`` library's and canonical JSON is ``rfc8785``'s (RFC 8785; for the
strings, arrays and objects of an RCD it is the RFC 8225 section 9 form that RFC 9795
section 6.1 asks for). Core may import neither; neither is on the hot path (an RCD is
judged only when a PASSporT carries one).

API: :func:`parse_rcd` (pure) -> :class:`Rcd`; :func:`check_inline` (pure);
:class:`RcdContentFetcher` (the I/O, with its :class:`RcdSettings` and the shared
:class:`~verifier.net.transport.HttpClientSettings`); :func:`verify_rcd`
-> :class:`RcdVerdict`; :func:`digest_of` and :func:`jcs` build ``rcdi`` values.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import aiohttp
import rfc8785
from cachetools import TTLCache
from jsonpointer import EndOfList, JsonPointer, JsonPointerException
from yarl import URL

from ..core.errors import VerificationError, VerifierError
from ..core.rcd import (
    ALGORITHMS,
    DIGEST_MISMATCH,
    DIGEST_OK,
    NO_DIGEST,
    NOT_CHECKED,
    Digest,
    Kind,
    Rcd,
    RcdError,
    RcdVerdict,
    check_claims,
    check_jcard,
    digest_of,
    is_data_uri,
    jcard_references,
    signed_outcomes,
    url_problem,
)
from .ssrf import Resolver, system_resolver
from .transport import HttpClientSettings, PinnedGetter, SessionUser

__all__ = [
    "ALGORITHMS",
    "Digest",
    "Kind",
    "Rcd",
    "RcdContentFetcher",
    "RcdError",
    "RcdFetchError",
    "RcdFetchStats",
    "RcdSettings",
    "RcdVerdict",
    "check_inline",
    "digest_of",
    "jcs",
    "parse_rcd",
    "verify_rcd",
]

log = logging.getLogger(__name__)


class RcdFetchError(VerifierError):
    """Referenced content (jcl, icn...) could not be had; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- canonical JSON and JSON pointers -----------------------------------------------------------


def jcs(value: Any) -> bytes:
    """``value`` in the JSON Canonicalization Scheme (RFC 8785), UTF-8 encoded.

    Raises:
        ValueError: ``value`` is not I-JSON (NaN, an integer beyond 2**53 - 1, a lone
            surrogate, a set...).
    """
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(str(exc)) from None


def _pointer(key: str) -> JsonPointer:
    try:
        return JsonPointer(key)
    except JsonPointerException as exc:
        raise RcdError(f"rcdi key {key!r} is not a JSON pointer (RFC 6901): {exc}") from None


def _resolve(pointer: JsonPointer, document: Any) -> Any:
    """The value ``pointer`` names in ``document``. Raises LookupError when there is none."""
    try:
        value = pointer.resolve(document)
    except JsonPointerException as exc:
        raise LookupError(str(exc)) from None
    if isinstance(value, EndOfList):  # "-" names the slot after a list's last element
        raise LookupError("'-' names no element")
    return value


def _check_pointer(key: str, rcd: Mapping[str, Any]) -> None:
    pointer = _pointer(key)
    parts = pointer.parts
    if not parts or parts[0] not in rcd:
        raise RcdError(f"rcdi key {key!r} names no member of rcd")
    if parts[0] == "icn" and len(parts) > 1:
        raise RcdError(f"rcdi key {key!r} points inside an image")
    if parts[0] == "jcl":
        if not all(p.isdecimal() and p.isascii() for p in parts[1:]):
            raise RcdError(f"rcdi key {key!r} is not a path into a jCard")
        return  # resolved once the jCard is fetched (RFC 9795 section 6.1.4)
    try:
        _resolve(pointer, rcd)
    except LookupError:
        raise RcdError(f"rcdi key {key!r} names nothing in rcd") from None


def parse_rcd(payload: Mapping[str, Any]) -> Rcd | None:
    """The ``rcd``, ``rcdi`` and ``crn`` claims of a PASSporT payload, or None if it has
    no ``rcd`` claim.

    Raises:
        RcdError: what :func:`verifier.core.rcd.check_claims` refuses, and an rcdi key that
            is not a JSON pointer to a member of rcd.
    """
    rcd = check_claims(payload)
    if rcd is not None:
        for key in rcd.rcdi:
            _check_pointer(key, rcd.claims["rcd"])
    return rcd


def _referenced(rcd: Rcd) -> set[str]:
    """Pointers whose digest is over fetched content, not over an inline JSON value."""
    keys = {"/jcl"}
    if rcd.icn is not None and not is_data_uri(rcd.icn):
        keys.add("/icn")
    if rcd.jcd is not None:
        keys.update(jcard_references(rcd.jcd, "/jcd"))
    return keys


def _inline_outcomes(rcd: Rcd) -> dict[str, str]:
    """Outcome of each rcdi entry for inline content (not a URL's content)."""
    referenced = _referenced(rcd)
    outcomes: dict[str, str] = {}
    for key, digest in rcd.rcdi.items():
        if key in referenced or key.startswith("/jcl/"):
            continue
        value = _resolve(JsonPointer(key), rcd.claims["rcd"])  # parse_rcd checked it resolves
        try:
            outcomes[key] = digest.outcome(jcs(value))
        except ValueError:  # a value that has no canonical form cannot match
            outcomes[key] = DIGEST_MISMATCH
    return outcomes


def check_inline(rcd: Rcd) -> list[str]:
    """Problems of inline content against its ``rcdi`` digests (RFC 8785 form), e.g.
    ``["/jcd: digest mismatch"]``; empty when every such digest matches. Inline content
    without a digest is covered by the PASSporT signature and is no problem."""
    return [f"{p}: {o}" for p, o in _inline_outcomes(rcd).items() if o != DIGEST_OK]


# -- fetching referenced content ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RcdSettings:
    """The knobs of fetching RCD content (jcl, icn) that are its own, with their defaults; the
    rules every fetch shares (ports, timeouts, TLS, addresses, breaker) are the fetcher's
    :class:`~verifier.net.transport.HttpClientSettings`. Times are seconds.

    Raises (constructor):
        ValueError: a value out of range (naming the field).
    """

    max_jcl_bytes: int = 64 * 1024
    """Largest jCard document read; a longer one fails."""
    max_icn_bytes: int = 256 * 1024
    """Largest image (or other jCard reference) read; a longer one fails."""
    cache_ttl: float = 3600.0
    """How long fetched content is kept and reused."""
    failure_ttl: float = 30.0
    """How long a failed fetch is remembered and answered from the cache."""
    cache_bytes: int = 16 * 1024 * 1024
    """Most bytes of content held in the cache."""
    max_failures: int = 10_000
    """Most failures remembered (and hosts with a circuit breaker)."""

    def __post_init__(self) -> None:
        for name in ("max_jcl_bytes", "max_icn_bytes", "max_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("cache_ttl", "failure_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.cache_bytes < max(self.max_jcl_bytes, self.max_icn_bytes):
            raise ValueError("cache_bytes must hold at least one jcl and one icn body")


@dataclass(slots=True)
class RcdFetchStats:
    """Counters of the content cache, for metrics."""

    hits: int = 0
    negative_hits: int = 0
    coalesced: int = 0
    fetches: int = 0
    failures: int = 0


_ACCEPT: Mapping[str, str] = MappingProxyType(
    {"jcl": "application/vcard+json, application/json", "icn": "image/*"}
)


class RcdContentFetcher(SessionUser):
    """Fetches jcl and icn content by URL under the x5u rules, with a TTL cache (content and,
    briefly, failures) and one request per URL at a time (single flight).

    Use it as ``async with RcdContentFetcher(settings, client=http_client) as fetcher:`` (it
    opens and closes its own ``aiohttp.ClientSession``), or pass a ``session`` that the
    caller owns and call :meth:`close` on teardown. ``client`` holds the rules it shares with
    every outgoing fetch (ports, timeouts, TLS, addresses, breaker); ``clock`` drives the
    cache and the breaker; ``resolver`` answers DNS.

    Raises (constructor):
        ValueError: a session created with ``trust_env=True`` (a proxy would bypass the
            address pinning).
        OSError: ``client.ca_file`` cannot be read or holds no certificate.
    """

    def __init__(
        self,
        settings: RcdSettings | None = None,
        *,
        client: HttpClientSettings | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings = settings or RcdSettings()
        self.client = client = client or HttpClientSettings()
        if session is not None and session.trust_env:
            raise ValueError("the fetcher's session must not use trust_env (proxies)")
        self._session = session
        self._own_session = session is None
        self._getter = PinnedGetter(
            client,
            resolver=resolver,
            clock=clock,
            trial_timeout=client.timeout,
            max_hosts=settings.max_failures,
        )
        self._content: TTLCache[tuple[Kind, str], bytes] = TTLCache(
            maxsize=settings.cache_bytes, ttl=settings.cache_ttl, timer=clock, getsizeof=len
        )
        self._failed: TTLCache[tuple[Kind, str], str] = TTLCache(
            maxsize=settings.max_failures, ttl=settings.failure_ttl, timer=clock
        )
        self._inflight: dict[tuple[Kind, str], asyncio.Task[bytes | RcdFetchError]] = {}
        self.counters = RcdFetchStats()
        self._closed = False

    async def fetch(self, url: str, kind: Kind) -> bytes:
        """The body at ``url``: from the cache, or one GET shared by concurrent callers.

        Raises:
            RcdFetchError: the URL rules refuse it (nothing is sent), an address is refused,
                DNS, connection, TLS, timeout, a status other than 200, a body over the cap
                for ``kind``, an open circuit; or a failure of the last ``failure_ttl``.
            RuntimeError: the fetcher is closed, or has no session.
        """
        key = (kind, url)
        body = self._content.get(key)
        if body is not None:
            self.counters.hits += 1
            return body
        failed = self._failed.get(key)
        if failed is not None:
            self.counters.negative_hits += 1
            raise RcdFetchError(failed)
        task = self._inflight.get(key)
        if task is None:
            if self._closed:
                raise RuntimeError("the fetcher is closed")
            task = asyncio.create_task(self._load(url, kind))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        else:
            self.counters.coalesced += 1
        got = await asyncio.shield(task)
        if isinstance(got, RcdFetchError):
            raise RcdFetchError(got.reason)
        return got

    def _forget(self, key: tuple[Kind, str], task: asyncio.Task[bytes | RcdFetchError]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _load(self, url: str, kind: Kind) -> bytes | RcdFetchError:
        try:
            body = await self._get(url, kind)
        except RcdFetchError as exc:
            self.counters.failures += 1
            self._failed[(kind, url)] = exc.reason
            log.info("rcd_fetch_failed", extra={"url": url, "kind": kind, "reason": exc.reason})
            return exc
        self._content[(kind, url)] = body
        self._failed.pop((kind, url), None)
        return body

    async def _get(self, url: str, kind: Kind) -> bytes:
        problem = url_problem(url)
        if problem is not None:
            raise RcdFetchError(f"{kind} URL {problem}; not fetched")
        try:
            target = URL(url, encoded=True)
        except ValueError as exc:
            raise RcdFetchError(f"{kind} URL is not valid: {exc}; not fetched") from None
        if target.port not in self.client.ports:
            allowed = ", ".join(str(p) for p in sorted(self.client.ports))
            raise RcdFetchError(
                f"{kind} URL port {target.port} is not allowed (allowed: {allowed}); not fetched"
            )
        if self._session is None:
            raise RuntimeError("no session: use `async with RcdContentFetcher(...)`")
        self.counters.fetches += 1
        max_bytes = self.settings.max_jcl_bytes if kind == "jcl" else self.settings.max_icn_bytes
        try:
            answer = await self._getter.get(
                self._session,
                target,
                max_bytes=max_bytes,
                seconds=self.client.timeout,
                what=kind,
                accept=_ACCEPT[kind],
            )
        except VerificationError as exc:  # X5uRefused, X5uFetchFailed from the transport
            raise RcdFetchError(exc.detail) from None
        return answer.body

    def stats(self) -> dict[str, Any]:
        """The counters and sizes, for metrics."""
        return {
            "hits": self.counters.hits,
            "negative_hits": self.counters.negative_hits,
            "coalesced": self.counters.coalesced,
            "fetches": self.counters.fetches,
            "failures": self.counters.failures,
            "cache_bytes": self._content.currsize,
            "breaker_opens": self._getter.breaker_opens,
        }


# -- judging referenced content -----------------------------------------------------------------


async def _fetched(
    url: str, kind: Kind, digest: Digest | None, fetcher: RcdContentFetcher | None
) -> tuple[str, bytes | None]:
    """Outcome for one URL's content (its body bytes as served, RFC 9795 section 6.1), and
    the body when its digest matched."""
    if digest is None:
        return NO_DIGEST, None
    if not digest.supported:
        return digest.outcome(b""), None
    if fetcher is None:
        return NOT_CHECKED, None
    try:
        body = await fetcher.fetch(url, kind)
    except RcdFetchError as exc:
        return f"fetch failed: {exc.reason}", None
    outcome = digest.outcome(body)
    return outcome, body if outcome == DIGEST_OK else None


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


async def _jcl_members(
    rcd: Rcd, body: bytes, fetcher: RcdContentFetcher | None, details: dict[str, str]
) -> None:
    """Judge the fetched jCard of jcl, the content it references and rcdi entries in it
    (``/jcl/...`` pointers read as if the jCard were inline, RFC 9795 section 6.1.4)."""
    try:
        jcard = json.loads(body, object_pairs_hook=_strict_pairs)
        check_jcard(jcard, "jcl content")
    except ValueError as exc:  # RcdError is one; so are JSON and UTF-8 errors
        reason = exc.reason if isinstance(exc, RcdError) else f"jcl content is not JSON: {exc}"
        details["/jcl"] = f"digest ok, but {reason}"
        return
    refs = jcard_references(jcard, "/jcl")
    await _judge_references(rcd, refs, fetcher, details)
    for key, digest in rcd.rcdi.items():
        if not key.startswith("/jcl/") or key in refs:
            continue
        try:
            value = _resolve(JsonPointer(key[len("/jcl") :]), jcard)
            details[key] = digest.outcome(jcs(value))
        except (LookupError, ValueError):
            details[key] = "names nothing in the jcl content"


async def _judge_references(
    rcd: Rcd,
    refs: Mapping[str, str],
    fetcher: RcdContentFetcher | None,
    details: dict[str, str],
) -> None:
    """URIs inside a jCard: each is fetched under the icn rules and needs its own digest."""
    outcomes = await asyncio.gather(
        *(_fetched(url, "icn", rcd.rcdi.get(p), fetcher) for p, url in refs.items())
    )
    for pointer, (outcome, _body) in zip(refs, outcomes, strict=True):
        details[pointer] = outcome


async def verify_rcd(rcd: Rcd, fetcher: RcdContentFetcher | None) -> RcdVerdict:
    """Judge an RCD (of a PASSporT whose signature verified): inline members are covered by
    that signature, and an rcdi digest of one must match too; jcl, an https icn and URIs in
    a jCard count only when fetched and matching their rcdi digest. With no ``fetcher``
    (offline) such content is "not checked", and the RCD is not verified when there is any.
    Every problem with the content is an outcome in ``details`` (the first one is the
    ``reason``), never an exception.

    Raises:
        RuntimeError: ``fetcher`` is closed.
    """
    details = signed_outcomes(rcd)
    details.update(_inline_outcomes(rcd))
    top: dict[str, tuple[str, Kind]] = {}
    if rcd.jcl is not None:
        top["/jcl"] = (rcd.jcl, "jcl")
    if rcd.icn is not None and not is_data_uri(rcd.icn):
        top["/icn"] = (rcd.icn, "icn")
    outcomes = await asyncio.gather(
        *(_fetched(url, kind, rcd.rcdi.get(p), fetcher) for p, (url, kind) in top.items())
    )
    for pointer, (outcome, _body) in zip(top, outcomes, strict=True):
        details[pointer] = outcome
    if rcd.jcd is not None:
        await _judge_references(rcd, jcard_references(rcd.jcd, "/jcd"), fetcher, details)
    jcl_body = outcomes[0][1] if rcd.jcl is not None else None  # "/jcl" comes first in top
    if jcl_body is not None:
        await _jcl_members(rcd, jcl_body, fetcher, details)
    return RcdVerdict.judge(rcd, details)
