"""verifier.core.passport: strict JWS decoding, header checks, SHAKEN claims, iat, ES256."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from verifier.core import errors
from verifier.core.identity import split_value
from verifier.core.passport import (
    ShakenClaims,
    b64url_decode,
    check_algorithm,
    check_freshness,
    check_ppt,
    check_shaken_claims,
    check_x5u,
    decode_header,
    decode_payload,
    decode_signature,
    ppt_of,
    verify_es256,
)
from verifier.core.verify import Verification
from verifier.testing import Signer, b64url

RawJws = Callable[[bytes, bytes], str]

HEADER = {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": "https://a.example/sp.pem"}
ORIGID = "123e4567-e89b-12d3-a456-426655440000"


class Decoded(NamedTuple):
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def decode(token: str) -> Decoded:
    """A PASSporT's three parts decoded as the pipeline decodes them (step 3)."""
    h64, p64, s64 = token.split(".")
    header, payload = decode_header(h64), decode_payload(p64)
    return Decoded(header, payload, f"{h64}.{p64}".encode(), decode_signature(s64))


def _payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "attest": "A",
        "dest": {"tn": ["12155551213"]},
        "iat": 1700000000,
        "orig": {"tn": "12155551212"},
        "origid": ORIGID,
    }
    for name, value in changes.items():
        if value is ...:
            del payload[name]
        else:
            payload[name] = value
    return payload


# -- base64url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "data"),
    [("", b""), ("QQ", b"A"), ("QUI", b"AB"), ("QUJD", b"ABC"), ("-_8", b"\xfb\xff")],
)
def test_b64url_decode(segment: str, data: bytes) -> None:
    assert data == b64url_decode(segment, "x")


@pytest.mark.parametrize(
    "segment",
    [
        "QQ==",  # padding
        "QUI=",
        "+/8",  # standard alphabet
        "QR",  # stray bits: 'R' leaves non-zero bits after the last byte
        "QUJ",
        "Q",  # impossible length
        "QUJDR",
        "QU JD",  # whitespace
        "QUJD\n",
        "QUJD.",
        "é",
    ],
)
def test_b64url_decode_refuses(segment: str) -> None:
    with pytest.raises(errors.InvalidEncoding, match="what"):
        b64url_decode(segment, "what")


# -- JWS ---------------------------------------------------------------------------------------


def test_decode(signer: Signer) -> None:
    token = signer.passport(iat=1700000000, origid=ORIGID)
    jws = decode(token)
    assert HEADER | {"x5u": signer.x5u} == jws.header
    assert 1700000000 == jws.payload["iat"]
    assert token.rpartition(".")[0].encode() == jws.signing_input
    assert 64 == len(jws.signature)


def test_der_signature_refused(signer: Signer) -> None:
    token = signer.passport()
    h, p, _ = token.split(".")
    der = signer.key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(errors.InvalidEncoding, match="DER"):
        decode(f"{h}.{p}.{b64url(der)}")


@pytest.mark.parametrize("size", [0, 32, 63, 65, 96])
def test_signature_of_wrong_length_refused(signer: Signer, size: int) -> None:
    h, p, _ = signer.passport().split(".")
    with pytest.raises(errors.InvalidEncoding):
        decode(f"{h}.{p}.{b64url(bytes(size))}")


@pytest.mark.parametrize("part", [0, 1, 2])
def test_padded_segment_refused(raw_jws: RawJws, part: int) -> None:
    # "{}" is 2 bytes and the signature 64: their base64 needs padding; add it.
    parts = raw_jws(b"{}", b"{}").split(".")
    assert all(len(p) % 4 for p in parts)
    parts[part] += "=" * (-len(parts[part]) % 4)
    with pytest.raises(errors.InvalidEncoding):
        decode(".".join(parts))


def test_standard_base64_refused() -> None:
    # Vector 020: all segments in standard base64 with padding.
    header = base64.b64encode(json.dumps(HEADER).encode() + b"\xfb").decode()
    with pytest.raises(errors.InvalidEncoding):
        decode(f"{header}.{b64url(b'{}')}.{b64url(bytes(64))}")


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (b'{"alg":"ES256","alg":"none","typ":"passport"}', b'{"attest":"A"}'),
        (json.dumps(HEADER).encode(), b'{"attest":"A","iat":1,"attest":"C"}'),
        (json.dumps(HEADER).encode(), b'{"orig":{"tn":"1","tn":"2"}}'),
    ],
)
def test_duplicate_json_keys_refused(raw_jws: RawJws, header: bytes, payload: bytes) -> None:
    with pytest.raises(errors.DuplicateJsonKey) as info:
        decode(raw_jws(header, payload))
    assert isinstance(info.value, errors.MalformedPassport)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_refused(raw_jws: RawJws, constant: bytes) -> None:
    with pytest.raises(errors.MalformedPassport, match="not JSON"):
        decode(raw_jws(json.dumps(HEADER).encode(), b'{"iat":' + constant + b"}"))


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b'"text"',
        b"1700000000",
        b"null",
        b"true",
        b"",
        b"{",
        b"{}x",
        b"\xff\xfe",
        b"\xef\xbb\xbf{}",
    ],
    ids=["array", "string", "number", "null", "true", "empty", "open", "trailing", "utf16", "bom"],
)
def test_payload_not_a_json_object(raw_jws: RawJws, payload: bytes) -> None:
    with pytest.raises(errors.MalformedPassport) as info:
        decode(raw_jws(json.dumps(HEADER).encode(), payload))
    assert errors.MalformedPassport is type(info.value)


def test_header_not_a_json_object(raw_jws: RawJws) -> None:
    # Vector 015: unquoted values.
    with pytest.raises(errors.MalformedPassport, match="header"):
        decode(raw_jws(b'{"alg":ES256,"ppt":shaken}', b"{}"))


def test_deeply_nested_json_refused(raw_jws: RawJws) -> None:
    payload = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(errors.MalformedPassport):
        decode(raw_jws(json.dumps(HEADER).encode(), payload))


def test_huge_integer_refused(raw_jws: RawJws) -> None:
    payload = b'{"iat":' + b"9" * 5000 + b"}"
    with pytest.raises(errors.MalformedPassport):
        decode(raw_jws(json.dumps(HEADER).encode(), payload))


@pytest.mark.parametrize("token", ["a.b", "a.b.c.d", "abc", ""])
def test_wrong_number_of_parts(token: str) -> None:
    with pytest.raises(errors.MalformedIdentity):
        split_value(token)  # step 2, before any part is decoded


def test_compact_form() -> None:
    with pytest.raises(errors.CompactForm):
        split_value(".." + b64url(bytes(64)))


# -- header ------------------------------------------------------------------------------------


def test_check_algorithm_accepts_es256() -> None:
    check_algorithm(HEADER, "ES256")
    check_algorithm(HEADER, None)  # RFC 8224: alg defaults to ES256


@pytest.mark.parametrize("param", ["ES25", "es256", "RS256", "none", ""])
def test_check_algorithm_refuses_alg_parameter(param: str) -> None:
    with pytest.raises(errors.UnsupportedAlgorithm):
        check_algorithm(HEADER, param)


@pytest.mark.parametrize("alg", [None, "ES266", "none", "RS256", "HS256", 256, ["ES256"]])
def test_check_algorithm_refuses_header_alg(alg: Any) -> None:
    header = dict(HEADER, alg=alg) if alg is not None else {"typ": "passport"}
    with pytest.raises(errors.UnsupportedAlgorithm):
        check_algorithm(header, None)


@pytest.mark.parametrize("typ", [None, "JWT", "PASSPORT", ""])
def test_check_algorithm_refuses_typ(typ: str | None) -> None:
    header = dict(HEADER, typ=typ) if typ is not None else {"alg": "ES256"}
    with pytest.raises(errors.UnsupportedType):
        check_algorithm(header, None)


def test_check_ppt() -> None:
    check_ppt(HEADER, "shaken", "shaken")
    check_ppt(HEADER, None, "shaken")
    assert "shaken" == ppt_of(HEADER)
    assert ppt_of({"ppt": 1}) is None


@pytest.mark.parametrize(
    ("header", "param"),
    [
        (HEADER, "div"),
        (HEADER, "SHAKEN"),
        (dict(HEADER, ppt="div"), "shaken"),
        (dict(HEADER, ppt="div"), None),
        ({"alg": "ES256"}, None),
        (dict(HEADER, ppt=["shaken"]), None),
    ],
)
def test_check_ppt_refuses(header: dict[str, Any], param: str | None) -> None:
    with pytest.raises(errors.InvalidPpt):
        check_ppt(header, param, "shaken")


def test_check_x5u() -> None:
    assert HEADER["x5u"] == check_x5u(HEADER, f"<{HEADER['x5u']}>")
    assert HEADER["x5u"] == check_x5u(HEADER, None, require_info=False)


@pytest.mark.parametrize(
    ("header", "info", "error"),
    [
        (HEADER, None, errors.InfoMissing),
        (HEADER, HEADER["x5u"], errors.InfoInvalid),  # no angle brackets
        (HEADER, "<>", errors.InfoInvalid),
        (HEADER, "</usr/share/cert.pem>", errors.InfoInvalid),  # vector 006
        (HEADER, "<https://a.example/other.pem>", errors.X5uMismatch),
        ({"alg": "ES256"}, f"<{HEADER['x5u']}>", errors.X5uMissing),
        (dict(HEADER, x5u=""), f"<{HEADER['x5u']}>", errors.X5uMissing),
        (dict(HEADER, x5u=5), f"<{HEADER['x5u']}>", errors.X5uMissing),
    ],
)
def test_check_x5u_refuses(
    header: dict[str, Any], info: str | None, error: type[errors.VerificationError]
) -> None:
    with pytest.raises(error) as raised:
        check_x5u(header, info)
    assert error is type(raised.value)


def test_check_x5u_bare_passport_needs_an_absolute_x5u() -> None:
    with pytest.raises(errors.X5uRefused):
        check_x5u(dict(HEADER, x5u="/usr/share/cert.pem"), None, require_info=False)
    with pytest.raises(errors.X5uMissing):
        check_x5u({}, None, require_info=False)


# -- claims ------------------------------------------------------------------------------------


def test_check_shaken_claims() -> None:
    claims = check_shaken_claims(_payload())
    assert (
        ShakenClaims(
            attest="A",
            orig_tn="12155551212",
            dest_tns=("12155551213",),
            dest_uris=(),
            iat=1700000000,
            origid=ORIGID,
        )
        == claims
    )


@pytest.mark.parametrize("attest", ["B", "C"])
def test_attest_b_and_c(attest: str) -> None:
    assert attest == check_shaken_claims(_payload(attest=attest)).attest


def test_dest_uri_only_and_several_dest_tns() -> None:
    claims = check_shaken_claims(_payload(dest={"uri": ["sip:alice@example.com"]}))
    assert ("sip:alice@example.com",) == claims.dest_uris
    assert () == claims.dest_tns
    claims = check_shaken_claims(_payload(dest={"tn": ["12155551213", "+1 215 555 1214"]}))
    assert ("12155551213", "12155551214") == claims.dest_tns


def test_unknown_claims_allowed() -> None:
    claims = check_shaken_claims(_payload(rcd={"nam": "Alice"}, div={"tn": "1"}))
    assert "A" == claims.attest


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("attest", errors.InvalidAttest),
        ("orig", errors.InvalidClaims),
        ("dest", errors.InvalidClaims),
        ("iat", errors.InvalidClaims),
        ("origid", errors.InvalidClaims),
    ],
)
def test_each_missing_claim(name: str, error: type[errors.VerificationError]) -> None:
    with pytest.raises(error, match=f"{name} is missing") as info:
        check_shaken_claims(_payload(**{name: ...}))
    assert error is type(info.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"orig": '{"tn":"12155551212"}'},  # vector 003: a JSON string, not an object
        {"orig": ["12155551212"]},
        {"orig": {"uri": "sip:alice@example.com"}},
        {"dest": "dss"},  # vector 016
        {"dest": {}},
        {"dest": {"uri": "sip:alice@example.com"}},
        {"dest": {"uri": []}},
        {"dest": {"uri": [5]}},
        {"iat": "1700000000"},  # vector 002
        {"iat": 1700000000.0},
        {"iat": 1700000000.5},
        {"iat": True},
        {"iat": None},
        {"origid": 123},
        {"origid": None},
    ],
    ids=repr,
)
def test_wrong_types(changes: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidClaims) as info:
        check_shaken_claims(_payload(**changes))
    assert errors.InvalidClaims is type(info.value)


@pytest.mark.parametrize("attest", ["N", "a", "", "AB", 1, True, [], ["A"], {}, {"A": 1}])
def test_invalid_attest(attest: Any) -> None:
    # An unhashable attest (list, object) once escaped as TypeError: now a verdict like the rest.
    with pytest.raises(errors.InvalidAttest):
        check_shaken_claims(_payload(attest=attest))


@pytest.mark.parametrize(
    "changes",
    [
        {"orig": {"tn": ""}},  # vector 010
        {"orig": {"tn": "Bob"}},  # vector 005
        {"orig": {"tn": "1215555121a"}},
        {"orig": {"tn": "tel:+12155551212"}},
        {"orig": {"tn": "1234567890123456"}},  # 16 digits: not E.164
        {"orig": {"tn": 12155551212}},
        {"dest": {"tn": "12155551213"}},  # a string, not an array (vector 017)
        {"dest": {"tn": []}},
        {"dest": {"tn": [""]}},
        {"dest": {"tn": ["Alice"]}},
        {"dest": {"tn": [12155551213]}},
        {"dest": {"tn": ["12155551213", "x"]}},
    ],
    ids=repr,
)
def test_invalid_tn(changes: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidTn):
        check_shaken_claims(_payload(**changes))


def test_non_canonical_tn_accepted_with_warning() -> None:
    claims = check_shaken_claims(
        _payload(orig={"tn": "+1 215-555-1212"}, dest={"tn": ["+1 (215) 555.1213"]})
    )
    assert "12155551212" == claims.orig_tn
    assert ("12155551213",) == claims.dest_tns
    assert 2 == len(claims.warnings)
    assert "orig.tn '+1 215-555-1212' is not in canonical form" in claims.warnings[0]


def test_non_uuid_origid_accepted_with_warning() -> None:
    claims = check_shaken_claims(_payload(origid="123456"))
    assert "123456" == claims.origid
    assert 1 == len(claims.warnings)
    assert "not a UUID" in claims.warnings[0]
    assert () == check_shaken_claims(_payload(origid=ORIGID.upper())).warnings


# -- freshness ---------------------------------------------------------------------------------

NOW = 1_700_000_000


@pytest.mark.parametrize("iat", [NOW, NOW - 60, NOW + 10, NOW - 30, NOW + 1])
def test_fresh_iat(iat: int) -> None:
    check_freshness(iat, NOW, max_age=60, max_future_skew=10)


def test_freshness_boundaries_with_fractional_now() -> None:
    check_freshness(NOW, NOW + 60.0, max_age=60, max_future_skew=10)
    check_freshness(NOW, NOW - 10.0, max_age=60, max_future_skew=10)
    with pytest.raises(errors.IatTooOld):
        check_freshness(NOW, NOW + 60.001, max_age=60, max_future_skew=10)
    with pytest.raises(errors.IatInFuture):
        check_freshness(NOW, NOW - 10.001, max_age=60, max_future_skew=10)


@pytest.mark.parametrize("iat", [NOW - 61, NOW - 86400, 0, -(10**400)])
def test_iat_too_old(iat: int) -> None:
    # -10**400 is beyond float range: it once escaped as OverflowError.
    with pytest.raises(errors.IatTooOld):
        check_freshness(iat, NOW, max_age=60, max_future_skew=10)


@pytest.mark.parametrize("iat", [NOW + 11, NOW + 86400, 10**12, 10**400])
def test_iat_in_future(iat: int) -> None:
    with pytest.raises(errors.IatInFuture):
        check_freshness(iat, NOW, max_age=60, max_future_skew=10)


def test_zero_future_skew() -> None:
    check_freshness(NOW, NOW, max_age=60, max_future_skew=0)
    with pytest.raises(errors.IatInFuture):
        check_freshness(NOW + 1, NOW, max_age=60, max_future_skew=0)


# -- ES256 -------------------------------------------------------------------------------------


def test_verify_es256(signer: Signer) -> None:
    jws = decode(signer.passport())
    verify_es256(signer.key.public_key(), jws.signing_input, jws.signature)


def test_verify_es256_tampered(signer: Signer) -> None:
    jws = decode(signer.passport())
    with pytest.raises(errors.InvalidSignature):
        verify_es256(signer.key.public_key(), jws.signing_input + b"x", jws.signature)
    flipped = bytes([jws.signature[0] ^ 1]) + jws.signature[1:]
    with pytest.raises(errors.InvalidSignature):
        verify_es256(signer.key.public_key(), jws.signing_input, flipped)


@pytest.mark.parametrize("signature", [bytes(64), b"\xff" * 64, bytes(31) + b"\x01" + bytes(32)])
def test_verify_es256_degenerate_signatures(signer: Signer, signature: bytes) -> None:
    with pytest.raises(errors.InvalidSignature):
        verify_es256(signer.key.public_key(), b"a.b", signature)


def test_verify_es256_other_key(signer: Signer) -> None:
    jws = decode(signer.passport())
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(errors.InvalidSignature):
        verify_es256(other, jws.signing_input, jws.signature)


# -- lone surrogates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        b'{"x":"\\ud800"}',
        b'{"x":"a\\udfffb"}',
        b'{"\\udc80":1}',
        b'{"x":["\\ud83d"]}',  # half of a pair
        b'{"x":"\\ude00\\ud83d"}',  # a pair in the wrong order
        b'{"x": {"y": "\\uDC00"}}',  # the strict decoder's path (whitespace), upper case
    ],
)
def test_lone_surrogates_are_refused(text: bytes) -> None:
    with pytest.raises(errors.MalformedPassport, match="lone UTF-16 surrogate"):
        decode_payload(b64url(text))


def test_escaped_pairs_and_other_escapes_are_text() -> None:
    assert {"x": "\U0001f600 \u00e9\n"} == decode_payload(
        b64url(b'{"x":"\\ud83d\\ude00 \\u00e9\\n"}')
    )


def test_a_signed_passport_with_a_lone_surrogate_is_438(signer: Signer) -> None:
    value = signer.identity(iat=NOW, claims={"x": "\udc80"})
    result = Verification(value, now=NOW).result()
    assert result.reason is not None
    assert (438, "passport_malformed") == (result.reason.sip_code, result.reason.slug)
