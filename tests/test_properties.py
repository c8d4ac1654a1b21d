"""Properties (hypothesis): on arbitrary input the parsers raise nothing but VerificationError
subclasses, and the whole pipeline raises nothing at all: it returns a Result."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier.core.certs import TNAuthList, credential_from_public_key, parse_tnauthlist
from verifier.core.errors import NO_TN_VALIDATION, TN_VALIDATION_FAILED, VerificationError
from verifier.core.identity import parse_params, split_identity_values, split_value
from verifier.core.passport import (
    b64url_decode,
    check_freshness,
    check_shaken_claims,
    decode_header,
    decode_payload,
    decode_signature,
)
from verifier.core.tn import canonical_tn, is_canonical, tn_from_uri
from verifier.core.verify import (
    CallInfo,
    DecodeCache,
    Result,
    Verification,
    VerifyOptions,
    verify_offline,
)
from verifier.testing import Signer, b64url, encode_tnauthlist, identity_header, sign_jws

NOW = 1_700_000_000
SOME = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEWER = settings(SOME, max_examples=150)

# Text biased towards what the grammars care about.
GRAMMAR = st.lists(
    st.sampled_from(
        [
            *"eyJhbGciOi0123456789+/=_-.;,<>\"'\\ \t\r\nABCxyz:@%*#()",
            *["info", "ppt", "alg", "shaken", "https://a.example/x", "tel:", "sip:", "\x00", "é"],
        ]
    ),
    max_size=40,
).map("".join)
TEXT = st.text(max_size=200) | GRAMMAR
B64URL_TEXT = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. "
)

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["A", "B", "C", "N", "12155551212", "+1 215-555-1212", "", "shaken"])
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
X5U = "https://127.0.0.1:8443/sp.pem"
HEADER_SET = [
    {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U},
    {"alg": "ES256", "ppt": "div", "typ": "passport", "x5u": X5U},
    {"alg": "ES384", "ppt": "shaken", "typ": "passport", "x5u": X5U},
    {"alg": "ES256", "typ": "passport", "x5u": X5U},
    {"alg": "ES256", "ppt": "shaken", "typ": "passport"},
    {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": "https://other.example/x.pem"},
]
CLAIM_NAMES = st.sampled_from(["attest", "orig", "dest", "iat", "origid", "tn", "uri", "x"])


@st.composite
def claims_like(draw: st.DrawFn) -> dict[str, Any]:
    """Payloads close to SHAKEN ones: each claim valid, absent, or any JSON."""
    valid: dict[str, Any] = {
        "attest": "A",
        "dest": {"tn": ["12155551213"]},
        "iat": NOW,
        "orig": {"tn": "12155551212"},
        "origid": "123e4567-e89b-12d3-a456-426655440000",
    }
    out: dict[str, Any] = {}
    for name, value in valid.items():
        choice = draw(st.sampled_from(["valid", "absent", "any", "nested"]))
        if choice == "valid":
            out[name] = value
        elif choice == "any":
            out[name] = draw(JSON)
        elif choice == "nested":
            out[name] = draw(st.dictionaries(CLAIM_NAMES, JSON | st.lists(JSON), max_size=3))
    out.update(draw(st.dictionaries(st.text(max_size=6), JSON, max_size=2)))
    return out


@st.composite
def headers_like(draw: st.DrawFn, x5u: str) -> dict[str, Any]:
    valid: dict[str, Any] = {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": x5u}
    out: dict[str, Any] = {}
    for name, value in valid.items():
        choice = draw(st.sampled_from(["valid"] * 6 + ["absent", "any"]))
        if choice == "valid":
            out[name] = value
        elif choice == "any":
            out[name] = draw(JSON)
    return out


PARAMS = st.sampled_from(
    [
        None,
        "",
        ";info=<{x5u}>",
        ';info=<{x5u}>;alg=ES256;ppt="shaken"',
        ";info=<{x5u}>;ppt=div",
        ";info=<https://other.example/x.pem>;ppt=shaken",
        ";info={x5u}",
        ";ppt=shaken;ppt=shaken",
    ]
)
CALLS = st.builds(
    CallInfo,
    from_=st.none() | st.sampled_from(["12155551212", "sip:anonymous@anonymous.invalid"]) | TEXT,
    pai=st.none() | TEXT,
    to=st.none() | st.sampled_from(["12155551213", "<tel:+12155551213>"]) | TEXT,
    ruri=st.none() | TEXT,
)


def _only_verification_errors(fn: Callable[[], object]) -> None:
    with contextlib.suppress(VerificationError):
        fn()


def _is_verdict(result: Result) -> None:
    assert isinstance(result, Result)
    json.dumps(result.to_dict())
    if result.passed:
        assert result.reason is None
    else:
        assert result.reason is not None
        assert result.verstat in (NO_TN_VALIDATION, TN_VALIDATION_FAILED)


# -- parsers -----------------------------------------------------------------------------------


@SOME
@given(TEXT)
def test_split_value_and_parse_params(value: str) -> None:
    _only_verification_errors(lambda: parse_params(split_value(value)[1]))


def _decode(token: str) -> None:
    """Steps 2-3 on a bare PASSporT, as the pipeline runs them."""
    h64, p64, s64 = split_value(token)[0].split(".")
    decode_header(h64)
    decode_payload(p64)
    decode_signature(s64)


@SOME
@given(TEXT | st.lists(TEXT, max_size=4))
def test_split_identity_values(values: str | list[str]) -> None:
    try:
        out = split_identity_values(values)
    except VerificationError:
        return
    assert all(v and v == v.strip() for v in out)


@SOME
@given(TEXT | B64URL_TEXT)
def test_decode(token: str) -> None:
    _only_verification_errors(lambda: _decode(token))


@SOME
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_decode_of_encoded_bytes(parts: list[bytes]) -> None:
    _only_verification_errors(lambda: _decode(".".join(b64url(p) for p in parts)))


@SOME
@given(TEXT | B64URL_TEXT)
def test_b64url_decode(segment: str) -> None:
    _only_verification_errors(lambda: b64url_decode(segment, "x"))


@SOME
@given(st.binary(max_size=64))
def test_b64url_round_trip(data: bytes) -> None:
    assert data == b64url_decode(b64url(data), "x")


@SOME
@given(claims_like() | st.dictionaries(st.text(max_size=8), JSON, max_size=6))
def test_check_shaken_claims(payload: dict[str, Any]) -> None:
    _only_verification_errors(lambda: check_shaken_claims(payload))


@SOME
@given(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(min_value=-1e300, max_value=1e300) | st.integers(min_value=0, max_value=2**40),
)
def test_check_freshness(iat: int, now: float) -> None:
    _only_verification_errors(lambda: check_freshness(iat, now, max_age=60, max_future_skew=10))


@SOME
@given(TEXT)
def test_tn_from_uri_and_canonical_tn(value: str) -> None:
    for tn in (tn_from_uri(value), canonical_tn(value)):
        assert tn is None or is_canonical(tn)
    tn = canonical_tn(value)
    if tn is not None:
        assert tn == canonical_tn(tn)


@SOME
@given(st.binary(max_size=64))
def test_parse_tnauthlist(der: bytes) -> None:
    _only_verification_errors(lambda: parse_tnauthlist(der))


IA5 = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
)


@SOME
@given(
    st.lists(IA5, max_size=3),
    st.lists(st.tuples(IA5, st.integers(min_value=2, max_value=2**40)), max_size=3),
    st.lists(IA5, max_size=3),
)
def test_tnauthlist_round_trip(
    spcs: list[str], ranges: list[tuple[str, int]], tns: list[str]
) -> None:
    der = encode_tnauthlist(spcs, ranges, tns)
    if not (spcs or ranges or tns):
        _only_verification_errors(lambda: parse_tnauthlist(der))
        return
    assert TNAuthList(tuple(spcs), tuple(ranges), tuple(tns)) == parse_tnauthlist(der)


# -- the pipeline ------------------------------------------------------------------------------


@SOME
@given(TEXT | st.lists(TEXT, max_size=3) | st.none(), CALLS, st.booleans())
def test_verification_of_arbitrary_text(values: Any, call: CallInfo, bare: bool) -> None:
    verification = Verification(values, now=NOW, call=call, bare=bare)
    assert verification.pending() == []  # nothing arbitrary gets as far as a credential
    _is_verdict(verification.result())


@FEWER
@given(st.data(), PARAMS, CALLS, st.booleans())
def test_verification_of_signed_payloads(
    signer: Signer, data: st.DataObject, params: str | None, call: CallInfo, bare: bool
) -> None:
    header = data.draw(headers_like(signer.x5u))
    payload = data.draw(claims_like())
    token = sign_jws(signer.key, header, payload)
    if bare:
        value = token
    elif params is None:
        value = identity_header(token, signer.x5u)
    else:
        value = token + params.format(x5u=signer.x5u)
    result = verify_offline(
        [value], now=NOW, call=call, public_key=signer.key.public_key(), bare=bare
    )
    _is_verdict(result)
    verification = Verification([value, value], now=NOW, call=call, bare=bare)
    for entry in verification.pending():
        verification.fail(entry, VerificationError("no credential in this test"))
    _is_verdict(verification.result())


@FEWER
@given(
    st.dictionaries(st.text(max_size=6), JSON, max_size=6),
    st.dictionaries(st.text(max_size=6), JSON, max_size=6),
)
def test_verification_of_arbitrary_json(
    signer: Signer, header: dict[str, Any], payload: dict[str, Any]
) -> None:
    token = sign_jws(signer.key, header, payload)
    value = identity_header(token, signer.x5u)
    options = VerifyOptions(max_iat_age=10**9)
    _is_verdict(
        verify_offline(value, now=NOW, options=options, public_key=signer.cert.public_key())
    )


@pytest.fixture(scope="module")
def shared_cache() -> DecodeCache:
    return DecodeCache(max_size=64)


@FEWER
@given(st.data(), PARAMS, st.booleans())
def test_decode_cache_changes_no_verdict(
    signer: Signer, shared_cache: DecodeCache, data: st.DataObject, params: str | None, bare: bool
) -> None:
    # A small header set, so that the cache shared across examples gets hits.
    header = data.draw(st.sampled_from(HEADER_SET))
    payload = data.draw(claims_like())
    token = sign_jws(signer.key, header, payload)
    value = token if bare or params is None else token + params.format(x5u=signer.x5u)
    verdicts = []
    for cache in (None, shared_cache):
        verification = Verification(value, now=NOW, bare=bare, cache=cache)
        for entry in verification.pending():
            verification.settle(entry, credential_from_public_key(signer.key.public_key()))
        verdicts.append(verification.result().to_dict())
    assert verdicts[0] == verdicts[1]


# -- JSON: the hook-free fast path agrees with the strict decoder --------------------------------

_KEYS = st.sampled_from(["a", "b", "tn", "\\u0061", "a:b", "attest", "orig"])
_LEAVES = st.one_of(
    st.integers(-5, 5), st.sampled_from(['"x"', '"x:y"', "true", "null", "NaN", "1e999"])
)


def _object_text(depth: int) -> st.SearchStrategy[str]:
    value = _LEAVES.map(str) if depth == 0 else st.one_of(_LEAVES.map(str), _object_text(depth - 1))
    pairs = st.lists(st.tuples(_KEYS, value), max_size=5)
    return st.tuples(pairs, st.sampled_from(["", " ", "\n"])).map(
        lambda t: t[1] + "{" + ",".join(f'"{k}":{v}' for k, v in t[0]) + "}" + t[1]
    )


@SOME
@given(text=st.one_of(_object_text(2), _object_text(1).map(lambda t: f"[{t}]")))
def test_json_fast_path_agrees_with_the_strict_decoder(text: str) -> None:
    """Duplicate keys (also spelt with escapes, or hidden in a nested object that a duplicate
    replaced), ':' inside strings, NaN, whitespace: same value or same error class."""
    from verifier.core.errors import DuplicateJsonKey, MalformedPassport
    from verifier.core.passport import _DECODER, _json_object

    expected: Any
    try:
        decoded = _DECODER.decode(text)
        expected = decoded if isinstance(decoded, dict) else MalformedPassport
    except DuplicateJsonKey:
        expected = DuplicateJsonKey
    except ValueError:
        expected = MalformedPassport
    got: Any
    try:
        got = _json_object(text.encode(), "payload")
    except VerificationError as exc:
        got = type(exc)
    assert got == expected


def _typed(value: Any) -> Any:
    """A JSON value with every number tagged by its type (1 and 1.0 compare equal)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


# Integers at orjson's edges: beyond 64 bits it reads a float.
EDGE_INTS = st.integers(min_value=2**63 - 2, max_value=2**64 + 2).flatmap(
    lambda n: st.sampled_from([n, -n, n * 10**12])
)


@SOME
@given(
    JSON
    | st.lists(EDGE_INTS | JSON_SCALARS, min_size=1, max_size=3)
    | st.dictionaries(st.text(max_size=4), EDGE_INTS, min_size=1, max_size=3)
    | st.binary(max_size=60)
    | st.lists(st.sampled_from(['{"a":', "1e400", "NaN", '"\\ud800"', "\ufeff", " ", "[", "]"]))
    .map("".join)
    .map(str.encode)
)
def test_request_bodies_read_as_the_standard_parser_reads_them(doc: Any) -> None:
    """The API reads bodies with orjson where it can, but the value (or the refusal) must be
    the standard parser's: integers past 64 bits stay exact, NaN, a byte order mark and
    lone surrogates are read as json.loads reads them."""
    from verifier.http.errors import ApiError
    from verifier.http.inputs import parse_json as _parse_json

    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    try:
        expected = _typed(json.loads(body))
    except (ValueError, RecursionError):
        with pytest.raises(ApiError):
            _parse_json(body)
        return
    assert _typed(_parse_json(body)) == expected
