"""verifier.core.rph: the rph PASSporT's claims (RFC 8443, RFC 9027's sph) and the priority
verdict beside a request's Resource-Priority and Priority values. Pure: no PKI needed."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

from typing import Any

import pytest

from verifier.core import errors
from verifier.core.result import Status
from verifier.core.rph import (
    NO_RPH_VALIDATION,
    RPH_VALIDATION_FAILED,
    RPH_VALIDATION_PASSED,
    check_rph_claims,
    judge_priority,
    priority_values,
)
from verifier.core.verify import HeaderResult

ORIG, DEST = "12155551212", "12155551213"
CLAIMS = {"orig": {"tn": ORIG}, "dest": {"tn": [DEST]}, "iat": 1}


def test_check_rph_claims_reads_auth_and_sph() -> None:
    claims = check_rph_claims(
        {**CLAIMS, "rph": {"auth": ["ETS.0", "wps.1"]}, "sph": "psap-callback"}
    )
    assert (("ets.0", "wps.1"), "psap-callback", ORIG, (DEST,), 1) == (
        claims.auth,
        claims.sph,
        claims.orig_tn,
        claims.dest_tns,
        claims.iat,
    )


def test_failed_rph_passports_fail_the_priority() -> None:
    verdict, failures = judge_priority(
        [_header(0, "failed", None), _header(1, "not_verified", None)], frozenset({"ets.0"}), None
    )
    assert (RPH_VALIDATION_FAILED, {}) == (verdict, dict(failures))


def _header(index: int, status: Status, claims: dict[str, Any] | None) -> HeaderResult:
    return HeaderResult(index=index, ppt="rph", status=status, payload=claims)


def test_judge_priority_passes_when_one_rph_vouches() -> None:
    good = {**CLAIMS, "rph": {"auth": ["ets.0"]}}
    bad = {**good, "rph": {"auth": ["wps.0"]}}
    verdict, failures = judge_priority(
        [_header(0, "passed", bad), _header(1, "passed", good)], priority_values(["ets.0"]), None
    )
    assert RPH_VALIDATION_PASSED == verdict
    assert [0] == list(failures)
    assert isinstance(failures[0], errors.InvalidClaims)
    assert (NO_RPH_VALIDATION, {}) == judge_priority([], frozenset(), None)


@pytest.mark.parametrize(
    "claims",
    [
        {"rph": {"auth": ["ets.0"], "extra": 1}},
        {"rph": [{"auth": ["ets.0"]}]},
        {"rph": {"auth": ["ets.0"]}, "sph": "urgent"},
        {},
    ],
    ids=["extra-member", "array-form", "unknown-sph", "absent"],
)
def test_check_rph_claims_refuses(claims: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidClaims):
        check_rph_claims({**CLAIMS, **claims})


def test_priority_values_split_and_fold_case() -> None:
    assert frozenset({"ets.0", "wps.1"}) == priority_values(["ETS.0, wps.1", " ", "ets.0"])
