"""Two service instances sharing Redis (certificate tier, replay set) and PostgreSQL
(traceback records), with the real HTTPS certificate repository, all on 127.0.0.1.

Needs VERIFIER_TEST_REDIS_URL and VERIFIER_TEST_DATABASE_URL (CI sets both); each test is
skipped, saying how to run it, when either is unset, and fails when either does not answer
(conftest's ``redis_url`` and ``database_url``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from verifier.http.app import SERVICE, create_app
from verifier.testing import TestPKI
from verifier.testing.faults import TcpProxy
from verifier.testing.repository import Repository

TOKEN = "scale-out-admin-token-0123456789"
ORIG, DEST = "12155551212", "12155551213"


@pytest.fixture
def database_url(database_url: str) -> AsyncIterator[str] | Any:
    """The test PostgreSQL (conftest's ``database_url``), its search path a new schema."""
    import psycopg

    schema = f"verifier_test_{uuid.uuid4().hex}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in database_url else "?"
    yield f"{database_url}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI.create()


Instance = TestClient[Any, Any]
Start = Callable[..., Awaitable[Instance]]


@pytest.fixture
def start(aiohttp_client: AiohttpClient, repo: Repository, pki: TestPKI, tmp_path: Path) -> Start:
    """``await start(redis=URL, database=URL)``: one more instance of the service."""
    prefix = f"verifier-test-{uuid.uuid4().hex}:"

    async def run(*, redis: str, database: str) -> Instance:
        settings = repo.service_settings(
            pki,
            tmp_path,
            {
                "redis.url": redis,
                "redis.key_prefix": prefix,
                "records.database_url": database,
                "records.data_dir": str(tmp_path / "data"),  # the journal's
                "tuning.writer_flush_interval": 0.01,
                "api.admin_token": TOKEN,
                "api.log_verifications": False,
            },
        )
        client: Instance = await aiohttp_client(create_app(settings))
        return client

    return run


async def atis(instance: Instance, identity: str, now: int) -> tuple[int, str]:
    body = {
        "verificationRequest": {
            "from": {"tn": ORIG},
            "to": {"tn": [DEST]},
            "time": now,
            "identity": identity,
        }
    }
    async with instance.post("/stir/v1/verification", json=body) as resp:
        answer = await resp.json()
    return resp.status, answer["verificationResponse"]["verstat"]


async def drained(*instances: Instance) -> None:
    for instance in instances:
        assert instance.app is not None
        writer = instance.app[SERVICE].records
        assert writer is not None
        for _ in range(500):
            if writer.queue_depth == 0:
                break
            await asyncio.sleep(0.01)
        assert 0 == writer.queue_depth


async def test_two_instances_fetch_a_cold_x5u_once_and_share_one_record_store(
    start: Start, repo: Repository, pki: TestPKI, redis_url: str, database_url: str
) -> None:
    one = await start(redis=redis_url, database=database_url)
    two = await start(redis=redis_url, database=database_url)
    pki.signer.x5u = repo.put("/cold.pem", pki.signer.chain_pem(), delay=0.2)
    now = int(time.time())
    identities = [pki.signer.identity(iat=now) for _ in range(100)]
    answers = await asyncio.gather(
        *(atis(one if i % 2 else two, value, now) for i, value in enumerate(identities))
    )
    assert [(200, "TN-Validation-Passed")] * 100 == answers
    assert 1 == repo.counts["/cold.pem"]  # once for the fleet, not once per instance
    await drained(one, two)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with one.get(f"/v1/stats?since={now - 5}", headers=auth) as resp:
        stats = await resp.json()
    assert 100 == stats["total"]  # both instances' records, answered by one
    async with one.get("/v1/records?limit=1000", headers=auth) as resp:
        endpoints = {r["request_id"] for r in (await resp.json())["records"]}
    assert 100 == len(endpoints)
    # a call verified by instance two, traced back through instance one by its origid
    import base64
    import json

    payload = identities[0].split(".")[1]
    origid = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["origid"]
    async with one.get(f"/v1/records?origid={origid}", headers=auth) as resp:
        found = (await resp.json())["records"]
    assert [("atis", ORIG, DEST, ["1234"])] == [
        (r["endpoint"], r["orig"], r["dest"], r["spc"]) for r in found
    ]


async def test_redis_and_postgres_down_mid_load_lose_nothing(
    start: Start, repo: Repository, pki: TestPKI, redis_url: str, database_url: str
) -> None:
    redis = urlsplit(redis_url)
    database = urlsplit(database_url)
    async with (
        TcpProxy(redis.hostname or "127.0.0.1", redis.port or 6379) as redis_proxy,
        TcpProxy(database.hostname or "127.0.0.1", database.port or 5432) as pg_proxy,
    ):
        via_redis = redis_url.replace(redis.netloc, f"127.0.0.1:{redis_proxy.port}")
        via_pg = database_url.replace(database.netloc.split("@")[-1], f"127.0.0.1:{pg_proxy.port}")
        one = await start(redis=via_redis, database=via_pg)
        two = await start(redis=via_redis, database=via_pg)
        pki.signer.x5u = repo.put("/warm.pem", pki.signer.chain_pem())
        now = int(time.time())
        verdicts: list[tuple[int, str]] = []

        async def calls(instance: Instance, n: int) -> None:
            for _ in range(n):
                verdicts.append(await atis(instance, pki.signer.identity(iat=now), now))

        await asyncio.gather(calls(one, 20), calls(two, 20))  # warm both local tiers
        redis_proxy.cut()
        pg_proxy.cut()
        await asyncio.gather(calls(one, 60), calls(two, 60))
        async with one.get("/readyz") as resp:
            ready = (resp.status, await resp.json())
        redis_proxy.restore()
        pg_proxy.restore()
        await asyncio.gather(calls(one, 20), calls(two, 20))
        await drained(one, two)
        assert [(200, "TN-Validation-Passed")] * 200 == verdicts
        assert 200 == ready[0]
        assert ready[1]["shared"].startswith("degraded")
        assert ready[1]["records"].startswith("degraded")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with one.get(f"/v1/stats?since={now - 5}", headers=auth) as resp:
            assert 200 == (await resp.json())["total"]  # every accepted record written
        assert 1 == repo.counts["/warm.pem"]


async def test_an_origid_postgresql_cannot_store_holds_back_no_record(
    start: Start, repo: Repository, pki: TestPKI, redis_url: str, database_url: str
) -> None:
    """A signer's origid is any JSON string: one with a NUL (PostgreSQL's text cannot hold
    it) is recorded with U+FFFD, and the calls after it are recorded too."""
    one = await start(redis=redis_url, database=database_url)
    pki.signer.x5u = repo.put("/nul.pem", pki.signer.chain_pem())
    now = int(time.time())
    odd = pki.signer.identity(iat=now, origid="call\x00one")
    assert (200, "TN-Validation-Passed") == await atis(one, odd, now)
    assert (200, "TN-Validation-Passed") == await atis(one, pki.signer.identity(iat=now), now)
    await drained(one)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with one.get(f"/v1/records?since={now - 5}", headers=auth) as resp:
        origids = [r["origid"] for r in (await resp.json())["records"]]
    assert 2 == len(origids)
    assert "call\ufffdone" in origids
