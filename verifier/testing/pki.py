"""A test STI PKI and PASSporT signer, for tests, benchmarks and the demo.

Not for production keys. :class:`TestPKI` makes an STI-PA-like root, an STI-CA
intermediate and SP leaf certificates carrying a TNAuthList SPC; :meth:`TestPKI.issue`
makes the variants a verifier must refuse (expired, no TNAuthList, wrong policy...).
:class:`Signer` signs PASSporTs and Identity header values with any claims, including
ones no honest signer would produce.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core import errors
from ..core.certs import SHAKEN_POLICY_OID, TNAUTHLIST_OID, Credential, TrustStore

__all__ = [
    "CA",
    "CA_KEY_USAGE",
    "CA_KEY_USAGE_WITHOUT_KEY_CERT_SIGN",
    "LEAF_KEY_USAGE",
    "LEAF_KEY_USAGE_WITHOUT_DIGITAL_SIGNATURE",
    "ChainSource",
    "Signer",
    "TestPKI",
    "b64url",
    "encode_tnauthlist",
    "identity_header",
    "pem",
    "sign_jws",
    "write_pki",
    "write_preload",
]

KeyType = Literal["p256", "p384", "p521", "rsa2048"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_DAY = dt.timedelta(days=1)

# keyUsage(digital_signature, content_commitment, key_encipherment, data_encipherment,
# key_agreement, key_cert_sign, crl_sign, encipher_only, decipher_only)
LEAF_KEY_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
"""An SP certificate's keyUsage (ATIS-1000080): digitalSignature."""
CA_KEY_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
"""A CA's keyUsage: keyCertSign and cRLSign."""
LEAF_KEY_USAGE_WITHOUT_DIGITAL_SIGNATURE = x509.KeyUsage(
    False, True, False, False, False, False, False, False, False
)
"""keyUsage present but lacking digitalSignature (contentCommitment only): a bad leaf."""
CA_KEY_USAGE_WITHOUT_KEY_CERT_SIGN = x509.KeyUsage(
    True, False, False, False, False, False, True, False, False
)
"""keyUsage present but lacking keyCertSign (digitalSignature, cRLSign): a bad CA."""


def _key(kind: KeyType) -> PrivateKey:
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
    return ec.generate_private_key(curve)


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP521R1):
        return hashes.SHA512()
    return hashes.SHA256()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def encode_tnauthlist(
    spcs: Iterable[str] = (), ranges: Iterable[tuple[str, int]] = (), tns: Iterable[str] = ()
) -> bytes:
    """DER TNAuthorizationList (RFC 8226, explicit tags): SPC [0], range [1], TN [2]."""
    entries = b""
    for spc in spcs:
        entries += _tlv(0xA0, _tlv(0x16, spc.encode("ascii")))
    for start, count in ranges:
        count_der = count.to_bytes((count.bit_length() + 8) // 8, "big")
        entries += _tlv(0xA1, _tlv(0x30, _tlv(0x16, start.encode("ascii")) + _tlv(0x02, count_der)))
    for tn in tns:
        entries += _tlv(0xA2, _tlv(0x16, tn.encode("ascii")))
    return _tlv(0x30, entries)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "verifier test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass(frozen=True, slots=True)
class CA:
    """A certificate authority of the test PKI: its key, certificate and chain to the root."""

    key: PrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # from this CA up to, not including, the root

    def _builder(
        self, subject: str, public_key: Any, not_before: dt.datetime, not_after: dt.datetime
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def issue_ca(
        self,
        name: str,
        *,
        key_type: KeyType = "p256",
        any_eku: bool = False,
        key_usage: x509.KeyUsage | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> CA:
        """A CA under this one; ``key_usage`` replaces its keyCertSign + cRLSign keyUsage."""
        now = dt.datetime.now(dt.UTC)
        key = _key(key_type)
        builder = (
            self._builder(
                name, key.public_key(), not_before or now - _DAY, not_after or now + 3650 * _DAY
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage or CA_KEY_USAGE, critical=True)
        )
        if any_eku:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.ObjectIdentifier("2.5.29.37.0")]), critical=False
            )
        cert = builder.sign(self.key, _hash_for(self.key))
        return CA(key=key, cert=cert, chain=(cert, *self.chain))

    def issue_leaf(
        self,
        spc: str | None = "1234",
        *,
        x5u: str = "https://127.0.0.1:8443/sp.pem",
        tnauthlist: bytes | Literal["default"] | None = "default",
        tnauthlist_critical: bool = False,
        policy_oid: x509.ObjectIdentifier | None = SHAKEN_POLICY_OID,
        key_usage: bool | x509.KeyUsage = True,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        crl_url: str | None = None,
        key_type: KeyType = "p256",
    ) -> Signer:
        """An SP certificate (and its key, as a Signer) with a TNAuthList naming ``spc``.

        ``key_usage``: True for digitalSignature only, False for no keyUsage extension, or
        the extension to carry (e.g. :data:`LEAF_KEY_USAGE_WITHOUT_DIGITAL_SIGNATURE`)."""
        now = dt.datetime.now(dt.UTC)
        key = _key(key_type)
        subject = f"SHAKEN {spc}" if spc else "SHAKEN test leaf"
        builder = self._builder(
            subject, key.public_key(), not_before or now - _DAY, not_after or now + 365 * _DAY
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if key_usage is not False:
            builder = builder.add_extension(
                LEAF_KEY_USAGE if key_usage is True else key_usage, critical=True
            )
        value = encode_tnauthlist([spc] if spc else []) if tnauthlist == "default" else tnauthlist
        if value is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(TNAUTHLIST_OID, value), critical=tnauthlist_critical
            )
        if policy_oid is not None:
            builder = builder.add_extension(
                x509.CertificatePolicies([x509.PolicyInformation(policy_oid, None)]),
                critical=False,
            )
        if crl_url is not None:
            builder = builder.add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(crl_url)], None, None, None
                        )
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, _hash_for(self.key))
        return Signer(key=key, cert=cert, chain=(cert, *self.chain), x5u=x5u)  # type: ignore[arg-type]


def _self_signed(name: str, key_type: KeyType) -> CA:
    now = dt.datetime.now(dt.UTC)
    key = _key(key_type)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 7300 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hash_for(key))
    )
    return CA(key=key, cert=cert, chain=())


@dataclass(slots=True)
class Signer:
    """An SP's signing key and certificate chain (leaf first), with the x5u that serves it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    x5u: str

    def chain_pem(self) -> bytes:
        return b"".join(pem(c) for c in self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def passport(
        self,
        *,
        orig: str = "12155551212",
        dest: str | Sequence[str] = "12155551213",
        attest: str = "A",
        iat: int | None = None,
        origid: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        drop: Iterable[str] = (),
    ) -> str:
        """A signed PASSporT (JWS). ``header``/``claims`` override or add fields; ``drop``
        removes claims or header fields by name."""
        protected: dict[str, Any] = {
            "alg": "ES256",
            "ppt": "shaken",
            "typ": "passport",
            "x5u": self.x5u,
        }
        protected.update(header or {})
        body: dict[str, Any] = {
            "attest": attest,
            "dest": {"tn": [dest] if isinstance(dest, str) else list(dest)},
            "iat": int(time.time()) if iat is None else iat,
            "orig": {"tn": orig},
            "origid": origid or str(uuid.uuid4()),
        }
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
            protected.pop(name, None)
        return sign_jws(self.key, protected, body)

    def identity(self, *, params: str | None = None, **kwargs: Any) -> str:
        """A full Identity header value: PASSporT plus ``;info=<x5u>;alg=ES256;ppt="shaken"``
        (or ``params`` verbatim)."""
        token = self.passport(**kwargs)
        return identity_header(token, self.x5u) if params is None else token + params

    def div_identity(
        self, *, div: str, dest: str, orig: str = "12155551212", iat: int | None = None
    ) -> str:
        """A div PASSporT (RFC 8946) as a full Identity header: the call from ``orig`` for
        ``div`` went on to ``dest``."""
        token = self.passport(
            iat=iat,
            orig=orig,
            dest=dest,
            header={"ppt": "div"},
            claims={"div": {"tn": div}},
            drop=["attest", "origid"],
        )
        return identity_header(token, self.x5u, ppt="div")


class ChainSource:
    """A credential source (``await get(x5u, now=...)``) for tests: the known signers'
    chains by x5u, validated against ``trust`` at ``now``; any other x5u fails as an
    unreachable one would (436). ``delay`` seconds pass before each answer (a slow
    repository); ``asked`` lists the x5u asked for, in order; ``called`` is set at the
    first; ``vouches`` lists the x5u the pipeline said a PASSporT passed under."""

    def __init__(self, trust: TrustStore, signers: Iterable[Signer], delay: float = 0.0) -> None:
        self.trust = trust
        self.chains = {s.x5u: s.chain for s in signers}
        self.delay = delay
        self.asked: list[str] = []
        self.vouches: list[str] = []
        self.called = asyncio.Event()
        """Set at the first ``get``."""

    def vouched(self, x5u: str) -> None:
        self.vouches.append(x5u)

    async def get(self, x5u: str, *, now: float) -> Credential:
        self.asked.append(x5u)
        self.called.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        chain = self.chains.get(x5u)
        if chain is None:
            raise errors.X5uFetchFailed(f"{x5u}: 404 Not Found")
        return self.trust.validate(list(chain), now)


def sign_jws(
    key: ec.EllipticCurvePrivateKey, header: dict[str, Any], claims: dict[str, Any]
) -> str:
    """ES256 JWS over compact, key-sorted JSON (RFC 8225 section 9), raw R||S signature."""
    h = b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    p = b64url(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    der = key.sign(f"{h}.{p}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{h}.{p}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def identity_header(
    token: str, info: str, *, ppt: str = "shaken", alg: str | None = "ES256"
) -> str:
    value = f"{token};info=<{info}>"
    if alg is not None:
        value += f";alg={alg}"
    return value + f';ppt="{ppt}"'


@dataclass(slots=True)
class TestPKI:
    """Root (STI-PA-like trust anchor), STI-CA intermediate, and a default SP signer."""

    __test__ = False  # not a pytest test class

    root: CA
    ca: CA
    signer: Signer
    extra_roots: list[CA] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        *,
        spc: str = "1234",
        x5u: str = "https://127.0.0.1:8443/sp.pem",
        root_key: KeyType = "p256",
        ca_key: KeyType = "p256",
        ca_any_eku: bool = False,
    ) -> TestPKI:
        root = _self_signed("verifier test STI-PA root", root_key)
        ca = root.issue_ca("verifier test STI-CA", key_type=ca_key, any_eku=ca_any_eku)
        return cls(root=root, ca=ca, signer=ca.issue_leaf(spc, x5u=x5u))

    def untrusted_root(self) -> CA:
        """A root that no trust store here holds, with its own STI-CA."""
        return _self_signed("untrusted root", "p256").issue_ca("untrusted STI-CA")

    def tls_server(
        self, hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1")
    ) -> tuple[bytes, bytes, bytes]:
        """(CA PEM, server chain PEM, server key PEM) for an HTTPS certificate repository."""
        tls_root = _self_signed("verifier test TLS root", "p256")
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            tls_root._builder(hosts[0], key.public_key(), now - _DAY, now + 825 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .sign(tls_root.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pem(tls_root.cert), pem(cert), key_pem


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o600)
    else:
        path.write_bytes(data)


def write_pki(directory: str | Path, *, x5u_base: str = "https://127.0.0.1:8443") -> TestPKI:
    """Write a test PKI to ``directory`` (private keys mode 0600) and return it.

    Layout: ``root.pem`` (the trust anchor), ``ca.pem``, ``sp.pem`` (leaf + CA, what x5u
    serves) and ``sp.key``; ``variants/NAME.pem`` + ``.key`` for the certificates a verifier
    must refuse; ``tls/`` an HTTPS server certificate for 127.0.0.1 with its own CA.
    """
    out = Path(directory)
    pki = TestPKI.create(x5u=f"{x5u_base}/sp.pem")
    _write(out / "root.pem", pem(pki.root.cert))
    _write(out / "root.key", _key_pem(pki.root.key), private=True)
    _write(out / "ca.pem", pem(pki.ca.cert))
    _write(out / "ca.key", _key_pem(pki.ca.key), private=True)
    _write(out / "sp.pem", pki.signer.chain_pem())
    _write(out / "sp.key", pki.signer.key_pem(), private=True)
    now = dt.datetime.now(dt.UTC)
    untrusted = pki.untrusted_root()
    variants: dict[str, Signer] = {
        "expired": pki.ca.issue_leaf(not_before=now - 30 * _DAY, not_after=now - _DAY),
        "not-yet-valid": pki.ca.issue_leaf(not_before=now + 30 * _DAY, not_after=now + 60 * _DAY),
        "no-tnauthlist": pki.ca.issue_leaf(tnauthlist=None),
        "malformed-tnauthlist": pki.ca.issue_leaf(tnauthlist=b"\x16\x04abcd"),
        "wrong-policy": pki.ca.issue_leaf(policy_oid=x509.ObjectIdentifier("1.2.3.4")),
        "rsa-ca": pki.root.issue_ca("verifier test RSA STI-CA", key_type="rsa2048").issue_leaf(),
        "eku-ca": pki.root.issue_ca("verifier test EKU STI-CA", any_eku=True).issue_leaf(),
        "untrusted": untrusted.issue_leaf(),
    }
    p384 = _self_signed("verifier test P-384 root", "p384")
    variants["p384-root"] = p384.issue_ca("verifier test STI-CA under P-384").issue_leaf()
    _write(out / "variants" / "p384-root-anchor.pem", pem(p384.cert))
    for name, signer in variants.items():
        signer.x5u = f"{x5u_base}/variants/{name}.pem"
        _write(out / "variants" / f"{name}.pem", signer.chain_pem())
        _write(out / "variants" / f"{name}.key", signer.key_pem(), private=True)
    tls_ca, tls_chain, tls_key = pki.tls_server()
    _write(out / "tls" / "ca.pem", tls_ca)
    _write(out / "tls" / "server.pem", tls_chain)
    _write(out / "tls" / "server.key", tls_key, private=True)
    return pki


def write_preload(directory: str | Path, signers: Iterable[Signer]) -> Path:
    """Write an ``x5u.preload_dir`` holding each signer's chain (``signerN.pem``) and the
    ``index.json`` naming it by the signer's x5u; return the directory."""
    out = Path(directory)
    index: dict[str, str] = {}
    for number, signer in enumerate(signers):
        name = f"signer{number}.pem"
        _write(out / name, signer.chain_pem())
        index[signer.x5u] = name
    _write(out / "index.json", json.dumps(index).encode())
    return out


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_crl(
    ca: CA,
    revoked_serials: Iterable[int] = (),
    *,
    next_update: dt.datetime | None = None,
    last_update: dt.datetime | None = None,
    signer: PrivateKey | None = None,
) -> bytes:
    """A DER CRL issued by ``ca`` listing ``revoked_serials``; ``signer`` (another key)
    makes one whose signature does not verify."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last_update or now - dt.timedelta(hours=1))
        .next_update(next_update or now + _DAY)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=30))
            .build()
        )
    key = signer or ca.key
    return builder.sign(key, _hash_for(key)).public_bytes(serialization.Encoding.DER)
