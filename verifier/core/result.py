"""What a verification reports: :class:`Result` (the verdict), one :class:`HeaderResult` per
Identity header, :class:`Reason`; and :class:`Entry`, one header's state in the pipeline. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from . import errors
from .certs import CertificateInfo, Credential
from .errors import TN_VALIDATION_PASSED, VerificationError
from .passport import DivClaims, RcdPassportClaims, ShakenClaims
from .rph import RphClaims

__all__ = ["SHAKEN", "Claims", "Entry", "HeaderResult", "Reason", "Result", "Status", "failed"]

SHAKEN = "shaken"

Claims = ShakenClaims | DivClaims | RcdPassportClaims | RphClaims


@dataclass(frozen=True, slots=True, kw_only=True)
class Reason:
    """Why a verification (or one header) failed: RFC 8224 code, its text, our slug, detail."""

    sip_code: int
    text: str
    slug: str
    detail: str

    @classmethod
    def of(cls, exc: VerificationError) -> Reason:
        return cls(sip_code=exc.sip_code, text=exc.text, slug=exc.slug, detail=exc.detail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sip_code": self.sip_code,
            "text": self.text,
            "slug": self.slug,
            "detail": self.detail,
        }


Status = Literal["passed", "failed", "not_verified", "pending"]


@dataclass(slots=True, kw_only=True)
class HeaderResult:
    """One Identity header's outcome."""

    index: int
    ppt: str | None
    status: Status
    reason: Reason | None = None
    x5u: str | None = None
    ppi: str | None = None
    payload: dict[str, Any] | None = field(default=None, repr=False)
    """The decoded claims (whatever the status; the 3GPP API answers them on a pass)."""
    certificate: CertificateInfo | None = field(default=None, repr=False)
    """The certificate of the chain validated for ``x5u`` (steps 10-11), whether or not
    the header then passed; None when no chain validated (the records keep its chain)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "ppt": self.ppt,
            "status": self.status,
            "reason": self.reason.to_dict() if self.reason else None,
            "x5u": self.x5u,
            "ppi": self.ppi,
        }


@dataclass(slots=True, kw_only=True)
class Result:
    """The verdict: plain data, ``to_dict()`` is JSON-serialisable."""

    verstat: str
    attest: str | None = None
    reason: Reason | None = None
    claims: dict[str, Any] | None = None
    certificate: CertificateInfo | None = None
    x5u: str | None = None
    origid: str | None = None
    matched: dict[str, str | None] = field(default_factory=dict)
    identities: list[HeaderResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    diversion: dict[str, Any] | None = None
    """With div PASSporTs (RFC 8946): the chain's verstat, each hop, and what broke."""
    rcd: dict[str, Any] | None = None
    """Rich Call Data (RFC 9795) outcome, filled by the service (it may fetch content)."""
    rcd_sources: list[dict[str, Any]] = field(default_factory=list)
    """Verified payloads carrying ``rcd`` claims (the SHAKEN one, rcd PASSporTs)."""
    replayed: bool = False
    """This PASSporT was seen before within its freshness window (set by the service)."""

    @property
    def passed(self) -> bool:
        return self.verstat == TN_VALIDATION_PASSED

    def to_dict(self) -> dict[str, Any]:
        return {
            "verstat": self.verstat,
            "attest": self.attest,
            "reason": self.reason.to_dict() if self.reason else None,
            "claims": self.claims,
            "certificate": self.certificate.to_dict() if self.certificate else None,
            "x5u": self.x5u,
            "origid": self.origid,
            "matched": dict(self.matched),
            "identities": [h.to_dict() for h in self.identities],
            "warnings": list(self.warnings),
            "diversion": self.diversion,
            "rcd": self.rcd,
            "replayed": self.replayed,
        }


class Entry:
    """One Identity header as the pipeline advances it: its result row, its kind (``shaken``,
    ``div``, ``rcd``, ``rph``; None when not verified), and what steps 3-12 found."""

    __slots__ = (
        "claims",
        "credential",
        "deferred",
        "error",
        "kind",
        "matched",
        "payload",
        "result",
        "signature",
        "signing_input",
    )

    def __init__(self, result: HeaderResult) -> None:
        self.result = result
        self.kind: str | None = SHAKEN
        self.deferred: errors.DestMismatch | None = None
        """A SHAKEN dest that did not match the call, left to the diversion chain."""
        self.claims: Claims | None = None
        self.payload: dict[str, Any] | None = None
        self.signing_input = b""
        self.signature = b""
        self.error: VerificationError | None = None
        self.credential: Credential | None = None
        self.matched: dict[str, str | None] = {}

    def fail(self, exc: VerificationError) -> None:
        self.error = exc
        self.result.status = "failed"
        self.result.reason = Reason.of(exc)


def failed(exc: VerificationError, identities: list[HeaderResult]) -> Result:
    return Result(verstat=exc.verstat, reason=Reason.of(exc), identities=identities)
