"""STIR certificates (RFC 8226, ATIS-1000080): chains validated to trust anchors. Pure.

A :class:`TrustStore` holds the trust anchors and turns a certificate chain (leaf first)
into a :class:`Credential`: the leaf's public key plus the facts the result reports (SPCs
from TNAuthList, subject, issuer, fingerprint, validity). Chain validation costs several
signature checks, so a Credential is what callers cache; :meth:`Credential.check_time`
is all a cache hit needs to re-check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification as xv

from . import errors
from .es256 import ES256Key, KeyFactory, PlainKey

__all__ = [
    "SHAKEN_POLICY_OID",
    "TNAUTHLIST_OID",
    "CertificateInfo",
    "Credential",
    "TNAuthList",
    "TrustStore",
    "credential_from_public_key",
    "load_certificates",
    "load_chain",
    "parse_tnauthlist",
]

TNAUTHLIST_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")
SHAKEN_POLICY_OID = x509.ObjectIdentifier("2.16.840.1.114569.1.1.1")
# Each SHAKEN CP version gets the next OID under one arc (v1.3: .3, v1.4: .4); any version counts.
_SHAKEN_POLICY = re.compile(r"2\.16\.840\.1\.114569\.1\.1\.[1-9][0-9]*")
_MAX_CHAIN = 8
_DER = Encoding.DER


class _TNAuthListExtension(x509.UnrecognizedExtension):
    """Declares TNAuthList to the chain verifier, so that a critical one is accounted for."""

    oid = TNAUTHLIST_OID


@dataclass(frozen=True, slots=True)
class TNAuthList:
    """RFC 8226 TNAuthorizationList: SPCs ``[0]``, ranges ``[1]`` and single TNs ``[2]``."""

    spcs: tuple[str, ...]
    ranges: tuple[tuple[str, int], ...]
    tns: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateInfo:
    """What the result says about the signer's certificate."""

    subject: str
    issuer: str
    serial: str
    fingerprint_sha256: str
    not_before: str
    not_after: str
    spc: tuple[str, ...]
    tn_ranges: tuple[tuple[str, int], ...] = ()
    tns: tuple[str, ...] = ()
    policy_oids: tuple[str, ...] = ()
    shaken_policy: bool = False
    crl_urls: tuple[str, ...] = ()
    chain: tuple[str, ...] = ()
    anchor: str = ""
    certificates: tuple[x509.Certificate, ...] = field(default=(), repr=False, compare=False)
    """The validated path, leaf first, anchor last (the traceback records keep it as PEM)."""
    _dict: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The certificate as JSON-ready data: made once, then the same dict for every
        result it signed (a batch answer holds it a hundred times). Do not change it."""
        made = self._dict
        if made is None:
            made = self._make_dict()
            object.__setattr__(self, "_dict", made)
        return made

    def _make_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "spc": list(self.spc),
            "tn_ranges": [{"start": s, "count": c} for s, c in self.tn_ranges],
            "tns": list(self.tns),
            "policy_oids": list(self.policy_oids),
            "shaken_policy": self.shaken_policy,
            "crl_urls": list(self.crl_urls),
            "chain": list(self.chain),
            "anchor": self.anchor,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """A public key ready to check ES256 signatures, with its validated certificate.

    ``certificate`` is None for a bare public key supplied out of band (forensics): then
    nothing about the signer's authority was checked, and ``warnings`` says so.
    ``not_before``/``not_after`` (epoch seconds) bound the whole chain's validity.
    """

    public_key: ec.EllipticCurvePublicKey
    certificate: CertificateInfo | None
    not_before: float = float("-inf")
    not_after: float = float("inf")
    certificates: tuple[x509.Certificate, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    checker: ES256Key | None = field(default=None, repr=False, compare=False)
    """The key's ES256 check as made by the trust store's key factory; None: the plain one."""
    es256: ES256Key = field(init=False, repr=False, compare=False)
    """The ES256 check step 12 calls."""

    def __post_init__(self) -> None:
        checker = self.checker if self.checker is not None else PlainKey(self.public_key)
        object.__setattr__(self, "es256", checker)

    def check_time(self, at: float) -> None:
        """Raises CertificateExpired / CertificateNotYetValid when ``at`` is outside the chain."""
        if at > self.not_after:
            raise errors.CertificateExpired(f"certificate chain expired at {_iso(self.not_after)}")
        if at < self.not_before:
            raise errors.CertificateNotYetValid(
                f"certificate chain not valid before {_iso(self.not_before)}"
            )


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------------- DER reading


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("high tag numbers are not used in TNAuthList")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("non-minimal length (not DER)")
        pos += n
    end = pos + length
    if end > len(data):
        raise ValueError("truncated")
    return tag, pos, end


def _ia5(data: bytes, pos: int, end: int) -> tuple[str, int]:
    tag, start, stop = _read_tlv(data, pos)
    if tag != 0x16 or stop > end:
        raise ValueError(f"expected IA5String, found tag 0x{tag:02x}")
    raw = data[start:stop]
    if not raw or any(b > 0x7E or b < 0x20 for b in raw):
        raise ValueError("IA5String empty or not printable")
    return raw.decode("ascii"), stop


def parse_tnauthlist(der: bytes) -> TNAuthList:
    """Parse the TNAuthList extension value (RFC 8226 section 9, explicit tags).

    Raises:
        TNAuthListMalformed: not a DER SEQUENCE OF TNEntry.
    """
    try:
        tag, pos, end = _read_tlv(der, 0)
        if tag != 0x30 or end != len(der):
            raise ValueError(f"expected one SEQUENCE, found tag 0x{tag:02x}")
        if pos == end:
            raise ValueError("empty TNAuthorizationList")
        spcs: list[str] = []
        ranges: list[tuple[str, int]] = []
        tns: list[str] = []
        while pos < end:
            etag, estart, eend = _read_tlv(der, pos)
            if eend > end:
                raise ValueError("entry overruns the list")
            if etag == 0xA0:
                value, stop = _ia5(der, estart, eend)
                spcs.append(value)
            elif etag == 0xA1:
                stag, sstart, send = _read_tlv(der, estart)
                if stag != 0x30 or send != eend:
                    raise ValueError("TelephoneNumberRange must be a SEQUENCE")
                start_tn, p = _ia5(der, sstart, send)
                itag, istart, iend = _read_tlv(der, p)
                if itag != 0x02 or iend > send or iend == istart:
                    raise ValueError("TelephoneNumberRange count must be an INTEGER")
                count = int.from_bytes(der[istart:iend], "big", signed=True)
                if count < 2:
                    raise ValueError("TelephoneNumberRange count must be at least 2")
                ranges.append((start_tn, count))
                stop = iend
                if stop != send:
                    raise ValueError("unexpected data in TelephoneNumberRange")
            elif etag == 0xA2:
                value, stop = _ia5(der, estart, eend)
                tns.append(value)
            else:
                raise ValueError(f"unknown TNEntry tag 0x{etag:02x}")
            if stop != eend:
                raise ValueError("unexpected data in TNEntry")
            pos = eend
    except ValueError as exc:
        raise errors.TNAuthListMalformed(f"TNAuthList extension is malformed: {exc}") from None
    return TNAuthList(spcs=tuple(spcs), ranges=tuple(ranges), tns=tuple(tns))


# ------------------------------------------------------------------------------------- loading


def load_chain(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (leaf first, then intermediates) or one DER certificate.

    Raises:
        CertificateInvalid: nothing parseable, or more than a chain's worth.
    """
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise errors.CertificateInvalid(f"certificate data cannot be parsed: {exc}") from None
    if len(certs) > _MAX_CHAIN:
        raise errors.CertificateInvalid(
            f"{len(certs)} certificates given; a chain has at most {_MAX_CHAIN}"
        )
    return certs


def load_certificates(paths: Iterable[str | Path]) -> list[x509.Certificate]:
    """Every certificate in the given PEM files and directories (``*.pem``, ``*.crt``).

    Raises:
        ValueError: a path that does not exist or holds no certificate, naming it.
    """
    out: list[x509.Certificate] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in {".pem", ".crt", ".cer"})
            if not files:
                raise ValueError(f"{path}: no .pem/.crt/.cer files")
        elif path.is_file():
            files = [path]
        else:
            raise ValueError(f"{path}: no such file or directory")
        for file in files:
            try:
                found = x509.load_pem_x509_certificates(file.read_bytes())
            except ValueError as exc:
                raise ValueError(f"{file}: {exc}") from None
            out.extend(found)
    return out


# ------------------------------------------------------------------------------------- trust


def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(_DER)).hexdigest()


def _leaf_key_usage(_policy: xv.Policy, _cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    if not ku.digital_signature:
        raise ValueError("leaf keyUsage lacks digitalSignature")


def _leaf_not_a_ca(
    _policy: xv.Policy, _cert: x509.Certificate, bc: x509.BasicConstraints | None
) -> None:
    # An SP certificate (ATIS-1000080) is an end entity: a CA's key does not sign PASSporTs.
    if bc is not None and bc.ca:
        raise ValueError("the signing certificate is a CA (basicConstraints cA is true)")


def _ca_basic_constraints(
    _policy: xv.Policy, _cert: x509.Certificate, bc: x509.BasicConstraints
) -> None:
    if not bc.ca:
        raise ValueError("issuer is not a CA (basicConstraints cA is false)")


def _ca_key_usage(_policy: xv.Policy, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    if ku is not None and not ku.key_cert_sign:
        raise ValueError("CA keyUsage lacks keyCertSign")


def _extension_policies() -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy]:
    # STI certificates are not Web PKI ones: leaves have no SAN and no EKU, and real STI-CAs
    # (2019-) carry anyExtendedKeyUsage, non-critical keyUsage and no AKI. What ATIS-1000080
    # requires is kept: CA basicConstraints, keyCertSign on CAs, digitalSignature on leaves.
    ca = (
        xv.ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, xv.Criticality.AGNOSTIC, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, xv.Criticality.AGNOSTIC, _ca_key_usage)
        .may_be_present(_TNAuthListExtension, xv.Criticality.AGNOSTIC, None)
    )
    ee = (
        xv.ExtensionPolicy.permit_all()
        .require_present(x509.KeyUsage, xv.Criticality.AGNOSTIC, _leaf_key_usage)
        .may_be_present(x509.BasicConstraints, xv.Criticality.AGNOSTIC, _leaf_not_a_ca)
        .may_be_present(_TNAuthListExtension, xv.Criticality.AGNOSTIC, None)
    )
    return ca, ee


class TrustStore:
    """Trust anchors (STI-PA approved roots and CAs) and the SHAKEN chain policy.

    Build one with :meth:`from_paths` or the constructor; it is immutable, so a reload
    builds a new one and swaps it in. ``key_factory`` makes each Credential's ES256 check
    (default: the plain one; the service hands in its accelerator).
    """

    __slots__ = (
        "_anchors",
        "_ca_policy",
        "_ee_policy",
        "_store",
        "key_factory",
        "require_policy_oid",
    )

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        *,
        require_policy_oid: bool = False,
        key_factory: KeyFactory = PlainKey,
    ) -> None:
        if not anchors:
            raise ValueError("a trust store needs at least one trust anchor")
        self._anchors = tuple(anchors)
        self._store = xv.Store(list(self._anchors))
        self._ca_policy, self._ee_policy = _extension_policies()
        self.require_policy_oid = require_policy_oid
        self.key_factory = key_factory

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[str | Path],
        *,
        require_policy_oid: bool = False,
        key_factory: KeyFactory = PlainKey,
    ) -> TrustStore:
        return cls(
            load_certificates(paths), require_policy_oid=require_policy_oid, key_factory=key_factory
        )

    def with_key_factory(self, key_factory: KeyFactory) -> TrustStore:
        """The same anchors and policy, its Credentials' ES256 checks made by ``key_factory``."""
        return TrustStore(
            self._anchors, require_policy_oid=self.require_policy_oid, key_factory=key_factory
        )

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return self._anchors

    def same_trust(self, other: TrustStore) -> bool:
        """Whether ``other`` validates exactly as this one: the same anchors (in any order),
        chain policy and key factory. A reload that changes nothing keeps the caches."""
        return (
            set(self._anchors) == set(other._anchors)
            and self.require_policy_oid == other.require_policy_oid
            and self.key_factory == other.key_factory
        )

    def validate(self, chain: Sequence[x509.Certificate], at: float) -> Credential:
        """Validate ``chain`` (leaf first) at ``at`` (epoch seconds) and return its Credential.

        Raises:
            CertificateExpired, CertificateNotYetValid: a certificate is outside its validity.
            UnsupportedKey: the leaf key is not EC P-256.
            CertificateNotTrusted: no path to a trust anchor, or a CA profile violation.
            TNAuthListMissing, TNAuthListMalformed: no SPC in the leaf.
            PolicyOidMissing: the SHAKEN policy OID is required and absent.
        """
        if not chain:
            raise errors.CertificateInvalid("no certificate")
        leaf, intermediates = chain[0], list(chain[1:])
        when = dt.datetime.fromtimestamp(at, dt.UTC)
        for cert in chain:
            if when > cert.not_valid_after_utc:
                raise errors.CertificateExpired(
                    f"{_name(cert.subject)} expired at {cert.not_valid_after_utc.isoformat()}"
                )
            if when < cert.not_valid_before_utc:
                raise errors.CertificateNotYetValid(
                    f"{_name(cert.subject)} is not valid before "
                    f"{cert.not_valid_before_utc.isoformat()}"
                )
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise errors.UnsupportedKey("leaf key is not EC P-256, so it cannot sign ES256")
        verifier = (
            xv.PolicyBuilder()
            .store(self._store)
            .time(when)
            .max_chain_depth(_MAX_CHAIN)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(leaf, intermediates)
        except xv.VerificationError as exc:
            raise errors.CertificateNotTrusted(
                f"{_plain_reason(str(exc), chain)} (x509: {exc})"
            ) from None
        path = verified.chain
        tnal = self._tnauthlist(leaf)
        if not tnal.spcs:
            raise errors.TNAuthListMissing("TNAuthList carries no SPC ([0] entry)")
        policies = _policy_oids(leaf)
        shaken_policy = any(_SHAKEN_POLICY.fullmatch(oid) for oid in policies)
        if self.require_policy_oid and not shaken_policy:
            raise errors.PolicyOidMissing(
                "a SHAKEN certificate policy (2.16.840.1.114569.1.1.N, N the CP version) is"
                f" required and absent (policies: {', '.join(policies) or 'none'})"
            )
        info = CertificateInfo(
            subject=_name(leaf.subject),
            issuer=_name(leaf.issuer),
            serial=format(leaf.serial_number, "x"),
            fingerprint_sha256=_fingerprint(leaf),
            not_before=leaf.not_valid_before_utc.isoformat(),
            not_after=leaf.not_valid_after_utc.isoformat(),
            spc=tnal.spcs,
            tn_ranges=tnal.ranges,
            tns=tnal.tns,
            policy_oids=policies,
            shaken_policy=shaken_policy,
            crl_urls=_crl_urls(path),
            chain=tuple(_name(c.subject) for c in path),
            anchor=_fingerprint(path[-1]),
            certificates=tuple(path),
        )
        return Credential(
            public_key=key,
            certificate=info,
            not_before=max(c.not_valid_before_utc.timestamp() for c in path),
            not_after=min(c.not_valid_after_utc.timestamp() for c in path),
            certificates=tuple(path),
            checker=self.key_factory(key),
        )

    @staticmethod
    def _tnauthlist(leaf: x509.Certificate) -> TNAuthList:
        try:
            ext = leaf.extensions.get_extension_for_oid(TNAUTHLIST_OID)
        except x509.ExtensionNotFound:
            raise errors.TNAuthListMissing("certificate has no TNAuthList extension") from None
        value = ext.value
        der = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        return parse_tnauthlist(der)


_EXTENSION_NAMES = {
    "2.5.29.15": "keyUsage",
    "2.5.29.19": "basicConstraints",
    "2.5.29.37": "extendedKeyUsage",
    "2.5.29.17": "subjectAltName",
    "2.5.29.35": "authorityKeyIdentifier",
    "2.5.29.14": "subjectKeyIdentifier",
    "2.5.29.30": "nameConstraints",
    "2.5.29.32": "certificatePolicies",
    TNAUTHLIST_OID.dotted_string: "TNAuthList",
}
_UNTIL_CERT = r"(.+?)(?: \(encountered processing |$)"
_EXTENSION = re.compile(r"invalid extension: ([0-9.]+): " + _UNTIL_CERT)
_OUR_CHECK = re.compile(r"Python extension validator failed: ValueError: " + _UNTIL_CERT)


def _plain_reason(library: str, chain: Sequence[x509.Certificate]) -> str:
    """What a person reads for the chain verifier's error ``library`` (kept beside it in the
    detail): its message texts are matched, since it raises one class for every failure."""
    if "no interior errors" in library:
        return (
            "certificate chain does not lead to a trusted STI-PA root"
            f" (issuer: {_name(chain[-1].issuer)})"
        )
    ours = _OUR_CHECK.search(library)
    if ours is not None:
        return f"certificate profile not met: {ours.group(1).strip()}"
    extension = _EXTENSION.search(library)
    if extension is not None:
        oid, why = extension.group(1), extension.group(2).strip().rstrip(".")
        name = _EXTENSION_NAMES.get(oid, oid)
        if "missing required extension" in why.lower():
            return f"a certificate in the chain lacks the required {name} extension"
        return f"a certificate in the chain has an unacceptable {name} extension: {why}"
    if "Forbidden" in library:
        return "the chain uses a signature or public key algorithm that is not allowed"
    if "max depth" in library or "maximum" in library:
        return "the chain is too long or too tangled to validate"
    return "certificate chain not trusted"


def _policy_oids(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
    except x509.ExtensionNotFound:
        return ()
    return tuple(p.policy_identifier.dotted_string for p in ext.value)


def _crl_urls(chain: Sequence[x509.Certificate]) -> tuple[str, ...]:
    urls: list[str] = []
    for cert in chain:
        try:
            ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        except x509.ExtensionNotFound:
            continue
        for point in ext.value:
            for name in point.full_name or ():
                if isinstance(name, x509.UniformResourceIdentifier):
                    urls.append(name.value)
    return tuple(urls)


def credential_from_public_key(key: Any, *, key_factory: KeyFactory = PlainKey) -> Credential:
    """A Credential for a bare public key supplied out of band: no certificate checks.

    Raises:
        UnsupportedKey: not an EC P-256 public key.
    """
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise errors.UnsupportedKey("the supplied key is not an EC P-256 public key")
    return Credential(
        public_key=key,
        certificate=None,
        checker=key_factory(key),
        warnings=(
            "verified with a bare public key supplied out of band: no certificate, trust "
            "chain or TNAuthList was checked",
        ),
    )
