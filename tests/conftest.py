"""Shared fixtures: one test STI PKI per session (making keys is slow-ish), a trust store
holding its root, a fixed ``now`` and a one-call verifier over the default signer's chain."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from verifier.core.certs import TrustStore
from verifier.core.verify import CallInfo, Result, VerifyOptions, verify_offline
from verifier.testing import Signer, TestPKI, b64url
from verifier.testing.repository import Repository

CONFORMANCE = Path(__file__).parent / "conformance"


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    """Root, STI-CA and default SP signer (SPC 1234), valid from a day ago."""
    return TestPKI.create()


@pytest.fixture(scope="session")
def signer(pki: TestPKI) -> Signer:
    return pki.signer


@pytest.fixture(scope="session")
def trust(pki: TestPKI) -> TrustStore:
    return TrustStore([pki.root.cert])


@pytest.fixture
async def repo(pki: TestPKI) -> AsyncIterator[Repository]:
    """A real HTTPS certificate repository on 127.0.0.1 serving ``pki``'s chains (the
    module's own ``pki`` where a test module defines one)."""
    async with Repository.create(pki) as repository:
        yield repository


@pytest.fixture
def ca_file(repo: Repository, tmp_path: Path) -> str:
    """The repository's TLS CA as a PEM file, for ``ca_file`` settings."""
    path = tmp_path / "repo-ca.pem"
    path.write_bytes(repo.ca_pem)
    return str(path)


@pytest.fixture(scope="session")
def now() -> int:
    """The verification moment: fixed for the session, inside every test certificate."""
    return int(time.time())


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    return CONFORMANCE


Check = Callable[..., Result]


@pytest.fixture(scope="session")
def check(signer: Signer, trust: TrustStore, now: int) -> Check:
    """``check(values, call=..., options=..., at=..., signer=..., trust=..., bare=...)``:
    verify_offline with a signer's chain (default: the PKI's) against ``trust``."""

    def run(
        values: str | Iterable[str] | None,
        *,
        call: CallInfo | None = None,
        options: VerifyOptions | None = None,
        at: float | None = None,
        signer: Signer = signer,
        trust: TrustStore = trust,
        bare: bool = False,
    ) -> Result:
        return verify_offline(
            values,
            now=now if at is None else at,
            call=call,
            options=options,
            chain=signer.chain,
            trust=trust,
            bare=bare,
        )

    return run


RawJws = Callable[[bytes, bytes], str]


@pytest.fixture(scope="session")
def raw_jws(signer: Signer) -> RawJws:
    """``raw_jws(header_bytes, payload_bytes)``: a JWS signed (R||S) by the default signer over
    exactly these bytes, for JSON that json.dumps cannot write (duplicate keys, NaN...)."""

    def sign(header: bytes, payload: bytes) -> str:
        h, p = b64url(header), b64url(payload)
        r, s = decode_dss_signature(signer.key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())))
        return f"{h}.{p}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    return sign
