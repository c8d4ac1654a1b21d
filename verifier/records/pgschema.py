"""The PostgreSQL record schema: its migrations and its day partitions.

Schema, versioned: ``verifier_schema_migrations (version, applied_at)`` and the ordered
:data:`MIGRATIONS`, applied when a store opens
(:meth:`~verifier.records.postgres.PostgresRecordStore.open`) in one transaction that holds
an advisory lock, so instances that start together apply each step once.

Tables, partitioned by range on ``ts`` into UTC days (``records_p20270115``,
``record_spc_p20270115``):

- ``ts`` is ``double precision`` epoch seconds, as in :class:`~verifier.records.model.Record`
  and in the cursor: a page boundary compares the stored value with the cursor's double
  exactly. ``timestamptz`` keeps microseconds, so a round trip could move a record across
  a cursor or a window bound and break "no gaps, no duplicates".
- ``id`` comes from the sequence ``records_id_seq``: unique across instances, no
  coordination. A batch takes its ids in one ``nextval`` round trip, then COPYs the rows
  and their SPC rows with those ids, in one transaction.
- SPCs: the ``record_spc (spc, ts, record_id)`` side table as in SQLite, partitioned the
  same way, rather than a ``text[]`` column with a GIN index: a GIN index answers "which
  rows contain X" but not in ``(ts, id)`` order, so a page by SPC would sort every match;
  the side table's primary key is that order (one index range), and the top-SPC statistics
  group it directly. ``records.spc`` (``text[]``) keeps the record's list as given.
- Partitions are created on demand before a batch that needs them (its days and the next
  one, so the day rollover finds its partition ready), idempotently (``CREATE TABLE IF NOT
  EXISTS ... PARTITION OF``) under the same advisory lock, in their own short transaction:
  creating a partition locks the parent table, which the COPY transaction should not hold.
  A store remembers the partitions it has seen; when an insert fails (another instance
  pruned a partition meanwhile), it forgets them and the writer's retry recreates them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from .model import RecordRefused
from .rollup import POSTGRES, refill

__all__ = [
    "DAY",
    "MIGRATIONS",
    "ROLLUPS",
    "check_version",
    "create_partitions",
    "day_of",
    "lock_ddl",
    "migrate",
    "partition_day",
    "partition_names",
    "runner",
    "schema_version",
]

MIGRATIONS: tuple[LiteralString, ...] = (
    """
    CREATE SEQUENCE records_id_seq AS bigint;
    CREATE TABLE records (
        id          bigint NOT NULL DEFAULT nextval('records_id_seq'),
        ts          double precision NOT NULL,
        request_id  text NOT NULL,
        endpoint    text NOT NULL,
        orig        text,
        dest        text,
        origid      text,
        attest      text,
        verstat     text NOT NULL,
        reason      text,
        sip_code    integer,
        spc         text[] NOT NULL,
        x5u         text,
        fingerprint text,
        action      text,
        label       text,
        PRIMARY KEY (ts, id)
    ) PARTITION BY RANGE (ts);
    ALTER SEQUENCE records_id_seq OWNED BY records.id;
    CREATE INDEX records_origid ON records (origid, ts, id);
    CREATE INDEX records_orig ON records (orig, ts, id);
    CREATE INDEX records_dest ON records (dest, ts, id);
    CREATE TABLE record_spc (
        spc         text NOT NULL,
        ts          double precision NOT NULL,
        record_id   bigint NOT NULL,
        PRIMARY KEY (spc, ts, record_id)
    ) PARTITION BY RANGE (ts);
    CREATE INDEX record_spc_ts ON record_spc (ts);
    """,
    """
    ALTER TABLE records ADD COLUMN identity text;
    CREATE TABLE certificates (
        fingerprint text PRIMARY KEY,
        first_seen  double precision NOT NULL,
        subject     text NOT NULL,
        issuer      text NOT NULL,
        not_after   double precision NOT NULL,
        chain       text NOT NULL
    );
    CREATE INDEX certificates_not_after ON certificates (not_after);
    """,
    """
    CREATE TABLE record_minutes (
        minute      bigint NOT NULL,
        verstat     text NOT NULL,
        attest      text NOT NULL,
        reason      text NOT NULL,
        sip_code    integer NOT NULL,
        action      text NOT NULL,
        label       text NOT NULL,
        x5u         text NOT NULL,
        nulls       integer NOT NULL,
        calls       bigint NOT NULL
    );
    CREATE UNIQUE INDEX record_minutes_key ON record_minutes
        (minute, verstat, attest, reason, sip_code, action, label, md5(x5u), nulls);
    CREATE TABLE record_spc_minutes (
        spc         text NOT NULL,
        minute      bigint NOT NULL,
        verstat     text NOT NULL,
        attest      text NOT NULL,
        reason      text NOT NULL,
        sip_code    integer NOT NULL,
        action      text NOT NULL,
        label       text NOT NULL,
        x5u         text NOT NULL,
        nulls       integer NOT NULL,
        calls       bigint NOT NULL
    );
    CREATE UNIQUE INDEX record_spc_minutes_key ON record_spc_minutes
        (spc, minute, verstat, attest, reason, sip_code, action, label, md5(x5u), nulls);
    CREATE TABLE provider_minutes (
        minute      bigint NOT NULL,
        spc         text NOT NULL,
        calls       bigint NOT NULL,
        attest_a    bigint NOT NULL,
        attest_b    bigint NOT NULL,
        attest_c    bigint NOT NULL,
        failures    bigint NOT NULL,
        blocked     bigint NOT NULL,
        first_ts    double precision NOT NULL,
        last_ts     double precision NOT NULL,
        PRIMARY KEY (minute, spc)
    );
    CREATE TABLE provider_hours (
        hour        bigint NOT NULL,
        spc         text NOT NULL,
        calls       bigint NOT NULL,
        attest_a    bigint NOT NULL,
        attest_b    bigint NOT NULL,
        attest_c    bigint NOT NULL,
        failures    bigint NOT NULL,
        blocked     bigint NOT NULL,
        first_ts    double precision NOT NULL,
        last_ts     double precision NOT NULL,
        PRIMARY KEY (hour, spc)
    );
    """,
    """
    ALTER TABLE records ADD COLUMN signers text;
    """,
)
"""Migration ``n`` (1-based) brings the schema from version ``n - 1`` to ``n``; append only.

Migration 2 adds the Identity column and the certificate table; migration 3 the
per-minute rollups (:mod:`.rollup`), not partitioned: they are small
beside the records, and retention deletes their old minutes with the days it drops;
migration 4 the ``signers`` column (x5u -> fingerprint of a record's other PASSporTs, as
JSON text: the writer COPYs it as it comes, and a ``text`` holds what ``jsonb`` refuses)."""
ROLLUPS = 3
"""The migration after which the rollups are counted from the records already there."""

DAY = 86400
"""Seconds in a partition (a UTC day)."""
_LOCK_CLASS = 0x76657269  # "veri": pg_advisory_xact_lock(class, hashtext(current_schema()))
_PARTITION = re.compile(r"records_p(\d{8})")
_FIRST_DAY = dt.date(1, 1, 2)  # datetime arithmetic stays in range around a day
_LAST_DAY = dt.date(9999, 12, 30)
_EPOCH = dt.date(1970, 1, 1)


def day_of(ts: float) -> int:
    """The UTC day number (days since 1970-01-01) of ``ts``.

    Raises:
        RecordRefused: ``ts`` is not finite or outside the years 1 to 9999.
    """
    if not math.isfinite(ts):
        raise RecordRefused(f"record ts {ts!r} is not finite")
    day = math.floor(ts / DAY)
    if not (_FIRST_DAY - _EPOCH).days <= day <= (_LAST_DAY - _EPOCH).days:
        raise RecordRefused(f"record ts {ts!r} is outside the years 1 to 9999")
    return day


def partition_names(day: int) -> tuple[str, str]:
    """The names of the ``records`` and ``record_spc`` partitions of ``day``."""
    date = _EPOCH + dt.timedelta(days=day)
    stamp = f"{date.year:04d}{date.month:02d}{date.day:02d}"
    return f"records_p{stamp}", f"record_spc_p{stamp}"


def partition_day(name: str) -> int | None:
    match = _PARTITION.fullmatch(name)
    if match is None:
        return None
    stamp = match[1]
    try:
        when = dt.date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:]))
    except ValueError:
        return None
    return (when - _EPOCH).days


def lock_ddl(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Serialise migrations and partition DDL between instances (until the transaction
    ends); one lock per schema."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_LOCK_CLASS,))


def schema_version(conn: psycopg.Connection[tuple[Any, ...]]) -> int | None:
    """The schema version, None when there is no migrations table."""
    row = conn.execute("SELECT to_regclass('verifier_schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    row = conn.execute(
        "SELECT coalesce(max(version), 0) FROM verifier_schema_migrations"
    ).fetchone()
    return 0 if row is None else int(row[0])


def check_version(version: int) -> None:
    """Raises ValueError when ``version`` is newer than :data:`MIGRATIONS` know."""
    if version > len(MIGRATIONS):
        raise ValueError(
            f"record schema version {version} is newer than this verifier's {len(MIGRATIONS)}"
        )


def migrate(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Apply the pending :data:`MIGRATIONS` in one transaction, under the DDL lock.

    Raises:
        ValueError: the schema is newer than this verifier's.
        psycopg.Error: a step failed (none is applied).
    """
    with conn.transaction():
        lock_ddl(conn)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS verifier_schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = schema_version(conn) or 0
        check_version(version)
        for target in range(version + 1, len(MIGRATIONS) + 1):
            conn.execute(MIGRATIONS[target - 1])
            if target == ROLLUPS and version:
                refill(POSTGRES, runner(conn), None, None)
            conn.execute("INSERT INTO verifier_schema_migrations (version) VALUES (%s)", (target,))


def runner(conn: psycopg.Connection[tuple[Any, ...]]) -> Callable[[str, Sequence[Any]], Any]:
    """The shared modules' SQL on ``conn``, its ``?`` parameters as psycopg's ``%s`` (fixed
    texts; passed as bytes, psycopg's type for a query built at run time): rows for a
    query, None for another statement."""

    def run(text: str, args: Sequence[Any]) -> Any:
        cur = conn.execute(text.replace("?", "%s").encode(), args)
        return cur.fetchall() if cur.description is not None else None

    return run


def create_partitions(conn: psycopg.Connection[tuple[Any, ...]], days: Iterable[int]) -> None:
    """The day partitions of both tables, in one transaction under the DDL lock."""
    with conn.transaction():
        lock_ddl(conn)
        for day in sorted(days):
            bounds = (sql.Literal(day * DAY), sql.Literal((day + 1) * DAY))
            for parent, name in zip(("records", "record_spc"), partition_names(day), strict=True):
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
                    ).format(sql.Identifier(name), sql.Identifier(parent), *bounds)
                )
