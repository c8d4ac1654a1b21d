"""Diverted calls: div PASSporTs (RFC 8946) verified and linked into a chain."""

from __future__ import annotations

import itertools

import pytest

from verifier.core.certs import TrustStore
from verifier.core.verify import CallInfo, Result, Verification, VerifyOptions, verify_offline
from verifier.testing import Signer, TestPKI, identity_header

ORIG = "12155551212"
A, B, C, D, E, F = (f"1215555{n:04d}" for n in range(2001, 2007))


def div_header(signer: Signer, now: int, diverted_from: str, to: str, orig: str = ORIG) -> str:
    return signer.div_identity(iat=now, orig=orig, div=diverted_from, dest=to)


def verify(
    values: list[str],
    signers: list[Signer],
    trust: TrustStore,
    now: int,
    call: CallInfo | None = None,
    options: VerifyOptions | None = None,
) -> Result:
    """The online pipeline's steps with the credentials a fetcher would give for each x5u."""
    verification = Verification(values, now=now, call=call, options=options)
    chains = {s.x5u: s.chain for s in signers}
    for entry in verification.pending():
        chain = chains[Verification.x5u_of(entry)]
        try:
            credential = trust.validate(list(chain), now)
        except Exception as exc:  # a CertificateError, as the fetcher would raise it
            verification.fail(entry, exc)  # type: ignore[arg-type]
            continue
        verification.settle(entry, credential)
    return verification.result()


@pytest.fixture(scope="module")
def forwarder(pki: TestPKI) -> Signer:
    """The diverting provider: another SP under the same CA, with its own x5u."""
    return pki.ca.issue_leaf("5678", x5u="https://cr.forwarder.example/sp.pem")


def chain_of(signer: Signer, forwarder: Signer, now: int, hops: int) -> list[str]:
    numbers = [A, B, C, D, E, F][: hops + 1]
    values = [signer.identity(iat=now, dest=numbers[0])]
    for before, after in itertools.pairwise(numbers):
        values.append(div_header(forwarder, now, before, after))
    return values


@pytest.mark.parametrize("hops", [1, 2, 5])
def test_chains_of_1_2_and_5_hops(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int, hops: int
) -> None:
    values = chain_of(signer, forwarder, now, hops)
    last = [A, B, C, D, E, F][hops]
    # the switch asks about the final target only (the ATIS to.tn): the SHAKEN dest A
    # reaches it through the chain
    result = verify(values[::-1], [signer, forwarder], trust, now, CallInfo(from_=ORIG, to=last))
    assert result.passed, result.reason
    assert {"orig": "from", "dest": "diversion"} == result.matched
    assert result.diversion is not None
    assert "TN-Validation-Passed" == result.diversion["verstat"]
    assert None is result.diversion["reason"]
    assert [[A, B, C, D, E, F][i] for i in range(hops)] == [
        h["div"] for h in result.diversion["hops"]
    ]
    assert all(h["linked"] and "passed" == h["status"] for h in result.diversion["hops"])


def test_to_is_the_original_number_and_ruri_the_new_target(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int
) -> None:
    values = chain_of(signer, forwarder, now, 1)
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=A, ruri=B))
    assert result.passed
    assert "to" == result.matched["dest"]
    assert result.diversion is not None
    assert "TN-Validation-Passed" == result.diversion["verstat"]


def test_broken_link(signer: Signer, forwarder: Signer, trust: TrustStore, now: int) -> None:
    values = [signer.identity(iat=now, dest=A), div_header(forwarder, now, C, D)]
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=D))
    # the SHAKEN dest (A) does not reach D: the calling number's verdict fails on dest
    assert "dest_mismatch" == (result.reason.slug if result.reason else None)
    assert "diversion" in (result.reason.detail if result.reason else "")
    assert result.diversion is not None
    assert "div_broken" == result.diversion["reason"]["slug"]
    assert [False] == [h["linked"] for h in result.diversion["hops"]]


def test_broken_link_does_not_fail_a_directly_matched_call(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int
) -> None:
    values = [signer.identity(iat=now, dest=A), div_header(forwarder, now, C, D)]
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=A))
    assert result.passed
    assert result.diversion is not None
    assert "No-TN-Validation" == result.diversion["verstat"]
    assert "div_broken" == result.diversion["reason"]["slug"]


def test_div_with_another_orig(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int
) -> None:
    values = [signer.identity(iat=now, dest=A), div_header(forwarder, now, A, B, orig=C)]
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=B))
    assert not result.passed
    assert result.diversion is not None
    assert "div_broken" == result.diversion["reason"]["slug"]
    assert "orig" in result.diversion["reason"]["detail"]


def test_last_dest_is_not_the_called_number(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int
) -> None:
    values = chain_of(signer, forwarder, now, 2)
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=A, ruri=F))
    assert result.passed  # To matches the SHAKEN dest directly
    assert result.diversion is not None
    assert "div_broken" == result.diversion["reason"]["slug"]
    assert "not to the called number" in result.diversion["reason"]["detail"]


def test_loop(signer: Signer, forwarder: Signer, trust: TrustStore, now: int) -> None:
    values = [
        signer.identity(iat=now, dest=A),
        div_header(forwarder, now, A, B),
        div_header(forwarder, now, B, A),
    ]
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=A))
    assert result.diversion is not None
    assert "div_loop" == result.diversion["reason"]["slug"]


def test_more_hops_than_the_maximum(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int
) -> None:
    values = chain_of(signer, forwarder, now, 3)
    options = VerifyOptions(max_div_hops=2)
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=D), options)
    assert result.diversion is not None
    assert "div_too_long" == result.diversion["reason"]["slug"]
    assert not result.passed  # D is reachable only through the refused chain


def test_two_divs_from_one_number(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int
) -> None:
    values = [
        signer.identity(iat=now, dest=A),
        div_header(forwarder, now, A, B),
        div_header(forwarder, now, A, C),
    ]
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=A))
    assert result.diversion is not None
    assert "div_broken" == result.diversion["reason"]["slug"]
    assert "all divert the call from" in result.diversion["reason"]["detail"]


def test_hop_signed_under_an_untrusted_certificate(
    signer: Signer, pki: TestPKI, trust: TrustStore, now: int
) -> None:
    rogue = pki.untrusted_root().issue_leaf("6666", x5u="https://cr.rogue.example/sp.pem")
    values = [signer.identity(iat=now, dest=A), div_header(rogue, now, A, B)]
    # asked about B, reachable only through the failed hop: the call fails
    assert not verify(values, [signer, rogue], trust, now, CallInfo(to=B)).passed
    # asked about A (the SHAKEN dest): the calling number verifies, the diversion does not
    result = verify(values, [signer, rogue], trust, now, CallInfo(to=A))
    assert result.passed
    assert result.diversion is not None
    assert "TN-Validation-Failed" == result.diversion["verstat"]
    assert "cert_not_trusted" == result.diversion["reason"]["slug"]
    assert ["failed"] == [h["status"] for h in result.diversion["hops"]]
    # the failing header is named by its signature (RFC 9410 ppi) in the identities
    failed = [h for h in result.identities if h.status == "failed"]
    assert [values[1].split(";")[0].rsplit(".", 1)[1]] == [h.ppi for h in failed]


def test_div_without_its_shaken_passport(forwarder: Signer, trust: TrustStore, now: int) -> None:
    result = verify([div_header(forwarder, now, A, B)], [forwarder], trust, now, CallInfo(to=B))
    assert "no_shaken_passport" == (result.reason.slug if result.reason else None)
    assert result.diversion is not None
    assert "div_without_shaken" == result.diversion["reason"]["slug"]


def test_malformed_div_claims(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int
) -> None:
    token = forwarder.passport(iat=now, dest=B, header={"ppt": "div"}, drop=["attest"])
    values = [signer.identity(iat=now, dest=A), identity_header(token, forwarder.x5u, ppt="div")]
    result = verify(values, [signer, forwarder], trust, now, CallInfo(to=A))
    assert result.passed
    assert result.diversion is not None
    assert "invalid_claims" == result.diversion["reason"]["slug"]
    assert "div" in result.diversion["reason"]["detail"]


def test_offline_each_x5u_is_verified_with_its_own_chain(
    signer: Signer, forwarder: Signer, trust: TrustStore, now: int
) -> None:
    """``verify_offline(chains=...)`` (a recorded diverted call verified again): each
    PASSporT under its own signer's certificate; one chain for all fails the other
    provider's div hop, and an x5u without a chain fails as an unreachable one would."""
    values = chain_of(signer, forwarder, now, 1)
    call = CallInfo(from_=ORIG, to=B)
    chains = {signer.x5u: list(signer.chain), forwarder.x5u: list(forwarder.chain)}
    both = verify_offline(values, now=now, call=call, chains=chains, trust=trust)
    assert both.passed, both.reason
    spcs = [h.certificate.spc if h.certificate else None for h in both.identities]
    assert [spcs[0], ("5678",)] == spcs and spcs[0] != ("5678",)
    one = verify_offline(values, now=now, call=call, chain=list(signer.chain), trust=trust)
    assert "dest_mismatch" == (one.reason.slug if one.reason else None)
    del chains[forwarder.x5u]
    lacking = verify_offline(values, now=now, call=call, chains=chains, trust=trust)
    assert ["dest_mismatch", "x5u_fetch_failed"] == [
        h.reason.slug if h.reason else h.status for h in lacking.identities
    ]
    with pytest.raises(ValueError, match="exactly one"):
        verify_offline(values, now=now, chain=list(signer.chain), chains=chains, trust=trust)
