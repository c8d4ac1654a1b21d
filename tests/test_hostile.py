"""Hostile certificate repositories and hostile callers: each case ends within its bounds
with the standard reason and leaves the service healthy. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from verifier.core import errors
from verifier.core.certs import Credential, TrustStore
from verifier.core.verify import CallInfo, CredentialSource, verify
from verifier.http.app import SERVICE, create_app, start_site
from verifier.net.fetch import CertificateFetcher, FetchSettings
from verifier.net.transport import HttpClientSettings
from verifier.records import RecordSettings
from verifier.settings import Settings, load_settings
from verifier.testing import ChainSource, TestPKI, pem
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
    client = HttpClientSettings(
        ports=frozenset({repo.port}),
        allow_private=True,
        ca_file=str(tmp_path / "ca.pem"),
        timeout=BOUND,
        connect_timeout=BOUND / 2,
    )
    settings = FetchSettings(crl_check=False)
    async with CertificateFetcher(TrustStore([pki.root.cert]), settings, client=client) as f:
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
    assert took < 10 * BOUND  # the fetch timeout fired (10x margin)


async def test_one_byte_at_a_time(
    fetcher: CertificateFetcher, repo: Repository, pki: TestPKI
) -> None:
    url = repo.put("/drip.pem", pki.signer.chain_pem(), behaviour="slow", delay=0.2)
    exc, took = await timed(fetcher, url)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert f"within {BOUND:g} s" in exc.detail
    assert took < 10 * BOUND  # the fetch timeout fired (10x margin)


async def test_a_ten_megabyte_certificate(fetcher: CertificateFetcher, repo: Repository) -> None:
    url = repo.put("/huge.pem", b"A" * (10 * 1024 * 1024))
    exc, took = await timed(fetcher, url)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert "limit" in exc.detail
    assert took < 10 * BOUND  # the fetch timeout fired (10x margin)


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
    async with CertificateFetcher(fetcher.trust, big, client=fetcher.client) as roomy:
        exc, took = await timed(roomy, url)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert "at most 8" in exc.detail
    assert took < 10 * BOUND  # the fetch timeout fired (10x margin)


async def test_redirect_loop_is_not_followed(fetcher: CertificateFetcher, repo: Repository) -> None:
    first = repo.redirect("/a.pem", repo.url("/b.pem"))
    repo.redirect("/b.pem", repo.url("/a.pem"))
    exc, took = await timed(fetcher, first)
    assert isinstance(exc, errors.X5uFetchFailed)
    assert 1 == repo.counts["/a.pem"]
    assert 0 == repo.counts["/b.pem"]
    assert took < 10 * BOUND


async def test_a_tls_handshake_that_stalls(fetcher: CertificateFetcher) -> None:
    """A server that accepts the connection and then says nothing."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = dataclasses.replace(fetcher.client, ports=frozenset({port}))
        async with CertificateFetcher(fetcher.trust, fetcher.settings, client=client) as stalled:
            exc, took = await timed(stalled, f"https://127.0.0.1:{port}/sp.pem")
        assert isinstance(exc, errors.X5uFetchFailed)
        assert took < 10 * BOUND  # the fetch timeout fired (10x margin)
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
    async with client.post(
        "/stir/v1/verification", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        answer = await resp.json()
    assert 400 == resp.status
    assert "requestError" in answer


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
    body = io.BytesIO(json.dumps({"identity": [value] * 10000}).encode())
    async with client.post(
        "/v1/verify", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        answer = await resp.json()
    assert 200 == resp.status
    assert (438, "identity_malformed") == (answer["reason"]["sip_code"], answer["reason"]["slug"])
    assert "at most 32" in answer["reason"]["detail"]  # the other 9,968 are not looked at


# -- hostile HTTP clients on raw sockets: aiohttp's server bounds each one ----------------------

PATH = "/stir/v1/verification"


class GatedSource:
    """The test signer's chain, handed out only once ``gate`` is set."""

    def __init__(self, pki: TestPKI) -> None:
        self.source = ChainSource(TrustStore([pki.root.cert]), [pki.signer])
        self.gate = asyncio.Event()
        self.called = asyncio.Event()
        """Set once a request asked for a chain."""

    async def get(self, x5u: str, *, now: float) -> Credential:
        self.called.set()
        await self.gate.wait()
        return await self.source.get(x5u, now=now)

    def vouched(self, x5u: str) -> None:
        self.source.vouched(x5u)


@contextlib.asynccontextmanager
async def serving(
    pki: TestPKI, now: int, credentials: CredentialSource | None = None
) -> AsyncIterator[tuple[web.Application, int]]:
    """The app on a free port of 127.0.0.1, as ``verifier serve`` runs it."""
    trust = TrustStore([pki.root.cert])
    settings = Settings(host="127.0.0.1", records=RecordSettings(enabled=False))
    app = create_app(
        settings,
        trust=trust,
        credentials=credentials or ChainSource(trust, [pki.signer]),
        clock=lambda: float(now),
    )
    runner, site = await start_site(app, settings, port=0)
    try:
        yield app, site.port
    finally:
        await runner.cleanup()


def raw_request(body: str, *, head: str = "Host: 127.0.0.1\r\n", end: bytes = b"\r\n") -> bytes:
    data = body.encode()
    return (
        (
            f"POST {PATH} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n"
        ).encode()
        + end
        + data
    )


def atis_body(pki: TestPKI, now: int) -> str:
    request = {
        "from": {"tn": "12155551212"},
        "to": {"tn": ["12155551213"]},
        "time": now,
        "identity": pki.signer.identity(iat=now),
    }
    return json.dumps({"verificationRequest": request})


async def status_of(port: int, raw: bytes) -> int:
    """The status of the server's answer to ``raw`` (bounded: 10 s at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_pipelined_requests_never_read_back_pause_the_reading(pki: TestPKI, now: int) -> None:
    """A client that pipelines requests without reading the answers: once a request is
    waiting, the server stops reading the connection (its memory is bounded), and answers
    once the request is served."""
    source = GatedSource(pki)
    one = raw_request(atis_body(pki, now))
    async with serving(pki, now, source) as (_app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent, stalled = 0, False
        while sent < 20_000:  # far more bytes than the socket buffers on both sides hold
            writer.write(one * 50)
            sent += 50
            try:
                await asyncio.wait_for(writer.drain(), 2)
            except TimeoutError:
                stalled = True
                break
        assert stalled, "the server read every pipelined request while the first waited"
        source.gate.set()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert first.startswith(b"HTTP/1.1 200")
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert 200 == await status_of(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")


async def test_a_half_closed_connection_is_closed_not_left_in_close_wait(
    pki: TestPKI, now: int
) -> None:
    """The client shuts its sending half (after a request, or before any): the server closes
    the connection too (aiohttp does not answer a request whose connection half-closed)."""
    async with serving(pki, now) as (_app, port):
        for raw in (raw_request(atis_body(pki, now)), b""):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            writer.write_eof()
            rest = await asyncio.wait_for(reader.read(), 10)  # ends once the server closes
            writer.close()
            assert b"" == rest or rest.startswith(b"HTTP/1.1 200"), rest[:100]
            assert reader.at_eof()


@pytest.mark.parametrize(
    "raw",
    [
        raw_request("{}", end=b"\n"),  # the head ends in CRLF LF
        raw_request("{}", head="Host: a\r\nHost: b\r\n"),  # duplicate Host
        raw_request("{}", head=""),  # no Host
        raw_request("{}", head="".join(f"X-H{i}: v\r\n" for i in range(129)) + "Host: x\r\n"),
    ],
    ids=["crlf-lf", "two-hosts", "no-host", "129-header-lines"],
)
async def test_malformed_heads_are_answered_4xx(pki: TestPKI, now: int, raw: bytes) -> None:
    async with serving(pki, now) as (_app, port):
        status = await status_of(port, raw)
    assert 400 <= status < 500


async def test_a_client_gone_mid_body_is_counted_not_an_error(
    pki: TestPKI, now: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(pki, now) as (app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw_request(atis_body(pki, now))[:-10])  # ten bytes short
        await writer.drain()
        writer.close()
        assert b"" == await asyncio.wait_for(reader.read(), 10)

        async def logged() -> None:  # the server sees the close in its own time
            while "client_disconnected" not in [r.getMessage() for r in caplog.records]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        await asyncio.wait_for(logged(), 10)
        text = app[SERVICE].metrics.render().decode()
    assert "verifier_client_disconnects_total 1.0" in text
    assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- the API's HTTP behaviour on raw sockets (served by aiohttp alone) ---------------------------


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return Reply(int(lines[0].split()[1]), headers, json.loads(body) if body else None)


async def test_pipelined_requests_are_answered_in_order(pki: TestPKI, now: int) -> None:
    raws = [
        raw_request(atis_body(pki, now), head=f"Host: x\r\nX-RequestID: r{i}\r\n") for i in range(3)
    ]
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with serving(pki, now) as (_app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raws[0] + raws[1] + health + raws[2])
        replies = [await read_reply(reader) for _ in range(4)]
        writer.close()
    assert ["r0", "r1", None, "r2"] == [r.headers.get("x-requestid") for r in replies]
    assert "ok" == replies[2].body["status"]
    assert {"TN-Validation-Passed"} == {
        r.body["verificationResponse"]["verstat"] for r in (replies[0], replies[1], replies[3])
    }


async def test_a_request_in_single_bytes_with_connection_close(pki: TestPKI, now: int) -> None:
    raw = raw_request(atis_body(pki, now), head="Host: x\r\nConnection: close\r\n")
    async with serving(pki, now) as (_app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(len(raw)):
            writer.write(raw[i : i + 1])
            await writer.drain()
        reply = await read_reply(reader)
        assert b"" == await asyncio.wait_for(reader.read(), 10)  # the server closed
        writer.close()
    assert "close" == reply.headers["connection"]
    assert "TN-Validation-Passed" == reply.body["verificationResponse"]["verstat"]


async def test_expect_100_continue_is_met_before_the_body(pki: TestPKI, now: int) -> None:
    raw = raw_request(atis_body(pki, now), head="Host: x\r\nExpect: 100-continue\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    async with serving(pki, now) as (_app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(body)
        reply = await read_reply(reader)
        writer.close()
    assert b"HTTP/1.1 100 Continue\r\n\r\n" == interim
    assert "TN-Validation-Passed" == reply.body["verificationResponse"]["verstat"]


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    pki: TestPKI, now: int
) -> None:
    trust = TrustStore([pki.root.cert])
    settings = Settings(
        host="127.0.0.1", keepalive_timeout=0.2, records=RecordSettings(enabled=False)
    )
    app = create_app(settings, trust=trust, credentials=ChainSource(trust, [pki.signer]))
    runner, site = await start_site(app, settings, port=0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await read_reply(reader)
        assert b"" == await asyncio.wait_for(reader.read(), 10)  # closed once idle
        writer.close()
    finally:
        await runner.cleanup()
    assert 200 == reply.status


async def test_shutdown_answers_the_request_in_flight_and_closes_idle_connections(
    pki: TestPKI, now: int
) -> None:
    source = GatedSource(pki)
    trust = TrustStore([pki.root.cert])
    settings = Settings(host="127.0.0.1", records=RecordSettings(enabled=False))
    app = create_app(settings, trust=trust, credentials=source, clock=lambda: float(now))
    runner, site = await start_site(app, settings, port=0)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", site.port)
    idle_writer.write(b"POST /stir")  # a partial request, then nothing
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    writer.write(raw_request(atis_body(pki, now)))
    await asyncio.wait_for(source.called.wait(), 10)  # in flight, waiting
    cleanup = asyncio.create_task(runner.cleanup())  # what SIGTERM does
    await asyncio.sleep(0)
    source.gate.set()
    reply = await read_reply(reader)
    await asyncio.wait_for(cleanup, 20)
    assert b"" == await asyncio.wait_for(idle_reader.read(), 10)
    assert b"" == await asyncio.wait_for(reader.read(), 10)
    writer.close()
    idle_writer.close()
    assert "TN-Validation-Passed" == reply.body["verificationResponse"]["verstat"]


class ResetSource:
    """A credential source whose own connection is reset (a bug's stand-in: a real fetcher
    turns that into a 436 verdict)."""

    async def get(self, x5u: str, *, now: float) -> Credential:
        raise ConnectionResetError("the repository reset its connection")

    def vouched(self, x5u: str) -> None:
        raise AssertionError("no PASSporT can pass under this source")


async def test_a_reset_that_is_not_the_clients_is_an_internal_error(
    pki: TestPKI, now: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(pki, now, ResetSource()) as (app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw_request(atis_body(pki, now)))
        reply = await read_reply(reader)
        writer.close()
        text = app[SERVICE].metrics.render().decode()
    assert 500 == reply.status
    assert "POL5000" == reply.body["requestError"]["policyException"]["messageId"]
    assert "verifier_client_disconnects_total 0.0" in text
    assert ["internal_error"] == [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
