"""verifier.core.verify: the ordered pipeline, end to end, with real keys and certificates."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509

from verifier.core import errors
from verifier.core.certs import Credential, TrustStore, credential_from_public_key
from verifier.core.errors import (
    NO_TN_VALIDATION,
    TN_VALIDATION_FAILED,
    TN_VALIDATION_PASSED,
    VerificationError,
    all_error_classes,
)
from verifier.core.es256 import ES256Key, check_each
from verifier.core.passport import b64url_decode
from verifier.core.verify import (
    CallInfo,
    DecodeCache,
    Reason,
    Result,
    Verification,
    VerifyOptions,
    verify,
    verify_many,
    verify_offline,
)
from verifier.core.x5u import X5uUrl, check_x5u_url
from verifier.testing import ChainSource, Signer, TestPKI, b64url, identity_header

Check = Callable[..., Result]
RawJws = Callable[[bytes, bytes], str]
DAY = dt.timedelta(days=1)
ORIG, DEST = "12155551212", "12155551213"


def _reason(result: Result) -> Reason:
    assert result.reason is not None, result
    return result.reason


def _fails(result: Result, error: type[VerificationError]) -> None:
    reason = _reason(result)
    assert error.slug == reason.slug, reason
    assert error.sip_code == reason.sip_code
    assert error.verstat == result.verstat
    assert not result.passed


# -- passing -----------------------------------------------------------------------------------


def test_passes(check: Check, signer: Signer, now: int, pki: TestPKI) -> None:
    value = signer.identity(iat=now, orig=ORIG, dest=DEST)
    result = check(value, call=CallInfo(from_=ORIG, to=DEST))
    assert TN_VALIDATION_PASSED == result.verstat
    assert result.passed
    assert result.reason is None
    assert "A" == result.attest
    assert signer.x5u == result.x5u
    assert result.certificate is not None
    assert ("1234",) == result.certificate.spc
    assert result.claims is not None
    assert result.origid == result.claims["origid"]
    assert {"orig": "from", "dest": "to"} == result.matched
    assert [] == result.warnings
    assert 1 == len(result.identities)
    header = result.identities[0]
    assert ("passed", "shaken", signer.x5u) == (header.status, header.ppt, header.x5u)
    assert value.split(";")[0].rpartition(".")[2] == header.ppi
    data = json.loads(json.dumps(result.to_dict()))
    assert TN_VALIDATION_PASSED == data["verstat"]
    assert data["reason"] is None


@pytest.mark.parametrize(
    "params",
    [
        ';info=<{x5u}>;ppt="shaken"',  # alg omitted: RFC 8224 defaults it to ES256
        ";info=<{x5u}>;alg=ES256;ppt=shaken",  # ppt unquoted
        ";info=<{x5u}>;ppt=shaken;x-carrier=abc",  # extra parameter
        ' ; INFO = <{x5u}> ; PPT = "shaken"',
        ";info=<{x5u}>",  # no ppt parameter: the PASSporT's own ppt decides
    ],
)
def test_real_traffic_quirks_pass(check: Check, signer: Signer, now: int, params: str) -> None:
    result = check(signer.identity(iat=now, params=params.format(x5u=signer.x5u)))
    assert TN_VALIDATION_PASSED == result.verstat, result.reason


def test_attestation_and_unknown_claims_are_reported(
    check: Check, signer: Signer, now: int
) -> None:
    extra = {"rcd": {"nam": "Alice"}, "x-custom": [1, 2]}
    result = check(signer.identity(iat=now, attest="C", claims=extra))
    assert result.passed
    assert "C" == result.attest
    assert result.claims is not None
    assert {"nam": "Alice"} == result.claims["rcd"]
    assert [1, 2] == result.claims["x-custom"]


def test_warnings_for_non_canonical_tn_and_origid(check: Check, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now, orig="+1 215-555-1212", origid="call-42")
    result = check(value, call=CallInfo(from_=ORIG))
    assert result.passed
    assert 2 == len(result.warnings)
    assert "not in canonical form" in result.warnings[0]
    assert "not a UUID" in result.warnings[1]
    assert "call-42" == result.origid


def test_bare_passport(check: Check, signer: Signer, now: int) -> None:
    token = signer.passport(iat=now)
    result = check(token, bare=True)
    assert result.passed
    assert result.identities[0].ppi is None
    _fails(check(token + ";ppt=shaken", bare=True), errors.MalformedIdentity)
    _fails(check(token), errors.InfoMissing)  # as a header it lacks info


def test_bare_public_key(signer: Signer, now: int) -> None:
    result = verify_offline(signer.identity(iat=now), now=now, public_key=signer.cert.public_key())
    assert result.passed
    assert result.certificate is None
    assert any("bare public key" in w for w in result.warnings)


def test_x5u_on_port_8443_passes(check: Check, signer: Signer, now: int) -> None:
    assert signer.x5u.startswith("https://127.0.0.1:8443/")
    assert check(signer.identity(iat=now)).passed


# -- no identity -------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, [], "", "   ", ["", " "], " , "])
def test_no_identity(check: Check, values: Any) -> None:
    result = check(values)
    _fails(result, errors.NoIdentity)
    assert 428 == _reason(result).sip_code
    assert NO_TN_VALIDATION == result.verstat
    assert [] == result.identities


# -- several Identity headers ------------------------------------------------------------------


def _div(signer: Signer, now: int) -> str:
    token = signer.passport(iat=now, header={"ppt": "div"}, claims={"div": {"tn": "12155550000"}})
    return identity_header(token, signer.x5u, ppt="div")


@pytest.mark.parametrize("order", ["shaken-first", "div-first"])
def test_shaken_and_div_headers(check: Check, signer: Signer, now: int, order: str) -> None:
    shaken, div = signer.identity(iat=now), _div(signer, now)
    values = [shaken, div] if order == "shaken-first" else [div, shaken]
    result = check(values)
    assert result.passed, result.reason
    statuses = {h.ppt: h.status for h in result.identities}
    # the div PASSporT is verified on its own (signature, certificate) ...
    assert {"shaken": "passed", "div": "passed"} == statuses
    assert [0, 1] == [h.index for h in result.identities]
    # ... but it diverts from a number that is not the SHAKEN dest: the chain is broken,
    # which the diversion part says without changing the calling number's verdict
    assert result.diversion is not None
    assert "No-TN-Validation" == result.diversion["verstat"]
    assert "div_broken" == result.diversion["reason"]["slug"]


def test_several_values_on_one_line(check: Check, signer: Signer, now: int) -> None:
    result = check(f"{signer.identity(iat=now)}, {_div(signer, now)}")
    assert result.passed
    assert 2 == len(result.identities)


def test_overall_result_is_the_shaken_ones(check: Check, signer: Signer, now: int) -> None:
    result = check([_div(signer, now), signer.identity(iat=now, attest="N")])
    _fails(result, errors.InvalidAttest)
    assert ["passed", "failed"] == [h.status for h in result.identities]


def test_only_non_shaken_headers(check: Check, signer: Signer, now: int) -> None:
    result = check([_div(signer, now), _div(signer, now)])
    _fails(result, errors.NoShakenPassport)
    assert 438 == _reason(result).sip_code
    assert result.diversion is not None
    assert "div_without_shaken" == result.diversion["reason"]["slug"]


def test_ppt_parameter_not_shaken(check: Check, signer: Signer, now: int) -> None:
    # vector 013: ppt=shake on a SHAKEN PASSporT is not a SHAKEN header
    value = identity_header(signer.passport(iat=now), signer.x5u, ppt="shake")
    _fails(check(value), errors.NoShakenPassport)


def test_ppt_parameter_and_header_disagree(check: Check, signer: Signer, now: int) -> None:
    token = signer.passport(iat=now, header={"ppt": "div"})
    _fails(check(identity_header(token, signer.x5u, ppt="shaken")), errors.InvalidPpt)


def test_no_ppt_anywhere(check: Check, signer: Signer, now: int) -> None:
    token = signer.passport(iat=now, drop=["ppt"])
    _fails(
        check(identity_header(token, signer.x5u).replace(';ppt="shaken"', "")), errors.InvalidPpt
    )


def test_two_shaken_headers_one_passes(check: Check, signer: Signer, now: int) -> None:
    bad, good = signer.identity(iat=now - 3600), signer.identity(iat=now, attest="B")
    result = check([bad, good])
    assert result.passed
    assert "B" == result.attest
    assert ["failed", "passed"] == [h.status for h in result.identities]
    assert "2 SHAKEN PASSporTs; the verdict is header 1's" in result.warnings


def test_two_shaken_headers_both_fail(check: Check, signer: Signer, now: int) -> None:
    result = check([signer.identity(iat=now - 3600), signer.identity(iat=now, attest="N")])
    _fails(result, errors.IatTooOld)  # the first one's reason


def test_too_many_headers(check: Check, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now)
    result = check([value] * 3, options=VerifyOptions(max_identity_headers=2))
    _fails(result, errors.MalformedIdentity)
    assert check([value] * 2, options=VerifyOptions(max_identity_headers=2)).passed


# -- freshness ---------------------------------------------------------------------------------


def test_freshness(check: Check, signer: Signer, now: int) -> None:
    _fails(check(signer.identity(iat=now - 61)), errors.IatTooOld)
    _fails(check(signer.identity(iat=now + 11)), errors.IatInFuture)
    assert 403 == _reason(check(signer.identity(iat=now - 61))).sip_code
    assert check(signer.identity(iat=now - 60)).passed  # exactly max_iat_age
    assert check(signer.identity(iat=now + 10)).passed  # exactly max_future_skew


def test_freshness_options(check: Check, signer: Signer, now: int) -> None:
    options = VerifyOptions(max_iat_age=3600, max_future_skew=0)
    assert check(signer.identity(iat=now - 3600), options=options).passed
    _fails(check(signer.identity(iat=now + 1), options=options), errors.IatInFuture)


def test_recorded_call_verified_at_its_time(check: Check, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now - 7200)
    assert check(value, at=now - 7195).passed
    _fails(check(value), errors.IatTooOld)


@pytest.mark.parametrize(
    "bad", [{"max_iat_age": 0}, {"max_future_skew": -1}, {"max_identity_headers": 0}]
)
def test_verify_options_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        VerifyOptions(**bad)


# -- TN matching -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "matched"),
    [
        (CallInfo(), {"orig": None, "dest": None}),
        (CallInfo(from_=ORIG), {"orig": "from", "dest": None}),
        (CallInfo(pai=ORIG), {"orig": "pai", "dest": None}),
        (CallInfo(pai=ORIG, from_=ORIG), {"orig": "pai", "dest": None}),  # PAI preferred
        (CallInfo(pai="12155550000", from_=ORIG), {"orig": "from", "dest": None}),
        (
            CallInfo(pai=ORIG, from_="sip:anonymous@anonymous.invalid"),
            {"orig": "pai", "dest": None},
        ),
        (CallInfo(to=DEST), {"orig": None, "dest": "to"}),
        (CallInfo(ruri=DEST), {"orig": None, "dest": "ruri"}),
        (CallInfo(to=DEST, ruri=DEST), {"orig": None, "dest": "to"}),  # To preferred
        (CallInfo(to="12155550000", ruri=DEST), {"orig": None, "dest": "ruri"}),
        (
            CallInfo(
                from_=f'"Alice" <sip:+{ORIG}@example.com;user=phone>;tag=a1',
                to=f"<tel:+{DEST}>",
                ruri=f"sip:{DEST}@10.0.0.1:5060",
            ),
            {"orig": "from", "dest": "to"},
        ),
        (
            CallInfo(from_=f"sip:+{ORIG}@example.com", to=f"sips:+{DEST}@example.com"),
            {"orig": "from", "dest": "to"},
        ),
        (
            CallInfo(from_="tel:+1-215-555-1212", to="+1 (215) 555-1213"),
            {"orig": "from", "dest": "to"},
        ),
        (
            CallInfo(from_="2155551212", to="sip:2155551213@pbx"),
            {"orig": "from", "dest": "to"},
        ),  # NANP
    ],
)
def test_tn_match(
    check: Check, signer: Signer, now: int, call: CallInfo, matched: dict[str, str | None]
) -> None:
    result = check(signer.identity(iat=now, orig=ORIG, dest=DEST), call=call)
    assert result.passed, result.reason
    assert matched == result.matched


def test_national_claim_matches_international_call(check: Check, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now, orig="2155551212", dest="2155551213")
    result = check(value, call=CallInfo(from_=f"+{ORIG}", to=f"tel:+{DEST}"))
    assert {"orig": "from", "dest": "to"} == result.matched


def test_nanp_match_can_be_turned_off(check: Check, signer: Signer, now: int) -> None:
    options = VerifyOptions(nanp_national_match=False)
    value = signer.identity(iat=now, orig=ORIG, dest=DEST)
    _fails(check(value, call=CallInfo(from_="2155551212"), options=options), errors.OrigMismatch)
    _fails(check(value, call=CallInfo(to="2155551213"), options=options), errors.DestMismatch)


@pytest.mark.parametrize("nanp", [True, False])
def test_national_claim_does_not_match_another_country(
    check: Check, signer: Signer, now: int, nanp: bool
) -> None:
    # A claimed 2155551212 is not +44 2155551212, nor +1 2155551212 without the national match.
    options = VerifyOptions(nanp_national_match=nanp)
    value = signer.identity(iat=now, orig="2155551212", dest="2155551213")
    for call, error in [
        (CallInfo(from_="+442155551212"), errors.OrigMismatch),
        (CallInfo(to="tel:+442155551213"), errors.DestMismatch),
        (CallInfo(from_="+912155551212"), errors.OrigMismatch),
    ]:
        _fails(check(value, call=call, options=options), error)


@pytest.mark.parametrize(
    "call",
    [
        CallInfo(from_="12155550000"),
        CallInfo(pai="12155550000", from_="12155550001"),
        CallInfo(from_="sip:anonymous@anonymous.invalid"),
        CallInfo(from_='"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1'),
        CallInfo(from_="sip:alice@example.com"),
        CallInfo(from_="5551212"),
        CallInfo(from_="32155551212"),  # 11 digits but not NANP 1 + the claim
    ],
)
def test_orig_mismatch(check: Check, signer: Signer, now: int, call: CallInfo) -> None:
    result = check(signer.identity(iat=now, orig=ORIG, dest=DEST), call=call)
    _fails(result, errors.OrigMismatch)
    assert NO_TN_VALIDATION == result.verstat
    assert 438 == _reason(result).sip_code


@pytest.mark.parametrize(
    "call",
    [
        CallInfo(to="12155550000"),
        CallInfo(to="12155550000", ruri="sip:12155550001@pbx"),
        CallInfo(to="sip:bob@example.com"),
        CallInfo(from_=ORIG, to="1003"),
    ],
)
def test_dest_mismatch(check: Check, signer: Signer, now: int, call: CallInfo) -> None:
    _fails(check(signer.identity(iat=now, orig=ORIG, dest=DEST), call=call), errors.DestMismatch)


def test_several_dest_tns(check: Check, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now, dest=["12155550000", DEST])
    assert "to" == check(value, call=CallInfo(to=DEST)).matched["dest"]


def test_dest_uri(check: Check, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now, claims={"dest": {"uri": ["sip:Alice@Example.com"]}})
    result = check(value, call=CallInfo(to='"Alice" <sip:alice@example.com>;tag=9'))
    assert {"orig": None, "dest": "to"} == result.matched
    _fails(check(value, call=CallInfo(to="sip:bob@example.com")), errors.DestMismatch)
    tel = signer.identity(iat=now, claims={"dest": {"uri": [f"tel:+{DEST}"]}})
    assert "ruri" == check(tel, call=CallInfo(ruri=f"sip:+{DEST}@gw")).matched["dest"]


def test_mismatch_comes_after_claims_and_freshness(check: Check, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now - 600, orig=ORIG)
    _fails(check(value, call=CallInfo(from_="12155550000")), errors.IatTooOld)


# -- the order of checks -----------------------------------------------------------------------


def _tamper(value: str) -> str:
    """The same Identity header with orig.tn changed after signing (vector 007's attack)."""
    token, _, params = value.partition(";")
    h, p, s = token.split(".")
    payload = json.loads(b64url_decode(p, "payload"))
    payload["orig"] = {"tn": "12155550666"}
    p = b64url(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{h}.{p}.{s};{params}"


def test_out_of_band_key_checks_signature_right_after_alg(
    signer: Signer, trust: TrustStore, now: int
) -> None:
    # A tampered PASSporT whose info also disagrees with x5u: with the key at hand the
    # first thing said is that the signature does not verify (verify.py docstring).
    value = _tamper(signer.identity(iat=now, params=";info=<https://other.example/x.pem>"))
    offline = verify_offline(value, now=now, chain=signer.chain, trust=trust)
    _fails(offline, errors.InvalidSignature)
    assert TN_VALIDATION_FAILED == offline.verstat
    # Without an out-of-band credential the order is the network one: 436 first.
    online = Verification(value, now=now)
    assert [] == online.pending()
    _fails(online.result(), errors.X5uMismatch)


def test_alg_is_checked_before_the_signature(signer: Signer, trust: TrustStore, now: int) -> None:
    value = _tamper(signer.identity(iat=now, params=f";info=<{signer.x5u}>;alg=ES384"))
    _fails(
        verify_offline(value, now=now, chain=signer.chain, trust=trust), errors.UnsupportedAlgorithm
    )


def test_certificate_problems_after_claims(pki: TestPKI, trust: TrustStore, now: int) -> None:
    untrusted = pki.untrusted_root().issue_leaf()
    bad_claims = untrusted.identity(iat=now, attest="N")
    _fails(
        verify_offline(bad_claims, now=now, chain=untrusted.chain, trust=trust),
        errors.InvalidAttest,
    )
    good = untrusted.identity(iat=now)
    _fails(
        verify_offline(good, now=now, chain=untrusted.chain, trust=trust),
        errors.CertificateNotTrusted,
    )


def test_tampered_is_tn_validation_failed(check: Check, signer: Signer, now: int) -> None:
    result = check(_tamper(signer.identity(iat=now)))
    _fails(result, errors.InvalidSignature)
    assert TN_VALIDATION_FAILED == result.verstat
    assert 438 == _reason(result).sip_code


def test_signed_by_another_key(check: Check, pki: TestPKI, signer: Signer, now: int) -> None:
    other = pki.ca.issue_leaf("1234")
    _fails(check(other.identity(iat=now)), errors.InvalidSignature)


# -- stepwise and online -----------------------------------------------------------------------


def test_verification_steps(signer: Signer, trust: TrustStore, now: int) -> None:
    verification = Verification([signer.identity(iat=now), signer.identity(iat=now - 999)], now=now)
    pending = verification.pending()
    assert 1 == len(pending)
    assert signer.x5u == Verification.x5u_of(pending[0])
    with pytest.raises(RuntimeError):
        verification.result()
    verification.settle(pending[0], trust.validate(signer.chain, now))
    assert [] == verification.pending()
    result = verification.result()
    assert result.passed
    assert ["passed", "failed"] == [h.status for h in result.identities]


def test_verification_fail(signer: Signer, now: int) -> None:
    verification = Verification(signer.identity(iat=now), now=now)
    (entry,) = verification.pending()
    verification.fail(entry, errors.X5uFetchFailed("HTTP 404"))
    result = verification.result()
    _fails(result, errors.X5uFetchFailed)
    assert "HTTP 404" == _reason(result).detail


def test_settle_checks_credential_time_and_signature(
    signer: Signer, pki: TestPKI, now: int
) -> None:
    expired = Credential(public_key=signer.key.public_key(), certificate=None, not_after=now - 1)
    verification = Verification(signer.identity(iat=now), now=now)
    (entry,) = verification.pending()
    verification.settle(entry, expired)
    _fails(verification.result(), errors.CertificateExpired)

    verification = Verification(signer.identity(iat=now), now=now)
    (entry,) = verification.pending()
    verification.settle(entry, credential_from_public_key(pki.ca.issue_leaf().key.public_key()))
    _fails(verification.result(), errors.InvalidSignature)


class _Source:
    """A CredentialSource: what fetch.py provides, here from a trust store or an error."""

    def __init__(self, trust: TrustStore, chain: Any, error: VerificationError | None = None):
        self.trust, self.chain, self.error = trust, chain, error
        self.calls: list[str] = []
        self.vouches: list[str] = []

    async def get(self, x5u: str, *, now: float) -> Credential:
        self.calls.append(x5u)
        if self.error is not None:
            raise self.error
        return self.trust.validate(self.chain, now)

    def vouched(self, x5u: str) -> None:
        self.vouches.append(x5u)


async def test_verify_online(signer: Signer, trust: TrustStore, now: int) -> None:
    source = _Source(trust, signer.chain)
    result = await verify(signer.identity(iat=now), now=now, credentials=source)
    assert result.passed
    assert ([signer.x5u], [signer.x5u]) == (source.calls, source.vouches)
    tampered = await verify(_tamper(signer.identity(iat=now)), now=now, credentials=source)
    _fails(tampered, errors.InvalidSignature)
    assert [signer.x5u] == source.vouches  # a signature that fails vouches for nothing


async def test_a_forgers_copy_of_a_chain_is_never_vouched_for(
    pki: TestPKI, signer: Signer, trust: TrustStore, now: int
) -> None:
    # the forger's x5u serves the signer's real chain; the PASSporT is signed by another key
    forger = dataclasses.replace(pki.ca.issue_leaf(), x5u="https://forger.example/copy.pem")
    source = _Source(trust, signer.chain)
    _fails(
        await verify(forger.identity(iat=now), now=now, credentials=source), errors.InvalidSignature
    )
    batch = await verify_many(
        [(forger.identity(iat=now), None), (signer.identity(iat=now), None)],
        now=now,
        credentials=source,
    )
    assert [False, True] == [r.passed for r in batch]
    assert [signer.x5u] == source.vouches


async def test_verify_online_fetch_failure(signer: Signer, trust: TrustStore, now: int) -> None:
    source = _Source(trust, signer.chain, errors.X5uFetchFailed("connection refused"))
    result = await verify(signer.identity(iat=now), now=now, credentials=source)
    _fails(result, errors.X5uFetchFailed)
    assert 436 == _reason(result).sip_code


async def test_verify_online_skips_fetch_for_early_failures(
    signer: Signer, trust: TrustStore, now: int
) -> None:
    source = _Source(trust, signer.chain)
    result = await verify(signer.identity(iat=now - 999), now=now, credentials=source)
    _fails(result, errors.IatTooOld)
    assert [] == source.calls


# -- the service's signature path: checked later, together, then settled ----------------------

BAD_AT = 5
"""The index of the one request signed by another key, among good ones."""


def _batch(pki: TestPKI, signer: Signer, now: int, size: int) -> list[tuple[str, CallInfo]]:
    impostor = pki.ca.issue_leaf(x5u=signer.x5u)  # same x5u, another key
    call = CallInfo(from_=ORIG, to=DEST)
    return [
        ((impostor if i == BAD_AT else signer).identity(iat=now, orig=ORIG, dest=DEST), call)
        for i in range(size)
    ]


def _only_the_bad_one_failed(results: list[Result], size: int) -> None:
    assert size == len(results)
    verdicts = [r.verstat for r in results]
    assert [TN_VALIDATION_FAILED if i == BAD_AT else TN_VALIDATION_PASSED for i in range(size)] == (
        verdicts
    )
    bad = results[BAD_AT]
    _fails(bad, errors.InvalidSignature)
    assert 438 == _reason(bad).sip_code
    assert "failed" == bad.identities[0].status
    for result in results[:BAD_AT] + results[BAD_AT + 1 :]:
        assert result.reason is None
        assert result.certificate is not None
        assert ("1234",) == result.certificate.spc
        assert {"orig": "from", "dest": "to"} == result.matched


@pytest.mark.parametrize(("size", "threads"), [(8, 1), (40, 2)], ids=["loop", "threads"])
async def test_verify_many_one_bad_signature_among_good_ones(
    pki: TestPKI, signer: Signer, trust: TrustStore, now: int, size: int, threads: int
) -> None:
    batches: list[int] = []

    def batch_check(jobs: Any) -> list[bool]:
        batches.append(len(jobs))
        return check_each(jobs)

    source = ChainSource(trust, [signer])
    requests = _batch(pki, signer, now, size)
    results = await verify_many(
        requests, now=now, credentials=source, threads=threads, batch_check=batch_check
    )
    _only_the_bad_one_failed(results, size)
    assert [signer.x5u] == source.asked  # one lookup for the shared x5u
    assert [signer.x5u] == source.vouches  # once, whatever the number of passes
    assert size == sum(batches)  # every signature went through the batch check


def test_settle_with_signature_verdicts_checked_together(
    pki: TestPKI, signer: Signer, trust: TrustStore, now: int
) -> None:
    size = 8
    verifications = [Verification(v, now=now, call=c) for v, c in _batch(pki, signer, now, size)]
    credential = trust.validate(signer.chain, now)
    entries = [(v, e) for v in verifications for e in v.pending()]
    assert size == len(entries)
    verdicts = check_each([(credential.es256, e.signing_input, e.signature) for _, e in entries])
    assert [i != BAD_AT for i in range(size)] == verdicts
    for (verification, entry), ok in zip(entries, verdicts, strict=True):
        verification.settle(entry, credential, signature_ok=ok)
    _only_the_bad_one_failed([v.result() for v in verifications], size)


def test_settle_trusts_the_verdict_handed_in(signer: Signer, trust: TrustStore, now: int) -> None:
    # signature_ok=False fails a good signature; True is taken as checked elsewhere.
    credential = trust.validate(signer.chain, now)
    verification = Verification(signer.identity(iat=now), now=now)
    (entry,) = verification.pending()
    verification.settle(entry, credential, signature_ok=False)
    _fails(verification.result(), errors.InvalidSignature)


async def test_verify_with_signatures_handed_in(
    pki: TestPKI, signer: Signer, trust: TrustStore, now: int
) -> None:
    asked: list[bytes] = []

    async def signatures(key: ES256Key, data: bytes, signature: bytes) -> bool:
        asked.append(data)
        return key.check(data, signature)

    source = ChainSource(trust, [signer])
    results = [
        await verify(value, now=now, call=call, credentials=source, signatures=signatures)
        for value, call in _batch(pki, signer, now, 8)
    ]
    _only_the_bad_one_failed(results, 8)
    assert 8 == len(asked)


def test_verify_offline_arguments(signer: Signer, trust: TrustStore, now: int) -> None:
    value = signer.identity(iat=now)
    with pytest.raises(ValueError):
        verify_offline(value, now=now)
    with pytest.raises(ValueError):
        verify_offline(value, now=now, chain=signer.chain, public_key=signer.cert.public_key())
    _fails(verify_offline(value, now=now, chain=[], trust=trust), errors.CertificateInvalid)
    _fails(verify_offline(value, now=now, chain=signer.chain), errors.CertificateNotTrusted)


# -- DecodeCache ---------------------------------------------------------------------------------


def _verdict(verification: Verification, trust: TrustStore, chain: Any, now: int) -> Any:
    for entry in verification.pending():
        verification.settle(entry, trust.validate(chain, now))
    return verification.result().to_dict()


def test_decode_cache_gives_the_same_verdicts(signer: Signer, trust: TrustStore, now: int) -> None:
    token = signer.passport(iat=now)
    cases = [
        (token, True),
        (token, False),  # same protected header, no info: 436 even after the bare one passed
        (identity_header(token, signer.x5u), False),
        (token + ";info=<https://other.example/x.pem>", False),
        (identity_header(token, signer.x5u, ppt="div"), False),
        (identity_header(token, signer.x5u, alg="ES384"), False),
        (_tamper(identity_header(token, signer.x5u)), False),
        (identity_header(signer.passport(iat=now, header={"ppt": "div"}), signer.x5u), False),
        (identity_header(signer.passport(iat=now, attest="N"), signer.x5u), False),
    ]
    cache = DecodeCache()
    for _ in range(2):
        for value, bare in cases:
            plain = Verification(value, now=now, bare=bare)
            cached = Verification(value, now=now, bare=bare, cache=cache)
            expected = _verdict(plain, trust, signer.chain, now)
            assert expected == _verdict(cached, trust, signer.chain, now), (value, bare)
    bare_first = DecodeCache()
    Verification(token, now=now, bare=True, cache=bare_first)
    header_result = Verification(token, now=now, cache=bare_first).result()
    _fails(header_result, errors.InfoMissing)


# -- x5u URL rules (verifier.core.x5u) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("https://cert.example.net/sp.pem", "cert.example.net", 443),
        ("https://cert.example.net:443/sp.pem", "cert.example.net", 443),
        ("https://cert.example.net:8443/sp.pem", "cert.example.net", 8443),
        ("HTTPS://Cert.Example.NET/sp.pem", "cert.example.net", 443),
        ("https://[2001:db8::1]/sp.pem", "2001:db8::1", 443),
    ],
)
def test_x5u_url_allowed(url: str, host: str, port: int) -> None:
    assert X5uUrl(url=url, host=host, port=port) == check_x5u_url(url)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://cert.example.net/sp.pem", "https"),
        ("ftp://cert.example.net/sp.pem", "https"),
        ("/usr/share/cgrates/stir/stir_pubkey.pem", "https"),
        ("https://cert.example.net:80/sp.pem", "port 80"),
        ("https://cert.example.net:8080/sp.pem", "port 8080"),
        ("https://cert.example.net:99999/sp.pem", "valid URL"),
        ("https://cert.example.net:abc/sp.pem", "valid URL"),
        ("https://user@cert.example.net/sp.pem", "userinfo"),
        ("https://user:pw@cert.example.net/sp.pem", "userinfo"),
        ("https://cert.example.net/sp.pem?v=1", "query"),
        ("https://cert.example.net/sp.pem?", "query"),
        ("https://cert.example.net/sp.pem#frag", "fragment"),
        ("https:///sp.pem", "no host"),
        ("https://:443/sp.pem", "no host"),
        ("https://cert.example.net/s p.pem", "whitespace"),
        ("https://cert.example.net/sp.pem\n", "whitespace"),
        ("https://cért.example.net/sp.pem", "non-ASCII"),
    ],
)
def test_x5u_url_refused(url: str, rule: str) -> None:
    with pytest.raises(errors.X5uRefused, match=rule):
        check_x5u_url(url)


def test_x5u_allowed_ports() -> None:
    with pytest.raises(errors.X5uRefused, match="8443"):
        check_x5u_url("https://cert.example.net:8443/sp.pem", allowed_ports={443})
    assert 8080 == check_x5u_url("https://h.example:8080/x", allowed_ports={8080}).port


def test_x5u_rules_in_the_pipeline(check: Check, signer: Signer, now: int) -> None:
    for x5u in ("http://127.0.0.1:8443/sp.pem", "https://127.0.0.1:80/sp.pem"):
        value = signer.identity(iat=now, header={"x5u": x5u}, params=f";info=<{x5u}>")
        _fails(check(value), errors.X5uRefused)
    options = VerifyOptions(x5u_ports=frozenset({443}))
    _fails(check(signer.identity(iat=now), options=options), errors.X5uRefused)


# -- every error class -------------------------------------------------------------------------

# The map in the errors.py docstring, written out: (SIP code, verstat) per class.
ERROR_MAP: dict[type[VerificationError], tuple[int, str]] = {
    errors.NoIdentity: (428, NO_TN_VALIDATION),
    errors.StaleDate: (403, NO_TN_VALIDATION),
    errors.IatTooOld: (403, NO_TN_VALIDATION),
    errors.IatInFuture: (403, NO_TN_VALIDATION),
    errors.RequestDateStale: (403, NO_TN_VALIDATION),
    errors.BadIdentityInfo: (436, NO_TN_VALIDATION),
    errors.InfoMissing: (436, NO_TN_VALIDATION),
    errors.InfoInvalid: (436, NO_TN_VALIDATION),
    errors.X5uMissing: (436, NO_TN_VALIDATION),
    errors.X5uMismatch: (436, NO_TN_VALIDATION),
    errors.X5uRefused: (436, NO_TN_VALIDATION),
    errors.X5uFetchFailed: (436, NO_TN_VALIDATION),
    errors.UnsupportedCredential: (437, NO_TN_VALIDATION),
    errors.UnsupportedAlgorithm: (437, NO_TN_VALIDATION),
    errors.UnsupportedType: (437, NO_TN_VALIDATION),
    errors.CertificateError: (437, TN_VALIDATION_FAILED),
    errors.CertificateInvalid: (437, TN_VALIDATION_FAILED),
    errors.CertificateNotTrusted: (437, TN_VALIDATION_FAILED),
    errors.CertificateExpired: (437, TN_VALIDATION_FAILED),
    errors.CertificateNotYetValid: (437, TN_VALIDATION_FAILED),
    errors.CertificateRevoked: (437, TN_VALIDATION_FAILED),
    errors.CrlUnavailable: (437, TN_VALIDATION_FAILED),
    errors.TNAuthListMissing: (437, TN_VALIDATION_FAILED),
    errors.TNAuthListMalformed: (437, TN_VALIDATION_FAILED),
    errors.PolicyOidMissing: (437, TN_VALIDATION_FAILED),
    errors.UnsupportedKey: (437, TN_VALIDATION_FAILED),
    errors.InvalidIdentityHeader: (438, NO_TN_VALIDATION),
    errors.MalformedIdentity: (438, NO_TN_VALIDATION),
    errors.CompactForm: (438, NO_TN_VALIDATION),
    errors.MalformedPassport: (438, NO_TN_VALIDATION),
    errors.DuplicateJsonKey: (438, NO_TN_VALIDATION),
    errors.InvalidEncoding: (438, NO_TN_VALIDATION),
    errors.InvalidPpt: (438, NO_TN_VALIDATION),
    errors.InvalidClaims: (438, NO_TN_VALIDATION),
    errors.InvalidAttest: (438, NO_TN_VALIDATION),
    errors.InvalidTn: (438, NO_TN_VALIDATION),
    errors.OrigMismatch: (438, NO_TN_VALIDATION),
    errors.DestMismatch: (438, NO_TN_VALIDATION),
    errors.NoShakenPassport: (438, NO_TN_VALIDATION),
    errors.DiversionBroken: (438, NO_TN_VALIDATION),
    errors.DiversionLoop: (438, NO_TN_VALIDATION),
    errors.DiversionTooLong: (438, NO_TN_VALIDATION),
    errors.DiversionUnanchored: (438, NO_TN_VALIDATION),
    errors.InvalidSignature: (438, TN_VALIDATION_FAILED),
}

# Raised by modules written by others, not by the verification core: X5uFetchFailed (fetch.py),
# CrlUnavailable and CertificateRevoked (CRL handling), RequestDateStale (the HTTP API's check
# of the SIP Date). Only their class attributes are asserted here.
RAISED_ELSEWHERE = {
    errors.X5uFetchFailed: "x5u_fetch_failed",
    errors.CrlUnavailable: "crl_unavailable",
    errors.CertificateRevoked: "cert_revoked",
    errors.RequestDateStale: "date_stale",
    # reported in Result.diversion (tests/test_div.py triggers each), not as the verdict
    errors.DiversionBroken: "div_broken",
    errors.DiversionLoop: "div_loop",
    errors.DiversionTooLong: "div_too_long",
    errors.DiversionUnanchored: "div_without_shaken",
}

# Grouping bases: never raised themselves.
BASES = {
    errors.StaleDate,
    errors.BadIdentityInfo,
    errors.UnsupportedCredential,
    errors.CertificateError,
    errors.InvalidIdentityHeader,
}

Scenario = Callable[[], Result]


@pytest.fixture
def scenarios(
    pki: TestPKI, signer: Signer, trust: TrustStore, now: int, raw_jws: RawJws
) -> dict[type[VerificationError], Scenario]:
    """One way through verify_offline (chain + trust) to each failure the core raises."""
    at = dt.datetime.fromtimestamp(now, dt.UTC)

    def run(values: Any, who: Signer = signer, store: TrustStore = trust, **kw: Any) -> Result:
        return verify_offline(values, now=now, chain=who.chain, trust=store, **kw)

    def ident(who: Signer = signer, **kw: Any) -> str:
        return who.identity(**{"iat": now, **kw})

    def signed_by(who: Signer, store: TrustStore = trust) -> Result:
        return run(ident(who), who, store)

    x5u = signer.x5u
    header = json.dumps({"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": x5u})
    payload = json.dumps({"attest": "A", "dest": {"tn": [DEST]}, "iat": now, "orig": {"tn": ORIG}})
    der_sig = signer.passport(iat=now).rpartition(".")[0] + "." + "MEUCIQ" + "A" * 92
    return {
        errors.NoIdentity: lambda: run(None),
        errors.IatTooOld: lambda: run(ident(iat=now - 61)),
        errors.IatInFuture: lambda: run(ident(iat=now + 11)),
        errors.InfoMissing: lambda: run(ident(params=';ppt="shaken"')),
        errors.InfoInvalid: lambda: run(ident(params=f";info={x5u};ppt=shaken")),
        errors.X5uMissing: lambda: run(ident(drop=["x5u"])),
        errors.X5uMismatch: lambda: run(ident(params=";info=<https://a.example/b.pem>")),
        errors.X5uRefused: lambda: run(
            ident(header={"x5u": "http://a.example/b.pem"}, params=";info=<http://a.example/b.pem>")
        ),
        errors.UnsupportedAlgorithm: lambda: run(ident(header={"alg": "ES384"})),
        errors.UnsupportedType: lambda: run(ident(header={"typ": "JWT"})),
        errors.CertificateInvalid: lambda: verify_offline(ident(), now=now, chain=[], trust=trust),
        errors.CertificateNotTrusted: lambda: signed_by(pki.untrusted_root().issue_leaf()),
        errors.CertificateExpired: lambda: signed_by(
            pki.ca.issue_leaf(not_before=at - 30 * DAY, not_after=at - DAY)
        ),
        errors.CertificateNotYetValid: lambda: signed_by(
            pki.ca.issue_leaf(not_before=at + DAY, not_after=at + 30 * DAY)
        ),
        errors.TNAuthListMissing: lambda: signed_by(pki.ca.issue_leaf(tnauthlist=None)),
        errors.TNAuthListMalformed: lambda: signed_by(pki.ca.issue_leaf(tnauthlist=b"\x30\x00")),
        errors.PolicyOidMissing: lambda: signed_by(
            pki.ca.issue_leaf(policy_oid=x509.ObjectIdentifier("1.2.3.4")),
            TrustStore([pki.root.cert], require_policy_oid=True),
        ),
        # A P-384 leaf cannot make an ES256 signature; its key is refused before any is checked.
        errors.UnsupportedKey: lambda: run(ident(), pki.ca.issue_leaf(key_type="p384")),
        errors.MalformedIdentity: lambda: run(ident(params=f";info=<{x5u}>alg=ES256")),
        errors.CompactForm: lambda: run(".." + ident().split(".", 2)[2]),
        errors.MalformedPassport: lambda: run(
            identity_header(raw_jws(header.encode(), b"[]"), x5u)
        ),
        errors.DuplicateJsonKey: lambda: run(
            identity_header(raw_jws(header.encode(), payload[:-1].encode() + b',"iat":1}'), x5u)
        ),
        errors.InvalidEncoding: lambda: run(identity_header(der_sig, x5u)),
        errors.InvalidPpt: lambda: run(
            ident(header={"ppt": "div"}, params=f";info=<{x5u}>;ppt=shaken")
        ),
        errors.InvalidClaims: lambda: run(ident(drop=["origid"])),
        errors.InvalidAttest: lambda: run(ident(attest="N")),
        errors.InvalidTn: lambda: run(ident(orig="Bob")),
        errors.OrigMismatch: lambda: run(ident(orig=ORIG), call=CallInfo(from_="12155550000")),
        errors.DestMismatch: lambda: run(ident(dest=DEST), call=CallInfo(to="12155550000")),
        errors.NoShakenPassport: lambda: run(
            identity_header(signer.passport(iat=now), x5u, ppt="div")
        ),
        errors.InvalidSignature: lambda: run(_tamper(ident())),
    }


def test_error_map_matches_the_classes() -> None:
    assert set(all_error_classes()) == set(ERROR_MAP)
    for cls, (sip_code, verstat) in ERROR_MAP.items():
        assert (sip_code, verstat) == (cls.sip_code, cls.verstat), cls


def test_every_error_class_is_accounted_for(
    scenarios: dict[type[VerificationError], Scenario],
) -> None:
    accounted = set(scenarios) | set(RAISED_ELSEWHERE) | BASES
    assert set(all_error_classes()) == accounted
    assert not set(scenarios) & (set(RAISED_ELSEWHERE) | BASES)


def test_slugs_name_the_raised_classes() -> None:
    raised = [c for c in all_error_classes() if c not in BASES]
    assert len(raised) == len({c.slug for c in raised})


@pytest.mark.parametrize(
    "cls", sorted(set(ERROR_MAP) - set(RAISED_ELSEWHERE) - BASES, key=str), ids=lambda c: c.__name__
)
def test_every_error_class_is_triggered(
    scenarios: dict[type[VerificationError], Scenario], cls: type[VerificationError]
) -> None:
    result = scenarios[cls]()
    reason = _reason(result)
    # The slug names the class (slugs are unique, test above): this is the type raised.
    by_slug = {c.slug: c for c in all_error_classes() if c not in BASES}
    assert cls is by_slug[reason.slug], reason
    assert ERROR_MAP[cls] == (reason.sip_code, result.verstat)
    assert cls.text == reason.text
    assert not result.passed


@pytest.mark.parametrize("cls", list(RAISED_ELSEWHERE), ids=lambda c: c.__name__)
def test_classes_raised_elsewhere(cls: type[VerificationError]) -> None:
    assert RAISED_ELSEWHERE[cls] == cls.slug
    assert ERROR_MAP[cls] == (cls.sip_code, cls.verstat)
    exc = cls("detail")
    assert "detail" == exc.detail
    assert Reason(
        sip_code=cls.sip_code, text=cls.text, slug=cls.slug, detail="detail"
    ) == Reason.of(exc)
