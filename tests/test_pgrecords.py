"""verifier.records.postgres: what only the PostgreSQL record store does, against a real server.

Needs VERIFIER_TEST_DATABASE_URL (CI: postgresql://postgres@127.0.0.1:5432/test); without
it every test here is skipped, and when it is set and the server does not answer they fail
(a configured service down is a red run, not a green one). Each test works in its
own schema (``verifier_test_<uuid>``), dropped afterwards. The database outage is real: a
:class:`verifier.testing.faults.TcpProxy` between the store and the server is cut and restored.

The store contract (queries, pagination, cursors, stats, pruning, the writer, ``verifier
records``) runs on PostgreSQL with the other backends in test_records.py.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, LiteralString
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from verifier.records import (
    RecordQuery,
    RecordSettings,
    RecordWriter,
    SqliteRecordStore,
    open_store,
)
from verifier.records.child import ChildWriterStore
from verifier.records.journal import Journal
from verifier.records.pgschema import create_partitions, day_of
from verifier.records.postgres import MIGRATIONS, PostgresRecordStore
from verifier.testing.faults import TcpProxy

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

    Kit = type[RecordKit]

DAY = 86400.0


@pytest.fixture
def store(database_url: str, schema: str) -> Iterator[PostgresRecordStore]:
    s = PostgresRecordStore.open(database_url, schema=schema)
    yield s
    s.close()


def fetch(
    database_url: str, schema: str, query: LiteralString, *args: Any
) -> list[tuple[Any, ...]]:
    """The rows of ``query`` run in ``schema``."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        cur = conn.execute(query, args)
        return [] if cur.description is None else cur.fetchall()


def partitions(database_url: str, schema: str, parent: str) -> list[str]:
    rows = fetch(
        database_url,
        schema,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass ORDER BY c.relname",
        f"{schema}.{parent}",
    )
    return [name for (name,) in rows]


# -- schema and migrations ---------------------------------------------------------------------


def old_schema(database_url: str, schema: str, version: int, ts: float) -> None:
    """``schema`` as a verifier of schema ``version`` left it (its first ``version``
    migrations), with one record, ``old``, at ``ts``."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE verifier_schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for made, migration in enumerate(MIGRATIONS[:version], 1):
            conn.execute(migration)
            conn.execute("INSERT INTO verifier_schema_migrations (version) VALUES (%s)", (made,))
        create_partitions(conn, [day_of(ts)])
        conn.execute(
            "INSERT INTO records (ts, request_id, endpoint, verstat, spc)"
            " VALUES (%s, 'old', 'atis', 'TN-Validation-Passed', '{}')",
            (ts,),
        )


def test_schema_tables_and_indexes(
    store: PostgresRecordStore, database_url: str, schema: str
) -> None:
    tables = {
        name
        for (name,) in fetch(
            database_url,
            schema,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            schema,
        )
    }
    assert {"records", "record_spc", "verifier_schema_migrations"} <= tables
    indexes = {
        name
        for (name,) in fetch(
            database_url, schema, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", schema
        )
    }
    assert {
        "records_pkey",
        "records_origid",
        "records_orig",
        "records_dest",
        "record_spc_pkey",
        "record_spc_ts",
    } <= indexes
    kinds = dict(
        fetch(
            database_url,
            schema,
            "SELECT relname, relkind::text FROM pg_class WHERE relname IN ('records', 'record_spc')"
            " AND relnamespace = %s::regnamespace",
            schema,
        )
    )
    assert {"records": "p", "record_spc": "p"} == kinds  # partitioned


def test_migrations_apply_once(database_url: str, schema: str) -> None:
    for _ in range(3):
        PostgresRecordStore.open(database_url, schema=schema).close()
    versions = fetch(database_url, schema, "SELECT version FROM verifier_schema_migrations")
    assert [(v,) for v in range(1, len(MIGRATIONS) + 1)] == versions


def test_a_version_1_schema_is_migrated_and_keeps_its_records(
    database_url: str, schema: str, kit: Kit
) -> None:
    """The Identity column and the certificate table (migration 2) come to a database made
    by the previous version, whose records stay readable."""
    old_schema(database_url, schema, 1, kit.T0)
    store = PostgresRecordStore.open(database_url, schema=schema)
    try:
        assert [("old", None)] == [(r.request_id, r.identity) for r in kit.every(store)]
        assert {} == store.chains(["00" * 32])
    finally:
        store.close()
    assert [(v,) for v in range(1, len(MIGRATIONS) + 1)] == fetch(
        database_url, schema, "SELECT version FROM verifier_schema_migrations"
    )


def test_a_version_3_schema_gets_the_signers_column_in_place(
    database_url: str, schema: str, kit: Kit
) -> None:
    """Migration 4 adds ``signers`` to a schema of the previous version: its records stay,
    without signers; new records carry theirs."""
    old_schema(database_url, schema, 3, kit.T0)
    with contextlib.closing(PostgresRecordStore.open(database_url, schema=schema)) as store:
        store.insert_many([kit.rec(1, signers={"https://x/div.pem": "ab" * 32})])
        got = {r.request_id: r.signers for r in kit.every(store)}
    assert {"old": None, "req-1": {"https://x/div.pem": "ab" * 32}} == got
    versions = fetch(database_url, schema, "SELECT max(version) FROM verifier_schema_migrations")
    assert [(len(MIGRATIONS),)] == versions


def test_concurrent_opens_migrate_once(database_url: str, schema: str) -> None:
    barrier = threading.Barrier(4)
    opened: list[PostgresRecordStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PostgresRecordStore.open(database_url, schema=schema))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in opened:
        s.close()
    assert ([], 4) == (errors, len(opened))
    assert [(v,) for v in range(1, len(MIGRATIONS) + 1)] == fetch(
        database_url, schema, "SELECT version FROM verifier_schema_migrations"
    )


def test_open_refuses_a_newer_schema(database_url: str, schema: str) -> None:
    PostgresRecordStore.open(database_url, schema=schema).close()
    fetch(database_url, schema, "INSERT INTO verifier_schema_migrations (version) VALUES (99)")
    with pytest.raises(ValueError, match="schema version 99 is newer"):
        PostgresRecordStore.open(database_url, schema=schema)
    with pytest.raises(ValueError, match="schema version 99 is newer"):
        PostgresRecordStore.open(database_url, schema=schema, create=False)


def test_open_without_create_needs_the_schema(database_url: str, schema: str) -> None:
    with pytest.raises(ValueError, match="no record schema"):
        PostgresRecordStore.open(database_url, schema=schema, create=False)
    assert [] == fetch(
        database_url,
        schema,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        schema,
    )


def test_open_without_create_reads(
    store: PostgresRecordStore, database_url: str, schema: str, kit: Kit
) -> None:
    store.insert_many([kit.rec(1)])
    reader = PostgresRecordStore.open(database_url, schema=schema, create=False)
    try:
        assert ["req-1"] == kit.ids(reader.query(RecordQuery())[0])
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x; DROP TABLE records", "not a plain lower-case SQL identifier"),
        ("Records", "not a plain lower-case SQL identifier"),
        ("verifier_test_missing", "schema 'verifier_test_missing' does not exist"),
    ],
)
def test_open_checks_the_schema(database_url: str, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostgresRecordStore.open(database_url, schema=name)


def test_open_unreachable_names_the_database_without_password() -> None:
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"postgresql://someone:sekrit@127.0.0.1:{port}/db"
        with pytest.raises(ValueError, match="cannot connect") as info:
            PostgresRecordStore.open(url)
    assert f"postgresql://someone@127.0.0.1:{port}/db: cannot connect" in str(info.value)
    assert "sekrit" not in str(info.value)


def test_open_store_picks_the_backend(
    database_url: str, schema: str, schema_url: str, tmp_path: Path
) -> None:
    pg = open_store(RecordSettings(database_url=schema_url))
    lite = open_store(RecordSettings(data_dir=str(tmp_path), writer_process=False))
    child = open_store(RecordSettings(data_dir=str(tmp_path)))
    try:
        assert (PostgresRecordStore, SqliteRecordStore) == (type(pg), type(lite))
        assert isinstance(child, ChildWriterStore)  # SQLite's default
    finally:
        pg.close()
        lite.close()
        child.close()
    assert [(v,) for v in range(1, len(MIGRATIONS) + 1)] == fetch(
        database_url, schema, "SELECT version FROM verifier_schema_migrations"
    )


# -- partitions and retention ------------------------------------------------------------------


@pytest.fixture
def day_start(kit: Kit) -> Callable[[int], float]:
    """``day_start(n)``: the start of the n-th UTC day after the one T0 falls in."""
    return lambda n: (kit.T0 // DAY + n) * DAY


def test_partitions_are_created_on_demand_and_dropped_by_prune(
    store: PostgresRecordStore,
    database_url: str,
    schema: str,
    kit: Kit,
    day_start: Callable[[int], float],
) -> None:
    assert [] == partitions(database_url, schema, "records")
    # Days 0, 1, 2: 24 records each, one an hour; every one signed by SPC AAAA.
    store.insert_many(
        [kit.rec(d * 24 + h, ts=day_start(d) + h * 3600) for d in range(3) for h in range(24)]
    )
    days = ("20270114", "20270115", "20270116", "20270117", "20270118")
    names = [f"records_p{day}" for day in days]
    # T0 is 2027-01-15T08:00Z, so day 0 is 2027-01-15; the day after the last is made ahead.
    assert names[1:] == partitions(database_url, schema, "records")
    assert [f"record_spc_p{day}" for day in days[1:]] == partitions(
        database_url, schema, "record_spc"
    )
    store.insert_many([kit.rec(999, ts=day_start(-1) + 5)])  # an older day, on demand
    assert names == partitions(database_url, schema, "records")

    # Day -1 and day 0 go whole; day 1 keeps its rows from 06:00 on.
    assert 1 + 24 + 6 == store.prune(day_start(1) + 6 * 3600)
    assert names[2:] == partitions(database_url, schema, "records")
    assert [f"record_spc_p{day}" for day in days[2:]] == partitions(
        database_url, schema, "record_spc"
    )
    assert 18 + 24 == len(kit.every(store))
    assert [{"spc": "1234", "count": 42}] == store.stats(None, None)["top_spc"]
    assert 0 == store.prune(day_start(1) + 6 * 3600)
    store.insert_many([kit.rec(1000, ts=day_start(0) + 1)])  # a dropped day comes back
    assert ["req-1000"] == kit.ids(store.query(RecordQuery(until=day_start(1)))[0])


def test_an_insert_after_another_instance_pruned_its_day_is_retried(
    store: PostgresRecordStore,
    database_url: str,
    schema: str,
    kit: Kit,
    day_start: Callable[[int], float],
) -> None:
    other = PostgresRecordStore.open(database_url, schema=schema)
    try:
        store.insert_many([kit.rec(1, ts=day_start(0))])
        assert 1 == other.prune(day_start(1))  # `store` still believes the day exists
        with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
            store.insert_many([kit.rec(2, ts=day_start(0))])
        store.insert_many([kit.rec(2, ts=day_start(0))])  # what the writer's retry does
    finally:
        other.close()
    assert ["req-2"] == kit.ids(kit.every(store))


def test_records_out_of_partition_range_are_refused(store: PostgresRecordStore, kit: Kit) -> None:
    for ts in (float("nan"), float("inf"), 1e300):
        with pytest.raises(ValueError, match="record ts"):
            store.insert_many([kit.rec(0, ts=ts)])
    with pytest.raises(ValueError, match="before"):
        store.prune(float("nan"))


# -- instances and outages ---------------------------------------------------------------------


def test_two_instances_insert_concurrently_into_one_table(
    database_url: str, schema: str, kit: Kit
) -> None:
    stores = [PostgresRecordStore.open(database_url, schema=schema) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def load(n: int, s: PostgresRecordStore) -> None:
        barrier.wait()
        try:
            for b in range(20):  # both cross the same days: they race to create partitions
                s.insert_many(
                    [
                        kit.rec(i, request_id=f"i{n}-{b}-{i}", ts=kit.T0 + (b * 100 + i) * 900)
                        for i in range(100)
                    ]
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert [] == errors
        reader = PostgresRecordStore.open(database_url, schema=schema, create=False)
        got = kit.every(reader)
        expected = {f"i{n}-{b}-{i}" for n in range(2) for b in range(20) for i in range(100)}
        assert expected == set(kit.ids(got))
        assert 4000 == len(got) == reader.stats(None, None)["total"]
        assert sorted((r.ts for r in got), reverse=True) == [r.ts for r in got]
        pages = 0
        page_ids: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = reader.query(RecordQuery(limit=1000, cursor=cursor))
            page_ids += kit.ids(page)
            pages += 1
            if cursor is None:
                break
        assert (kit.ids(got), 4) == (page_ids, pages)
        reader.close()
    finally:
        for s in stores:
            s.close()


def test_a_broken_write_connection_is_replaced(
    store: PostgresRecordStore, database_url: str, kit: Kit
) -> None:
    store.insert_many([kit.rec(1)])
    assert store._writer is not None
    pid = store._writer.info.backend_pid
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        store.insert_many([kit.rec(2)])
    store.insert_many([kit.rec(3)])
    assert ["req-3", "req-1"] == kit.ids(kit.every(store))


async def test_a_commit_whose_acknowledgement_is_lost_is_not_written_twice(
    database_url: str, schema: str, kit: Kit
) -> None:
    async with through_proxy(database_url, schema) as (proxy, store):
        await asyncio.to_thread(store.insert_many, [kit.rec(1)])  # the day's partitions
        batch = [kit.rec(2), kit.rec(3, spc=("123A", "456B"))]
        proxy.lose_reply(_COMMIT_DONE)  # the server commits; the client never hears
        with pytest.raises(psycopg.OperationalError):
            await asyncio.to_thread(store.insert_many, batch)
        assert ["req-3", "req-2", "req-1"] == stored(database_url, schema)
        await asyncio.to_thread(store.insert_many, batch)  # the writer's retry
        again = [kit.rec(4)]
        proxy.lose_reply(_COMMIT_DONE)
        with pytest.raises(psycopg.OperationalError):
            await asyncio.to_thread(store.insert_many, again)
        await asyncio.to_thread(store.insert_many, [kit.rec(5)])  # another batch: new ids
    assert ["req-5", "req-4", "req-3", "req-2", "req-1"] == stored(database_url, schema)
    assert [(6,)] == fetch(database_url, schema, "SELECT count(*) FROM record_spc")
    assert [(6,)] == fetch(database_url, schema, "SELECT sum(calls) FROM provider_minutes")
    assert [(5,)] == fetch(database_url, schema, "SELECT sum(calls) FROM record_minutes")


async def test_a_retry_after_a_lost_commit_request_writes_the_batch(
    database_url: str, schema: str, kit: Kit
) -> None:
    async with through_proxy(database_url, schema) as (proxy, store):
        await asyncio.to_thread(store.insert_many, [kit.rec(1)])
        batch = [kit.rec(2)]
        proxy.lose_reply(b"COPY 1\x00")  # cut before the commit was sent: rolled back
        with pytest.raises(psycopg.OperationalError):
            await asyncio.to_thread(store.insert_many, batch)
        assert ["req-1"] == stored(database_url, schema)
        await asyncio.to_thread(store.insert_many, batch)
    assert ["req-2", "req-1"] == stored(database_url, schema)


_COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"
"""PostgreSQL's CommandComplete message for a COMMIT."""


def stored(database_url: str, schema: str) -> list[str]:
    """The request ids of every record in ``schema``, newest first, read directly."""
    reader = PostgresRecordStore.open(database_url, schema=schema, create=False)
    try:
        return [r.request_id for chunk in reader.iter_query(RecordQuery()) for r in chunk]
    finally:
        reader.close()


def test_nul_characters_are_replaced_not_fatal(store: PostgresRecordStore, kit: Kit) -> None:
    """PostgreSQL's text cannot hold NUL: without the replacement the batch fails on
    every retry, and the writer holds back every record behind it."""
    store.insert_many([kit.rec(1, origid="a\x00b", spc=("\x00",)), kit.rec(2)])
    got = {r.request_id: r for r in kit.every(store)}
    assert ("a\ufffdb", ("\ufffd",)) == (got["req-1"].origid, got["req-1"].spc)
    assert kit.rec(2) == got["req-2"]


@contextlib.asynccontextmanager
async def through_proxy(
    database_url: str, schema: str
) -> AsyncIterator[tuple[TcpProxy, PostgresRecordStore]]:
    """A store in ``schema`` whose connections go through a :class:`TcpProxy`."""
    parts = urlsplit(database_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxied = parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}")
        store = await asyncio.to_thread(PostgresRecordStore.open, proxied.geturl(), schema=schema)
        try:
            yield proxy, store
        finally:
            await asyncio.to_thread(store.close)


async def test_database_outage_loses_nothing_accepted(
    database_url: str, schema: str, kit: Kit
) -> None:
    async with through_proxy(database_url, schema) as (proxy, store):
        settings = RecordSettings(batch_size=50, flush_interval=0.01, queue_size=5000)
        writer = RecordWriter(store, settings)
        await writer.start()
        try:
            for i in range(500):
                await writer.submit(kit.rec(i, request_id=f"r{i}"))
            await until(lambda: writer.written == 500)
            proxy.cut()  # the database goes away mid-load
            for i in range(500, 2500):  # accepted: the queue has room for them
                await writer.submit(kit.rec(i, request_id=f"r{i}"))
            await until(lambda: writer.write_errors >= 2)
            assert not writer.healthy
            assert 0 == writer.dropped
            assert writer.queue_depth > 0
            assert 500 <= writer.written < 2500
            proxy.restore()
            await until(lambda: writer.queue_depth == 0)
        finally:
            await writer.close()
        assert (2500, 0) == (writer.written, writer.dropped)
        assert proxy.connections >= 3  # migrations/read check, the writer, its replacement
    got = stored(database_url, schema)
    assert {f"r{i}" for i in range(2500)} == set(got)
    assert 2500 == len(got)  # nothing lost, nothing twice


async def test_database_outage_never_makes_a_record_wait_and_loses_none(
    database_url: str, schema: str, kit: Kit, tmp_path: Path
) -> None:
    """With the journal (as the service runs): while PostgreSQL is away every record is
    taken at once (``offer`` never asks for a ``submit``: nothing waits) and journaled;
    when it is back each one lands, once, even when a replayed batch's commit
    acknowledgement is lost on the way."""
    async with through_proxy(database_url, schema) as (proxy, store):
        settings = RecordSettings(batch_size=50, flush_interval=0.01, queue_size=5000)
        journal = Journal.open(tmp_path, 1 << 20)
        writer = RecordWriter(store, settings, journal=journal)
        await writer.start()
        try:
            for i in range(500):
                assert writer.offer(kit.rec(i, request_id=f"r{i}"))
            await until(lambda: writer.written == 500)
            proxy.cut()  # the database goes away mid-load
            for i in range(500, 2500):
                assert writer.offer(kit.rec(i, request_id=f"r{i}"))
                if i % 100 == 0:
                    await asyncio.sleep(0)  # the writer's turn: it meets the outage
            await until(lambda: writer.write_errors >= 2)
            assert not writer.healthy
            assert writer.journaled > 0
            in_memory = writer.queue_depth - journal.waiting_records
            assert in_memory <= settings.batch_size  # the rest is on disk
            proxy.lose_reply(_COMMIT_DONE)  # the first replayed batch commits unheard
            proxy.restore()
            await until(lambda: writer.journaled == 0 and writer.queue_depth == 0)
        finally:
            await writer.close()
        assert 0 == writer.dropped
    got = stored(database_url, schema)
    assert {f"r{i}" for i in range(2500)} == set(got)
    assert 2500 == len(got)  # nothing lost, nothing twice


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {seconds} s")


# -- verifier records --database-url -----------------------------------------------------------


def test_cli_without_a_record_schema(
    schema_url: str, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 2 == kit.run(["records", "--database-url", schema_url])
    assert "no record schema" in capsys.readouterr().err


def test_cli_database_unreachable(capsys: pytest.CaptureFixture[str], kit: Kit) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/db"
        assert 2 == kit.run(["records", "--database-url", url, "--stats"])
    assert "cannot connect" in capsys.readouterr().err
