"""The ``rph`` PASSporT (RFC 8443): Resource-Priority for priority calls (ETS/WPS), with the
``sph`` claim of RFC 9027 ("psap-callback"). Pure.

:func:`check_rph_claims` is step 7 for ppt ``rph`` (the pipeline in ``verify.py`` runs every
other step as for any PASSporT: signature, x5u, certificate, iat, orig/dest). Whether a
verified ``rph`` PASSporT vouches for the call's Resource-Priority header is a question about
the SIP request beside it: :func:`judge_priority` answers it with the verstat-style value of
the 3GPP API (``verstatPriority``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from . import errors
from .passport import check_call_claims

__all__ = [
    "NO_RPH_VALIDATION",
    "PSAP_CALLBACK",
    "RPH",
    "RPH_VALIDATION_FAILED",
    "RPH_VALIDATION_PASSED",
    "RphClaims",
    "check_rph_claims",
    "judge_priority",
    "priority_values",
]

RPH = "rph"
PSAP_CALLBACK = "psap-callback"
RPH_VALIDATION_PASSED = "RPH-Validation-Passed"
RPH_VALIDATION_FAILED = "RPH-Validation-Failed"
NO_RPH_VALIDATION = "No-RPH-Validation"

# RFC 4412 r-value: namespace "." r-priority, each a token without "." (RFC 3261 token).
_WORD = r"[A-Za-z0-9\-!%*_+`'~]+"
_R_VALUE = re.compile(rf"{_WORD}\.{_WORD}")


class RphClaims(NamedTuple):
    """An rph PASSporT's claims, checked. From :func:`check_rph_claims`."""

    orig_tn: str
    dest_tns: tuple[str, ...]
    dest_uris: tuple[str, ...]
    iat: int
    auth: tuple[str, ...]
    """The asserted r-values, lower-cased (RFC 4412 compares them case-insensitively)."""
    sph: str | None
    warnings: tuple[str, ...] = ()


def check_rph_claims(payload: dict[str, Any]) -> RphClaims:
    """orig.tn, dest, iat, and ``rph`` = ``{"auth": [r-value, ...]}`` (RFC 8443 section 3);
    ``sph``, when present, = ``"psap-callback"`` (RFC 9027).

    Raises:
        InvalidTn, InvalidClaims: 438.
    """
    base = check_call_claims(payload)
    rph = payload.get("rph")
    if not isinstance(rph, dict) or set(rph) != {"auth"}:
        raise errors.InvalidClaims('rph must be an object with one member, "auth"')
    auth = rph["auth"]
    if type(auth) is not list or not auth:
        raise errors.InvalidClaims("rph.auth must be a non-empty array of r-values")
    for value in auth:
        if type(value) is not str or _R_VALUE.fullmatch(value) is None:
            raise errors.InvalidClaims(f"rph.auth value {value!r} is not an RFC 4412 r-value")
    sph = payload.get("sph")
    if sph is not None and sph != PSAP_CALLBACK:
        raise errors.InvalidClaims(f"sph is {sph!r}; RFC 9027 defines only {PSAP_CALLBACK!r}")
    return RphClaims(
        base.orig_tn,
        base.dest_tns,
        base.dest_uris,
        base.iat,
        tuple(v.lower() for v in auth),
        sph,
        base.warnings,
    )


def priority_values(header_values: Iterable[str]) -> frozenset[str]:
    """The r-values of Resource-Priority header values (comma-separated lists), lower-cased."""
    return frozenset(
        part.strip().lower() for value in header_values for part in value.split(",") if part.strip()
    )


class RphHeader(Protocol):
    """What :func:`judge_priority` reads of a verified header (a ``HeaderResult``)."""

    @property
    def index(self) -> int: ...
    @property
    def ppt(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any] | None: ...


def judge_priority(
    headers: Iterable[RphHeader], resource_priority: frozenset[str], priority: str | None
) -> tuple[str, Mapping[int, errors.VerificationError]]:
    """The priority verstat of a request, and the rph headers that fail beside the pipeline.

    An rph PASSporT vouches for the call when it verified (signature, certificate, iat,
    orig/dest) and each of its ``rph.auth`` values is among the request's Resource-Priority
    values; with ``sph``, the request's Priority must be ``psap-callback`` too. One such
    PASSporT passes the call; rph PASSporTs and none of them: failed; none at all: no
    validation.
    """
    verdict = NO_RPH_VALIDATION
    failures: dict[int, errors.VerificationError] = {}
    for header in headers:
        if header.ppt != RPH:
            continue
        if header.status != "passed" or header.payload is None:
            verdict = verdict if verdict == RPH_VALIDATION_PASSED else RPH_VALIDATION_FAILED
            continue
        claims = check_rph_claims(header.payload)  # passed: these claims were checked
        missing = [v for v in claims.auth if v not in resource_priority]
        problem: errors.VerificationError | None = None
        if missing:
            given = ", ".join(sorted(resource_priority)) or "none"
            problem = errors.InvalidClaims(
                f"rph.auth {missing!r} not among the Resource-Priority values ({given})"
            )
        elif claims.sph is not None and (priority or "").strip().lower() != PSAP_CALLBACK:
            problem = errors.InvalidClaims(
                f"sph {claims.sph!r} but the request's Priority is {priority!r}"
            )
        if problem is None:
            verdict = RPH_VALIDATION_PASSED
        else:
            failures[header.index] = problem
            verdict = verdict if verdict == RPH_VALIDATION_PASSED else RPH_VALIDATION_FAILED
    return verdict, failures
