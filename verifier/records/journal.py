"""Journal: the records the store cannot take now, on local disk until it can.

The :class:`~verifier.records.RecordWriter` spills a record here instead of queueing it when
its queue is past the high-water mark, when the store is failing, or while the journal is
not empty (so that records reach the store in the order they came). It replays the journal
into the store, oldest first, when the store answers again and at the next start.

Layout, in ``<data_dir>/journal/<slot>/``: ``<generation>.jnl``, one JSON record a line,
appended only; ``position``, the replay position (which generation, which byte offset, and
the ranges whose write may have committed unacknowledged), replaced atomically; ``lock``,
held (``flock``) by the one process using the slot, so that ``--workers`` processes sharing
``data_dir`` each take a slot of their own. JSON lines because a torn last line (SIGKILL) is
recognisable and the file is readable by hand; the few hundred bytes a record costs bound
the journal's size, not the rate.

Durability: appends are buffered in memory and written and fsync'd together by
:meth:`Journal.sync`, which the writer calls every ``journal_fsync_interval``; a SIGKILL
loses at most the records appended since the last sync. A line cut by the kill is dropped
when the slot is opened again.

Order: records are replayed in the order they were journaled; the queue is written before
the journal, and a batch from the queue whose write fails is journaled with the queue behind
it after what the journal held already.

Exactly once: a batch read from the journal is marked "unsure" in ``position`` before it is
written to the store, and the mark is removed with the position's advance once it is. A
range still marked when it is replayed (the process died between the commit and the mark's
removal; or a batch taken from the queue, whose write failed, spilled here) is looked up in
the store first by its first record's ``(ts, request_id)``: a batch is one transaction, so
that record is there only if the whole batch is.

Bound: the generation file grows until the replay catches up with it, then a new generation
starts and the old file is deleted; past ``max_bytes`` (file and buffer) nothing more is
appended and the writer drops (counted, logged, shown by ``/readyz``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .model import FIELDS, Record, RecordSettings

__all__ = ["Journal", "open_journal"]

log = logging.getLogger(__name__)

_MAX_SLOTS = 256


def _encode(record: Record) -> bytes:
    values = record.to_dict()
    if record.chain is not None:
        values["chain"] = record.chain
    if record.chains is not None:
        values["chains"] = record.chains
    # ensure_ascii: lone surrogates travel as escapes and come back as they were.
    return json.dumps(values, separators=(",", ":"), allow_nan=True).encode() + b"\n"


_ADDED = {"identity", "chain", "signers", "chains"}
"""Fields that a journal written by an earlier version lacks (they default to None)."""


def _decode(line: bytes) -> Record:
    values = json.loads(line)
    if not isinstance(values, dict) or not set(FIELDS) - _ADDED <= set(values) <= {
        *FIELDS,
        *_ADDED,
    }:
        raise ValueError("not a record")
    values["spc"] = tuple(values["spc"])
    return Record(**values)


def open_journal(settings: RecordSettings) -> Journal | None:
    """The service's journal in ``settings.data_dir``; None when ``journal_max_bytes`` is 0,
    or when the directory cannot be written (logged as an error: the writer then works as
    without a journal, rather than the service refusing to start). Blocking."""
    if not settings.journal_max_bytes:
        return None
    try:
        return Journal.open(settings.data_dir, settings.journal_max_bytes)
    except OSError as exc:
        log.error("records_journal_unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """One process's spill file of records. Get one from :meth:`Journal.open`.

    :meth:`append` is for the event loop's thread (no I/O: it fills a buffer); the other
    methods do blocking I/O (call them from a worker thread); a lock serialises them.
    """

    def __init__(self, directory: Path, lock_file: IO[bytes], max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock_file = lock_file
        self._lock = threading.Lock()
        """Held for file I/O (in a worker thread)."""
        self._buf_lock = threading.Lock()
        """Held for moments only, so that :meth:`append` never waits for the disk."""
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._writing = 0
        """Bytes taken from the buffer and being written."""
        self._generation = 0
        self._offset = 0
        """Where the replay is: bytes of the generation file already in the store."""
        self._size = 0
        """Bytes of the generation file written (and fsync'd)."""
        self._unsure: list[tuple[int, int]] = []
        self._file: IO[bytes] | None = None
        self._full = False
        self.waiting_records = 0
        """Records not yet replayed (those of lines that are not records included)."""
        self.appended = 0
        self.replayed = 0

    @classmethod
    def open(cls, data_dir: str | Path, max_bytes: int) -> Journal:
        """The first free slot of ``<data_dir>/journal`` (created mode 0700), locked for
        this process, its torn last line cut and older generations deleted.

        Raises:
            OSError: the directory cannot be created or written; or every slot is taken.
        """
        base = Path(data_dir) / "journal"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        for slot in range(_MAX_SLOTS):
            directory = base / str(slot)
            directory.mkdir(mode=0o700, exist_ok=True)
            lock_file = (directory / "lock").open("ab")
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock_file.close()
                continue
            journal = cls(directory, lock_file, max_bytes)
            try:
                journal._recover()
            except BaseException:
                lock_file.close()
                raise
            return journal
        raise OSError(f"{base}: all {_MAX_SLOTS} journal slots are in use")

    # -- state -----------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """Nothing waits to be replayed (neither on disk nor in the buffer)."""
        return self._offset >= self._size and not self._buffer and not self._writing

    @property
    def size(self) -> int:
        """Bytes held: the generation file and the buffer."""
        return self._size + self._writing + self._buffered

    @property
    def waiting(self) -> int:
        """Bytes not yet replayed into the store (on disk and in the buffer)."""
        return self.size - self._offset

    @property
    def buffered(self) -> int:
        """Records appended and not yet written and fsync'd."""
        return len(self._buffer)

    @property
    def full(self) -> bool:
        """A record was refused for want of room, and no room was made since."""
        return self._full

    def _path(self, generation: int) -> Path:
        return self.directory / f"{generation:012d}.jnl"

    def _recover(self) -> None:
        position = self.directory / "position"
        with contextlib.suppress(FileNotFoundError):
            state = json.loads(position.read_bytes())
            self._generation = int(state["generation"])
            self._offset = int(state["offset"])
            self._unsure = [(int(a), int(b)) for a, b in state["unsure"]]
        generations = sorted(int(p.stem) for p in self.directory.glob("*.jnl") if p.stem.isdigit())
        for generation in generations:
            if generation < self._generation:
                self._path(generation).unlink()  # replayed before the last start
        later = [g for g in generations if g > self._generation]
        if later:  # a new generation was started, its position not yet written
            self._path(self._generation).unlink(missing_ok=True)
            self._generation, self._offset, self._unsure = later[0], 0, []
            for extra in later[1:]:  # cannot happen: one generation is started at a time
                log.error("journal_generation_ignored", extra={"file": str(self._path(extra))})
        path = self._path(self._generation)
        self._file = path.open("ab")
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the line a kill cut short: never fsync'd whole, never replayed
            log.warning("journal_torn_line", extra={"bytes": len(data) - end})
            os.truncate(path, end)
        self._size = end
        self._offset = min(self._offset, end)
        self.waiting_records = data.count(b"\n", self._offset, end)
        if not self.empty:
            log.info(
                "journal_found",
                extra={"directory": str(self.directory), "bytes": self._size - self._offset},
            )

    def _write_position(self) -> None:
        """Replace ``position`` atomically (write, fsync, rename, fsync the directory)."""
        tmp = self.directory / "position.tmp"
        state = {"generation": self._generation, "offset": self._offset, "unsure": self._unsure}
        with tmp.open("wb") as f:
            f.write(json.dumps(state).encode())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.directory / "position")
        _fsync_dir(self.directory)

    # -- writing ---------------------------------------------------------------------------

    def append(self, record: Record) -> bool:
        """Buffer ``record`` for the next :meth:`sync`; False (nothing kept) when full."""
        line = _encode(record)
        with self._buf_lock:
            if self.size + len(line) > self.max_bytes:
                self._full = True
                return False
            self._buffer.append(line)
            self._buffered += len(line)
            self.appended += 1
            self.waiting_records += 1
        return True

    def sync(self) -> None:
        """Write the buffer to the generation file and fsync it."""
        with self._lock:
            self._sync()

    def _take(self) -> list[bytes]:
        with self._buf_lock:
            lines, self._buffer = self._buffer, []
            self._writing += self._buffered
            self._buffered = 0
        return lines

    def _sync(self, lines: list[bytes] | None = None) -> None:
        if lines is None:
            lines = self._take()
        if not lines or self._file is None:
            return
        data = b"".join(lines)
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            with self._buf_lock:
                self._writing = 0
        self._size += len(data)

    def spill(self, batch: Sequence[Record], rest: Sequence[Record]) -> int:
        """Write ``batch`` (a write of it failed, and may have committed: it is marked
        unsure) and ``rest`` after what the journal holds on disk, then what was appended
        meanwhile; fsync'd. Returns how many of ``batch`` and ``rest`` did not fit."""
        with self._lock:
            newer = self._take()
            start = self._size
            lines = [_encode(r) for r in (*batch, *rest)]
            room = self.max_bytes - self.size
            kept = 0
            for line in lines:
                if len(line) > room:
                    break
                room -= len(line)
                kept += 1
            with self._buf_lock:
                self._writing += sum(len(line) for line in lines[:kept])
                self.waiting_records += kept
            self.appended += kept
            self._full = self._full or kept < len(lines)
            self._sync([*lines[:kept], *newer])
            if batch and kept >= len(batch):
                end = start + sum(len(line) for line in lines[: len(batch)])
                self._unsure.append((start, end))
                self._write_position()
            return len(lines) - kept

    # -- replaying -------------------------------------------------------------------------

    def next_batch(self, limit: int) -> tuple[list[Record], int, bool]:
        """The oldest records not yet replayed (at most ``limit``, or exactly one unsure
        range), after syncing the buffer: ``(records, end offset, unsure)``. The batch is
        marked unsure in ``position`` before it is returned. Lines that are not records
        are skipped and logged (and no longer counted as waiting)."""
        with self._lock:
            self._sync()
            start = self._offset
            unsure = next((r for r in self._unsure if r[0] == start), None)
            stop = self._size if unsure is None else unsure[1]
            for a, _b in self._unsure:
                if start < a < stop:
                    stop = a  # a batch never runs into an unsure range
            records: list[Record] = []
            end = start
            with self._path(self._generation).open("rb") as f:
                f.seek(start)
                while end < stop and (unsure is not None or len(records) < limit):
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        break
                    end += len(line)
                    try:
                        records.append(_decode(line))
                    except (ValueError, TypeError) as exc:
                        with self._buf_lock:
                            self.waiting_records -= 1
                        log.error("journal_bad_line", extra={"offset": end, "error": str(exc)})
            if unsure is None and records:
                self._unsure.append((start, end))
                self._write_position()
            return records, end, unsure is not None

    def done(self, end: int, count: int) -> None:
        """The batch up to ``end`` is in the store: advance the position past it; once
        everything is replayed, start a new generation and delete the old file."""
        with self._lock:
            self._unsure = [r for r in self._unsure if r[0] >= end]
            self._offset = end
            self.replayed += count
            with self._buf_lock:
                self.waiting_records -= count
            if self.empty and self._file is not None:
                old = self._path(self._generation)
                self._file.close()
                self._generation += 1
                self._offset = self._size = 0
                self._unsure = []
                self._full = False
                with self._buf_lock:
                    self.waiting_records = len(self._buffer)
                self._file = self._path(self._generation).open("ab")
                self._write_position()
                old.unlink(missing_ok=True)
            else:
                self._write_position()

    def close(self) -> None:
        """Sync and release the slot. Idempotent."""
        with self._lock:
            if self._file is not None:
                self._sync()
                self._file.close()
                self._file = None
            self._lock_file.close()

    def describe(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "bytes": self.size, "empty": self.empty}
