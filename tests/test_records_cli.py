"""``verifier records``: listing, cursors, JSON, CSV and statistics read from a data
directory or from PostgreSQL (the ``source`` fixture), and its usage errors."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from verifier.records import CSV_COLUMNS, RecordStore, SqliteRecordStore

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

    Kit = type[RecordKit]


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
    kit.fill_mixed(store)
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


@pytest.mark.parametrize("mode", [["--csv"], ["--limit", "1000"]])
def test_cli_output_cut_short_by_its_reader_exits_quietly(
    lite: SqliteRecordStore, kit: Kit, mode: list[str]
) -> None:
    """Issue 15 item 5: ``verifier records ... | head`` ends without a traceback."""
    lite.insert_many([kit.rec(i) for i in range(3000)])
    argv = ["records", "--data-dir", str(lite.path.parent), "--since", str(kit.T0), *mode]
    with subprocess.Popen(
        [sys.executable, "-m", "verifier", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline()  # what `head -1` reads, then it leaves
        process.stdout.close()
        err = process.stderr.read()
        code = process.wait(timeout=60)
    assert (b"", 1) == (err, code)


@pytest.fixture
def data_dir(lite: SqliteRecordStore, kit: Kit) -> str:
    """A data directory holding the ``mixed`` records, its store still open."""
    kit.fill_mixed(lite)
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


@pytest.mark.parametrize(("backend", "version"), [("sqlite", 3), ("sqlite", 1), ("postgres", 3)])
def test_cli_reads_a_store_the_service_has_not_upgraded_yet(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    kit: Kit,
    capsys: pytest.CaptureFixture[str],
    backend: str,
    version: int,
) -> None:
    """After an upgrade of the package, before the service restarts and migrates its store,
    `verifier records` reads the old schema: the columns it lacks read as empty."""
    absent = ["signers"] + (["identity"] if version < 2 else [])
    if backend == "postgres":
        import psycopg

        from verifier.records.postgres import PostgresRecordStore

        url: str = request.getfixturevalue("schema_url")
        store: RecordStore = PostgresRecordStore.open(url)
        kit.fill_mixed(store)
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            for column in absent:
                conn.execute(f"ALTER TABLE records DROP COLUMN {column}")
            conn.execute("DELETE FROM verifier_schema_migrations WHERE version > %s", (version,))
        where = ["--database-url", url]
    else:
        import sqlite3

        store = SqliteRecordStore.open(tmp_path / "data")
        kit.fill_mixed(store)
        store.close()
        with sqlite3.connect(tmp_path / "data" / "records.sqlite3") as conn:
            for column in absent:
                conn.execute(f"ALTER TABLE records DROP COLUMN {column}")
            conn.execute(f"PRAGMA user_version = {version}")
        where = ["--data-dir", str(tmp_path / "data")]
    assert 0 == kit.run(["records", *where, "--json"])
    records = json.loads(capsys.readouterr().out)["records"]
    assert [f"req-{i}" for i in range(4, -1, -1)] == [r["request_id"] for r in records]


def test_cli_says_in_one_line_when_the_records_cannot_be_read(
    tmp_path: Path, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    store = SqliteRecordStore.open(tmp_path / "data")
    store.close()
    with sqlite3.connect(tmp_path / "data" / "records.sqlite3") as conn:
        conn.execute("DROP TABLE records")  # a damaged store
    assert 1 == kit.run(["records", "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert "verifier: error: the records could not be read: no such table" in err
    assert "Traceback" not in err and 1 == len(err.splitlines())
