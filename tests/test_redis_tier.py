"""verifier.net.redis_tier: the fleet's shared tier on a real Redis, with the real HTTPS repository.

Two fetchers stand for two instances: each has its own memory tier and its own RedisLink,
on the same Redis and key prefix. Redis outages are real: a TcpProxy (verifier.testing.faults)
between an instance and Redis is cut, or the instance talks to a server that never answers.

Needs a Redis you can write to on 127.0.0.1: set VERIFIER_TEST_REDIS_URL (CI sets
redis://127.0.0.1:6379/15); the ``redis_url`` fixture (conftest) skips the tests when it is
unset and fails them when that Redis does not answer. Every test uses its own key prefix
and deletes its keys.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis
from yarl import URL

from verifier.core import errors
from verifier.core.certs import TrustStore
from verifier.net.cache import StoredChain
from verifier.net.fetch import CertificateFetcher, FetchSettings, SharedFailure
from verifier.net.redis_tier import RedisLink, RedisReplayCache, RedisSettings, RedisTier
from verifier.net.transport import HttpClientSettings
from verifier.testing import TestPKI
from verifier.testing.faults import TcpProxy
from verifier.testing.repository import Repository

if TYPE_CHECKING:  # pytest imports conftest itself
    from conftest import Accepted

RETRY = 0.2  # retry_after in these tests: Redis is tried again this soon after an error


class Fleet:
    """Instances built on one Redis and one key prefix; everything is closed and every key
    under the prefix deleted at teardown."""

    def __init__(self, url: str, repo: Repository, ca_file: str, trust: TrustStore) -> None:
        self.url = url
        self.redis_port = URL(url).port or 6379
        self.prefix = f"verifier-test:{uuid.uuid4().hex}:"
        self.repo = repo
        self.ca_file = ca_file
        self.trust = trust
        self.links: list[RedisLink] = []
        self.fetchers: list[CertificateFetcher] = []
        self.tiers: dict[int, RedisTier] = {}

    def link(self, *, port: int | None = None, **kw: Any) -> RedisLink:
        """A link to the test Redis (or to 127.0.0.1:``port``, a proxy, same database)."""
        url = self.url if port is None else str(URL(self.url).with_port(port))
        kw.setdefault("retry_after", RETRY)
        link = RedisLink(RedisSettings(url=url, key_prefix=self.prefix, **kw))
        self.links.append(link)
        return link

    async def fetcher(self, link: RedisLink | None, **kw: Any) -> CertificateFetcher:
        """An instance: its own memory tier, the shared tier on ``link`` (None: none);
        ``kw`` are FetchSettings, and ``timeout`` its HttpClientSettings' timeout."""
        client = HttpClientSettings(
            ports=frozenset({self.repo.port}),
            allow_private=True,
            ca_file=self.ca_file,
            timeout=kw.pop("timeout", 2.0),
        )
        shared = RedisTier(link) if link is not None else None
        fetcher = CertificateFetcher(self.trust, FetchSettings(**kw), client=client, shared=shared)
        await fetcher.__aenter__()
        if shared is not None:
            self.tiers[id(fetcher)] = shared
        self.fetchers.append(fetcher)
        return fetcher

    def tier(self, fetcher: CertificateFetcher) -> RedisTier:
        """The shared tier of an instance built by :meth:`fetcher`."""
        return self.tiers[id(fetcher)]

    async def close(self) -> None:
        for fetcher in self.fetchers:
            await fetcher.close()
        for link in self.links:
            await link.close()
        async with Redis.from_url(self.url) as client:
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}*")]
            if keys:
                await client.delete(*keys)


@pytest.fixture
async def fleet(
    redis_url: str, repo: Repository, ca_file: str, trust: TrustStore
) -> AsyncIterator[Fleet]:
    fleet = Fleet(redis_url, repo, ca_file, trust)
    try:
        yield fleet
    finally:
        await fleet.close()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


# -- one fetch per fleet -----------------------------------------------------------------------


async def test_cold_burst_across_two_instances_fetches_once(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    url = repo.put("/sp.pem", pki.signer.chain_pem(), delay=0.05)
    a = await fleet.fetcher(fleet.link())
    b = await fleet.fetcher(fleet.link())
    now = time.time()
    got = await asyncio.gather(*((a if i % 2 else b).get(url, now=now) for i in range(200)))
    assert 200 == len(got)
    for credential in got:
        accepted(credential, pki.signer)
    assert 1 == repo.counts["/sp.pem"]
    ta, tb = fleet.tier(a).counters, fleet.tier(b).counters
    assert 1 == ta.lock_acquired + tb.lock_acquired  # the other instance waited
    assert 1 == ta.lock_waits + tb.lock_waits
    assert 1 == a.stats()["fetches"] + b.stats()["fetches"]
    assert 1 == a.stats()["store_hits"] + b.stats()["store_hits"]  # validated from Redis


async def test_second_instance_finds_the_chain_in_redis(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    url = repo.put("/sp2.pem", pki.signer.chain_pem())
    a = await fleet.fetcher(fleet.link())
    b = await fleet.fetcher(fleet.link())
    first = await a.get(url, now=time.time())
    second = await b.get(url, now=time.time())
    assert 1 == repo.counts["/sp2.pem"]
    accepted(first, pki.signer)
    accepted(second, pki.signer)
    assert first.certificate == second.certificate
    assert (1, 0) == (b.stats()["store_hits"], b.stats()["fetches"])
    assert 1 == fleet.tier(b).counters.hits


async def test_a_chain_is_shared_for_its_lifetime_once_a_signature_vouches_for_it(
    pki: TestPKI, repo: Repository, fleet: Fleet
) -> None:
    url = repo.put("/sp-new.pem", pki.signer.chain_pem())
    a = await fleet.fetcher(fleet.link(), failure_ttl=30.0, default_ttl=3600.0)
    await a.get(url, now=time.time())
    brief = await fleet.tier(a).load(url)  # the fleet's waiters have it, but not for long
    assert isinstance(brief, StoredChain) and brief.expires_at <= time.time() + 30
    a.vouched(url)  # a call's signature verified under it
    for _ in range(200):
        shared = await fleet.tier(a).load(url)
        if isinstance(shared, StoredChain) and shared.expires_at > time.time() + 3000:
            break
        await asyncio.sleep(0.01)
    assert isinstance(shared, StoredChain) and shared.expires_at > time.time() + 3000
    assert 1 == repo.counts["/sp-new.pem"]


async def test_shared_chain_is_validated_locally(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    url = repo.put("/sp3.pem", pki.signer.chain_pem())
    a = await fleet.fetcher(fleet.link())
    await a.get(url, now=time.time())
    stranger = pki.untrusted_root().issue_leaf().chain_pem()  # what a poisoned Redis holds
    await fleet.tier(a).save(
        url, StoredChain(body=stranger, fetched_at=time.time(), expires_at=time.time() + 600)
    )
    b = await fleet.fetcher(fleet.link())
    credential = await b.get(url, now=time.time())  # refused the shared chain, fetched it
    accepted(credential, pki.signer)
    assert (2, 0, 1) == (repo.counts["/sp3.pem"], b.stats()["store_hits"], b.stats()["fetches"])
    other_trust = await fleet.fetcher(fleet.link())
    other_trust.set_trust(TrustStore([pki.untrusted_root().cert]))
    with pytest.raises(errors.CertificateNotTrusted):  # its own anchors decide
        await other_trust.get(url, now=time.time())


async def test_malformed_entries_are_misses(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    url = repo.put("/sp4.pem", pki.signer.chain_pem())
    link = fleet.link()
    shared = RedisTier(link)
    chain_key, fail_key, _ = shared._keys(url)
    await link.client.set(chain_key, b"{not json")
    await link.client.set(fail_key, b'{"x5u": "https://elsewhere/x.pem", "slug": "x"}')
    assert None is await shared.load(url)
    assert 2 == shared.counters.malformed
    fetcher = await fleet.fetcher(link)
    accepted(await fetcher.get(url, now=time.time()), pki.signer)
    assert 1 == repo.counts["/sp4.pem"]


# -- shared failures ---------------------------------------------------------------------------


async def test_failure_is_shared_within_failure_ttl(repo: Repository, fleet: Fleet) -> None:
    url = repo.put("/gone.pem", b"", status=404, delay=0.05)
    a = await fleet.fetcher(fleet.link(), failure_ttl=30)
    b = await fleet.fetcher(fleet.link(), failure_ttl=30)
    outcomes = await asyncio.gather(
        *((a if i % 2 else b).get(url, now=time.time()) for i in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(o, errors.X5uFetchFailed) for o in outcomes)
    c = await fleet.fetcher(fleet.link(), failure_ttl=30)  # a third instance, later
    with pytest.raises(errors.X5uFetchFailed, match="HTTP 404"):
        await c.get(url, now=time.time())
    assert 1 == repo.counts["/gone.pem"]
    assert 1 == fleet.tier(c).counters.failure_hits


async def test_shared_failure_expires(
    repo: Repository, fleet: Fleet, pki: TestPKI, accepted: Accepted
) -> None:
    url = repo.put("/later.pem", b"", status=404)
    a = await fleet.fetcher(fleet.link(), failure_ttl=0.3)
    with pytest.raises(errors.X5uFetchFailed):
        await a.get(url, now=time.time())
    repo.put("/later.pem", pki.signer.chain_pem())
    await asyncio.sleep(0.4)
    b = await fleet.fetcher(fleet.link(), failure_ttl=0.3)
    accepted(await b.get(url, now=time.time()), pki.signer)
    assert 2 == repo.counts["/later.pem"]


async def test_trust_dependent_failures_are_not_shared(
    pki: TestPKI, repo: Repository, fleet: Fleet
) -> None:
    url = repo.put("/stranger.pem", pki.untrusted_root().issue_leaf().chain_pem())
    a = await fleet.fetcher(fleet.link())
    with pytest.raises(errors.CertificateNotTrusted):
        await a.get(url, now=time.time())
    b = await fleet.fetcher(fleet.link())
    b.set_trust(TrustStore([pki.root.cert, pki.untrusted_root().cert]))
    with pytest.raises(errors.CertificateNotTrusted):  # b fetched and judged for itself
        await b.get(url, now=time.time())
    assert 2 == repo.counts["/stranger.pem"]
    assert 0 == fleet.tier(b).counters.failure_hits


# -- the fetch lock ----------------------------------------------------------------------------


async def test_dead_lock_holder_is_taken_over(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    url = repo.put("/orphan.pem", pki.signer.chain_pem())
    dead = RedisTier(fleet.link(lock_ttl=0.3))
    assert await dead.acquire(url)  # and never released: its instance died
    b = await fleet.fetcher(fleet.link())
    started = time.monotonic()
    accepted(await b.get(url, now=time.time()), pki.signer)
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed, elapsed  # it waited for the lock to expire...
    assert elapsed < 10 * 0.3, elapsed  # ...and no longer (10x margin on the lock TTL)
    assert 1 == repo.counts["/orphan.pem"]
    assert (1, 1) == (fleet.tier(b).counters.lock_waits, fleet.tier(b).counters.lock_acquired)


async def test_wait_is_bounded_by_the_fetch_timeout(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    url = repo.put("/stuck.pem", pki.signer.chain_pem())
    stuck = RedisTier(fleet.link(lock_ttl=30))
    assert await stuck.acquire(url)  # a holder that hangs
    b = await fleet.fetcher(fleet.link(), timeout=0.4)
    started = time.monotonic()
    accepted(await b.get(url, now=time.time()), pki.signer)
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed, elapsed  # it waited for the holder up to its timeout...
    assert elapsed < 10 * 0.4, elapsed  # ...and no longer (10x margin on the timeout)
    assert (1, 1) == (repo.counts["/stuck.pem"], fleet.tier(b).counters.lock_timeouts)


async def test_release_only_frees_ones_own_lock(fleet: Fleet) -> None:
    url = "https://127.0.0.1:1/x.pem"
    first, second = RedisTier(fleet.link(lock_ttl=0.2)), RedisTier(fleet.link())
    token = await first.acquire(url)
    assert token
    await asyncio.sleep(0.3)  # expired
    other = await second.acquire(url)
    assert other
    await first.release(url, token)  # too late: must not free the new holder's lock
    assert None is await first.acquire(url)
    await second.release(url, other)
    assert await first.acquire(url)


# -- Redis away --------------------------------------------------------------------------------


async def test_redis_cut_then_restored(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    one = repo.put("/one.pem", pki.signer.chain_pem())
    two = repo.put("/two.pem", pki.signer.chain_pem())
    async with TcpProxy("127.0.0.1", fleet.redis_port) as proxy:
        a = await fleet.fetcher(fleet.link(port=proxy.port))
        await a.get(one, now=time.time())  # fetched and published
        assert fleet.tier(a).healthy

        proxy.cut()
        b = await fleet.fetcher(fleet.link(port=proxy.port))
        started = time.monotonic()
        accepted(await b.get(one, now=time.time()), pki.signer)  # fetched directly
        accepted(await a.get(two, now=time.time()), pki.signer)
        assert time.monotonic() - started < 10 * (2 * 0.15 + 1.0)  # not hung (10x margin)
        accepted(await a.get(one, now=time.time()), pki.signer)  # memory tier
        assert (2, 1) == (repo.counts["/one.pem"], repo.counts["/two.pem"])
        assert not fleet.tier(a).healthy and not fleet.tier(b).healthy
        assert fleet.tier(b).last_error is not None
        assert fleet.tier(b).stats()["fallbacks"] >= 1

        proxy.restore()
        await asyncio.sleep(RETRY)  # then Redis is tried again: no one has to intervene
        three = repo.put("/three.pem", pki.signer.chain_pem())
        await a.get(three, now=time.time())  # fetched and published
        assert fleet.tier(a).healthy
        c = await fleet.fetcher(fleet.link(port=proxy.port))
        accepted(await c.get(one, now=time.time()), pki.signer)  # from Redis
        accepted(await c.get(three, now=time.time()), pki.signer)
        assert (2, 1, 2) == (
            repo.counts["/one.pem"],
            repo.counts["/three.pem"],
            c.stats()["store_hits"],
        )


async def test_hung_redis_costs_one_timeout(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    url = repo.put("/hung.pem", pki.signer.chain_pem())
    async with silent_server() as port:
        link = fleet.link(port=port, timeout=0.1, retry_after=30)
        fetcher = await fleet.fetcher(link)
        accepted(await fetcher.get(url, now=time.time()), pki.signer)
        assert not link.healthy
        assert link.last_error is not None and "Timeout" in link.last_error
        assert 1 == link.errors  # then skipped: no second timeout
        other = repo.put("/hung2.pem", pki.signer.chain_pem())
        accepted(await fetcher.get(other, now=time.time()), pki.signer)
        assert 1 == link.errors  # Redis was not asked again: no second timeout to wait for
        assert 1 == repo.counts["/hung2.pem"]
        assert False is await link.ping()


async def test_a_busy_event_loop_is_not_a_slow_redis(fleet: Fleet) -> None:
    """Redis answers at once, but this loop is busy past the timeout (a burst of cold x5u
    validating their chains): the answer is taken, Redis stays healthy."""
    link = fleet.link(timeout=0.1)
    assert await link.ping()  # connected
    loop = asyncio.get_running_loop()
    loop.call_later(0.005, time.sleep, 0.35)  # busy while Redis works on the command
    # Redis answers after 30 ms (BLPOP's own timeout), while the loop is still busy.
    got = await link.call(lambda client: client.blpop([link.key("never")], timeout=0.03))
    assert got is None
    assert (True, 0) == (link.healthy, link.errors)


async def test_a_slow_redis_beside_a_busy_loop_still_times_out(fleet: Fleet) -> None:
    """The deadline moves on only a few times: a hung Redis fails within a bounded time
    even while the loop is repeatedly busy."""
    async with silent_server() as port:
        link = fleet.link(port=port, timeout=0.1, retry_after=30)
        loop = asyncio.get_running_loop()
        busy: list[int] = []

        def hog(i: int) -> None:
            busy.append(i)
            time.sleep(0.15)

        hogs = [loop.call_later(0.05 + 0.2 * i, hog, i) for i in range(10)]
        assert False is await link.ping()
        for pending in hogs:
            pending.cancel()
    # The ping failed while busy periods were still to come: the deadline was not moved on
    # past each of them (an order, not a wall-clock bound).
    assert 0 < len(busy) < 10, busy
    assert 1 == link.errors and not link.healthy


# -- replay detection across the fleet ---------------------------------------------------------


async def test_replay_seen_across_instances(fleet: Fleet) -> None:
    a = RedisReplayCache(fleet.link(), max_size=100, window=60)
    b = RedisReplayCache(fleet.link(), max_size=100, window=60)
    assert False is await a.seen("sig-1")
    assert True is await b.seen("sig-1")
    assert False is await b.seen("sig-2")
    assert False is await a.seen("sig-3")
    assert (0, 1) == (a.replays, b.replays)


async def test_replay_of_the_twin_signature_seen_across_instances(fleet: Fleet) -> None:
    """Issue 15 item 4: (r, s) and (r, n - s) are one signature to the fleet's replay set."""
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    r, s = b"\x01" * 32, n - 3

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    high, low = b64(r + s.to_bytes(32, "big")), b64(r + (3).to_bytes(32, "big"))
    a = RedisReplayCache(fleet.link(), max_size=100, window=60)
    b = RedisReplayCache(fleet.link(), max_size=100, window=60)
    assert False is await a.seen(high)
    assert True is await b.seen(low)  # b never saw it itself: Redis knew it
    assert True is await a.seen(low)


async def test_replay_window_expires(fleet: Fleet) -> None:
    a = RedisReplayCache(fleet.link(), max_size=100, window=0.2)
    b = RedisReplayCache(fleet.link(), max_size=100, window=0.2)
    assert False is await a.seen("sig")
    await asyncio.sleep(0.3)
    assert False is await b.seen("sig")


async def test_replay_falls_back_to_local_when_redis_is_cut(fleet: Fleet) -> None:
    async with TcpProxy("127.0.0.1", fleet.redis_port) as proxy:
        a = RedisReplayCache(fleet.link(port=proxy.port), max_size=100, window=60)
        b = RedisReplayCache(fleet.link(port=proxy.port), max_size=100, window=60)
        assert False is await a.seen("before")
        proxy.cut()
        assert True is await a.seen("before")  # remembered locally too
        assert False is await a.seen("during")
        assert True is await a.seen("during")
        assert False is await b.seen("during")  # b cannot know without Redis
        assert not a.healthy and a.last_error is not None
        assert a.local_answers >= 3
        proxy.restore()
        await asyncio.sleep(RETRY)
        assert True is await b.seen("before")  # Redis answers again
        assert b.healthy


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "name"),
    [
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"timeout": 0}, "timeout"),
        ({"lock_ttl": -1}, "lock_ttl"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"retry_after": -1}, "retry_after"),
        ({"max_connections": 0}, "max_connections"),
        ({"poll_interval": 2, "lock_ttl": 1}, "poll_interval"),
    ],
)
def test_settings_refuse_bad_values(bad: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RedisSettings(**bad)


def test_settings_hide_the_url_password() -> None:
    settings = RedisSettings(url="redis://user:secret@127.0.0.1:6379/0")
    assert "secret" not in repr(settings)


def test_link_needs_a_url() -> None:
    with pytest.raises(ValueError, match="disabled"):
        RedisLink(RedisSettings())


async def test_shared_failure_of_another_kind_is_ignored(
    pki: TestPKI, repo: Repository, fleet: Fleet, accepted: Accepted
) -> None:
    url = repo.put("/odd.pem", pki.signer.chain_pem())
    link = fleet.link()
    failure = SharedFailure(slug="cert_not_trusted", detail="x", expires_at=time.time() + 60)
    await RedisTier(link).save_failure(url, failure)
    fetcher = await fleet.fetcher(link)
    accepted(await fetcher.get(url, now=time.time()), pki.signer)
