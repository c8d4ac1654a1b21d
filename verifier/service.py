"""The verification service, apart from HTTP: runs a request's verification, judges its
RCD, flags replays, applies the policy, counts, logs and records it. Its collaborators
(credential source, RCD fetcher, replay set, record writer, policy, metrics, clock) are
handed to its constructor; :mod:`verifier.http.app` builds them and the service, and its
handlers format the answers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .accel import es256
from .accel.batcher import SignatureBatcher
from .core.certs import CertificateInfo, TrustStore
from .core.errors import NoIdentity, RequestDateStale, VerificationError
from .core.policy import Disposition, Policy, PolicyError
from .core.replay import ReplayCache
from .core.tn import tn_from_uri
from .core.verify import (
    CallInfo,
    CredentialSource,
    DecodeCache,
    Reason,
    Result,
    verify,
    verify_many,
)
from .logs import VerificationLog, json_string
from .metrics import Metrics
from .net.rcd import RcdContentFetcher, RcdError, RcdVerdict, parse_rcd, verify_rcd
from .net.redis_tier import RedisReplayCache
from .net.trustlist import local_anchors
from .records import Record, RecordWriter
from .settings import Settings

__all__ = ["Outcome", "Service", "VerifyRequest"]

log = logging.getLogger(__name__)


_LOG_PARTS = 512
"""Formatted log members kept (by verdict, SPC and x5u)."""
_CHAINS_KEPT = 4096
"""Certificate fingerprints whose chain this process recorded lately (then forgotten at once:
a chain recorded twice is stored once)."""


def _js(value: str | None) -> str:
    return "null" if value is None else json_string(value)


def _mask(tn: str | None) -> str | None:
    """All but the last 4 digits of a (canonical) telephone number."""
    if tn is None:
        return None
    return "*" * max(0, len(tn) - 4) + tn[-4:]


# -- the service -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """A verification's verdict, what the policy makes of it, and its traceback record."""

    result: Result
    disposition: Disposition
    record: Record


def _record(
    now: float,
    endpoint: str,
    request_id: str,
    item: VerifyRequest,
    result: Result,
    disposition: Disposition,
    signers: dict[str, CertificateInfo] | None,
    identity: str | None = None,
    chain: str | None = None,
    chains: dict[str, str] | None = None,
) -> Record:
    """The traceback record: the numbers the switch gave (canonical), else the claims'."""
    call = item.call
    claims = result.claims or {}
    orig = call.calling_tn
    if orig is None and isinstance(claims.get("orig"), dict):
        orig = _tn(claims["orig"].get("tn"))
    dest = call.called_tn
    if dest is None and isinstance(claims.get("dest"), dict):
        tns = claims["dest"].get("tn")
        dest = _tn(tns[0]) if isinstance(tns, list) and tns else None
    certificate = result.certificate
    return Record(
        ts=now,
        request_id=request_id,
        endpoint=endpoint,
        orig=orig,
        dest=dest,
        origid=result.origid,
        attest=result.attest,
        verstat=result.verstat,
        reason=result.reason.slug if result.reason else None,
        sip_code=result.reason.sip_code if result.reason else None,
        spc=certificate.spc if certificate else (),
        x5u=result.x5u,
        fingerprint=certificate.fingerprint_sha256 if certificate else None,
        action=disposition.action,
        label=disposition.label,
        identity=identity,
        chain=chain,
        signers=(
            None if signers is None else {x5u: c.fingerprint_sha256 for x5u, c in signers.items()}
        ),
        chains=chains,
    )


def _signers(result: Result) -> dict[str, CertificateInfo] | None:
    """x5u -> validated certificate of each Identity header whose chain validated, but the
    verdict's own signer (``result.x5u`` and ``result.certificate``); None when none."""
    signers: dict[str, CertificateInfo] | None = None
    own = (result.x5u, result.certificate.fingerprint_sha256) if result.certificate else None
    for header in result.identities:
        certificate = header.certificate
        if certificate is None or header.x5u is None:
            continue
        if (header.x5u, certificate.fingerprint_sha256) != own:
            if signers is None:
                signers = {}
            signers[header.x5u] = certificate
    return signers


def _tn(value: Any) -> str | None:
    return tn_from_uri(value) if isinstance(value, str) else None


@dataclass(slots=True)
class VerifyRequest:
    """One verification to run: what the API request said, before verifying."""

    identity: str | list[str] | None
    call: CallInfo
    date: float | None


class Service:
    """Everything a verification needs; complete when constructed.

    ``trust`` holds the local anchors and ``list_anchors``, those of the STI-PA trust list
    (:meth:`set_list_anchors` swaps a new list in). ``credentials`` looks up x5u chains;
    ``on_trust`` (the fetcher's ``set_trust``) hears of
    reloaded trust anchors; ``replay`` is the fleet-wide replay set (None: this process's
    own); ``records`` the record writer (None: records off); ``signatures`` the batcher
    that checks an event-loop turn's signatures together (None: one at a time).
    """

    def __init__(
        self,
        settings: Settings,
        trust: TrustStore,
        *,
        credentials: CredentialSource,
        policy: Policy,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        on_trust: Callable[[TrustStore], None] | None = None,
        rcd_fetcher: RcdContentFetcher | None = None,
        replay: RedisReplayCache | None = None,
        records: RecordWriter | None = None,
        signatures: SignatureBatcher | None = None,
        vlog: VerificationLog | None = None,
        list_anchors: Sequence[x509.Certificate] = (),
    ) -> None:
        self.settings = settings
        self.trust = trust
        self.credentials = credentials
        self.policy = policy
        self.metrics = metrics
        self.clock = clock
        self._on_trust = on_trust
        self.list_anchors = tuple(list_anchors)
        """The anchors of the STI-PA trust list in force (``trust`` holds them too)."""
        listed = set(self.list_anchors)
        self.local_anchors = tuple(a for a in trust.anchors if a not in listed)
        """The anchors of ``trust_anchors`` (PEM files), added to the list's."""
        self.rcd_fetcher = rcd_fetcher
        self.shared_replay = replay
        self.records = records
        self.signatures = signatures
        self.vlog = vlog or VerificationLog()
        self.cache = DecodeCache()
        self.options = settings.options
        self.ready = True
        """Until shutdown begins (readyz answers 503 from then on)."""
        verification = settings.verification
        es256.configure(max_tables=verification.key_tables)
        self.replay = ReplayCache(
            verification.replay_cache_size,
            verification.replay_window,
            clock=clock,
        )
        self._log_verifications = settings.api.log_verifications and self.vlog.enabled
        self.latency = {
            name: self.metrics.latency.labels(name)
            for name in ("atis", "3gpp", "native", "sip", "batch")
        }
        self._log_parts: dict[tuple[Any, ...], str] = {}
        self._keep_identity = settings.records.keep_identity
        self._identity_max = settings.records.identity_max_bytes
        self._chains_kept: set[str] = set()
        self.in_flight = 0
        """Verifications in progress: single ones until their verdict, batch requests from
        their body to their answer (:meth:`in_flight_request`)."""

    # -- lifecycle -------------------------------------------------------------------------

    def reload(self) -> bool:
        """Reload the trust anchors and the policy (SIGHUP, admin endpoint).

        Each is swapped in only when it loads; on error the old one stays in force and the
        error is logged. Calls in flight finish with what they started with. Cached chains
        stay: unchanged anchors change nothing, changed ones re-validate them (no refetch).
        """
        report = self.reload_report()
        return all(part["ok"] for part in report.values())

    def set_list_anchors(self, anchors: Sequence[x509.Certificate]) -> None:
        """Swap in a new STI-PA trust list (with the local anchors) in one assignment: a call
        sees the old store or the new one. Cached chains are validated again (no refetch)."""
        self.list_anchors = tuple(anchors)
        self._swap(self._store(self.local_anchors))

    def _store(self, local: Sequence[x509.Certificate]) -> TrustStore:
        """The trust store of ``local`` and the list's anchors.

        Raises:
            ValueError: no anchor at all.
        """
        given = set(local)
        return TrustStore(
            [*local, *(a for a in self.list_anchors if a not in given)],
            require_policy_oid=self.settings.verification.require_policy_oid,
            key_factory=self.trust.key_factory,
        )

    def _swap(self, trust: TrustStore) -> None:
        self.trust = trust
        if self._on_trust is not None:
            self._on_trust(trust)

    def reload_report(self) -> dict[str, dict[str, Any]]:
        report: dict[str, dict[str, Any]] = {}
        try:
            listed = self.settings.trust.list_url is not None
            local = local_anchors(self.settings.trust_anchors, optional=listed)
            trust = self._store(local)
        except ValueError as exc:
            log.error("reload_failed", extra={"part": "trust_anchors", "error": str(exc)})
            self.metrics.reloads.labels("failed").inc()
            report["trust_anchors"] = {"ok": False, "error": str(exc)}
        else:
            self.local_anchors = tuple(local)
            self._swap(trust)
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded", extra={"part": "trust_anchors", "count": len(trust.anchors)})
            report["trust_anchors"] = {"ok": True, "count": len(trust.anchors)}
        if self.settings.policy_file is not None:
            try:
                policy = Policy.load(self.settings.policy_file)
            except PolicyError as exc:
                log.error("reload_failed", extra={"part": "policy", "error": str(exc)})
                self.metrics.reloads.labels("failed").inc()
                report["policy"] = {"ok": False, "error": str(exc)}
            else:
                self.policy = policy
                self.metrics.reloads.labels("ok").inc()
                log.info("reloaded", extra={"part": "policy", "source": policy.source})
                report["policy"] = {"ok": True, "source": policy.source}
        return report

    # -- verifying -------------------------------------------------------------------------

    def _precheck(self, item: VerifyRequest, now: float) -> Result | None:
        """The verdicts reached before looking at any PASSporT: 428, 403 (SIP Date)."""
        if item.identity is None or item.identity == [] or item.identity == "":
            return _verdict(NoIdentity("the request carries no Identity header"))
        skew = self.settings.verification.max_date_skew
        if item.date is not None and abs(now - item.date) > skew:
            return _verdict(
                RequestDateStale(
                    f"request date {item.date:.0f} is {abs(now - item.date):.0f} s from now;"
                    f" at most {skew:g} s allowed"
                )
            )
        return None

    async def _judge_rcd(self, result: Result) -> None:
        """Rich Call Data (RFC 9795) of a verified call: only then can a name be shown."""
        if not result.rcd_sources:
            return
        source = next((s for s in result.rcd_sources if s["passed"]), None)
        if not result.passed or source is None:
            why = (
                "the call's identity did not verify"
                if not result.passed
                else ("no rcd PASSporT verified")
            )
            result.rcd = {
                "verified": False,
                "nam": None,
                "logo": None,
                "reason": why,
                "details": {},
            }
            return
        try:
            rcd = parse_rcd(source["payload"])
        except RcdError as exc:
            result.rcd = RcdVerdict.malformed(exc).to_dict()
            return
        if rcd is not None:
            result.rcd = (await verify_rcd(rcd, self.rcd_fetcher)).to_dict()

    async def _judged(self, result: Result) -> None:
        """What is decided about a verdict beyond the pure pipeline: RCD, and whether a
        verified PASSporT was seen again (by its signature) within its freshness window:
        across the fleet when Redis is configured, else in this process. (The common case,
        no RCD and no Redis, awaits nothing: every call passes here, and each coroutine
        costs.)"""
        if result.rcd_sources:
            await self._judge_rcd(result)
        if not result.passed:
            return
        signature = next((h.ppi for h in result.identities if h.status == "passed" and h.ppi), None)
        if signature is None:
            return
        if self.shared_replay is not None:
            seen = await self.shared_replay.seen(signature)
        else:
            seen = self.replay.seen(signature)
        if seen:
            result.replayed = True
            self.metrics.replays.inc()

    def _done(
        self, endpoint: str, request_id: str, item: VerifyRequest, result: Result, now: float
    ) -> Outcome:
        disposition = self.policy.decide(
            result, item.call, now=now, nanp_national_match=self.options.nanp_national_match
        )
        self.metrics.observe(endpoint, result, disposition.action, disposition.label)
        signers = _signers(result)
        if self.records is None:
            record = _record(now, endpoint, request_id, item, result, disposition, signers)
        else:
            record = _record(
                now,
                endpoint,
                request_id,
                item,
                result,
                disposition,
                signers,
                self._kept_identity(item),
                self._new_chain(result.certificate),
                self._new_chains(signers),
            )
        if self._log_verifications:
            self._log(record)
        return Outcome(result, disposition, record)

    def _kept_identity(self, item: VerifyRequest) -> str | None:
        """The Identity header value(s) as received, one per line, for the record; None when
        off or over ``identity_max_bytes`` (nothing rather than a cut JWS)."""
        value = item.identity
        if not self._keep_identity or not value:
            return None
        text = value if isinstance(value, str) else "\n".join(value)
        limit = self._identity_max
        # A character is 1 to 4 UTF-8 bytes: most headers skip the encoding.
        if len(text) > limit or (
            len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit
        ):
            return None
        return text

    def _new_chains(self, signers: dict[str, CertificateInfo] | None) -> dict[str, str] | None:
        """Fingerprint -> chain PEM of the record's other ``signers``, as :meth:`_new_chain`."""
        if signers is None:
            return None
        chains = {
            certificate.fingerprint_sha256: chain
            for certificate in signers.values()
            if (chain := self._new_chain(certificate)) is not None
        }
        return chains or None

    def _new_chain(self, certificate: CertificateInfo | None) -> str | None:
        """A signer's validated chain as PEM, for the first record of a fingerprint this
        process has not recorded lately; the store keeps one copy per fingerprint."""
        if certificate is None or not certificate.certificates:
            return None
        fingerprint = certificate.fingerprint_sha256
        if fingerprint in self._chains_kept:
            return None
        if len(self._chains_kept) >= _CHAINS_KEPT:  # bounded; a forgotten one is sent again
            self._chains_kept.clear()
        self._chains_kept.add(fingerprint)
        return "".join(
            c.public_bytes(Encoding.PEM).decode("ascii") for c in certificate.certificates
        )

    async def _keep(self, outcome: Outcome) -> None:
        """Hand the record to the writer: it never waits with a journal (the default); without
        one, a full queue may make it wait (``overflow = "wait"``)."""
        records = self.records
        if records is not None and not records.offer(outcome.record):
            await records.submit(outcome.record)

    async def verify_batch(
        self, items: list[VerifyRequest], endpoint: str, request_ids: list[str]
    ) -> list[Outcome]:
        """Many verifications: one credential lookup per x5u, signatures in one tight loop.

        The signatures go to ``batch_threads`` threads only while nothing else is in
        flight (:meth:`in_flight_request`: this batch's request at most) and some key has
        no table yet (:func:`verifier.core.verify.verify_many`). Beside other requests a
        thread would wait for the busy loop's GIL after every check: the loop alone is faster.
        """
        now = self.clock()
        results: list[Result | None] = [self._precheck(item, now) for item in items]
        todo = [i for i, r in enumerate(results) if r is None]
        verified = await verify_many(
            [(items[i].identity, items[i].call) for i in todo],
            now=now,
            credentials=self.credentials,
            options=self.options,
            cache=self.cache,
            threads=lambda: self.settings.batch_threads if self.in_flight <= 1 else 1,
            batch_check=es256.check_many,
        )
        for i, result in zip(todo, verified, strict=True):
            await self._judged(result)
            results[i] = result
        outcomes = [
            self._done(endpoint, rid, item, result, now)
            for item, rid, result in zip(
                items, request_ids, [r for r in results if r is not None], strict=True
            )
        ]
        for outcome in outcomes:
            await self._keep(outcome)
        return outcomes

    @contextlib.contextmanager
    def in_flight_request(self) -> Iterator[None]:
        """Count a request as in flight: a single verification until its verdict, a batch
        from its parsed body to its encoded answer."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def verify(self, item: VerifyRequest, endpoint: str, request_id: str) -> Outcome:
        now = self.clock()
        result = self._precheck(item, now)
        if result is None:
            self.in_flight += 1  # in_flight_request(), without a context manager's cost
            try:
                result = await verify(
                    item.identity,
                    now=now,
                    credentials=self.credentials,
                    call=item.call,
                    options=self.options,
                    cache=self.cache,
                    signatures=self.signatures.check if self.signatures is not None else None,
                )
            finally:
                self.in_flight -= 1
        await self._judged(result)
        outcome = self._done(endpoint, request_id, item, result, now)
        await self._keep(outcome)
        return outcome

    def _log(self, record: Record) -> None:
        """The verification's JSON log line, from its record (numbers masked by default).

        Formatted member by member (each string through the JSON encoder's own escaping),
        cheaper than ``json.dumps`` of a dict on every call; the members that the calls of
        one signer share (verdict, SPC, x5u) are formatted once.
        """
        full = self.settings.api.log_full_numbers
        key = (
            record.verstat,
            record.attest,
            record.reason,
            record.sip_code,
            record.spc,
            record.x5u,
        )
        middle = self._log_parts.get(key)
        if middle is None:
            middle = self._log_middle(record, key)
        self.vlog.emit_members(
            f'"endpoint":{_js(record.endpoint)},"request_id":{_js(record.request_id)},'
            f"{middle}"
            f'"origid":{_js(record.origid)},'
            f'"orig":{_js(record.orig if full else _mask(record.orig))},'
            f'"dest":{_js(record.dest if full else _mask(record.dest))},'
            f'"action":{_js(record.action)},"label":{_js(record.label)}'
        )

    def _log_middle(self, record: Record, key: tuple[Any, ...]) -> str:
        """The members of ``record``'s line that ``key`` (verdict, SPC, x5u) determines,
        formatted and kept."""
        spc = record.spc
        middle = (
            f'"verstat":{_js(record.verstat)},"attest":{_js(record.attest)},'
            f'"reason":{_js(record.reason)},'
            f'"sip_code":{"null" if record.sip_code is None else int(record.sip_code)},'
            f'"spc":{"[" + ",".join(map(json_string, spc)) + "]" if spc else "null"},'
            f'"x5u":{_js(record.x5u)},'
        )
        if len(self._log_parts) >= _LOG_PARTS:  # an x5u is the caller's: bounded
            self._log_parts.clear()
        self._log_parts[key] = middle
        return middle


def _verdict(exc: VerificationError) -> Result:
    return Result(verstat=exc.verstat, reason=Reason.of(exc))
