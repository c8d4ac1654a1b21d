"""PASSporT (RFC 8225, RFC 8588): JWS decoding, protected header, claims, iat, ES256. Pure.

Each function checks one thing and raises the typed error of :mod:`verifier.core.errors` when
it fails; the order in which they run is the pipeline's business (``verify.py``).
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from . import errors
from .es256 import ES256Key, PlainKey
from .tn import CANONICAL_TN, canonical_tn

__all__ = [
    "ATTESTATIONS",
    "CallClaims",
    "DivClaims",
    "RcdPassportClaims",
    "ShakenClaims",
    "b64url_decode",
    "check_algorithm",
    "check_call_claims",
    "check_div_claims",
    "check_freshness",
    "check_ppt",
    "check_rcd_claims",
    "check_shaken_claims",
    "check_x5u",
    "decode_header",
    "decode_payload",
    "decode_signature",
    "ppt_of",
    "verify_es256",
]

ATTESTATIONS = frozenset({"A", "B", "C"})
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_B64_VALUES = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"]+")
_CANONICAL_TN = CANONICAL_TN.fullmatch


class ShakenClaims(NamedTuple):
    """The SHAKEN claims, checked and canonicalised. From :func:`check_shaken_claims`."""

    attest: str
    orig_tn: str
    dest_tns: tuple[str, ...]
    dest_uris: tuple[str, ...]
    iat: int
    origid: str
    warnings: tuple[str, ...] = ()


def b64url_decode(segment: str, what: str) -> bytes:
    """Strict base64url: RFC 7515 alphabet, no padding, no stray bits.

    Raises:
        InvalidEncoding: anything else (standard base64, ``=`` padding, whitespace...).
    """
    # a2b_base64's strict mode refuses anything outside the alphabet once "-_" become "+/";
    # so "+", "/" and "=" (standard base64, padding) are refused before the translation.
    rem = len(segment) & 3
    if rem == 1 or "+" in segment or "/" in segment or "=" in segment:
        raise errors.InvalidEncoding(f"{what} is not unpadded base64url")
    try:
        raw = segment.encode("ascii").translate(_TO_STANDARD)
        if rem:
            if _B64_VALUES[segment[-1]] & (0x0F if rem == 2 else 0x03):
                raise errors.InvalidEncoding(f"{what} is not canonical base64url (stray bits)")
            raw += b"==" if rem == 2 else b"="
        return binascii.a2b_base64(raw, strict_mode=True)
    except (UnicodeEncodeError, KeyError, binascii.Error):
        raise errors.InvalidEncoding(f"{what} is not unpadded base64url") from None


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise errors.DuplicateJsonKey(f"duplicate JSON key {key!r}")
            seen.add(key)
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_strict_object, parse_constant=_no_constants)
# The C scanner with no Python hook per object: the fast path of _json_object.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder(  # type: ignore[attr-defined]
    parse_constant=_no_constants
).scan_once


def _key_count(value: dict[str, Any] | list[Any]) -> int:
    """Keys in an object (or in the objects of an array) and in every object nested in it."""
    items: Iterable[Any]
    if isinstance(value, dict):
        count, items = len(value), value.values()
    else:
        count, items = 0, value
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            count += _key_count(item)
    return count


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object, refusing duplicate keys, NaN/Infinity and anything but an object.

    Fast path: the C scanner without hooks, then a proof that no key was lost to a
    duplicate. In valid JSON every ':' outside a string separates one key from its value,
    so a text with as many ':' in all as the decoded objects hold keys can have had no
    duplicate (nor any ':' inside a string). Anything else (a ':' in a value, surrounding
    whitespace, an error) takes the strict decoder, which names the duplicate.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.MalformedPassport(f"{what} is not JSON: {exc}") from None
    value = _scanned(text)
    if value is None:
        try:
            value = _DECODER.decode(text)
        except errors.DuplicateJsonKey as exc:
            raise errors.DuplicateJsonKey(f"{what}: {exc.detail}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise errors.MalformedPassport(f"{what} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise errors.MalformedPassport(f"{what} is JSON but not an object")
    if "\\u" in text:  # only an escape can make a lone surrogate
        _refuse_lone_surrogates(value, what)
    return value


def _scanned(text: str) -> dict[str, Any] | None:
    """The fast path of :func:`_json_object`: the object, or None for the strict decoder."""
    try:
        value, end = _SCAN(text, 0)
        if end == len(text) and type(value) is dict and text.count(":") == _key_count(value):
            return value
    except (StopIteration, ValueError, RecursionError):  # _key_count recurses too
        pass
    return None


def _refuse_lone_surrogates(value: dict[str, Any], what: str) -> None:
    """Raise unless every string in ``value`` is Unicode text.

    JSON's grammar lets a string escape a lone UTF-16 surrogate (``"\\ud800"``), but such
    a string is not Unicode text (RFC 8259 §8.2: software receiving it behaves
    unpredictably) and has no UTF-8 form, so it could be neither answered, logged nor
    recorded as it came: 438. Only an escape can make one (the bytes were decoded as
    UTF-8), so callers ask only for a text with a ``\\u``.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise errors.MalformedPassport(
            f"{what} holds a lone UTF-16 surrogate: not Unicode text"
        ) from None


def decode_header(h64: str) -> dict[str, Any]:
    """The protected header (first JWS part) as a JSON object.

    Raises:
        InvalidEncoding, MalformedPassport, DuplicateJsonKey: 438.
    """
    return _json_object(b64url_decode(h64, "PASSporT header"), "PASSporT header")


def decode_payload(p64: str) -> dict[str, Any]:
    """The claims (second JWS part) as a JSON object.

    Raises:
        InvalidEncoding, MalformedPassport, DuplicateJsonKey: 438.
    """
    return _json_object(b64url_decode(p64, "PASSporT payload"), "PASSporT payload")


def decode_signature(s64: str) -> bytes:
    """The third JWS part: a 64-byte R||S ES256 signature (RFC 7518 section 3.4).

    Raises:
        InvalidEncoding: not base64url, or not 64 bytes (a DER signature, say): 438.
    """
    signature = b64url_decode(s64, "PASSporT signature")
    if len(signature) != 64:
        raise errors.InvalidEncoding(
            f"signature is {len(signature)} bytes; ES256 needs the 64-byte R||S form"
            " (RFC 7518 section 3.4), not DER"
        )
    return signature


def ppt_of(header: dict[str, Any]) -> str | None:
    ppt = header.get("ppt")
    return ppt if isinstance(ppt, str) else None


def check_algorithm(header: dict[str, Any], alg_param: str | None) -> None:
    """``alg`` (header parameter and protected header) must be ES256, ``typ`` passport.

    Raises:
        UnsupportedAlgorithm, UnsupportedType: 437.
    """
    if alg_param is not None and alg_param != "ES256":
        raise errors.UnsupportedAlgorithm(
            f"Identity header parameter alg={alg_param!r} is not supported; only ES256 is"
        )
    alg = header.get("alg")
    if alg != "ES256":
        what = "missing" if alg is None else f"{alg!r}"
        raise errors.UnsupportedAlgorithm(f"PASSporT header alg is {what}; SHAKEN requires ES256")
    typ = header.get("typ")
    # Exactly "passport" (RFC 8225 section 4.1). RFC 7515 would let a media type differ in
    # case; the strict verifiers (Asterisk, libstirshaken) and real traffic use this one
    # spelling, so another is refused (437).
    if typ != "passport":
        what = "missing" if typ is None else f"{typ!r}"
        raise errors.UnsupportedType(f"PASSporT header typ is {what}; must be 'passport'")


def check_ppt(header: dict[str, Any], ppt_param: str | None, expected: str) -> None:
    """The protected header's ``ppt`` must be ``expected``, and agree with the parameter.

    Raises:
        InvalidPpt: 438.
    """
    if ppt_param is not None and ppt_param != expected:
        raise errors.InvalidPpt(f"Identity header parameter ppt={ppt_param!r}, not {expected!r}")
    ppt = header.get("ppt")
    if ppt != expected:
        what = "missing" if ppt is None else f"{ppt!r}"
        raise errors.InvalidPpt(f"PASSporT header ppt is {what}; must be {expected!r}")


def check_x5u(header: dict[str, Any], info: str | None, *, require_info: bool = True) -> str:
    """The ``info`` parameter must be ``<absoluteURI>``; ``x5u`` must be present and equal it.

    ``require_info`` is False for a bare PASSporT (no Identity header, so no ``info``).
    Returns the x5u. The x5u URL rules (https, port...) belong to the fetcher.

    Raises:
        InfoMissing, InfoInvalid, X5uMissing, X5uMismatch: 436.
    """
    info_uri: str | None = None
    if require_info:
        if info is None:
            raise errors.InfoMissing("Identity header has no info parameter")
        if not (len(info) > 2 and info[0] == "<" and info[-1] == ">"):
            raise errors.InfoInvalid(f"info parameter {info!r} is not <URI>")
        info_uri = info[1:-1]
        if _ABSOLUTE_URI.fullmatch(info_uri) is None:
            raise errors.InfoInvalid(f"info parameter <{info_uri}> is not an absolute URI")
    x5u = header.get("x5u")
    if not isinstance(x5u, str) or not x5u:
        raise errors.X5uMissing("PASSporT header has no x5u")
    if info_uri is not None and x5u != info_uri:
        raise errors.X5uMismatch(f"x5u {x5u!r} does not equal the info parameter <{info_uri}>")
    if _ABSOLUTE_URI.fullmatch(x5u) is None:
        raise errors.X5uRefused(f"x5u {x5u!r} is not an absolute URI")
    return x5u


def _tn_claim(value: Any, where: str, warnings: list[str]) -> str:
    if type(value) is str and _CANONICAL_TN(value) is not None:
        return value
    if type(value) is not str:
        raise errors.InvalidTn(f"{where} must be a string, found {type(value).__name__}")
    tn = canonical_tn(value)
    if tn is None:
        raise errors.InvalidTn(f"{where} {value!r} is not a telephone number")
    if tn != value:
        warnings.append(f"{where} {value!r} is not in canonical form (RFC 8224 section 8.3)")
    return tn


def _orig_tn(payload: dict[str, Any], warnings: list[str], name: str = "orig") -> str:
    orig = payload.get(name)
    if not isinstance(orig, dict):
        what = "missing" if orig is None else f"a {type(orig).__name__}"
        raise errors.InvalidClaims(f"{name} is {what}; must be an object with tn")
    if "tn" not in orig:
        raise errors.InvalidClaims(f"{name} has no tn; SHAKEN identifies numbers by tn")
    return _tn_claim(orig["tn"], f"{name}.tn", warnings)


def _dest(payload: dict[str, Any], warnings: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dest = payload.get("dest")
    if not isinstance(dest, dict):
        what = "missing" if dest is None else f"a {type(dest).__name__}"
        raise errors.InvalidClaims(f"dest is {what}; must be an object with tn or uri")
    dest_tns: tuple[str, ...] = ()
    dest_uris: tuple[str, ...] = ()
    tns = dest.get("tn")
    if tns is not None:
        if type(tns) is not list or not tns:
            raise errors.InvalidTn("dest.tn must be a non-empty array of strings")
        dest_tns = tuple([_tn_claim(v, "dest.tn", warnings) for v in tns])
    uris = dest.get("uri")
    if uris is not None:
        if type(uris) is not list or not uris or not all(type(u) is str for u in uris):
            raise errors.InvalidClaims("dest.uri must be a non-empty array of strings")
        dest_uris = tuple(uris)
    if not dest_tns and not dest_uris:
        raise errors.InvalidClaims("dest has neither tn nor uri")
    return dest_tns, dest_uris


def _iat(payload: dict[str, Any]) -> int:
    iat = payload.get("iat")
    if type(iat) is not int:
        what = "missing" if iat is None else f"a {type(iat).__name__}"
        raise errors.InvalidClaims(f"iat is {what}; must be an integer NumericDate")
    return iat


def check_shaken_claims(payload: dict[str, Any]) -> ShakenClaims:
    """attest, orig.tn, dest.tn / dest.uri, iat, origid: present and well typed.

    Unknown claims are allowed (the caller keeps the payload). Non-canonical TNs and a
    non-UUID origid are accepted with a warning.

    Raises:
        InvalidAttest, InvalidTn, InvalidClaims: 438.
    """
    warnings: list[str] = []
    attest = payload.get("attest")
    if not isinstance(attest, str) or attest not in ATTESTATIONS:  # a list/dict is unhashable
        what = "missing" if attest is None else f"{attest!r}"
        raise errors.InvalidAttest(f"attest is {what}; must be A, B or C")
    orig_tn = _orig_tn(payload, warnings)
    dest_tns, dest_uris = _dest(payload, warnings)
    iat = _iat(payload)
    origid = payload.get("origid")
    if not isinstance(origid, str):
        what = "missing" if origid is None else f"a {type(origid).__name__}"
        raise errors.InvalidClaims(f"origid is {what}; must be a string")
    if _UUID.fullmatch(origid) is None:
        warnings.append(f"origid {origid!r} is not a UUID (ATIS-1000074 expects one)")
    return ShakenClaims(attest, orig_tn, dest_tns, dest_uris, iat, origid, tuple(warnings))


class DivClaims(NamedTuple):
    """The claims of a ``div`` PASSporT (RFC 8946): who called, the new target, the number
    the call was diverted from."""

    orig_tn: str
    dest_tns: tuple[str, ...]
    dest_uris: tuple[str, ...]
    iat: int
    div_tn: str
    warnings: tuple[str, ...] = ()


def check_div_claims(payload: dict[str, Any]) -> DivClaims:
    """orig.tn, dest.tn, div.tn and iat of a div PASSporT (RFC 8946 section 4).

    Raises:
        InvalidTn, InvalidClaims: 438.
    """
    warnings: list[str] = []
    orig_tn = _orig_tn(payload, warnings)
    dest_tns, dest_uris = _dest(payload, warnings)
    if not dest_tns:
        raise errors.InvalidClaims("a div PASSporT's dest must carry tn (the new target)")
    iat = _iat(payload)
    div_tn = _orig_tn(payload, warnings, "div")
    return DivClaims(orig_tn, dest_tns, dest_uris, iat, div_tn, tuple(warnings))


class RcdPassportClaims(NamedTuple):
    """The identity claims of an ``rcd`` PASSporT (RFC 9795): the RCD itself is judged by
    :mod:`verifier.net.rcd`."""

    orig_tn: str
    dest_tns: tuple[str, ...]
    dest_uris: tuple[str, ...]
    iat: int
    warnings: tuple[str, ...] = ()


def check_rcd_claims(payload: dict[str, Any]) -> RcdPassportClaims:
    """orig.tn, dest, iat and an ``rcd`` object of an rcd PASSporT.

    Raises:
        InvalidTn, InvalidClaims: 438.
    """
    warnings: list[str] = []
    orig_tn = _orig_tn(payload, warnings)
    dest_tns, dest_uris = _dest(payload, warnings)
    iat = _iat(payload)
    if not isinstance(payload.get("rcd"), dict):
        raise errors.InvalidClaims("an rcd PASSporT must carry an rcd object")
    return RcdPassportClaims(orig_tn, dest_tns, dest_uris, iat, tuple(warnings))


class CallClaims(NamedTuple):
    """The claims every PASSporT type carries: orig.tn, dest, iat. From
    :func:`check_call_claims`."""

    orig_tn: str
    dest_tns: tuple[str, ...]
    dest_uris: tuple[str, ...]
    iat: int
    warnings: tuple[str, ...] = ()


def check_call_claims(payload: dict[str, Any]) -> CallClaims:
    """orig.tn, dest and iat, as the SHAKEN checks read them (for the other ppt modules).

    Raises:
        InvalidTn, InvalidClaims: 438.
    """
    warnings: list[str] = []
    orig_tn = _orig_tn(payload, warnings)
    dest_tns, dest_uris = _dest(payload, warnings)
    return CallClaims(orig_tn, dest_tns, dest_uris, _iat(payload), tuple(warnings))


def check_freshness(iat: int, now: float, *, max_age: float, max_future_skew: float) -> None:
    """``iat`` no older than ``max_age`` and no further ahead than ``max_future_skew``.

    Raises:
        IatTooOld, IatInFuture: 403.
    """
    try:
        age = float(now - iat)
    except OverflowError:  # JSON allows any integer; one beyond float range is far off
        age = -math.inf if iat > now else math.inf
    if age > max_age:
        raise errors.IatTooOld(f"iat {iat} is {age:.0f} s old; at most {max_age:g} s allowed")
    if -age > max_future_skew:
        raise errors.IatInFuture(
            f"iat {iat} is {-age:.0f} s in the future; at most {max_future_skew:g} s allowed"
        )


def verify_es256(
    key: ES256Key | ec.EllipticCurvePublicKey, signing_input: bytes, signature: bytes
) -> None:
    """Verify a raw 64-byte R||S ES256 signature with a key's check (a bare public key
    gets the plain one).

    Raises:
        InvalidSignature: 438 / TN-Validation-Failed.
    """
    checker = PlainKey(key) if isinstance(key, ec.EllipticCurvePublicKey) else key
    if not checker.check(signing_input, signature):
        raise errors.InvalidSignature("ES256 signature does not verify")
