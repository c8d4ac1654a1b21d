"""verifier.core.certs: real STI-CA certificates, TNAuthList DER, chain validation, loading."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from verifier.core import errors
from verifier.core.certs import (
    SHAKEN_POLICY_OID,
    TNAUTHLIST_OID,
    Credential,
    TNAuthList,
    TrustStore,
    credential_from_public_key,
    load_certificates,
    load_chain,
    parse_tnauthlist,
)
from verifier.core.verify import verify_offline
from verifier.testing import (
    CA_KEY_USAGE,
    CA_KEY_USAGE_WITHOUT_KEY_CERT_SIGN,
    LEAF_KEY_USAGE,
    LEAF_KEY_USAGE_WITHOUT_DIGITAL_SIGNATURE,
    Signer,
    TestPKI,
    encode_tnauthlist,
    pem,
    write_pki,
)

STI_CA_CERTS = Path(__file__).parent / "conformance" / "sti-ca-certs"
STI_CA_FILES = sorted(STI_CA_CERTS.glob("*.pem"))
INDEX: list[dict[str, Any]] = json.loads((STI_CA_CERTS / "index.json").read_text())
DAY = dt.timedelta(days=1)


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _accepted(
    credential: Credential, leaf: x509.Certificate, spc: str = "1234", length: int = 3
) -> None:
    """What accepting a chain must report: the SPC, the leaf's fingerprint, the chain length."""
    info = credential.certificate
    assert info is not None
    assert (spc,) == info.spc
    assert _sha256(leaf) == info.fingerprint_sha256
    assert length == len(info.chain)
    assert leaf.public_key() == credential.public_key


def _key_kind(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return f"EC-{key.curve.name}"


# -- real STI-CA certificates ------------------------------------------------------------------


def test_sti_ca_set_is_complete() -> None:
    assert 49 == len(STI_CA_FILES)
    assert sorted(p.name for p in STI_CA_FILES) == sorted(e["file"] for e in INDEX)


@pytest.mark.parametrize("path", STI_CA_FILES, ids=lambda p: p.stem)
def test_sti_ca_certificate_loads(path: Path) -> None:
    certs = load_chain(path.read_bytes())
    assert 1 == len(certs)
    entry = next(e for e in INDEX if e["file"] == path.name)
    assert entry["sha256"] == _sha256(certs[0])
    assert entry["self_signed"] == (certs[0].subject == certs[0].issuer)
    assert entry["key"] == _key_kind(certs[0])


def test_trust_store_from_all_sti_ca_certificates() -> None:
    store = TrustStore.from_paths([STI_CA_CERTS])
    assert 49 == len(store.anchors)
    kinds = {_key_kind(c) for c in store.anchors}
    assert {"RSA-2048", "EC-secp256r1", "EC-secp384r1", "EC-secp521r1"} == kinds


def _issuer_links() -> list[tuple[str, str]]:
    links = []
    for entry in INDEX:
        for issuer in entry["issuer_in_set_and_signature_verifies"]:
            match = re.search(r"\(([0-9a-f]{8})\)$", issuer)
            assert match is not None, issuer
            links.append((entry["file"], match.group(1)))
    return links


ISSUER_LINKS = _issuer_links()


def test_index_lists_issuer_links() -> None:
    assert 42 <= len(ISSUER_LINKS)


@pytest.mark.parametrize(("file", "issuer_sha"), ISSUER_LINKS, ids=lambda v: str(v)[:40])
def test_sti_ca_certificate_is_issued_by_its_issuer(file: str, issuer_sha: str) -> None:
    cert = x509.load_pem_x509_certificate((STI_CA_CERTS / file).read_bytes())
    issuer_entry = next(e for e in INDEX if e["sha256"].startswith(issuer_sha))
    issuer = x509.load_pem_x509_certificate((STI_CA_CERTS / issuer_entry["file"]).read_bytes())
    cert.verify_directly_issued_by(issuer)  # raises on a bad link


# -- real SP certificates issued by Neustar, through the trust store ----------------------------

STI_LEAVES = Path(__file__).parent / "conformance" / "sti-leaves"
LEAF_INDEX: list[dict[str, Any]] = json.loads((STI_LEAVES / "index.json").read_text())
REAL_ROOTS = [
    cert
    for cert in (x509.load_pem_x509_certificate(p.read_bytes()) for p in STI_CA_FILES)
    if cert.subject == cert.issuer
]


def _ca_file(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((STI_CA_CERTS / name).read_bytes())


def _real_leaf(entry: dict[str, Any]) -> tuple[x509.Certificate, x509.Certificate, float]:
    """The leaf, its issuing CA (what an x5u serves with it) and a moment a month into its life."""
    leaf = x509.load_pem_x509_certificate((STI_LEAVES / entry["file"]).read_bytes())
    at = (leaf.not_valid_before_utc + 30 * DAY).timestamp()
    return leaf, _ca_file(entry["issued_by"]), at


def test_real_leaves_keep_their_provenance() -> None:
    assert sorted(p.name for p in STI_LEAVES.glob("*.pem")) == sorted(e["file"] for e in LEAF_INDEX)
    assert 3 == len(LEAF_INDEX)
    for entry in LEAF_INDEX:
        leaf = x509.load_pem_x509_certificate((STI_LEAVES / entry["file"]).read_bytes())
        assert entry["sha256"] == _sha256(leaf)
        report = f"CERTS/Neustar/CERTS/{entry['sha256']}/README.md"
        source = rf"martinisecurity/shaken-pki-reports:{re.escape(report)}@[0-9a-f]{{40}}"
        assert re.fullmatch(source, entry["source"]), entry["source"]
        assert entry["x5u"].startswith("https://")
        assert entry["key"] == _key_kind(leaf)
        # the named issuing CA and root are the ones in the real STI-CA set that signed them
        leaf.verify_directly_issued_by(_ca_file(entry["issued_by"]))
        _ca_file(entry["issued_by"]).verify_directly_issued_by(_ca_file(entry["root"]))


@pytest.mark.parametrize("entry", LEAF_INDEX, ids=lambda e: e["file"].removesuffix(".pem"))
def test_real_neustar_leaf_validates_through_the_trust_store(entry: dict[str, Any]) -> None:
    leaf, issuing_ca, at = _real_leaf(entry)
    root = _ca_file(entry["root"])
    store = TrustStore(REAL_ROOTS)
    credential = store.validate([leaf, issuing_ca], at)
    _accepted(credential, leaf, spc=entry["spc"], length=3)
    info = credential.certificate
    assert info is not None
    assert entry["issuer"] == info.issuer
    assert entry["subject"] == info.subject
    assert entry["sha256"] == info.fingerprint_sha256
    assert (
        entry["subject"],
        issuing_ca.subject.rfc4514_string(),
        root.subject.rfc4514_string(),
    ) == (info.chain)
    assert _sha256(root) == info.anchor
    assert (leaf, issuing_ca, root) == credential.certificates
    assert tuple(entry["policy_oids"]) == info.policy_oids
    assert bool(entry["policy_oids"]) == info.shaken_policy
    assert entry["not_before"] == info.not_before
    assert entry["not_after"] == info.not_after


@pytest.mark.parametrize("entry", LEAF_INDEX, ids=lambda e: e["file"].removesuffix(".pem"))
def test_real_neustar_leaf_with_the_policy_oid_required(entry: dict[str, Any]) -> None:
    # SHAKEN CA-2 leaves carry CP v1.3's OID, CA-1 leaves the first one, the 2020 RSA-CA leaf none.
    leaf, issuing_ca, at = _real_leaf(entry)
    strict = TrustStore(REAL_ROOTS, require_policy_oid=True)
    if entry["policy_oids"]:
        _accepted(strict.validate([leaf, issuing_ca], at), leaf, spc=entry["spc"], length=3)
    else:
        with pytest.raises(errors.PolicyOidMissing) as info:
            strict.validate([leaf, issuing_ca], at)
        assert 437 == info.value.sip_code


@pytest.mark.parametrize("entry", LEAF_INDEX, ids=lambda e: e["file"].removesuffix(".pem"))
def test_real_neustar_leaf_is_untrusted_without_its_root(entry: dict[str, Any]) -> None:
    leaf, issuing_ca, at = _real_leaf(entry)
    root = _ca_file(entry["root"])
    others = [cert for cert in REAL_ROOTS if cert != root]
    assert len(REAL_ROOTS) - 1 == len(others)
    with pytest.raises(errors.CertificateNotTrusted) as info:
        TrustStore(others).validate([leaf, issuing_ca], at)
    assert 437 == info.value.sip_code
    assert "cert_not_trusted" == info.value.slug
    assert f"(issuer: {issuing_ca.issuer.rfc4514_string()})" in str(info.value)


@pytest.mark.parametrize("entry", LEAF_INDEX, ids=lambda e: e["file"].removesuffix(".pem"))
def test_real_neustar_leaf_without_its_issuing_ca_is_untrusted(entry: dict[str, Any]) -> None:
    # The trust store holds roots: a leaf served without its STI-CA has no path to one.
    leaf, _issuing_ca, at = _real_leaf(entry)
    with pytest.raises(errors.CertificateNotTrusted) as info:
        TrustStore(REAL_ROOTS).validate([leaf], at)
    assert 437 == info.value.sip_code


@pytest.mark.parametrize("entry", LEAF_INDEX, ids=lambda e: e["file"].removesuffix(".pem"))
def test_real_neustar_leaf_outside_its_validity(entry: dict[str, Any]) -> None:
    leaf, issuing_ca, _at = _real_leaf(entry)
    store = TrustStore(REAL_ROOTS)
    with pytest.raises(errors.CertificateExpired) as expired:
        store.validate([leaf, issuing_ca], (leaf.not_valid_after_utc + DAY).timestamp())
    with pytest.raises(errors.CertificateNotYetValid) as early:
        store.validate([leaf, issuing_ca], (leaf.not_valid_before_utc - DAY).timestamp())
    assert (437, 437) == (expired.value.sip_code, early.value.sip_code)


# -- TNAuthList --------------------------------------------------------------------------------


def test_tnauthlist_spc() -> None:
    assert TNAuthList(spcs=("1234",), ranges=(), tns=()) == parse_tnauthlist(
        bytes.fromhex("3008a0061604") + b"1234"
    )


def test_tnauthlist_range() -> None:
    # [1] { IA5String start, INTEGER count }
    der = bytes.fromhex("3013a111300f160a") + b"2155550000" + bytes.fromhex("020164")
    assert TNAuthList(spcs=(), ranges=(("2155550000", 100),), tns=()) == parse_tnauthlist(der)


def test_tnauthlist_single_tn() -> None:
    der = bytes.fromhex("300fa20d160b") + b"12155551212"
    assert TNAuthList(spcs=(), ranges=(), tns=("12155551212",)) == parse_tnauthlist(der)


def test_tnauthlist_mixed() -> None:
    der = encode_tnauthlist(
        spcs=["1234", "567J"], ranges=[("12155550000", 1000)], tns=["12155551212"]
    )
    assert TNAuthList(
        spcs=("1234", "567J"), ranges=(("12155550000", 1000),), tns=("12155551212",)
    ) == parse_tnauthlist(der)


@pytest.mark.parametrize(
    ("spcs", "ranges", "tns"),
    [
        (["1"], [], []),
        (["1234"], [("12155550000", 2)], []),
        ([], [("1", 127), ("2", 128), ("3", 255), ("4", 256), ("5", 2**31)], []),
        (["A" * 200], [], ["12155551212", "*67#"]),  # long form lengths
        ([f"{i:04d}" for i in range(40)], [], []),
    ],
)
def test_encode_tnauthlist_round_trips(
    spcs: list[str], ranges: list[tuple[str, int]], tns: list[str]
) -> None:
    parsed = parse_tnauthlist(encode_tnauthlist(spcs, ranges, tns))
    assert TNAuthList(spcs=tuple(spcs), ranges=tuple(ranges), tns=tuple(tns)) == parsed


SPC = bytes.fromhex("a0061604") + b"1234"

MALFORMED_TNAUTHLISTS = {
    "empty input": b"",
    "wrong outer tag (SET)": bytes.fromhex("3108") + SPC,
    "outer IA5String (vector 004)": b"\x16\x04abcd",
    "truncated": encode_tnauthlist(["1234"])[:-1],
    "truncated header": b"\x30",
    "outer length overruns": bytes.fromhex("3009") + SPC,
    "trailing data": encode_tnauthlist(["1234"]) + b"\x00",
    "non-minimal length": bytes.fromhex("308108") + SPC,
    "non-minimal length (leading zero)": bytes.fromhex("30820008") + SPC,
    "indefinite length": bytes.fromhex("3080") + SPC + b"\x00\x00",
    "length of length too big": bytes.fromhex("3085000000000008") + SPC,
    "empty list": b"\x30\x00",
    "unknown tag [3]": bytes.fromhex("3008a3061604") + b"1234",
    "high tag number": bytes.fromhex("3009bf1f061604") + b"1234",
    "SPC not IA5String": bytes.fromhex("3008a0060c04") + b"1234",
    "empty SPC": bytes.fromhex("3004a0021600"),
    "SPC not printable": bytes.fromhex("3008a0061604") + b"12\x0034",
    "SPC with extra data": bytes.fromhex("300aa0081604") + b"1234" + b"\x05\x00",
    "range count 1": encode_tnauthlist(ranges=[("1215", 1)]),
    "range count 0": encode_tnauthlist(ranges=[("1215", 0)]),
    "range count negative": bytes.fromhex("300da10b30091604") + b"1215" + bytes.fromhex("0201ff"),
    "range count empty": bytes.fromhex("300ca10a30081604") + b"1215" + bytes.fromhex("0200"),
    "range count not INTEGER": bytes.fromhex("300da10b30091604") + b"1215" + b"\x16\x01\x05",
    "range without count": bytes.fromhex("300aa10830061604") + b"1215",
    "range not a SEQUENCE": bytes.fromhex("300da10b31091604") + b"1215" + b"\x02\x01\x05",
    "range with extra data": bytes.fromhex("300fa10d300b1604")
    + b"1215"
    + bytes.fromhex("0201050500"),
}


@pytest.mark.parametrize("der", MALFORMED_TNAUTHLISTS.values(), ids=list(MALFORMED_TNAUTHLISTS))
def test_tnauthlist_malformed(der: bytes) -> None:
    with pytest.raises(errors.TNAuthListMalformed) as info:
        parse_tnauthlist(der)
    assert errors.TNAuthListMalformed is type(info.value)


# -- chain validation ---------------------------------------------------------------------------


def test_default_chain_passes(pki: TestPKI, trust: TrustStore, now: int) -> None:
    credential = trust.validate(pki.signer.chain, now)
    info = credential.certificate
    assert info is not None
    leaf = pki.signer.cert
    assert ("1234",) == info.spc
    assert _sha256(leaf) == info.fingerprint_sha256
    assert leaf.not_valid_after_utc.isoformat() == info.not_after
    assert leaf.not_valid_before_utc.isoformat() == info.not_before
    assert info.shaken_policy
    assert (SHAKEN_POLICY_OID.dotted_string,) == info.policy_oids
    assert _sha256(pki.root.cert) == info.anchor
    assert 3 == len(info.chain)
    assert format(leaf.serial_number, "x") == info.serial
    assert leaf.public_key() == credential.public_key
    assert () == credential.warnings
    # the chain's validity is the intersection of its certificates'
    assert leaf.not_valid_after_utc.timestamp() == credential.not_after
    json.dumps(info.to_dict())


def test_tn_ranges_and_tns_are_reported(pki: TestPKI, trust: TrustStore, now: int) -> None:
    value = encode_tnauthlist(["1234"], [("12155550000", 100)], ["12155551212"])
    info = trust.validate(pki.ca.issue_leaf(tnauthlist=value).chain, now).certificate
    assert info is not None
    assert (("12155550000", 100),) == info.tn_ranges
    assert ("12155551212",) == info.tns
    assert [{"start": "12155550000", "count": 100}] == info.to_dict()["tn_ranges"]


def test_crl_url_is_reported(pki: TestPKI, trust: TrustStore, now: int) -> None:
    url = "https://crl.example.net/sti-ca.crl"
    info = trust.validate(pki.ca.issue_leaf(crl_url=url).chain, now).certificate
    assert info is not None
    assert (url,) == info.crl_urls


def _at(now: int, days: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, dt.UTC) + days * DAY


def test_expired_leaf(pki: TestPKI, trust: TrustStore, now: int) -> None:
    signer = pki.ca.issue_leaf(not_before=_at(now, -30), not_after=_at(now, -1))
    with pytest.raises(errors.CertificateExpired):
        trust.validate(signer.chain, now)


def test_not_yet_valid_leaf(pki: TestPKI, trust: TrustStore, now: int) -> None:
    signer = pki.ca.issue_leaf(not_before=_at(now, 30), not_after=_at(now, 60))
    with pytest.raises(errors.CertificateNotYetValid):
        trust.validate(signer.chain, now)


def test_expired_intermediate(pki: TestPKI, trust: TrustStore, now: int) -> None:
    ca = pki.root.issue_ca("expired STI-CA", not_before=_at(now, -30), not_after=_at(now, -1))
    with pytest.raises(errors.CertificateExpired):
        trust.validate(ca.issue_leaf().chain, now)


def test_validity_is_checked_at_the_given_moment(pki: TestPKI, trust: TrustStore, now: int) -> None:
    # An expired leaf is fine when verifying a recorded call made while it was valid.
    signer = pki.ca.issue_leaf(not_before=_at(now, -0.5), not_after=_at(now, -0.25))
    _accepted(trust.validate(signer.chain, now - 86400 * 0.4), signer.cert)
    with pytest.raises(errors.CertificateExpired):
        trust.validate(signer.chain, now)


def test_no_tnauthlist(pki: TestPKI, trust: TrustStore, now: int) -> None:
    with pytest.raises(errors.TNAuthListMissing):
        trust.validate(pki.ca.issue_leaf(tnauthlist=None).chain, now)


def test_tnauthlist_without_spc(pki: TestPKI, trust: TrustStore, now: int) -> None:
    value = encode_tnauthlist(tns=["12155551212"], ranges=[("12155550000", 10)])
    with pytest.raises(errors.TNAuthListMissing):
        trust.validate(pki.ca.issue_leaf(None, tnauthlist=value).chain, now)


def test_malformed_tnauthlist(pki: TestPKI, trust: TrustStore, now: int) -> None:
    with pytest.raises(errors.TNAuthListMalformed):
        trust.validate(pki.ca.issue_leaf(tnauthlist=b"\x16\x04abcd").chain, now)


def test_wrong_policy_oid(pki: TestPKI, now: int) -> None:
    chain = pki.ca.issue_leaf(policy_oid=x509.ObjectIdentifier("1.2.3.4")).chain
    info = TrustStore([pki.root.cert]).validate(chain, now).certificate
    assert info is not None
    assert ("1.2.3.4",) == info.policy_oids
    assert not info.shaken_policy
    strict = TrustStore([pki.root.cert], require_policy_oid=True)
    with pytest.raises(errors.PolicyOidMissing):
        strict.validate(chain, now)
    strict.validate(pki.signer.chain, now)


SHAKEN_CP_VERSIONS = [
    "2.16.840.1.114569.1.1.1",
    "2.16.840.1.114569.1.1.3",
    "2.16.840.1.114569.1.1.4",
]
NOT_SHAKEN_CP = [
    "2.16.840.1.114569.1.1",
    "2.16.840.1.114569.1.1.0",
    "2.16.840.1.114569.1.1.3.1",
    "2.16.840.1.114569.1.10",
    "2.16.840.1.114569.1.2.1",
]


@pytest.mark.parametrize("oid", SHAKEN_CP_VERSIONS)
def test_policy_oid_of_any_shaken_cp_version(pki: TestPKI, now: int, oid: str) -> None:
    signer = pki.ca.issue_leaf(policy_oid=x509.ObjectIdentifier(oid))
    credential = TrustStore([pki.root.cert], require_policy_oid=True).validate(signer.chain, now)
    _accepted(credential, signer.cert)
    assert credential.certificate is not None
    assert credential.certificate.shaken_policy
    assert (oid,) == credential.certificate.policy_oids


@pytest.mark.parametrize("oid", NOT_SHAKEN_CP)
def test_policy_oid_beside_the_shaken_cp_arc(pki: TestPKI, now: int, oid: str) -> None:
    chain = pki.ca.issue_leaf(policy_oid=x509.ObjectIdentifier(oid)).chain
    info = TrustStore([pki.root.cert]).validate(chain, now).certificate
    assert info is not None
    assert not info.shaken_policy
    with pytest.raises(errors.PolicyOidMissing) as refused:
        TrustStore([pki.root.cert], require_policy_oid=True).validate(chain, now)
    assert f"(policies: {oid})" in str(refused.value)


def test_no_policy_extension_passes_by_default(pki: TestPKI, trust: TrustStore, now: int) -> None:
    signer = pki.ca.issue_leaf(policy_oid=None)
    credential = trust.validate(signer.chain, now)
    _accepted(credential, signer.cert)
    assert credential.certificate is not None
    assert () == credential.certificate.policy_oids


def test_rsa_2048_ca(pki: TestPKI, trust: TrustStore, now: int) -> None:
    signer = pki.root.issue_ca("RSA STI-CA", key_type="rsa2048").issue_leaf()
    _accepted(trust.validate(signer.chain, now), signer.cert)


@pytest.mark.parametrize("root_key", ["p384", "p521"])
def test_other_curve_roots(root_key: Any, now: int) -> None:
    other = TestPKI.create(root_key=root_key, spc="567J")
    credential = TrustStore([other.root.cert]).validate(other.signer.chain, now)
    _accepted(credential, other.signer.cert, spc="567J")
    assert credential.certificate is not None
    assert _sha256(other.root.cert) == credential.certificate.anchor


def test_ca_with_any_extended_key_usage(pki: TestPKI, trust: TrustStore, now: int) -> None:
    signer = pki.root.issue_ca("EKU STI-CA", any_eku=True).issue_leaf()
    _accepted(trust.validate(signer.chain, now), signer.cert)


def test_critical_tnauthlist(pki: TestPKI, trust: TrustStore, now: int) -> None:
    signer = pki.ca.issue_leaf(tnauthlist_critical=True)
    _accepted(trust.validate(signer.chain, now), signer.cert)


def test_leaf_without_key_usage(pki: TestPKI, trust: TrustStore, now: int) -> None:
    with pytest.raises(errors.CertificateNotTrusted):
        trust.validate(pki.ca.issue_leaf(key_usage=False).chain, now)


# keyUsage (ATIS-1000080): present but lacking the one bit each certificate needs.


def _verdict(signer: Signer, trust: TrustStore, now: int) -> tuple[str, int | None, str | None]:
    result = verify_offline(signer.identity(iat=now), now=now, chain=signer.chain, trust=trust)
    reason = result.reason
    return result.verstat, reason.sip_code if reason else None, reason.slug if reason else None


def test_leaf_key_usage_without_digital_signature(
    pki: TestPKI, trust: TrustStore, now: int
) -> None:
    signer = pki.ca.issue_leaf(key_usage=LEAF_KEY_USAGE_WITHOUT_DIGITAL_SIGNATURE)
    ku = signer.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not ku.digital_signature
    assert ku.content_commitment
    with pytest.raises(errors.CertificateNotTrusted, match="digitalSignature") as info:
        trust.validate(signer.chain, now)
    assert 437 == info.value.sip_code
    assert ("TN-Validation-Failed", 437, "cert_not_trusted") == _verdict(signer, trust, now)


def test_leaf_key_usage_with_more_than_digital_signature(
    pki: TestPKI, trust: TrustStore, now: int
) -> None:
    extra = x509.KeyUsage(True, True, False, False, False, False, False, False, False)
    signer = pki.ca.issue_leaf(key_usage=extra)
    info = trust.validate(signer.chain, now).certificate
    assert info is not None
    assert ("1234",) == info.spc
    assert _sha256(signer.cert) == info.fingerprint_sha256
    assert ("TN-Validation-Passed", None, None) == _verdict(signer, trust, now)


def test_ca_key_usage_without_key_cert_sign(pki: TestPKI, trust: TrustStore, now: int) -> None:
    ca = pki.root.issue_ca(
        "STI-CA without keyCertSign", key_usage=CA_KEY_USAGE_WITHOUT_KEY_CERT_SIGN
    )
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not ku.key_cert_sign
    assert ku.crl_sign
    signer = ca.issue_leaf()
    with pytest.raises(errors.CertificateNotTrusted, match="keyCertSign") as info:
        trust.validate(signer.chain, now)
    assert 437 == info.value.sip_code
    assert ("TN-Validation-Failed", 437, "cert_not_trusted") == _verdict(signer, trust, now)


def test_default_key_usages(pki: TestPKI) -> None:
    assert LEAF_KEY_USAGE == pki.signer.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    for cert in (pki.ca.cert, pki.root.cert):
        assert CA_KEY_USAGE == cert.extensions.get_extension_for_class(x509.KeyUsage).value


def test_ca_key_usage_with_key_cert_sign_passes(pki: TestPKI, trust: TrustStore, now: int) -> None:
    only = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
    signer = pki.root.issue_ca("STI-CA with keyCertSign only", key_usage=only).issue_leaf()
    assert ("TN-Validation-Passed", None, None) == _verdict(signer, trust, now)


def test_untrusted_root(pki: TestPKI, trust: TrustStore, now: int) -> None:
    with pytest.raises(errors.CertificateNotTrusted):
        trust.validate(pki.untrusted_root().issue_leaf().chain, now)


def test_missing_intermediate(pki: TestPKI, trust: TrustStore, now: int) -> None:
    with pytest.raises(errors.CertificateNotTrusted):
        trust.validate([pki.signer.cert], now)


def test_leaf_with_p384_key(pki: TestPKI, trust: TrustStore, now: int) -> None:
    with pytest.raises(errors.UnsupportedKey):
        trust.validate(pki.ca.issue_leaf(key_type="p384").chain, now)


def test_empty_chain(trust: TrustStore, now: int) -> None:
    with pytest.raises(errors.CertificateInvalid):
        trust.validate([], now)


def test_trust_store_needs_an_anchor() -> None:
    with pytest.raises(ValueError, match="at least one"):
        TrustStore([])


# -- Credential --------------------------------------------------------------------------------


def test_credential_check_time(pki: TestPKI, trust: TrustStore, now: int) -> None:
    credential = trust.validate(pki.signer.chain, now)
    credential.check_time(now)
    credential.check_time(credential.not_after)
    credential.check_time(credential.not_before)
    with pytest.raises(errors.CertificateExpired):
        credential.check_time(credential.not_after + 1)
    with pytest.raises(errors.CertificateNotYetValid):
        credential.check_time(credential.not_before - 1)


def test_credential_bounds_default_to_forever(pki: TestPKI) -> None:
    credential = Credential(public_key=pki.signer.key.public_key(), certificate=None)
    credential.check_time(0)
    credential.check_time(1e12)


def test_credential_from_public_key(pki: TestPKI) -> None:
    credential = credential_from_public_key(pki.signer.key.public_key())
    assert credential.certificate is None
    assert 1 == len(credential.warnings)
    with pytest.raises(errors.UnsupportedKey):
        credential_from_public_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(errors.UnsupportedKey):
        credential_from_public_key(pki.signer.cert)


# -- loading -----------------------------------------------------------------------------------


def test_load_chain_pem(pki: TestPKI) -> None:
    assert list(pki.signer.chain) == load_chain(pki.signer.chain_pem())


def test_load_chain_der(pki: TestPKI) -> None:
    assert [pki.signer.cert] == load_chain(pki.signer.cert.public_bytes(Encoding.DER))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PUBLIC KEY-----\nZ2FyYmFnZQ==\n-----END PUBLIC KEY-----\n",
    ],
    ids=["empty", "garbage", "bad-pem-body", "no-certificate"],
)
def test_load_chain_garbage(data: bytes) -> None:
    with pytest.raises(errors.CertificateInvalid):
        load_chain(data)


def test_load_chain_too_many_certificates(pki: TestPKI) -> None:
    assert 8 == len(load_chain(pem(pki.signer.cert) * 8))
    with pytest.raises(errors.CertificateInvalid, match="at most 8"):
        load_chain(pem(pki.signer.cert) * 9)


def test_load_certificates_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_certificates([tmp_path / "missing.pem"])
    with pytest.raises(ValueError, match=r"no \.pem"):
        load_certificates([tmp_path])
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match=r"bad\.pem"):
        load_certificates([bad])


# -- the test PKI on disk ----------------------------------------------------------------------


def test_write_pki_private_keys_are_0600(tmp_path: Path, now: int) -> None:
    pki = write_pki(tmp_path)
    keys = sorted(tmp_path.rglob("*.key"))
    assert {"root.key", "ca.key", "sp.key", "server.key", "expired.key"} <= {k.name for k in keys}
    for key in keys:
        assert 0o600 == stat.S_IMODE(key.stat().st_mode), key
    for cert in tmp_path.rglob("*.pem"):
        assert b"PRIVATE KEY" not in cert.read_bytes(), cert
    trust = TrustStore.from_paths([tmp_path / "root.pem"])
    chain = load_chain((tmp_path / "sp.pem").read_bytes())
    assert pki.signer.cert == chain[0]
    _accepted(trust.validate(chain, now), pki.signer.cert)


def test_a_ca_certificate_cannot_sign_passports(pki: TestPKI, trust: TrustStore) -> None:
    # An SP certificate is an end entity (ATIS-1000080): a CA key signing a PASSporT is
    # refused even with a TNAuthList and digitalSignature.
    ca = pki.ca.issue_ca("a CA used as a signer")
    leaf = (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(pki.ca.cert.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.cert.not_valid_before_utc)
        .not_valid_after(ca.cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.UnrecognizedExtension(TNAUTHLIST_OID, encode_tnauthlist(["1234"])),
            critical=False,
        )
        .sign(pki.ca.key, hashes.SHA256())
    )
    with pytest.raises(errors.CertificateNotTrusted, match="is a CA"):
        trust.validate([leaf, pki.ca.cert], time.time())


# -- messages a person reads (issue 15 item 5) ---------------------------------------------------


def test_untrusted_chain_reads_plainly_and_keeps_the_library_text(
    pki: TestPKI, trust: TrustStore, now: int
) -> None:
    other = pki.untrusted_root()
    with pytest.raises(errors.CertificateNotTrusted) as caught:
        trust.validate(other.issue_leaf().chain, now)
    plain, _, library = caught.value.detail.partition(" (x509: ")
    assert (
        "certificate chain does not lead to a trusted STI-PA root (issuer: CN=untrusted root,"
        "O=verifier test PKI,C=US)"
    ) == plain
    assert "candidates exhausted" in library


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_key_usage", "a certificate in the chain lacks the required keyUsage extension"),
        (
            "reversed",
            "certificate profile not met: the signing certificate is a CA"
            " (basicConstraints cA is true)",
        ),
        (
            "missing_intermediate",
            "certificate chain does not lead to a trusted STI-PA root"
            " (issuer: CN=verifier test STI-CA,O=verifier test PKI,C=US)",
        ),
    ],
)
def test_chain_errors_read_plainly(
    pki: TestPKI, trust: TrustStore, now: int, case: str, expected: str
) -> None:
    chain = {
        "no_key_usage": pki.ca.issue_leaf(key_usage=False).chain,
        "reversed": list(reversed(pki.signer.chain)),
        "missing_intermediate": [pki.signer.cert],
    }[case]
    with pytest.raises(errors.CertificateNotTrusted) as caught:
        trust.validate(chain, now)
    plain, _, library = caught.value.detail.partition(" (x509: ")
    assert expected == plain
    assert library.startswith("validation failed: ")
