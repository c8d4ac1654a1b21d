"""STI-PA trust lists as published: parsed (format detected by content), their entries
checked, and a new list judged against the anchors in force. Pure: bytes and certificates in,
certificates out (:mod:`verifier.net.trustlist` fetches and keeps them).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..core.errors import VerifierError

__all__ = ["ListError", "check_entries", "fingerprint", "judge", "parse_list"]

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")


class ListError(VerifierError, ValueError):
    """A trust list that cannot be used: unparseable, unsigned when required, badly signed,
    empty, or dropping too many anchors. The anchors in force stay."""


def _b64url(part: bytes) -> bytes:
    if not _B64URL.fullmatch(part):
        raise ListError("JWS part is not base64url")
    try:
        return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise ListError("JWS part is not base64url") from None


def _check_jws(signing_input: bytes, header: dict[str, Any], signature: bytes, signer: Any) -> None:
    key = signer.public_key()
    alg = header.get("alg")
    try:
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 64 or key.curve.name != "secp256r1":
                raise ListError("ES256 list signature is not 64 bytes over P-256")
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        elif alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise ListError(f"list JWS alg {alg!r} does not match the list signer's key")
    except InvalidSignature:
        raise ListError("list signature does not verify with list_signer") from None


def _from_json(value: Any) -> list[bytes]:
    """The certificate strings of a JSON list: an array of strings, or an object whose
    array members hold them (``{"crts": [...]}``)."""
    if isinstance(value, dict):
        arrays = [v for v in value.values() if isinstance(v, list)]
        items = [item for array in arrays for item in array]
    elif isinstance(value, list):
        items = value
    else:
        raise ListError("JSON list is neither an object nor an array")
    out: list[bytes] = []
    for item in items:
        if not isinstance(item, str):
            out.append(b"")  # reported as a bad entry
        elif "-----BEGIN" in item:
            out.append(item.encode())
        else:  # base64 DER, as in x5c
            try:
                out.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                out.append(b"")
    return out


def parse_list(
    body: bytes, *, signer: x509.Certificate | None = None, require_signature: bool = False
) -> tuple[list[x509.Certificate], list[str]]:
    """The certificates of a trust list (format detected by content) and the entries skipped.

    Raises:
        ListError: not a PEM bundle, JSON or JWS; a JWS whose signature fails, or an
            unsigned list when ``require_signature``.
    """
    text = body.strip()
    entries: list[bytes]
    if text.startswith(b"-----BEGIN"):
        entries = _PEM_BLOCK.findall(text)
    elif text[:1] in (b"{", b"["):
        if require_signature:
            raise ListError("the list is not signed and list_require_signature is set")
        entries = _from_json(_json(text))
    elif text.count(b".") == 2:
        head, payload, sig = text.split(b".")
        header = _json(_b64url(head))
        if not isinstance(header, dict):
            raise ListError("JWS header is not a JSON object")
        if signer is not None:
            _check_jws(head + b"." + payload, header, _b64url(sig), signer)
        elif require_signature:
            raise ListError("list_require_signature is set but no list_signer is configured")
        entries = _from_json(_json(_b64url(payload)))
    else:
        raise ListError("the list is not a PEM bundle, JSON or a JWS")
    if text.startswith(b"-----BEGIN") and require_signature:
        raise ListError("the list is not signed and list_require_signature is set")
    certs: list[x509.Certificate] = []
    skipped: list[str] = []
    for i, entry in enumerate(entries):
        try:
            if entry.startswith(b"-----BEGIN"):
                certs.append(x509.load_pem_x509_certificate(entry))
            else:
                certs.append(x509.load_der_x509_certificate(entry))
        except ValueError:
            skipped.append(f"entry {i}: not a certificate")
    return certs, skipped


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ListError("the list is not valid JSON") from None


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def check_entries(
    certs: Sequence[x509.Certificate], now: float
) -> tuple[list[x509.Certificate], list[str]]:
    """The certificates that may be anchors (CA:TRUE, keyCertSign, valid at ``now``; each
    once) and why the others were skipped."""
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    kept: dict[str, x509.Certificate] = {}
    skipped: list[str] = []
    for cert in certs:
        name = cert.subject.rfc4514_string()
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except (x509.ExtensionNotFound, ValueError):
            skipped.append(f"{name}: no basicConstraints or keyUsage")
            continue
        if not bc.ca or not ku.key_cert_sign:
            skipped.append(f"{name}: not a CA (CA:TRUE and keyCertSign required)")
        elif not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            skipped.append(f"{name}: outside its validity")
        else:
            kept.setdefault(fingerprint(cert), cert)
    return list(kept.values()), skipped


def judge(
    new: Sequence[x509.Certificate],
    in_force: Sequence[x509.Certificate],
    max_drop_fraction: float,
) -> None:
    """Refuse a list that is empty or drops more than ``max_drop_fraction`` of ``in_force``.

    Raises:
        ListError: saying which.
    """
    if not new:
        raise ListError("the list holds no usable CA certificate")
    if in_force:
        dropped = len(set(in_force) - set(new))
        if dropped / len(in_force) > max_drop_fraction:
            raise ListError(
                f"the list would drop {dropped} of the {len(in_force)} anchors in force;"
                f" at most a fraction {max_drop_fraction:g} may go at once"
            )
