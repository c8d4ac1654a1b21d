"""Traceback records in SQLite: :class:`SqliteRecordStore`, one service's store.

SQLite in WAL mode in a data directory (created mode 0700, the database file mode 0600;
SQLite gives its ``-wal``/``-shm`` files the same mode). The schema is versioned with
``PRAGMA user_version``. Records are in the shared order and cursor format of
:mod:`.model`; every value is a bound parameter.

SPCs: a separate ``record_spc (spc, ts, record_id)`` table, its primary key in that order,
besides the JSON list in ``records.spc`` that is returned. A record may carry several SPCs
(a certificate's TNAuthList may list more than one), so "one spc column plus a LIKE
fallback" would either miss SPCs or scan the table; with the side table a query by one SPC
is an index range in the same ``(ts, id)`` order as the others, and the top-SPC statistics
group that table directly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from . import rollup
from .aggregate import Run, StoreQueries
from .model import (
    CERTIFICATE_COLUMNS,
    FIELDS,
    Record,
    RecordQuery,
    Select,
    absent_columns,
    certificate_rows,
    iter_chunks,
    query_page,
    signers_of,
)

__all__ = ["DB_NAME", "SqliteRecordStore"]

_T = TypeVar("_T")

DB_NAME = "records.sqlite3"
"""The database file inside the data directory."""
SCHEMA_VERSION = 4
_PRUNE_CHUNK = 5000
"""Records deleted in one transaction by retention, about (whole minutes)."""


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
_CERTIFICATES = """
ALTER TABLE records ADD COLUMN identity TEXT;
CREATE TABLE certificates (
    fingerprint TEXT PRIMARY KEY,
    first_seen  REAL NOT NULL,
    subject     TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    not_after   REAL NOT NULL,
    chain       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX certificates_not_after ON certificates (not_after);
"""
_KEY = """
    verstat     TEXT NOT NULL,
    attest      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    sip_code    INTEGER NOT NULL,
    action      TEXT NOT NULL,
    label       TEXT NOT NULL,
    x5u         TEXT NOT NULL,
    nulls       INTEGER NOT NULL,
"""
_PROVIDER = """
    spc         TEXT NOT NULL,
    calls       INTEGER NOT NULL,
    attest_a    INTEGER NOT NULL,
    attest_b    INTEGER NOT NULL,
    attest_c    INTEGER NOT NULL,
    failures    INTEGER NOT NULL,
    blocked     INTEGER NOT NULL,
    first_ts    REAL NOT NULL,
    last_ts     REAL NOT NULL,"""
_DIMS = ", ".join(rollup.DIMS)
_ROLLUPS = f"""
CREATE TABLE record_minutes (
    minute      INTEGER NOT NULL,{_KEY}
    calls       INTEGER NOT NULL,
    PRIMARY KEY (minute, {_DIMS}, nulls)
) WITHOUT ROWID;
CREATE TABLE record_spc_minutes (
    spc         TEXT NOT NULL,
    minute      INTEGER NOT NULL,{_KEY}
    calls       INTEGER NOT NULL,
    PRIMARY KEY (spc, minute, {_DIMS}, nulls)
) WITHOUT ROWID;
CREATE TABLE provider_minutes (
    minute      INTEGER NOT NULL,{_PROVIDER}
    PRIMARY KEY (minute, spc)
) WITHOUT ROWID;
CREATE TABLE provider_hours (
    hour        INTEGER NOT NULL,{_PROVIDER}
    PRIMARY KEY (hour, spc)
) WITHOUT ROWID;
"""
_SIGNERS = "ALTER TABLE records ADD COLUMN signers TEXT;"
_MIGRATIONS: dict[int, str] = {1: _SCHEMA, 2: _CERTIFICATES, 3: _ROLLUPS, 4: _SIGNERS}
"""Script that brings the schema from version ``n - 1`` to ``n``."""
_BACKFILL = 3
"""The migration after whose script the rollups are counted from the records there."""


def _columns(absent: frozenset[str] = frozenset()) -> str:
    """The record columns to select: NULL for those an older schema lacks."""
    return ", ".join(f"NULL AS {name}" if name in absent else f"r.{name}" for name in FIELDS)


_COLUMNS = _columns()
_INSERT = f"INSERT INTO records (id, {', '.join(FIELDS)}) VALUES "  # noqa: S608 - fixed names
_INSERT_SPC = "INSERT OR IGNORE INTO record_spc (spc, ts, record_id) VALUES "
_INSERT_CERTIFICATES = (
    f"INSERT OR IGNORE INTO certificates ({', '.join(CERTIFICATE_COLUMNS)}) VALUES "  # noqa: S608
)
_ROWS_PER_INSERT = 200
"""Rows in one multi-row INSERT (at most 1,800: 18 parameters each stay under SQLite's
32766). Binding them holds the GIL, so a statement stays small enough not to keep the
event loop waiting for the writer thread."""


def _insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[tuple[object, ...]]) -> None:
    """``rows`` through multi-row INSERTs: one statement step per chunk, where
    ``executemany`` steps once per row, and each step releases the GIL and must take it
    back from a busy event loop."""
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        one = "(" + ", ".join("?" * len(chunk[0])) + ")"
        conn.execute(head + ", ".join([one] * len(chunk)), list(chain.from_iterable(chunk)))


def _spc_json(spc: tuple[str, ...]) -> str:
    """The SPC list as JSON; the usual single alphanumeric SPC without json.dumps (this
    runs for every record, in the writer thread that shares the GIL with the event loop)."""
    if len(spc) == 1 and spc[0].isalnum() and spc[0].isascii():
        return f'["{spc[0]}"]'
    return json.dumps(list(spc))


def _row(row: Sequence[Any]) -> Record:
    """A Record from ``SELECT r.id, <_COLUMNS>``."""
    values = dict(zip(FIELDS, row[1:], strict=True))
    values["spc"] = tuple(json.loads(values["spc"]))
    values["signers"] = signers_of(values["signers"])
    return Record(**values)


def _select(
    q: RecordQuery, position: tuple[float, int] | None, limit: int, columns: str = _COLUMNS
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
        f"SELECT r.id, {columns} FROM {source} {condition}"  # noqa: S608
        f" ORDER BY {ts} DESC, {row_id} DESC LIMIT ?"
    )
    return sql, args


class SqliteRecordStore(StoreQueries):
    """Records in SQLite (WAL mode): one write connection, a fresh read connection per read.

    You get one from :meth:`SqliteRecordStore.open`. Thread-safe: writes (``insert_many``,
    ``prune``) take a lock around the write connection; reads open their own read-only
    connection, so they run concurrently with writes, from any thread or process.
    """

    _dialect = rollup.SQLITE

    def __init__(
        self, path: Path, writer: sqlite3.Connection | None, *, rollups: bool = True
    ) -> None:
        self.path = path
        self._writer = writer
        self._rollups = rollups
        """Whether the database has its rollups (not before the service migrates it)."""
        self._select: Select = _select
        """The page query (with NULL for the record columns an older schema lacks)."""
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
                version = _check_version(conn, path)
            store._rollups = version >= _BACKFILL
            if absent := absent_columns(version):  # read before the service upgrades it
                store._select = functools.partial(_select, columns=_columns(absent))
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

    def written(self, record: Record) -> bool:
        """Whether a record of ``record``'s ts and request id is stored: a replayed batch
        (one transaction) is stored whole if its first record is.

        Raises:
            sqlite3.Error, ValueError: the database cannot be read.
        """
        with contextlib.closing(self._reader()) as conn:
            row = conn.execute(
                "SELECT 1 FROM records WHERE ts = ? AND request_id = ? LIMIT 1",
                (record.ts, record.request_id),
            ).fetchone()
        return row is not None

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
            self._rollups = True
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
                certificates = certificate_rows(records)
                if certificates:  # a fingerprint's first chain stays
                    _insert_rows(conn, _INSERT_CERTIFICATES, certificates)
                rollup.write(records, rollup.SQLITE, conn.execute)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def prune(self, before: float) -> int:
        """Delete the records older than ``before`` (epoch seconds); return how many.

        Deletes oldest first in chunks of whole minutes (about 5,000 records), one
        transaction each with their rollups, so writes go on in between and the rollups
        stay exact; the minute ``before`` cuts is recounted. Stops early (returning the
        count so far) when the store is closed meanwhile.

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
                    cut = _chunk_end(conn, before)
                    total += conn.execute("DELETE FROM records WHERE ts < ?", (cut,)).rowcount
                    conn.execute("DELETE FROM record_spc WHERE ts < ?", (cut,))
                    rollup.cut(rollup.SQLITE, conn.execute, cut)
                    if cut >= before:
                        _prune_certificates(conn, before)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            if cut >= before:
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
        return query_page(q, self._select, self._reader, _row)

    def iter_query(self, q: RecordQuery, chunk: int = 1000) -> Iterator[list[Record]]:
        """Every record matching ``q`` (its ``limit`` is ignored; a cursor is a start),
        newest first, in lists of at most ``chunk``. Each chunk is read by its own
        connection: nothing is held open between two ``next()`` calls.

        Raises:
            ValueError: ``chunk`` < 1; or the database cannot be read (also sqlite3.Error).
        """
        return iter_chunks(q, chunk, self._select, self._reader, _row)

    def _read(self, query: Callable[[Run], _T]) -> _T:
        """``query`` on one read connection, in one snapshot."""
        with contextlib.closing(self._reader()) as conn:
            conn.execute("BEGIN")  # one snapshot for every count
            out = query(lambda sql, args: conn.execute(sql, args).fetchall())
            conn.execute("COMMIT")
        return out

    def chains(self, fingerprints: Iterable[str]) -> dict[str, str]:
        """The recorded chain PEM of each of ``fingerprints`` that the store holds.

        Raises:
            ValueError: the database cannot be read (also sqlite3.Error).
        """
        wanted = list(dict.fromkeys(fingerprints))
        out: dict[str, str] = {}
        with contextlib.closing(self._reader()) as conn:
            for start in range(0, len(wanted), _ROWS_PER_INSERT):
                part = wanted[start : start + _ROWS_PER_INSERT]
                rows = conn.execute(
                    "SELECT fingerprint, chain FROM certificates WHERE fingerprint IN"  # noqa: S608
                    f" ({', '.join('?' * len(part))})",
                    part,
                )
                out.update(rows)
        return out


def _prune_certificates(conn: sqlite3.Connection, before: float) -> None:
    """A recorded chain was valid when its record was made, so one that expired before
    ``before`` belongs to pruned records only."""
    conn.execute("DELETE FROM certificates WHERE not_after < ?", (before,))


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
            if target == _BACKFILL and version:  # an existing database: count its records
                rollup.refill(rollup.SQLITE, conn.execute, None, None)
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


def _chunk_end(conn: sqlite3.Connection, before: float) -> float:
    """Where retention's next chunk ends: the start of the minute of the
    :data:`_PRUNE_CHUNK`-th oldest record, or the end of the oldest record's minute when
    that minute holds more, and at most ``before``."""
    row = conn.execute(
        "SELECT ts FROM records WHERE ts < ? ORDER BY ts LIMIT 1 OFFSET ?",
        (before, _PRUNE_CHUNK - 1),
    ).fetchone()
    if row is None:
        return before
    oldest = conn.execute("SELECT min(ts) FROM records").fetchone()[0]
    minute = rollup.minute_of(row[0])
    if 60 * minute <= oldest:
        minute += 1
    return min(before, 60.0 * minute)


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
