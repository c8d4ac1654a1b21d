"""Revocation (ATIS-1000080, RFC 5280): CRLs for a validated chain.

:class:`CrlChecker` runs after chain validation. For each certificate of the validated path
but the trust anchor, it looks for CRLs from the certificate's CRL distribution points
(``http`` or ``https``) and from the operator's CRL files with the same issuer, checks each
CRL's issuer name and signature against the certificate's issuer, and honours nextUpdate.
Verified CRLs are cached (keyed by URL and issuer) until their nextUpdate; a CRL that could
not be had is not asked for again before ``failure_ttl`` has passed.

A listed serial raises :class:`~verifier.core.errors.CertificateRevoked` (437). When no usable
CRL can be had for a certificate that has a distribution point, the mode decides:
``"open"`` adds a warning to the Credential, ``"closed"`` raises
:class:`~verifier.core.errors.CrlUnavailable` (437).

The only I/O is the ``fetch`` callable (the fetcher's, with its SSRF rules and caps).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cachetools import LRUCache
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ..core import errors
from ..core.certs import Credential

__all__ = [
    "CrlChecker",
    "CrlFetch",
    "CrlMode",
    "Revocation",
    "check_published",
    "crl_urls",
    "load_crl",
    "signed_by_anchor",
]

CrlMode = Literal["open", "closed"]
CrlFetch = Callable[[str], Awaitable[bytes]]
"""``await fetch(url)`` -> the CRL's bytes. Raises VerificationError (its detail is kept)."""

_NO_NEXT_UPDATE_TTL = 3600.0  # a CRL without nextUpdate (not RFC 5280 conforming) is re-read hourly
_SKEW = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Revocation:
    """What checking a chain found: the credential (with a warning if it failed open), the
    earliest nextUpdate among the CRLs used (``inf`` if none), and whether every
    certificate that has a CRL source was checked."""

    credential: Credential
    next_update: float
    complete: bool


@dataclass(frozen=True, slots=True)
class _Crl:
    crl: x509.CertificateRevocationList
    next_update: float
    source: str


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from PEM or DER.

    Raises:
        ValueError: not a CRL.
    """
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def crl_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The http(s) URIs of ``cert``'s CRL distribution points (LDAP and others skipped)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return ()
    urls: list[str] = []
    for point in ext.value:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(
                ("http://", "https://")
            ):
                urls.append(name.value)
    return tuple(urls)


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _signature_valid(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(
        key,
        dsa.DSAPublicKey
        | rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        return False
    return crl.is_signature_valid(key)


def signed_by_anchor(
    crl: x509.CertificateRevocationList, anchors: Iterable[x509.Certificate]
) -> bool:
    """Whether an anchor named as ``crl``'s issuer signed it (an STI-PA CRL is accepted so)."""
    return any(a.subject == crl.issuer and _signature_valid(crl, a) for a in anchors)


def check_published(
    crls: Sequence[x509.CertificateRevocationList], path: Sequence[x509.Certificate], now: float
) -> None:
    """Check a validated path (leaf first, anchor last) against the STI-PA's published CRLs
    (``[trust] crl_urls``): each applies to the certificates its issuer signed. Pure.

    Raises:
        CertificateRevoked: a CRL signed by a certificate's issuer lists it.
    """
    for cert, issuer in itertools.pairwise(path):
        for crl in crls:
            if crl.issuer != cert.issuer or not _signature_valid(crl, issuer):
                continue
            revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if revoked is not None and revoked.revocation_date_utc.timestamp() <= now + _SKEW:
                raise errors.CertificateRevoked(
                    f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x}) was"
                    f" revoked on {revoked.revocation_date_utc.isoformat()} (STI-PA CRL)"
                )


class CrlChecker:
    """Revocation checks for validated chains, with a cache of verified CRLs.

    ``files`` are the operator's CRL files (PEM or DER), matched to certificates by issuer
    name; ``clock`` (epoch seconds) judges nextUpdate and the cache.

    Raises (constructor):
        ValueError: a CRL file cannot be read or parsed (naming it), or a bad mode.
    """

    def __init__(
        self,
        *,
        fetch: CrlFetch,
        clock: Callable[[], float],
        mode: CrlMode = "open",
        files: Iterable[str | Path] = (),
        max_bytes: int = 1024 * 1024,
        failure_ttl: float = 30.0,
        max_entries: int = 1024,
    ) -> None:
        if mode not in ("open", "closed"):
            raise ValueError(f"CRL mode must be 'open' or 'closed', not {mode!r}")
        self._fetch = fetch
        self._clock = clock
        self.mode: CrlMode = mode
        self._max_bytes = max_bytes
        self._failure_ttl = failure_ttl
        self._files: list[_Crl] = []
        for path in map(Path, files):
            try:
                data = path.read_bytes()
                if len(data) > max_bytes:
                    raise ValueError(f"larger than {max_bytes} bytes")
                crl = load_crl(data)
            except (OSError, ValueError) as exc:
                raise ValueError(f"CRL file {path}: {exc}") from None
            nu = crl.next_update_utc
            self._files.append(
                _Crl(crl, nu.timestamp() if nu else float("inf"), f"file {path.name}")
            )
        self._cache: LRUCache[tuple[str, str], _Crl] = LRUCache(maxsize=max_entries)
        self._failures: LRUCache[tuple[str, str], tuple[str, float]] = LRUCache(maxsize=max_entries)
        self._inflight: dict[tuple[str, str], asyncio.Task[_Crl | str]] = {}
        self.fetches = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._cache)

    async def check(self, credential: Credential) -> Revocation:
        """Check every certificate of ``credential``'s validated path against its CRLs.

        Raises:
            CertificateRevoked: a certificate of the path is listed by its issuer's CRL.
            CrlUnavailable: no usable CRL for a certificate that has a CRL source, in
                ``"closed"`` mode.
        """
        path = credential.certificates
        next_update = float("inf")
        problems: list[str] = []
        for cert, issuer in itertools.pairwise(path):
            urls = crl_urls(cert)
            files = [f for f in self._files if f.crl.issuer == cert.issuer]
            if not urls and not files:
                continue
            found, why = await self._crl_for(issuer, urls, files)
            subject = cert.subject.rfc4514_string()
            if found is None:
                problems.append(f"{subject}: {'; '.join(why)}")
                continue
            next_update = min(next_update, found.next_update)
            revoked = found.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if revoked is not None:
                raise errors.CertificateRevoked(
                    f"{subject} (serial {cert.serial_number:x}) was revoked on "
                    f"{revoked.revocation_date_utc.isoformat()} ({found.source})"
                )
        if not problems:
            return Revocation(credential=credential, next_update=next_update, complete=True)
        detail = "revocation status unknown: " + " | ".join(problems)
        if self.mode == "closed":
            raise errors.CrlUnavailable(detail)
        warned = dataclasses.replace(
            credential, warnings=(*credential.warnings, f"{detail} (CRL check failed open)")
        )
        return Revocation(credential=warned, next_update=next_update, complete=False)

    async def _crl_for(
        self, issuer: x509.Certificate, urls: Sequence[str], files: Sequence[_Crl]
    ) -> tuple[_Crl | None, list[str]]:
        why: list[str] = []
        now = self._clock()
        for item in files:
            problem = self._usable(item, issuer, now)
            if problem is None:
                return item, why
            why.append(f"{item.source}: {problem}")
        issuer_fp = _fingerprint(issuer)
        for url in urls:
            got = await self._from_url(url, issuer, issuer_fp)
            if isinstance(got, _Crl):
                return got, why
            why.append(f"{url}: {got}")
        return None, why

    def _usable(self, item: _Crl, issuer: x509.Certificate, now: float) -> str | None:
        if item.crl.issuer != issuer.subject:
            return f"issued by {item.crl.issuer.rfc4514_string()}, not the certificate's issuer"
        if not _signature_valid(item.crl, issuer):
            return "signature does not verify with the issuer's key"
        if item.next_update <= now:
            return f"stale: nextUpdate was {item.crl.next_update_utc}"
        last = item.crl.last_update_utc.timestamp()
        if last > now + _SKEW:
            return f"not yet valid: thisUpdate is {item.crl.last_update_utc}"
        return None

    async def _from_url(self, url: str, issuer: x509.Certificate, issuer_fp: str) -> _Crl | str:
        key = (url, issuer_fp)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached.next_update:
            return cached
        failed = self._failures.get(key)
        if failed is not None and now < failed[1]:
            return failed[0]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._load(url, issuer))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        got = await asyncio.shield(task)
        return got

    def _forget(self, key: tuple[str, str], task: asyncio.Task[_Crl | str]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _load(self, url: str, issuer: x509.Certificate) -> _Crl | str:
        key = (url, _fingerprint(issuer))
        self.fetches += 1
        try:
            data = await self._fetch(url)
            if len(data) > self._max_bytes:
                raise ValueError(f"CRL larger than {self._max_bytes} bytes")
            crl = load_crl(data)
        except errors.VerificationError as exc:
            return self._failed(key, exc.detail)
        except ValueError as exc:
            return self._failed(key, f"not a CRL: {exc}")
        nu = crl.next_update_utc
        now = self._clock()
        item = _Crl(crl, nu.timestamp() if nu else now + _NO_NEXT_UPDATE_TTL, url)
        problem = self._usable(item, issuer, now)
        if problem is not None:
            return self._failed(key, problem)
        self._cache[key] = item
        self._failures.pop(key, None)
        return item

    def _failed(self, key: tuple[str, str], reason: str) -> str:
        self.failures += 1
        self._failures[key] = (reason, self._clock() + self._failure_ttl)
        return reason

    async def close(self) -> None:
        """Cancel CRL fetches still running."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
