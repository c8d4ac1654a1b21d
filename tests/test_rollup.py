"""verifier.records.rollup: the per-minute rollups answer exactly as the records do.

Every backend of conftest's ``record_store`` (SQLite from this process, SQLite through the
child, PostgreSQL) gets seeded random records, records on and just below minute boundaries
among them, in batches of random sizes. Its answers (which read whole minutes from the
rollups) are compared with the same queries read from the records alone
(``rollups=False``, on a connection of the test's own), for random windows, aligned or
not, shorter than a minute or unbounded; then again after retention cuts a minute, and
after the migration that adds the rollups counts them from an existing database.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import contextlib
import math
import random
import sqlite3
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from verifier.records import Record, RecordStore, SqliteRecordStore
from verifier.records.aggregate import MAX_BUCKETS, console_summary, providers, stats
from verifier.records.postgres import PostgresRecordStore
from verifier.records.rollup import (
    TABLES,
    decode,
    group,
    minute_of,
    whole_minutes,
)
from verifier.records.sqlite import SCHEMA_VERSION
from verifier.testing.stores import from_records

if TYPE_CHECKING:
    from conftest import RecordKit

    Kit = type[RecordKit]

T0 = 1_800_000_000.0 + 17.25  # not on a minute
SPAN = 3 * 3600.0


def random_records(rng: random.Random, n: int, prefix: str) -> list[Record]:
    """``n`` records over :data:`SPAN` seconds: a tenth on a minute boundary or the double
    just below one; every field NULL or not, a few SPCs (some repeated in a record), x5u
    fetch failures (436) from a few URLs."""
    out = []
    for i in range(n):
        ts = T0 + rng.uniform(0, SPAN)
        if rng.random() < 0.1:
            ts = 60.0 * minute_of(ts)
            if rng.random() < 0.5:
                ts = math.nextafter(ts, -math.inf)
        failed = rng.random() < 0.4
        sip_code = rng.choice([436, 436, 437, 438, 403]) if failed else None
        out.append(
            Record(
                ts=ts,
                request_id=f"{prefix}-{i}",
                endpoint="native",
                orig="12155551000",
                dest="12155552000",
                origid=f"{prefix}-origid-{i}",
                attest=rng.choice(["A", "B", "C", None]),
                verstat=rng.choice(["TN-Validation-Failed", "No-TN-Validation"])
                if failed
                else "TN-Validation-Passed",
                reason=f"reason_{sip_code}_{rng.randrange(2)}" if failed else None,
                sip_code=sip_code,
                spc=tuple(rng.choice(["1000", "2000", "3000", "4A4A", "Z"]) for _ in range(3))[
                    : rng.randrange(4)
                ],
                x5u=rng.choice([None, "https://a.example/x.pem", "https://b.example/y.pem", ""]),
                fingerprint=rng.choice([None, "AB:CD", "AB:CE", "00:11"]),
                action=rng.choice(["accept", "block", "label", None]),
                label=rng.choice([None, "spam", ""]),
            )
        )
    return out


def fill(store: RecordStore, records: list[Record], rng: random.Random) -> None:
    start = 0
    while start < len(records):
        size = rng.randrange(1, 60)
        store.insert_many(records[start : start + size])
        start += size


def windows(rng: random.Random) -> list[tuple[float, float]]:
    """Windows over the records: random, on minutes, within one minute, empty, the whole."""
    out = [
        (T0 - 1, T0 + SPAN + 1),
        (T0, T0),
        (60.0 * minute_of(T0 + 600), 60.0 * minute_of(T0 + 4000)),
    ]
    for _ in range(6):
        a, b = sorted(T0 + rng.uniform(-100, SPAN + 100) for _ in range(2))
        out.append((a, b))
    m = 60.0 * minute_of(T0 + rng.uniform(0, SPAN))
    out += [(m + 10.5, m + 50.25), (m - 5, m + 5), (m, m + 60), (math.nextafter(m, 0), m + 120)]
    return out


def assert_same_answers(store: RecordStore, rng: random.Random) -> int:
    """Compare every query with its answer from the records; return how many compared."""
    compared = 0
    with from_records(store) as (run, d):
        for since, until in windows(rng):
            for bucket in (60.0, 120.0, 300.0, 45.0):
                if (until - since) / bucket > MAX_BUCKETS:
                    continue
                for spc in (None, "Z"):
                    expected = console_summary(run, d, since, until, bucket, spc, rollups=False)
                    assert expected == store.console(since, until, bucket, spc)
                    compared += 1
            assert providers(run, since, until, rollups=False) == store.providers(since, until)
            assert stats(run, since, until, rollups=False) == store.stats(since, until)
            assert stats(run, since, None, rollups=False) == store.stats(since, None)
            assert stats(run, None, until, rollups=False) == store.stats(None, until)
            compared += 4
        whole = stats(run, None, None, rollups=False)
        assert whole == store.stats(None, None)
    return compared


def test_rollups_answer_as_the_records_do(record_store: RecordStore) -> None:
    seed = 1
    rng = random.Random(seed)  # noqa: S311 - seeded test data
    records = random_records(rng, 1000, f"s{seed}")
    fill(record_store, records, rng)
    assert len(records) == record_store.stats(None, None)["total"]
    assert assert_same_answers(record_store, rng) > 100
    # retention cuts a minute in the middle: what is left of it is recounted
    before = T0 + SPAN / 3 + 7.5
    assert sum(r.ts < before for r in records) == record_store.prune(before)
    assert sum(r.ts >= before for r in records) == record_store.stats(None, None)["total"]
    assert_same_answers(record_store, rng)
    # more records into minutes that already have rollups
    fill(record_store, random_records(rng, 300, f"t{seed}"), rng)
    assert_same_answers(record_store, rng)


def test_the_console_series_counts_each_record_in_its_own_minute(
    record_store: RecordStore,
) -> None:
    """A record on a minute boundary, and the double just below it, land in the two
    minutes they belong to (60 m <= ts < 60 (m + 1)), however ts / 60 rounds."""
    m = 60.0 * minute_of(T0)
    below = math.nextafter(m, -math.inf)
    rng = random.Random(0)  # noqa: S311 - seeded test data
    on, under = (
        replace(r, ts=t) for r, t in zip(random_records(rng, 2, "b"), (m, below), strict=True)
    )
    record_store.insert_many([on, under])
    series = record_store.console(m - 120, m + 120, 60.0)["series"]
    assert [m - 60, m] == [s["t"] for s in series]
    assert [1, 1] == [s["count"] for s in series]


def test_minute_of_is_exact_where_division_rounds() -> None:
    for m in (-1, 0, 1, 30_000_000, 29_999_999, 4_000_000_000):
        start = 60.0 * m
        assert m == minute_of(start)
        assert m - 1 == minute_of(math.nextafter(start, -math.inf))
        assert m == minute_of(math.nextafter(start + 60, -math.inf))


def test_whole_minutes_of_a_window() -> None:
    assert (2, 3) == whole_minutes(60.5, 180.0)
    assert (1, 3) == whole_minutes(60.0, 180.5)
    lo, hi = whole_minutes(61.0, 119.0)
    assert lo >= hi  # no whole minute: all read from the records


def test_group_counts_a_batch_once_per_key_and_a_repeated_spc_once(kit: Kit) -> None:
    records = [
        kit.rec(0, spc=("1234", "1234")),
        kit.rec(1, attest=None, reason="x5u_fetch", sip_code=436, action="block"),
        kit.rec(2),
    ]
    minutes, spc_minutes, provider_rows, hour_rows = group(records)
    minute = minute_of(kit.T0)
    passed = ("TN-Validation-Passed", "A", None, None, "accept", None, None)
    failed = (
        "TN-Validation-Passed",
        None,
        "x5u_fetch",
        436,
        "block",
        None,
        "https://cr.example.com/sp.pem",  # kept for a 436 only
    )
    assert {(minute, *passed): 2, (minute, *failed): 1} == {
        (row[0], *decode(row[-2], row[1:-2])): row[-1] for row in minutes
    }
    assert {("1234", minute, *passed): 2, ("1234", minute, *failed): 1} == {
        (row[0], row[1], *decode(row[-2], row[2:-2])): row[-1] for row in spc_minutes
    }
    assert [(minute, "1234", 3, 2, 0, 0, 1, 1, kit.T0, kit.T0 + 2)] == provider_rows
    assert [(minute // 60, *provider_rows[0][1:])] == hour_rows


def test_an_existing_database_gets_its_rollups_counted(tmp_path: Any, kit: Kit) -> None:
    """A database of before the rollups (schema 2): read from the records until the
    service opens it, which adds the rollups and counts them from the records."""
    rng = random.Random(5)  # noqa: S311 - seeded test data
    data = tmp_path / "data"
    store = SqliteRecordStore.open(data)
    fill(store, random_records(rng, 800, "old"), rng)
    store.close()
    with contextlib.closing(sqlite3.connect(data / "records.sqlite3")) as conn:
        for table in (*TABLES, "provider_hours"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE records DROP COLUMN signers")  # schema 4's
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    reader = SqliteRecordStore.open(data, create=False)
    assert_same_answers(reader, rng)  # from the records: there are no rollups to read
    reader.close()
    store = SqliteRecordStore.open(data)
    try:
        with contextlib.closing(sqlite3.connect(data / "records.sqlite3")) as conn:
            assert SCHEMA_VERSION == conn.execute("PRAGMA user_version").fetchone()[0]
            assert conn.execute("SELECT count(*) FROM provider_minutes").fetchone()[0] > 0
        assert_same_answers(store, rng)
    finally:
        store.close()


def test_an_existing_postgresql_schema_gets_its_rollups_counted(
    database_url: str, schema: str
) -> None:
    rng = random.Random(6)  # noqa: S311 - seeded test data
    store = PostgresRecordStore.open(database_url, schema=schema)
    fill(store, random_records(rng, 800, "old"), rng)
    store.close()
    with psycopg.connect(store.conninfo, autocommit=True) as conn:
        for table in (*TABLES, "provider_hours"):
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        conn.execute("ALTER TABLE records DROP COLUMN signers")  # migration 4's
        conn.execute("DELETE FROM verifier_schema_migrations WHERE version >= 3")
    reader = PostgresRecordStore.open(database_url, schema=schema, create=False)
    assert_same_answers(reader, rng)
    store = PostgresRecordStore.open(database_url, schema=schema)
    try:
        with psycopg.connect(store.conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM provider_minutes").fetchone()
            assert row is not None and row[0] > 0
        assert_same_answers(store, rng)
    finally:
        store.close()
