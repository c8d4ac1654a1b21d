"""The ES256 check the pipeline calls (step 12): a small protocol and its plain implementation.

The plain one is pyca/cryptography's ECDSA P-256 verify. The service may hand in a faster
one (key tables: :mod:`verifier.accel.es256`) as a :data:`KeyFactory` (to
:class:`~verifier.core.certs.TrustStore`) and a :data:`BatchCheck` (to
:func:`~verifier.core.verify.verify_many`); the core never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["BatchCheck", "ES256Key", "KeyFactory", "PlainKey", "check_each", "plain_check"]

_ES256 = ec.ECDSA(hashes.SHA256())


class ES256Key(Protocol):
    """One public key's ES256 check. ``signature`` is the raw 64-byte R||S (RFC 7518 §3.4)."""

    def check(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` verifies over ``data``; never raises for a bad signature."""
        ...

    def has_table(self) -> bool:
        """Whether its checks use a precomputed table (they keep the GIL: threads do not help)."""
        ...


KeyFactory = Callable[[ec.EllipticCurvePublicKey], ES256Key]
"""Makes the ES256 check of a (P-256) public key."""

BatchCheck = Callable[[Sequence[tuple[ES256Key, bytes, bytes]]], list[bool]]
"""Each ``(key, signing_input, signature)``'s verdict, in order."""


def plain_check(key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    """pyca/cryptography's verdict on a raw R||S ES256 ``signature`` over ``data``; anything
    but 64 bytes is refused."""
    if len(signature) != 64:
        return False
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, data, _ES256)
    except InvalidSignature:
        return False
    return True


class PlainKey:
    """The default :class:`ES256Key`: pyca/cryptography's check, nothing precomputed."""

    __slots__ = ("public_key",)

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        self.public_key = public_key

    def check(self, data: bytes, signature: bytes) -> bool:
        return plain_check(self.public_key, data, signature)

    def has_table(self) -> bool:
        return False


def check_each(jobs: Sequence[tuple[ES256Key, bytes, bytes]]) -> list[bool]:
    """The default :data:`BatchCheck`: each job checked on its own."""
    return [key.check(data, signature) for key, data, signature in jobs]
