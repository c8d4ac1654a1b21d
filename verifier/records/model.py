"""The record model every store shares: Record, RecordQuery and its cursor, RecordSettings,
the RecordStore protocol, the page readers both stores use, and CSV.

Ordering and pagination: newest first by ``(ts, id)``, ``id`` being the row id (it breaks
ties between records of the same instant and never changes). The opaque cursor is that pair
of the last row returned, so a page is one index range scan: no OFFSET, no duplicates or
gaps between pages while new records arrive (they sort before the first page).

Time windows are half-open: ``since <= ts < until`` (adjacent windows do not double count).

Nothing here does I/O of its own: the stores (:mod:`.sqlite`, :mod:`.postgres`,
:mod:`.child`) import this module, never the other way round.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import io
import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from cryptography import x509

from ..core.errors import VerifierError

__all__ = [
    "ADDED_IN",
    "CSV_COLUMNS",
    "FIELDS",
    "MAX_LIMIT",
    "TOP_SPC",
    "Record",
    "RecordQuery",
    "RecordRefused",
    "RecordSettings",
    "RecordStore",
    "absent_columns",
    "certificate_rows",
    "check_window",
    "csv_header",
    "iter_chunks",
    "query_page",
    "signers_of",
    "to_csv_rows",
]

MAX_LIMIT = 1000
"""Most records in one page."""
TOP_SPC = 20
"""SPCs listed in the statistics' ``top_spc``."""
_CURSOR = struct.Struct(">dq")


# -- records -----------------------------------------------------------------------------------


class RecordRefused(VerifierError, ValueError):
    """A record a store cannot hold as it is (a ts outside the store's range...)."""


@dataclass(slots=True, kw_only=True)
class Record:
    """One verification, as recorded. Plain data; ``to_dict()`` is JSON-ready.

    Not frozen, though nothing changes a record once made: one is made for every
    verification, and a frozen dataclass's ``__init__`` is slower.
    """

    ts: float
    """When it was verified, epoch seconds."""
    request_id: str
    endpoint: str
    """``atis``, ``native``, ``sip`` or ``batch``."""
    orig: str | None
    """The calling number, in full."""
    dest: str | None
    """The called number, in full."""
    origid: str | None
    attest: str | None
    verstat: str
    reason: str | None
    """The failure's slug (``cert_not_trusted``); None when it passed."""
    sip_code: int | None
    spc: tuple[str, ...]
    """The signer's SPC(s) from its certificate's TNAuthList."""
    x5u: str | None
    fingerprint: str | None
    """SHA-256 fingerprint of the signer's certificate."""
    action: str | None
    """The disposition's action (policy)."""
    label: str | None
    """The disposition's label (policy)."""
    identity: str | None = None
    """The Identity header value(s) as received, one per line; None when not kept (none
    received, ``keep_identity`` off, or over ``identity_max_bytes``)."""
    chain: str | None = None
    """The signer's validated chain as PEM (leaf first), on the first record of a
    fingerprint the service has not recorded lately: the store keeps it once, in its
    certificate table, not in the record's row, and reads never return it."""
    signers: dict[str, str] | None = None
    """x5u -> certificate fingerprint of every other Identity header whose chain validated
    (a div PASSporT of another provider, or the SHAKEN one that then failed), so that each
    is verified again with its own chain; None when there is none (the usual call)."""
    chains: dict[str, str] | None = None
    """Fingerprint -> chain PEM for ``signers``' certificates, as ``chain`` (kept once,
    never returned by reads)."""

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in FIELDS}
        out["spc"] = list(self.spc)
        return out

    def storable(self, *, nul: bool = True) -> Record:
        """This record with what a store cannot hold replaced by U+FFFD: lone UTF-16
        surrogates (text with no UTF-8 form) and, with ``nul=False``, NUL characters
        (PostgreSQL's text cannot hold them). The record itself when nothing needs it.
        The SQLite store calls it only for a batch that its driver could not encode.

        The texts come from the call (an origid is any JSON string a signer chose); one
        that no store takes would otherwise fail its whole batch on every retry, and
        hold back every record behind it.
        """
        texts = [t for name in _TEXT_FIELDS if (t := getattr(self, name)) is not None]
        texts.extend(self.spc)
        if all(t.isascii() and (nul or "\x00" not in t) for t in texts):
            return self
        unstorable = _SURROGATE if nul else _SURROGATE_OR_NUL
        if not any(unstorable.search(t) for t in texts):
            return self

        def clean(text: str) -> str:
            return unstorable.sub("\ufffd", text)

        changes: dict[str, Any] = {
            name: clean(t) for name in _TEXT_FIELDS if (t := getattr(self, name)) is not None
        }
        return replace(self, spc=tuple(map(clean, self.spc)), **changes)

    def row(self, row_id: int, spc: object) -> tuple[object, ...]:
        """The record as a store's row: ``row_id``, then the :data:`FIELDS` in order, with
        ``spc`` in the store's own encoding (a JSON text, a text array)."""
        return (
            row_id,
            self.ts,
            self.request_id,
            self.endpoint,
            self.orig,
            self.dest,
            self.origid,
            self.attest,
            self.verstat,
            self.reason,
            self.sip_code,
            spc,
            self.x5u,
            self.fingerprint,
            self.action,
            self.label,
            self.identity,
            None if self.signers is None else json.dumps(self.signers, sort_keys=True),
        )


FIELDS = (
    "ts",
    "request_id",
    "endpoint",
    "orig",
    "dest",
    "origid",
    "attest",
    "verstat",
    "reason",
    "sip_code",
    "spc",
    "x5u",
    "fingerprint",
    "action",
    "label",
    "identity",
    "signers",
)
"""A record's fields in the stores' column order (:meth:`Record.row`); ``chain`` and
``chains`` are not. ``signers`` is stored as a JSON text (ASCII: any store holds it)."""
ADDED_IN: dict[str, int] = {"identity": 2, "signers": 4}
"""Record columns added after the first schema, by the schema version that added them (in
both stores): a store read (``verifier records``) before the service upgrades its schema
reads them as NULL."""


def absent_columns(version: int) -> frozenset[str]:
    """The record columns that a schema of ``version`` does not have yet."""
    return frozenset(name for name, added in ADDED_IN.items() if added > version)


_TEXT_FIELDS = tuple(name for name in FIELDS if name not in ("ts", "sip_code", "spc", "signers"))
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_OR_NUL = re.compile("[\x00\ud800-\udfff]")


CERTIFICATE_COLUMNS = ("fingerprint", "first_seen", "subject", "issuer", "not_after", "chain")
"""The certificate table's columns, keyed by the leaf's SHA-256 fingerprint."""


def certificate_rows(records: Iterable[Record]) -> list[tuple[str, float, str, str, float, str]]:
    """The certificate table's rows for the chains the records carry (``chain`` and
    ``chains``; one per fingerprint): the leaf's subject and issuer (RFC 4514) and its
    expiry (epoch seconds)."""
    rows: dict[str, tuple[str, float, str, str, float, str]] = {}
    for r in records:
        if r.chain is None and r.chains is None:  # nearly every record
            continue
        carried = [] if r.chain is None or r.fingerprint is None else [(r.fingerprint, r.chain)]
        if r.chains:
            carried.extend(r.chains.items())
        for fingerprint, chain in carried:
            if fingerprint in rows:
                continue
            try:
                leaf = x509.load_pem_x509_certificates(chain.encode("ascii"))[0]
            except ValueError:  # the service's own PEM; were it not, the record still goes in
                continue
            rows[fingerprint] = (
                fingerprint,
                r.ts,
                leaf.subject.rfc4514_string(),
                leaf.issuer.rfc4514_string(),
                leaf.not_valid_after_utc.timestamp(),
                chain,
            )
    return list(rows.values())


def signers_of(text: str | None) -> dict[str, str] | None:
    """A record's ``signers`` from the JSON text of its column (:meth:`Record.row`)."""
    return None if text is None else dict(json.loads(text))


# -- queries and cursors -----------------------------------------------------------------------


def _encode_cursor(ts: float, row_id: int) -> str:
    return base64.urlsafe_b64encode(_CURSOR.pack(ts, row_id)).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> tuple[float, int]:
    """The ``(ts, id)`` position a cursor stands for.

    Raises:
        ValueError: not a cursor this module made.
    """
    if len(cursor) != 22:
        raise ValueError("cursor is not valid")
    try:
        raw = base64.b64decode(cursor + "==", altchars=b"-_", validate=True)
    except ValueError:  # binascii.Error is one
        raise ValueError("cursor is not valid") from None
    ts, row_id = _CURSOR.unpack(raw)
    if not math.isfinite(ts) or row_id < 0:
        raise ValueError("cursor is not valid")
    return ts, row_id


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordQuery:
    """Which records to return: every given filter must match (AND); newest first.

    Raises (constructor):
        ValueError: limit outside 1..1000, a time that is not finite, since > until, or a
            cursor that is not valid; the message names the parameter.
    """

    origid: str | None = None
    orig: str | None = None
    """The calling number, exactly as recorded."""
    dest: str | None = None
    """The called number, exactly as recorded."""
    spc: str | None = None
    since: float | None = None
    """Epoch seconds, inclusive."""
    until: float | None = None
    """Epoch seconds, exclusive."""
    limit: int = 100
    """Records in one page, 1 to 1000."""
    cursor: str | None = None
    """``next_cursor`` of the previous page."""

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise ValueError("limit must be an integer")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1 to {MAX_LIMIT}")
        check_window(self.since, self.until)
        if self.cursor is not None:
            _decode_cursor(self.cursor)

    @property
    def position(self) -> tuple[float, int] | None:
        """The ``(ts, id)`` after which this page starts, from the cursor."""
        return None if self.cursor is None else _decode_cursor(self.cursor)


def check_window(since: float | None, until: float | None) -> None:
    """Raises ValueError (naming the bound) unless ``since``/``until`` make a window."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of epoch seconds")
    if since is not None and until is not None and since > until:
        raise ValueError("since must not be after until")


Select = Callable[[RecordQuery, tuple[float, int] | None, int], tuple[Any, Sequence[Any]]]
"""A store's page query: (query, position, size) -> (SQL, arguments); rows start (id, ts)."""


def query_page(
    q: RecordQuery,
    select: Select,
    connect: Callable[[], Any],
    row: Callable[[Sequence[Any]], Record],
) -> tuple[list[Record], str | None]:
    """One page of ``q`` and the cursor of the next (None on the last page), read with one
    more row than the page to know whether there is a next. Shared by the stores, as
    :func:`iter_chunks`."""
    query, args = select(q, q.position, q.limit + 1)
    with contextlib.closing(connect()) as conn:
        rows = conn.execute(query, args).fetchall()
    cursor = None
    if len(rows) > q.limit:
        rows = rows[: q.limit]
        cursor = _encode_cursor(rows[-1][1], rows[-1][0])
    return [row(r) for r in rows], cursor


def iter_chunks(
    q: RecordQuery,
    chunk: int,
    select: Select,
    connect: Callable[[], Any],
    row: Callable[[Sequence[Any]], Record],
) -> Iterator[list[Record]]:
    """Every record matching ``q``, newest first, ``chunk`` at a time, each chunk read on a
    connection of its own (nothing stays open between chunks). Shared by the stores: each
    gives its ``select``, ``connect`` and ``row`` (a result row as a Record).

    Raises:
        ValueError: ``chunk`` < 1, at once (not at the first ``next()``).
    """
    if chunk < 1:
        raise ValueError("chunk must be >= 1")

    def chunks() -> Iterator[list[Record]]:
        position = q.position
        while True:
            query, args = select(q, position, chunk)
            with contextlib.closing(connect()) as conn:
                rows = conn.execute(query, args).fetchall()
            if rows:
                yield [row(r) for r in rows]
            if len(rows) < chunk:
                return
            position = (rows[-1][1], rows[-1][0])

    return chunks()


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordSettings:
    """The record store and its writer. Times are seconds.

    Raises (constructor):
        ValueError: a value out of range (naming the field).
    """

    enabled: bool = True
    """Record every verification (traceback records)."""
    data_dir: str = "data"
    """Directory of the record database (created mode 0700; the file is mode 0600)."""
    database_url: str | None = None
    """PostgreSQL instead of SQLite in ``data_dir``: ``postgresql://user@host:5432/db``
    (several instances may share it). Give a password through the environment
    (VERIFIER_RECORDS_DATABASE_URL, PGPASSWORD) or ``~/.pgpass``."""
    retention_days: float = 90.0
    """Records older than this many days are deleted by the periodic pruning."""
    queue_size: int = 10_000
    """Records accepted but not yet written, at most (then ``overflow`` applies)."""
    overflow: Literal["wait", "drop"] = "wait"
    """Without a journal, when the queue is full: "wait" (back-pressure on verification) or
    "drop" (counted)."""
    batch_size: int = 2000
    """Most records written in one transaction. Under load a batch is what arrived in
    ``flush_interval``: fewer, larger transactions cost the event loop less."""
    flush_interval: float = 0.2
    """How long the writer waits for a batch to fill before writing what it has."""
    writer_process: bool = True
    """SQLite: write from a child process (``verifier.records.child``) rather than a thread
    of the service's process, so that the writes do not compete with the event loop for
    the GIL. (PostgreSQL is another process anyway.)"""
    writer_nice: int = 10
    """The writer process's niceness (0-19) above the service's: where they compete for a
    core, answering calls goes first and records wait in their bounded queue. 0: the
    service's own priority."""
    prune_interval: float = 3600.0
    """Time between two prunings (the first runs when the writer starts)."""
    submit_timeout: float = 5.0
    """Without a journal, with "wait": longest a verification waits for queue space; then
    the record is dropped (counted), so a failing store cannot stall verification."""
    close_timeout: float = 10.0
    """At shutdown, how long a failing store is retried before the records still queued
    are left in the journal for the next start (without a journal: given up, counted as
    dropped and logged)."""
    journal_max_bytes: int = 1 << 30
    """Size of the journal in ``data_dir``/journal, where records wait while the store
    fails or the queue is past ``journal_high_water``; when it is full, records are dropped
    (counted, logged, shown by /readyz). 0: no journal (``overflow`` applies)."""
    journal_high_water: int = 5000
    """Records queued past which new records go to the journal (at most ``queue_size``)."""
    journal_fsync_interval: float = 0.2
    """Time between two fsyncs of the journal: a SIGKILL loses at most the records
    journaled in this interval."""
    keep_identity: bool = True
    """Keep each call's Identity header(s) as received, so that a traceback answer shows the
    PASSporT and ``verifier records --reverify`` can verify it again."""
    identity_max_bytes: int = 8192
    """Most bytes of Identity header(s) kept per call (UTF-8, all headers together); over it
    nothing is kept (a cut JWS cannot be verified again)."""

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ValueError("data_dir must not be empty")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("database_url must be a postgresql:// URL")
        if self.overflow not in ("wait", "drop"):
            raise ValueError("overflow must be 'wait' or 'drop'")
        if self.journal_max_bytes < 0:
            raise ValueError("journal_max_bytes must be >= 0")
        for name in ("queue_size", "batch_size", "journal_high_water", "identity_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in (
            "retention_days",
            "prune_interval",
            "submit_timeout",
            "journal_fsync_interval",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("flush_interval", "close_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 <= self.writer_nice <= 19:
            raise ValueError("writer_nice must be 0 to 19")


# -- the store protocol ------------------------------------------------------------------------


class RecordStore(Protocol):
    """Where records live. Methods are synchronous (call them from a worker thread).

    ``insert_many`` and ``prune`` may run in different threads: the store serialises its
    writes. ``query``, ``iter_query`` and ``stats`` may run concurrently with writes.
    """

    def insert_many(self, records: Sequence[Record]) -> None: ...

    def rejects(self, exc: Exception) -> bool:
        """Whether ``exc``, raised by ``insert_many``, says that the records themselves
        cannot be stored (a retry would fail the same way), not that the store is away."""
        ...

    def query(self, q: RecordQuery) -> tuple[list[Record], str | None]: ...

    def iter_query(self, q: RecordQuery, chunk: int = 1000) -> Iterator[list[Record]]: ...

    def stats(self, since: float | None, until: float | None) -> dict[str, Any]: ...

    def console(
        self, since: float, until: float, bucket: float, spc: str | None = None
    ) -> dict[str, Any]:
        """The console's overview of a window (:func:`.aggregate.console_summary`)."""
        ...

    def providers(self, since: float, until: float) -> list[dict[str, Any]]:
        """One row per SPC seen in a window (:func:`verifier.records.aggregate.providers`)."""
        ...

    def chains(self, fingerprints: Iterable[str]) -> dict[str, str]:
        """The recorded chain PEM of each of ``fingerprints`` that the store holds."""
        ...

    def prune(self, before: float) -> int: ...

    def close(self) -> None: ...


# -- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS: tuple[str, ...] = ("ts", "time", *FIELDS[1:-2])
"""CSV header order: the record's fields, with ``time`` (RFC 3339, UTC) after ``ts``. The
Identity header and ``signers`` are left out: a JWS of up to 8 KiB or a JSON object in a
cell serves no spreadsheet, and the JSON export carries them."""
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str | None) -> str:
    """A text cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    if value is None:
        return ""
    if value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _rfc3339(ts: float) -> str:
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def csv_header() -> str:
    """The CSV header line (CRLF-terminated, RFC 4180)."""
    return ",".join(CSV_COLUMNS) + "\r\n"


def to_csv_rows(records: Iterable[Record]) -> Iterator[str]:
    """One CSV line (CRLF-terminated) per record, in :data:`CSV_COLUMNS` order.

    Text cells starting with ``= + - @`` (or a tab or CR) get a leading ``'`` so that a
    spreadsheet shows them instead of evaluating them; SPCs are space-separated.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for r in records:
        writer.writerow(
            (
                repr(r.ts),
                _rfc3339(r.ts),
                _cell(r.request_id),
                _cell(r.endpoint),
                _cell(r.orig),
                _cell(r.dest),
                _cell(r.origid),
                _cell(r.attest),
                _cell(r.verstat),
                _cell(r.reason),
                "" if r.sip_code is None else str(r.sip_code),
                _cell(" ".join(r.spc)),
                _cell(r.x5u),
                _cell(r.fingerprint),
                _cell(r.action),
                _cell(r.label),
            )
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
