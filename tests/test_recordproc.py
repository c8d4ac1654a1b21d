"""SQLite writes in a child process (verifier.records.child): the same store, read in this
process; refused content comes back as the child's own exception; a dead child is started
again; a batch whose answer was lost is not written twice; closing ends the child.

The store contract runs on the child-process store with the other backends in
test_records.py."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from verifier.records import (
    RecordQuery,
    RecordSettings,
    SqliteRecordStore,
    open_store,
)
from verifier.records.child import PART, ChildWriterStore

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

    Kit = type[RecordKit]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChildWriterStore]:
    s = ChildWriterStore.open_for_child(tmp_path / "data")
    yield s
    s.close()


def test_the_service_writes_through_a_child_by_default(tmp_path: Path) -> None:
    made = open_store(RecordSettings(data_dir=str(tmp_path / "a")))
    try:
        assert isinstance(made, ChildWriterStore)
    finally:
        made.close()
    plain = open_store(RecordSettings(data_dir=str(tmp_path / "b"), writer_process=False))
    try:
        assert type(plain) is SqliteRecordStore
    finally:
        plain.close()


def test_a_batch_of_several_parts_is_written_whole_and_read_here(
    store: ChildWriterStore, kit: Kit
) -> None:
    batch = [
        kit.rec(i, spc=("1234",), origid="\ud800 lone" if i == 7 else f"o{i}") for i in range(600)
    ]
    assert len(batch) > 2 * PART
    store.insert_many(batch)
    rows = kit.every(store)
    assert sorted(kit.ids(batch)) == sorted(kit.ids(rows))
    assert "\ufffd lone" == next(r.origid for r in rows if r.request_id == "req-7")
    assert 600 == store.stats(None, None)["total"]
    assert store._child is not None and store._child.poll() is None  # one child, still up
    assert 600 == store.prune(kit.rec(10_000).ts)
    assert [] == kit.every(store)


def test_refused_content_is_the_childs_exception_and_isolated_by_the_writer(
    store: ChildWriterStore, kit: Kit
) -> None:
    with pytest.raises(OverflowError):
        store.insert_many([kit.rec(1), kit.rec(2, sip_code=2**70)])
    assert store.rejects(OverflowError())
    assert [] == kit.every(store)  # all or none


def test_a_dead_child_is_started_again_and_nothing_is_lost(
    store: ChildWriterStore, kit: Kit
) -> None:
    store.insert_many([kit.rec(1)])
    first = store._child
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    store.insert_many([kit.rec(2)])
    assert store._child is not None and store._child.pid != first.pid
    assert ["req-1", "req-2"] == sorted(kit.ids(kit.every(store)))


def test_a_batch_whose_answer_was_lost_is_not_written_twice(
    store: ChildWriterStore, kit: Kit
) -> None:
    batch = [kit.rec(i) for i in range(5)]
    store.insert_many(batch)
    store._unsure = batch  # as after a child that died between its commit and its answer
    store.insert_many(batch)  # the writer's retry of the same batch
    assert 5 == len(kit.every(store))
    other = [kit.rec(i) for i in range(5, 8)]
    store._unsure = other  # sent, and never committed: the retry writes it
    store.insert_many(other)
    assert 8 == len(kit.every(store)) == store.stats(None, None)["total"]  # rollups too


def test_the_childs_death_mid_batch_marks_the_batch_for_a_check(
    store: ChildWriterStore, kit: Kit
) -> None:
    store.insert_many([kit.rec(0)])
    child = store._child
    assert child is not None and child.stdin is not None
    child.stdin.close()  # the channel breaks while the next batch is sent
    batch = [kit.rec(i) for i in range(1, 4)]
    with pytest.raises(OSError):
        store.insert_many(batch)
    store.insert_many(batch)
    assert 4 == len(kit.every(store))


def test_closing_ends_the_child(tmp_path: Path, kit: Kit) -> None:
    s = ChildWriterStore.open_for_child(tmp_path / "data")
    s.insert_many([kit.rec(1)])
    child = s._child
    assert child is not None
    s.close()
    assert child.poll() is not None
    assert ["req-1"] == kit.ids(
        list(SqliteRecordStore.open(tmp_path / "data").query(RecordQuery())[0])
    )
    with pytest.raises(RuntimeError):
        s.insert_many([kit.rec(2)])


def test_the_child_runs_below_the_service(tmp_path: Path, kit: Kit) -> None:
    """records.writer_nice: where the writer and the service compete for a core, answering
    calls goes first."""
    s = open_store(RecordSettings(data_dir=str(tmp_path / "data"), writer_nice=7))
    try:
        assert isinstance(s, ChildWriterStore)
        s.insert_many([kit.rec(1)])
        assert s._child is not None
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert min(ours + 7, 19) == os.getpriority(os.PRIO_PROCESS, s._child.pid)
    finally:
        s.close()
