"""verifier.net.crl: revocation checks after chain validation. CRLs are real, signed by the test
PKI's keys; they are served over plain HTTP by verifier.testing.repository on 127.0.0.1, or handed
to the checker by a fetch function. The only fake is the clock."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from verifier.core import errors
from verifier.core.certs import Credential, TrustStore
from verifier.net.crl import CrlChecker, crl_urls, load_crl
from verifier.net.fetch import CertificateFetcher, FetchSettings
from verifier.net.transport import HttpClientSettings
from verifier.testing import TestPKI
from verifier.testing.pki import make_crl
from verifier.testing.repository import Repository

if TYPE_CHECKING:
    from conftest import FreshUntil

_DAY = dt.timedelta(days=1)


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _credential(pki: TestPKI, trust: TrustStore, crl_url: str | None) -> Credential:
    signer = pki.ca.issue_leaf(crl_url=crl_url)
    return trust.validate(signer.chain, time.time())


class Served:
    """A fetch function over a dict of URL -> bytes, counting calls (no network)."""

    def __init__(self, content: dict[str, bytes]) -> None:
        self.content = content
        self.calls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if url not in self.content:
            raise errors.X5uFetchFailed("CRL answered HTTP 404, not 200")
        return self.content[url]


URL = "http://crl.sti.example/ca.crl"


# -- the checker -------------------------------------------------------------------------------


async def test_not_revoked_passes_and_is_cached(
    pki: TestPKI, trust: TrustStore, clock: Clock
) -> None:
    served = Served({URL: make_crl(pki.ca, [12345])})
    checker = CrlChecker(fetch=served, clock=clock)
    for _ in range(3):
        revocation = await checker.check(_credential(pki, trust, URL))
        assert revocation.complete and () == revocation.credential.warnings
    assert [URL] == served.calls
    next_update = load_crl(served.content[URL]).next_update_utc
    assert next_update is not None and next_update.timestamp() == revocation.next_update


async def test_revoked_leaf_is_437(pki: TestPKI, trust: TrustStore, clock: Clock) -> None:
    signer = pki.ca.issue_leaf(crl_url=URL)
    checker = CrlChecker(
        fetch=Served({URL: make_crl(pki.ca, [signer.cert.serial_number])}), clock=clock
    )
    with pytest.raises(errors.CertificateRevoked, match="was revoked on") as info:
        await checker.check(trust.validate(signer.chain, time.time()))
    assert (437, errors.TN_VALIDATION_FAILED) == (info.value.sip_code, info.value.verstat)


async def test_no_distribution_point_no_check(
    pki: TestPKI, trust: TrustStore, clock: Clock
) -> None:
    served = Served({})
    checker = CrlChecker(fetch=served, clock=clock, mode="closed")
    revocation = await checker.check(_credential(pki, trust, None))
    assert (True, [], float("inf")) == (revocation.complete, served.calls, revocation.next_update)


@pytest.mark.parametrize(
    ("problem", "words"),
    [
        ("unavailable", "HTTP 404"),
        ("bad-signature", "signature does not verify"),
        ("stale", "stale: nextUpdate"),
        ("wrong-issuer", "not the certificate's issuer"),
        ("garbage", "not a CRL"),
        ("too-big", "larger than"),
    ],
)
@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_crl_that_cannot_be_had(
    pki: TestPKI, trust: TrustStore, clock: Clock, problem: str, words: str, mode: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    content = {
        "unavailable": None,
        "bad-signature": make_crl(pki.ca, [], signer=ec.generate_private_key(ec.SECP256R1())),
        "stale": make_crl(pki.ca, [], last_update=now - 3 * _DAY, next_update=now - _DAY),
        "wrong-issuer": make_crl(pki.root, []),
        "garbage": b"not a CRL at all",
        "too-big": make_crl(pki.ca, range(1, 200)),
    }[problem]
    checker = CrlChecker(
        fetch=Served({} if content is None else {URL: content}),
        clock=clock,
        mode="open" if mode == "open" else "closed",
        max_bytes=2000,
    )
    credential = _credential(pki, trust, URL)
    if mode == "closed":
        with pytest.raises(errors.CrlUnavailable, match=words) as info:
            await checker.check(credential)
        assert 437 == info.value.sip_code
    else:
        revocation = await checker.check(credential)
        assert not revocation.complete
        assert 1 == len(revocation.credential.warnings)
        assert words in revocation.credential.warnings[0]
        assert "failed open" in revocation.credential.warnings[0]


async def test_failures_are_not_refetched_at_once(
    pki: TestPKI, trust: TrustStore, clock: Clock
) -> None:
    served = Served({})
    checker = CrlChecker(fetch=served, clock=clock, failure_ttl=30)
    for _ in range(3):
        await checker.check(_credential(pki, trust, URL))
    assert 1 == len(served.calls)
    clock.advance(31)
    await checker.check(_credential(pki, trust, URL))
    assert 2 == len(served.calls)


async def test_refetched_after_next_update(pki: TestPKI, trust: TrustStore, clock: Clock) -> None:
    served = Served(
        {URL: make_crl(pki.ca, [], next_update=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))}
    )
    checker = CrlChecker(fetch=served, clock=clock)
    await checker.check(_credential(pki, trust, URL))
    clock.advance(3601)
    served.content[URL] = make_crl(pki.ca, [], next_update=dt.datetime.now(dt.UTC) + 2 * _DAY)
    await checker.check(_credential(pki, trust, URL))
    assert 2 == len(served.calls)


async def test_crl_file_revokes_the_intermediate(
    pki: TestPKI, trust: TrustStore, clock: Clock, tmp_path: Path
) -> None:
    path = tmp_path / "root.crl"
    path.write_bytes(make_crl(pki.root, [pki.ca.cert.serial_number]))
    checker = CrlChecker(fetch=Served({}), clock=clock, files=[path])
    with pytest.raises(errors.CertificateRevoked, match="verifier test STI-CA"):
        await checker.check(_credential(pki, trust, None))


def test_bad_crl_file_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "bad.crl"
    path.write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"bad\.crl"):
        CrlChecker(fetch=Served({}), clock=time.time, files=[path])


def test_crl_urls_keep_http_only(pki: TestPKI) -> None:
    assert (URL,) == crl_urls(pki.ca.issue_leaf(crl_url=URL).cert)
    assert () == crl_urls(pki.ca.issue_leaf(crl_url="ldap://dir.example/cn=ca").cert)


# -- through the fetcher, CRLs over plain HTTP -------------------------------------------------


def _client(repo: Repository, ca_file: str) -> HttpClientSettings:
    return HttpClientSettings(ports=frozenset({repo.port}), allow_private=True, ca_file=ca_file)


async def test_revoked_chain_fetched_over_the_network(
    pki: TestPKI, trust: TrustStore, repo: Repository, ca_file: str, clock: Clock
) -> None:
    crl_url = repo.http_url("/ca.crl")
    good = pki.ca.issue_leaf(crl_url=crl_url)
    bad = pki.ca.issue_leaf(crl_url=crl_url)
    repo.put(
        "/ca.crl", make_crl(pki.ca, [bad.cert.serial_number]), content_type="application/pkix-crl"
    )
    good_url = repo.put("/good.pem", good.chain_pem())
    bad_url = repo.put("/bad.pem", bad.chain_pem())
    client = _client(repo, ca_file)
    async with CertificateFetcher(trust, client=client, clock=clock) as fetcher:
        assert (await fetcher.get(good_url, now=time.time())).warnings == ()
        with pytest.raises(errors.CertificateRevoked):
            await fetcher.get(bad_url, now=time.time())
        assert 1 == repo.counts["/ca.crl"]
        assert 1 == fetcher.stats()["crl_fetches"]


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_crl_server_down_in_both_modes(
    pki: TestPKI,
    trust: TrustStore,
    repo: Repository,
    ca_file: str,
    clock: Clock,
    fresh_until: FreshUntil,
    mode: str,
) -> None:
    signer = pki.ca.issue_leaf(crl_url=repo.http_url("/missing.crl"))
    url = repo.put("/sp.pem", signer.chain_pem())
    settings = FetchSettings(crl_mode="open" if mode == "open" else "closed", failure_ttl=30)
    client = _client(repo, ca_file)
    async with CertificateFetcher(trust, settings, client=client, clock=clock) as fetcher:
        if mode == "closed":
            with pytest.raises(errors.CrlUnavailable, match="HTTP 404"):
                await fetcher.get(url, now=time.time())
            return
        credential = await fetcher.get(url, now=time.time())
        assert "CRL check failed open" in credential.warnings[0]
        # failed open: cached briefly, so the CRL is asked again soon
        await fresh_until(fetcher, clock, url, clock() + 30)


async def test_entry_lifetime_bounded_by_next_update(
    pki: TestPKI,
    trust: TrustStore,
    repo: Repository,
    ca_file: str,
    clock: Clock,
    fresh_until: FreshUntil,
) -> None:
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=600)
    repo.put("/ca.crl", make_crl(pki.ca, [], next_update=soon))
    signer = pki.ca.issue_leaf(crl_url=repo.http_url("/ca.crl"))
    url = repo.put("/sp.pem", signer.chain_pem(), headers={"Cache-Control": "max-age=7200"})
    client = _client(repo, ca_file)
    async with CertificateFetcher(trust, client=client, clock=clock) as fetcher:
        await fetcher.get(url, now=time.time())
        await fresh_until(fetcher, clock, url, soon.timestamp())
