"""The STI-PA trust list: fetched, checked, cached and kept current.

``[trust]`` (:class:`TrustSettings`) names a URL where the STI-PA publishes its approved
STI-CA certificates. :class:`TrustList` fetches it with the same pinned, SSRF-checked client
as x5u (:class:`~verifier.net.transport.PinnedGetter`), parses it (:mod:`.trustparse`: a PEM
bundle, a JSON object or array of PEM strings, or a JWS whose payload is such a JSON, its
signature checked against ``list_signer``), keeps the entries that are CAs within their
validity (:func:`check_entries`) and refuses a list that is empty or would drop more than
``max_drop_fraction`` of the anchors in force (:func:`judge`). An accepted list is handed to
``on_change`` in one call (the service swaps its trust store in one assignment) and written
to ``list_cache``, which the next start reads when the URL cannot be reached. The STI-PA's
CRLs (``crl_urls``) are fetched by the same client and handed to ``on_crls``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from yarl import URL

from ..core.certs import load_certificates
from ..core.errors import X5uFetchFailed, X5uRefused
from .crl import load_crl, signed_by_anchor
from .ssrf import Resolver, system_resolver
from .transport import HttpClientSettings, PinnedGetter, new_session
from .trustparse import ListError, check_entries, fingerprint, judge, parse_list

__all__ = [
    "ListError",
    "TrustList",
    "TrustSettings",
    "describe_anchors",
    "expiry_figures",
    "local_anchors",
    "read_token",
    "refresh_cache",
    "status_of",
]

log = logging.getLogger(__name__)

Source = Literal["none", "url", "cache"]
_PEM = serialization.Encoding.PEM
_ACCEPT = "application/pem-certificate-chain, application/json, application/jose"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustSettings:
    """``[trust]``: where the STI-PA trust list comes from and how it is kept current.
    Times are seconds.

    Raises (constructor):
        ValueError: a value out of range (naming the field).
    """

    list_url: str | None = None
    """HTTPS URL of the STI-PA's list of approved STI-CA certificates (unset: local anchors
    only). Its anchors are added to ``trust_anchors``."""
    list_token: str | None = field(default=None, repr=False)
    """Bearer token for the list URL: only from VERIFIER_TRUST_LIST_TOKEN, never logged."""
    list_token_file: str | None = None
    """File holding the bearer token (mode 0600 or stricter)."""
    list_ca_file: str | None = None
    """CA bundle for TLS to the list host; unset: ``[http_client] ca_file``."""
    list_signer: str | None = None
    """PEM certificate whose key signs the list (JWS, ES256 or RS256): its signature is
    then checked."""
    list_require_signature: bool = False
    """Refuse a list that is not a JWS signed by ``list_signer``."""
    list_cache: str | None = None
    """File keeping the last good list; unset: ``trust-list.pem`` in ``[records] data_dir``."""
    refresh_interval: float = 6 * 3600.0
    """How often the list is fetched again."""
    max_drop_fraction: float = 0.5
    """A new list that drops more than this fraction of the list anchors in force is refused."""
    max_bytes: int = 4 * 1024 * 1024
    """Largest list read, in bytes."""
    timeout: float = 10.0
    """Total time for one list fetch."""
    expiry_warning: float = 14 * 86400.0
    """An anchor expiring within this time is warned about (log line and metric)."""
    crl_urls: tuple[str, ...] = ()
    """The STI-PA's CRLs (http or https), signed by an anchor in force: checked with every
    chain, besides each certificate's own distribution points."""
    crl_refresh_interval: float = 3600.0
    """How often ``crl_urls`` are fetched again."""

    def __post_init__(self) -> None:
        if self.list_url is not None:
            url = URL(self.list_url)
            if url.scheme != "https" or not url.host or url.user or url.password:
                raise ValueError("list_url must be an https URL without user or password")
        if self.list_token is not None and self.list_token_file is not None:
            raise ValueError("list_token and list_token_file are exclusive")
        if self.list_token is not None and (
            not self.list_token.isprintable() or " " in self.list_token
        ):
            raise ValueError("list_token must be printable, without spaces")
        for url in map(URL, self.crl_urls):
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"crl_urls: {url} is not an http(s) URL")
        for name in ("refresh_interval", "timeout", "expiry_warning", "crl_refresh_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 <= self.max_drop_fraction <= 1:
            raise ValueError("max_drop_fraction must be between 0 and 1")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")

    def cache_path(self, data_dir: str) -> Path:
        return Path(self.list_cache) if self.list_cache else Path(data_dir) / "trust-list.pem"


def read_token(settings: TrustSettings) -> str | None:
    """The bearer token: ``list_token`` or the contents of ``list_token_file``.

    Raises:
        ListError: the file cannot be read or others than its owner may read it.
    """
    if settings.list_token_file is None:
        return settings.list_token
    path = Path(settings.list_token_file)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ListError(f"{path}: mode {stat.S_IMODE(mode):04o}; the token file must be 0600")
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ListError(f"{path}: cannot read the token file ({exc})") from None
    if not token or not token.isprintable() or " " in token:
        raise ListError(f"{path}: the token must be one printable word")
    return token


# -- keeping it current --------------------------------------------------------------------


class TrustList:
    """The trust list in force, its source, and its refreshes.

    ``on_change(anchors)`` is called with each newly accepted list (all its anchors at once).
    Use ``async with`` (it opens and closes its client session); :meth:`load_cache` reads
    the cache file (at start), :meth:`refresh` fetches now, :meth:`run` refreshes every
    ``refresh_interval`` until cancelled.

    Raises (constructor):
        OSError: ``list_ca_file`` (or ``[http_client] ca_file``) cannot be read.
        ValueError: ``list_signer`` is not a PEM certificate.
    """

    def __init__(
        self,
        settings: TrustSettings,
        client: HttpClientSettings,
        *,
        data_dir: str,
        clock: Callable[[], float],
        on_change: Callable[[tuple[x509.Certificate, ...]], None] | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.cache_path = settings.cache_path(data_dir)
        self.status_path = _status_path(self.cache_path)
        self._clock = clock
        self.on_change = on_change
        pinned = replace(client, ca_file=settings.list_ca_file or client.ca_file)
        self._getter = PinnedGetter(
            pinned, resolver=resolver, clock=clock, trial_timeout=settings.timeout
        )
        self._signer = (
            x509.load_pem_x509_certificate(Path(settings.list_signer).read_bytes())
            if settings.list_signer
            else None
        )
        self._session: aiohttp.ClientSession | None = None
        self.anchors: tuple[x509.Certificate, ...] = ()
        self.source: Source = "none"
        self.updated_at: float | None = None
        """When the anchors in force were fetched (or the cache file written)."""
        self.last: dict[str, Any] = {"ok": None}
        """The last refresh: ok, when, error or count, skipped entries."""
        self.failures = 0
        self.crls: dict[str, tuple[x509.CertificateRevocationList, float]] = {}
        """The STI-PA CRLs in force, by URL, with when each was fetched."""
        self.crl_report: dict[str, Any] = {}
        self.crl_failures = 0
        self.on_crls: Callable[[tuple[x509.CertificateRevocationList, ...]], None] | None = None
        self.anchors_in_force: Callable[[], Sequence[x509.Certificate]] = lambda: self.anchors
        """The anchors a CRL must be signed by (the service's: local and list)."""

    async def __aenter__(self) -> TrustList:
        self._session = new_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _accept(self, anchors: list[x509.Certificate], source: Source, at: float) -> bool:
        changed = {fingerprint(c) for c in anchors} != {fingerprint(c) for c in self.anchors}
        self.anchors = tuple(anchors)
        self.source = source
        self.updated_at = at
        if changed and self.on_change is not None:
            self.on_change(self.anchors)
        return changed

    def load_cache(self) -> bool:
        """Take the anchors of the cache file, if it holds a usable list."""
        try:
            body = self.cache_path.read_bytes()
            certs, _ = parse_list(body)
            anchors, _ = check_entries(certs, self._clock())
            judge(anchors, (), 1.0)
        except (OSError, ListError) as exc:
            log.warning(
                "trust_list_cache_unusable", extra={"path": str(self.cache_path), "error": str(exc)}
            )
            return False
        self._accept(anchors, "cache", self.cache_path.stat().st_mtime)
        log.info("trust_list_cached", extra={"count": len(anchors)})
        return True

    async def fetch(self) -> bytes:
        """The list's body from ``list_url``.

        Raises:
            ListError: no URL, the token file, or the fetch failed.
        """
        url = self.settings.list_url
        if url is None:
            raise ListError("no [trust] list_url is configured")
        token = read_token(self.settings)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return await self._get(url, "trust list", _ACCEPT, headers)

    async def _get(
        self, url: str, what: str, accept: str, headers: dict[str, str] | None = None
    ) -> bytes:
        session = self._session
        if session is None:
            raise ListError("the trust list is closed")
        try:
            answer = await self._getter.get(
                session,
                URL(url),
                max_bytes=self.settings.max_bytes,
                seconds=self.settings.timeout,
                what=what,
                accept=accept,
                headers=headers,
            )
        except (X5uFetchFailed, X5uRefused) as exc:
            raise ListError(exc.detail) from None
        return answer.body

    async def refresh_crls(self) -> dict[str, Any]:
        """Fetch each of ``crl_urls``; keep each one signed by an anchor in force (the last
        good one stays when a fetch fails) and hand them all to ``on_crls``."""
        now = self._clock()
        report: dict[str, Any] = {}
        for url in self.settings.crl_urls:
            try:
                crl = load_crl(await self._get(url, "STI-PA CRL", "application/pkix-crl"))
                if not signed_by_anchor(crl, self.anchors_in_force()):
                    raise ListError("the CRL is not signed by an anchor in force")
            except ValueError as exc:  # ListError, or not a CRL
                self.crl_failures += 1
                log.error("sti_pa_crl_refused", extra={"url": url, "error": str(exc)})
                report[url] = {"ok": False, "at": now, "error": str(exc)}
                continue
            self.crls[url] = (crl, now)
            report[url] = {"ok": True, "at": now, "revoked": len(crl)}
        self.crl_report = report
        if self.on_crls is not None:
            self.on_crls(tuple(crl for crl, _ in self.crls.values()))
        return report

    async def refresh(self) -> dict[str, Any]:
        """Fetch, check and (if good) swap in and cache the list; the report of how it went.
        A refused or failed list leaves the anchors in force."""
        now = self._clock()
        try:
            body = await self.fetch()
            certs, skipped = parse_list(
                body, signer=self._signer, require_signature=self.settings.list_require_signature
            )
            anchors, bad = check_entries(certs, now)
            skipped += bad
            judge(anchors, self.anchors, self.settings.max_drop_fraction)
        except ListError as exc:
            self.failures += 1
            log.error("trust_list_refused", extra={"error": str(exc)})
            self.last = {"ok": False, "at": now, "error": str(exc)}
            self._write(self.status_path, json.dumps(self.last).encode())
            return self.last
        changed = self._accept(anchors, "url", now)
        self._write(self.cache_path, b"".join(c.public_bytes(_PEM) for c in anchors))
        for why in skipped:
            log.warning("trust_list_entry_skipped", extra={"entry": why})
        log.info("trust_list_refreshed", extra={"count": len(anchors), "changed": changed})
        self.last = {
            "ok": True,
            "at": now,
            "count": len(anchors),
            "changed": changed,
            "skipped": skipped,
        }
        self._write(self.status_path, json.dumps(self.last).encode())
        return self.last

    @staticmethod
    def _write(path: Path, body: bytes) -> None:
        """Write ``body`` to ``path`` atomically (a temporary file renamed)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".trust-list-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            os.replace(tmp, path)
        except OSError as exc:
            log.error("trust_list_write_failed", extra={"path": str(path), "error": str(exc)})

    async def run(self) -> None:
        """Refresh the list every ``refresh_interval`` and the CRLs every
        ``crl_refresh_interval`` until cancelled."""
        settings = self.settings
        every = {"list": settings.refresh_interval, "crls": settings.crl_refresh_interval}
        if settings.list_url is None:
            del every["list"]
        if not settings.crl_urls:
            del every["crls"]
        due = dict(every)
        if not due:
            return
        waited = 0.0
        while True:
            step = min(due.values()) - waited
            await asyncio.sleep(step)
            waited += step
            for what in [w for w, at in due.items() if at <= waited]:
                try:
                    await (self.refresh() if what == "list" else self.refresh_crls())
                except Exception:  # a bug must not end the refreshes; they log their errors
                    log.exception("trust_refresh_crashed", extra={"part": what})
                interval = (
                    settings.refresh_interval if what == "list" else settings.crl_refresh_interval
                )
                due[what] = waited + interval


# -- for the command line and the application ----------------------------------------------


def local_anchors(paths: Sequence[str], *, optional: bool) -> list[x509.Certificate]:
    """The certificates of ``trust_anchors``; when ``optional`` (a trust list is configured)
    paths that do not exist are passed over.

    Raises:
        ValueError: a path that cannot be read or holds no certificate.
    """
    if optional:
        paths = [p for p in paths if Path(p).exists()]
    return load_certificates(paths)


def describe_anchors(anchors: Sequence[x509.Certificate], source: str) -> list[dict[str, str]]:
    """One row per anchor: subject, SHA-256 fingerprint, expiry, source."""
    return [
        {
            "subject": a.subject.rfc4514_string(),
            "fingerprint": fingerprint(a),
            "not_after": a.not_valid_after_utc.isoformat(),
            "source": source,
        }
        for a in anchors
    ]


def _status_path(cache: Path) -> Path:
    """Where the last refresh's report is kept, beside the cache file."""
    return cache.with_name(cache.name + ".status.json")


def status_of(settings: TrustSettings, data_dir: str) -> dict[str, Any]:
    """The cached list (its anchors, age) and the last refresh's report, from the files."""
    cache = settings.cache_path(data_dir)
    body: dict[str, Any] = {"list_url": settings.list_url, "list_cache": str(cache)}
    try:
        certs, _ = parse_list(cache.read_bytes())
        body["list_anchors"] = describe_anchors(certs, "list")
        body["list_written"] = dt.datetime.fromtimestamp(cache.stat().st_mtime, dt.UTC).isoformat()
    except (OSError, ListError) as exc:
        body["list_anchors"] = []
        body["list_error"] = str(exc)
    try:
        body["last_refresh"] = json.loads(_status_path(cache).read_bytes())
    except (OSError, ValueError):
        body["last_refresh"] = None
    return body


async def refresh_cache(
    settings: TrustSettings, client: HttpClientSettings, *, data_dir: str
) -> dict[str, Any]:
    """Fetch the list once, standalone, into the cache file (judged against the cached one)."""
    trust_list = TrustList(settings, client, data_dir=data_dir, clock=time.time)
    trust_list.load_cache()
    async with trust_list:
        return await trust_list.refresh()


def expiry_figures(
    anchors: Sequence[x509.Certificate],
    trust_list: TrustList | None,
    signers: Sequence[tuple[str, float]],
    *,
    now: float,
    warning: float,
    top: int = 10,
) -> dict[str, Any]:
    """What ``/metrics`` says of the trust in force (:class:`verifier.metrics.Metrics`
    ``watch_trust``) and what is about to expire: ``signers`` are (SPC, notAfter) of cached
    signer certificates, soonest first; ``top`` of them are shown by SPC."""
    ends = [a.not_valid_after_utc.timestamp() for a in anchors]
    soon = [
        {"kind": "anchor", "subject": a.subject.rfc4514_string(), "not_after": end}
        for a, end in zip(anchors, ends, strict=True)
        if end - now <= warning
    ]
    soon += [
        {"kind": "certificate", "spc": spc, "not_after": end}
        for spc, end in signers
        if end - now <= warning
    ]
    figures: dict[str, Any] = {
        "anchors": len(anchors),
        "source": "local",
        "earliest_anchor_expiry": min(ends) - now if ends else 0.0,
        "expiring": {
            "anchor": sum(1 for s in soon if s["kind"] == "anchor"),
            "certificate": sum(1 for s in soon if s["kind"] == "certificate"),
        },
        "soon": soon,
        "cert_expiry": [(spc, end - now) for spc, end in signers[:top]],
    }
    if trust_list is not None:
        if trust_list.anchors:
            figures["source"] = trust_list.source
        if trust_list.updated_at is not None:
            figures["list_age"] = now - trust_list.updated_at
        figures["list_refusals"] = trust_list.failures
        figures["crl_ages"] = {url: now - at for url, (_, at) in trust_list.crls.items()}
    return figures
