"""Hostile certificate repositories and hostile callers: each case ends within its bounds
with the standard reason and leaves the service healthy. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from verifier.core import errors
from verifier.core.certs import TrustStore
from verifier.core.verify import CallInfo, verify
from verifier.http.app import create_app
from verifier.net.fetch import CertificateFetcher, FetchSettings
from verifier.settings import load_settings
from verifier.testing import TestPKI, pem
from verifier.testing.repository import Repository

BOUND = 1.0  # the fetch timeout in these tests, seconds


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


@pytest.fixture
async def fetcher(
    repo: Repository, pki: TestPKI, tmp_path: Path
) -> AsyncIterator[CertificateFetcher]:
    (tmp_path / "ca.pem").write_bytes(repo.ca_pem)
    settings = FetchSettings(
        ports=frozenset({repo.port}),
        allow_private_x5u=True,
        ca_file=str(tmp_path / "ca.pem"),
        timeout=BOUND,
        connect_timeout=BOUND / 2,
        crl_check=False,
    )
    async with CertificateFetcher(TrustStore([pki.root.cert]), settings) as f:
        yield f


async def timed(fetcher: CertificateFetcher, url: str) -> tuple[BaseException, float]:
    started = time.monotonic()
    try:
        await fetcher.get(url, now=time.time())
    except errors.VerificationError as exc:
        return exc, time.monotonic() - started
    raise AssertionError(f"{url} was accepted")


async def test_a_body_that_never_ends(fetcher: CertificateFetcher, repo: Repository) -> None:
    url = repo.put("/endless.pem", b"-----BEGIN CERTIFICATE-----\n", behaviour="endless")
    exc, took = await timed(fetcher, url)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert took < BOUND + 0.5


async def test_one_byte_at_a_time(
    fetcher: CertificateFetcher, repo: Repository, pki: TestPKI
) -> None:
    url = repo.put("/drip.pem", pki.signer.chain_pem(), behaviour="slow", delay=0.2)
    exc, took = await timed(fetcher, url)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert f"within {BOUND:g} s" in exc.detail
    assert took < BOUND + 0.5


async def test_a_ten_megabyte_certificate(fetcher: CertificateFetcher, repo: Repository) -> None:
    url = repo.put("/huge.pem", b"A" * (10 * 1024 * 1024))
    exc, took = await timed(fetcher, url)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert "limit" in exc.detail
    assert took < BOUND + 0.5


async def test_a_chain_of_fifty_certificates(
    fetcher: CertificateFetcher, repo: Repository, pki: TestPKI
) -> None:
    ca = pki.ca
    for i in range(48):
        ca = ca.issue_ca(f"deep CA {i}")
    leaf = ca.issue_leaf()
    body = leaf.chain_pem()
    assert 50 == body.count(b"BEGIN CERTIFICATE")
    url = repo.put("/deep.pem", body)
    # a roomier body cap than the default 32 KiB, which would refuse the body first
    big = dataclasses.replace(fetcher.settings, max_body=1024 * 1024)
    async with CertificateFetcher(fetcher.trust, big) as roomy:
        exc, took = await timed(roomy, url)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert "at most 8" in exc.detail
    assert took < BOUND + 0.5


async def test_redirect_loop_is_not_followed(fetcher: CertificateFetcher, repo: Repository) -> None:
    first = repo.redirect("/a.pem", repo.url("/b.pem"))
    repo.redirect("/b.pem", repo.url("/a.pem"))
    exc, took = await timed(fetcher, first)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert 1 == repo.counts["/a.pem"]
    assert 0 == repo.counts["/b.pem"]
    assert took < BOUND


async def test_a_tls_handshake_that_stalls(fetcher: CertificateFetcher) -> None:
    """A server that accepts the connection and then says nothing."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = dataclasses.replace(fetcher.settings, ports=frozenset({port}))
        async with CertificateFetcher(fetcher.trust, settings) as stalled:
            exc, took = await timed(stalled, f"https://127.0.0.1:{port}/sp.pem")
        assert isinstance(exc, errors.X5uFetchFailed)
        assert took < BOUND + 0.5
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_invalid_pem(fetcher: CertificateFetcher, repo: Repository) -> None:
    url = repo.put("/bad.pem", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
    exc, _took = await timed(fetcher, url)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert 436 == exc.sip_code


async def test_x5u_serving_another_providers_chain(
    fetcher: CertificateFetcher, repo: Repository, pki: TestPKI, now: int
) -> None:
    """The PASSporT names an x5u that serves a valid chain, but of another SP's key."""
    other = pki.ca.issue_leaf("9999")
    url = repo.put("/other.pem", other.chain_pem())
    pki.signer.x5u = url
    try:
        result = await verify(
            pki.signer.identity(iat=now),
            now=now,
            credentials=fetcher,
            call=CallInfo(to="12155551213"),
        )
    finally:
        pki.signer.x5u = "https://127.0.0.1:8443/sp.pem"
    assert "TN-Validation-Failed" == result.verstat
    assert result.reason is not None
    assert (438, "invalid_signature") == (result.reason.sip_code, result.reason.slug)


async def test_the_service_stays_healthy_after_hostile_repositories(
    aiohttp_client: AiohttpClient, repo: Repository, pki: TestPKI, tmp_path: Path, now: int
) -> None:
    settings = repo.service_settings(
        pki, tmp_path, {"http_client.timeout": BOUND, "records.enabled": False}
    )
    client = await aiohttp_client(create_app(settings))
    signer = pki.signer
    hostile = {
        "/endless.pem": dict(body=b"x", behaviour="endless"),
        "/stall.pem": dict(body=signer.chain_pem(), behaviour="stall"),
        "/huge.pem": dict(body=b"A" * (4 * 1024 * 1024)),
        "/html.pem": dict(body=b"<html></html>", content_type="text/html"),
    }
    answers = []
    for path, how in hostile.items():
        signer.x5u = repo.put(path, **how)  # type: ignore[arg-type]
        body = {"identity": signer.identity(iat=now), "from": "12155551212"}
        async with client.post("/v1/verify", json=body) as resp:
            answers.append((resp.status, (await resp.json())["reason"]["sip_code"]))
    signer.x5u = repo.put("/sp.pem", signer.chain_pem())
    async with client.post("/v1/verify", json={"identity": signer.identity(iat=now)}) as resp:
        good = await resp.json()
    async with client.get("/readyz") as resp:
        ready = resp.status
    signer.x5u = "https://127.0.0.1:8443/sp.pem"
    assert [(200, 436)] * 4 == answers
    assert "TN-Validation-Passed" == good["verstat"]
    assert 200 == ready


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00not utf-8",
        b"\x00" * 100,
        b"[" * 60000,  # nested deep, under the 64 KiB cap
        json.dumps({"verificationRequest": {"from": {"tn": "1" * 10000}}}).encode(),
    ],
)
async def test_hostile_bodies_get_a_clear_4xx(
    aiohttp_client: AiohttpClient, pki: TestPKI, tmp_path: Path, body: bytes
) -> None:
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    settings = load_settings(
        overrides={"trust_anchors": [str(tmp_path / "root.pem")], "records.enabled": False}
    )
    client = await aiohttp_client(create_app(settings))
    started = time.monotonic()
    async with client.post(
        "/stir/v1/verification", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        answer = await resp.json()
    assert 400 == resp.status
    assert "requestError" in answer
    assert time.monotonic() - started < 1.0


async def test_ten_thousand_identity_headers(
    aiohttp_client: AiohttpClient, pki: TestPKI, tmp_path: Path, now: int
) -> None:
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    settings = load_settings(
        overrides={
            "trust_anchors": [str(tmp_path / "root.pem")],
            "records.enabled": False,
            "api.body_limit": 16 * 1024 * 1024,
        }
    )
    client = await aiohttp_client(create_app(settings))
    value = pki.signer.identity(iat=now)
    started = time.monotonic()
    body = io.BytesIO(json.dumps({"identity": [value] * 10000}).encode())
    async with client.post(
        "/v1/verify", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        answer = await resp.json()
    assert 200 == resp.status
    assert (438, "identity_malformed") == (answer["reason"]["sip_code"], answer["reason"]["slug"])
    assert "at most 32" in answer["reason"]["detail"]
    assert time.monotonic() - started < 2.0
