"""verifier.records.writer: RecordWriter batches, back-pressure, drops, retries, pruning and
closing, on every backend (the ``record_store`` fixture), then with SQLite stores that fail
on purpose or note their batch sizes."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from verifier.records import Record, RecordSettings, RecordStore, RecordWriter, SqliteRecordStore

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

    Kit = type[RecordKit]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(record_store: RecordStore) -> RecordStore:
    return record_store


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
