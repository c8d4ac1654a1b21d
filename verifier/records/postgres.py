"""Traceback records in PostgreSQL: the :class:`~verifier.records.RecordStore` of a fleet.

Same contract as :class:`~verifier.records.SqliteRecordStore` (:mod:`.model` explains it): newest
first by ``(ts, id)``, the same opaque cursor, half-open windows ``since <= ts < until``,
numbers compared exactly as stored, the same stats shape, CSV through the shared helpers.
Several service instances write to one database; ``verifier records --database-url`` reads it.

Driver: psycopg 3, synchronous. The store protocol is synchronous and runs in the record
writer's worker thread (``asyncio.to_thread``), so an async driver (asyncpg) would need a
second event loop in that thread; psycopg's ``cursor.copy()`` gives COPY for bulk inserts
(binary, typed rows); it ships type hints; and it is libpq, the reference client (URLs,
``~/.pgpass``, ``PG*`` variables and TLS options behave as in psql).

Schema and partitions: :mod:`.pgschema`.

Texts: PostgreSQL's ``text`` cannot hold NUL, and an origid is any JSON string its signer
chose, so NULs (and lone UTF-16 surrogates, which no UTF-8 text holds) are stored as U+FFFD
(:meth:`~verifier.records.model.Record.storable`). Otherwise one such record would fail its
batch on every retry and hold back every record behind it.

Retention: :meth:`PostgresRecordStore.prune` drops whole days older than ``before`` and
deletes the rows before it in the boundary day; the count it returns is exact (each dropped
partition is counted first). Dropping a partition takes an exclusive lock on the parent for
a moment, with ``lock_timeout`` (5 s) so that a long reader makes the pruning fail and
retry at the next interval instead of queueing every query behind it.

Connections: one write connection per store (autocommit off, a lock around it); a failed
call whose connection broke (the database went away) closes it, and the next call opens a
new one, so the writer's retry after an outage succeeds. Reads open a short-lived
connection each, as the SQLite store does: reads are rare (API queries, exports, the CLI),
so a pool (psycopg_pool) would be one more dependency and threads to manage for no
measured need. Unless the URL says otherwise, connections time out after 5 s
(``connect_timeout``) and use TCP keepalives, so a vanished server fails a call instead of
hanging the writer's thread.

Delivery is exactly once. A batch is one transaction, so it is written whole or not at all;
but when the connection breaks after the server committed it and before the acknowledgement
arrived, the client cannot tell which. The store then keeps the batch's ids, and when the
writer retries the same batch (the same sequence object), it reuses them and first looks up
the batch's first row: found, the batch was committed and nothing is written again; not
found, the rows go in with those ids. A retry that races a commit still in flight on the
server meets the primary key (``ts, id``), fails and is retried again, and then finds it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import rollup
from .aggregate import Run, StoreQueries
from .model import (
    CERTIFICATE_COLUMNS,
    FIELDS,
    Record,
    RecordQuery,
    RecordRefused,
    Select,
    absent_columns,
    certificate_rows,
    iter_chunks,
    query_page,
    signers_of,
)
from .pgschema import (
    DAY,
    MIGRATIONS,
    ROLLUPS,
    check_version,
    create_partitions,
    day_of,
    lock_ddl,
    migrate,
    partition_day,
    partition_names,
    runner,
    schema_version,
)

__all__ = ["MIGRATIONS", "PostgresRecordStore"]

_T = TypeVar("_T")

_LOCK_TIMEOUT = "5s"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_CONNECT_DEFAULTS = {
    "application_name": "verifier-records",
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def _columns(absent: frozenset[str] = frozenset()) -> sql.Composed:
    """The record columns to select: NULL for those an older schema lacks."""
    return sql.SQL(", ").join(
        sql.SQL("NULL AS {}").format(sql.Identifier(name))
        if name in absent
        else sql.Identifier("r", name)
        for name in FIELDS
    )


_COLUMNS = _columns()
_COPY_RECORDS = sql.SQL("COPY records (id, {}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(sql.Identifier(name) for name in FIELDS)
)
_RECORD_TYPES = [
    "int8",  # id
    "float8",  # ts
    "text",  # request_id
    "text",  # endpoint
    "text",  # orig
    "text",  # dest
    "text",  # origid
    "text",  # attest
    "text",  # verstat
    "text",  # reason
    "int4",  # sip_code
    "text[]",  # spc
    "text",  # x5u
    "text",  # fingerprint
    "text",  # action
    "text",  # label
    "text",  # identity
    "text",  # signers (JSON)
]
_INSERT_CERTIFICATES = sql.SQL(
    "INSERT INTO certificates ({}) VALUES ({}) ON CONFLICT (fingerprint) DO NOTHING"
).format(
    sql.SQL(", ").join(sql.Identifier(name) for name in CERTIFICATE_COLUMNS),
    sql.SQL(", ").join(sql.Placeholder() for _ in CERTIFICATE_COLUMNS),
)


def _redacted(conninfo: str) -> str:
    """Where ``conninfo`` connects, without its password (for messages)."""
    params = conninfo_to_dict(conninfo)
    user = f"{params['user']}@" if params.get("user") else ""
    host = params.get("host") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"


def _select(
    q: RecordQuery,
    position: tuple[float, int] | None,
    limit: int,
    columns: sql.Composed = _COLUMNS,
) -> tuple[sql.Composed, list[Any]]:
    """The SQL of one page of ``q`` after ``position``, and its parameters.

    The SQLite store's query, except that the SPC join also matches ``ts`` (the primary
    key of ``records``, and partition pruning) and that a query by SPC alone takes its
    page from ``record_spc`` first: the planner cannot estimate the join's size and would
    otherwise sort every match of the window.
    """
    args: list[Any] = []
    where: list[sql.Composable] = []
    if q.spc is not None:
        ts, row_id = sql.SQL("s.ts"), sql.SQL("s.record_id")  # the primary key's order
        where.append(sql.SQL("s.spc = %s"))
        args.append(q.spc)
    else:
        ts, row_id = sql.SQL("r.ts"), sql.SQL("r.id")
    if q.since is not None:
        where.append(sql.SQL("{} >= %s").format(ts))
        args.append(q.since)
    if q.until is not None:
        where.append(sql.SQL("{} < %s").format(ts))
        args.append(q.until)
    if position is not None:
        where.append(sql.SQL("({}, {}) < (%s, %s)").format(ts, row_id))
        args.extend(position)
    order = sql.SQL("ORDER BY {} DESC, {} DESC LIMIT %s").format(ts, row_id)
    join = sql.SQL("JOIN records r ON r.ts = s.ts AND r.id = s.record_id")
    numbers = [(name, value) for name in ("origid", "orig", "dest") if (value := getattr(q, name))]
    if q.spc is not None and not numbers:
        page = sql.SQL("(SELECT s.ts, s.record_id FROM record_spc s WHERE {} {}) s").format(
            sql.SQL(" AND ").join(where), order
        )
        args.append(limit)
        source: sql.Composable = sql.SQL("{} {}").format(page, join)
        where = []
    elif q.spc is not None:
        source = sql.SQL("record_spc s {}").format(join)
    else:
        source = sql.SQL("records r")
    for name, value in numbers:
        where.append(sql.SQL("{} = %s").format(sql.Identifier("r", name)))
        args.append(value)
    condition = sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    args.append(limit)
    query = sql.SQL("SELECT r.id, {columns} FROM {source} {condition} {order}").format(
        columns=columns, source=source, condition=condition, order=order
    )
    return query, args


def _row(row: Sequence[Any]) -> Record:
    """A Record from ``SELECT r.id, <columns>``."""
    values = dict(zip(FIELDS, row[1:], strict=True))
    values["spc"] = tuple(values["spc"])
    values["signers"] = signers_of(values["signers"])
    return Record(**values)


class PostgresRecordStore(StoreQueries):
    """Records in PostgreSQL: one write connection, a short-lived connection per read.

    You get one from :meth:`PostgresRecordStore.open`. Thread-safe: writes (``insert_many``,
    ``prune``) take a lock around the write connection; reads use their own connections,
    so they run concurrently with writes, from any thread, process or instance.
    """

    _dialect = rollup.POSTGRES

    def __init__(self, conninfo: str, *, migrated: bool) -> None:
        self.conninfo = conninfo
        """The libpq connection string (may hold a password: do not log it)."""
        self._writer: psycopg.Connection[tuple[Any, ...]] | None = None
        self._migrated = migrated
        self._rollups = True
        """Whether the schema has its rollups (not before the service migrates it)."""
        self._select: Select = _select
        """The page query (with NULL for the record columns an older schema lacks)."""
        self._partitions: set[int] = set()
        self._unsure: tuple[Sequence[Record], list[int]] | None = None
        """The last batch whose write failed after it took its ids, and those ids."""
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls, url: str, *, schema: str | None = None, create: bool = True
    ) -> PostgresRecordStore:
        """The store in the database at ``url`` (a ``postgresql://`` URL or a libpq
        ``key=value`` string), its tables in ``schema`` (which must exist; default: the
        first schema of the connection's ``search_path``, normally ``public``).

        With ``create`` (the service), pending migrations are applied and the write
        connection opened. Without it (``verifier records``), the schema must be there
        already; nothing is written until a write method is called, so a read-only role
        can query.

        Raises:
            ValueError: ``schema`` is not a plain identifier or does not exist; the database
                cannot be reached (the message names it, without password); without
                ``create``, it holds no record schema; its schema is newer than this
                verifier's.
            psycopg.Error: a migration failed.
        """
        params = conninfo_to_dict(url)
        for key, value in _CONNECT_DEFAULTS.items():
            params.setdefault(key, value)
        if schema is not None:
            if not _SCHEMA_NAME.fullmatch(schema):
                raise ValueError(f"schema {schema!r} is not a plain lower-case SQL identifier")
            params["options"] = f"{params.get('options') or ''} -c search_path={schema}".strip()
        store = cls(make_conninfo("", **params), migrated=False)
        with contextlib.closing(store._reader()) as conn:
            if store._current_schema(conn) is None:
                missing = f"schema {schema!r}" if schema else "no schema of the search_path"
                raise ValueError(f"{_redacted(store.conninfo)}: {missing} does not exist")
            if not create:
                version = schema_version(conn)
                if version is None:
                    raise ValueError(
                        f"{_redacted(store.conninfo)}: no record schema"
                        " (the service creates it when it starts with this database)"
                    )
                check_version(version)
                store._migrated = version == len(MIGRATIONS)
                store._rollups = version >= ROLLUPS
                if absent := absent_columns(version):  # read before the service upgrades it
                    store._select = functools.partial(_select, columns=_columns(absent))
                return store
        with store._lock:
            store._write_connection()
        return store

    @staticmethod
    def _current_schema(conn: psycopg.Connection[tuple[Any, ...]]) -> str | None:
        row = conn.execute("SELECT current_schema()").fetchone()
        return None if row is None else row[0]

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.conninfo, autocommit=autocommit)

    def _reader(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A new autocommit connection for one read.

        Raises:
            ValueError: the database cannot be reached.
        """
        try:
            return self._connect(autocommit=True)
        except psycopg.OperationalError as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"{_redacted(self.conninfo)}: cannot connect: {message}") from None

    def _write_connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The write connection, (re)opened and the schema migrated as needed; the caller
        holds the lock."""
        if self._closed:
            raise RuntimeError("the record store is closed")
        if self._writer is not None and (self._writer.closed or self._writer.broken):
            self._discard()
        if self._writer is None:
            conn = self._connect(autocommit=False)
            try:
                if not self._migrated:
                    migrate(conn)
                    self._migrated = self._rollups = True
            except BaseException:
                conn.close()
                raise
            self._writer = conn
        return self._writer

    def _discard(self) -> None:
        """Forget the write connection (after a failure that may have broken it)."""
        if self._writer is not None:
            with contextlib.suppress(psycopg.Error):
                self._writer.close()
            self._writer = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """The write connection under the lock; a connection error discards it, and any
        error forgets the partitions seen (one may have been dropped by another instance)."""
        with self._lock:
            conn = self._write_connection()
            try:
                yield conn
            except BaseException as exc:
                self._partitions.clear()
                if isinstance(exc, psycopg.OperationalError) or conn.broken:
                    self._discard()
                elif not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                raise

    # -- writes ----------------------------------------------------------------------------

    def insert_many(self, records: Sequence[Record]) -> None:
        """Write ``records`` in one transaction (all or none), with COPY.

        Called again with the same ``records`` object after a failure, it writes them only
        if the failed call did not commit them (the module's "exactly once").

        Raises:
            psycopg.Error: the write failed (the database went away...); nothing of
                ``records`` was written, unless the commit's acknowledgement was lost.
            RecordRefused: a record's ts is not finite or outside the years 1 to 9999.
            RuntimeError: the store is closed.
        """
        if not records:
            return
        days = {day_of(r.ts) for r in records}
        days.add(max(days) + 1)
        with self._lock:
            unsure, self._unsure = self._unsure, None
        # The ids of this very batch when its last try's commit is unknown (never empty).
        ids = list(unsure[1]) if unsure is not None and unsure[0] is records else []
        retry = bool(ids)
        try:
            self._insert(records, days, ids, retry=retry)
        except BaseException:
            if ids:  # taken: the transaction may have committed
                with self._lock:
                    self._unsure = (records, ids)
            raise

    def _insert(
        self, records: Sequence[Record], days: set[int], ids: list[int], *, retry: bool
    ) -> None:
        """:meth:`insert_many`'s transaction. ``ids`` holds the ids of a retried batch whose
        commit is unknown: its first row is looked up first, and if it is there nothing is
        written. Otherwise ``ids`` is empty and gets the batch's new ids (for the caller to
        keep should this write fail)."""
        records = [r.storable(nul=False) for r in records]
        with self._writing() as conn:
            missing = days - self._partitions
            if missing:
                create_partitions(conn, missing)
                self._partitions |= missing
            with conn.transaction(), conn.cursor() as cur:
                if retry:
                    cur.execute(
                        "SELECT 1 FROM records WHERE ts = %s AND id = %s", (records[0].ts, ids[0])
                    )
                    if cur.fetchone() is not None:
                        return  # committed before: its acknowledgement was lost
                else:
                    cur.execute(
                        "SELECT nextval('records_id_seq') FROM generate_series(1, %s)",
                        (len(records),),
                    )
                    ids.extend(sorted(row[0] for row in cur.fetchall()))
                with cur.copy(_COPY_RECORDS) as copy:
                    copy.set_types(_RECORD_TYPES)
                    for row_id, r in zip(ids, records, strict=True):
                        copy.write_row(r.row(row_id, list(r.spc)))
                spc_rows = [
                    (spc, r.ts, row_id)
                    for row_id, r in zip(ids, records, strict=True)
                    for spc in dict.fromkeys(r.spc)  # a repeated SPC is indexed once
                ]
                if spc_rows:
                    with cur.copy(
                        "COPY record_spc (spc, ts, record_id) FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(["text", "float8", "int8"])
                        for spc_row in spc_rows:
                            copy.write_row(spc_row)
                certificates = certificate_rows(records)
                if certificates:  # a fingerprint's first chain stays
                    cur.executemany(_INSERT_CERTIFICATES, certificates)
                rollup.write(
                    records,
                    rollup.POSTGRES,
                    lambda text, args: cur.execute(text.replace("?", "%s").encode(), args),
                )

    def prune(self, before: float) -> int:
        """Delete the records older than ``before`` (epoch seconds); return how many.

        Drops the day partitions that end at or before ``before`` (counting their rows
        first), then deletes the older rows of the day that ``before`` falls in.

        Raises:
            psycopg.Error: the pruning failed, or waited more than 5 s for a lock (what was
                dropped before stays dropped).
            ValueError: ``before`` is not finite.
            RuntimeError: the store is closed.
        """
        if not math.isfinite(before):
            raise ValueError("before must be a finite number of epoch seconds")
        total = 0
        with self._writing() as conn:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_LOCK_TIMEOUT))
                )
                lock_ddl(conn)
                children = conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'records'::regclass"
                ).fetchall()
                dropped: set[int] = set()
                for (name,) in children:
                    day = partition_day(name)
                    if day is None or (day + 1) * DAY > before:
                        continue
                    records_part, spc_part = partition_names(day)
                    row = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(records_part))
                    ).fetchone()
                    total += 0 if row is None else row[0]
                    conn.execute(
                        sql.SQL("DROP TABLE IF EXISTS {}, {}").format(
                            sql.Identifier(records_part), sql.Identifier(spc_part)
                        )
                    )
                    dropped.add(day)
                if dropped:  # their rollups go in the same transaction
                    rollup.cut(rollup.POSTGRES, runner(conn), (max(dropped) + 1) * DAY)
            self._partitions -= dropped
            with conn.transaction():
                total += conn.execute("DELETE FROM records WHERE ts < %s", (before,)).rowcount
                conn.execute("DELETE FROM record_spc WHERE ts < %s", (before,))
                # A recorded chain was valid when its record was made: one expired before
                # ``before`` belongs to pruned records only.
                conn.execute("DELETE FROM certificates WHERE not_after < %s", (before,))
                rollup.cut(rollup.POSTGRES, runner(conn), before)
        return total

    @staticmethod
    def rejects(exc: Exception) -> bool:
        """A value PostgreSQL refuses (SQLSTATE class 22, data exception), a ts outside
        the partitions' years, an integer past its column, text with no UTF-8 form: the
        content's fault. A unique violation is not: it is the retry of a batch whose
        commit is still in flight."""
        return isinstance(
            exc, psycopg.errors.DataError | RecordRefused | OverflowError | UnicodeError
        )

    def close(self) -> None:
        """Close the write connection. Idempotent."""
        self._closed = True
        with self._lock:
            self._discard()

    # -- reads -----------------------------------------------------------------------------

    def query(self, q: RecordQuery) -> tuple[list[Record], str | None]:
        """One page of records matching ``q``, newest first, and the next page's cursor
        (None on the last page).

        Raises:
            ValueError: the database cannot be reached; psycopg.Error: a read failed.
        """
        return query_page(q, self._select, self._reader, _row)

    def iter_query(self, q: RecordQuery, chunk: int = 1000) -> Iterator[list[Record]]:
        """Every record matching ``q`` (its ``limit`` is ignored; a cursor is a start),
        newest first, in lists of at most ``chunk``. Each chunk is read by its own
        connection: nothing is held open between two ``next()`` calls.

        Raises:
            ValueError: ``chunk`` < 1; or the database cannot be reached (also
                psycopg.Error).
        """
        return iter_chunks(q, chunk, self._select, self._reader, _row)

    def _read(self, query: Callable[[Run], _T]) -> _T:
        """``query`` on one read connection, in one snapshot."""
        with contextlib.closing(self._reader()) as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return query(runner(conn))

    def chains(self, fingerprints: Iterable[str]) -> dict[str, str]:
        """The recorded chain PEM of each of ``fingerprints`` that the store holds.

        Raises:
            ValueError: the database cannot be reached (also psycopg.Error).
        """
        wanted = list(dict.fromkeys(fingerprints))
        if not wanted:
            return {}
        with contextlib.closing(self._reader()) as conn:
            rows = conn.execute(
                "SELECT fingerprint, chain FROM certificates WHERE fingerprint = ANY(%s)",
                (wanted,),
            ).fetchall()
        return dict(rows)
