"""Traceback records: one row per verification, kept as evidence, queried by number or SPC.

Every verification the service answers becomes a :class:`Record` (full numbers: the
database is the evidence, the logs mask them). The service hands records to a
:class:`RecordWriter`, which writes them off the hot path, in batches, from one task; the
HTTP endpoints and ``verifier records`` read them back through a :class:`RecordStore`.

Storage: :class:`SqliteRecordStore`, SQLite in WAL mode in a data directory (created mode
0700, the database file mode 0600; SQLite gives its ``-wal``/``-shm`` files the same mode).
The schema is versioned with ``PRAGMA user_version``. With ``database_url`` set,
:func:`open_store` gives :class:`verifier.records.postgres.PostgresRecordStore` instead: the same
protocol and cursor format, for several instances sharing one database.

Ordering and pagination: newest first by ``(ts, id)``, ``id`` being the row id (it breaks
ties between records of the same instant and never changes). The opaque cursor is that pair
of the last row returned, so a page is one index range scan: no OFFSET, no duplicates or
gaps between pages while new records arrive (they sort before the first page).

SPCs: a separate ``record_spc (spc, ts, record_id)`` table, its primary key in that order,
besides the JSON list in ``records.spc`` that is returned. A record may carry several SPCs
(a certificate's TNAuthList may list more than one), so "one spc column plus a LIKE
fallback" would either miss SPCs or scan the table; with the side table a query by one SPC
is an index range in the same ``(ts, id)`` order as the others, and the top-SPC statistics
group that table directly.

Time windows are half-open: ``since <= ts < until`` (adjacent windows do not double count).

Failure model: the writer never loses a record it accepted while the store fails (disk
full, database locked): it keeps the failed batch and retries with backoff, while the
bounded queue fills and then pushes back on :meth:`RecordWriter.submit` (``overflow =
"wait"``, bounded by ``submit_timeout``) or drops (``overflow = "drop"``); every drop is
counted in :attr:`RecordWriter.dropped`. :meth:`RecordWriter.close` drains the queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import datetime as dt
import io
import json
import logging
import math
import os
import re
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any, Literal, Protocol

from ..core.errors import VerifierError

__all__ = [
    "CSV_COLUMNS",
    "DB_NAME",
    "MAX_LIMIT",
    "Record",
    "RecordQuery",
    "RecordRefused",
    "RecordSettings",
    "RecordStore",
    "RecordWriter",
    "SqliteRecordStore",
    "csv_header",
    "iter_chunks",
    "open_store",
    "query_page",
    "to_csv_rows",
]

log = logging.getLogger(__name__)

DB_NAME = "records.sqlite3"
"""The database file inside the data directory."""
MAX_LIMIT = 1000
SCHEMA_VERSION = 1
TOP_SPC = 20
_DAY = 86400.0
_PRUNE_CHUNK = 5000
_CURSOR = struct.Struct(">dq")


# -- records -----------------------------------------------------------------------------------


class RecordRefused(VerifierError, ValueError):
    """A record a store cannot hold as it is (a ts outside the store's range...)."""


@dataclass(slots=True, kw_only=True)
class Record:
    """One verification, as recorded. Plain data; ``to_dict()`` is JSON-ready.

    Not frozen, though nothing changes a record once made: one is made for every
    verification, and a frozen dataclass's ``__init__`` costs 1.7 us against 0.45.
    """

    ts: float
    """When it was verified, epoch seconds."""
    request_id: str
    endpoint: str
    """``atis``, ``native``, ``sip`` or ``batch``."""
    orig: str | None
    """The calling number, in full."""
    dest: str | None
    """The called number, in full."""
    origid: str | None
    attest: str | None
    verstat: str
    reason: str | None
    """The failure's slug (``cert_not_trusted``); None when it passed."""
    sip_code: int | None
    spc: tuple[str, ...]
    """The signer's SPC(s) from its certificate's TNAuthList."""
    x5u: str | None
    fingerprint: str | None
    """SHA-256 fingerprint of the signer's certificate."""
    action: str | None
    """The disposition's action (policy)."""
    label: str | None
    """The disposition's label (policy)."""

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _FIELDS}
        out["spc"] = list(self.spc)
        return out

    def storable(self, *, nul: bool = True) -> Record:
        """This record with what a store cannot hold replaced by U+FFFD: lone UTF-16
        surrogates (text with no UTF-8 form) and, with ``nul=False``, NUL characters
        (PostgreSQL's text cannot hold them). The record itself when nothing needs it.
        About 2 us a record: the SQLite store calls it only for a batch that its driver
        could not encode.

        The texts come from the call (an origid is any JSON string a signer chose); one
        that no store takes would otherwise fail its whole batch on every retry, and
        hold back every record behind it.
        """
        texts = [t for name in _TEXT_FIELDS if (t := getattr(self, name)) is not None]
        texts.extend(self.spc)
        if all(t.isascii() and (nul or "\x00" not in t) for t in texts):
            return self
        unstorable = _SURROGATE if nul else _SURROGATE_OR_NUL
        if not any(unstorable.search(t) for t in texts):
            return self

        def clean(text: str) -> str:
            return unstorable.sub("\ufffd", text)

        changes: dict[str, Any] = {
            name: clean(t) for name in _TEXT_FIELDS if (t := getattr(self, name)) is not None
        }
        return replace(self, spc=tuple(map(clean, self.spc)), **changes)

    def row(self, row_id: int, spc: object) -> tuple[object, ...]:
        """The record as a store's row: ``row_id``, then the ``_FIELDS`` in order, with
        ``spc`` in the store's own encoding (a JSON text, a text array)."""
        return (
            row_id,
            self.ts,
            self.request_id,
            self.endpoint,
            self.orig,
            self.dest,
            self.origid,
            self.attest,
            self.verstat,
            self.reason,
            self.sip_code,
            spc,
            self.x5u,
            self.fingerprint,
            self.action,
            self.label,
        )


_FIELDS = (
    "ts",
    "request_id",
    "endpoint",
    "orig",
    "dest",
    "origid",
    "attest",
    "verstat",
    "reason",
    "sip_code",
    "spc",
    "x5u",
    "fingerprint",
    "action",
    "label",
)
_TEXT_FIELDS = tuple(name for name in _FIELDS if name not in ("ts", "sip_code", "spc"))
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_OR_NUL = re.compile("[\x00\ud800-\udfff]")
CSV_COLUMNS: tuple[str, ...] = ("ts", "time", *_FIELDS[1:])
"""CSV header order: the record's fields, with ``time`` (RFC 3339, UTC) after ``ts``."""


def _encode_cursor(ts: float, row_id: int) -> str:
    return base64.urlsafe_b64encode(_CURSOR.pack(ts, row_id)).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> tuple[float, int]:
    """The ``(ts, id)`` position a cursor stands for.

    Raises:
        ValueError: not a cursor this module made.
    """
    if len(cursor) != 22:
        raise ValueError("cursor is not valid")
    try:
        raw = base64.b64decode(cursor + "==", altchars=b"-_", validate=True)
    except ValueError:  # binascii.Error is one
        raise ValueError("cursor is not valid") from None
    ts, row_id = _CURSOR.unpack(raw)
    if not math.isfinite(ts) or row_id < 0:
        raise ValueError("cursor is not valid")
    return ts, row_id


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordQuery:
    """Which records to return: every given filter must match (AND); newest first.

    Raises (constructor):
        ValueError: limit outside 1..1000, a time that is not finite, since > until, or a
            cursor that is not valid; the message names the parameter.
    """

    origid: str | None = None
    orig: str | None = None
    """The calling number, exactly as recorded."""
    dest: str | None = None
    """The called number, exactly as recorded."""
    spc: str | None = None
    since: float | None = None
    """Epoch seconds, inclusive."""
    until: float | None = None
    """Epoch seconds, exclusive."""
    limit: int = 100
    """Records in one page, 1 to 1000."""
    cursor: str | None = None
    """``next_cursor`` of the previous page."""

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise ValueError("limit must be an integer")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1 to {MAX_LIMIT}")
        _check_window(self.since, self.until)
        if self.cursor is not None:
            _decode_cursor(self.cursor)

    @property
    def position(self) -> tuple[float, int] | None:
        """The ``(ts, id)`` after which this page starts, from the cursor."""
        return None if self.cursor is None else _decode_cursor(self.cursor)


def _check_window(since: float | None, until: float | None) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of epoch seconds")
    if since is not None and until is not None and since > until:
        raise ValueError("since must not be after until")


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordSettings:
    """The record store and its writer. Times are seconds.

    Raises (constructor):
        ValueError: a value out of range (naming the field).
    """

    enabled: bool = True
    """Record every verification (traceback records)."""
    data_dir: str = "data"
    """Directory of the record database (created mode 0700; the file is mode 0600)."""
    database_url: str | None = None
    """PostgreSQL instead of SQLite in ``data_dir``: ``postgresql://user@host:5432/db``
    (several instances may share it). Give a password through the environment
    (VERIFIER_RECORDS_DATABASE_URL, PGPASSWORD) or ``~/.pgpass``."""
    retention_days: float = 90.0
    """Records older than this many days are deleted by the periodic pruning."""
    queue_size: int = 10_000
    """Records accepted but not yet written, at most (then ``overflow`` applies)."""
    overflow: Literal["wait", "drop"] = "wait"
    """When the queue is full: "wait" (back-pressure on verification) or "drop" (counted)."""
    batch_size: int = 2000
    """Most records written in one transaction. Under load a batch is what arrived in
    ``flush_interval``: fewer, larger transactions cost the event loop less (measured
    with the batch endpoint, 11,000-12,900 verifications/s against 9,400-10,400 with
    batches of 500)."""
    flush_interval: float = 0.2
    """How long the writer waits for a batch to fill before writing what it has."""
    writer_process: bool = True
    """SQLite: write from a child process (``verifier.records.child``) rather than a thread
    of the service's process. A thread competes with the event loop for the GIL: in paired
    runs the batch endpoint gave 12,490-13,058 verifications/s with the child against
    11,116-11,405 with the thread, the ATIS endpoint about 4% more. (PostgreSQL is another
    process anyway.)"""
    writer_nice: int = 10
    """The writer process's niceness (0-19) above the service's: where they compete for a
    core, answering calls goes first and records wait in their bounded queue. Measured
    with the batch endpoint in 7 pairs against 0: 5 favoured 10, by 4% at the median (the
    ATIS endpoint the same). 0: the service's own priority."""
    prune_interval: float = 3600.0
    """Time between two prunings (the first runs when the writer starts)."""
    submit_timeout: float = 5.0
    """With "wait": longest a verification waits for queue space; then the record is
    dropped (counted), so a failing store cannot stall verification."""
    close_timeout: float = 10.0
    """At shutdown, how long a failing store is retried before the records still queued
    are given up (counted as dropped and logged)."""

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ValueError("data_dir must not be empty")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("database_url must be a postgresql:// URL")
        if self.overflow not in ("wait", "drop"):
            raise ValueError("overflow must be 'wait' or 'drop'")
        for name in ("queue_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("retention_days", "prune_interval", "submit_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("flush_interval", "close_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.writer_nice <= 19:
            raise ValueError("writer_nice must be 0 to 19")


# -- the store ---------------------------------------------------------------------------------


class RecordStore(Protocol):
    """Where records live. Methods are synchronous (call them from a worker thread).

    ``insert_many`` and ``prune`` may run in different threads: the store serialises its
    writes. ``query``, ``iter_query`` and ``stats`` may run concurrently with writes.
    """

    def insert_many(self, records: Sequence[Record]) -> None: ...

    def rejects(self, exc: Exception) -> bool:
        """Whether ``exc``, raised by ``insert_many``, says that the records themselves
        cannot be stored (a retry would fail the same way), not that the store is away."""
        ...

    def query(self, q: RecordQuery) -> tuple[list[Record], str | None]: ...

    def iter_query(self, q: RecordQuery, chunk: int = 1000) -> Iterator[list[Record]]: ...

    def stats(self, since: float | None, until: float | None) -> dict[str, Any]: ...

    def prune(self, before: float) -> int: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          REAL NOT NULL,
    request_id  TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    orig        TEXT,
    dest        TEXT,
    origid      TEXT,
    attest      TEXT,
    verstat     TEXT NOT NULL,
    reason      TEXT,
    sip_code    INTEGER,
    spc         TEXT NOT NULL,
    x5u         TEXT,
    fingerprint TEXT,
    action      TEXT,
    label       TEXT
);
CREATE INDEX records_ts ON records (ts);
CREATE INDEX records_origid ON records (origid, ts);
CREATE INDEX records_orig ON records (orig, ts);
CREATE INDEX records_dest ON records (dest, ts);
CREATE TABLE record_spc (
    spc         TEXT NOT NULL,
    ts          REAL NOT NULL,
    record_id   INTEGER NOT NULL,
    PRIMARY KEY (spc, ts, record_id)
) WITHOUT ROWID;
CREATE INDEX record_spc_ts ON record_spc (ts);
"""
_MIGRATIONS: dict[int, str] = {1: _SCHEMA}
"""Script that brings the schema from version ``n - 1`` to ``n``."""

_COLUMNS = ", ".join(f"r.{name}" for name in _FIELDS)
_INSERT = f"INSERT INTO records (id, {', '.join(_FIELDS)}) VALUES "  # noqa: S608 - fixed names
_INSERT_SPC = "INSERT OR IGNORE INTO record_spc (spc, ts, record_id) VALUES "
_ROWS_PER_INSERT = 200
"""Rows in one multi-row INSERT (at most 2,000: 16 parameters each stay under SQLite's
32766). Binding them holds the GIL, the statement's step gives it back: 200 rows keep the
event loop's wait for the writer under half a millisecond, where 1,000 rows held it for
about 2 ms at a time."""


def _insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[tuple[object, ...]]) -> None:
    """``rows`` through multi-row INSERTs: one statement step per chunk, where
    ``executemany`` steps once per row. Each step releases the GIL and must take it back
    from a busy event loop (a switch interval each time): per row, that held the writer to
    a few hundred rows a second under load."""
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        one = "(" + ", ".join("?" * len(chunk[0])) + ")"
        conn.execute(head + ", ".join([one] * len(chunk)), list(chain.from_iterable(chunk)))


def query_page(
    q: RecordQuery,
    select: Callable[[RecordQuery, tuple[float, int] | None, int], tuple[Any, Sequence[Any]]],
    connect: Callable[[], Any],
    row: Callable[[Sequence[Any]], Record],
) -> tuple[list[Record], str | None]:
    """One page of ``q`` and the cursor of the next (None on the last page), read with one
    more row than the page to know whether there is a next. Shared by the stores, as
    :func:`iter_chunks`."""
    query, args = select(q, q.position, q.limit + 1)
    with contextlib.closing(connect()) as conn:
        rows = conn.execute(query, args).fetchall()
    cursor = None
    if len(rows) > q.limit:
        rows = rows[: q.limit]
        cursor = _encode_cursor(rows[-1][1], rows[-1][0])
    return [row(r) for r in rows], cursor


def iter_chunks(
    q: RecordQuery,
    chunk: int,
    select: Callable[[RecordQuery, tuple[float, int] | None, int], tuple[Any, Sequence[Any]]],
    connect: Callable[[], Any],
    row: Callable[[Sequence[Any]], Record],
) -> Iterator[list[Record]]:
    """Every record matching ``q``, newest first, ``chunk`` at a time, each chunk read on a
    connection of its own (nothing stays open between chunks). Shared by the stores: each
    gives its ``select`` (query, arguments for a position and a size), ``connect`` and
    ``row`` (a result row as a Record); rows start with (id, ts).

    Raises:
        ValueError: ``chunk`` < 1, at once (not at the first ``next()``).
    """
    if chunk < 1:
        raise ValueError("chunk must be >= 1")

    def chunks() -> Iterator[list[Record]]:
        position = q.position
        while True:
            query, args = select(q, position, chunk)
            with contextlib.closing(connect()) as conn:
                rows = conn.execute(query, args).fetchall()
            if rows:
                yield [row(r) for r in rows]
            if len(rows) < chunk:
                return
            position = (rows[-1][1], rows[-1][0])

    return chunks()


def _spc_json(spc: tuple[str, ...]) -> str:
    """The SPC list as JSON; the usual single alphanumeric SPC without json.dumps (this
    runs for every record, in the writer thread that shares the GIL with the event loop)."""
    if len(spc) == 1 and spc[0].isalnum() and spc[0].isascii():
        return f'["{spc[0]}"]'
    return json.dumps(list(spc))


def _row(row: Sequence[Any]) -> Record:
    """A Record from ``SELECT r.id, <_COLUMNS>``."""
    values = dict(zip(_FIELDS, row[1:], strict=True))
    values["spc"] = tuple(json.loads(values["spc"]))
    return Record(**values)


def _select(
    q: RecordQuery, position: tuple[float, int] | None, limit: int
) -> tuple[str, list[Any]]:
    """The SQL of one page of ``q`` after ``position``, and its parameters."""
    args: list[Any] = []
    where: list[str] = []
    if q.spc is not None:
        source = "record_spc s JOIN records r ON r.id = s.record_id"
        ts, row_id = "s.ts", "s.record_id"  # the primary key's order: one index range
        where.append("s.spc = ?")
        args.append(q.spc)
    else:
        source = "records r"
        ts, row_id = "r.ts", "r.id"
    for name, value in (("origid", q.origid), ("orig", q.orig), ("dest", q.dest)):
        if value is not None:
            where.append(f"r.{name} = ?")
            args.append(value)
    if q.since is not None:
        where.append(f"{ts} >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append(f"{ts} < ?")
        args.append(q.until)
    if position is not None:
        where.append(f"({ts}, {row_id}) < (?, ?)")
        args.extend(position)
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    args.append(limit)
    # Only fixed column names are formatted in; every value is a parameter.
    sql = (
        f"SELECT r.id, {_COLUMNS} FROM {source} {condition}"  # noqa: S608
        f" ORDER BY {ts} DESC, {row_id} DESC LIMIT ?"
    )
    return sql, args


class SqliteRecordStore:
    """Records in SQLite (WAL mode): one write connection, a fresh read connection per read.

    You get one from :meth:`SqliteRecordStore.open`. Thread-safe: writes (``insert_many``,
    ``prune``) take a lock around the write connection; reads open their own read-only
    connection, so they run concurrently with writes, from any thread or process.
    """

    def __init__(self, path: Path, writer: sqlite3.Connection | None) -> None:
        self.path = path
        self._writer = writer
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, data_dir: str | Path, *, create: bool = True) -> SqliteRecordStore:
        """The store in ``data_dir``.

        With ``create`` (the service), the directory (mode 0700), the database file (mode
        0600) and the schema are created as needed, and the write connection opened. Without
        it (``verifier records``), the database must exist; nothing is written until a
        write method is called, so a read-only user can query.

        Raises:
            FileNotFoundError: without ``create``, there is no database in ``data_dir``.
            ValueError: the file is not a record database, or has a newer schema.
            OSError, sqlite3.Error: the directory or database cannot be created or opened.
        """
        root = Path(data_dir)
        path = root / DB_NAME
        if not create:
            if not path.is_file():
                raise FileNotFoundError(f"no record database {path}")
            store = cls(path, None)
            with contextlib.closing(store._reader()) as conn:
                _check_version(conn, path)
            return store
        try:
            root.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        else:
            root.chmod(0o700)  # mkdir's mode is filtered by the umask
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            path.chmod(0o600)
        return cls(path, _connect_writer(path))

    def _reader(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            raise ValueError(f"{self.path}: cannot open: {exc}") from None

    def _write_connection(self) -> sqlite3.Connection:
        """The write connection (opened on first use after ``open(create=False)``); the
        caller holds the lock."""
        if self._closed:
            raise RuntimeError("the record store is closed")
        if self._writer is None:
            self._writer = _connect_writer(self.path)
        return self._writer

    # -- writes ----------------------------------------------------------------------------

    def insert_many(self, records: Sequence[Record]) -> None:
        """Write ``records`` in one transaction (all or none). A batch holding a lone
        surrogate (no UTF-8 form) is written again, with U+FFFD for it (Record.storable).

        Raises:
            sqlite3.Error: the write failed (database locked past the busy timeout, disk
                full...); nothing of ``records`` was written.
            RuntimeError: the store is closed.
        """
        if not records:
            return
        try:
            self._insert(records)
        except UnicodeEncodeError:  # a text with no UTF-8 form: rolled back, stored as U+FFFD
            self._insert([r.storable() for r in records])

    def _insert(self, records: Sequence[Record]) -> None:
        with self._lock:
            conn = self._write_connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Ids are given explicitly (executemany does not report them): the
                # write lock taken by BEGIN IMMEDIATE makes the range ours alone.
                row = conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'records'"
                ).fetchone()
                first = (row[0] if row else 0) + 1
                _insert_rows(
                    conn,
                    _INSERT,
                    [r.row(first + i, _spc_json(r.spc)) for i, r in enumerate(records)],
                )
                spc_rows = [(spc, r.ts, first + i) for i, r in enumerate(records) for spc in r.spc]
                if spc_rows:
                    _insert_rows(conn, _INSERT_SPC, spc_rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def prune(self, before: float) -> int:
        """Delete the records older than ``before`` (epoch seconds); return how many.

        Deletes in chunks, one transaction each, so writes go on in between; stops early
        (returning the count so far) when the store is closed meanwhile.

        Raises:
            sqlite3.Error: a delete failed (what was deleted before stays deleted).
            RuntimeError: the store is closed.
        """
        total = 0
        while True:
            with self._lock:
                if self._closed and total:
                    return total
                conn = self._write_connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    deleted = conn.execute(
                        "DELETE FROM records WHERE id IN"
                        " (SELECT id FROM records WHERE ts < ? LIMIT ?)",
                        (before, _PRUNE_CHUNK),
                    ).rowcount
                    spc_deleted = conn.execute(
                        "DELETE FROM record_spc WHERE (spc, ts, record_id) IN"
                        " (SELECT spc, ts, record_id FROM record_spc WHERE ts < ? LIMIT ?)",
                        (before, _PRUNE_CHUNK),
                    ).rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            total += deleted
            if deleted < _PRUNE_CHUNK and spc_deleted < _PRUNE_CHUNK:
                return total

    @staticmethod
    def rejects(exc: Exception) -> bool:
        """A value SQLite refuses (a constraint, a string too long, an integer over 64
        bits, text with no UTF-8 form): the content's fault, unlike a locked or full
        database (``OperationalError``)."""
        return isinstance(
            exc, sqlite3.IntegrityError | sqlite3.DataError | OverflowError | UnicodeError
        )

    def close(self) -> None:
        """Close the write connection; a running :meth:`prune` stops after its chunk.
        Idempotent."""
        self._closed = True
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- reads -----------------------------------------------------------------------------

    def query(self, q: RecordQuery) -> tuple[list[Record], str | None]:
        """One page of records matching ``q``, newest first, and the next page's cursor
        (None on the last page).

        Raises:
            sqlite3.Error, ValueError: the database cannot be read.
        """
        return query_page(q, _select, self._reader, _row)

    def iter_query(self, q: RecordQuery, chunk: int = 1000) -> Iterator[list[Record]]:
        """Every record matching ``q`` (its ``limit`` is ignored; a cursor is a start),
        newest first, in lists of at most ``chunk``. Each chunk is read by its own
        connection: nothing is held open between two ``next()`` calls.

        Raises:
            ValueError: ``chunk`` < 1; or the database cannot be read (also sqlite3.Error).
        """
        return iter_chunks(q, chunk, _select, self._reader, _row)

    def stats(self, since: float | None, until: float | None) -> dict[str, Any]:
        """Counts of the records in ``since <= ts < until`` (either bound may be None).

        ``by_attest`` counts a record without attestation under ``"none"``; ``by_reason``
        counts failures only; ``top_spc`` lists the 20 SPCs with most records.

        Raises:
            ValueError: a bound is not finite, or since > until; the database cannot be
                read (also sqlite3.Error).
        """
        _check_window(since, until)
        where: list[str] = []
        args: list[float] = []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        window = " AND ".join(where) or "1"

        def grouped(conn: sqlite3.Connection, column: str, extra: str = "") -> dict[str, int]:
            rows = conn.execute(
                f"SELECT {column}, count(*) FROM records WHERE {window}{extra}"  # noqa: S608
                f" GROUP BY {column} ORDER BY count(*) DESC, {column}",
                args,
            )
            return {("none" if key is None else str(key)): count for key, count in rows}

        with contextlib.closing(self._reader()) as conn:
            conn.execute("BEGIN")  # one snapshot for every count
            total = conn.execute(
                f"SELECT count(*) FROM records WHERE {window}",  # noqa: S608
                args,
            ).fetchone()[0]
            by_attest = grouped(conn, "attest")
            by_verstat = grouped(conn, "verstat")
            by_reason = grouped(conn, "reason", " AND reason IS NOT NULL")
            top = conn.execute(
                f"SELECT spc, count(*) FROM record_spc WHERE {window}"  # noqa: S608
                " GROUP BY spc ORDER BY count(*) DESC, spc LIMIT ?",
                [*args, TOP_SPC],
            ).fetchall()
            conn.execute("COMMIT")
        return {
            "since": since,
            "until": until,
            "total": total,
            "by_attest": by_attest,
            "by_verstat": by_verstat,
            "by_reason": by_reason,
            "top_spc": [{"spc": spc, "count": count} for spc, count in top],
        }


def _connect_writer(path: Path) -> sqlite3.Connection:
    """The write connection: WAL, synchronous FULL (a committed batch survives a power
    loss), schema created or migrated.

    Raises:
        ValueError: not a record database, or a newer schema.
        sqlite3.Error: the database cannot be opened or written.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":  # pragma: no cover - WAL is unavailable on some network filesystems
            raise ValueError(f"{path}: cannot use WAL mode (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        version = _check_version(conn, path, allow_empty=True)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _not_a_database(exc):
            raise ValueError(f"{path}: not a record database ({exc})") from None
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def _not_a_database(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB


def _check_version(conn: sqlite3.Connection, path: Path, *, allow_empty: bool = False) -> int:
    """The schema version of the database.

    Raises:
        ValueError: a newer schema, or (unless ``allow_empty``) no schema at all.
    """
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if _not_a_database(exc):
            raise ValueError(f"{path}: not a record database ({exc})") from None
        # e.g. a WAL database whose -shm file is missing in a directory we cannot write
        raise ValueError(
            f"{path}: cannot read ({exc}); while the service is stopped, reading needs"
            f" write access to {path.parent}"
        ) from None
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema version {version} is newer than this verifier's {SCHEMA_VERSION}"
        )
    if version == 0 and not allow_empty:
        raise ValueError(f"{path}: not a record database (no schema)")
    return version


def open_store(settings: RecordSettings) -> RecordStore:
    """The service's record store: PostgreSQL at ``settings.database_url`` when it is set
    (:class:`verifier.records.postgres.PostgresRecordStore`), else SQLite in ``settings.data_dir``.
    Blocking: call it from a worker thread.

    Raises:
        ValueError: the database cannot be reached or has a newer schema (and what
            :meth:`SqliteRecordStore.open` / ``PostgresRecordStore.open`` raise).
    """
    if settings.database_url is not None:
        from .postgres import PostgresRecordStore

        return PostgresRecordStore.open(settings.database_url)
    if settings.writer_process:
        from .child import ChildWriterStore

        return ChildWriterStore.open_for_child(settings.data_dir, nice=settings.writer_nice)
    return SqliteRecordStore.open(settings.data_dir)


# -- CSV ---------------------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str | None) -> str:
    """A text cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    if value is None:
        return ""
    if value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _rfc3339(ts: float) -> str:
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def csv_header() -> str:
    """The CSV header line (CRLF-terminated, RFC 4180)."""
    return ",".join(CSV_COLUMNS) + "\r\n"


def to_csv_rows(records: Iterable[Record]) -> Iterator[str]:
    """One CSV line (CRLF-terminated) per record, in :data:`CSV_COLUMNS` order.

    Text cells starting with ``= + - @`` (or a tab or CR) get a leading ``'`` so that a
    spreadsheet shows them instead of evaluating them; SPCs are space-separated.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for r in records:
        writer.writerow(
            (
                repr(r.ts),
                _rfc3339(r.ts),
                _cell(r.request_id),
                _cell(r.endpoint),
                _cell(r.orig),
                _cell(r.dest),
                _cell(r.origid),
                _cell(r.attest),
                _cell(r.verstat),
                _cell(r.reason),
                "" if r.sip_code is None else str(r.sip_code),
                _cell(" ".join(r.spc)),
                _cell(r.x5u),
                _cell(r.fingerprint),
                _cell(r.action),
                _cell(r.label),
            )
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


# -- the writer --------------------------------------------------------------------------------


class RecordWriter:
    """Writes submitted records to a store in batches from one task, off the hot path.

    Use it as ``await writer.start()`` ... ``await writer.close()`` on a running loop. It
    does not own the store: close the store after the writer.

    Counters (for metrics): ``written``, ``dropped`` (overflow in "drop" mode, a "wait" past
    ``submit_timeout``, submitted after close, given up at close, or refused by the store
    for its content: ``rejected`` counts those apart), ``write_errors``
    (failed store calls, retries included), ``pruned``; ``last_error``; ``queue_depth`` and
    ``healthy`` are properties.
    """

    HEALTH_WINDOW = 30.0
    """Seconds after the last store error during which the writer reports unhealthy."""
    RETRY_FIRST = 0.05
    """First wait before retrying a failed batch; it doubles up to ``RETRY_MAX``."""
    RETRY_MAX = 5.0
    DROP_LOG_INTERVAL = 60.0
    """Drops are logged at most this often (with the count), not one line each."""

    def __init__(
        self,
        store: RecordStore,
        settings: RecordSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self._pending: deque[Record] = deque()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._closing = False
        self._deadline = math.inf
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._failing = False
        self._last_error_at: float | None = None
        self._drops_logged_at = -math.inf
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.rejected = 0
        self.pruned = 0
        self.last_error: str | None = None

    @property
    def queue_depth(self) -> int:
        """Records accepted and not yet written (the batch being written included)."""
        return len(self._pending) + self._inflight

    @property
    def healthy(self) -> bool:
        """False while a batch is failing, and for ``HEALTH_WINDOW`` s after a store error."""
        if self._failing:
            return False
        return self._last_error_at is None or (
            self._clock() - self._last_error_at >= self.HEALTH_WINDOW
        )

    async def start(self) -> None:
        """Start the writer task and the pruning task (the first pruning runs now).

        Raises:
            RuntimeError: the writer was closed, or no event loop is running.
        """
        if self._closing:
            raise RuntimeError("the record writer is closed")
        if self._writer is None:
            self._writer = asyncio.create_task(self._run(), name="records-writer")
            self._pruner = asyncio.create_task(self._prune_loop(), name="records-pruner")

    def offer(self, record: Record) -> bool:
        """Queue ``record`` when that needs no waiting: True when queued; False when the
        caller must :meth:`submit` it (the queue is full, or the writer closed). The
        common case of :meth:`submit` without a coroutine."""
        if self._closing or len(self._pending) >= self.settings.queue_size:
            return False
        self._enqueue(record)
        return True

    def _enqueue(self, record: Record) -> None:
        self._pending.append(record)
        depth = len(self._pending)
        if depth == 1 or depth >= self.settings.batch_size:
            self._wake.set()

    async def submit(self, record: Record) -> None:
        """Queue ``record`` for writing. Never raises because of the store.

        With room in the queue it returns at once. When the queue is full: with ``overflow
        = "wait"`` it waits for room, at most ``submit_timeout`` seconds, then drops the
        record; with "drop" it drops it at once. After :meth:`close` it drops. Every drop
        is counted in :attr:`dropped`.
        """
        if self._closing:
            self._drop(1, "closed")
            return
        if len(self._pending) >= self.settings.queue_size:
            if self.settings.overflow == "drop":
                self._drop(1, "queue_full")
                return
            if not await self._wait_for_space():
                self._drop(1, "closed" if self._closing else "queue_full_timeout")
                return
        self._enqueue(record)

    async def close(self) -> None:
        """Stop accepting, stop pruning, write everything queued; idempotent.

        A store that keeps failing is retried for ``close_timeout`` seconds; the records
        still queued then are counted as dropped and logged. A cancelled caller does not
        cancel the drain.
        """
        if self._closer is None:
            self._closer = asyncio.create_task(self._shutdown(), name="records-close")
        await asyncio.shield(self._closer)

    # -- internals -------------------------------------------------------------------------

    async def _wait_for_space(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.submit_timeout
        while len(self._pending) >= self.settings.queue_size:
            remaining = deadline - loop.time()
            if self._closing or remaining <= 0:
                return False
            self._space.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._space.wait()
            except TimeoutError:
                return False
        return True

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        now = self._clock()
        if now - self._drops_logged_at >= self.DROP_LOG_INTERVAL:
            self._drops_logged_at = now
            log.warning("records_dropped", extra={"why": why, "dropped_total": self.dropped})

    async def _run(self) -> None:
        settings = self.settings
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < settings.batch_size and not self._closing:
                self._wake.clear()  # set again by a full batch or close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.flush_interval):
                        await self._wake.wait()
            count = min(settings.batch_size, len(self._pending))
            batch = [self._pending.popleft() for _ in range(count)]
            self._inflight = count
            self._space.set()
            try:
                await self._write(batch)
            finally:
                self._inflight = 0

    async def _write(self, batch: list[Record]) -> None:
        """Write ``batch``, retrying with backoff until it is written (or, closing, until
        ``close_timeout`` has passed)."""
        loop = asyncio.get_running_loop()
        delay = self.RETRY_FIRST
        attempt = 0
        while True:
            attempt += 1
            try:
                await asyncio.to_thread(self.store.insert_many, batch)
            except Exception as exc:
                if self.store.rejects(exc):
                    await self._write_apart(batch, exc)
                    return
                self._failing = True
                self._error(exc, "records_write_failed", batch=len(batch), attempt=attempt)
                wait = delay
                if self._closing:
                    left = self._deadline - loop.time()
                    if left <= 0:
                        lost = len(batch) + len(self._pending)
                        self._pending.clear()
                        self.dropped += lost
                        log.error("records_lost", extra={"records": lost, "error": str(exc)})
                        return
                    wait = min(delay, left)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.RETRY_MAX)
                continue
            self._failing = False
            self.written += len(batch)
            return

    async def _write_apart(self, batch: list[Record], exc: Exception) -> None:
        """A batch the store refuses for its content: its halves are written apart (each
        retried as any batch), down to the records refused, which are dropped and logged
        with their request id. One bad record does not hold back the others."""
        if len(batch) == 1:
            self.rejected += 1
            self.dropped += 1
            self._error(exc, "record_rejected", request_id=batch[0].request_id)
            return
        middle = len(batch) // 2
        await self._write(batch[:middle])
        await self._write(batch[middle:])

    def _error(self, exc: Exception, event: str, **extra: Any) -> None:
        self.write_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._last_error_at = self._clock()
        log.error(event, extra={"error": self.last_error, **extra})

    async def _prune_loop(self) -> None:
        settings = self.settings
        while True:
            before = self._clock() - settings.retention_days * _DAY
            try:
                count = await asyncio.to_thread(self.store.prune, before)
            except Exception as exc:
                self._error(exc, "records_prune_failed")
            else:
                self.pruned += count
                if count:
                    log.info("records_pruned", extra={"records": count, "before": before})
            await asyncio.sleep(settings.prune_interval)

    async def _shutdown(self) -> None:
        self._closing = True
        self._deadline = asyncio.get_running_loop().time() + self.settings.close_timeout
        self._wake.set()
        self._space.set()
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self._writer is None:
            await self._run()  # never started: drain here
        else:
            await self._writer
        log.info(
            "records_closed",
            extra={"written": self.written, "dropped": self.dropped, "errors": self.write_errors},
        )
