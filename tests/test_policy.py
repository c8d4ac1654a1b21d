"""verifier.core.policy: labels, provider block and allow lists, rules, file validation."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from verifier.core.certs import TrustStore
from verifier.core.policy import Policy, PolicyError
from verifier.core.verify import CallInfo, Result, Verification, verify_offline
from verifier.testing import Signer, TestPKI

DAY = 86400.0


def verdict(signer: Signer, trust: TrustStore, now: int, **claims: object) -> Result:
    """A real verification (the signer's chain validated against ``trust``)."""
    identity = signer.identity(iat=now, **claims)  # type: ignore[arg-type]
    return verify_offline(identity, now=now, chain=list(signer.chain), trust=trust)


@pytest.fixture(scope="module")
def other() -> TestPKI:
    return TestPKI.create(spc="567J", x5u="https://cr.partner.example.com/sp.pem")


@pytest.fixture
def passed(signer: Signer, trust: TrustStore, now: int) -> Result:
    result = verdict(signer, trust, now)
    assert result.passed
    return result


def test_defaults_label_and_never_block(
    signer: Signer, trust: TrustStore, now: int, passed: Result
) -> None:
    policy = Policy.default()
    assert ("allow", "verified") == _al(policy.decide(passed, now=now))
    for attest, label in (("B", "partial"), ("C", "gateway")):
        result = verdict(signer, trust, now, attest=attest)
        assert ("label", label) == _al(policy.decide(result, now=now))
    tampered = signer.identity(iat=now)
    head, payload, sig = tampered.split(";")[0].split(".")
    bad = verify_offline(
        f"{head}.{payload}.{sig[:-4]}AAAA" + tampered[tampered.index(";") :],
        now=now,
        chain=list(signer.chain),
        trust=trust,
    )
    assert "TN-Validation-Failed" == bad.verstat
    assert ("label", "unverified") == _al(policy.decide(bad, now=now))
    stale = verify_offline(
        signer.identity(iat=now - 600), now=now, chain=list(signer.chain), trust=trust
    )
    assert "No-TN-Validation" == stale.verstat
    assert ("label", "unverified") == _al(policy.decide(stale, now=now))
    assert None is policy.decide(passed, now=now).response


def test_default_dispositions_are_made_once_per_verdict_and_policy(
    signer: Signer, trust: TrustStore, now: int, passed: Result
) -> None:
    """Every call without an entry or rule gets one of a handful of default dispositions:
    each is made once (and its JSON with it), per policy: a reloaded policy's labels apply."""
    policy = Policy.default()
    first = policy.decide(passed, now=now)
    assert first is policy.decide(verdict(signer, trust, now, attest="A"), now=now)
    assert first.to_dict() is first.to_dict()
    assert {"action": "allow", "label": "verified"}.items() <= first.to_dict().items()
    partial = policy.decide(verdict(signer, trust, now, attest="B"), now=now)
    assert ("label", "partial") == _al(partial)
    replayed = dataclasses.replace(passed, replayed=True)
    assert ("label", "replayed") == _al(policy.decide(replayed, now=now))
    assert ("allow", "verified") == _al(policy.decide(passed, now=now))  # not mixed up
    relabelled = Policy.from_text('[labels]\nA = "signed-a"\n')
    assert ("allow", "signed-a") == _al(relabelled.decide(passed, now=now))


def _al(disposition: object) -> tuple[str, str]:
    return disposition.action, disposition.label  # type: ignore[attr-defined]


def test_block_by_spc_from_its_effective_date_until_it_expires(passed: Result, now: int) -> None:
    policy = Policy.from_text(
        f"""
[[block]]
spc = "1234"
reference = "FCC DA 24-1234"
effective = {dt.datetime.fromtimestamp(now + DAY, dt.UTC).isoformat()}
expires = {dt.datetime.fromtimestamp(now + 3 * DAY, dt.UTC).isoformat()}
"""
    )
    assert "allow" == policy.decide(passed, now=now).action
    blocked = policy.decide(passed, now=now + 2 * DAY)
    assert "block" == blocked.action
    assert "blocked" == blocked.label
    assert {"code": 603, "text": "Decline", "reason": 'SIP;cause=603;text="FCC DA 24-1234"'} == (
        blocked.response
    )
    assert [{"list": "block", "spc": "1234", "line": 2, "reference": "FCC DA 24-1234"}] == list(
        blocked.reasons
    )
    assert "allow" == policy.decide(passed, now=now + 3 * DAY).action


def test_block_by_fingerprint_issuer_and_x5u_host(passed: Result, now: int) -> None:
    assert passed.certificate is not None
    fingerprint = passed.certificate.fingerprint_sha256
    colons = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    for entry in (
        f'fingerprint = "{colons}"',
        'issuer = "verifier test STI-CA"',
        'x5u_host = "127.0.0.1"',
    ):
        policy = Policy.from_text(f"[[block]]\n{entry}\nreference = 'order 7'\n")
        assert "block" == policy.decide(passed, now=now).action, entry
    assert (
        "allow"
        == Policy.from_text("[[block]]\nx5u_host = 'example.net'\n").decide(passed, now=now).action
    )


def test_x5u_host_suffix_and_608(other: TestPKI, now: int) -> None:
    trust = TrustStore([other.root.cert])
    result = verdict(other.signer, trust, now)
    policy = Policy.from_text(
        "block_response = 608\n[[block]]\nx5u_host = '.partner.example.com'\nreference = 'x\"y'\n"
    )
    decided = policy.decide(result, now=now)
    assert "block" == decided.action
    assert {"code": 608, "text": "Rejected", "reason": 'SIP;cause=608;text="xy"'} == (
        decided.response
    )


def test_spc_entries_need_a_validated_certificate(
    signer: Signer, trust: TrustStore, now: int
) -> None:
    # the signature fails (step 12, as the service reaches it): the certificate proves
    # nothing, so an SPC block cannot fire, while an x5u-host block (what the PASSporT
    # claims) still does
    identity = signer.identity(iat=now)
    token, params = identity.split(";", 1)
    head, payload, sig = token.split(".")
    verification = Verification(f"{head}.{payload}.{sig[:-4]}AAAA;{params}", now=now)
    credential = trust.validate(list(signer.chain), now)
    for entry in verification.pending():
        verification.settle(entry, credential)
    bad = verification.result()
    assert "invalid_signature" == (bad.reason.slug if bad.reason else None)
    assert None is bad.certificate
    assert "label" == Policy.from_text("[[block]]\nspc = '1234'\n").decide(bad, now=now).action
    assert (
        "block"
        == Policy.from_text("[[block]]\nx5u_host = '127.0.0.1'\n").decide(bad, now=now).action
    )


def test_allow_list_overrides_labels_but_not_a_block(
    signer: Signer, trust: TrustStore, now: int
) -> None:
    partial = verdict(signer, trust, now, attest="B")
    policy = Policy.from_text(
        "[[allow]]\nspc = '1234'\nlabel = 'partner'\nreference = 'contract'\n"
    )
    decided = policy.decide(partial, now=now)
    assert ("allow", "partner") == _al(decided)
    assert [{"list": "allow", "spc": "1234", "line": 1, "reference": "contract"}] == list(
        decided.reasons
    )
    both = Policy.from_text("[[allow]]\nspc = '1234'\n[[block]]\nspc = '1234'\n")
    assert "block" == both.decide(partial, now=now).action


def test_allow_by_calling_number(signer: Signer, trust: TrustStore, now: int) -> None:
    stale = verify_offline(
        signer.identity(iat=now - 600), now=now, chain=list(signer.chain), trust=trust
    )
    policy = Policy.from_text("[[allow]]\ntn = '+1 215 555 1212'\n")
    call = CallInfo(from_="sip:2155551212@example.com")  # national form matches too
    assert ("allow", "verified") == _al(policy.decide(stale, call, now=now))
    assert "label" == policy.decide(stale, CallInfo(from_="12155550000"), now=now).action
    assert "label" == policy.decide(stale, None, now=now).action


def test_allow_by_calling_number_honours_nanp_national_match(
    signer: Signer, trust: TrustStore, now: int
) -> None:
    stale = verify_offline(
        signer.identity(iat=now - 600), now=now, chain=list(signer.chain), trust=trust
    )
    policy = Policy.from_text("[[allow]]\ntn = '+1 215 555 1212'\n")
    national, full = CallInfo(pai="tel:2155551212"), CallInfo(pai="tel:+12155551212")

    def action(call: CallInfo, nanp: bool) -> str:
        return policy.decide(stale, call, now=now, nanp_national_match=nanp).action

    assert ("allow", "label") == (action(national, True), action(national, False))
    assert ("allow", "allow") == (action(full, True), action(full, False))


def test_rules_first_match_wins(signer: Signer, trust: TrustStore, now: int) -> None:
    policy = Policy.from_text(
        """
[labels]
failed = "spoof-risk"

[[rule]]
name = "stale"
reason = [403]
action = "label"
label = "late"

[[rule]]
name = "gateway from 1234"
attest = "C"
spc = "1234"
action = "label"
label = "gateway-1234"

[[rule]]
name = "any C"
attest = ["C"]
action = "allow"
label = "gateway"
"""
    )
    c_call = verdict(signer, trust, now, attest="C")
    decided = policy.decide(c_call, now=now)
    assert ("label", "gateway-1234") == _al(decided)
    assert [{"rule": "gateway from 1234", "line": 11}] == list(decided.reasons)
    stale = verify_offline(
        signer.identity(iat=now - 600), now=now, chain=list(signer.chain), trust=trust
    )
    assert ("label", "late") == _al(policy.decide(stale, now=now))
    by_slug = Policy.from_text(
        "[[rule]]\nreason = 'iat_too_old'\nverstat = 'No-TN-Validation'\n"
        "action = 'label'\nlabel = 'old'\n"
    )
    assert ("label", "old") == _al(by_slug.decide(stale, now=now))


def test_load_reads_a_file(tmp_path: Path, passed: Result, now: int) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[labels]\nA = 'green'\n")
    policy = Policy.load(path)
    assert str(path) == policy.source
    assert ("allow", "green") == _al(policy.decide(passed, now=now))
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 'red'\n", r"<policy>:1: unknown setting 'colour'"),
        ("block_response = 500\n", r":1: block_response must be 603 .* or 608"),
        ("[labels]\nZ = 'x'\n", r":2: \[labels\] 'Z': expected one of"),
        ("[labels]\nA = ''\n", r":2: \[labels\] A: a label is 1-32"),
        ("\n\n[[block]]\nreference = 'x'\n", r":3: \[\[block\]\] needs exactly one of"),
        ("[[block]]\nspc = '1'\nx5u_host = 'a'\n", r":1: \[\[block\]\] needs exactly one"),
        ("[[block]]\nspc = ''\n", r"spc must be a non-empty string"),
        ("[[block]]\nfingerprint = 'abc'\n", r"fingerprint must be a SHA-256"),
        ("[[block]]\nspc = '1'\ncolour = 1\n", r"unknown key 'colour'"),
        ("[[block]]\nspc = '1'\nlabel = 'x'\n", r"takes no label"),
        ("[[block]]\nspc = '1'\neffective = 2024-05-01T00:00:00\n", r"give a UTC offset"),
        ("[[block]]\nspc = '1'\neffective = 'soon'\n", r"effective must be a TOML date"),
        (
            "[[block]]\nspc = '1'\neffective = 2024-05-02\nexpires = 2024-05-01\n",
            r"expires must come after effective",
        ),
        ("[[allow]]\ntn = 'alice'\n", r"tn 'alice' is not a telephone number"),
        ("[[rule]]\naction = 'block'\nlabel = 'x'\n", r"\[\[rule\]\] cannot block"),
        ("[[rule]]\naction = 'shout'\nlabel = 'x'\n", r"action must be allow, label or block"),
        ("[[rule]]\naction = 'label'\nlabel = 'x'\nattest = 'D'\n", r"attest must be among"),
        ("[[rule]]\naction = 'label'\nlabel = 'x'\nverstat = 'ok'\n", r"verstat must be among"),
        ("[[rule]]\naction = 'label'\nlabel = 'x'\nreason = [true]\n", r"reason must be a str"),
        ("[[rule]]\naction = 'label'\n", r"\[\[rule\]\] label: a label is"),
        ("[labels\n", r"not valid TOML"),
        ("block = 'x'\n", r"block entries must be \[\[block\]\] tables"),
    ],
)
def test_invalid_policies_name_the_line_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_text(text)


def test_a_rule_can_act_on_a_failed_diversion(passed: Result, now: int) -> None:
    policy = Policy.from_text(
        "[[rule]]\nname = 'bad forward'\ndiversion = 'failed'\naction = 'label'\n"
        "label = 'suspect-forward'\n"
    )
    assert "verified" == policy.decide(passed, now=now).label  # no diversion: absent
    broken = dataclasses.replace(
        passed, diversion={"verstat": "No-TN-Validation", "hops": [], "reason": None}
    )
    assert ("label", "suspect-forward") == _al(policy.decide(broken, now=now))
    holds = dataclasses.replace(
        passed, diversion={"verstat": "TN-Validation-Passed", "hops": [], "reason": None}
    )
    assert "verified" == policy.decide(holds, now=now).label
    with pytest.raises(PolicyError, match="diversion must be absent, passed or failed"):
        Policy.from_text("[[rule]]\ndiversion = 'maybe'\naction = 'label'\nlabel = 'x'\n")
