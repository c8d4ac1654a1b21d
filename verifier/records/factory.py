"""open_store: the service's record store as its settings choose it."""

from __future__ import annotations

from .child import ChildWriterStore
from .model import RecordSettings, RecordStore
from .sqlite import SqliteRecordStore

__all__ = ["open_store"]


def open_store(settings: RecordSettings) -> RecordStore:
    """The service's record store: PostgreSQL at ``settings.database_url`` when it is set
    (:class:`verifier.records.postgres.PostgresRecordStore`), else SQLite in
    ``settings.data_dir``, written by a child process (``writer_process``) or a thread.
    Blocking: call it from a worker thread.

    Raises:
        ValueError: the database cannot be reached or has a newer schema (and what
            :meth:`SqliteRecordStore.open` / ``PostgresRecordStore.open`` raise).
    """
    if settings.database_url is not None:
        from .postgres import PostgresRecordStore  # psycopg is loaded only when it is used

        return PostgresRecordStore.open(settings.database_url)
    if settings.writer_process:
        return ChildWriterStore.open_for_child(settings.data_dir, nice=settings.writer_nice)
    return SqliteRecordStore.open(settings.data_dir)
