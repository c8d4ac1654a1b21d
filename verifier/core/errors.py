"""Every way a verification can fail, one class each.

Each leaf carries the RFC 8224 response code and reason phrase that a SIP
verifier would answer with, the verstat (ATIS-1000074) that the failure maps
to, and a stable ``slug`` for logs, metrics and policy rules. The ``detail``
given to the constructor is the human explanation of this one failure.

Every exception this package defines derives from :class:`VerifierError`: the verdicts
below, and elsewhere the errors of a request, a setting, a policy file or a store
(``ApiError``, ``ConfigError``, ``PolicyError``, ``RcdError``, ``RecordRefused``...).

Hierarchy::

    VerificationError (a VerifierError)
    + NoIdentity                      428  No-TN-Validation
    + StaleDate                       403  No-TN-Validation
    | x IatTooOld, IatInFuture, RequestDateStale
    + BadIdentityInfo                 436  No-TN-Validation
    | x InfoMissing, InfoInvalid, X5uMissing, X5uMismatch, X5uRefused, X5uFetchFailed
    + UnsupportedCredential           437
    | x UnsupportedAlgorithm, UnsupportedType            No-TN-Validation
    | x CertificateError                                 TN-Validation-Failed
    |   x CertificateInvalid, CertificateNotTrusted, CertificateExpired,
    |     CertificateNotYetValid, CertificateRevoked, CrlUnavailable,
    |     TNAuthListMissing, TNAuthListMalformed, PolicyOidMissing, UnsupportedKey
    + InvalidIdentityHeader           438  No-TN-Validation
      x MalformedIdentity, CompactForm, MalformedPassport, DuplicateJsonKey,
        InvalidEncoding, InvalidPpt, InvalidClaims, InvalidAttest, InvalidTn,
        OrigMismatch, DestMismatch, NoShakenPassport,
        DiversionBroken, DiversionLoop, DiversionTooLong, DiversionUnanchored
      x InvalidSignature                                 TN-Validation-Failed
"""

from __future__ import annotations

from typing import ClassVar

NO_TN_VALIDATION = "No-TN-Validation"
TN_VALIDATION_FAILED = "TN-Validation-Failed"
TN_VALIDATION_PASSED = "TN-Validation-Passed"

__all__ = [
    "NO_TN_VALIDATION",
    "TN_VALIDATION_FAILED",
    "TN_VALIDATION_PASSED",
    "BadIdentityInfo",
    "CertificateError",
    "CertificateExpired",
    "CertificateInvalid",
    "CertificateNotTrusted",
    "CertificateNotYetValid",
    "CertificateRevoked",
    "CompactForm",
    "CrlUnavailable",
    "DestMismatch",
    "DiversionBroken",
    "DiversionLoop",
    "DiversionTooLong",
    "DiversionUnanchored",
    "DuplicateJsonKey",
    "IatInFuture",
    "IatTooOld",
    "InfoInvalid",
    "InfoMissing",
    "InvalidAttest",
    "InvalidClaims",
    "InvalidEncoding",
    "InvalidIdentityHeader",
    "InvalidPpt",
    "InvalidSignature",
    "InvalidTn",
    "MalformedIdentity",
    "MalformedPassport",
    "NoIdentity",
    "NoShakenPassport",
    "OrigMismatch",
    "PolicyOidMissing",
    "RequestDateStale",
    "StaleDate",
    "TNAuthListMalformed",
    "TNAuthListMissing",
    "UnsupportedAlgorithm",
    "UnsupportedCredential",
    "UnsupportedKey",
    "UnsupportedType",
    "VerificationError",
    "VerifierError",
    "X5uFetchFailed",
    "X5uMismatch",
    "X5uMissing",
    "X5uRefused",
    "all_error_classes",
]


class VerifierError(Exception):
    """Base of every exception this package defines."""


class VerificationError(VerifierError):
    """Base of every verification failure. Not raised itself."""

    sip_code: ClassVar[int] = 500
    text: ClassVar[str] = "Server Internal Error"
    slug: ClassVar[str] = "error"
    verstat: ClassVar[str] = NO_TN_VALIDATION

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r})"


# 428 ---------------------------------------------------------------------------------------------


class NoIdentity(VerificationError):
    """The request carries no Identity header at all."""

    sip_code = 428
    text = "Use Identity Header"
    slug = "no_identity"


# 403 ---------------------------------------------------------------------------------------------


class StaleDate(VerificationError):
    sip_code = 403
    text = "Stale Date"
    slug = "stale_date"


class IatTooOld(StaleDate):
    slug = "iat_too_old"


class IatInFuture(StaleDate):
    slug = "iat_in_future"


class RequestDateStale(StaleDate):
    """The SIP Date (request ``time``) is too far from the verification time."""

    slug = "date_stale"


# 436 ---------------------------------------------------------------------------------------------


class BadIdentityInfo(VerificationError):
    sip_code = 436
    text = "Bad Identity Info"
    slug = "bad_identity_info"


class InfoMissing(BadIdentityInfo):
    slug = "info_missing"


class InfoInvalid(BadIdentityInfo):
    slug = "info_invalid"


class X5uMissing(BadIdentityInfo):
    slug = "x5u_missing"


class X5uMismatch(BadIdentityInfo):
    slug = "x5u_info_mismatch"


class X5uRefused(BadIdentityInfo):
    """The x5u URL breaks the fetch rules (scheme, port, userinfo, address...)."""

    slug = "x5u_refused"


class X5uFetchFailed(BadIdentityInfo):
    """The certificate could not be obtained from x5u (network, HTTP status, body)."""

    slug = "x5u_fetch_failed"


# 437 ---------------------------------------------------------------------------------------------


class UnsupportedCredential(VerificationError):
    sip_code = 437
    text = "Unsupported Credential"
    slug = "unsupported_credential"


class UnsupportedAlgorithm(UnsupportedCredential):
    slug = "unsupported_alg"


class UnsupportedType(UnsupportedCredential):
    slug = "unsupported_typ"


class CertificateError(UnsupportedCredential):
    """The signer's certificate cannot be trusted for SHAKEN."""

    verstat = TN_VALIDATION_FAILED
    slug = "cert_invalid"


class CertificateInvalid(CertificateError):
    """The certificate (or chain) cannot be parsed or has the wrong shape."""

    slug = "cert_invalid"


class CertificateNotTrusted(CertificateError):
    slug = "cert_not_trusted"


class CertificateExpired(CertificateError):
    slug = "cert_expired"


class CertificateNotYetValid(CertificateError):
    slug = "cert_not_yet_valid"


class CertificateRevoked(CertificateError):
    slug = "cert_revoked"


class CrlUnavailable(CertificateError):
    """Revocation status unknown and the operator chose to fail closed."""

    slug = "crl_unavailable"


class TNAuthListMissing(CertificateError):
    slug = "tnauthlist_missing"


class TNAuthListMalformed(CertificateError):
    slug = "tnauthlist_malformed"


class PolicyOidMissing(CertificateError):
    slug = "cert_policy_missing"


class UnsupportedKey(CertificateError):
    """The leaf's key is not a P-256 key, so it cannot have made an ES256 signature."""

    slug = "cert_key_unsupported"


# 438 ---------------------------------------------------------------------------------------------


class InvalidIdentityHeader(VerificationError):
    sip_code = 438
    text = "Invalid Identity Header"
    slug = "invalid_identity"


class MalformedIdentity(InvalidIdentityHeader):
    """The Identity header value does not follow the RFC 8224 grammar."""

    slug = "identity_malformed"


class CompactForm(InvalidIdentityHeader):
    slug = "compact_form"


class InvalidEncoding(InvalidIdentityHeader):
    """A JWS segment is not unpadded base64url, or the signature is not 64-byte R||S."""

    slug = "invalid_encoding"


class MalformedPassport(InvalidIdentityHeader):
    """A JWS segment does not decode to a JSON object."""

    slug = "passport_malformed"


class DuplicateJsonKey(MalformedPassport):
    slug = "duplicate_json_key"


class InvalidPpt(InvalidIdentityHeader):
    slug = "invalid_ppt"


class InvalidClaims(InvalidIdentityHeader):
    slug = "invalid_claims"


class InvalidAttest(InvalidClaims):
    slug = "invalid_attest"


class InvalidTn(InvalidClaims):
    slug = "invalid_tn"


class OrigMismatch(InvalidIdentityHeader):
    slug = "orig_mismatch"


class DestMismatch(InvalidIdentityHeader):
    slug = "dest_mismatch"


class NoShakenPassport(InvalidIdentityHeader):
    """Identity headers were given, but none of them is a SHAKEN PASSporT."""

    slug = "no_shaken_passport"


class DiversionBroken(InvalidIdentityHeader):
    """A div PASSporT does not link into the chain (RFC 8946): its div is no earlier dest,
    its orig differs, or the last dest is not the called number."""

    slug = "div_broken"


class DiversionLoop(InvalidIdentityHeader):
    slug = "div_loop"


class DiversionTooLong(InvalidIdentityHeader):
    slug = "div_too_long"


class DiversionUnanchored(InvalidIdentityHeader):
    """div PASSporTs without a SHAKEN PASSporT to link them to."""

    slug = "div_without_shaken"


class InvalidSignature(InvalidIdentityHeader):
    verstat = TN_VALIDATION_FAILED
    slug = "invalid_signature"


def all_error_classes() -> list[type[VerificationError]]:
    """Every concrete failure class (the leaves and the raised bases), for tests and docs."""
    seen: list[type[VerificationError]] = []
    stack: list[type[VerificationError]] = [VerificationError]
    while stack:
        cls = stack.pop()
        subs = cls.__subclasses__()
        if cls is not VerificationError:
            seen.append(cls)
        stack.extend(subs)
    return sorted(seen, key=lambda c: c.__name__)
