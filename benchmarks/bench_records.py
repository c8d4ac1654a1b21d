"""Record write throughput: SQLite beside PostgreSQL, through RecordWriter, in one run.

Each run submits N distinct records to a RecordWriter (batches of B, the service's queue
bound and back-pressure) and times from the first submit until ``close()`` has written the
last one: records/s as the service would see them. SQLite writes in a temporary directory
(WAL, synchronous FULL); PostgreSQL in a temporary schema, dropped afterwards (COPY, one
transaction per batch, day partitions). The median of the runs is reported.

    .venv/bin/python benchmarks/bench_records.py [--n 50000] [--batch 500] [--runs 3]
        [--database-url URL] [--json]

With ``--queries``, instead: the console's queries over a store of ``--query-records``
records (default 1,000,000) spread evenly over the last ``--span-days`` days (default: 1,
the densest case, every record in the day window; then 30), loaded with ``insert_many`` in
lists of 10,000 (records/s printed, rollups included). Each query is run once to warm up,
then ``--runs`` times (at least 7): p50 and max. The overview of the day read from the
records alone (the rollups' reference) is timed too (target < 200 ms):

    .venv/bin/python benchmarks/bench_records.py --queries [--query-records 1000000]
        [--span-days 1 30] [--runs 7] [--database-url URL] [--json]

Both modes print ``openssl speed -seconds 3 ecdsap256`` verify/s measured in the same run
(before and after) as the machine's baseline. Everything runs in this one process,
unpinned, with the PostgreSQL server on the same machine.

With ``--identity``, each record carries an Identity header as the service keeps it (a real
SHAKEN one from the test PKI, the same for every record), and ``--queries`` also prints the
stores' bytes per record (tables and indexes, the SQLite file with its WAL).

Without ``--database-url`` or VERIFIER_TEST_DATABASE_URL the PostgreSQL part is skipped
(said on stderr). Both stores run on this machine: the figures compare the two backends'
write paths, not a networked database.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import psycopg
from bench_core import openssl_verify_per_s
from psycopg import sql

from verifier.records import (
    Record,
    RecordQuery,
    RecordSettings,
    RecordStore,
    RecordWriter,
    SqliteRecordStore,
)
from verifier.records.aggregate import console_summary
from verifier.records.postgres import PostgresRecordStore
from verifier.testing.stores import from_records

T0 = 1_800_000_000.0


def identity_header() -> str:
    """A SHAKEN Identity header value of the usual size, signed by a test PKI signer."""
    from verifier.testing import TestPKI

    signer = TestPKI.create(x5u="https://cr.example.com/sp.pem").signer
    return signer.identity(iat=int(T0), origid=str(uuid.UUID(int=0)))


def make_records(n: int, identity: str | None = None) -> list[Record]:
    """N distinct records over about an hour, a few SPCs, one in ten failed."""
    return [
        Record(
            ts=T0 + i * 0.07,
            request_id=f"bench-{i}",
            endpoint="native",
            orig=f"1215555{i % 10_000:04d}",
            dest=f"1310555{(i * 7) % 10_000:04d}",
            origid=str(uuid.UUID(int=i)),
            attest="A" if i % 10 else "C",
            verstat="TN-Validation-Passed" if i % 10 else "TN-Validation-Failed",
            reason=None if i % 10 else "invalid_signature",
            sip_code=None if i % 10 else 438,
            spc=(f"{1000 + i % 50}",),
            x5u="https://cr.example.com/sp.pem",
            fingerprint="AB:CD:EF:01:23:45:67:89",
            action="accept" if i % 10 else "reject",
            label=None,
            identity=identity,
        )
        for i in range(n)
    ]


async def through_writer(store: RecordStore, records: list[Record], batch: int) -> float:
    """Records/s from the first submit until the writer has written the last record."""
    writer = RecordWriter(store, RecordSettings(batch_size=batch))
    await writer.start()
    started = time.perf_counter()
    for record in records:
        await writer.submit(record)
    await writer.close()
    elapsed = time.perf_counter() - started
    if (writer.written, writer.dropped) != (len(records), 0):
        raise RuntimeError(f"wrote {writer.written}, dropped {writer.dropped}")
    return len(records) / elapsed


def median_rate(
    open_store: Callable[[], RecordStore], records: list[Record], batch: int, runs: int
) -> float:
    rates = []
    for _ in range(runs):
        store = open_store()
        try:
            rates.append(asyncio.run(through_writer(store, records, batch)))
        finally:
            store.close()
    return statistics.median(rates)


def sqlite_rate(records: list[Record], batch: int, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        count = iter(range(runs))
        return median_rate(
            lambda: SqliteRecordStore.open(f"{tmp}/run{next(count)}"), records, batch, runs
        )


def postgres_rate(url: str, records: list[Record], batch: int, runs: int) -> float:
    schemas: list[str] = []

    def fresh() -> RecordStore:
        name = f"verifier_bench_{uuid.uuid4().hex}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        schemas.append(name)
        return PostgresRecordStore.open(url, schema=name)

    try:
        return median_rate(fresh, records, batch, runs)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for name in schemas:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def spread_records(
    n: int, now: float, span: float, identity: str | None = None
) -> Iterator[list[Record]]:
    """N records over ``span`` seconds up to ``now``, in lists of 10,000: 60 SPCs, the
    attestation mix and a failure in ten of :func:`make_records`."""
    template = make_records(10_000, identity)
    step = span / n
    for start in range(0, n, 10_000):
        yield [
            dataclasses.replace(
                template[i - start], ts=now - span + i * step, request_id=f"bench-{i}"
            )
            for i in range(start, min(n, start + 10_000))
        ]


def timed_ms(call: Callable[[], object], runs: int) -> dict[str, float]:
    """p50 and max of ``runs`` calls, in ms (the first call warms the caches, untimed)."""
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": round(statistics.median(times), 1), "max": round(max(times), 1)}


def store_bytes(store: RecordStore) -> int:
    """The store's size on disk: the SQLite file and its WAL; PostgreSQL's record tables,
    their partitions and indexes (the certificate table is empty here)."""
    if isinstance(store, SqliteRecordStore):
        wal = store.path.with_name(store.path.name + "-wal")
        return store.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert isinstance(store, PostgresRecordStore)
    with psycopg.connect(store.conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i"
            " WHERE i.inhparent IN ('records'::regclass, 'record_spc'::regclass)"
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def query_timings(
    store: RecordStore, n: int, span: float, runs: int, identity: str | None = None
) -> dict[str, Any]:
    """Fill ``store`` with ``n`` records over ``span`` seconds up to now (insert_many in
    lists of 10,000, rollups included), then time the console's queries as it asks them:
    windows ending now, buckets of a 60th (whole minutes from an hour up)."""
    now = time.time()
    started = time.perf_counter()
    for chunk in spread_records(n, now, span, identity):
        store.insert_many(chunk)
    load = time.perf_counter() - started
    out: dict[str, Any] = {
        "load_records_per_s": round(n / load),
        "bytes_per_record": round(store_bytes(store) / n),
    }
    hour, day = (now - 3600, now), (now - 86400, now)
    one = spread_records(n, now, span).__next__()[5000]  # a record to trace back
    out["records_in_hour"] = store.console(*hour, 60.0)["total"]
    out["records_in_day"] = store.console(*day, 1440.0)["total"]
    queries: dict[str, Callable[[], object]] = {
        "overview, last hour": partial(store.console, *hour, 60.0),
        "overview, last day": partial(store.console, *day, 1440.0),
        "provider page (one SPC), last day": partial(store.console, *day, 1440.0, "1007"),
        "providers, last day": partial(store.providers, *day),
        "policy matches (providers), last hour": partial(store.providers, *hour),
        "stats, last day": partial(store.stats, *day),
        "traceback by origid, last day": partial(
            store.query, RecordQuery(origid=one.origid, since=day[0], until=day[1])
        ),
        "traceback by calling number, last day (first page)": partial(
            store.query, RecordQuery(orig=one.orig, since=day[0], until=day[1])
        ),
    }
    out["ms"] = {name: timed_ms(call, runs) for name, call in queries.items()}
    with from_records(store) as (run, dialect):
        out["ms"]["overview, last day, from the records (reference)"] = timed_ms(
            partial(console_summary, run, dialect, *day, 1440.0, rollups=False), min(runs, 3)
        )
    return out


def queries(args: argparse.Namespace) -> dict[str, Any]:
    identity = identity_header() if args.identity else None
    result: dict[str, Any] = {
        "records": args.query_records,
        "identity_bytes": len(identity) if identity else 0,
        "runs": args.runs,
        "openssl_verify_per_s (baseline, before)": round(openssl_verify_per_s(3), 1),
    }
    for days in args.span_days:
        span = days * 86400
        key = f"over {days:g} day(s)"
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteRecordStore.open(tmp)
            try:
                result[f"sqlite, {key}"] = query_timings(
                    store, args.query_records, span, args.runs, identity
                )
            finally:
                store.close()
        if args.database_url:
            name = f"verifier_bench_{uuid.uuid4().hex}"
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
            try:
                pg = PostgresRecordStore.open(args.database_url, schema=name)
                try:
                    result[f"postgres, {key}"] = query_timings(
                        pg, args.query_records, span, args.runs, identity
                    )
                finally:
                    pg.close()
            finally:
                with psycopg.connect(args.database_url, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    result["openssl_verify_per_s (baseline, after)"] = round(openssl_verify_per_s(3), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="records per run")
    parser.add_argument("--batch", type=int, default=500, help="records per transaction")
    parser.add_argument("--runs", type=int, default=3, help="runs per store (median)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("VERIFIER_TEST_DATABASE_URL"),
        help="PostgreSQL to write to (default: $VERIFIER_TEST_DATABASE_URL)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--queries", action="store_true", help="time the console's queries")
    parser.add_argument("--query-records", type=int, default=1_000_000)
    parser.add_argument("--span-days", type=float, nargs="+", default=[1.0, 30.0])
    parser.add_argument(
        "--identity", action="store_true", help="records carry an Identity header, as kept"
    )
    args = parser.parse_args()
    if args.queries:
        args.runs = max(args.runs, 7)
        print(json.dumps(queries(args), indent=None if args.json else 2))
        return
    records = make_records(args.n, identity_header() if args.identity else None)
    openssl = openssl_verify_per_s(3)
    result: dict[str, Any] = {
        "openssl_verify_per_s (baseline)": round(openssl, 1),
        "records": args.n,
        "batch": args.batch,
        "runs": args.runs,
        "sqlite_records_per_s": round(sqlite_rate(records, args.batch, args.runs)),
        "postgres_records_per_s": None,
    }
    if args.database_url:
        rate = postgres_rate(args.database_url, records, args.batch, args.runs)
        result["postgres_records_per_s"] = round(rate)
    else:
        print(
            "PostgreSQL skipped: give --database-url URL or set VERIFIER_TEST_DATABASE_URL"
            " (e.g. postgresql://postgres@127.0.0.1:5432/test)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.n} records, batches of {args.batch}, median of {args.runs} runs")
    print(f"openssl speed ecdsap256 (baseline): {openssl:9.1f} verify/s")
    print(f"SQLite     records/s through RecordWriter: {result['sqlite_records_per_s']:>9,}")
    if result["postgres_records_per_s"] is not None:
        pg = result["postgres_records_per_s"]
        ratio = pg / result["sqlite_records_per_s"]
        print(f"PostgreSQL records/s through RecordWriter: {pg:>9,}  (x{ratio:.2f} SQLite)")


if __name__ == "__main__":
    main()
