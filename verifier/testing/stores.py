"""A record store's database read directly, through the shared SQL runner and dialect:
the reference that tests and ``benchmarks/bench_records.py`` compare a store's answers with."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from ..records import RecordStore, SqliteRecordStore
from ..records.aggregate import Run
from ..records.rollup import POSTGRES, SQLITE, Dialect

__all__ = ["from_records"]


@contextlib.contextmanager
def from_records(store: RecordStore) -> Iterator[tuple[Run, Dialect]]:
    """A reader of ``store``'s database on a connection of its own, and its dialect."""
    if isinstance(store, SqliteRecordStore):
        conn = sqlite3.connect(store.path)
        try:
            yield (lambda text, args: conn.execute(text, args).fetchall()), SQLITE
        finally:
            conn.close()
        return
    import psycopg  # only with PostgreSQL, as the stores do

    from ..records.pgschema import runner
    from ..records.postgres import PostgresRecordStore

    assert isinstance(store, PostgresRecordStore)
    with psycopg.connect(store.conninfo, autocommit=True) as pg:
        yield runner(pg), POSTGRES
