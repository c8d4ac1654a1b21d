"""Rich Call Data (RFC 9795): the ``rcd``, ``rcdi`` and ``crn`` claims, and their integrity.

A bad RCD never fails the call's identity verification: it only leaves the RCD unverified.
So the errors here are :class:`RcdError` (a ValueError), not a ``VerificationError``.

What RFC 9795 says that this module relies on
---------------------------------------------

Sources: the RFC's table of contents (sections 3, 4, 5 and 5.1 by those numbers) and its
published examples (``"rcdi": {"/icn": "sha256-..."}``); the subsection numbers (5.1.1
``nam`` to 5.1.5 ``jcl``, section 6 ``rcdi``) and the wording below were written from
recollection of the RFC text, which could not be read in full here: check them against it.

- **The claims** (section 5.1, subsections 5.1.1-5.1.5). ``rcd`` is a JSON object.
  ``nam`` is the caller's display name, a string that is to be present once (possibly
  empty). ``apn`` is an alternate presentation number, ``icn`` an HTTPS URL of an image
  (the logo), ``jcd`` a jCard (RFC 7095) inline, ``jcl`` an HTTPS URL of a jCard document;
  ``jcd`` and ``jcl`` exclude each other. Other members may appear (the object is
  extensible) and are kept. ``crn`` (call reason) is a string claim beside ``rcd``.
- **Integrity** (section 4 gives the overview; section 6, the ``rcdi`` claim, the rules).
  ``rcdi`` is a JSON object: each key is a JSON pointer (RFC 6901) into ``rcd`` naming one
  element (``/icn``, ``/jcl``, ``/jcl/1/2/3`` for a URI inside the fetched jCard,
  ``/jcd/1/2/3`` for one inside the inline jCard); each value is an integrity string in
  the W3C Subresource Integrity form ``<alg>-<base64 digest>``, e.g. ``sha256-Rojg...``.
  URI-referenced content is fetched by the verifier and counts only when its digest
  matches; content referenced from inside a jCard goes one level deep, no further.
- **What the signature covers.** Everything inline in the PASSporT (``nam``, ``apn``,
  ``jcd``, ``crn``) is covered by the PASSporT signature itself; what a URL refers to is
  not, so only a matching ``rcdi`` digest makes it trustworthy. Content without a digest
  (no ``rcdi``, or no entry for it) is not verified: it may be shown, but not as verified.

Choices made where the text leaves room (or could not be checked, see the report)
-----------------------------------------------------------------------------------

- Digest algorithms: ``sha256`` (the one the RFC's examples use), ``sha384``, ``sha512``
  (the SRI set). Any other name is malformed. The base64 part is accepted with or without
  ``=`` padding and in the standard or URL-safe alphabet; its length must fit the algorithm.
- Referenced content is digested over the bytes as served. For ``jcl`` (JSON), a digest
  computed over the JSON Canonicalization Scheme form (RFC 8785) of the same document
  is accepted too: it names the same content.
- An ``rcdi`` entry for inline content (``/jcd``, ``/nam``, a member inside ``jcd``...) is
  checked against the RFC 8785 form of that value; a mismatch makes the RCD unverified.
  ``nam`` and ``apn`` without an entry are covered by the signature and count as verified;
  an inline ``jcd`` needs its ``/jcd`` entry (the project's issue: content without a
  matching digest is not reported as verified).
- A member of a jCard is a reference when its value type is ``uri`` and its value an
  ``http(s)`` URL (``tel:``, ``mailto:`` and ``data:`` values are inline content).
  Such content (a photo, a logo) is fetched under the ``icn`` rules and size cap.
- URL rules for ``icn``, ``jcl`` and jCard references: https, a host, no userinfo, no
  fragment (a query is allowed: image CDNs use them), a port from the allowed set; then
  the x5u rules of :class:`~verifier.net.transport.PinnedGetter` (vetted addresses, pinned
  connection, no redirects, status 200, size cap, total timeout, circuit breaker per
  host). The media type is not judged: the digest is what makes content trustworthy.
- ``nam`` is required (the RFC asks for it once in every ``rcd``); an ``rcd`` without it is
  malformed. A null member counts as absent.

API: :func:`parse_rcd` (pure) -> :class:`Rcd`; :func:`check_inline` (pure);
:class:`RcdContentFetcher` (the I/O, with its :class:`RcdSettings`); :func:`verify_rcd`
-> :class:`RcdVerdict`; :func:`digest_of` and :func:`jcs` build ``rcdi`` values.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from cachetools import TTLCache
from yarl import URL

from ..__version__ import __version__
from ..core.errors import VerificationError, VerifierError
from ..core.x5u import DEFAULT_X5U_PORTS
from .ssrf import AddressPolicy, Resolver, system_resolver
from .transport import PinnedGetter, SessionUser

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

ALGORITHMS: Mapping[str, int] = MappingProxyType({"sha256": 32, "sha384": 48, "sha512": 64})
"""Digest algorithms accepted in ``rcdi``, with their digest length in bytes."""

Kind = Literal["jcl", "icn"]
"""What a URL refers to: a jCard document, or an image (and any other jCard reference)."""

COVERED = "covered by signature"
DIGEST_OK = "digest ok"
DIGEST_MISMATCH = "digest mismatch"
NO_DIGEST = "no digest"
NOT_CHECKED = "not checked"
_VERIFIED = frozenset({COVERED, DIGEST_OK})
_REFERENCED = ("jcl", "icn")
_ESCAPE = re.compile(r"~(?![01])")
_INDEX = re.compile(r"0|[1-9][0-9]*")


class RcdError(VerifierError, ValueError):
    """The rcd, rcdi or crn claim is malformed; ``reason`` says how. The RCD is then
    unverified; the call's identity verification is not affected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RcdFetchError(VerifierError):
    """Referenced content (jcl, icn...) could not be had; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- digests and canonical JSON --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Digest:
    """One ``rcdi`` value, decoded. You get one from :func:`parse_rcd`."""

    algorithm: str
    value: bytes

    def matches(self, data: bytes) -> bool:
        return hmac.compare_digest(hashlib.new(self.algorithm, data).digest(), self.value)

    def __str__(self) -> str:
        return f"{self.algorithm}-{base64.b64encode(self.value).decode('ascii')}"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The ``rcdi`` value for ``data``: ``sha256-<base64>``.

    Raises:
        ValueError: ``algorithm`` is not one of :data:`ALGORITHMS`.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"digest algorithm {algorithm!r} is not one of {sorted(ALGORITHMS)}")
    return str(Digest(algorithm, hashlib.new(algorithm, data).digest()))


def _parse_digest(text: Any, pointer: str) -> Digest:
    if type(text) is not str:
        raise RcdError(f"rcdi {pointer!r} value must be a string")
    algorithm, sep, encoded = text.partition("-")
    if not sep or algorithm not in ALGORITHMS:
        raise RcdError(
            f"rcdi {pointer!r} digest algorithm {algorithm!r} is not one of {sorted(ALGORITHMS)}"
        )
    raw = encoded.rstrip("=").translate(str.maketrans("-_", "+/"))
    try:
        value = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RcdError(f"rcdi {pointer!r} digest is not base64") from None
    if len(value) != ALGORITHMS[algorithm]:
        raise RcdError(f"rcdi {pointer!r} digest has {len(value)} bytes, not a {algorithm}")
    return Digest(algorithm, value)


def _es6_number(number: float) -> str:
    """ECMAScript Number-to-String, as RFC 8785 section 3.2.2.3 requires."""
    if not math.isfinite(number):
        raise ValueError("NaN and Infinity are not JSON")
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(number))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k, n = len(digits), len(digits) + int(exponent)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{sign}{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return f"{sign}0.{'0' * -n}{digits}"
    e = n - 1
    mantissa = digits[0] + (f".{digits[1:]}" if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def _jcs_text(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value) if abs(value) <= 2**53 else _es6_number(float(value))
    if isinstance(value, float):
        return _es6_number(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_jcs_text(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(f"{_jcs_text(k)}:{_jcs_text(value[k])}" for k in keys) + "}"
    raise ValueError(f"{type(value).__name__} is not JSON")


def jcs(value: Any) -> bytes:
    """``value`` in the JSON Canonicalization Scheme (RFC 8785), UTF-8 encoded.

    Raises:
        ValueError: ``value`` is not JSON (NaN, a lone surrogate, a set...).
    """
    try:
        return _jcs_text(value).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate") from None


# -- JSON pointers and jCards -------------------------------------------------------------------


def _pointer_tokens(pointer: str) -> list[str]:
    if not pointer.startswith("/"):
        raise RcdError(f"rcdi key {pointer!r} is not a JSON pointer into rcd (RFC 6901)")
    tokens = pointer[1:].split("/")
    if any(_ESCAPE.search(token) for token in tokens):
        raise RcdError(f"rcdi key {pointer!r} has a '~' that is not ~0 or ~1")
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _resolve(document: Any, tokens: list[str]) -> Any:
    """The value at ``tokens`` in ``document``. Raises LookupError when there is none."""
    for token in tokens:
        if isinstance(document, dict):
            document = document[token]
        elif isinstance(document, list) and _INDEX.fullmatch(token):
            document = document[int(token)]
        else:
            raise LookupError(token)
    return document


def _check_jcard(value: Any, what: str) -> None:
    if not (
        type(value) is list and len(value) == 2 and value[0] == "vcard" and type(value[1]) is list
    ):
        raise RcdError(f'{what} is not a jCard (RFC 7095): must be ["vcard", [properties]]')
    for prop in value[1]:
        if not (
            type(prop) is list
            and len(prop) >= 4
            and type(prop[0]) is str
            and type(prop[1]) is dict
            and type(prop[2]) is str
        ):
            raise RcdError(f"{what} has a property that is not [name, {{params}}, type, value]")


def _jcard_references(jcard: list[Any], prefix: str) -> dict[str, str]:
    """Pointer -> URL of each http(s) ``uri`` value of a (shape-checked) jCard."""
    refs: dict[str, str] = {}
    for i, prop in enumerate(jcard[1]):
        if prop[2].lower() != "uri":
            continue
        for j in range(3, len(prop)):
            value = prop[j]
            if type(value) is str and value[:8].lower().startswith(("https:", "http:")):
                refs[f"{prefix}/1/{i}/{j}"] = value
    return refs


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable https URL (ports aside), or None."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) > 0x7E for ch in url):
        return "contains whitespace, control or non-ASCII characters"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme.lower() != "https":
        return f"scheme must be https, not {parts.scheme or 'none'!r}"
    if not parts.hostname:
        return "has no host"
    if "@" in parts.netloc:
        return "must not carry userinfo"
    if parts.fragment or "#" in url:
        return "must not carry a fragment"
    return None


# -- the claims -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Rcd:
    """The RCD claims of a PASSporT, checked for shape. You get one from :func:`parse_rcd`."""

    nam: str
    """Display name (covered by the PASSporT signature)."""
    jcd: list[Any] | None = None
    """Inline jCard."""
    jcl: str | None = None
    """HTTPS URL of a jCard document."""
    icn: str | None = None
    """HTTPS URL of an image (the logo)."""
    apn: str | None = None
    """Alternate presentation number."""
    crn: str | None = None
    """Call reason (a claim beside rcd)."""
    rcdi: Mapping[str, Digest] = field(default_factory=lambda: MappingProxyType({}))
    """JSON pointer into rcd -> digest of what it names."""
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The raw ``rcd``, ``rcdi`` and ``crn`` claims, those present."""


def _optional_str(rcd: Mapping[str, Any], key: str, what: str) -> str | None:
    value = rcd.get(key)
    if value is not None and type(value) is not str:
        raise RcdError(f"{what} must be a string, found {type(value).__name__}")
    return value


def _url_member(rcd: Mapping[str, Any], key: str) -> str | None:
    url = _optional_str(rcd, key, f"rcd {key}")
    if url is not None:
        problem = _url_problem(url)
        if problem is not None:
            raise RcdError(f"rcd {key} {problem}")
    return url


def _check_pointer(pointer: str, rcd: Mapping[str, Any]) -> None:
    tokens = _pointer_tokens(pointer)
    if tokens[0] not in rcd:
        raise RcdError(f"rcdi key {pointer!r} names no member of rcd")
    if tokens[0] == "icn" and len(tokens) > 1:
        raise RcdError(f"rcdi key {pointer!r} points inside an image")
    if tokens[0] == "jcl":
        if len(tokens) > 1 and not all(_INDEX.fullmatch(t) for t in tokens[1:]):
            raise RcdError(f"rcdi key {pointer!r} is not a path into a jCard")
        return  # resolved once the jCard is fetched
    try:
        _resolve(rcd, tokens)
    except LookupError:
        raise RcdError(f"rcdi key {pointer!r} names nothing in rcd") from None


def parse_rcd(payload: Mapping[str, Any]) -> Rcd | None:
    """The ``rcd``, ``rcdi`` and ``crn`` claims of a PASSporT payload, or None if it has
    no ``rcd`` claim.

    Raises:
        RcdError: rcd is not an object; nam missing or not a string; apn/crn not strings;
            icn/jcl not https URLs; jcd not a jCard; both jcd and jcl; rcdi not an object,
            a key that is not a JSON pointer to a member of rcd, a value that is not
            ``<sha256|sha384|sha512>-<base64>``.
    """
    if "rcd" not in payload:
        return None
    rcd = payload["rcd"]
    if type(rcd) is not dict:
        raise RcdError(f"rcd must be a JSON object, found {type(rcd).__name__}")
    if "nam" not in rcd:
        raise RcdError("rcd has no nam")
    nam = rcd["nam"]
    if type(nam) is not str:
        raise RcdError(f"rcd nam must be a string, found {type(nam).__name__}")
    apn = _optional_str(rcd, "apn", "rcd apn")
    icn = _url_member(rcd, "icn")
    jcl = _url_member(rcd, "jcl")
    jcd = rcd.get("jcd")
    if jcd is not None:
        _check_jcard(jcd, "rcd jcd")
    if jcd is not None and jcl is not None:
        raise RcdError("rcd has both jcd and jcl; they exclude each other")
    crn = _optional_str(payload, "crn", "crn")
    digests: dict[str, Digest] = {}
    claims: dict[str, Any] = {"rcd": rcd}
    if "rcdi" in payload:
        rcdi = payload["rcdi"]
        if type(rcdi) is not dict:
            raise RcdError(f"rcdi must be a JSON object, found {type(rcdi).__name__}")
        for pointer, text in rcdi.items():
            _check_pointer(pointer, rcd)
            digests[pointer] = _parse_digest(text, pointer)
        claims["rcdi"] = rcdi
    if crn is not None:
        claims["crn"] = crn
    return Rcd(
        nam=nam,
        jcd=jcd,
        jcl=jcl,
        icn=icn,
        apn=apn,
        crn=crn,
        rcdi=MappingProxyType(digests),
        claims=MappingProxyType(claims),
    )


def _inline_outcomes(rcd: Rcd) -> dict[str, str]:
    """Outcome of each rcdi entry for inline content (not a URL's content)."""
    references = set(_jcard_references(rcd.jcd, "/jcd")) if rcd.jcd is not None else set()
    outcomes: dict[str, str] = {}
    for pointer, digest in rcd.rcdi.items():
        tokens = _pointer_tokens(pointer)
        if tokens[0] in _REFERENCED or pointer in references:
            continue
        value = _resolve(rcd.claims["rcd"], tokens)  # parse_rcd checked that it resolves
        try:
            ok = digest.matches(jcs(value))
        except ValueError:
            ok = False
        outcomes[pointer] = DIGEST_OK if ok else DIGEST_MISMATCH
    return outcomes


def check_inline(rcd: Rcd) -> list[str]:
    """Problems of inline content against its ``rcdi`` digests (RFC 8785 form), e.g.
    ``["/jcd: digest mismatch"]``; empty when every such digest matches. Inline content
    without a digest is covered by the PASSporT signature and is no problem."""
    return [f"{p}: {o}" for p, o in _inline_outcomes(rcd).items() if o != DIGEST_OK]


# -- fetching referenced content ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RcdSettings:
    """Every knob of fetching RCD content (jcl, icn), with its default. Times are seconds.

    Raises (constructor):
        ValueError: a value out of range (naming the field).
    """

    ports: frozenset[int] = DEFAULT_X5U_PORTS
    """Ports allowed in jcl/icn URLs (as for x5u: 443 and 8443)."""
    connect_timeout: float = 1.0
    """Time to open the TCP connection to one address of the content host."""
    timeout: float = 2.0
    """Total time for one fetch: DNS, connect, TLS, headers and body."""
    max_jcl_bytes: int = 64 * 1024
    """Largest jCard document read; a longer one fails."""
    max_icn_bytes: int = 256 * 1024
    """Largest image (or other jCard reference) read; a longer one fails."""
    ca_file: str | None = None
    """CA bundle for TLS to the content hosts; None: the system trust store."""
    cache_ttl: float = 3600.0
    """How long fetched content is kept and reused."""
    failure_ttl: float = 30.0
    """How long a failed fetch is remembered and answered from the cache."""
    cache_bytes: int = 16 * 1024 * 1024
    """Most bytes of content held in the cache."""
    max_failures: int = 10_000
    """Most failures remembered (and hosts with a circuit breaker)."""
    allow_private: bool = False
    """Allow loopback, private, link-local... addresses (tests, demos, private networks)."""
    private_allow: tuple[str, ...] = ()
    """Hosts (exact or ``.suffix``) and CIDRs allowed to be special-purpose addresses."""
    breaker_threshold: int = 5
    """Consecutive failures of a host (network, timeout, 5xx) that open its circuit."""
    breaker_cooldown: float = 30.0
    """How long an open circuit fails fast before one trial request is let through."""
    user_agent: str = f"verifier/{__version__}"
    """User-Agent sent to content hosts."""

    def __post_init__(self) -> None:
        if not self.ports or any(not 0 < p < 65536 for p in self.ports):
            raise ValueError("ports must be a non-empty set of TCP ports")
        for name in ("connect_timeout", "timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("max_jcl_bytes", "max_icn_bytes", "max_failures", "breaker_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("cache_ttl", "failure_ttl", "breaker_cooldown"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.cache_bytes < max(self.max_jcl_bytes, self.max_icn_bytes):
            raise ValueError("cache_bytes must hold at least one jcl and one icn body")
        AddressPolicy(allow_private=self.allow_private, allow=self.private_allow)


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

    Use it as ``async with RcdContentFetcher(settings) as fetcher:`` (it opens and closes its
    own ``aiohttp.ClientSession``), or pass a ``session`` that the caller owns and call
    :meth:`close` on teardown. ``clock`` drives the cache and the breaker; ``resolver``
    answers DNS.

    Raises (constructor):
        ValueError: a session created with ``trust_env=True`` (a proxy would bypass the
            address pinning).
    """

    def __init__(
        self,
        settings: RcdSettings | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings = settings or RcdSettings()
        if session is not None and session.trust_env:
            raise ValueError("the fetcher's session must not use trust_env (proxies)")
        self._session = session
        self._own_session = session is None
        self._getter = PinnedGetter(
            policy=AddressPolicy(
                allow_private=settings.allow_private, allow=settings.private_allow
            ),
            resolver=resolver,
            ssl_context=ssl.create_default_context(cafile=settings.ca_file),
            clock=clock,
            connect_timeout=settings.connect_timeout,
            threshold=settings.breaker_threshold,
            cooldown=settings.breaker_cooldown,
            trial_timeout=settings.timeout,
            user_agent=settings.user_agent,
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
        problem = _url_problem(url)
        if problem is not None:
            raise RcdFetchError(f"{kind} URL {problem}; not fetched")
        try:
            target = URL(url, encoded=True)
        except ValueError as exc:
            raise RcdFetchError(f"{kind} URL is not valid: {exc}; not fetched") from None
        if target.port not in self.settings.ports:
            allowed = ", ".join(str(p) for p in sorted(self.settings.ports))
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
                seconds=self.settings.timeout,
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


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RcdVerdict:
    """How far an RCD can be trusted. From :func:`verify_rcd` or :meth:`malformed`."""

    verified: bool
    """True only when everything present that needs an integrity check passed."""
    nam: str | None
    """The display name (covered by the signature of a verified PASSporT)."""
    logo: str | None
    """The icn URL, only when its content matched its digest."""
    reason: str | None
    """Why the RCD is not verified (the first problem); None when it is."""
    details: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """JSON pointer -> outcome: covered by signature, digest ok, digest mismatch..."""

    @classmethod
    def malformed(cls, exc: RcdError) -> RcdVerdict:
        """The verdict for claims that :func:`parse_rcd` refused."""
        return cls(verified=False, nam=None, logo=None, reason=f"malformed RCD: {exc.reason}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "nam": self.nam,
            "logo": self.logo,
            "reason": self.reason,
            "details": dict(self.details),
        }


async def _referenced(
    url: str, kind: Kind, digest: Digest | None, fetcher: RcdContentFetcher | None
) -> tuple[str, bytes | None]:
    """Outcome for one URL's content, and the body when its digest matched."""
    if digest is None:
        return NO_DIGEST, None
    if fetcher is None:
        return NOT_CHECKED, None
    try:
        body = await fetcher.fetch(url, kind)
    except RcdFetchError as exc:
        return f"fetch failed: {exc.reason}", None
    if digest.matches(body):
        return DIGEST_OK, body
    if kind == "jcl":
        try:
            if digest.matches(jcs(json.loads(body, object_pairs_hook=_strict_pairs))):
                return DIGEST_OK, body
        except ValueError:  # not JSON (UnicodeDecodeError is one)
            pass
    return DIGEST_MISMATCH, None


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


async def _jcl_members(
    rcd: Rcd, body: bytes, fetcher: RcdContentFetcher | None, details: dict[str, str]
) -> None:
    """Judge the fetched jCard of jcl, the content it references and rcdi entries in it."""
    try:
        jcard = json.loads(body, object_pairs_hook=_strict_pairs)
        _check_jcard(jcard, "jcl content")
    except ValueError as exc:  # RcdError is one; so are JSON and UTF-8 errors
        reason = exc.reason if isinstance(exc, RcdError) else f"jcl content is not JSON: {exc}"
        details["/jcl"] = f"digest ok, but {reason}"
        return
    refs = _jcard_references(jcard, "/jcl")
    await _judge_references(rcd, refs, "icn", fetcher, details)
    for pointer, digest in rcd.rcdi.items():
        if not pointer.startswith("/jcl/") or pointer in refs:
            continue
        try:
            value = _resolve(jcard, _pointer_tokens(pointer)[1:])
            details[pointer] = DIGEST_OK if digest.matches(jcs(value)) else DIGEST_MISMATCH
        except (LookupError, ValueError):
            details[pointer] = "names nothing in the jcl content"


async def _judge_references(
    rcd: Rcd,
    refs: Mapping[str, str],
    kind: Kind,
    fetcher: RcdContentFetcher | None,
    details: dict[str, str],
) -> None:
    outcomes = await asyncio.gather(
        *(_referenced(url, kind, rcd.rcdi.get(p), fetcher) for p, url in refs.items())
    )
    for pointer, (outcome, _body) in zip(refs, outcomes, strict=True):
        details[pointer] = outcome


async def verify_rcd(rcd: Rcd, fetcher: RcdContentFetcher | None) -> RcdVerdict:
    """Judge an RCD (of a PASSporT whose signature verified): ``nam`` (and the rest inline)
    is covered by that signature; jcl, icn and URIs in a jCard count only when fetched and
    matching their rcdi digest. With no ``fetcher`` (offline) such content is "not checked",
    and the RCD is not verified when there is any. Every problem with the content is an
    outcome in ``details`` (the first one is the ``reason``), never an exception.

    Raises:
        RuntimeError: ``fetcher`` is closed.
    """
    details: dict[str, str] = {"/nam": COVERED}
    if rcd.apn is not None:
        details["/apn"] = COVERED
    if rcd.jcd is not None:
        # The issue this implements asks for inline jcd to be checked against its digest,
        # and content without a matching digest not to be reported as verified: so an
        # inline jCard needs its "/jcd" rcdi entry (overwritten below when present).
        details["/jcd"] = NO_DIGEST
    details.update(_inline_outcomes(rcd))
    top: dict[str, tuple[str, Kind]] = {}
    if rcd.jcl is not None:
        top["/jcl"] = (rcd.jcl, "jcl")
    if rcd.icn is not None:
        top["/icn"] = (rcd.icn, "icn")
    outcomes = await asyncio.gather(
        *(_referenced(url, kind, rcd.rcdi.get(p), fetcher) for p, (url, kind) in top.items())
    )
    for pointer, (outcome, _body) in zip(top, outcomes, strict=True):
        details[pointer] = outcome
    if rcd.jcd is not None:
        await _judge_references(rcd, _jcard_references(rcd.jcd, "/jcd"), "icn", fetcher, details)
    jcl_body = outcomes[0][1] if rcd.jcl is not None else None  # "/jcl" comes first in top
    if jcl_body is not None:
        await _jcl_members(rcd, jcl_body, fetcher, details)
    problems = [f"{p}: {o}" for p, o in details.items() if o not in _VERIFIED]
    return RcdVerdict(
        verified=not problems,
        nam=rcd.nam,
        logo=rcd.icn if details.get("/icn") == DIGEST_OK else None,
        reason=problems[0] if problems else None,
        details=MappingProxyType(details),
    )
