"""verifier.records.journal and the RecordWriter's use of it: records spill to local disk
instead of waiting for the store, and come back in order, exactly once, when it answers
(and at the next start). Real SQLite stores on disk; the PostgreSQL outage and the SIGKILL
of a real ``verifier serve`` are in test_pgrecords.py."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pytest_aiohttp import AiohttpClient

from verifier.core.certs import TrustStore
from verifier.http.app import create_app
from verifier.records import Record, RecordSettings, RecordWriter, SqliteRecordStore
from verifier.records.journal import Journal, open_journal
from verifier.settings import Settings
from verifier.testing import TestPKI

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

    Kit = type[RecordKit]


class DownStore(SqliteRecordStore):
    """A SQLite store whose writes fail while ``down`` is set, like a database away."""

    down = False

    def insert_many(self, records: Sequence[Record]) -> None:
        if self.down:
            raise sqlite3.OperationalError("unable to open database file")
        super().insert_many(records)


def down_store(path: Path) -> DownStore:
    SqliteRecordStore.open(path).close()
    store = DownStore.open(path)
    assert isinstance(store, DownStore)
    return store


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {seconds} s")


# -- the journal -------------------------------------------------------------------------------


def test_records_come_back_as_they_went_in_oldest_first(tmp_path: Path, kit: Kit) -> None:
    journal = Journal.open(tmp_path, 1 << 20)
    odd = kit.rec(
        1,
        origid="lone \ud800 surrogate",
        spc=("A", "B"),
        sip_code=438,
        chain="the signer's PEM",
        signers={"https://x/\ud800.pem": "cd" * 32},
        chains={"cd" * 32: "another PEM"},
    )
    for record in (kit.rec(0), odd, kit.rec(2)):
        assert journal.append(record)
    assert not journal.empty
    records, end, unsure = journal.next_batch(2)
    assert ([kit.rec(0), odd], False) == (records, unsure)
    journal.done(end, len(records))
    records, end, _ = journal.next_batch(10)
    assert [kit.rec(2)] == records
    journal.done(end, 1)
    assert journal.empty
    assert ([], False) == journal.next_batch(10)[::2]
    journal.close()


def test_a_reopened_journal_resumes_where_the_replay_was(tmp_path: Path, kit: Kit) -> None:
    journal = Journal.open(tmp_path, 1 << 20)
    for i in range(5):
        journal.append(kit.rec(i))
    records, end, _ = journal.next_batch(2)
    journal.done(end, len(records))
    journal.close()
    again = Journal.open(tmp_path, 1 << 20)
    assert ["req-2", "req-3", "req-4"] == kit.ids(again.next_batch(10)[0])
    again.close()


def test_a_line_cut_by_a_kill_is_dropped_and_the_rest_kept(tmp_path: Path, kit: Kit) -> None:
    journal = Journal.open(tmp_path, 1 << 20)
    journal.append(kit.rec(0))
    journal.append(kit.rec(1))
    journal.sync()
    (segment,) = journal.directory.glob("*.jnl")
    journal.close()
    with segment.open("ab") as f:
        f.write(b'{"ts":1.0,"request_id":"half')  # what a SIGKILL mid-write leaves
    again = Journal.open(tmp_path, 1 << 20)
    records, end, _ = again.next_batch(10)
    assert ["req-0", "req-1"] == kit.ids(records)
    again.done(end, len(records))
    again.append(kit.rec(2))
    assert ["req-2"] == kit.ids(again.next_batch(10)[0])
    again.close()


def test_a_full_journal_refuses_and_says_so(tmp_path: Path, kit: Kit) -> None:
    journal = Journal.open(tmp_path, 1000)
    taken = 0
    while journal.append(kit.rec(taken)):
        taken += 1
    assert 1 <= taken < 10
    assert journal.full
    journal.sync()
    assert taken == len(journal.next_batch(100)[0])
    journal.close()


def test_each_process_takes_a_slot_of_its_own(tmp_path: Path, kit: Kit) -> None:
    first = Journal.open(tmp_path, 1 << 20)
    second = Journal.open(tmp_path, 1 << 20)
    assert first.directory != second.directory
    first.close()
    third = Journal.open(tmp_path, 1 << 20)  # the slot let go is taken again
    assert first.directory == third.directory
    second.close()
    third.close()


# -- the writer with a journal ------------------------------------------------------------------


async def test_a_failing_store_never_makes_a_call_wait_and_loses_nothing(
    tmp_path: Path, kit: Kit
) -> None:
    """While the store fails, every record is taken at once (offer never asks for a
    submit) and goes to the journal; when the store answers, every one is written once,
    in the order they came."""
    store = down_store(tmp_path / "db")
    settings = RecordSettings(queue_size=100, batch_size=50, flush_interval=0.01)
    journal = Journal.open(tmp_path, 1 << 20)
    writer = RecordWriter(store, settings, journal=journal)
    await writer.start()
    try:
        for i in range(100):
            assert writer.offer(kit.rec(i))
        await until(lambda: writer.written == 100)
        store.down = True
        for i in range(100, 1100):
            assert writer.offer(kit.rec(i))
            if i % 100 == 0:
                await asyncio.sleep(0)  # the writer's turn: it meets the failing store
        await until(lambda: writer.write_errors >= 2)
        assert not writer.healthy
        assert writer.journaled > 0
        assert writer.queue_depth - journal.waiting_records <= settings.batch_size  # in memory
        store.down = False
        await until(lambda: writer.queue_depth == 0)  # journal included
        assert (1100, 0) == (writer.written, writer.journaled)
    finally:
        await writer.close()
    assert 0 == writer.dropped
    ids = kit.ids(kit.every(store))[::-1]  # oldest first
    assert [f"req-{i}" for i in range(1100)] == ids
    store.close()


async def test_past_the_high_water_mark_records_go_to_the_journal(tmp_path: Path, kit: Kit) -> None:
    store = down_store(tmp_path / "db")
    settings = RecordSettings(queue_size=10, journal_high_water=5, flush_interval=5.0)
    journal = Journal.open(tmp_path, 1 << 20)
    writer = RecordWriter(store, settings, journal=journal)
    for i in range(20):  # not started: nothing leaves the queue
        assert writer.offer(kit.rec(i))
    assert (20, 15, 15) == (writer.queue_depth, journal.appended, journal.waiting_records)
    await writer.close()
    assert [f"req-{i}" for i in range(20)] == kit.ids(kit.every(store))[::-1]
    store.close()


async def test_a_full_journal_drops_counts_and_logs(
    tmp_path: Path, kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    store = down_store(tmp_path / "db")
    store.down = True
    settings = RecordSettings(queue_size=1, journal_high_water=1, close_timeout=0)
    writer = RecordWriter(store, settings, journal=Journal.open(tmp_path, 2000))
    for i in range(20):
        assert writer.offer(kit.rec(i))
    assert writer.journal_full
    assert writer.dropped == writer.journal_dropped > 0
    assert "records_dropped" in caplog.text
    await writer.close()
    store.close()


async def test_what_the_store_cannot_take_by_close_is_replayed_at_the_next_start(
    tmp_path: Path, kit: Kit
) -> None:
    store = down_store(tmp_path / "db")
    store.down = True
    settings = RecordSettings(batch_size=10, flush_interval=0.01, close_timeout=0.1)
    writer = RecordWriter(store, settings, journal=Journal.open(tmp_path, 1 << 20))
    await writer.start()
    for i in range(30):
        assert writer.offer(kit.rec(i))
    await until(lambda: writer.write_errors >= 1)
    await writer.close()
    assert (0, 0) == (writer.written, writer.dropped)
    store.down = False
    again = RecordWriter(store, settings, journal=Journal.open(tmp_path, 1 << 20))
    await again.start()
    await until(lambda: again.written == 30)
    await again.close()
    assert [f"req-{i}" for i in range(30)] == kit.ids(kit.every(store))[::-1]
    store.close()


async def test_a_batch_committed_before_a_crash_is_not_written_twice(
    tmp_path: Path, kit: Kit
) -> None:
    """The process died after the store committed a journal batch and before the journal
    noted it: at the next start the batch is found in the store and skipped."""
    store = down_store(tmp_path / "db")
    journal = Journal.open(tmp_path, 1 << 20)
    for i in range(10):
        journal.append(kit.rec(i))
    records, _end, _ = journal.next_batch(4)  # marked unsure, then written...
    store.insert_many(records)
    journal.close()  # ... and the process dies before done()
    settings = RecordSettings(batch_size=4, flush_interval=0.01)
    writer = RecordWriter(store, settings, journal=Journal.open(tmp_path, 1 << 20))
    await writer.start()
    await until(lambda: writer.journaled == 0 and writer.written == 6)
    await writer.close()
    ids = kit.ids(kit.every(store))
    assert sorted(f"req-{i}" for i in range(10)) == sorted(ids)
    assert 10 == len(ids) == store.stats(None, None)["total"]  # the rollups: counted once
    store.close()


async def test_readyz_and_metrics_say_when_the_journal_drops(
    tmp_path: Path, aiohttp_client: AiohttpClient, trust: TrustStore
) -> None:
    """A journal too small for any record: the second call's record (past the high-water
    mark of 1, the first one still queued) is dropped, and /readyz and /metrics say so."""
    records = RecordSettings(
        data_dir=str(tmp_path / "data"),
        writer_process=False,
        journal_max_bytes=1,
        journal_high_water=1,
        flush_interval=5.0,
    )
    client = await aiohttp_client(create_app(Settings(records=records), trust=trust))
    for _ in range(2):
        async with client.post("/v1/verify", json={"identity": "not-a-passport"}) as resp:
            assert 200 == resp.status
    async with client.get("/readyz") as resp:
        ready = (resp.status, (await resp.json())["records"])
    async with client.get("/metrics") as resp:
        metrics = await resp.text()
    assert (200, "degraded: journal full, records are being dropped") == ready
    assert "verifier_records_journal_dropped_total 1.0" in metrics.splitlines()


def test_no_journal_when_turned_off_or_when_its_directory_cannot_be_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert open_journal(RecordSettings(data_dir=str(tmp_path), journal_max_bytes=0)) is None
    (tmp_path / "file").write_text("not a directory")
    assert open_journal(RecordSettings(data_dir=str(tmp_path / "file"))) is None
    assert "records_journal_unavailable" in caplog.text
    journal = open_journal(RecordSettings(data_dir=str(tmp_path / "data")))
    assert journal is not None
    assert (tmp_path / "data" / "journal" / "0") == journal.directory
    journal.close()


async def test_a_replayed_record_keeps_its_identity_and_chain(tmp_path: Path, kit: Kit) -> None:
    """Records spilled while the store is down reach it with their Identity header and
    the chain for the certificate table; a line journaled by the previous version (no
    such fields) still replays."""
    pki = TestPKI.create()
    chain = pki.signer.chain_pem().decode("ascii")
    fingerprint = "ab" * 32
    kept = kit.rec(0, identity="eyJ.eyJ.sig;info=<https://x/sp.pem>", fingerprint=fingerprint)
    kept.chain = chain
    store = down_store(tmp_path / "db")
    journal = Journal.open(tmp_path, 1 << 20)
    assert journal.append(kept)
    journal.sync()
    (segment,) = journal.directory.glob("*.jnl")
    journal.close()
    old = kit.rec(1).to_dict()
    del old["identity"]
    with segment.open("ab") as f:
        f.write(json.dumps(old).encode() + b"\n")
    writer = RecordWriter(
        store, RecordSettings(flush_interval=0.01), journal=Journal.open(tmp_path, 1 << 20)
    )
    await writer.start()
    await until(lambda: writer.written == 2)
    await writer.close()
    stored = {r.request_id: r for r in kit.every(store)}
    assert kept.identity == stored["req-0"].identity
    assert None is stored["req-1"].identity
    assert {fingerprint: chain} == store.chains([fingerprint, "cd" * 32])
    store.close()
