"""verifier.records.postgres: the PostgreSQL record store, against a real server.

Needs VERIFIER_TEST_DATABASE_URL (CI: postgresql://postgres@127.0.0.1:5432/test); without
it, or when the server does not answer, every test here is skipped. Each test works in its
own schema (``verifier_test_<uuid>``), dropped afterwards. The database outage is real: a
:class:`verifier.testing.faults.TcpProxy` between the store and the server is cut and restored.

The store-agnostic tests of test_records.py (queries, pagination, cursors, stats, pruning,
the writer) are imported below and run again here, where ``store`` is a PostgreSQL store.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib
import io
import json
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from verifier.records import (
    CSV_COLUMNS,
    Record,
    RecordQuery,
    RecordSettings,
    RecordWriter,
    SqliteRecordStore,
    open_store,
)
from verifier.records.child import ChildWriterStore
from verifier.records.postgres import MIGRATIONS, PostgresRecordStore
from verifier.testing.faults import TcpProxy

# The store-agnostic behaviours of the SQLite store (and its `mixed` fixture), collected
# again here: pytest resolves their `store` fixture in this module, a PostgreSQL store.
# (Imported by name at run time: mypy knows test_records.py as a top-level module.)
_sqlite_tests = importlib.import_module("tests.test_records")
SHARED = (
    "mixed",
    "test_back_pressure_is_bounded_by_submit_timeout",
    "test_back_pressure_waits_for_room",
    "test_close_is_idempotent_and_later_submits_are_counted",
    "test_closed_store_refuses_writes",
    "test_drop_mode_counts_drops",
    "test_duplicate_spcs_are_indexed_once",
    "test_insert_many_of_nothing",
    "test_iter_query_returns_everything_in_chunks",
    "test_iter_query_starts_at_a_cursor",
    "test_pagination_by_spc_and_window",
    "test_pagination_is_stable_while_records_arrive",
    "test_pagination_newest_first_without_gaps_or_duplicates",
    "test_prune_deletes_older_records_and_their_spcs",
    "test_query_cursor_is_opaque_and_valid",
    "test_query_filters",
    "test_query_last_page_has_no_cursor",
    "test_reads_run_while_the_writer_writes",
    "test_record_round_trips_and_to_dict",
    "test_stats",
    "test_stats_window_and_top_20",
    "test_texts_no_store_can_hold_are_replaced_not_fatal",
    "test_writer_drains_on_close",
    "test_writer_drops_only_the_record_the_store_refuses",
    "test_writer_flushes_a_partial_batch_after_the_interval",
    "test_writer_never_started_drains_on_close",
    "test_writer_prunes_by_retention",
)
globals().update({name: getattr(_sqlite_tests, name) for name in SHARED})
T0: float = _sqlite_tests.T0
rec: Callable[..., Record] = _sqlite_tests.rec
ids: Callable[[Sequence[Record]], list[str]] = _sqlite_tests.ids
run: Callable[[Sequence[str]], int] = _sqlite_tests.run

DAY = 86400.0
HOW = (
    "set VERIFIER_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test, a PostgreSQL"
    " database on 127.0.0.1 where that user may create schemas (.ci/run sets it)"
)


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("VERIFIER_TEST_DATABASE_URL")
    if not url:
        pytest.skip(f"PostgreSQL tests: {HOW}")
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"PostgreSQL tests only talk to 127.0.0.1, not {host}: {HOW}")
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        why = " ".join(str(exc).split())
        pytest.skip(f"PostgreSQL on {host}:{urlsplit(url).port} does not answer ({why}): {HOW}")
    return url


@pytest.fixture
def new_schema(database_url: str) -> Iterator[Callable[[], str]]:
    """Makes empty schemas; drops them all at the end of the test."""
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
    return new_schema()


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


def everything(store: PostgresRecordStore) -> list[Record]:
    return [r for chunk in store.iter_query(RecordQuery()) for r in chunk]


# -- schema and migrations ---------------------------------------------------------------------


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
    assert [(1,)] == fetch(database_url, schema, "SELECT version FROM verifier_schema_migrations")


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
    store: PostgresRecordStore, database_url: str, schema: str
) -> None:
    store.insert_many([rec(1)])
    reader = PostgresRecordStore.open(database_url, schema=schema, create=False)
    try:
        assert ["req-1"] == ids(reader.query(RecordQuery())[0])
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


def test_open_store_picks_the_backend(database_url: str, schema: str, tmp_path: Path) -> None:
    url = with_search_path(database_url, schema)
    pg = open_store(RecordSettings(database_url=url))
    lite = open_store(RecordSettings(data_dir=str(tmp_path), writer_process=False))
    child = open_store(RecordSettings(data_dir=str(tmp_path)))
    try:
        assert (PostgresRecordStore, SqliteRecordStore) == (type(pg), type(lite))
        assert isinstance(child, ChildWriterStore)  # SQLite's default
    finally:
        pg.close()
        lite.close()
        child.close()
    assert [(1,)] == fetch(database_url, schema, "SELECT version FROM verifier_schema_migrations")


def test_settings_database_url_must_be_postgresql() -> None:
    with pytest.raises(ValueError, match="database_url"):
        RecordSettings(database_url="mysql://x/y")


# -- partitions and retention ------------------------------------------------------------------


def day_start(n: int) -> float:
    """The start of the n-th UTC day after the one T0 falls in."""
    return (T0 // DAY + n) * DAY


def test_partitions_are_created_on_demand_and_dropped_by_prune(
    store: PostgresRecordStore, database_url: str, schema: str
) -> None:
    assert [] == partitions(database_url, schema, "records")
    # Days 0, 1, 2: 24 records each, one an hour; every one signed by SPC AAAA.
    store.insert_many(
        [rec(d * 24 + h, ts=day_start(d) + h * 3600) for d in range(3) for h in range(24)]
    )
    days = ("20270114", "20270115", "20270116", "20270117", "20270118")
    names = [f"records_p{day}" for day in days]
    # T0 is 2027-01-15T08:00Z, so day 0 is 2027-01-15; the day after the last is made ahead.
    assert names[1:] == partitions(database_url, schema, "records")
    assert [f"record_spc_p{day}" for day in days[1:]] == partitions(
        database_url, schema, "record_spc"
    )
    store.insert_many([rec(999, ts=day_start(-1) + 5)])  # an older day, on demand
    assert names == partitions(database_url, schema, "records")

    # Day -1 and day 0 go whole; day 1 keeps its rows from 06:00 on.
    assert 1 + 24 + 6 == store.prune(day_start(1) + 6 * 3600)
    assert names[2:] == partitions(database_url, schema, "records")
    assert [f"record_spc_p{day}" for day in days[2:]] == partitions(
        database_url, schema, "record_spc"
    )
    assert 18 + 24 == len(everything(store))
    assert [{"spc": "1234", "count": 42}] == store.stats(None, None)["top_spc"]
    assert 0 == store.prune(day_start(1) + 6 * 3600)
    store.insert_many([rec(1000, ts=day_start(0) + 1)])  # a dropped day comes back
    assert ["req-1000"] == ids(store.query(RecordQuery(until=day_start(1)))[0])


def test_an_insert_after_another_instance_pruned_its_day_is_retried(
    store: PostgresRecordStore, database_url: str, schema: str
) -> None:
    other = PostgresRecordStore.open(database_url, schema=schema)
    try:
        store.insert_many([rec(1, ts=day_start(0))])
        assert 1 == other.prune(day_start(1))  # `store` still believes the day exists
        with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
            store.insert_many([rec(2, ts=day_start(0))])
        store.insert_many([rec(2, ts=day_start(0))])  # what the writer's retry does
    finally:
        other.close()
    assert ["req-2"] == ids(everything(store))


def test_records_out_of_partition_range_are_refused(store: PostgresRecordStore) -> None:
    for ts in (float("nan"), float("inf"), 1e300):
        with pytest.raises(ValueError, match="record ts"):
            store.insert_many([rec(0, ts=ts)])
    with pytest.raises(ValueError, match="before"):
        store.prune(float("nan"))


# -- instances and outages ---------------------------------------------------------------------


def test_two_instances_insert_concurrently_into_one_table(database_url: str, schema: str) -> None:
    stores = [PostgresRecordStore.open(database_url, schema=schema) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def load(n: int, s: PostgresRecordStore) -> None:
        barrier.wait()
        try:
            for b in range(20):  # both cross the same days: they race to create partitions
                s.insert_many(
                    [
                        rec(i, request_id=f"i{n}-{b}-{i}", ts=T0 + (b * 100 + i) * 900)
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
        got = everything(reader)
        expected = {f"i{n}-{b}-{i}" for n in range(2) for b in range(20) for i in range(100)}
        assert expected == set(ids(got))
        assert 4000 == len(got) == reader.stats(None, None)["total"]
        assert sorted((r.ts for r in got), reverse=True) == [r.ts for r in got]
        pages = 0
        page_ids: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = reader.query(RecordQuery(limit=1000, cursor=cursor))
            page_ids += ids(page)
            pages += 1
            if cursor is None:
                break
        assert (ids(got), 4) == (page_ids, pages)
        reader.close()
    finally:
        for s in stores:
            s.close()


def test_a_broken_write_connection_is_replaced(
    store: PostgresRecordStore, database_url: str
) -> None:
    store.insert_many([rec(1)])
    assert store._writer is not None
    pid = store._writer.info.backend_pid
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        store.insert_many([rec(2)])
    store.insert_many([rec(3)])
    assert ["req-3", "req-1"] == ids(everything(store))


async def test_a_commit_whose_acknowledgement_is_lost_is_not_written_twice(
    database_url: str, schema: str
) -> None:
    async with through_proxy(database_url, schema) as (proxy, store):
        await asyncio.to_thread(store.insert_many, [rec(1)])  # the day's partitions
        batch = [rec(2), rec(3, spc=("123A", "456B"))]
        proxy.lose_reply(_COMMIT_DONE)  # the server commits; the client never hears
        with pytest.raises(psycopg.OperationalError):
            await asyncio.to_thread(store.insert_many, batch)
        assert ["req-3", "req-2", "req-1"] == stored(database_url, schema)
        await asyncio.to_thread(store.insert_many, batch)  # the writer's retry
        again = [rec(4)]
        proxy.lose_reply(_COMMIT_DONE)
        with pytest.raises(psycopg.OperationalError):
            await asyncio.to_thread(store.insert_many, again)
        await asyncio.to_thread(store.insert_many, [rec(5)])  # another batch: new ids
    assert ["req-5", "req-4", "req-3", "req-2", "req-1"] == stored(database_url, schema)
    assert [(6,)] == fetch(database_url, schema, "SELECT count(*) FROM record_spc")


async def test_a_retry_after_a_lost_commit_request_writes_the_batch(
    database_url: str, schema: str
) -> None:
    async with through_proxy(database_url, schema) as (proxy, store):
        await asyncio.to_thread(store.insert_many, [rec(1)])
        batch = [rec(2)]
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
        return ids(everything(reader))
    finally:
        reader.close()


def test_nul_characters_are_replaced_not_fatal(store: PostgresRecordStore) -> None:
    """PostgreSQL's text cannot hold NUL: without the replacement the batch fails on
    every retry, and the writer holds back every record behind it."""
    store.insert_many([rec(1, origid="a\x00b", spc=("\x00",)), rec(2)])
    got = {r.request_id: r for r in everything(store)}
    assert ("a\ufffdb", ("\ufffd",)) == (got["req-1"].origid, got["req-1"].spc)
    assert rec(2) == got["req-2"]


def with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


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


async def test_database_outage_loses_nothing_accepted(database_url: str, schema: str) -> None:
    async with through_proxy(database_url, schema) as (proxy, store):
        settings = RecordSettings(batch_size=50, flush_interval=0.01, queue_size=5000)
        writer = RecordWriter(store, settings)
        await writer.start()
        try:
            for i in range(500):
                await writer.submit(rec(i, request_id=f"r{i}"))
            await until(lambda: writer.written == 500)
            proxy.cut()  # the database goes away mid-load
            for i in range(500, 2500):  # accepted: the queue has room for them
                await writer.submit(rec(i, request_id=f"r{i}"))
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


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {seconds} s")


# -- verifier records --database-url -----------------------------------------------------------


@pytest.fixture
def cli_url(mixed: PostgresRecordStore, database_url: str, schema: str) -> str:
    return with_search_path(database_url, schema)


def test_cli_lists_newest_first_with_a_cursor(
    cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 0 == run(["records", "--database-url", cli_url, "--orig", "111", "--limit", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert 3 == len(lines)
    assert lines[0].startswith("2027-01-15T08:00:04Z native TN-Validation-Passed attest=A")
    assert "orig=111 dest=900 origid=x spc=BBBB action=accept request_id=req-4" in lines[0]
    assert "request_id=req-1" in lines[1]
    cursor = lines[2].split(": ", 1)[1]
    assert 0 == run(["records", "--database-url", cli_url, "--orig", "111", "--cursor", cursor])
    lines = capsys.readouterr().out.splitlines()
    assert 1 == len(lines)
    assert "request_id=req-0" in lines[0]


def test_cli_json(cli_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == run(["records", "--database-url", cli_url, "--spc", "AAAA", "--json"])
    body = json.loads(capsys.readouterr().out)
    assert ["req-2", "req-0"] == [r["request_id"] for r in body["records"]]
    assert None is body["next_cursor"]


def test_cli_stats(cli_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    since = "2027-01-15T08:00:01Z"
    assert 0 == run(["records", "--database-url", cli_url, "--stats", "--since", since])
    stats = json.loads(capsys.readouterr().out)
    assert (T0 + 1, None, 4) == (stats["since"], stats["until"], stats["total"])
    assert [{"spc": "BBBB", "count": 3}, {"spc": "AAAA", "count": 1}] == stats["top_spc"]


def test_cli_csv(cli_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == run(["records", "--database-url", cli_url, "--csv", "--dest", "900"])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out, newline="")))
    assert list(CSV_COLUMNS) == rows[0]
    assert ["req-4", "req-2", "req-0"] == [row[2] for row in rows[1:]]


def test_cli_without_a_record_schema(
    database_url: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 2 == run(["records", "--database-url", with_search_path(database_url, schema)])
    assert "no record schema" in capsys.readouterr().err


def test_cli_database_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/db"
        assert 2 == run(["records", "--database-url", url, "--stats"])
    assert "cannot connect" in capsys.readouterr().err
