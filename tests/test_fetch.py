"""verifier.net.fetch: x5u rules, SSRF refusals, the cache layers, against a real local HTTPS
repository (verifier.testing.repository) on 127.0.0.1. The only fakes: the clock, and DNS answers
for names of other networks. Nothing here connects anywhere but 127.0.0.1."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from yarl import URL

from verifier.core import errors
from verifier.core.certs import TrustStore
from verifier.core.verify import CallInfo, verify
from verifier.net.coldfetch import ColdFetchBudget
from verifier.net.fetch import CertificateFetcher, FetchSettings
from verifier.net.transport import HttpClientSettings
from verifier.testing import TestPKI, pem
from verifier.testing.repository import Repository

if TYPE_CHECKING:
    from conftest import Accepted, FreshUntil

SLOW = 0.3  # the total timeout in tests that wait for one
CLIENT_KEYS = frozenset(f.name for f in dataclasses.fields(HttpClientSettings))


class Clock:
    """The fetcher's bookkeeping clock, moved by hand. Starts at the real time, so that
    certificate validity (real dates) and cache lifetimes share one time line."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


class NoConnector(aiohttp.BaseConnector):
    """A connector that never opens a socket: it records the attempt and fails. Sessions
    built on it prove that a refusal happened before any connection was tried."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[str] = []

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        self.attempts.append(str(req.url))
        raise aiohttp.ClientConnectorError(req.connection_key, OSError("no network in tests"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeFetcher = Callable[..., Awaitable[CertificateFetcher]]


@pytest.fixture
async def make_fetcher(
    repo: Repository, ca_file: str, trust: TrustStore, clock: Clock
) -> AsyncIterator[MakeFetcher]:
    """``await make_fetcher(**settings)``: a fetcher for the repository (its port allowed,
    loopback allowed, its TLS CA trusted, the fake clock), closed after the test. The keys
    of HttpClientSettings go to its ``client``, the others to its FetchSettings."""
    opened: list[CertificateFetcher] = []

    async def make(
        *, session: aiohttp.ClientSession | None = None, resolver: Any = None, **kw: Any
    ) -> CertificateFetcher:
        kw.setdefault("ports", frozenset({repo.port}))
        kw.setdefault("allow_private", True)
        kw.setdefault("ca_file", ca_file)
        kw.setdefault("timeout", 2.0)
        extra: dict[str, Any] = {"resolver": resolver} if resolver is not None else {}
        if "on_load" in kw:
            extra["on_load"] = kw.pop("on_load")
        client = HttpClientSettings(**{k: kw.pop(k) for k in CLIENT_KEYS & kw.keys()})
        fetcher = CertificateFetcher(
            kw.pop("trust", trust),
            FetchSettings(**kw),
            client=client,
            session=session,
            clock=clock,
            **extra,
        )
        await fetcher.__aenter__()
        opened.append(fetcher)
        return fetcher

    yield make
    for fetcher in opened:
        await fetcher.close()


@pytest.fixture
async def no_network() -> AsyncIterator[tuple[aiohttp.ClientSession, NoConnector]]:
    connector = NoConnector()
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session, connector


# -- fetching ----------------------------------------------------------------------------------


async def test_fetches_validates_and_caches(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, accepted: Accepted
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher()
    first = await fetcher.get(url, now=time.time())
    second = await fetcher.get(url, now=time.time())
    accepted(first, pki.signer)
    assert first is second
    assert 1 == repo.counts["/sp.pem"]
    stats = fetcher.stats()
    assert (1, 1, 1, 1) == (stats["misses"], stats["hits"], stats["fetches"], stats["cache_size"])


async def test_der_body(
    repo: Repository, make_fetcher: MakeFetcher, pki: TestPKI, accepted: Accepted
) -> None:
    url = repo.put(
        "/sp.der", pki.signer.cert.public_bytes(Encoding.DER), content_type="application/pkix-cert"
    )
    fetcher = await make_fetcher(trust=TrustStore([pki.ca.cert]))  # the leaf alone: CA anchors
    credential = await fetcher.get(url, now=time.time())
    accepted(credential, pki.signer, chain_length=2)  # the leaf and its CA anchor
    assert credential.certificate is not None
    assert pki.signer.cert.serial_number == int(credential.certificate.serial, 16)


async def test_pipeline_verifies_with_fetched_x5u(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem())
    signer = pki.ca.issue_leaf("5678", x5u=url)
    repo.put("/sp.pem", signer.chain_pem())
    fetcher = await make_fetcher()
    now = time.time()
    result = await verify(
        signer.identity(orig="12155551212", dest="12155551213", iat=int(now)),
        now=now,
        credentials=fetcher,
        call=CallInfo(from_="12155551212", to="12155551213"),
    )
    assert errors.TN_VALIDATION_PASSED == result.verstat
    assert result.certificate is not None and ("5678",) == result.certificate.spc
    assert (
        result.certificate.fingerprint_sha256
        == hashlib.sha256(signer.cert.public_bytes(Encoding.DER)).hexdigest()
    )
    assert 3 == len(result.certificate.chain)


# -- the URL rules: refused before anything is sent ---------------------------------------------


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("http://127.0.0.1:{port}/sp.pem", "scheme must be https"),
        ("https://127.0.0.1:{bad}/sp.pem", "port"),
        ("https://127.0.0.1:{port}/sp.pem?x=1", "query"),
        ("https://user@127.0.0.1:{port}/sp.pem", "userinfo"),
        ("https://127.0.0.1:{port}/sp.pem#f", "fragment"),
    ],
)
async def test_url_rules(
    repo: Repository,
    make_fetcher: MakeFetcher,
    no_network: tuple[aiohttp.ClientSession, NoConnector],
    template: str,
    words: str,
) -> None:
    session, connector = no_network
    fetcher = await make_fetcher(session=session)
    url = template.format(port=repo.port, bad=repo.http_port)
    with pytest.raises(errors.X5uRefused, match=words):
        await fetcher.get(url, now=time.time())
    assert [] == connector.attempts


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.0.0.1/sp.pem", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://127.0.0.1/sp.pem", "loopback"),
        ("https://[::1]/sp.pem", "loopback"),
        ("https://[::ffff:10.0.0.1]/sp.pem", "IPv4-mapped private"),
        ("https://100.64.0.1/sp.pem", "CGNAT"),
        ("https://[fe80::1]/sp.pem", "link-local"),
        ("https://0.0.0.0/sp.pem", "this network"),
    ],
)
async def test_refused_addresses_are_never_connected(
    make_fetcher: MakeFetcher,
    no_network: tuple[aiohttp.ClientSession, NoConnector],
    url: str,
    why: str,
) -> None:
    session, connector = no_network
    fetcher = await make_fetcher(session=session, allow_private=False, ports=frozenset({443}))
    with pytest.raises(errors.X5uRefused, match=why) as info:
        await fetcher.get(url, now=time.time())
    assert "refused before connecting" in info.value.detail
    assert 436 == info.value.sip_code
    assert [] == connector.attempts


async def test_loopback_refused_without_the_allowance(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher(allow_private=False)
    with pytest.raises(errors.X5uRefused, match=r"127\.0\.0\.1 is loopback"):
        await fetcher.get(url, now=time.time())
    assert 0 == repo.requests


async def test_allow_list_cidr_admits_loopback(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, accepted: Accepted
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher(allow_private=False, private_allow=("127.0.0.0/8",))
    accepted(await fetcher.get(url, now=time.time()), pki.signer)


async def test_name_resolving_to_private_address_is_refused(
    make_fetcher: MakeFetcher, no_network: tuple[aiohttp.ClientSession, NoConnector]
) -> None:
    asked: list[tuple[str, int]] = []

    async def dns(host: str, port: int) -> list[str]:  # the answer of another network
        asked.append((host, port))
        return ["192.0.2.10", "10.1.2.3"] if host == "certs.example.net" else []

    session, connector = no_network
    fetcher = await make_fetcher(
        session=session, resolver=dns, allow_private=False, ports=frozenset({443})
    )
    with pytest.raises(errors.X5uRefused, match=r"certs\.example\.net resolves to 192\.0\.2\.10"):
        await fetcher.get("https://certs.example.net/sp.pem", now=time.time())
    assert [("certs.example.net", 443)] == asked
    assert [] == connector.attempts


async def test_ipv6_repository(
    pki: TestPKI, make_fetcher: MakeFetcher, tmp_path: Path, accepted: Accepted
) -> None:
    async with Repository.create(pki, host="::1") as repo6:
        url = repo6.put("/sp.pem", pki.signer.chain_pem())
        assert url.startswith("https://[::1]:")
        ca = _write(tmp_path / "ca6.pem", repo6.ca_pem)
        fetcher = await make_fetcher(ports=frozenset({repo6.port}), ca_file=None)
        fetcher_ca = await make_fetcher(ports=frozenset({repo6.port}), ca_file=ca)
        with pytest.raises(errors.X5uFetchFailed, match="TLS certificate"):  # system store
            await fetcher.get(url, now=time.time())
        accepted(await fetcher_ca.get(url, now=time.time()), pki.signer)
        assert 1 == repo6.counts["/sp.pem"]


async def test_connects_to_the_vetted_address_with_the_original_name(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, accepted: Accepted
) -> None:
    asked: list[str] = []

    async def dns(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher(resolver=dns)
    url = f"https://localhost:{repo.port}/sp.pem"  # the TLS certificate names localhost
    accepted(await fetcher.get(url, now=time.time()), pki.signer)
    assert ["localhost"] == asked  # resolved once, by us; aiohttp connected to the IP
    assert 1 == repo.counts["/sp.pem"]


async def test_tls_hostname_is_checked_against_the_x5u_host(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    async def dns(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher(resolver=dns)
    with pytest.raises(errors.X5uFetchFailed, match=r"TLS certificate of evil\.test"):
        await fetcher.get(f"https://evil.test:{repo.port}/sp.pem", now=time.time())
    assert 0 == repo.requests


async def test_unresolvable_name(
    make_fetcher: MakeFetcher, no_network: tuple[aiohttp.ClientSession, NoConnector]
) -> None:
    async def dns(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    session, connector = no_network
    fetcher = await make_fetcher(session=session, resolver=dns, ports=frozenset({443}))
    with pytest.raises(errors.X5uFetchFailed, match=r"cannot resolve x5u host nx\.example"):
        await fetcher.get("https://nx.example/sp.pem", now=time.time())
    assert [] == connector.attempts


async def test_repository_tls_untrusted_by_default(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(pem(pki.root.cert))  # a CA that did not issue the TLS certificate
    url = repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher(ca_file=str(other))
    with pytest.raises(
        errors.X5uFetchFailed, match=r"TLS certificate of 127\.0\.0\.1 not accepted"
    ):
        await fetcher.get(url, now=time.time())


@pytest.mark.parametrize(
    ("lists", "words"),
    [
        ({"host_deny": ("127.0.0.1",)}, "deny list"),
        ({"host_allow": (".sti.example",)}, "not on the allow list"),
    ],
)
async def test_host_lists(
    pki: TestPKI,
    repo: Repository,
    make_fetcher: MakeFetcher,
    lists: dict[str, tuple[str, ...]],
    words: str,
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher(**lists)
    with pytest.raises(errors.X5uRefused, match=words):
        await fetcher.get(url, now=time.time())
    assert 0 == repo.requests


# -- what the repository answers ---------------------------------------------------------------


async def test_redirect_not_followed(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    target = repo.put("/real.pem", pki.signer.chain_pem())
    url = repo.redirect("/moved.pem", target)
    fetcher = await make_fetcher()
    with pytest.raises(errors.X5uFetchFailed, match=r"302 redirect .* not followed"):
        await fetcher.get(url, now=time.time())
    assert (1, 0) == (repo.counts["/moved.pem"], repo.counts["/real.pem"])


@pytest.mark.parametrize("behaviour", ["normal", "endless"])
async def test_body_cap(
    repo: Repository, make_fetcher: MakeFetcher, pki: TestPKI, behaviour: Any
) -> None:
    url = repo.put("/big.pem", pki.signer.chain_pem() * 40, behaviour=behaviour)
    fetcher = await make_fetcher(max_body=4096)
    with pytest.raises(errors.X5uFetchFailed, match=r"limit .*4096"):
        await fetcher.get(url, now=time.time())


async def test_slow_body_times_out(
    repo: Repository, make_fetcher: MakeFetcher, pki: TestPKI
) -> None:
    url = repo.put("/slow.pem", pki.signer.chain_pem(), behaviour="stall")
    fetcher = await make_fetcher(timeout=SLOW)
    started = time.monotonic()
    with pytest.raises(errors.X5uFetchFailed, match=f"no complete answer within {SLOW:g} s"):
        await fetcher.get(url, now=time.time())
    assert time.monotonic() - started < 10 * SLOW  # the timeout fired (10x margin)


@pytest.mark.parametrize(
    ("status", "body", "content_type", "words"),
    [
        (404, b"not here", "text/plain", "HTTP 404, not 200"),
        (200, b"<html><body>Login</body></html>", "text/html", "looks like HTML"),
        (200, b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "", "not a cert"),
        (200, b"\x30\x03\x02\x01\x01", "application/pkix-cert", "not a certificate chain"),
    ],
)
async def test_bad_answers(
    repo: Repository,
    make_fetcher: MakeFetcher,
    status: int,
    body: bytes,
    content_type: str,
    words: str,
) -> None:
    url = repo.put("/x.pem", body, status=status, content_type=content_type or "text/plain")
    fetcher = await make_fetcher()
    with pytest.raises(errors.X5uFetchFailed, match=words) as info:
        await fetcher.get(url, now=time.time())
    assert 436 == info.value.sip_code


async def test_private_key_pem_is_not_a_chain(
    repo: Repository, make_fetcher: MakeFetcher, pki: TestPKI
) -> None:
    url = repo.put("/key.pem", pki.signer.key_pem())
    fetcher = await make_fetcher()
    with pytest.raises(errors.X5uFetchFailed, match="not a certificate chain"):
        await fetcher.get(url, now=time.time())


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("expired", errors.CertificateExpired),
        ("untrusted", errors.CertificateNotTrusted),
        ("no-tnauthlist", errors.TNAuthListMissing),
    ],
)
async def test_bad_chains_are_437(
    repo: Repository, make_fetcher: MakeFetcher, pki: TestPKI, kind: str, error: type[Exception]
) -> None:
    now = dt.datetime.now(dt.UTC)
    signer = {
        "expired": lambda: pki.ca.issue_leaf(
            not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        ),
        "untrusted": lambda: pki.untrusted_root().issue_leaf(),
        "no-tnauthlist": lambda: pki.ca.issue_leaf(tnauthlist=None),
    }[kind]()
    url = repo.put(f"/{kind}.pem", signer.chain_pem())
    fetcher = await make_fetcher()
    with pytest.raises(error) as info:
        await fetcher.get(url, now=time.time())
    assert 437 == getattr(info.value, "sip_code", None)


async def test_hit_rechecks_validity_at_now(
    repo: Repository, make_fetcher: MakeFetcher, pki: TestPKI
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher()
    await fetcher.get(url, now=time.time())
    later = pki.signer.cert.not_valid_after_utc.timestamp() + 1
    with pytest.raises(errors.CertificateExpired):
        await fetcher.get(url, now=later)
    assert 1 == repo.requests


# -- single flight, negative cache, breaker ----------------------------------------------------


async def test_single_flight_one_request_for_a_thousand_calls(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    url = repo.put("/sp.pem", b"")
    signer = pki.ca.issue_leaf("4321", x5u=url)
    repo.put("/sp.pem", signer.chain_pem(), delay=0.05)
    fetcher = await make_fetcher()
    now = time.time()
    call = CallInfo(from_="12155551212", to="12155551213")
    values = [
        signer.identity(orig="12155551212", dest="12155551213", iat=int(now)) for _ in range(1000)
    ]
    results = await asyncio.gather(
        *(verify(v, now=now, credentials=fetcher, call=call) for v in values)
    )
    assert {errors.TN_VALIDATION_PASSED} == {r.verstat for r in results}
    assert 1 == repo.counts["/sp.pem"]
    assert (1000, 999) == (fetcher.stats()["misses"], fetcher.stats()["coalesced"])


async def test_single_flight_shares_failures(repo: Repository, make_fetcher: MakeFetcher) -> None:
    url = repo.put("/gone.pem", b"", status=404, delay=0.05)
    fetcher = await make_fetcher()
    outcomes = await asyncio.gather(
        *(fetcher.get(url, now=time.time()) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(o, errors.X5uFetchFailed) for o in outcomes)
    assert 50 == len({id(o) for o in outcomes})  # each caller gets its own exception
    assert 1 == repo.counts["/gone.pem"]


async def test_failures_are_cached_briefly(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, clock: Clock, accepted: Accepted
) -> None:
    url = repo.put("/sp.pem", b"", status=403)  # a 404 is remembered longer (below)
    fetcher = await make_fetcher(failure_ttl=30)
    for _ in range(3):
        with pytest.raises(errors.X5uFetchFailed, match="403"):
            await fetcher.get(url, now=time.time())
    assert 1 == repo.counts["/sp.pem"]
    assert 2 == fetcher.stats()["negative_hits"]
    repo.put("/sp.pem", pki.signer.chain_pem())
    clock.advance(29)
    with pytest.raises(errors.X5uFetchFailed, match="403"):
        await fetcher.get(url, now=time.time())
    clock.advance(2)
    accepted(await fetcher.get(url, now=time.time()), pki.signer)
    assert 2 == repo.counts["/sp.pem"]


async def test_circuit_breaker(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, clock: Clock, accepted: Accepted
) -> None:
    for i in range(5):
        repo.put(f"/{i}.pem", b"down", status=503)
    fetcher = await make_fetcher(breaker_threshold=3, breaker_cooldown=60)
    for i in range(3):
        with pytest.raises(errors.X5uFetchFailed, match="HTTP 503"):
            await fetcher.get(repo.url(f"/{i}.pem"), now=time.time())
    assert 1 == fetcher.stats()["breaker_opens"]
    with pytest.raises(errors.X5uFetchFailed, match=r"circuit open for 127\.0\.0\.1"):
        await fetcher.get(repo.url("/3.pem"), now=time.time())
    assert 0 == repo.counts["/3.pem"]  # failed fast
    assert 1 == fetcher.stats()["breakers_open"]
    assert 3 == fetcher.stats()["fetch_errors"]["127.0.0.1"]
    clock.advance(61)  # cool-down over: one trial, which succeeds and closes the circuit
    repo.put("/4.pem", pki.signer.chain_pem())
    accepted(await fetcher.get(repo.url("/4.pem"), now=time.time()), pki.signer)
    assert 0 == fetcher.stats()["breakers_open"]


async def test_breaker_counts_a_stalled_body(repo: Repository, make_fetcher: MakeFetcher) -> None:
    fetcher = await make_fetcher(breaker_threshold=3, breaker_cooldown=60, timeout=0.3)
    for i in range(3):  # headers and the first bytes arrive, then nothing
        url = repo.put(f"/stall{i}.pem", b"-----BEGIN CERTIFICATE-----\n" * 64, behaviour="stall")
        with pytest.raises(errors.X5uFetchFailed, match="no complete answer"):
            await fetcher.get(url, now=time.time())
    assert 1 == fetcher.stats()["breaker_opens"]
    with pytest.raises(errors.X5uFetchFailed, match=r"circuit open for 127\.0\.0\.1"):
        await fetcher.get(repo.put("/next.pem", b"", behaviour="stall"), now=time.time())
    assert 0 == repo.counts["/next.pem"]


async def test_waiting_for_a_slot_is_not_the_hosts_fault(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, accepted: Accepted
) -> None:
    # 12 new x5u at once, 8 slots: the last 4 wait for one, then get their own timeout
    fetcher = await make_fetcher(breaker_threshold=1, timeout=1.0, max_per_host=8)
    urls = [repo.put(f"/q{i}.pem", pki.signer.chain_pem(), delay=0.7) for i in range(12)]
    credentials = await asyncio.gather(*(fetcher.get(u, now=time.time()) for u in urls))
    for credential in credentials:
        accepted(credential, pki.signer)
    assert (0, {}) == (fetcher.stats()["breaker_opens"], fetcher.stats()["fetch_errors"])


async def test_over_the_cap_is_busy_and_not_blamed_or_remembered(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, accepted: Accepted
) -> None:
    # one slot, held by a stalled body for the 2 s timeout; the next waits 0.3 s for it
    fetcher = await make_fetcher(
        breaker_threshold=2, timeout=2.0, connect_timeout=0.3, max_per_host=1
    )
    stalled = repo.put("/stalled.pem", b"-----BEGIN", behaviour="stall")
    good = repo.put("/good.pem", pki.signer.chain_pem())
    holder = asyncio.create_task(fetcher.get(stalled, now=time.time()))
    for _ in range(500):  # until the holder's request has reached the repository
        if repo.counts["/stalled.pem"]:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(errors.X5uFetchFailed, match="busy: 1 fetches to it already running"):
        await fetcher.get(good, now=time.time())
    assert 0 == repo.counts["/good.pem"]
    assert {} == fetcher.stats()["fetch_errors"]  # busy is not a host failure
    assert 1 == fetcher.stats()["fetch_busy"]
    with pytest.raises(errors.X5uFetchFailed, match="no complete answer"):
        await holder
    assert {"127.0.0.1": 1} == fetcher.stats()["fetch_errors"]
    accepted(await fetcher.get(good, now=time.time()), pki.signer)  # busy was not remembered
    assert (1, 0) == (repo.counts["/good.pem"], fetcher.stats()["breaker_opens"])


async def test_breaker_ignores_4xx(repo: Repository, make_fetcher: MakeFetcher) -> None:
    fetcher = await make_fetcher(breaker_threshold=2)
    for i in range(4):  # a hostile x5u naming missing paths must not shut a host out
        with pytest.raises(errors.X5uFetchFailed, match="404"):
            await fetcher.get(repo.url(f"/missing{i}.pem"), now=time.time())
    assert 0 == fetcher.stats()["breaker_opens"]


# -- forged x5u: the budget of cold fetches and the 404 memory ---------------------------------


def _forged(repo: Repository, count: int, directory: str = "/") -> list[str]:
    """``count`` x5u on random-looking paths the repository does not have (404)."""
    return [repo.url(f"{directory}{i:016x}{i * 7919:08x}.pem") for i in range(count)]


async def _outcomes(
    fetcher: CertificateFetcher, urls: list[str], *, signed: bool = True
) -> list[str]:
    """Ask for each x5u in turn, as a call would: "ok", "busy" (refused, no request) or
    "404". ``signed``: each call's signature then verifies under the chain it got (the
    pipeline vouches for the x5u), as a legitimate call's does; not a forger's."""
    out = []
    for url in urls:
        try:
            await fetcher.get(url, now=time.time())
        except errors.X5uFetchFailed as exc:
            out.append("busy" if "busy" in exc.detail else "404" if "404" in exc.detail else "?")
            continue
        out.append("ok")
        if signed:
            fetcher.vouched(url)
    return out


async def test_a_flood_of_missing_paths_is_refused_beyond_the_budget_without_a_request(
    repo: Repository, make_fetcher: MakeFetcher, clock: Clock
) -> None:
    fetcher = await make_fetcher(cold_fetch_rate=1, cold_fetch_burst=5, breaker_threshold=1)
    forged = _forged(repo, 20)
    assert ["404"] * 5 + ["busy"] * 15 == await _outcomes(fetcher, forged)
    assert 5 == repo.requests  # the 15 refused sent nothing
    stats = fetcher.stats()
    assert (15, 0, {}) == (
        stats["fetch_rate_limited"],
        stats["breaker_opens"],
        stats["fetch_errors"],
    )
    assert 0 == stats["negative_size"]  # a refusal is not the URL's failure
    clock.advance(2)  # two tokens: a refused path is fetched now, not answered from memory
    assert ["404", "404", "busy"] == await _outcomes(fetcher, forged[5:8])
    assert (1, 1, 0) == tuple(repo.counts[URL(u).path] for u in forged[5:8])


@pytest.mark.parametrize(
    ("signed", "chains", "then"),
    [
        (True, ["ok"] * 10, ["404", "404", "busy"]),  # each token came back
        (False, ["ok"] * 2 + ["busy"] * 8, ["busy"] * 3),  # copies a forger serves
    ],
    ids=["signed", "copies"],
)
async def test_a_fetch_costs_nothing_once_a_signature_verifies_under_its_chain(
    pki: TestPKI,
    repo: Repository,
    make_fetcher: MakeFetcher,
    signed: bool,
    chains: list[str],
    then: list[str],
) -> None:
    # ten valid chains, each in a directory never seen: a call's signature verifies under
    # each (signed), or none does (a forger serving copies of a real chain at paths of its
    # own, signing with its own key): then each fetch spends the host's budget
    fetcher = await make_fetcher(cold_fetch_rate=0.001, cold_fetch_burst=2)
    urls = [repo.put(f"/sp{i}/cert.pem", pki.signer.chain_pem()) for i in range(10)]
    assert chains == await _outcomes(fetcher, urls, signed=signed)
    assert then == await _outcomes(fetcher, _forged(repo, 3))
    assert chains.count("ok") + then.count("404") == repo.requests


def test_unknown_hosts_share_one_budget_and_known_hosts_never_wait_on_it(clock: Clock) -> None:
    budget = ColdFetchBudget(
        rate=0.001,
        burst=100,
        not_found_ttl=300,
        not_found_size=10,
        size=100,
        clock=clock,
        unknown_hosts_rate=0.001,
        unknown_hosts_burst=3,
    )

    def outcomes(hosts: list[str]) -> list[str]:
        out = []
        for host in hosts:
            try:
                budget.take(URL(f"https://{host}/x.pem"))
                out.append("ok")
            except errors.X5uFetchFailed as exc:
                out.append("unknown" if "unknown hosts" in exc.detail else "host")
        return out

    forger = [f"h{i}.forger.example" for i in range(6)]  # a forger's hosts: 3 fetches in all
    assert ["ok"] * 3 + ["unknown"] * 3 == outcomes(forger)
    budget.served(URL("https://cr.carrier.example/sp.pem"), fetched=False)  # from a store
    assert ["ok"] * 5 == outcomes(["cr.carrier.example"] * 5)  # known: its own budget only
    budget.served(URL(f"https://{forger[0]}/x.pem"), fetched=True)  # a signature vouched:
    # that host is known from now on, and its fetch's token of the shared budget is back
    assert ["ok", "ok", "ok", "unknown"] == outcomes([forger[0], forger[0], forger[1], forger[2]])
    clock.advance(1000)  # one token of each kind
    assert ["ok", "unknown"] == outcomes(forger[2:4])


async def test_a_forgers_hosts_share_the_unknown_hosts_budget(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    # two hosts of one repository (127.0.0.1 and localhost): copies on either spend one
    # budget; once a call is signed under a chain of 127.0.0.1, that host no longer waits
    fetcher = await make_fetcher(
        cold_fetch_unknown_hosts_rate=0.001, cold_fetch_unknown_hosts_burst=2
    )
    copies = [repo.put(f"/copies/{i}.pem", pki.signer.chain_pem()) for i in range(4)]
    by_name = [url.replace("127.0.0.1", "localhost") for url in copies]
    assert ["ok", "ok", "busy", "busy"] == await _outcomes(
        fetcher, [copies[0], by_name[1], copies[2], by_name[3]], signed=False
    )
    used = repo.put("/sp.pem", pki.signer.chain_pem())
    assert ["busy"] == await _outcomes(fetcher, [used])  # an unknown host's first chain waits
    fetcher.vouched(copies[0])  # a call's signature verified under a chain of 127.0.0.1:
    # 127.0.0.1 is known from now on, and the token its copy took is back for localhost
    assert ["ok", "ok"] == await _outcomes(fetcher, [used, copies[2]])
    assert ["ok", "busy"] == await _outcomes(fetcher, by_name[2:], signed=False)


async def test_chains_no_signature_uses_do_not_push_out_the_ones_calls_use(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    fetcher = await make_fetcher(cache_size=20, cold_fetch_rate=0)
    used = [repo.put(f"/sp{i}.pem", pki.signer.chain_pem()) for i in range(10)]
    assert ["ok"] * 10 == await _outcomes(fetcher, used)
    copies = [repo.put(f"/copies/{i:08x}.pem", pki.signer.chain_pem()) for i in range(50)]
    assert ["ok"] * 50 == await _outcomes(fetcher, copies, signed=False)
    assert ["ok"] * 10 == await _outcomes(fetcher, used)
    assert [1] * 10 == [repo.counts[URL(u).path] for u in used]  # none fetched again
    assert 10 + 2 == fetcher.stats()["cache_size"]  # the copies churned their tenth only


async def test_a_fetched_chain_is_stored_once_a_signature_vouches_for_it(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, tmp_path: Path
) -> None:
    warm = str(tmp_path / "warm")
    copy = repo.put("/copy.pem", pki.signer.chain_pem())
    used = repo.put("/sp.pem", pki.signer.chain_pem())
    first = await make_fetcher(warm_cache_dir=warm)
    assert ["ok", "ok"] == await _outcomes(first, [copy], signed=False) + await _outcomes(
        first, [used]
    )
    await first.close()  # its stores' writes finish
    second = await make_fetcher(warm_cache_dir=warm)
    assert ["ok", "ok"] == await _outcomes(second, [copy, used])
    assert (2, 1) == (repo.counts["/copy.pem"], repo.counts["/sp.pem"])
    assert 1 == second.stats()["store_hits"]


async def test_a_legitimate_new_x5u_passes_among_a_flood_of_random_paths(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    fetcher = await make_fetcher(cold_fetch_rate=1, cold_fetch_burst=3)
    current = repo.put("/certs/sp-0.pem", pki.signer.chain_pem())  # the carrier's cert in use
    assert ["ok"] == await _outcomes(fetcher, [current])
    forged = _forged(repo, 100)
    calls: list[str] = []
    for i in range(100):  # a new certificate of the carrier after every 10 forged calls
        calls.append(forged[i])
        if i % 10 == 9:
            calls.append(repo.put(f"/certs/sp-{i // 10 + 1}.pem", pki.signer.chain_pem()))
    outcomes = await _outcomes(fetcher, calls)
    legit = [o for url, o in zip(calls, outcomes, strict=True) if "/certs/" in url]
    assert ["ok"] * 10 == legit
    assert 3 == sum(repo.counts[URL(u).path] for u in forged)  # the burst, then refused
    assert 97 == fetcher.stats()["fetch_rate_limited"]


async def test_forged_paths_in_a_known_directory_are_bounded_too(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    fetcher = await make_fetcher(cold_fetch_rate=1, cold_fetch_burst=3)
    current = repo.put("/certs/sp-0.pem", pki.signer.chain_pem())
    assert ["ok"] == await _outcomes(fetcher, [current])
    # the known directory's own budget, then nothing: the other budget is not theirs
    outcomes = await _outcomes(fetcher, _forged(repo, 50, "/certs/"))
    assert ["404"] * 3 + ["busy"] * 47 == outcomes
    assert ["404"] * 3 + ["busy"] * 2 == await _outcomes(fetcher, _forged(repo, 5, "/other/"))
    assert 1 + 3 + 3 == repo.requests


async def test_a_chain_from_a_store_makes_its_directory_known(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, tmp_path: Path
) -> None:
    # a fleet member that got the carrier's chain from a store (here the preload) and never
    # fetched from the host still gives the carrier's directory its own budget
    current = repo.url("/certs/sp-0.pem")
    (tmp_path / "sp.pem").write_bytes(pki.signer.chain_pem())
    (tmp_path / "index.json").write_text(json.dumps({current: "sp.pem"}))
    fetcher = await make_fetcher(cold_fetch_rate=1, cold_fetch_burst=2, preload_dir=str(tmp_path))
    assert ["ok"] == await _outcomes(fetcher, [current])
    assert ["404", "404", "busy"] == await _outcomes(fetcher, _forged(repo, 3))
    new = repo.put("/certs/sp-1.pem", pki.signer.chain_pem())
    assert ["ok"] == await _outcomes(fetcher, [new])
    assert (0, 1) == (repo.counts["/certs/sp-0.pem"], repo.counts["/certs/sp-1.pem"])


async def test_a_404_is_remembered_longer_than_other_failures(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, clock: Clock, accepted: Accepted
) -> None:
    url = repo.put("/sp.pem", b"gone", status=404)
    gone = repo.put("/old.pem", b"gone", status=410)
    fetcher = await make_fetcher(failure_ttl=30, not_found_ttl=300)
    assert ["404"] == await _outcomes(fetcher, [url])
    with pytest.raises(errors.X5uFetchFailed, match="HTTP 410"):
        await fetcher.get(gone, now=time.time())
    repo.put("/sp.pem", pki.signer.chain_pem())
    clock.advance(299)  # past failure_ttl: still remembered, no request
    assert ["404"] == await _outcomes(fetcher, [url])
    with pytest.raises(errors.X5uFetchFailed, match="HTTP 410"):
        await fetcher.get(gone, now=time.time())
    assert (1, 1, 2) == (
        repo.counts["/sp.pem"],
        repo.counts["/old.pem"],
        fetcher.stats()["not_found_hits"],
    )
    clock.advance(2)
    accepted(await fetcher.get(url, now=time.time()), pki.signer)
    assert 2 == repo.counts["/sp.pem"]


async def test_the_404_memory_is_bounded_and_apart_from_the_chain_cache(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    good = repo.put("/sp.pem", pki.signer.chain_pem())
    fetcher = await make_fetcher(cache_size=4, not_found_size=3, cold_fetch_rate=0)
    assert ["ok"] == await _outcomes(fetcher, [good])
    forged = _forged(repo, 10)
    assert ["404"] * 10 == await _outcomes(fetcher, forged)
    stats = fetcher.stats()
    assert (3, 0, 1) == (stats["not_found_size"], stats["negative_size"], stats["cache_size"])
    assert ["ok", "404", "404"] == await _outcomes(fetcher, [good, forged[-1], forged[0]])
    assert 1 == repo.counts["/sp.pem"]  # the chain was not evicted
    paths = [URL(u).path for u in (forged[-1], forged[0])]
    assert (1, 2) == tuple(repo.counts[p] for p in paths)  # the newest kept, the oldest not


# -- lifetimes and stale-while-revalidate ------------------------------------------------------


async def loaded(loads: list[str], count: int) -> None:
    """Wait until the fetcher's ``on_load`` has been told of ``count`` loads (a background
    refresh ends after the call that started it)."""
    for _ in range(2000):
        if len(loads) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(loads)} loads, not {count}")


async def stale_serving(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, **settings: Any
) -> tuple[str, list[str], CertificateFetcher]:
    """The signer's chain at ``/sp.pem`` (``max-age=60``) and a fetcher that keeps it 60 s,
    then serves it stale for 600 s more (``settings``: more of the fetcher's): its URL, the
    outcome of each load the fetcher's ``on_load`` is told of, and the fetcher."""
    url = repo.put("/sp.pem", pki.signer.chain_pem(), headers={"Cache-Control": "max-age=60"})
    loads: list[str] = []
    fetcher = await make_fetcher(
        min_ttl=60, stale_grace=600, on_load=lambda o, _: loads.append(o), **settings
    )
    return url, loads, fetcher


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Cache-Control": "max-age=10"}, 300.0),  # raised to min_ttl
        ({"Cache-Control": "max-age=999999"}, 86400.0),  # lowered to max_ttl
        ({"Cache-Control": "max-age=1200"}, 1200.0),
        ({"Cache-Control": "no-store"}, 300.0),
        ({}, 3600.0),  # default_ttl
    ],
)
async def test_lifetime_clamped(
    pki: TestPKI,
    repo: Repository,
    make_fetcher: MakeFetcher,
    clock: Clock,
    fresh_until: FreshUntil,
    headers: dict[str, str],
    expected: float,
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem(), headers=headers)
    fetcher = await make_fetcher()
    await fetcher.get(url, now=time.time())
    await fresh_until(fetcher, clock, url, clock() + expected)


async def test_lifetime_never_past_not_after(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, clock: Clock, fresh_until: FreshUntil
) -> None:
    now = dt.datetime.now(dt.UTC)
    short = pki.ca.issue_leaf(not_after=now + dt.timedelta(seconds=900))
    url = repo.put("/short.pem", short.chain_pem(), headers={"Cache-Control": "max-age=7200"})
    fetcher = await make_fetcher(stale_grace=3600)
    await fetcher.get(url, now=time.time())
    await fresh_until(fetcher, clock, url, short.cert.not_valid_after_utc.timestamp())
    # and no stale serving past notAfter, grace or not: fetched again
    assert (0, 2) == (fetcher.stats()["stale_served"], repo.counts["/short.pem"])


async def test_stale_while_revalidate(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, clock: Clock
) -> None:
    url, loads, fetcher = await stale_serving(pki, repo, make_fetcher, failure_ttl=30)
    first = await fetcher.get(url, now=time.time())
    clock.advance(61)
    # past its lifetime: served at once, one refresh in the background
    stale = await asyncio.gather(*(fetcher.get(url, now=time.time()) for _ in range(20)))
    assert all(c is first for c in stale)
    await loaded(loads, 2)
    assert 2 == repo.counts["/sp.pem"]
    assert (20, 1) == (fetcher.stats()["stale_served"], fetcher.stats()["refreshes"])
    refreshed = await fetcher.get(url, now=time.time())
    assert refreshed is not first and 1 == fetcher.stats()["hits"]


async def test_grace_keeps_calls_verifying_while_the_repository_is_down(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, clock: Clock
) -> None:
    url, loads, fetcher = await stale_serving(pki, repo, make_fetcher, failure_ttl=30)
    first = await fetcher.get(url, now=time.time())
    repo.put("/sp.pem", b"down", status=503)
    for _ in range(10):  # 61 .. 331 s: stale, refreshes fail, calls still verify
        clock.advance(30)
        assert first is await fetcher.get(url, now=time.time())
        await loaded(loads, 1 + fetcher.stats()["refreshes"])
    assert 10 == fetcher.stats()["refreshes"] + 1  # not before 61 s, then one per 30 s
    assert ["ok"] + ["x5u_fetch_failed"] * 9 == loads
    clock.advance(400)  # grace over
    with pytest.raises(errors.X5uFetchFailed, match="503"):
        await fetcher.get(url, now=time.time())


async def test_refresh_finding_a_bad_chain_ends_stale_serving(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, clock: Clock
) -> None:
    url, loads, fetcher = await stale_serving(pki, repo, make_fetcher)
    await fetcher.get(url, now=time.time())
    repo.put("/sp.pem", pki.untrusted_root().issue_leaf().chain_pem())
    clock.advance(61)
    await fetcher.get(url, now=time.time())  # stale, starts the refresh
    await loaded(loads, 2)
    with pytest.raises(errors.CertificateNotTrusted):
        await fetcher.get(url, now=time.time())


async def test_set_trust_with_the_same_anchors_keeps_every_cached_chain(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    urls = [repo.put(f"/sp{i}.pem", pki.ca.issue_leaf(f"10{i}").chain_pem()) for i in range(5)]
    fetcher = await make_fetcher()
    first = [await fetcher.get(url, now=time.time()) for url in urls]
    fetcher.set_trust(TrustStore([pki.root.cert]))  # a reload of the unchanged root file
    again = [await fetcher.get(url, now=time.time()) for url in urls]
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert (5, 5, 0) == (repo.requests, fetcher.stats()["hits"], fetcher.stats()["reload_kept"])


async def test_set_trust_with_other_anchors_revalidates_without_refetching(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher
) -> None:
    other = pki.untrusted_root()
    kept = repo.put("/kept.pem", pki.signer.chain_pem())
    dropped = repo.put("/dropped.pem", other.issue_leaf().chain_pem())
    fetcher = await make_fetcher(trust=TrustStore([pki.root.cert, other.cert]))
    before = await fetcher.get(kept, now=time.time())
    await fetcher.get(dropped, now=time.time())
    fetcher.set_trust(TrustStore([pki.root.cert]))  # the other anchor is withdrawn
    after = await fetcher.get(kept, now=time.time())
    assert before.certificate == after.certificate
    with pytest.raises(errors.CertificateNotTrusted):  # dropped, then fetched and refused
        await fetcher.get(dropped, now=time.time())
    assert (1, 2) == (repo.counts["/kept.pem"], repo.counts["/dropped.pem"])
    assert (1, 1) == (fetcher.stats()["reload_kept"], fetcher.stats()["reload_drops"])
    assert after is await fetcher.get(kept, now=time.time())  # validated once per change
    assert 1 == fetcher.stats()["reload_kept"]


async def test_a_reload_during_an_outage_keeps_serving_stale_chains(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, clock: Clock
) -> None:
    urls = [
        repo.put(
            f"/sp{i}.pem",
            pki.ca.issue_leaf(f"20{i}").chain_pem(),
            headers={"Cache-Control": "max-age=60"},
        )
        for i in range(3)
    ]
    fetcher = await make_fetcher(min_ttl=60, stale_grace=600, failure_ttl=30)
    first = [await fetcher.get(url, now=time.time()) for url in urls]
    for i in range(3):
        repo.put(f"/sp{i}.pem", b"down", status=503)
    clock.advance(120)  # stale: served while refreshes fail
    assert first == [await fetcher.get(url, now=time.time()) for url in urls]
    fetcher.set_trust(TrustStore([pki.root.cert]))  # unchanged anchors
    assert first == [await fetcher.get(url, now=time.time()) for url in urls]
    fetcher.set_trust(TrustStore([pki.root.cert, pki.untrusted_root().cert]))  # one added
    served = [await fetcher.get(url, now=time.time()) for url in urls]
    assert [c.certificate for c in first] == [c.certificate for c in served]
    assert (3, 0) == (fetcher.stats()["reload_kept"], fetcher.stats()["reload_drops"])
    assert 9 == fetcher.stats()["stale_served"]  # every call after the lifetime


# -- stores: warm cache and preload ------------------------------------------------------------


async def test_warm_cache_survives_a_restart(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, tmp_path: Path, accepted: Accepted
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem())
    warm = str(tmp_path / "warm")
    first = await make_fetcher(warm_cache_dir=warm)
    await first.get(url, now=time.time())
    first.vouched(url)  # a call's signature verified under it: the warm cache keeps it
    await first.close()
    second = await make_fetcher(warm_cache_dir=warm)
    credential = await second.get(url, now=time.time())
    accepted(credential, pki.signer)
    assert (1, 1) == (repo.counts["/sp.pem"], second.stats()["store_hits"])
    third = await make_fetcher(warm_cache_dir=warm, trust=TrustStore([pki.untrusted_root().cert]))
    with pytest.raises(errors.CertificateNotTrusted):  # re-validated when loaded
        await third.get(url, now=time.time())


async def test_no_store_is_not_written_to_disk(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, tmp_path: Path
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem(), headers={"Cache-Control": "no-store"})
    fetcher = await make_fetcher(warm_cache_dir=str(tmp_path / "warm"))
    await fetcher.get(url, now=time.time())
    assert [] == list((tmp_path / "warm").iterdir())


async def test_preloaded_certificates_need_no_network(
    pki: TestPKI,
    make_fetcher: MakeFetcher,
    tmp_path: Path,
    no_network: tuple[aiohttp.ClientSession, NoConnector],
    accepted: Accepted,
) -> None:
    (tmp_path / "sp.pem").write_bytes(pki.signer.chain_pem())
    x5u = "https://certs.sti.example/sp.pem"
    (tmp_path / "index.json").write_text(json.dumps({x5u: "sp.pem"}))
    session, connector = no_network
    fetcher = await make_fetcher(session=session, preload_dir=str(tmp_path), ports=frozenset({443}))
    credential = await fetcher.get(x5u, now=time.time())
    accepted(credential, pki.signer)
    assert [] == connector.attempts


# -- a flood of new x5u beside cached ones (issue 15, 3d) --------------------------------------


async def test_a_burst_of_new_chains_takes_turns_with_cached_calls(
    pki: TestPKI,
    make_fetcher: MakeFetcher,
    tmp_path: Path,
    no_network: tuple[aiohttp.ClientSession, NoConnector],
    accepted: Accepted,
) -> None:
    # Preloaded chains are had at once, so all 20 loads reach validation in the same
    # event-loop turn: the worst burst. A caller whose chain is cached asks again every
    # turn; between two of its answers at most one chain may be validated.
    signers = {
        f"https://certs.sti.example/{i}.pem": pki.ca.issue_leaf(f"{5000 + i}") for i in range(20)
    }
    cached = "https://certs.sti.example/cached.pem"
    index = {cached: "cached.pem"}
    (tmp_path / "cached.pem").write_bytes(pki.signer.chain_pem())
    for i, (x5u, signer) in enumerate(signers.items()):
        (tmp_path / f"{i}.pem").write_bytes(signer.chain_pem())
        index[x5u] = f"{i}.pem"
    (tmp_path / "index.json").write_text(json.dumps(index))
    events: list[str] = []
    session, _connector = no_network
    fetcher = await make_fetcher(
        session=session,
        preload_dir=str(tmp_path),
        ports=frozenset({443}),
        on_load=lambda outcome, _seconds: events.append(outcome),
    )
    now = time.time()
    await fetcher.get(cached, now=now)
    events.clear()

    async def cached_calls() -> None:
        while len(events) - events.count("cached") < len(signers):
            await asyncio.sleep(0)  # one answer per loop turn
            accepted(await fetcher.get(cached, now=now), pki.signer)
            events.append("cached")

    async with asyncio.timeout(10):
        *credentials, _ = await asyncio.gather(
            *(fetcher.get(x5u, now=now) for x5u in signers), cached_calls()
        )
    for credential, (i, signer) in zip(credentials, enumerate(signers.values()), strict=True):
        accepted(credential, signer, spc=f"{5000 + i}")
    assert ["ok"] * 20 == [e for e in events if e != "cached"]
    between = [
        len(run) for run in "".join("C" if e == "cached" else "L" for e in events).split("C")
    ]
    assert 1 >= max(between), events
    assert (21, 21) == (fetcher.stats()["store_hits"], fetcher.stats()["cache_size"])


async def test_many_concurrent_misses_keep_single_flight_and_their_own_results(
    pki: TestPKI, repo: Repository, make_fetcher: MakeFetcher, accepted: Accepted
) -> None:
    # 30 new chains and 3 untrusted ones, each asked for by 5 callers at once.
    good = {
        repo.put(f"/sp{i}.pem", (s := pki.ca.issue_leaf(f"{6000 + i}")).chain_pem()): s
        for i in range(30)
    }
    bad = {
        repo.put(f"/bad{i}.pem", pki.untrusted_root().issue_leaf().chain_pem()) for i in range(3)
    }
    fetcher = await make_fetcher(max_per_host=64, timeout=30.0)  # no timeouts on a busy machine
    now = time.time()
    urls = [*good, *bad] * 5
    outcomes = await asyncio.gather(
        *(fetcher.get(url, now=now) for url in urls), return_exceptions=True
    )
    for url, outcome in zip(urls, outcomes, strict=True):
        if url in bad:
            assert isinstance(outcome, errors.CertificateNotTrusted), outcome
        else:
            assert not isinstance(outcome, BaseException), outcome
            i = list(good).index(url)
            accepted(outcome, good[url], spc=f"{6000 + i}")
    assert {f"/sp{i}.pem": 1 for i in range(30)} | {f"/bad{i}.pem": 1 for i in range(3)} == dict(
        repo.counts
    )
    stats = fetcher.stats()
    assert (165, 132, 33) == (stats["misses"], stats["coalesced"], stats["fetches"])
    assert (30, 3) == (stats["cache_size"], stats["negative_size"])
    again = await asyncio.gather(*(fetcher.get(url, now=now) for url in good))
    assert [c.certificate.spc for c in again if c.certificate] == [
        (f"{6000 + i}",) for i in range(30)
    ]
    assert 30 == fetcher.stats()["hits"]


# -- configuration and lifecycle ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (HttpClientSettings, {"ports": frozenset()}),
        (HttpClientSettings, {"timeout": 0}),
        (FetchSettings, {"max_body": 0}),
        (FetchSettings, {"min_ttl": 10, "max_ttl": 5}),
        (FetchSettings, {"crl_mode": "maybe"}),
        (FetchSettings, {"crl_timeout": 0}),
        (FetchSettings, {"cold_fetch_rate": -1}),
        (FetchSettings, {"cold_fetch_burst": 0}),
        (FetchSettings, {"not_found_size": 0}),
        (HttpClientSettings, {"private_allow": ("10.0.0.0/33",)}),
    ],
)
def test_settings_refuse_bad_values(cls: type[Any], bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|not a valid address"):
        cls(**bad)


async def test_session_with_trust_env_refused(trust: TrustStore) -> None:
    async with aiohttp.ClientSession(trust_env=True) as session:
        with pytest.raises(ValueError, match="trust_env"):
            CertificateFetcher(trust, session=session)


async def test_get_without_a_session_is_loud(trust: TrustStore) -> None:
    fetcher = CertificateFetcher(trust, client=HttpClientSettings(allow_private=True))
    with pytest.raises(RuntimeError, match="async with"):
        await fetcher.get("https://127.0.0.1/sp.pem", now=time.time())
    await fetcher.close()


# -- the command line --------------------------------------------------------------------------


async def test_cli_verify_fetches_x5u(
    pki: TestPKI, repo: Repository, ca_file: str, tmp_path: Path
) -> None:
    url = repo.put("/sp.pem", b"")
    signer = pki.ca.issue_leaf(x5u=url)
    repo.put("/sp.pem", signer.chain_pem())
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(pem(pki.root.cert))
    value = signer.identity(orig="12155551212", dest="12155551213")
    args = ["verify", value, "--trust-anchor", str(anchor), "--x5u-ca-file", ca_file]
    args += ["--x5u-port", str(repo.port), "--allow-private-x5u", "--json"]
    args += ["--orig", "12155551212", "--dest", "12155551213"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "verifier",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert 0 == proc.returncode, err.decode()
    assert errors.TN_VALIDATION_PASSED == json.loads(out)["verstat"]
    assert 1 == repo.counts["/sp.pem"]
