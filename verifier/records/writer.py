"""RecordWriter: the service's records, written to a store in batches off the hot path.

Failure model, with a :class:`~verifier.records.journal.Journal` (the service always gives
one): a call never waits for the store. Past the queue's high-water mark, or while the store
fails, records go to the journal on local disk and are replayed into the store, in order
and exactly once, when it answers again (and at the next start); only a full journal drops
records (counted in :attr:`RecordWriter.dropped`, logged). Without a journal, the writer
keeps a failed batch and retries it with backoff while the bounded queue fills and then
pushes back on :meth:`RecordWriter.submit` (``overflow = "wait"``, bounded by
``submit_timeout``) or drops (``overflow = "drop"``). :meth:`RecordWriter.close` drains the
queue (with a journal, what the store cannot take by ``close_timeout`` stays journaled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .journal import Journal
from .model import Record, RecordQuery, RecordSettings, RecordStore

__all__ = ["RecordWriter"]

log = logging.getLogger(__name__)

_DAY = 86400.0


class RecordWriter:
    """Writes submitted records to a store in batches from one task, off the hot path.

    Use it as ``await writer.start()`` ... ``await writer.close()`` on a running loop. It
    does not own the store: close the store after the writer.

    With ``journal``, records spill to it instead of waiting (the module's failure model);
    the writer closes it.

    Counters (for metrics): ``written``, ``dropped`` (journal full: ``journal_dropped``
    counts those apart; without a journal, overflow in "drop" mode or a "wait" past
    ``submit_timeout``; submitted after close, given up at close, or refused by the store
    for its content: ``rejected`` counts those apart), ``write_errors``
    (failed store calls, retries included), ``pruned``; ``last_error``; ``queue_depth`` and
    ``healthy`` are properties.
    """

    HEALTH_WINDOW = 30.0
    """Seconds after the last store error during which the writer reports unhealthy."""
    RETRY_FIRST = 0.05
    """First wait before retrying a failed batch; it doubles up to ``RETRY_MAX``."""
    RETRY_MAX = 5.0
    DROP_LOG_INTERVAL = 60.0
    """Drops are logged at most this often (with the count), not one line each."""

    def __init__(
        self,
        store: RecordStore,
        settings: RecordSettings,
        *,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        self.store = store
        self.journal = journal
        self._high_water = min(settings.journal_high_water, settings.queue_size)
        self.settings = settings
        self._clock = clock
        self._pending: deque[Record] = deque()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._closing = False
        self._deadline = math.inf
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._failing = False
        self._last_error_at: float | None = None
        self._drops_logged_at = -math.inf
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.rejected = 0
        self.pruned = 0
        self.journal_dropped = 0
        self.last_error: str | None = None
        self._syncer: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Records accepted and not yet written (the batch being written and the records
        in the journal included)."""
        journal = self.journal
        waiting = 0 if journal is None else journal.waiting_records
        return len(self._pending) + self._inflight + waiting

    @property
    def journal_full(self) -> bool:
        """The journal holds ``journal_max_bytes``: records are being dropped."""
        return self.journal is not None and self.journal.full

    @property
    def journaled(self) -> int:
        """Bytes in the journal waiting for the store (0 without a journal)."""
        journal = self.journal
        return 0 if journal is None else journal.waiting

    @property
    def healthy(self) -> bool:
        """False while a batch is failing, and for ``HEALTH_WINDOW`` s after a store error."""
        if self._failing:
            return False
        return self._last_error_at is None or (
            self._clock() - self._last_error_at >= self.HEALTH_WINDOW
        )

    async def start(self) -> None:
        """Start the writer task and the pruning task (the first pruning runs now).

        Raises:
            RuntimeError: the writer was closed, or no event loop is running.
        """
        if self._closing:
            raise RuntimeError("the record writer is closed")
        if self._writer is None:
            self._writer = asyncio.create_task(self._run(), name="records-writer")
            self._pruner = asyncio.create_task(self._prune_loop(), name="records-pruner")
            if self.journal is not None:
                self._syncer = asyncio.create_task(
                    self._sync_loop(self.journal), name="records-journal-sync"
                )

    def offer(self, record: Record) -> bool:
        """Take ``record`` without waiting: True when taken (queued, journaled, or dropped
        because the journal is full); False when the caller must :meth:`submit` it (no
        journal and the queue is full, or the writer closed)."""
        if self._closing:
            return False
        journal = self.journal
        if journal is not None and (
            self._failing or not journal.empty or len(self._pending) >= self._high_water
        ):
            if journal.append(record):
                if not self._pending:
                    self._wake.set()
            else:
                self.journal_dropped += 1
                self._drop(1, "journal_full")
            return True
        if len(self._pending) >= self.settings.queue_size:
            return False
        self._enqueue(record)
        return True

    def _enqueue(self, record: Record) -> None:
        self._pending.append(record)
        depth = len(self._pending)
        if depth == 1 or depth >= self.settings.batch_size:
            self._wake.set()

    async def submit(self, record: Record) -> None:
        """Queue ``record`` for writing. Never raises because of the store.

        With a journal it never waits (:meth:`offer`). Without one: with room in the
        queue it returns at once; when the queue is full, with ``overflow = "wait"`` it
        waits for room, at most ``submit_timeout`` seconds, then drops the record; with
        "drop" it drops it at once. After :meth:`close` it drops. Every drop is counted in
        :attr:`dropped`.
        """
        if self._closing:
            self._drop(1, "closed")
            return
        if self.offer(record):
            return
        if self.settings.overflow == "drop":
            self._drop(1, "queue_full")
            return
        if not await self._wait_for_space():
            self._drop(1, "closed" if self._closing else "queue_full_timeout")
            return
        self._enqueue(record)

    async def close(self) -> None:
        """Stop accepting, stop pruning, write everything queued; idempotent.

        A store that keeps failing is retried for ``close_timeout`` seconds; the records
        still queued then are counted as dropped and logged. A cancelled caller does not
        cancel the drain.
        """
        if self._closer is None:
            self._closer = asyncio.create_task(self._shutdown(), name="records-close")
        await asyncio.shield(self._closer)

    # -- internals -------------------------------------------------------------------------

    async def _wait_for_space(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.submit_timeout
        while len(self._pending) >= self.settings.queue_size:
            remaining = deadline - loop.time()
            if self._closing or remaining <= 0:
                return False
            self._space.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._space.wait()
            except TimeoutError:
                return False
        return True

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        now = self._clock()
        if now - self._drops_logged_at >= self.DROP_LOG_INTERVAL:
            self._drops_logged_at = now
            log.warning("records_dropped", extra={"why": why, "dropped_total": self.dropped})

    async def _run(self) -> None:
        settings = self.settings
        while True:
            if not self._pending:
                journal = self.journal
                if journal is not None and not journal.empty:
                    if not await self._replay(journal):
                        return  # closing, and the store did not answer in time
                    continue
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < settings.batch_size and not self._closing:
                self._wake.clear()  # set again by a full batch or close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.flush_interval):
                        await self._wake.wait()
            count = min(settings.batch_size, len(self._pending))
            batch = [self._pending.popleft() for _ in range(count)]
            self._inflight = count
            self._space.set()
            try:
                await self._write(batch, spill=True)
            finally:
                self._inflight = 0

    async def _write(self, batch: list[Record], *, spill: bool = False) -> None:
        """Write ``batch``, retrying with backoff until it is written (or, closing, until
        ``close_timeout`` has passed). With ``spill`` and a journal, a failed batch and the
        queue behind it go to the journal instead, at the first failure."""
        loop = asyncio.get_running_loop()
        delay = self.RETRY_FIRST
        attempt = 0
        while True:
            attempt += 1
            try:
                await asyncio.to_thread(self.store.insert_many, batch)
            except Exception as exc:
                if self.store.rejects(exc):
                    await self._write_apart(batch, exc)
                    return
                self._failing = True
                self._error(exc, "records_write_failed", batch=len(batch), attempt=attempt)
                if spill and self.journal is not None and await self._spill(batch):
                    return
                wait = delay
                if self._closing:
                    left = self._deadline - loop.time()
                    if left <= 0:
                        lost = len(batch) + len(self._pending)
                        self._pending.clear()
                        self.dropped += lost
                        log.error("records_lost", extra={"records": lost, "error": str(exc)})
                        return
                    wait = min(delay, left)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.RETRY_MAX)
                continue
            self._failing = False
            self.written += len(batch)
            return

    async def _spill(self, batch: list[Record]) -> bool:
        """Move ``batch`` (marked unsure) and the queue into the journal; False when the
        journal cannot be written (the batch is then retried from memory)."""
        assert self.journal is not None  # noqa: S101 - the caller checked
        rest = list(self._pending)
        self._pending.clear()
        try:
            left = await asyncio.to_thread(self.journal.spill, batch, rest)
        except OSError as exc:
            self._pending.extendleft(reversed(rest))
            self._error(exc, "journal_write_failed")
            return False
        if left:
            self.journal_dropped += left
            self._drop(left, "journal_full")
        log.warning("records_journaled", extra={"records": len(batch) + len(rest) - left})
        return True

    async def _replay(self, journal: Journal) -> bool:
        """Write the journal's oldest batch to the store (retried with backoff), then
        advance the journal past it. False when closing and ``close_timeout`` passed: the
        batch stays in the journal for the next start."""
        loop = asyncio.get_running_loop()
        delay = self.RETRY_FIRST
        attempt = 0
        records: list[Record] | None = None
        end, unsure, inserted = 0, False, False
        while True:
            attempt += 1
            try:
                if records is None:
                    records, end, unsure = await asyncio.to_thread(
                        journal.next_batch, self.settings.batch_size
                    )
                if inserted or not records:
                    pass
                elif not (unsure and await asyncio.to_thread(self._stored, records[0])):
                    await asyncio.to_thread(self.store.insert_many, records)
                    self.written += len(records)
                inserted = True
                await asyncio.to_thread(journal.done, end, len(records or ()))
            except Exception as exc:
                if records and not inserted and self.store.rejects(exc):
                    await self._write_apart(records, exc)
                    inserted = True
                    continue
                self._failing = True
                self._error(exc, "records_replay_failed", attempt=attempt)
                wait = delay
                if self._closing:
                    left = self._deadline - loop.time()
                    if left <= 0:
                        return False
                    wait = min(delay, left)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.RETRY_MAX)
                continue
            self._failing = False
            return True

    def _stored(self, record: Record) -> bool:
        """Whether the store holds ``record`` (same ts and request id): blocking."""
        try:
            q = RecordQuery(since=record.ts, until=math.nextafter(record.ts, math.inf))
        except ValueError:
            return False  # a ts no store holds
        return any(
            r.request_id == record.request_id for chunk in self.store.iter_query(q) for r in chunk
        )

    async def _sync_loop(self, journal: Journal) -> None:
        while True:
            await asyncio.sleep(self.settings.journal_fsync_interval)
            if journal.buffered:
                try:
                    await asyncio.to_thread(journal.sync)
                except OSError as exc:
                    self._error(exc, "journal_write_failed")

    async def _write_apart(self, batch: list[Record], exc: Exception) -> None:
        """A batch the store refuses for its content: its halves are written apart (each
        retried as any batch), down to the records refused, which are dropped and logged
        with their request id. One bad record does not hold back the others."""
        if len(batch) == 1:
            self.rejected += 1
            self.dropped += 1
            self._error(exc, "record_rejected", request_id=batch[0].request_id)
            return
        middle = len(batch) // 2
        await self._write(batch[:middle])
        await self._write(batch[middle:])

    def _error(self, exc: Exception, event: str, **extra: Any) -> None:
        self.write_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._last_error_at = self._clock()
        log.error(event, extra={"error": self.last_error, **extra})

    async def _prune_loop(self) -> None:
        settings = self.settings
        while True:
            before = self._clock() - settings.retention_days * _DAY
            try:
                count = await asyncio.to_thread(self.store.prune, before)
            except Exception as exc:
                self._error(exc, "records_prune_failed")
            else:
                self.pruned += count
                if count:
                    log.info("records_pruned", extra={"records": count, "before": before})
            await asyncio.sleep(settings.prune_interval)

    async def _shutdown(self) -> None:
        self._closing = True
        self._deadline = asyncio.get_running_loop().time() + self.settings.close_timeout
        self._wake.set()
        self._space.set()
        for task in (self._pruner, self._syncer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writer is None:
            await self._run()  # never started: drain here
        else:
            await self._writer
        if self.journal is not None:
            await asyncio.to_thread(self.journal.close)
            if not self.journal.empty:
                log.warning("records_left_journaled", extra=self.journal.describe())
        log.info(
            "records_closed",
            extra={"written": self.written, "dropped": self.dropped, "errors": self.write_errors},
        )
