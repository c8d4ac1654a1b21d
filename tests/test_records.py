"""verifier.records: the SQLite record store, the batching writer, CSV, and ``verifier records``.

Real SQLite in tmp_path throughout; the only stand-ins are a fake clock and store
subclasses that fail on purpose or note their batch sizes.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.cli import main
from verifier.records import (
    CSV_COLUMNS,
    DB_NAME,
    Record,
    RecordQuery,
    RecordSettings,
    RecordWriter,
    SqliteRecordStore,
    csv_header,
    to_csv_rows,
)
from verifier.records.model import FIELDS

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rec(i: int = 0, **kwargs: object) -> Record:
    fields: dict[str, object] = {
        "ts": T0 + i,
        "request_id": f"req-{i}",
        "endpoint": "native",
        "orig": "12155551000",
        "dest": "12155552000",
        "origid": f"origid-{i}",
        "attest": "A",
        "verstat": "TN-Validation-Passed",
        "reason": None,
        "sip_code": None,
        "spc": ("1234",),
        "x5u": "https://cr.example.com/sp.pem",
        "fingerprint": "AB:CD",
        "action": "accept",
        "label": None,
    }
    fields.update(kwargs)
    return Record(**fields)  # type: ignore[arg-type]


def test_row_is_the_id_then_every_field_in_column_order() -> None:
    # Both stores write Record.row(); its order must be the column order of FIELDS.
    r = rec(7, reason="cert_not_trusted", sip_code=437, label="spam", orig="1", dest="2")
    assert r.row(99, "SPC") == (
        99,
        *[("SPC" if name == "spc" else getattr(r, name)) for name in FIELDS],
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRecordStore]:
    s = SqliteRecordStore.open(tmp_path / "data")
    yield s
    s.close()


def ids(records: Sequence[Record]) -> list[str]:
    return [r.request_id for r in records]


def all_rows(store: SqliteRecordStore) -> list[Record]:
    return [r for chunk in store.iter_query(RecordQuery()) for r in chunk]


# -- opening -----------------------------------------------------------------------------------


def test_open_creates_dir_and_file_with_modes(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    store = SqliteRecordStore.open(data)
    try:
        store.insert_many([rec()])
        assert 0o700 == stat.S_IMODE(data.stat().st_mode)
        assert 0o600 == stat.S_IMODE((data / DB_NAME).stat().st_mode)
        assert 0o600 == stat.S_IMODE((data / f"{DB_NAME}-wal").stat().st_mode)
    finally:
        store.close()


def test_wal_mode_and_schema_version(store: SqliteRecordStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        assert "wal" == conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert 1 == conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert {"records", "record_spc", "records_orig", "records_dest", "records_ts"} <= tables


def test_reopen_keeps_records(tmp_path: Path) -> None:
    first = SqliteRecordStore.open(tmp_path)
    first.insert_many([rec(1), rec(2)])
    first.close()
    first.close()  # idempotent
    second = SqliteRecordStore.open(tmp_path)
    try:
        assert ["req-2", "req-1"] == ids(second.query(RecordQuery())[0])
    finally:
        second.close()


def test_open_existing_without_create_reads(store: SqliteRecordStore) -> None:
    store.insert_many([rec(1)])
    reader = SqliteRecordStore.open(store.path.parent, create=False)
    try:
        assert ["req-1"] == ids(reader.query(RecordQuery())[0])
    finally:
        reader.close()


def test_open_without_create_needs_a_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SqliteRecordStore.open(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()


def test_open_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not SQLite, just some text " * 10)
    with pytest.raises(ValueError, match="not a record database"):
        SqliteRecordStore.open(tmp_path)
    with pytest.raises(ValueError, match="not a record database"):
        SqliteRecordStore.open(tmp_path, create=False)


def test_open_refuses_a_newer_schema(tmp_path: Path) -> None:
    SqliteRecordStore.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ValueError, match="newer"):
        SqliteRecordStore.open(tmp_path)
    with pytest.raises(ValueError, match="newer"):
        SqliteRecordStore.open(tmp_path, create=False)


def test_closed_store_refuses_writes(store: SqliteRecordStore) -> None:
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.insert_many([rec()])


# -- records and queries -----------------------------------------------------------------------


def test_record_round_trips_and_to_dict(store: SqliteRecordStore) -> None:
    failed = rec(
        5,
        attest=None,
        verstat="TN-Validation-Failed",
        reason="invalid_signature",
        sip_code=438,
        spc=("1234", "5678"),
        orig=None,
        label="spam?",
    )
    store.insert_many([failed])
    assert [failed] == store.query(RecordQuery())[0]
    assert {
        "ts": T0 + 5,
        "request_id": "req-5",
        "endpoint": "native",
        "orig": None,
        "dest": "12155552000",
        "origid": "origid-5",
        "attest": None,
        "verstat": "TN-Validation-Failed",
        "reason": "invalid_signature",
        "sip_code": 438,
        "spc": ["1234", "5678"],
        "x5u": "https://cr.example.com/sp.pem",
        "fingerprint": "AB:CD",
        "action": "accept",
        "label": "spam?",
    } == failed.to_dict()
    json.dumps(failed.to_dict())


@pytest.fixture
def mixed(store: SqliteRecordStore) -> SqliteRecordStore:
    store.insert_many(
        [
            rec(0, orig="111", dest="900", spc=("AAAA",), origid="x"),
            rec(1, orig="111", dest="901", spc=("BBBB",)),
            rec(2, orig="222", dest="900", spc=("AAAA", "BBBB")),
            rec(3, orig="222", dest="901", spc=()),
            rec(4, orig="111", dest="900", spc=("BBBB",), origid="x"),
        ]
    )
    return store


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (RecordQuery(), ["req-4", "req-3", "req-2", "req-1", "req-0"]),
        (RecordQuery(origid="x"), ["req-4", "req-0"]),
        (RecordQuery(orig="111"), ["req-4", "req-1", "req-0"]),
        (RecordQuery(dest="901"), ["req-3", "req-1"]),
        (RecordQuery(spc="AAAA"), ["req-2", "req-0"]),
        (RecordQuery(spc="BBBB"), ["req-4", "req-2", "req-1"]),
        (RecordQuery(spc="CCCC"), []),
        (RecordQuery(orig="111", dest="900"), ["req-4", "req-0"]),
        (RecordQuery(orig="222", spc="BBBB"), ["req-2"]),
        (RecordQuery(origid="x", spc="AAAA", dest="900", orig="111"), ["req-0"]),
        (RecordQuery(since=T0 + 1), ["req-4", "req-3", "req-2", "req-1"]),
        (RecordQuery(until=T0 + 3), ["req-2", "req-1", "req-0"]),
        (RecordQuery(since=T0 + 1, until=T0 + 3), ["req-2", "req-1"]),
        (RecordQuery(since=T0 + 1, until=T0 + 1), []),
        (RecordQuery(spc="BBBB", since=T0 + 1, until=T0 + 4), ["req-2", "req-1"]),
        (RecordQuery(orig="111", since=T0 + 0.5), ["req-4", "req-1"]),
        (RecordQuery(limit=2), ["req-4", "req-3"]),
    ],
)
def test_query_filters(mixed: SqliteRecordStore, query: RecordQuery, expected: list[str]) -> None:
    assert expected == ids(mixed.query(query)[0])


def test_duplicate_spcs_are_indexed_once(store: SqliteRecordStore) -> None:
    store.insert_many([rec(1, spc=("1234", "1234"))])
    assert [("1234", "1234")] == [r.spc for r in store.query(RecordQuery(spc="1234"))[0]]
    assert [{"spc": "1234", "count": 1}] == store.stats(None, None)["top_spc"]


def test_insert_many_of_nothing(store: SqliteRecordStore) -> None:
    store.insert_many([])
    assert ([], None) == store.query(RecordQuery())


def test_texts_no_store_can_hold_are_replaced_not_fatal(store: SqliteRecordStore) -> None:
    """An origid is any JSON string its signer chose: a lone surrogate (no UTF-8 form) or,
    in PostgreSQL, a NUL would otherwise fail its batch on every retry."""
    odd = rec(1, origid="a\ud800b", label="\udfff", spc=("1234", "X\udc00"))
    fine = rec(2, origid="caf\u00e9 \U0001f600")  # non-ASCII that UTF-8 holds: kept
    store.insert_many([odd, fine])
    got = {r.request_id: r for r in all_rows(store)}
    assert ("a\ufffdb", "\ufffd", ("1234", "X\ufffd")) == (
        got["req-1"].origid,
        got["req-1"].label,
        got["req-1"].spc,
    )
    assert fine == got["req-2"]
    assert ["req-1"] == ids(store.query(RecordQuery(spc="X\ufffd"))[0])


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_records = st.builds(
    Record,
    ts=st.floats(allow_nan=False, allow_infinity=False),
    request_id=st.uuids().map(str),
    endpoint=st.sampled_from(["atis", "native", "sip", "batch"]),
    orig=st.none() | _text,
    dest=st.none() | _text,
    origid=st.none() | _text,
    attest=st.none() | st.sampled_from(["A", "B", "C"]),
    verstat=_text,
    reason=st.none() | _text,
    sip_code=st.none() | st.integers(-(2**63), 2**63 - 1),
    spc=st.lists(_text, max_size=3, unique=True).map(tuple),
    x5u=st.none() | _text,
    fingerprint=st.none() | _text,
    action=st.none() | _text,
    label=st.none() | _text,
)


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(_records, min_size=1, max_size=8, unique_by=lambda r: r.request_id))
def test_every_record_reads_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, batch: list[Record]
) -> None:
    """Any double, any text (NULs and all, lone surrogates aside), any 64-bit code."""
    store = SqliteRecordStore.open(tmp_path_factory.mktemp("exact"))
    try:
        store.insert_many(batch)
        got = {r.request_id: r for r in all_rows(store)}
    finally:
        store.close()
    assert {r.request_id: r for r in batch} == got


def test_storable_is_the_record_itself_when_nothing_needs_replacing() -> None:
    plain = rec(1, origid="caf\u00e9")
    assert plain.storable() is plain
    assert plain.storable(nul=False) is plain
    nul = rec(2, origid="a\x00b", spc=("\x00",))
    assert nul.storable() is nul  # SQLite keeps NULs
    assert ("a\ufffdb", ("\ufffd",)) == (
        nul.storable(nul=False).origid,
        nul.storable(nul=False).spc,
    )
    assert replace(nul, origid="a\ufffdb", spc=("\ufffd",)) == nul.storable(nul=False)


def test_query_last_page_has_no_cursor(mixed: SqliteRecordStore) -> None:
    assert None is mixed.query(RecordQuery(limit=5))[1]
    assert None is not mixed.query(RecordQuery(limit=4))[1]


def _pages(store: SqliteRecordStore, **filters: object) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page, cursor = store.query(RecordQuery(cursor=cursor, **filters))  # type: ignore[arg-type]
        pages.append(ids(page))
        if cursor is None:
            return pages


def test_pagination_newest_first_without_gaps_or_duplicates(store: SqliteRecordStore) -> None:
    # 250 records, 10 per instant: ties on ts are broken by the row id.
    store.insert_many([rec(i, ts=T0 + i // 10) for i in range(250)])
    pages = _pages(store, limit=100)
    assert [100, 100, 50] == [len(p) for p in pages]
    flat = [rid for page in pages for rid in page]
    assert [f"req-{i}" for i in reversed(range(250))] == flat


def test_pagination_by_spc_and_window(store: SqliteRecordStore) -> None:
    store.insert_many([rec(i, spc=("AAAA",) if i % 3 else ("BBBB",)) for i in range(300)])
    pages = _pages(store, spc="AAAA", since=T0 + 10, until=T0 + 290, limit=33)
    flat = [rid for page in pages for rid in page]
    expected = [f"req-{i}" for i in reversed(range(10, 290)) if i % 3]
    assert expected == flat


def test_pagination_is_stable_while_records_arrive(store: SqliteRecordStore) -> None:
    store.insert_many([rec(i) for i in range(30)])
    page1, cursor = store.query(RecordQuery(limit=10))
    store.insert_many([rec(i) for i in range(100, 110)])  # newer: before page 1
    page2, cursor = store.query(RecordQuery(limit=10, cursor=cursor))
    page3, cursor = store.query(RecordQuery(limit=10, cursor=cursor))
    assert None is cursor
    assert [f"req-{i}" for i in reversed(range(30))] == ids(page1 + page2 + page3)


def test_iter_query_returns_everything_in_chunks(store: SqliteRecordStore) -> None:
    store.insert_many([rec(i, orig="1" if i % 2 else "2") for i in range(25)])
    chunks = list(store.iter_query(RecordQuery(orig="1", limit=1), chunk=5))
    assert [5, 5, 2] == [len(c) for c in chunks]
    assert [f"req-{i}" for i in reversed(range(1, 25, 2))] == ids([r for c in chunks for r in c])
    assert [] == list(store.iter_query(RecordQuery(orig="none")))
    with pytest.raises(ValueError, match="chunk"):
        store.iter_query(RecordQuery(), chunk=0)


def test_iter_query_starts_at_a_cursor(store: SqliteRecordStore) -> None:
    store.insert_many([rec(i) for i in range(10)])
    _, cursor = store.query(RecordQuery(limit=4))
    rest = [r for c in store.iter_query(RecordQuery(cursor=cursor), chunk=3) for r in c]
    assert [f"req-{i}" for i in reversed(range(6))] == ids(rest)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit must be 1 to 1000"),
        ({"limit": 1001}, "limit must be 1 to 1000"),
        ({"limit": True}, "limit must be an integer"),
        ({"since": 10.0, "until": 5.0}, "since must not be after until"),
        ({"since": float("nan")}, "since must be a finite"),
        ({"until": float("inf")}, "until must be a finite"),
        ({"cursor": "nope"}, "cursor is not valid"),
        ({"cursor": "é" * 22}, "cursor is not valid"),
        ({"cursor": "!" * 22}, "cursor is not valid"),
    ],
)
def test_query_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecordQuery(**kwargs)  # type: ignore[arg-type]


def test_query_cursor_is_opaque_and_valid(store: SqliteRecordStore) -> None:
    store.insert_many([rec(i) for i in range(3)])
    _, cursor = store.query(RecordQuery(limit=1))
    assert cursor is not None
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert (T0 + 2, 3) == RecordQuery(cursor=cursor).position


# -- stats and pruning -------------------------------------------------------------------------


def test_stats(mixed: SqliteRecordStore) -> None:
    mixed.insert_many(
        [
            rec(5, attest="B", verstat="TN-Validation-Failed", reason="bad_sig", sip_code=438),
            rec(6, attest=None, verstat="No-TN-Validation", reason="no_identity", spc=()),
            rec(7, attest="C", verstat="TN-Validation-Failed", reason="bad_sig", spc=("CCCC",)),
        ]
    )
    assert {
        "since": None,
        "until": None,
        "total": 8,
        "by_attest": {"A": 5, "B": 1, "C": 1, "none": 1},
        "by_verstat": {
            "TN-Validation-Passed": 5,
            "TN-Validation-Failed": 2,
            "No-TN-Validation": 1,
        },
        "by_reason": {"bad_sig": 2, "no_identity": 1},
        "top_spc": [
            {"spc": "BBBB", "count": 3},
            {"spc": "AAAA", "count": 2},
            {"spc": "1234", "count": 1},
            {"spc": "CCCC", "count": 1},
        ],
    } == mixed.stats(None, None)


def test_stats_window_and_top_20(store: SqliteRecordStore) -> None:
    # SPC number n signs n + 1 calls (n = 0..24): the top 20 are numbers 24 down to 5.
    store.insert_many(
        [rec(n, spc=(f"S{n:02d}",)) for n in range(25) for _ in range(n + 1)]
        + [rec(100, spc=("OUT",))]
    )
    stats = store.stats(T0, T0 + 50)
    assert 325 == stats["total"]
    assert [{"spc": f"S{n:02d}", "count": n + 1} for n in range(24, 4, -1)] == stats["top_spc"]
    assert {"since": T0, "until": T0 + 50} == {k: stats[k] for k in ("since", "until")}
    assert 1 == store.stats(T0 + 50, None)["total"]
    assert 0 == store.stats(T0 + 500, None)["total"]
    with pytest.raises(ValueError, match="since"):
        store.stats(T0 + 1, T0)


def test_prune_deletes_older_records_and_their_spcs(store: SqliteRecordStore) -> None:
    # More than one chunk (5,000) of old records.
    store.insert_many([rec(i, ts=T0 - 100 - i / 1000) for i in range(12_001)])
    store.insert_many([rec(i, ts=T0 + i) for i in range(3)])
    assert 12_001 == store.prune(T0)
    assert ["req-2", "req-1", "req-0"] == ids(all_rows(store))
    assert [{"spc": "1234", "count": 3}] == store.stats(None, None)["top_spc"]
    assert 0 == store.prune(T0)


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_header_and_rows_parse_back() -> None:
    records = [
        rec(1, label='has, a comma and "quotes"', spc=("1234", "5678")),
        rec(2, orig=None, sip_code=438, reason="bad_sig", action="line1\nline2"),
    ]
    text = csv_header() + "".join(to_csv_rows(records))
    assert text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert list(CSV_COLUMNS) == rows[0]
    first = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert 'has, a comma and "quotes"' == first["label"]
    assert "1234 5678" == first["spc"]
    assert repr(T0 + 1) == first["ts"]
    assert "2027-01-15T08:00:01.000Z" == first["time"]
    second = dict(zip(CSV_COLUMNS, rows[2], strict=True))
    assert ("", "438", "line1\nline2") == (second["orig"], second["sip_code"], second["action"])
    assert 3 == len(rows)


@pytest.mark.parametrize("value", ["=1+1", "+15551234567", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_csv_guards_against_formulas(value: str) -> None:
    (line,) = to_csv_rows([rec(label=value, orig=value)])
    row = dict(zip(CSV_COLUMNS, next(csv.reader(io.StringIO(line, newline=""))), strict=True))
    assert ("'" + value, "'" + value) == (row["label"], row["orig"])


def test_csv_leaves_plain_values_alone() -> None:
    (line,) = to_csv_rows([rec(label="a=b", orig="12155551000")])
    row = dict(zip(CSV_COLUMNS, next(csv.reader(io.StringIO(line, newline=""))), strict=True))
    assert ("a=b", "12155551000") == (row["label"], row["orig"])


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"data_dir": ""}, "data_dir"),
        ({"overflow": "block"}, "overflow"),
        ({"queue_size": 0}, "queue_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"retention_days": 0}, "retention_days"),
        ({"prune_interval": -1}, "prune_interval"),
        ({"submit_timeout": 0}, "submit_timeout"),
        ({"flush_interval": -0.1}, "flush_interval"),
        ({"close_timeout": float("nan")}, "close_timeout"),
    ],
)
def test_settings_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RecordSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_fields_have_docs() -> None:
    from verifier.settings import _attribute_docs

    docs = _attribute_docs(RecordSettings)
    assert [f for f in RecordSettings.__dataclass_fields__ if f not in docs] == []


# -- the writer --------------------------------------------------------------------------------


class CountingStore(SqliteRecordStore):
    """Notes the size of each batch written."""

    batches: list[int]

    def insert_many(self, records: Sequence[Record]) -> None:
        self.batches.append(len(records))
        super().insert_many(records)


class FlakyStore(SqliteRecordStore):
    """Fails the first ``failures`` writes, like a locked database."""

    failures = 0
    attempts = 0

    def insert_many(self, records: Sequence[Record]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise sqlite3.OperationalError("database is locked")
        super().insert_many(records)


def _open(cls: type[SqliteRecordStore], path: Path) -> SqliteRecordStore:
    plain = SqliteRecordStore.open(path)
    plain.close()
    return cls.open(path)


FAST = RecordSettings(flush_interval=0.01)


async def test_writer_writes_in_batches(tmp_path: Path) -> None:
    store = _open(CountingStore, tmp_path)
    assert isinstance(store, CountingStore)
    store.batches = []
    writer = RecordWriter(store, RecordSettings(batch_size=100, flush_interval=5.0))
    await writer.start()
    for i in range(250):
        await writer.submit(rec(i))
    await writer.close()
    store.close()
    assert [100, 100, 50] == store.batches
    assert (250, 0, 0) == (writer.written, writer.dropped, writer.queue_depth)


async def test_writer_drops_only_the_record_the_store_refuses(
    store: SqliteRecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A record no retry can store (here a sip_code past 64 bits) is found by writing its
    batch in halves, dropped and logged; the rest of its batch, and what follows, is written."""
    writer = RecordWriter(store, RecordSettings(batch_size=16, flush_interval=0.01))
    await writer.start()
    for i in range(40):
        await writer.submit(rec(i, sip_code=2**70) if i in (5, 23) else rec(i))
    await writer.close()
    assert (38, 2, 2) == (writer.written, writer.dropped, writer.rejected)
    assert sorted(f"req-{i}" for i in range(40) if i not in (5, 23)) == sorted(ids(all_rows(store)))
    refused = [r for r in caplog.records if r.getMessage() == "record_rejected"]
    assert ["req-5", "req-23"] == [getattr(r, "request_id", None) for r in refused]
    assert writer.healthy is False  # an error was logged: /readyz says so for a while


async def test_writer_flushes_a_partial_batch_after_the_interval(
    store: SqliteRecordStore,
) -> None:
    writer = RecordWriter(store, FAST)
    await writer.start()
    await writer.submit(rec(1))
    for _ in range(200):
        if writer.written:
            break
        await asyncio.sleep(0.01)
    assert ["req-1"] == ids(all_rows(store))
    await writer.close()


async def test_writer_drains_on_close(store: SqliteRecordStore) -> None:
    writer = RecordWriter(store, RecordSettings())
    await writer.start()
    for i in range(5000):
        await writer.submit(rec(i))
    await writer.close()
    assert (5000, 0) == (writer.written, writer.dropped)
    assert 5000 == store.stats(None, None)["total"]


async def test_writer_never_started_drains_on_close(store: SqliteRecordStore) -> None:
    writer = RecordWriter(store, RecordSettings())
    for i in range(10):
        await writer.submit(rec(i))
    assert 10 == writer.queue_depth
    await writer.close()
    assert 10 == len(all_rows(store))


async def test_back_pressure_waits_for_room(store: SqliteRecordStore) -> None:
    writer = RecordWriter(store, RecordSettings(queue_size=3, flush_interval=0))
    for i in range(3):
        await writer.submit(rec(i))
    late = asyncio.create_task(writer.submit(rec(3)))
    await asyncio.sleep(0.05)
    assert not late.done()  # the queue is full and nothing writes yet
    await writer.start()
    await asyncio.wait_for(late, 5)
    await writer.close()
    assert (4, 0) == (writer.written, writer.dropped)


async def test_offer_queues_only_what_needs_no_waiting(store: SqliteRecordStore) -> None:
    """offer() is submit() without a coroutine: it queues while there is room and leaves
    a full queue, or a closed writer, to submit() (which waits, or drops and counts)."""
    writer = RecordWriter(store, RecordSettings(queue_size=2, submit_timeout=0.05))
    assert [True, True, False] == [writer.offer(rec(i)) for i in range(3)]
    assert (2, 0) == (writer.queue_depth, writer.dropped)
    await writer.start()
    await writer.close()
    assert not writer.offer(rec(9))
    assert (2, 0) == (writer.written, writer.dropped)
    assert ["req-0", "req-1"] == sorted(ids(all_rows(store)))


async def test_back_pressure_is_bounded_by_submit_timeout(store: SqliteRecordStore) -> None:
    writer = RecordWriter(store, RecordSettings(queue_size=1, submit_timeout=0.05))
    await writer.submit(rec(0))
    await asyncio.wait_for(writer.submit(rec(1)), 5)
    assert (1, 1) == (writer.queue_depth, writer.dropped)
    await writer.close()
    assert ["req-0"] == ids(all_rows(store))


async def test_drop_mode_counts_drops(store: SqliteRecordStore) -> None:
    writer = RecordWriter(store, RecordSettings(queue_size=5, overflow="drop"))
    for i in range(8):
        await writer.submit(rec(i))
    assert (5, 3) == (writer.queue_depth, writer.dropped)
    await writer.close()
    assert (5, 3) == (writer.written, writer.dropped)
    assert 5 == len(all_rows(store))


async def test_write_errors_are_retried_without_loss(tmp_path: Path) -> None:
    store = _open(FlakyStore, tmp_path)
    assert isinstance(store, FlakyStore)
    store.failures = 3
    clock = Clock()
    writer = RecordWriter(store, FAST, clock=clock)
    await writer.start()
    for i in range(20):
        await writer.submit(rec(i))
    for _ in range(500):
        if writer.write_errors:
            break
        await asyncio.sleep(0.01)
    assert not writer.healthy
    await writer.close()
    store.close()
    assert (20, 0, 3) == (writer.written, writer.dropped, writer.write_errors)
    assert "OperationalError: database is locked" == writer.last_error
    assert 20 == len(all_rows(store))
    assert not writer.healthy  # within HEALTH_WINDOW of the last error
    clock.now += RecordWriter.HEALTH_WINDOW
    assert writer.healthy


async def test_close_gives_up_on_a_dead_store_after_close_timeout(tmp_path: Path) -> None:
    store = _open(FlakyStore, tmp_path)
    assert isinstance(store, FlakyStore)
    store.failures = 10**9
    writer = RecordWriter(store, RecordSettings(close_timeout=0.2, flush_interval=0))
    for i in range(7):
        await writer.submit(rec(i))
    await asyncio.wait_for(writer.close(), 5)
    store.close()
    assert (0, 7) == (writer.written, writer.dropped)
    assert writer.write_errors >= 1
    assert not writer.healthy


async def test_close_is_idempotent_and_later_submits_are_counted(
    store: SqliteRecordStore,
) -> None:
    writer = RecordWriter(store, FAST)
    await writer.start()
    await writer.submit(rec(1))
    await asyncio.gather(writer.close(), writer.close())
    await writer.close()
    await writer.submit(rec(2))
    assert (1, 1) == (writer.written, writer.dropped)
    with pytest.raises(RuntimeError, match="closed"):
        await writer.start()


async def test_writer_prunes_by_retention(store: SqliteRecordStore) -> None:
    clock = Clock(T0 + 10 * 86400)
    store.insert_many([rec(0, ts=T0 - 1), rec(1, ts=T0 + 1), rec(2, ts=T0 + 9 * 86400)])
    writer = RecordWriter(store, RecordSettings(retention_days=10), clock=clock)
    await writer.start()
    for _ in range(500):
        if writer.pruned:
            break
        await asyncio.sleep(0.01)
    await writer.close()
    assert 1 == writer.pruned
    assert ["req-2", "req-1"] == ids(all_rows(store))


async def test_reads_run_while_the_writer_writes(store: SqliteRecordStore) -> None:
    writer = RecordWriter(store, RecordSettings(batch_size=50, flush_interval=0))
    await writer.start()
    seen: list[int] = []
    for i in range(1000):
        await writer.submit(rec(i))
        if i % 100 == 0:
            stats = await asyncio.to_thread(store.stats, None, None)
            seen.append(stats["total"])
    await writer.close()
    assert seen == sorted(seen)
    assert 1000 == store.stats(None, None)["total"]


# -- verifier records --------------------------------------------------------------------------


def run(argv: Sequence[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    code = info.value.code
    assert isinstance(code, int)
    return code


@pytest.fixture
def data_dir(mixed: SqliteRecordStore) -> str:
    return str(mixed.path.parent)


def test_cli_lists_newest_first_with_a_cursor(
    data_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 0 == run(["records", "--data-dir", data_dir, "--orig", "111", "--limit", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert 3 == len(lines)
    assert lines[0].startswith("2027-01-15T08:00:04Z native TN-Validation-Passed attest=A")
    assert "orig=111 dest=900 origid=x spc=BBBB action=accept request_id=req-4" in lines[0]
    assert "request_id=req-1" in lines[1]
    assert lines[2].startswith("next cursor: ")
    cursor = lines[2].split(": ", 1)[1]
    assert 0 == run(["records", "--data-dir", data_dir, "--orig", "111", "--cursor", cursor])
    lines = capsys.readouterr().out.splitlines()
    assert 1 == len(lines)
    assert "request_id=req-0" in lines[0]


def test_cli_json(data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == run(["records", "--data-dir", data_dir, "--spc", "AAAA", "--json"])
    body = json.loads(capsys.readouterr().out)
    assert ["req-2", "req-0"] == [r["request_id"] for r in body["records"]]
    assert ["AAAA", "BBBB"] == body["records"][0]["spc"]
    assert None is body["next_cursor"]


def test_cli_matches_numbers_in_any_notation(
    store: SqliteRecordStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store.insert_many([rec(1, orig="12155551000")])
    argv = ["records", "--data-dir", str(store.path.parent), "--json", "--orig", "+1 215-555-1000"]
    assert 0 == run(argv)
    assert ["req-1"] == [r["request_id"] for r in json.loads(capsys.readouterr().out)["records"]]


def test_cli_csv_has_every_match(
    store: SqliteRecordStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store.insert_many([rec(i, label="=cmd()" if i == 0 else None) for i in range(1500)])
    argv = ["records", "--data-dir", str(store.path.parent), "--csv", "--since", str(T0)]
    assert 0 == run([*argv, "--limit", "10"])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out, newline="")))
    assert list(CSV_COLUMNS) == rows[0]
    assert 1501 == len(rows)
    assert ("req-1499", "req-0") == (rows[1][2], rows[-1][2])
    assert "'=cmd()" == rows[-1][CSV_COLUMNS.index("label")]


def test_cli_stats(data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    since = "2027-01-15T08:00:01Z"
    assert 0 == run(["records", "--data-dir", data_dir, "--stats", "--since", since])
    stats = json.loads(capsys.readouterr().out)
    assert (T0 + 1, None, 4) == (stats["since"], stats["until"], stats["total"])
    assert [{"spc": "BBBB", "count": 3}, {"spc": "AAAA", "count": 1}] == stats["top_spc"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stats", "--orig", "1"], "--stats takes only --since and --until"),
        (["--since", "yesterday"], "--since 'yesterday': not epoch seconds"),
        (["--until", "2027-01-01T00:00:00"], "--until '2027-01-01T00:00:00': an RFC 3339"),
        (["--limit", "5000"], "limit must be 1 to 1000"),
        (["--cursor", "xyz"], "cursor is not valid"),
        (["--since", "20", "--until", "10"], "since must not be after until"),
    ],
)
def test_cli_usage_errors(
    data_dir: str, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert 2 == run(["records", "--data-dir", data_dir, *extra])
    assert message in capsys.readouterr().err


def test_cli_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-dir"
    assert 2 == run(["records", "--data-dir", str(missing)])
    assert f"no records in {missing}/" in capsys.readouterr().err
    assert not missing.exists()


def test_cli_output_modes_are_exclusive(data_dir: str) -> None:
    assert 2 == run(["records", "--data-dir", data_dir, "--csv", "--json"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_cli_reads_a_directory_it_cannot_write(
    data_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # WAL readers need the -shm file; it exists while the service's connection is open.
    os.chmod(data_dir, 0o500)
    try:
        assert 0 == run(["records", "--data-dir", data_dir, "--json"])
    finally:
        os.chmod(data_dir, 0o700)
    assert 5 == len(json.loads(capsys.readouterr().out)["records"])
