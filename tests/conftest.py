"""Shared fixtures: one test STI PKI per session (making keys is slow-ish), a trust store
holding its root, a fixed ``now``, a one-call verifier over the default signer's chain and
what accepting a certificate asserts (``accepted``); for the record tests, their helpers
(``kit``) and a PostgreSQL schema of their own; the shared services (``redis_url``,
``database_url``: skipped when unset, failed when set and down, counted in the summary)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from psycopg import sql

from verifier.core.certs import Credential, TrustStore
from verifier.core.verify import CallInfo, Result, VerifyOptions, verify_offline
from verifier.net.fetch import CertificateFetcher
from verifier.records import Record, RecordQuery, RecordStore, SqliteRecordStore
from verifier.records.child import ChildWriterStore
from verifier.records.postgres import PostgresRecordStore
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


@pytest.fixture
def now() -> int:
    """The verification moment: this test's start on the wall clock, inside every test
    certificate (a service on the real clock judges an iat against its own clock, so a
    session-wide moment would be stale late in a slow run)."""
    return int(time.time())


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    return CONFORMANCE


Check = Callable[..., Result]


@pytest.fixture
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


Accepted = Callable[..., None]


def _accepted(
    credential: Credential, signer: Signer, *, spc: str = "1234", chain_length: int = 3
) -> None:
    """Assert that ``credential`` is ``signer``'s validated chain: the SPC, the leaf's SHA-256
    fingerprint (hashlib over its DER), the chain's length (anchor included) and the key."""
    info = credential.certificate
    assert info is not None, "no certificate checked"
    assert (spc,) == info.spc
    assert hashlib.sha256(signer.cert.public_bytes(Encoding.DER)).hexdigest() == (
        info.fingerprint_sha256
    )
    assert chain_length == len(info.chain)
    assert signer.cert.public_key() == credential.public_key


@pytest.fixture(scope="session")
def accepted() -> Accepted:
    """``accepted(credential, signer, spc="1234", chain_length=3)``: what a test that accepts
    a certificate asserts (not just "no exception")."""
    return _accepted


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


# -- traceback records (test_records*, test_recordwriter, test_pgrecords, test_recordproc) ------

RECORDS_T0 = 1_800_000_000.0
"""2027-01-15T08:00:00Z: the time of ``rec(0)``; ``rec(i)`` is ``i`` seconds later."""
PG_HOW = (
    "set VERIFIER_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test, a PostgreSQL"
    " database on 127.0.0.1 where that user may create schemas (.ci/run sets it)"
)


class RecordKit:
    """The record tests' helpers (the ``kit`` fixture): records made from a number, their
    request ids, every record of a store, and ``verifier`` run as a command."""

    T0 = RECORDS_T0

    @staticmethod
    def rec(i: int = 0, **changes: object) -> Record:
        """A passed native verification at ``T0 + i``, request id ``req-i``; ``changes``
        replace fields."""
        fields: dict[str, object] = {
            "ts": RECORDS_T0 + i,
            "request_id": f"req-{i}",
            "endpoint": "native",
            "orig": "12155551000",
            "dest": "12155552000",
            "origid": f"origid-{i}",
            "attest": "A",
            "verstat": "TN-Validation-Passed",
            "reason": None,
            "sip_code": None,
            "spc": ("1234",),
            "x5u": "https://cr.example.com/sp.pem",
            "fingerprint": "AB:CD",
            "action": "accept",
            "label": None,
        }
        fields.update(changes)
        return Record(**fields)  # type: ignore[arg-type]

    @staticmethod
    def ids(records: Sequence[Record]) -> list[str]:
        return [r.request_id for r in records]

    @staticmethod
    def every(store: RecordStore) -> list[Record]:
        """Every record of ``store``, newest first."""
        return [r for chunk in store.iter_query(RecordQuery()) for r in chunk]

    @classmethod
    def fill_mixed(cls, store: RecordStore) -> None:
        """Five records (``req-0`` to ``req-4``) over two callers (111, 222), two callees
        (900, 901), origid ``x`` twice and SPCs AAAA and BBBB (one record has both, one
        none)."""
        store.insert_many(
            [
                cls.rec(0, orig="111", dest="900", spc=("AAAA",), origid="x"),
                cls.rec(1, orig="111", dest="901", spc=("BBBB",)),
                cls.rec(2, orig="222", dest="900", spc=("AAAA", "BBBB")),
                cls.rec(3, orig="222", dest="901", spc=()),
                cls.rec(4, orig="111", dest="900", spc=("BBBB",), origid="x"),
            ]
        )

    @staticmethod
    def run(argv: Sequence[str]) -> int:
        """The exit code of ``verifier argv``."""
        from verifier.cli import main

        with pytest.raises(SystemExit) as info:
            main(list(argv))
        code = info.value.code
        assert isinstance(code, int)
        return code


@pytest.fixture(scope="session")
def kit() -> type[RecordKit]:
    return RecordKit


@pytest.fixture(params=["sqlite", "child", "postgres"])
def record_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    """A new, empty store of each backend, for the store contract: SQLite written from the
    writer's thread, SQLite written by a child process (``records.writer_process``), and
    PostgreSQL in a schema of its own (skipped without VERIFIER_TEST_DATABASE_URL)."""
    made: RecordStore
    if request.param == "postgres":
        url: str = request.getfixturevalue("database_url")
        made = PostgresRecordStore.open(url, schema=request.getfixturevalue("schema"))
    elif request.param == "child":
        made = ChildWriterStore.open_for_child(tmp_path / "data")
    else:
        made = SqliteRecordStore.open(tmp_path / "data")
    yield made
    made.close()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[SqliteRecordStore]:
    """A new SQLite store written from this process (for what only SQLite does)."""
    store = SqliteRecordStore.open(tmp_path / "data")
    yield store
    store.close()


# -- shared services (Redis, PostgreSQL): skipped only when their URL is unset ------------------

REDIS_HOW = "set VERIFIER_TEST_REDIS_URL=redis://127.0.0.1:6379/15, a Redis you can write to"
SERVICES = {"redis_url": "Redis", "database_url": "PostgreSQL"}
"""The fixtures that hand out a shared service, and its name in the test summary."""
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _service_url(variable: str, name: str, how: str) -> str:
    """``variable``'s URL: the test is skipped when it is unset, and fails (it does not skip)
    when it is set but names another host; CI sets it, so a service down is a red run."""
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{name} tests: {how}")
    host = urlsplit(url).hostname
    if host not in _LOOPBACK:
        pytest.fail(f"{variable} names {host}: these tests only talk to 127.0.0.1 ({how})")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """VERIFIER_TEST_REDIS_URL, a Redis on this machine that answers; the test is skipped when
    it is unset and fails when the server does not answer."""
    url = _service_url("VERIFIER_TEST_REDIS_URL", "Redis", REDIS_HOW)
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"VERIFIER_TEST_REDIS_URL is set but Redis at {url} does not answer ({exc})")
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def database_url() -> str:
    """VERIFIER_TEST_DATABASE_URL, a PostgreSQL server on this machine that answers; the test
    is skipped when it is unset and fails when the server does not answer."""
    url = _service_url("VERIFIER_TEST_DATABASE_URL", "PostgreSQL", PG_HOW)
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        why = " ".join(str(exc).split())
        pytest.fail(f"VERIFIER_TEST_DATABASE_URL is set but PostgreSQL does not answer ({why})")
    return url


class ServiceTally:
    """A plugin: which tests need a shared service, and how each ended, told in the summary
    (so that a run says how many Redis and PostgreSQL tests ran rather than skipped)."""

    def __init__(self) -> None:
        self.needs: dict[str, str] = {}  # nodeid -> service name
        self.outcomes: dict[str, dict[str, int]] = {n: {} for n in SERVICES.values()}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            names = getattr(item, "fixturenames", ())
            callspec = getattr(item, "callspec", None)
            if callspec is not None and "postgres" in callspec.params.values():
                names = [*names, "database_url"]  # a backend param: got by getfixturevalue
            for fixture, service in SERVICES.items():
                if fixture in names:
                    self.needs[item.nodeid] = service
                    break

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # One outcome per test: its call, or its setup when that did not pass (skip or error).
        if report.when == "call" or (report.when == "setup" and not report.passed):
            service = self.needs.get(report.nodeid)
            if service is not None:
                outcome = "ran" if report.when == "call" else report.outcome
                counts = self.outcomes[service]
                counts[outcome] = counts.get(outcome, 0) + 1

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for service, counts in self.outcomes.items():
            if counts:
                told = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
                terminalreporter.write_line(f"shared services: {service} tests: {told}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ServiceTally(), "verifier-service-tally")


@pytest.fixture
def new_schema(database_url: str) -> Iterator[Callable[[], str]]:
    """Makes empty schemas (``verifier_test_<uuid>``); drops them all after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"verifier_test_{uuid.uuid4().hex}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        made.append(name)
        return name

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def schema(new_schema: Callable[[], str]) -> str:
    """An empty schema of its own for the test."""
    return new_schema()


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``schema`` as its search path (for ``--database-url``)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture
def schema_url(database_url: str, schema: str) -> str:
    """The test database's URL, its search path the test's own schema."""
    return with_search_path(database_url, schema)


# -- certificate cache lifetimes (test_fetch, test_crl) ----------------------------------------


class FakeClock(Protocol):
    def __call__(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


FreshUntil = Callable[[CertificateFetcher, FakeClock, str, float], Awaitable[None]]


async def _fresh_until(fetcher: CertificateFetcher, clock: FakeClock, x5u: str, end: float) -> None:
    """Assert that ``fetcher`` answers ``x5u`` from its memory (a hit) until ``end`` on its
    clock, and not after it; ``x5u`` was just fetched. Moves ``clock`` past ``end``."""
    hits = fetcher.stats()["hits"]
    clock.advance(end - clock() - 0.001)
    await fetcher.get(x5u, now=time.time())
    assert hits + 1 == fetcher.stats()["hits"], "not fresh just before its end"
    clock.advance(0.002)
    await fetcher.get(x5u, now=time.time())  # stale (refreshed) or a miss
    assert hits + 1 == fetcher.stats()["hits"], "still fresh after its end"


@pytest.fixture(scope="session")
def fresh_until() -> FreshUntil:
    """``await fresh_until(fetcher, clock, x5u, end)``: the cached ``x5u`` is fresh until
    ``end`` exactly (within a millisecond) on the fetcher's fake clock."""
    return _fresh_until


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started in a session of their own (``start_new_session``): each
    group is killed at the end, a supervisor's workers with it (killed alone, they would
    hold its pipes and ``communicate()`` would wait for ever)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
