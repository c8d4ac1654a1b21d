"""verifier.records: the store contract on every backend, the SQLite store, the model
(records, queries, settings, CSV), the batching writer, and ``verifier records``.

The contract tests take ``store``, one fixture run three times: SQLite written from the
writer's thread, SQLite written by a child process (``records.writer_process``), and
PostgreSQL (skipped without VERIFIER_TEST_DATABASE_URL, in a schema of its own). What only
one backend does is tested here (SQLite), in test_recordproc.py (the child process) and in
test_pgrecords.py (PostgreSQL). Real databases throughout; the only stand-ins are a fake
clock and store subclasses that fail on purpose or note their batch sizes.
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
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.records import (
    CSV_COLUMNS,
    DB_NAME,
    Record,
    RecordQuery,
    RecordSettings,
    RecordStore,
    RecordWriter,
    SqliteRecordStore,
    csv_header,
    to_csv_rows,
)
from verifier.records.child import ChildWriterStore
from verifier.records.model import FIELDS

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

    Kit = type[RecordKit]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "child", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    """A new, empty store of each backend."""
    made: RecordStore
    if request.param == "postgres":
        from verifier.records.postgres import PostgresRecordStore

        url: str = request.getfixturevalue("database_url")
        made = PostgresRecordStore.open(url, schema=request.getfixturevalue("schema"))
    elif request.param == "child":
        made = ChildWriterStore.open_for_child(tmp_path / "data")
    else:
        made = SqliteRecordStore.open(tmp_path / "data")
    yield made
    made.close()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[SqliteRecordStore]:
    """A SQLite store written from this process (for what only SQLite does)."""
    s = SqliteRecordStore.open(tmp_path / "data")
    yield s
    s.close()


def fill_mixed(store: RecordStore, kit: Kit) -> None:
    """Five records over two callers, two callees, two origids and two SPCs."""
    store.insert_many(
        [
            kit.rec(0, orig="111", dest="900", spc=("AAAA",), origid="x"),
            kit.rec(1, orig="111", dest="901", spc=("BBBB",)),
            kit.rec(2, orig="222", dest="900", spc=("AAAA", "BBBB")),
            kit.rec(3, orig="222", dest="901", spc=()),
            kit.rec(4, orig="111", dest="900", spc=("BBBB",), origid="x"),
        ]
    )


@pytest.fixture
def mixed(store: RecordStore, kit: Kit) -> RecordStore:
    fill_mixed(store, kit)
    return store


# -- the model ---------------------------------------------------------------------------------


def test_row_is_the_id_then_every_field_in_column_order(kit: Kit) -> None:
    # Both stores write Record.row(); its order must be the column order of FIELDS.
    r = kit.rec(7, reason="cert_not_trusted", sip_code=437, label="spam", orig="1", dest="2")
    assert r.row(99, "SPC") == (
        99,
        *[("SPC" if name == "spc" else getattr(r, name)) for name in FIELDS],
    )


def test_storable_is_the_record_itself_when_nothing_needs_replacing(kit: Kit) -> None:
    plain = kit.rec(1, origid="caf\u00e9")
    assert plain.storable() is plain
    assert plain.storable(nul=False) is plain
    nul = kit.rec(2, origid="a\x00b", spc=("\x00",))
    assert nul.storable() is nul  # SQLite keeps NULs
    assert ("a\ufffdb", ("\ufffd",)) == (
        nul.storable(nul=False).origid,
        nul.storable(nul=False).spc,
    )
    assert replace(nul, origid="a\ufffdb", spc=("\ufffd",)) == nul.storable(nul=False)


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
        ({"database_url": "mysql://x/y"}, "database_url"),
        ({"writer_nice": 20}, "writer_nice"),
    ],
)
def test_settings_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RecordSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_fields_have_docs() -> None:
    from verifier.settings import _attribute_docs

    docs = _attribute_docs(RecordSettings)
    assert [f for f in RecordSettings.__dataclass_fields__ if f not in docs] == []


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_header_and_rows_parse_back(kit: Kit) -> None:
    records = [
        kit.rec(1, label='has, a comma and "quotes"', spc=("1234", "5678")),
        kit.rec(2, orig=None, sip_code=438, reason="bad_sig", action="line1\nline2"),
    ]
    text = csv_header() + "".join(to_csv_rows(records))
    assert text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert list(CSV_COLUMNS) == rows[0]
    first = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert 'has, a comma and "quotes"' == first["label"]
    assert "1234 5678" == first["spc"]
    assert repr(kit.T0 + 1) == first["ts"]
    assert "2027-01-15T08:00:01.000Z" == first["time"]
    second = dict(zip(CSV_COLUMNS, rows[2], strict=True))
    assert ("", "438", "line1\nline2") == (second["orig"], second["sip_code"], second["action"])
    assert 3 == len(rows)


@pytest.mark.parametrize("value", ["=1+1", "+15551234567", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_csv_guards_against_formulas(kit: Kit, value: str) -> None:
    (line,) = to_csv_rows([kit.rec(label=value, orig=value)])
    row = dict(zip(CSV_COLUMNS, next(csv.reader(io.StringIO(line, newline=""))), strict=True))
    assert ("'" + value, "'" + value) == (row["label"], row["orig"])


def test_csv_leaves_plain_values_alone(kit: Kit) -> None:
    (line,) = to_csv_rows([kit.rec(label="a=b", orig="12155551000")])
    row = dict(zip(CSV_COLUMNS, next(csv.reader(io.StringIO(line, newline=""))), strict=True))
    assert ("a=b", "12155551000") == (row["label"], row["orig"])


# -- the store contract: every backend ---------------------------------------------------------


def test_closed_store_refuses_writes(store: RecordStore, kit: Kit) -> None:
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.insert_many([kit.rec()])


def test_record_round_trips_and_to_dict(store: RecordStore, kit: Kit) -> None:
    failed = kit.rec(
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
        "ts": kit.T0 + 5,
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


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["req-4", "req-3", "req-2", "req-1", "req-0"]),
        ({"origid": "x"}, ["req-4", "req-0"]),
        ({"orig": "111"}, ["req-4", "req-1", "req-0"]),
        ({"dest": "901"}, ["req-3", "req-1"]),
        ({"spc": "AAAA"}, ["req-2", "req-0"]),
        ({"spc": "BBBB"}, ["req-4", "req-2", "req-1"]),
        ({"spc": "CCCC"}, []),
        ({"orig": "111", "dest": "900"}, ["req-4", "req-0"]),
        ({"orig": "222", "spc": "BBBB"}, ["req-2"]),
        ({"origid": "x", "spc": "AAAA", "dest": "900", "orig": "111"}, ["req-0"]),
        ({"since": 1}, ["req-4", "req-3", "req-2", "req-1"]),
        ({"until": 3}, ["req-2", "req-1", "req-0"]),
        ({"since": 1, "until": 3}, ["req-2", "req-1"]),
        ({"since": 1, "until": 1}, []),
        ({"spc": "BBBB", "since": 1, "until": 4}, ["req-2", "req-1"]),
        ({"orig": "111", "since": 0.5}, ["req-4", "req-1"]),
        ({"limit": 2}, ["req-4", "req-3"]),
    ],
)
def test_query_filters(
    mixed: RecordStore, kit: Kit, filters: dict[str, Any], expected: list[str]
) -> None:
    """``since`` and ``until`` are given in seconds after T0."""
    window = {k: kit.T0 + v for k, v in filters.items() if k in ("since", "until")}
    query = RecordQuery(**{**filters, **window})
    assert expected == kit.ids(mixed.query(query)[0])


def test_duplicate_spcs_are_indexed_once(store: RecordStore, kit: Kit) -> None:
    store.insert_many([kit.rec(1, spc=("1234", "1234"))])
    assert [("1234", "1234")] == [r.spc for r in store.query(RecordQuery(spc="1234"))[0]]
    assert [{"spc": "1234", "count": 1}] == store.stats(None, None)["top_spc"]


def test_insert_many_of_nothing(store: RecordStore) -> None:
    store.insert_many([])
    assert ([], None) == store.query(RecordQuery())


def test_texts_no_store_can_hold_are_replaced_not_fatal(store: RecordStore, kit: Kit) -> None:
    """An origid is any JSON string its signer chose: a lone surrogate (no UTF-8 form) or,
    in PostgreSQL, a NUL would otherwise fail its batch on every retry."""
    odd = kit.rec(1, origid="a\ud800b", label="\udfff", spc=("1234", "X\udc00"))
    fine = kit.rec(2, origid="caf\u00e9 \U0001f600")  # non-ASCII that UTF-8 holds: kept
    store.insert_many([odd, fine])
    got = {r.request_id: r for r in kit.every(store)}
    assert ("a\ufffdb", "\ufffd", ("1234", "X\ufffd")) == (
        got["req-1"].origid,
        got["req-1"].label,
        got["req-1"].spc,
    )
    assert fine == got["req-2"]
    assert ["req-1"] == kit.ids(store.query(RecordQuery(spc="X\ufffd"))[0])


def test_query_last_page_has_no_cursor(mixed: RecordStore) -> None:
    assert None is mixed.query(RecordQuery(limit=5))[1]
    assert None is not mixed.query(RecordQuery(limit=4))[1]


def _pages(store: RecordStore, kit: Kit, **filters: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page, cursor = store.query(RecordQuery(cursor=cursor, **filters))
        pages.append(kit.ids(page))
        if cursor is None:
            return pages


def test_pagination_newest_first_without_gaps_or_duplicates(store: RecordStore, kit: Kit) -> None:
    # 250 records, 10 per instant: ties on ts are broken by the row id.
    store.insert_many([kit.rec(i, ts=kit.T0 + i // 10) for i in range(250)])
    pages = _pages(store, kit, limit=100)
    assert [100, 100, 50] == [len(p) for p in pages]
    flat = [rid for page in pages for rid in page]
    assert [f"req-{i}" for i in reversed(range(250))] == flat


def test_pagination_by_spc_and_window(store: RecordStore, kit: Kit) -> None:
    store.insert_many([kit.rec(i, spc=("AAAA",) if i % 3 else ("BBBB",)) for i in range(300)])
    pages = _pages(store, kit, spc="AAAA", since=kit.T0 + 10, until=kit.T0 + 290, limit=33)
    flat = [rid for page in pages for rid in page]
    expected = [f"req-{i}" for i in reversed(range(10, 290)) if i % 3]
    assert expected == flat


def test_pagination_is_stable_while_records_arrive(store: RecordStore, kit: Kit) -> None:
    store.insert_many([kit.rec(i) for i in range(30)])
    page1, cursor = store.query(RecordQuery(limit=10))
    store.insert_many([kit.rec(i) for i in range(100, 110)])  # newer: before page 1
    page2, cursor = store.query(RecordQuery(limit=10, cursor=cursor))
    page3, cursor = store.query(RecordQuery(limit=10, cursor=cursor))
    assert None is cursor
    assert [f"req-{i}" for i in reversed(range(30))] == kit.ids(page1 + page2 + page3)


def test_iter_query_returns_everything_in_chunks(store: RecordStore, kit: Kit) -> None:
    store.insert_many([kit.rec(i, orig="1" if i % 2 else "2") for i in range(25)])
    chunks = list(store.iter_query(RecordQuery(orig="1", limit=1), chunk=5))
    assert [5, 5, 2] == [len(c) for c in chunks]
    expected = [f"req-{i}" for i in reversed(range(1, 25, 2))]
    assert expected == kit.ids([r for c in chunks for r in c])
    assert [] == list(store.iter_query(RecordQuery(orig="none")))
    with pytest.raises(ValueError, match="chunk"):
        store.iter_query(RecordQuery(), chunk=0)


def test_iter_query_starts_at_a_cursor(store: RecordStore, kit: Kit) -> None:
    store.insert_many([kit.rec(i) for i in range(10)])
    _, cursor = store.query(RecordQuery(limit=4))
    rest = [r for c in store.iter_query(RecordQuery(cursor=cursor), chunk=3) for r in c]
    assert [f"req-{i}" for i in reversed(range(6))] == kit.ids(rest)


def test_query_cursor_is_opaque_and_valid(store: RecordStore, kit: Kit) -> None:
    store.insert_many([kit.rec(i) for i in range(3)])
    _, cursor = store.query(RecordQuery(limit=1))
    assert cursor is not None
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert (kit.T0 + 2, 3) == RecordQuery(cursor=cursor).position


def test_stats(mixed: RecordStore, kit: Kit) -> None:
    mixed.insert_many(
        [
            kit.rec(5, attest="B", verstat="TN-Validation-Failed", reason="bad_sig", sip_code=438),
            kit.rec(6, attest=None, verstat="No-TN-Validation", reason="no_identity", spc=()),
            kit.rec(7, attest="C", verstat="TN-Validation-Failed", reason="bad_sig", spc=("CCCC",)),
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


def test_stats_window_and_top_20(store: RecordStore, kit: Kit) -> None:
    # SPC number n signs n + 1 calls (n = 0..24): the top 20 are numbers 24 down to 5.
    t0 = kit.T0
    store.insert_many(
        [kit.rec(n, spc=(f"S{n:02d}",)) for n in range(25) for _ in range(n + 1)]
        + [kit.rec(100, spc=("OUT",))]
    )
    stats = store.stats(t0, t0 + 50)
    assert 325 == stats["total"]
    assert [{"spc": f"S{n:02d}", "count": n + 1} for n in range(24, 4, -1)] == stats["top_spc"]
    assert {"since": t0, "until": t0 + 50} == {k: stats[k] for k in ("since", "until")}
    assert 1 == store.stats(t0 + 50, None)["total"]
    assert 0 == store.stats(t0 + 500, None)["total"]
    with pytest.raises(ValueError, match="since"):
        store.stats(t0 + 1, t0)


def test_prune_deletes_older_records_and_their_spcs(store: RecordStore, kit: Kit) -> None:
    # More than one SQLite chunk (5,000) of old records.
    t0 = kit.T0
    store.insert_many([kit.rec(i, ts=t0 - 100 - i / 1000) for i in range(12_001)])
    store.insert_many([kit.rec(i, ts=t0 + i) for i in range(3)])
    assert 12_001 == store.prune(t0)
    assert ["req-2", "req-1", "req-0"] == kit.ids(kit.every(store))
    assert [{"spc": "1234", "count": 3}] == store.stats(None, None)["top_spc"]
    assert 0 == store.prune(t0)


# -- the writer on every backend ---------------------------------------------------------------

FAST = RecordSettings(flush_interval=0.01)


async def test_writer_drops_only_the_record_the_store_refuses(
    store: RecordStore, kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """A record no retry can store (here a sip_code past 64 bits) is found by writing its
    batch in halves, dropped and logged; the rest of its batch, and what follows, is written."""
    writer = RecordWriter(store, RecordSettings(batch_size=16, flush_interval=0.01))
    await writer.start()
    for i in range(40):
        await writer.submit(kit.rec(i, sip_code=2**70) if i in (5, 23) else kit.rec(i))
    await writer.close()
    assert (38, 2, 2) == (writer.written, writer.dropped, writer.rejected)
    expected = sorted(f"req-{i}" for i in range(40) if i not in (5, 23))
    assert expected == sorted(kit.ids(kit.every(store)))
    refused = [r for r in caplog.records if r.getMessage() == "record_rejected"]
    assert ["req-5", "req-23"] == [getattr(r, "request_id", None) for r in refused]
    assert writer.healthy is False  # an error was logged: /readyz says so for a while


async def test_writer_flushes_a_partial_batch_after_the_interval(
    store: RecordStore, kit: Kit
) -> None:
    writer = RecordWriter(store, FAST)
    await writer.start()
    await writer.submit(kit.rec(1))
    for _ in range(200):
        if writer.written:
            break
        await asyncio.sleep(0.01)
    assert ["req-1"] == kit.ids(kit.every(store))
    await writer.close()


async def test_writer_drains_on_close(store: RecordStore, kit: Kit) -> None:
    writer = RecordWriter(store, RecordSettings())
    await writer.start()
    for i in range(5000):
        await writer.submit(kit.rec(i))
    await writer.close()
    assert (5000, 0) == (writer.written, writer.dropped)
    assert 5000 == store.stats(None, None)["total"]


async def test_writer_never_started_drains_on_close(store: RecordStore, kit: Kit) -> None:
    writer = RecordWriter(store, RecordSettings())
    for i in range(10):
        await writer.submit(kit.rec(i))
    assert 10 == writer.queue_depth
    await writer.close()
    assert 10 == len(kit.every(store))


async def test_back_pressure_waits_for_room(store: RecordStore, kit: Kit) -> None:
    writer = RecordWriter(store, RecordSettings(queue_size=3, flush_interval=0))
    for i in range(3):
        await writer.submit(kit.rec(i))
    late = asyncio.create_task(writer.submit(kit.rec(3)))
    await asyncio.sleep(0.05)
    assert not late.done()  # the queue is full and nothing writes yet
    await writer.start()
    await asyncio.wait_for(late, 5)
    await writer.close()
    assert (4, 0) == (writer.written, writer.dropped)


async def test_back_pressure_is_bounded_by_submit_timeout(store: RecordStore, kit: Kit) -> None:
    writer = RecordWriter(store, RecordSettings(queue_size=1, submit_timeout=0.05))
    await writer.submit(kit.rec(0))
    await asyncio.wait_for(writer.submit(kit.rec(1)), 5)
    assert (1, 1) == (writer.queue_depth, writer.dropped)
    await writer.close()
    assert ["req-0"] == kit.ids(kit.every(store))


async def test_drop_mode_counts_drops(store: RecordStore, kit: Kit) -> None:
    writer = RecordWriter(store, RecordSettings(queue_size=5, overflow="drop"))
    for i in range(8):
        await writer.submit(kit.rec(i))
    assert (5, 3) == (writer.queue_depth, writer.dropped)
    await writer.close()
    assert (5, 3) == (writer.written, writer.dropped)
    assert 5 == len(kit.every(store))


async def test_close_is_idempotent_and_later_submits_are_counted(
    store: RecordStore, kit: Kit
) -> None:
    writer = RecordWriter(store, FAST)
    await writer.start()
    await writer.submit(kit.rec(1))
    await asyncio.gather(writer.close(), writer.close())
    await writer.close()
    await writer.submit(kit.rec(2))
    assert (1, 1) == (writer.written, writer.dropped)
    with pytest.raises(RuntimeError, match="closed"):
        await writer.start()


async def test_writer_prunes_by_retention(store: RecordStore, kit: Kit) -> None:
    t0 = kit.T0
    clock = Clock(t0 + 10 * 86400)
    store.insert_many([kit.rec(0, ts=t0 - 1), kit.rec(1, ts=t0 + 1), kit.rec(2, ts=t0 + 9 * 86400)])
    writer = RecordWriter(store, RecordSettings(retention_days=10), clock=clock)
    await writer.start()
    for _ in range(500):
        if writer.pruned:
            break
        await asyncio.sleep(0.01)
    await writer.close()
    assert 1 == writer.pruned
    assert ["req-2", "req-1"] == kit.ids(kit.every(store))


async def test_reads_run_while_the_writer_writes(store: RecordStore, kit: Kit) -> None:
    writer = RecordWriter(store, RecordSettings(batch_size=50, flush_interval=0))
    await writer.start()
    seen: list[int] = []
    for i in range(1000):
        await writer.submit(kit.rec(i))
        if i % 100 == 0:
            stats = await asyncio.to_thread(store.stats, None, None)
            seen.append(stats["total"])
    await writer.close()
    assert seen == sorted(seen)
    assert 1000 == store.stats(None, None)["total"]


# -- the SQLite store --------------------------------------------------------------------------


def test_open_creates_dir_and_file_with_modes(tmp_path: Path, kit: Kit) -> None:
    data = tmp_path / "a" / "data"
    store = SqliteRecordStore.open(data)
    try:
        store.insert_many([kit.rec()])
        assert 0o700 == stat.S_IMODE(data.stat().st_mode)
        assert 0o600 == stat.S_IMODE((data / DB_NAME).stat().st_mode)
        assert 0o600 == stat.S_IMODE((data / f"{DB_NAME}-wal").stat().st_mode)
    finally:
        store.close()


def test_wal_mode_and_schema_version(lite: SqliteRecordStore) -> None:
    conn = sqlite3.connect(lite.path)
    try:
        assert "wal" == conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert 1 == conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert {"records", "record_spc", "records_orig", "records_dest", "records_ts"} <= tables


def test_reopen_keeps_records(tmp_path: Path, kit: Kit) -> None:
    first = SqliteRecordStore.open(tmp_path)
    first.insert_many([kit.rec(1), kit.rec(2)])
    first.close()
    first.close()  # idempotent
    second = SqliteRecordStore.open(tmp_path)
    try:
        assert ["req-2", "req-1"] == kit.ids(second.query(RecordQuery())[0])
    finally:
        second.close()


def test_open_existing_without_create_reads(lite: SqliteRecordStore, kit: Kit) -> None:
    lite.insert_many([kit.rec(1)])
    reader = SqliteRecordStore.open(lite.path.parent, create=False)
    try:
        assert ["req-1"] == kit.ids(reader.query(RecordQuery())[0])
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
    tmp_path_factory: pytest.TempPathFactory, kit: Kit, batch: list[Record]
) -> None:
    """SQLite: any double, any text (NULs and all, lone surrogates aside), any 64-bit code."""
    store = SqliteRecordStore.open(tmp_path_factory.mktemp("exact"))
    try:
        store.insert_many(batch)
        got = {r.request_id: r for r in kit.every(store)}
    finally:
        store.close()
    assert {r.request_id: r for r in batch} == got


# -- the writer, with stores that misbehave on purpose -----------------------------------------


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


async def test_writer_writes_in_batches(tmp_path: Path, kit: Kit) -> None:
    store = _open(CountingStore, tmp_path)
    assert isinstance(store, CountingStore)
    store.batches = []
    writer = RecordWriter(store, RecordSettings(batch_size=100, flush_interval=5.0))
    await writer.start()
    for i in range(250):
        await writer.submit(kit.rec(i))
    await writer.close()
    store.close()
    assert [100, 100, 50] == store.batches
    assert (250, 0, 0) == (writer.written, writer.dropped, writer.queue_depth)


async def test_offer_queues_only_what_needs_no_waiting(lite: SqliteRecordStore, kit: Kit) -> None:
    """offer() is submit() without a coroutine: it queues while there is room and leaves
    a full queue, or a closed writer, to submit() (which waits, or drops and counts)."""
    writer = RecordWriter(lite, RecordSettings(queue_size=2, submit_timeout=0.05))
    assert [True, True, False] == [writer.offer(kit.rec(i)) for i in range(3)]
    assert (2, 0) == (writer.queue_depth, writer.dropped)
    await writer.start()
    await writer.close()
    assert not writer.offer(kit.rec(9))
    assert (2, 0) == (writer.written, writer.dropped)
    assert ["req-0", "req-1"] == sorted(kit.ids(kit.every(lite)))


async def test_write_errors_are_retried_without_loss(tmp_path: Path, kit: Kit) -> None:
    store = _open(FlakyStore, tmp_path)
    assert isinstance(store, FlakyStore)
    store.failures = 3
    clock = Clock(kit.T0)
    writer = RecordWriter(store, FAST, clock=clock)
    await writer.start()
    for i in range(20):
        await writer.submit(kit.rec(i))
    for _ in range(500):
        if writer.write_errors:
            break
        await asyncio.sleep(0.01)
    assert not writer.healthy
    await writer.close()
    store.close()
    assert (20, 0, 3) == (writer.written, writer.dropped, writer.write_errors)
    assert "OperationalError: database is locked" == writer.last_error
    assert 20 == len(kit.every(store))
    assert not writer.healthy  # within HEALTH_WINDOW of the last error
    clock.now += RecordWriter.HEALTH_WINDOW
    assert writer.healthy


async def test_close_gives_up_on_a_dead_store_after_close_timeout(tmp_path: Path, kit: Kit) -> None:
    store = _open(FlakyStore, tmp_path)
    assert isinstance(store, FlakyStore)
    store.failures = 10**9
    writer = RecordWriter(store, RecordSettings(close_timeout=0.2, flush_interval=0))
    for i in range(7):
        await writer.submit(kit.rec(i))
    await asyncio.wait_for(writer.close(), 5)
    store.close()
    assert (0, 7) == (writer.written, writer.dropped)
    assert writer.write_errors >= 1
    assert not writer.healthy


# -- verifier records: a data directory or a database ------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def source(request: pytest.FixtureRequest, tmp_path: Path, kit: Kit) -> Iterator[list[str]]:
    """``verifier records`` options that read the ``mixed`` records, from a data directory
    or from PostgreSQL."""
    if request.param == "postgres":
        from verifier.records.postgres import PostgresRecordStore

        url: str = request.getfixturevalue("schema_url")
        store: RecordStore = PostgresRecordStore.open(url)
        where = ["--database-url", url]
    else:
        store = SqliteRecordStore.open(tmp_path / "data")
        where = ["--data-dir", str(tmp_path / "data")]
    fill_mixed(store, kit)
    yield where
    store.close()


def test_cli_lists_newest_first_with_a_cursor(
    source: list[str], kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 0 == kit.run(["records", *source, "--orig", "111", "--limit", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert 3 == len(lines)
    assert lines[0].startswith("2027-01-15T08:00:04Z native TN-Validation-Passed attest=A")
    assert "orig=111 dest=900 origid=x spc=BBBB action=accept request_id=req-4" in lines[0]
    assert "request_id=req-1" in lines[1]
    assert lines[2].startswith("next cursor: ")
    cursor = lines[2].split(": ", 1)[1]
    assert 0 == kit.run(["records", *source, "--orig", "111", "--cursor", cursor])
    lines = capsys.readouterr().out.splitlines()
    assert 1 == len(lines)
    assert "request_id=req-0" in lines[0]


def test_cli_json(source: list[str], kit: Kit, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == kit.run(["records", *source, "--spc", "AAAA", "--json"])
    body = json.loads(capsys.readouterr().out)
    assert ["req-2", "req-0"] == [r["request_id"] for r in body["records"]]
    assert ["AAAA", "BBBB"] == body["records"][0]["spc"]
    assert None is body["next_cursor"]


def test_cli_stats(source: list[str], kit: Kit, capsys: pytest.CaptureFixture[str]) -> None:
    since = "2027-01-15T08:00:01Z"
    assert 0 == kit.run(["records", *source, "--stats", "--since", since])
    stats = json.loads(capsys.readouterr().out)
    assert (kit.T0 + 1, None, 4) == (stats["since"], stats["until"], stats["total"])
    assert [{"spc": "BBBB", "count": 3}, {"spc": "AAAA", "count": 1}] == stats["top_spc"]


def test_cli_csv(source: list[str], kit: Kit, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == kit.run(["records", *source, "--csv", "--dest", "900"])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out, newline="")))
    assert list(CSV_COLUMNS) == rows[0]
    assert ["req-4", "req-2", "req-0"] == [row[2] for row in rows[1:]]


def test_cli_matches_numbers_in_any_notation(
    lite: SqliteRecordStore, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    lite.insert_many([kit.rec(1, orig="12155551000")])
    argv = ["records", "--data-dir", str(lite.path.parent), "--json", "--orig", "+1 215-555-1000"]
    assert 0 == kit.run(argv)
    assert ["req-1"] == [r["request_id"] for r in json.loads(capsys.readouterr().out)["records"]]


def test_cli_csv_has_every_match(
    lite: SqliteRecordStore, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    lite.insert_many([kit.rec(i, label="=cmd()" if i == 0 else None) for i in range(1500)])
    argv = ["records", "--data-dir", str(lite.path.parent), "--csv", "--since", str(kit.T0)]
    assert 0 == kit.run([*argv, "--limit", "10"])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out, newline="")))
    assert list(CSV_COLUMNS) == rows[0]
    assert 1501 == len(rows)
    assert ("req-1499", "req-0") == (rows[1][2], rows[-1][2])
    assert "'=cmd()" == rows[-1][CSV_COLUMNS.index("label")]


@pytest.fixture
def data_dir(lite: SqliteRecordStore, kit: Kit) -> str:
    """A data directory holding the ``mixed`` records, its store still open."""
    fill_mixed(lite, kit)
    return str(lite.path.parent)


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
    data_dir: str,
    kit: Kit,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert 2 == kit.run(["records", "--data-dir", data_dir, *extra])
    assert message in capsys.readouterr().err


def test_cli_missing_data_dir(tmp_path: Path, kit: Kit, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-dir"
    assert 2 == kit.run(["records", "--data-dir", str(missing)])
    assert f"no records in {missing}/" in capsys.readouterr().err
    assert not missing.exists()


def test_cli_output_modes_are_exclusive(data_dir: str, kit: Kit) -> None:
    assert 2 == kit.run(["records", "--data-dir", data_dir, "--csv", "--json"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_cli_reads_a_directory_it_cannot_write(
    data_dir: str, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    # WAL readers need the -shm file; it exists while the service's connection is open.
    os.chmod(data_dir, 0o500)
    try:
        assert 0 == kit.run(["records", "--data-dir", data_dir, "--json"])
    finally:
        os.chmod(data_dir, 0o700)
    assert 5 == len(json.loads(capsys.readouterr().out)["records"])
