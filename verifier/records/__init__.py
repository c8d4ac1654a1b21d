"""Traceback records: one row per verification, kept as evidence, queried by number or SPC.

Every verification the service answers becomes a :class:`Record` (full numbers: the
database is the evidence, the logs mask them). The service hands records to a
:class:`RecordWriter`, which writes them off the hot path, in batches, from one task; the
HTTP endpoints and ``verifier records`` read them back through a :class:`RecordStore` that
:func:`open_store` opens: SQLite in a data directory (:class:`SqliteRecordStore`, written
by a child process unless ``writer_process`` is off), or PostgreSQL with ``database_url``
(:class:`verifier.records.postgres.PostgresRecordStore`, imported on demand: it loads
psycopg).

Modules, their imports pointing one way (no cycle): ``factory`` -> ``child`` -> ``sqlite``
-> ``model``; ``factory`` -> ``postgres`` -> ``pgschema`` -> ``model``; ``writer`` ->
``journal`` -> ``model``. ``model`` holds what every store shares and imports none of them.
"""

from .factory import open_store
from .model import (
    CSV_COLUMNS,
    MAX_LIMIT,
    Record,
    RecordQuery,
    RecordRefused,
    RecordSettings,
    RecordStore,
    csv_header,
    iter_chunks,
    query_page,
    to_csv_rows,
)
from .sqlite import DB_NAME, SqliteRecordStore
from .writer import RecordWriter

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
