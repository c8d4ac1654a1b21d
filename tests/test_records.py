"""verifier.records: the model (records, queries, settings, CSV), the store contract on
every backend, and what only the SQLite store does.

The contract tests take ``store``, conftest's ``record_store``: one fixture run three
times, SQLite written from the writer's thread, SQLite written by a child process
(``records.writer_process``), and PostgreSQL (skipped without VERIFIER_TEST_DATABASE_URL,
in a schema of its own). The writer runs on every backend in test_recordwriter.py,
``verifier records`` in test_records_cli.py; what only one backend does is tested here
(SQLite), in test_recordproc.py (the child process) and in test_pgrecords.py (PostgreSQL).
Real databases throughout.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import ast
import contextlib
import csv
import io
import json
import sqlite3
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import records
from verifier.records import (
    CSV_COLUMNS,
    DB_NAME,
    Record,
    RecordQuery,
    RecordSettings,
    RecordStore,
    SqliteRecordStore,
    csv_header,
    to_csv_rows,
)
from verifier.records.model import FIELDS
from verifier.testing import TestPKI
from verifier.testing.pki import pem

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

    Kit = type[RecordKit]


@pytest.fixture
def store(record_store: RecordStore) -> RecordStore:
    return record_store


@pytest.fixture
def mixed(store: RecordStore, kit: Kit) -> RecordStore:
    kit.fill_mixed(store)
    return store


# -- the package -------------------------------------------------------------------------------


def test_the_record_modules_import_one_way() -> None:
    """factory -> child -> sqlite -> model, factory -> postgres -> pgschema -> model,
    sqlite and postgres -> aggregate -> rollup -> model (pgschema -> rollup too),
    writer -> journal -> model, reverify -> model, __main__ (the child's entry point) -> child:
    no module imports one above it, so there is no cycle."""
    package = Path(records.__file__).parent
    imports = {
        path.stem: {
            name  # ``from .x import y`` imports x; ``from . import x`` too
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.level == 1
            for name in ([node.module] if node.module else [a.name for a in node.names])
        }
        for path in package.glob("*.py")
        if path.stem != "__init__"
    }
    assert {
        "model": set(),
        "rollup": {"model"},
        "aggregate": {"model", "rollup"},
        "sqlite": {"aggregate", "model", "rollup"},
        "pgschema": {"model", "rollup"},
        "postgres": {"aggregate", "model", "pgschema", "rollup"},
        "child": {"model", "sqlite"},
        "writer": {"journal", "model"},
        "journal": {"model"},
        "factory": {"child", "model", "postgres", "sqlite"},
        "__main__": {"child"},
        "reverify": {"model"},
    } == imports


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
        ({"identity_max_bytes": 0}, "identity_max_bytes"),
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
        "identity": None,
        "signers": None,
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
        assert 4 == conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert {
        "records",
        "record_spc",
        "records_orig",
        "records_dest",
        "records_ts",
        "certificates",
    } <= tables


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


# -- the Identity header and the certificate table (issue 17) -------------------------------


def _chain(spc: str) -> tuple[str, str, Any]:
    """(fingerprint, chain PEM, leaf certificate) of a new test signer of ``spc``."""
    from verifier.core.certs import TrustStore

    pki = TestPKI.create(spc=spc)
    info = TrustStore([pki.root.cert]).validate(list(pki.signer.chain), time.time()).certificate
    assert info is not None
    pem_text = pki.signer.chain_pem().decode("ascii") + pem(pki.root.cert).decode("ascii")
    return info.fingerprint_sha256, pem_text, pki.signer.cert


def test_identity_and_chain_are_stored(store: RecordStore, kit: Kit) -> None:
    fp, chain, _ = _chain("AAAA")
    _, other_chain, _ = _chain("AAAA")
    identity = "eyJhbGciOiJFUzI1NiJ9.eyJvcmlnIjp7fX0.c2ln;info=<https://x/é.pem>\nsecond"
    first = kit.rec(0, spc=("AAAA",), fingerprint=fp, identity=identity, chain=chain)
    again = kit.rec(1, spc=("AAAA",), fingerprint=fp, chain=other_chain)  # the first stays
    junk = kit.rec(2, fingerprint="11" * 32, chain="not PEM")  # the record goes in alone
    store.insert_many([first])
    store.insert_many([again, junk])
    got = {r.request_id: r for r in kit.every(store)}
    assert (identity, None) == (got["req-0"].identity, got["req-0"].chain)
    assert None is got["req-1"].identity
    assert "req-2" in got
    assert identity == got["req-0"].to_dict()["identity"]
    assert "chain" not in got["req-0"].to_dict()
    assert {fp: chain} == store.chains([fp, "00" * 32, "11" * 32])
    assert {} == store.chains([])


def test_the_other_signers_and_their_chains_are_stored(store: RecordStore, kit: Kit) -> None:
    """A diverted call's div PASSporT of another provider: its x5u and fingerprint in the
    record, its chain once in the certificate table beside the signer's."""
    fp, chain, _ = _chain("AAAA")
    div_fp, div_chain, _ = _chain("BBBB")
    signers = {'https://cr.forwarder.example/sp.pem?\u00e9="': div_fp}
    diverted = kit.rec(0, fingerprint=fp, chain=chain, signers=signers, chains={div_fp: div_chain})
    again = kit.rec(1, fingerprint=fp, signers=signers)  # the chains went with the first
    store.insert_many([diverted, again])
    got = {r.request_id: r for r in kit.every(store)}
    assert (signers, signers) == (got["req-0"].signers, got["req-1"].signers)
    assert (None, None) == (got["req-0"].chains, got["req-0"].chain)
    assert {fp: chain, div_fp: div_chain} == store.chains([fp, div_fp])
    assert signers == got["req-0"].to_dict()["signers"]
    assert "chains" not in got["req-0"].to_dict()


def test_providers_name_the_latest_certificate_of_each_spc(store: RecordStore, kit: Kit) -> None:
    old_fp, old_chain, _ = _chain("AAAA")
    new_fp, new_chain, new_leaf = _chain("AAAA")
    store.insert_many(
        [
            kit.rec(0, spc=("AAAA",), fingerprint=old_fp, chain=old_chain),
            kit.rec(5, spc=("AAAA",), fingerprint=new_fp, chain=new_chain),
            kit.rec(6, spc=("AAAA",), fingerprint=None, reason="x5u_fetch_failed"),
            kit.rec(7, spc=("BBBB",), fingerprint="unrecorded"),
        ]
    )
    rows = {r["spc"]: r for r in store.providers(kit.T0, kit.T0 + 60)}
    assert {
        "fingerprint": new_fp,
        "issuer": new_leaf.issuer.rfc4514_string(),
        "not_after": new_leaf.not_valid_after_utc.timestamp(),
    } == {k: rows["AAAA"][k] for k in ("fingerprint", "issuer", "not_after")}
    assert ("unrecorded", None, None) == tuple(
        rows["BBBB"][k] for k in ("fingerprint", "issuer", "not_after")
    )
    # The window decides which is the latest.
    [early] = store.providers(kit.T0, kit.T0 + 3)
    assert old_fp == early["fingerprint"]


def test_prune_drops_certificates_expired_before_the_horizon(store: RecordStore, kit: Kit) -> None:
    fp, chain, leaf = _chain("AAAA")
    store.insert_many([kit.rec(0, fingerprint=fp, chain=chain)])
    expiry = leaf.not_valid_after_utc.timestamp()
    store.prune(expiry - 1)
    assert [fp] == list(store.chains([fp]))
    store.prune(expiry + 1)
    assert {} == store.chains([fp])


def test_csv_leaves_the_identity_out(kit: Kit) -> None:
    assert "identity" not in CSV_COLUMNS
    line = next(to_csv_rows([kit.rec(0, identity="eyJ.eyJ.sig")]))
    assert "eyJ" not in line
    assert len(CSV_COLUMNS) == len(next(csv.reader(io.StringIO(line))))


def test_a_schema_1_database_is_migrated_and_keeps_its_records(tmp_path: Path, kit: Kit) -> None:
    from verifier.records.sqlite import _MIGRATIONS

    tmp_path.joinpath("data").mkdir()
    conn = sqlite3.connect(tmp_path / "data" / DB_NAME)
    conn.executescript(_MIGRATIONS[1])
    conn.execute(
        "INSERT INTO records (ts, request_id, endpoint, verstat, spc) VALUES (?, ?, ?, ?, ?)",
        (kit.T0, "old", "atis", "TN-Validation-Passed", "[]"),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SqliteRecordStore.open(tmp_path / "data")
    try:
        store.insert_many([kit.rec(1, identity="eyJ.eyJ.sig")])
        got = {r.request_id: r.identity for r in kit.every(store)}
    finally:
        store.close()
    assert {"old": None, "req-1": "eyJ.eyJ.sig"} == got


def test_a_schema_3_database_is_upgraded_in_place_and_its_records_reverified(
    tmp_path: Path, kit: Kit, now: int
) -> None:
    """Schema 4 adds ``signers`` to a database of the previous version. Its records stay,
    without signers, and are re-verified as before (the signer's chain for the PASSporT);
    new records carry their signers."""
    from verifier.core.certs import TrustStore
    from verifier.core.verify import VerifyOptions
    from verifier.records.reverify import reverify
    from verifier.records.sqlite import _MIGRATIONS

    pki = TestPKI.create()
    pki.signer.x5u = "https://cr.example.com/sp.pem"
    trust = TrustStore([pki.root.cert])
    info = trust.validate(list(pki.signer.chain), now).certificate
    assert info is not None
    fp, identity = info.fingerprint_sha256, pki.signer.identity(iat=now)
    chain = (pki.signer.chain_pem() + pem(pki.root.cert)).decode("ascii")
    tmp_path.joinpath("data").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / DB_NAME)) as conn:
        for version in (1, 2, 3):
            conn.executescript(_MIGRATIONS[version])
        conn.execute(
            "INSERT INTO records (ts, request_id, endpoint, orig, dest, verstat, spc, x5u,"
            " fingerprint, identity) VALUES (?, 'old', 'atis', ?, ?, ?, '[]', ?, ?, ?)",
            (
                now,
                "12155551212",
                "12155551213",
                "TN-Validation-Passed",
                pki.signer.x5u,
                fp,
                identity,
            ),
        )
        conn.execute(
            "INSERT INTO certificates VALUES (?, ?, 'CN=a', 'CN=b', ?, ?)",
            (fp, now, info.certificates[0].not_valid_after_utc.timestamp(), chain),
        )
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    store = SqliteRecordStore.open(tmp_path / "data")
    try:
        store.insert_many([kit.rec(1, signers={"https://x/div.pem": fp})])
        got = {r.request_id: r for r in kit.every(store)}
        chains = store.chains([fp])
    finally:
        store.close()
    assert (identity, None) == (got["old"].identity, got["old"].signers)
    assert {"https://x/div.pem": fp} == got["req-1"].signers
    [item] = reverify([got["old"]], chains, trust, VerifyOptions())
    assert ("same", "TN-Validation-Passed") == (item.status, item.verstat)
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / DB_NAME)) as conn:
        assert 4 == conn.execute("PRAGMA user_version").fetchone()[0]
