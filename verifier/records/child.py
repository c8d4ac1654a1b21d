"""SQLite record writes in a child process of their own (``records.writer_process``).

Records are written by a child process so that the writes do not compete with the event
loop for the GIL: from a thread of the service's process, each SQLite call gives the GIL
up and must take it back from the busy loop. This is what a database server does for
PostgreSQL: the storing happens in another process.

:class:`ChildWriterStore` is a :class:`~verifier.records.sqlite.SqliteRecordStore` whose
``insert_many`` and ``prune`` are done by ``python -m verifier.records DB``, started on
the first write, fed records through its stdin (length-prefixed pickles, a batch in parts
of :data:`PART` records, so that no single pickling holds the GIL long) and answering on
its stdout. Reads (queries, stats, exports) open their own connections in the service's
process, as before.

What the thread-backed store promises still holds:

- A batch is one transaction: the child inserts it only once its last part arrived.
- A failure is the child's own exception, raised again here (a refused value is still an
  ``IntegrityError``, so :meth:`~verifier.records.sqlite.SqliteRecordStore.rejects` still isolates
  one poisoned record, and an outage is retried).
- A child that died is started again on the next write. If it died after the batch was
  sent and before it answered (the batch may or may not be committed), the retry of that
  same batch tells the child to look for its first record (``ts`` and ``request_id``)
  first, and to write nothing if it is there: exactly once.
- The child runs ``records.writer_nice`` steps below the service (10 by default): where
  they compete for a core, answering calls goes first; records wait in their bounded queue.
- The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): the
  service drains its queue, then closes the store, which ends the child. It also ends when
  its stdin closes (the service died).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

from .model import Record
from .sqlite import SqliteRecordStore

__all__ = ["PART", "ChildWriterStore"]

PART = 250
"""Records pickled and sent at a time."""
_NAMES = tuple(f.name for f in dataclasses.fields(Record))
_FIELDS_OF = attrgetter(*_NAMES)
_LENGTH = struct.Struct("<I")
_CLOSE_WAIT = 10.0


class ChildWriterStore(SqliteRecordStore):
    """A SQLite record store whose writes run in a child process (module docstring)."""

    def __init__(self, path: Path, *, nice: int = 0) -> None:
        super().__init__(path, None)
        self._nice = nice
        self._child: subprocess.Popen[bytes] | None = None
        self._channel = threading.Lock()
        self._unsure: Sequence[Record] | None = None
        """A batch whose commit is unknown: the child died after it was sent."""

    @classmethod
    def open_for_child(cls, data_dir: str | Path, *, nice: int = 0) -> ChildWriterStore:
        """The store in ``data_dir``, created (directory, file, schema) as
        :meth:`SqliteRecordStore.open` does; the child opens its own connection and runs
        ``nice`` steps below the service (``records.writer_nice``)."""
        made = SqliteRecordStore.open(data_dir)
        made.close()
        return cls(made.path, nice=nice)

    # -- writes, through the child -----------------------------------------------------------

    def insert_many(self, records: Sequence[Record]) -> None:
        if not records:
            return
        check = records is self._unsure
        last = (len(records) - 1) // PART * PART
        messages = (
            ("insert", list(map(_FIELDS_OF, records[i:])), check)
            if i == last
            else ("part", list(map(_FIELDS_OF, records[i : i + PART])))
            for i in range(0, len(records), PART)
        )  # made part by part while sending: the GIL is held for one part at a time
        self._call(messages, records)
        self._unsure = None

    def prune(self, before: float) -> int:
        count = self._call([("prune", before)], None)
        return int(count)

    def close(self) -> None:
        """End the child (after the write it is doing), then close as the base store does.
        Idempotent."""
        with self._channel:
            child, self._child = self._child, None
        if child is not None:
            _end(child)
        super().close()

    def _call(self, messages: Iterable[tuple[Any, ...]], batch: Sequence[Record] | None) -> Any:
        with self._channel:
            if self._closed:
                raise RuntimeError("the record store is closed")
            child = self._child
            if child is not None and child.poll() is not None:
                _end(child)  # it died between writes: its pipes go with it
                child = None
            if child is None:
                child = self._child = self._start()
            if child.stdin is None or child.stdout is None:  # pragma: no cover - PIPE given
                raise RuntimeError("the record writer process has no pipes")
            sent = False
            try:
                for message in messages:
                    _send(child.stdin, message)
                sent = True
                kind, value = _receive(child.stdout)
            except (OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
                # The child is gone or its channel broken: a batch it had whole may be
                # committed or not; the next try of it checks first.
                if sent and batch is not None:
                    self._unsure = batch
                self._child = None
                _end(child)
                raise OSError(f"the record writer process failed: {exc!r}") from None
        if kind == "error":
            raise value
        return value

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603 - this interpreter, our module, our path
            [sys.executable, "-m", "verifier.records", str(self.path), str(self._nice)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )


def _send(stream: IO[bytes], message: tuple[Any, ...]) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> tuple[Any, ...]:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the record writer process ended")
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the record writer process ended mid-answer")
    message = pickle.loads(data)  # noqa: S301 - our own child's answer
    if not isinstance(message, tuple):
        raise ValueError("not an answer")
    return message


def _end(child: subprocess.Popen[bytes]) -> None:
    """Close the child's stdin (it exits when it has read everything), wait, kill."""
    with contextlib.suppress(OSError):
        if child.stdin is not None:
            child.stdin.close()
    try:
        child.wait(_CLOSE_WAIT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if child.stdout is not None:
        child.stdout.close()


# -- the child ---------------------------------------------------------------------------------


def _serve(path: Path, inp: IO[bytes], out: IO[bytes]) -> None:
    store = SqliteRecordStore.open(path.parent)
    pending: list[Record] = []
    try:
        while True:
            try:
                message = _receive(inp)
            except EOFError:
                return
            kind = message[0]
            if kind in ("part", "insert"):
                pending.extend(Record(**dict(zip(_NAMES, row, strict=True))) for row in message[1])
            if kind == "part":
                continue
            answer: tuple[Any, ...]
            try:
                if kind == "insert":
                    batch, pending = pending, []
                    if not (message[2] and store.written(batch[0])):
                        store.insert_many(batch)
                    answer = ("ok", None)
                elif kind == "prune":
                    answer = ("ok", store.prune(message[1]))
                else:
                    answer = ("error", ValueError(f"unknown message {kind!r}"))
            except Exception as exc:  # the service decides: refused content, or an outage
                answer = ("error", exc)
            try:
                _send(out, answer)
            except (pickle.PicklingError, TypeError, AttributeError):
                _send(out, ("error", RuntimeError(repr(answer[1]))))
    finally:
        store.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the channel
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if len(sys.argv) > 2 and int(sys.argv[2]):
        os.nice(int(sys.argv[2]))  # answering calls goes first ([tuning] writer_nice)
    _serve(Path(sys.argv[1]), inp, out)
