"""Re-verify recorded calls from the store alone: each record's Identity header(s), each
PASSporT with the chain recorded for its x5u (the signer's fingerprint, and ``signers`` for
the others: a div PASSporT of another provider), as of the record's own time (``verify
--at``), with the trust anchors and options given now. No network: the x5u is not fetched.

What is compared: the verstat and the failure's slug. The policy is not applied again (a
disposition answers to the policy file of its day); a replay is not looked for (a
re-verification is one by design).

A record that cannot be re-verified says why instead: no Identity header kept
(``keep_identity`` off, over ``identity_max_bytes``, or none received), no chain in the
store for its x5u (its verification stopped before a chain validated, or the chain was
pruned), or a verdict about the request's own date (the request time is not recorded).
A record made before ``signers`` was recorded has its signer's chain alone, for every
PASSporT, as then.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509

from ..core.certs import TrustStore
from ..core.errors import RequestDateStale
from ..core.tn import CallInfo
from ..core.verify import VerifyOptions, verify_offline
from .model import Record

__all__ = ["Reverified", "reverify"]

Status = Literal["same", "different", "no_identity", "no_chain", "request_date"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reverified:
    """One record and what re-verifying it gave (``verstat``/``reason`` None unless it was
    re-verified: ``status`` "same" or "different")."""

    record: Record
    status: Status
    verstat: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.record.request_id,
            "ts": self.record.ts,
            "recorded": {"verstat": self.record.verstat, "reason": self.record.reason},
            "reverified": (
                None if self.verstat is None else {"verstat": self.verstat, "reason": self.reason}
            ),
            "status": self.status,
        }

    def line(self) -> str:
        """One line for a person: request id, recorded and re-verified verdicts, outcome."""
        recorded = f"{self.record.verstat}/{self.record.reason or '-'}"
        if self.verstat is None:
            why = {
                "no_identity": "no Identity header recorded",
                "no_chain": "no certificate chain recorded",
                "request_date": "not re-verified: the verdict was about the request's date",
            }[self.status]
            return f"{self.record.request_id} {recorded} -> {why}"
        outcome = "same" if self.status == "same" else "DIFFERENT"
        return (
            f"{self.record.request_id} {recorded} -> {self.verstat}/{self.reason or '-'} {outcome}"
        )


def reverify(
    records: Iterable[Record],
    chains: Mapping[str, str],
    trust: TrustStore,
    options: VerifyOptions,
) -> Iterator[Reverified]:
    """Each of ``records`` re-verified as of its ``ts``, its chains from ``chains``
    (fingerprint -> PEM, :meth:`~verifier.records.RecordStore.chains`)."""
    for record in records:
        if record.identity is None:
            yield Reverified(record=record, status="no_identity")
            continue
        if record.reason == RequestDateStale.slug:
            yield Reverified(record=record, status="request_date")
            continue
        pem = chains.get(record.fingerprint) if record.fingerprint else None
        one: list[x509.Certificate] | None = None
        by_x5u: dict[str, list[x509.Certificate]] | None = None
        if record.signers is None:  # one signer (or a record from before ``signers``)
            one = None if pem is None else _certificates(pem)
        else:
            by_x5u = _by_x5u(record, record.signers, pem, chains)
        if one is None and by_x5u is None:
            yield Reverified(record=record, status="no_chain")
            continue
        result = verify_offline(
            record.identity.splitlines(),
            now=record.ts,
            call=CallInfo(from_=record.orig, to=record.dest),
            options=options,
            chain=one,
            chains=by_x5u,
            trust=trust,
        )
        reason = result.reason.slug if result.reason else None
        same = (result.verstat, reason) == (record.verstat, record.reason)
        yield Reverified(
            record=record,
            status="same" if same else "different",
            verstat=result.verstat,
            reason=reason,
        )


def _by_x5u(
    record: Record, signers: Mapping[str, str], pem: str | None, chains: Mapping[str, str]
) -> dict[str, list[x509.Certificate]] | None:
    """x5u -> chain for each of ``record``'s signers whose chain the store holds, its own
    signer's (``pem``) included; None when there is none for the record's own x5u."""
    by_x5u = {x5u: _certificates(chains[fp]) for x5u, fp in signers.items() if fp in chains}
    if pem is not None and record.x5u is not None:
        by_x5u[record.x5u] = _certificates(pem)
    return by_x5u if record.x5u in by_x5u else None


def _certificates(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode("ascii"))
