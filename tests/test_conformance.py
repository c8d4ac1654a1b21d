"""Externally authored conformance vectors (tests/conformance/README.md): each one, verified
offline as of its iat, must reach the verdict its meta.json's ``strict_expectation`` gives."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from verifier.core import errors
from verifier.core.certs import TNAUTHLIST_OID, TrustStore, parse_tnauthlist
from verifier.core.errors import TN_VALIDATION_PASSED
from verifier.core.verify import CallInfo, Result, verify_offline
from verifier.testing import b64url

VECTORS = Path(__file__).parent / "conformance" / "vectors"
VECTOR_DIRS = sorted(p for p in VECTORS.iterdir() if p.is_dir())

# Not part of the shared expectation (which gives only SIP codes): the check that fails first
# in this verifier, pinned so that a change of the order of checks is noticed.
FIRST_FAILURE = {
    "001-rfc8225-appA-es256": "invalid_signature",
    "002-rfc8224-rfc8225-s7-1-compact-example": "invalid_ppt",
    "003-libstirshaken-ref-passport": "invalid_claims",
    # The vector's point is the TNAuthList that holds a bare IA5String; its leaf also lacks the
    # keyUsage extension ATIS-1000080 requires, which the chain check refuses first (437 too).
    "004-libstirshaken-readme-attest-b": "cert_not_trusted",
    "005-libstirshaken-readme-jwt-check": "invalid_tn",
    "006-cgrates-valid-filepath-x5u": "info_invalid",
    "007-cgrates-tampered-orig": "invalid_signature",
    "009-cgrates-example-org-wrong-key": "invalid_signature",
    "010-sems-valid-empty-tn": "invalid_tn",
    "011-sems-info-x5u-mismatch": "x5u_info_mismatch",
    "012-sems-alg-param-es25": "unsupported_alg",
    "013-sems-ppt-param-shake": "no_shaken_passport",
    "014-sems-header-alg-es266": "unsupported_alg",
    "015-sems-header-json-invalid": "passport_malformed",
    # 016 and 017: the signature is checked right after alg when the key is supplied out of
    # band (verify.py module docstring), and the SEMS fixtures reuse one signature.
    "016-sems-payload-dest-not-object": "invalid_signature",
    "017-sems-attest-n": "invalid_signature",
    "018-sems-compact-form": "compact_form",
    "019-asterisk-legacy-der-sig-unpadded": "identity_malformed",
    "020-asterisk-legacy-der-sig-padded": "identity_malformed",
}


def _meta(vector: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((vector / "meta.json").read_text())
    return meta


def _public_key(path: Path) -> Any:
    data = path.read_bytes()
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        # 001's key.pem is the RFC 8225 A.1 private key as published: use its public half.
        return serialization.load_pem_private_key(data, None).public_key()


def _moment(vector: Path, meta: dict[str, Any]) -> float:
    """The vector's iat + 2 s. 016 (claim misspelt 'ia') and 018 (compact form) have none:
    a day into their certificate's validity, where the upstream tests' fixed clock is."""
    if meta["iat"] is not None:
        return int(meta["iat"]) + 2
    cert = x509.load_pem_x509_certificate((vector / "cert.pem").read_bytes())
    return (cert.not_valid_before_utc + dt.timedelta(days=1)).timestamp()


def _verify(vector: Path, call: CallInfo | None = None) -> Result:
    meta = _meta(vector)
    identity = (vector / "identity.txt").read_text().strip()
    # Some sources gave only the bare JWS (README): no ';' means no Identity parameters.
    bare = ";" not in identity
    now = _moment(vector, meta)
    if (vector / "key.pem").exists():
        key = _public_key(vector / "key.pem")
        return verify_offline(identity, now=now, call=call, public_key=key, bare=bare)
    if (vector / "key-public.pem").exists():
        key = _public_key(vector / "key-public.pem")
        return verify_offline(identity, now=now, call=call, public_key=key, bare=bare)
    chain = x509.load_pem_x509_certificates((vector / "cert.pem").read_bytes())
    anchor = vector / "root.pem" if (vector / "root.pem").exists() else vector / "cert.pem"
    trust = TrustStore(x509.load_pem_x509_certificates(anchor.read_bytes()))
    return verify_offline(identity, now=now, call=call, chain=chain, trust=trust, bare=bare)


def test_all_twenty_vectors_are_there() -> None:
    assert 20 == len(VECTOR_DIRS)
    assert sorted(FIRST_FAILURE) == sorted(
        v.name for v in VECTOR_DIRS if not _meta(v)["strict_expectation"]["passes"]
    )


@pytest.mark.parametrize("vector", VECTOR_DIRS, ids=lambda p: p.name)
def test_vector_keeps_its_provenance(vector: Path) -> None:
    meta = _meta(vector)
    assert isinstance(meta["source"], str)
    assert meta["source"]
    assert (vector / "identity.txt").is_file()


@pytest.mark.parametrize("vector", VECTOR_DIRS, ids=lambda p: p.name)
def test_vector_reaches_strict_expectation(vector: Path) -> None:
    expectation = _meta(vector)["strict_expectation"]
    result = _verify(vector)
    if expectation["passes"]:
        assert TN_VALIDATION_PASSED == result.verstat, result.reason
        assert result.reason is None
    else:
        assert TN_VALIDATION_PASSED != result.verstat
        assert result.reason is not None
        assert result.reason.sip_code in expectation["sip_codes"], result.reason
        assert FIRST_FAILURE[vector.name] == result.reason.slug, result.reason


VECTOR_008 = VECTORS / "008-cgrates-example-org-inline-key"


def test_vector_008_passes_for_its_called_number() -> None:
    result = _verify(VECTOR_008, CallInfo(from_="1001", to="1002"))
    assert TN_VALIDATION_PASSED == result.verstat
    assert {"orig": "from", "dest": "to"} == result.matched
    assert "A" == result.attest
    assert result.certificate is None  # a bare key: the result warns that nothing was checked
    assert any("bare public key" in w for w in result.warnings)


def test_vector_008_fails_for_another_called_number() -> None:
    result = _verify(VECTOR_008, CallInfo(to="1003"))
    assert result.reason is not None
    assert 438 == result.reason.sip_code
    assert errors.DestMismatch.slug == result.reason.slug
    assert errors.NO_TN_VALIDATION == result.verstat


def test_vector_003_alternative_signature_as_bare_passport() -> None:
    # The same header.payload with another valid signature, as a bare PASSporT.
    vector = VECTORS / "003-libstirshaken-ref-passport"
    token = (vector / "alt_passport.txt").read_text().strip()
    chain = x509.load_pem_x509_certificates((vector / "cert.pem").read_bytes())
    trust = TrustStore(x509.load_pem_x509_certificates((vector / "root.pem").read_bytes()))
    now = int(_meta(vector)["iat"]) + 2
    result = verify_offline(token, now=now, chain=chain, trust=trust, bare=True)
    assert result.reason is not None
    assert errors.InvalidClaims.slug == result.reason.slug


def test_vector_004_tnauthlist_is_a_bare_string() -> None:
    # What 004 is about, checked on its own: the extension is an IA5String, not a SEQUENCE.
    cert = x509.load_pem_x509_certificate(
        (VECTORS / "004-libstirshaken-readme-attest-b" / "cert.pem").read_bytes()
    )
    ext = cert.extensions.get_extension_for_oid(TNAUTHLIST_OID).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    with pytest.raises(errors.TNAuthListMalformed):
        parse_tnauthlist(ext.value)


def test_vector_019_020_signatures_are_der_not_raw() -> None:
    # Even with the missing ';' repaired, the legacy Asterisk signatures are refused.
    for name in ("019-asterisk-legacy-der-sig-unpadded", "020-asterisk-legacy-der-sig-padded"):
        vector = VECTORS / name
        identity = (vector / "identity.txt").read_text().strip().replace(">alg=", ">;alg=")
        chain = x509.load_pem_x509_certificates((vector / "cert.pem").read_bytes())
        now = int(_meta(vector)["iat"]) + 2
        result = verify_offline(identity, now=now, public_key=chain[0].public_key())
        assert result.reason is not None
        assert errors.InvalidEncoding.slug == result.reason.slug


# 016 and 017 above stop at their (reused) signature. Here the same header and payload bytes
# are signed by a key of our own, so that the payload defects they were published for are what
# fails; one defect at a time, and with every defect repaired the vector passes (a control).
SEMS_ORIG = (b'"orig":{"tn":""}', b'"orig":{"tn":"12155551212"}')
SEMS_016_DEST = (b'"dest":"dss"', b'"dest":{"tn":["12155551213"]}')
SEMS_016_IAT = (b'"ia":', b'"iat":')
SEMS_017_DEST = (b'"dest":{"tn":"d"}', b'"dest":{"tn":["12155551213"]}')
SEMS_017_ATTEST = (b'"attest":"N"', b'"attest":"C"')


def _resigned(vector: Path, repairs: list[tuple[bytes, bytes]]) -> Result:
    token, _, params = (vector / "identity.txt").read_text().strip().partition(";")
    h64, p64, _signature = token.split(".")
    payload = base64.urlsafe_b64decode(p64 + "=" * (-len(p64) % 4))
    for old, new in repairs:
        assert old in payload, old
        payload = payload.replace(old, new)
    if repairs:
        p64 = b64url(payload)
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.sign(f"{h64}.{p64}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signed = f"{h64}.{p64}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))};{params}"
    now = 1602055742 + 2  # both vectors' fixtures: 017's iat (016 misspells it)
    return verify_offline(signed, now=now, public_key=key.public_key())


@pytest.mark.parametrize(
    ("name", "repairs", "slug", "detail"),
    [
        ("016-sems-payload-dest-not-object", [], "invalid_tn", "orig.tn ''"),
        ("016-sems-payload-dest-not-object", [SEMS_ORIG], "invalid_claims", "dest is a str"),
        ("016-sems-payload-dest-not-object", [SEMS_ORIG, SEMS_016_DEST], "invalid_claims", "iat"),
        ("017-sems-attest-n", [], "invalid_attest", "attest is 'N'"),
        ("017-sems-attest-n", [SEMS_ORIG], "invalid_attest", "attest is 'N'"),
        ("017-sems-attest-n", [SEMS_ORIG, SEMS_017_DEST], "invalid_attest", "attest is 'N'"),
    ],
    ids=lambda v: v if isinstance(v, str) else f"{len(v)}-repairs",
)
def test_vectors_016_017_payload_defects_with_a_valid_signature(
    name: str, repairs: list[tuple[bytes, bytes]], slug: str, detail: str
) -> None:
    result = _resigned(VECTORS / name, repairs)
    assert result.reason is not None
    assert (438, slug) == (result.reason.sip_code, result.reason.slug), result.reason
    assert detail in result.reason.detail
    assert errors.NO_TN_VALIDATION == result.verstat


@pytest.mark.parametrize(
    ("name", "repairs"),
    [
        ("016-sems-payload-dest-not-object", [SEMS_ORIG, SEMS_016_DEST, SEMS_016_IAT]),
        ("017-sems-attest-n", [SEMS_ORIG, SEMS_017_DEST, SEMS_017_ATTEST]),
    ],
    ids=["016", "017"],
)
def test_vectors_016_017_pass_once_repaired(name: str, repairs: list[tuple[bytes, bytes]]) -> None:
    result = _resigned(VECTORS / name, repairs)
    assert TN_VALIDATION_PASSED == result.verstat, result.reason
