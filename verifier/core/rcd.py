"""Rich Call Data (RFC 9795), the pure rules: the shapes of the ``rcd``, ``rcdi`` and ``crn``
claims, ``rcdi`` digest strings, jCards and the URIs in them, and the verdict.

A bad RCD never fails the call's identity verification: it only leaves the RCD unverified.
So the errors here are :class:`RcdError` (a ValueError), not a ``VerificationError``.
JSON pointers (``jsonpointer``), canonical JSON (``rfc8785``) and fetching referenced
content live in :mod:`verifier.net.rcd`: core imports neither library.

Checked against the text of RFC 9795 (July 2025)
-------------------------------------------------

- 5.1: ``rcd`` is a JSON object (section 8 once says "an array of JSON objects"; 5.1 and
  every example have an object); members other than the five below are kept.
- 5.1.1 ``nam``: required, a string, empty when there is no name (its RFC 3261
  display-name syntax is not checked). 5.1.2 ``apn``: optional, a canonical telephone
  number (RFC 8224 section 8.3). 5.1.3 ``icn``: an HTTPS URL of an image; section 8.3 also
  shows a ``data:`` URI, which is inline content. 5.1.4 ``jcd``, a jCard (RFC 7095), and
  5.1.5 ``jcl``, an HTTPS URL of one, exclude each other; URIs in a jCard are followed one
  level, no further. 7: ``crn`` is a string. 6: ``rcdi`` only beside ``rcd``.
- 6: ``rcdi`` maps JSON pointers (RFC 6901) into ``rcd`` (``/jcl/...`` into the fetched
  jCard, 6.1.4) to ``<algorithm>-<base64>``: the identifier lowercase without a hyphen;
  sha256, sha384 and sha512 are required, others allowed (here: "not supported", which
  leaves that content unverified); base64 of RFC 4648 section 4 (the examples omit padding).
- 6.1: a JSON value is digested in the RFC 8225 section 9 form (no whitespace, sorted keys),
  a string with its quotes (section 8.3's ``/nam`` digest reproduces); URI content over the
  body bytes as served (8.3's ``/jcl`` digest is that of the compact jCard's bytes).
- 6.1.1, 6.1.3: a digest of ``nam``, ``apn`` or ``jcd`` is optional, the signature covers
  them; 6.1.2-6.1.4: ``icn``, ``jcl`` and each URI in a jCard need one, or that content
  is not verified.
- 8.1, 8.2: a digest that does not match fails the content it names, no more; content
  that cannot be fetched is unverified; inline claims stay usable (``nam`` is withheld
  only when an rcdi digest of its own does not verify).

Not taken from the RFC: ATIS-1000094 was not read; compact form (9), third-party ``iss``
(10) and JWT Claim Constraints (6.2, 6.3) are not handled here. Choices of this verifier:
referenced URLs also carry no userinfo or fragment (their port and address rules are the
fetcher's); the media type of fetched content is not judged (5.1.5 puts it on the server);
a jCard value of type ``uri`` is a reference when it is an ``http(s)`` URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from .errors import VerifierError
from .tn import is_canonical

__all__ = [
    "ALGORITHMS",
    "COVERED",
    "DIGEST_MISMATCH",
    "DIGEST_OK",
    "NOT_CHECKED",
    "NO_DIGEST",
    "Digest",
    "Kind",
    "Rcd",
    "RcdError",
    "RcdVerdict",
    "check_claims",
    "check_jcard",
    "digest_of",
    "is_data_uri",
    "jcard_references",
    "signed_outcomes",
    "url_problem",
]

ALGORITHMS: Mapping[str, int] = MappingProxyType({"sha256": 32, "sha384": 48, "sha512": 64})
"""Digest algorithms computed (RFC 9795 section 6 requires these three), and their sizes."""

Kind = Literal["jcl", "icn"]
"""What a URL refers to: a jCard document, or an image (and any other jCard reference)."""

COVERED = "covered by signature"
DIGEST_OK = "digest ok"
DIGEST_MISMATCH = "digest mismatch"
NO_DIGEST = "no digest"
NOT_CHECKED = "not checked"
VERIFIED = frozenset({COVERED, DIGEST_OK})
"""The outcomes under which content counts as verified."""

# Small and strict by hand: the RFC 9795 section 6 digest string, one regular expression.
_DIGEST = re.compile(r"([a-z0-9]+)-([A-Za-z0-9+/]*)(={0,2})")
_DATA_IMAGE = re.compile(r"data:image/[^,]*,", re.IGNORECASE)


class RcdError(VerifierError, ValueError):
    """The rcd, rcdi or crn claim is malformed; ``reason`` says how. The RCD is then
    unverified; the call's identity verification is not affected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- digests ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Digest:
    """One ``rcdi`` value, decoded. You get one from ``parse_rcd``."""

    algorithm: str
    value: bytes

    @property
    def supported(self) -> bool:
        """Whether this verifier computes :attr:`algorithm` (one of :data:`ALGORITHMS`)."""
        return self.algorithm in ALGORITHMS

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` has this digest; False for an algorithm not supported."""
        if not self.supported:
            return False
        return hmac.compare_digest(hashlib.new(self.algorithm, data).digest(), self.value)

    def outcome(self, data: bytes) -> str:
        """ "digest ok", "digest mismatch", or why ``data`` could not be judged."""
        if not self.supported:
            return f"digest algorithm {self.algorithm!r} not supported"
        return DIGEST_OK if self.matches(data) else DIGEST_MISMATCH

    def __str__(self) -> str:
        encoded = base64.b64encode(self.value).decode("ascii").rstrip("=")
        return f"{self.algorithm}-{encoded}"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The ``rcdi`` value for ``data``: ``sha256-<base64>``, unpadded as in RFC 9795's examples.

    Raises:
        ValueError: ``algorithm`` is not one of :data:`ALGORITHMS`.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"digest algorithm {algorithm!r} is not one of {sorted(ALGORITHMS)}")
    return str(Digest(algorithm, hashlib.new(algorithm, data).digest()))


def parse_digest(text: Any, pointer: str) -> Digest:
    """One ``rcdi`` value: ``<algorithm>-<base64>`` (RFC 9795 section 6).

    Raises:
        RcdError: not a string, not of that form, not base64, or the wrong length for a
            supported algorithm.
    """
    if type(text) is not str:
        raise RcdError(f"rcdi {pointer!r} value must be a string")
    match = _DIGEST.fullmatch(text)
    if match is None:
        if re.fullmatch(r"[a-z0-9]+-.*", text, re.DOTALL):
            raise RcdError(f"rcdi {pointer!r} digest is not base64")
        raise RcdError(
            f"rcdi {pointer!r} digest must be <algorithm>-<base64>, the algorithm in"
            " lowercase letters and digits"
        )
    algorithm, encoded, padding = match.groups()
    if padding and len(padding) != -len(encoded) % 4:
        raise RcdError(f"rcdi {pointer!r} digest is not base64")
    try:
        value = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RcdError(f"rcdi {pointer!r} digest is not base64") from None
    size = ALGORITHMS.get(algorithm)
    if size is not None and len(value) != size:
        raise RcdError(f"rcdi {pointer!r} digest has {len(value)} bytes, not a {algorithm}")
    return Digest(algorithm, value)


# -- jCards and URLs --------------------------------------------------------------------------


def check_jcard(value: Any, what: str) -> None:
    """``value`` has the shape of a jCard: ``["vcard", [[name, {params}, type, value...]...]]``.

    Raises:
        RcdError: it does not.
    """
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


def jcard_references(jcard: list[Any], prefix: str) -> dict[str, str]:
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


def is_data_uri(url: str) -> bool:
    """Whether ``url`` is a ``data:image/...`` URI: inline content (RFC 9795 section 8.3)."""
    return _DATA_IMAGE.match(url) is not None


def url_problem(url: str) -> str | None:
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
    """The RCD claims of a PASSporT, checked for shape. You get one from ``parse_rcd``."""

    nam: str
    """Display name (covered by the PASSporT signature)."""
    jcd: list[Any] | None = None
    """Inline jCard."""
    jcl: str | None = None
    """HTTPS URL of a jCard document."""
    icn: str | None = None
    """HTTPS URL of an image (the logo), or a ``data:image/...`` URI (inline)."""
    apn: str | None = None
    """Alternate presentation number, canonical (RFC 8224 section 8.3)."""
    crn: str | None = None
    """Call reason (a claim beside rcd)."""
    rcdi: Mapping[str, Digest] = field(default_factory=lambda: MappingProxyType({}))
    """JSON pointer -> digest of what it names."""
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The raw ``rcd``, ``rcdi`` and ``crn`` claims, those present."""


def _optional_str(rcd: Mapping[str, Any], key: str, what: str) -> str | None:
    value = rcd.get(key)
    if value is not None and type(value) is not str:
        raise RcdError(f"{what} must be a string, found {type(value).__name__}")
    return value


def _url_member(rcd: Mapping[str, Any], key: str, *, inline_image: bool = False) -> str | None:
    url = _optional_str(rcd, key, f"rcd {key}")
    if url is not None and not (inline_image and is_data_uri(url)):
        problem = url_problem(url)
        if problem is not None:
            raise RcdError(f"rcd {key} {problem}")
    return url


def check_claims(payload: Mapping[str, Any]) -> Rcd | None:
    """The ``rcd``, ``rcdi`` and ``crn`` claims of a PASSporT payload checked for shape, or
    None if it has no ``rcd`` claim. The ``rcdi`` keys are taken as they are: ``parse_rcd``
    (in :mod:`verifier.net.rcd`) checks them as JSON pointers into ``rcd``.

    Raises:
        RcdError: rcdi without rcd; rcd not an object; nam missing or not a string; apn not
            a canonical telephone number; crn not a string; icn not an https URL or a
            data:image URI; jcl not an https URL; jcd not a jCard; both jcd and jcl; rcdi
            not an object, or a value that is not ``<algorithm>-<base64>``.
    """
    if "rcd" not in payload:
        if "rcdi" in payload:
            raise RcdError("rcdi without rcd (RFC 9795 section 6 requires rcd beside it)")
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
    if apn is not None and not is_canonical(apn):
        raise RcdError("rcd apn is not a canonical telephone number (RFC 8224 section 8.3)")
    icn = _url_member(rcd, "icn", inline_image=True)
    jcl = _url_member(rcd, "jcl")
    jcd = rcd.get("jcd")
    if jcd is not None:
        check_jcard(jcd, "rcd jcd")
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
            digests[pointer] = parse_digest(text, pointer)
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


def signed_outcomes(rcd: Rcd) -> dict[str, str]:
    """Pointer -> "covered by signature" for the inline members (nam, apn, jcd, a data: icn);
    an ``rcdi`` entry for one of them is judged on top (RFC 9795 sections 6.1.1, 6.1.3)."""
    details = {"/nam": COVERED}
    if rcd.apn is not None:
        details["/apn"] = COVERED
    if rcd.jcd is not None:
        details["/jcd"] = COVERED
    if rcd.icn is not None and is_data_uri(rcd.icn):
        details["/icn"] = COVERED
    return details


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RcdVerdict:
    """How far an RCD can be trusted. From :meth:`judge`, ``verify_rcd`` or :meth:`malformed`."""

    verified: bool
    """True only when everything present that needs an integrity check passed."""
    nam: str | None
    """The display name (covered by the signature of a verified PASSporT); None when its own
    rcdi digest failed."""
    logo: str | None
    """The icn URL, only when its content matched its digest (or is an inline data: URI)."""
    reason: str | None
    """Why the RCD is not verified (the first problem); None when it is."""
    details: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """JSON pointer -> outcome: covered by signature, digest ok, digest mismatch..."""

    @classmethod
    def judge(cls, rcd: Rcd, details: Mapping[str, str]) -> RcdVerdict:
        """The verdict for an RCD whose content had the outcomes ``details``."""
        problems = [f"{p}: {o}" for p, o in details.items() if o not in VERIFIED]
        return cls(
            verified=not problems,
            nam=rcd.nam if details.get("/nam") in VERIFIED else None,
            logo=rcd.icn if details.get("/icn") in VERIFIED else None,
            reason=problems[0] if problems else None,
            details=MappingProxyType(dict(details)),
        )

    @classmethod
    def malformed(cls, exc: RcdError) -> RcdVerdict:
        """The verdict for claims that ``parse_rcd`` refused."""
        return cls(verified=False, nam=None, logo=None, reason=f"malformed RCD: {exc.reason}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "nam": self.nam,
            "logo": self.logo,
            "reason": self.reason,
            "details": dict(self.details),
        }
