"""Per-minute rollups of the records, kept by the stores in the transaction that writes them.

Narrow tables rather than one wide one (an SPC in the key multiplies every other
combination by the providers seen in a minute):

- ``record_minutes (minute, <dims>) -> calls``: the overview and the statistics;
- ``record_spc_minutes (spc, minute, <dims>) -> calls``: one provider's overview;
- ``provider_minutes (minute, spc) -> calls, attest A/B/C, failures, blocked, first_ts,
  last_ts``: the providers table, policy matches and the top SPCs, and
  ``provider_hours (hour, spc)``, the same by hour: a busy day has a row per minute for
  every provider, too many to add up in time, and the whole hours of a window are read
  from here (its other whole minutes from ``provider_minutes``).

``<dims>`` are a record's verstat, attest, reason, sip_code, action, label and, for a 436
(x5u fetch failed) only, its x5u. Key columns cannot hold NULL and still be unique (NULLs
are distinct), so a NULL is stored as ``''`` (or 0) with its bit set in ``nulls``
(:data:`NULL_BITS`): exact whatever the texts are.

A record's minute is ``m`` with ``60 m <= ts < 60 (m + 1)`` exactly (:func:`minute_of`;
the SQL in :class:`Dialect` corrects the division's rounding the same way), so a window's
whole minutes and its raw edges never share a record. A store writes a batch's rollups
grouped here first (:func:`group`), one upsert per group, in the batch's transaction: the
rollups count exactly the records committed, and a replayed batch that the store finds
already written adds nothing. Retention deletes whole minutes' rollups with their records,
and recounts the minute and the hour that ``before`` cuts (:func:`cut`). The x5u in a
PostgreSQL key is its MD5 (:attr:`Dialect.x5u_key`): two URLs of one MD5 would share a row.

Nothing here does I/O: the stores run the SQL texts (``?`` parameters).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .model import Record

__all__ = [
    "DIMS",
    "NULL_BITS",
    "POSTGRES",
    "SQLITE",
    "TABLES",
    "X5U_FETCH_FAILED",
    "Dialect",
    "cut",
    "decode",
    "dims_sql",
    "group",
    "merge",
    "minute_of",
    "minute_sql",
    "refill",
    "refill_hours",
    "span_sql",
    "upserts",
    "whole_minutes",
    "write",
]

X5U_FETCH_FAILED = 436
"""The SIP code whose x5u is kept in the rollups (fetch failures by URL)."""
DIMS = ("verstat", "attest", "reason", "sip_code", "action", "label", "x5u")
"""The dimensions of ``record_minutes`` and ``record_spc_minutes``, in key order."""
NULL_BITS = {name: 1 << i for i, name in enumerate(DIMS)}
"""The bit of ``nulls`` that says a dimension is NULL."""
TABLES = ("record_minutes", "record_spc_minutes", "provider_minutes")
"""The tables by minute (column ``minute``); ``provider_hours`` has ``hour``."""
FIRST_MINUTE, END_MINUTE = -1_035_593_280, 4_223_371_680
"""The minutes of 0001-01-01 and 10000-01-01 UTC. Records outside have no rollups
(PostgreSQL refuses them; SQLite keeps any double), and are read from the records."""
_EMPTY = ("''", "0")
"""A NULL's stand-in in a key column: text, then sip_code."""
_PROVIDER_SUMS = ("calls", "attest_a", "attest_b", "attest_c", "failures", "blocked")

Exec = Callable[[str, Sequence[Any]], object]
"""A store's statement runner in the open write transaction: (SQL with ``?``, arguments)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialect:
    """What differs between the stores' SQL in the rollup statements."""

    minute0: str
    """A record's minute from ``r.ts``, off by at most one (corrected in SQL)."""
    bucket_of: str
    """A record's bucket number from ``r.ts`` and one parameter, the bucket's width."""
    least: str
    greatest: str
    collate: str
    """Appended to a text that is compared: bytewise, as Python compares str."""
    x5u_key: str
    """The x5u in the tables' unique keys (PostgreSQL: its MD5, as an index entry holds
    at most about 2.7 kB and an x5u is any URL a caller sent)."""


SQLITE = Dialect(
    minute0="CAST(r.ts / 60 AS INTEGER)",
    bucket_of="CAST(r.ts / ? AS INTEGER)",
    least="min",
    greatest="max",
    collate="",
    x5u_key="x5u",
)
POSTGRES = Dialect(
    minute0="floor(r.ts / 60)::bigint",
    bucket_of="floor(r.ts / ?)::bigint",
    least="least",
    greatest="greatest",
    collate=' COLLATE "C"',
    x5u_key="md5(x5u)",
)


def minute_of(ts: float) -> int:
    """The minute ``m`` with ``60 m <= ts < 60 (m + 1)``, exactly (no rounding of ts / 60)."""
    m = math.floor(ts / 60)
    if m * 60 > ts:
        return m - 1
    if (m + 1) * 60 <= ts:
        return m + 1
    return m


def whole_minutes(since: float | None, until: float | None) -> tuple[int, int]:
    """``(lo, hi)``: the minutes ``lo <= m < hi`` with rollups lying wholly in ``since <= ts
    < until`` (None: unbounded). The rest of the window (``[since, 60 lo)``, ``[60 hi,
    until)``) is read from the records."""
    lo, hi = FIRST_MINUTE, END_MINUTE
    if since is not None and since > 60 * lo:
        lo = min(minute_of(since), hi)
        lo += 60 * lo < since
    if until is not None and until < 60 * hi:
        hi = max(minute_of(until), lo)
    return lo, hi


def _dims(r: Record) -> tuple[int, tuple[Any, ...]]:
    """``(nulls, key)`` of a record's dimensions."""
    x5u = r.x5u if r.sip_code == X5U_FETCH_FAILED else None
    values = (r.verstat, r.attest, r.reason, r.sip_code, r.action, r.label, x5u)
    nulls = 0
    key = []
    for name, value in zip(DIMS, values, strict=True):
        if value is None:
            nulls |= NULL_BITS[name]
            key.append(0 if name == "sip_code" else "")
        else:
            key.append(value)
    return nulls, tuple(key)


def decode(nulls: int, key: Sequence[Any]) -> tuple[Any, ...]:
    """A rollup row's dimensions (in :data:`DIMS` order) with their NULLs back."""
    return tuple(
        None if nulls & NULL_BITS[name] else value for name, value in zip(DIMS, key, strict=True)
    )


def group(records: Iterable[Record]) -> tuple[list[tuple[Any, ...]], ...]:
    """A batch's rows for each table's upsert (:func:`upserts`), one per key, in key
    order (so concurrent writers lock rows in one order). A record's repeated SPC counts
    once, as in ``record_spc``."""
    minutes: Counter[tuple[Any, ...]] = Counter()
    spc_minutes: Counter[tuple[Any, ...]] = Counter()
    providers: dict[tuple[int, str], list[Any]] = {}
    for r in records:
        if not 60 * FIRST_MINUTE <= r.ts < 60 * END_MINUTE:  # NaN too
            continue
        minute = minute_of(r.ts)
        nulls, key = _dims(r)
        minutes[(minute, *key, nulls)] += 1
        for spc in dict.fromkeys(r.spc):
            spc_minutes[(spc, minute, *key, nulls)] += 1
            row = providers.get((minute, spc))
            if row is None:
                row = providers[minute, spc] = [0, 0, 0, 0, 0, 0, r.ts, r.ts]
            row[0] += 1
            if r.attest in ("A", "B", "C"):
                row[1 + "ABC".index(r.attest)] += 1
            row[4] += r.reason is not None
            row[5] += r.action == "block"
            row[6] = min(row[6], r.ts)
            row[7] = max(row[7], r.ts)
    hours: dict[tuple[int, str], list[Any]] = {}
    for (minute, spc), row in providers.items():
        merge(hours, (minute // 60, spc), row)
    return (
        [(*k, n) for k, n in sorted(minutes.items())],
        [(*k, n) for k, n in sorted(spc_minutes.items())],
        [(*k, *v) for k, v in sorted(providers.items())],
        [(*k, *v) for k, v in sorted(hours.items())],
    )


def merge(rows: dict[Any, list[Any]], key: Any, row: Sequence[Any]) -> None:
    """Add a provider row (calls, A, B, C, failures, blocked, first, last)."""
    into = rows.get(key)
    if into is None:
        rows[key] = list(row)
        return
    for i in range(6):
        into[i] += row[i]
    into[6], into[7] = min(into[6], row[6]), max(into[7], row[7])


def upserts(d: Dialect) -> tuple[str, ...]:
    """The upsert of each table, for the rows of :func:`group` (``?`` parameters)."""
    dims = ", ".join(DIMS)
    keys = dims.replace("x5u", d.x5u_key)
    marks = ", ".join("?" * (len(DIMS) + 3))
    return (
        f"INSERT INTO record_minutes (minute, {dims}, nulls, calls) VALUES ({marks})"  # noqa: S608
        f" ON CONFLICT (minute, {keys}, nulls)"
        " DO UPDATE SET calls = record_minutes.calls + excluded.calls",
        f"INSERT INTO record_spc_minutes (spc, minute, {dims}, nulls, calls)"  # noqa: S608
        f" VALUES (?, {marks}) ON CONFLICT (spc, minute, {keys}, nulls)"
        " DO UPDATE SET calls = record_spc_minutes.calls + excluded.calls",
        _provider_upsert(d, "provider_minutes", "minute"),
        _provider_upsert(d, "provider_hours", "hour"),
    )


def _provider_upsert(d: Dialect, table: str, unit: str) -> str:
    sums = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _PROVIDER_SUMS)
    return (
        f"INSERT INTO {table} ({unit}, spc, {', '.join(_PROVIDER_SUMS)},"  # noqa: S608
        " first_ts, last_ts)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT ({unit}, spc) DO UPDATE SET"
        f" {sums},"
        f" first_ts = {d.least}({table}.first_ts, excluded.first_ts),"
        f" last_ts = {d.greatest}({table}.last_ts, excluded.last_ts)"
    )


def write(batch: Iterable[Record], d: Dialect, run: Exec) -> None:
    """Add a batch's records to the rollups (in the caller's transaction): multi-row
    upserts of at most :data:`_ROWS_PER_UPSERT` rows (one statement step each, where a row
    at a time costs a step per row)."""
    for sql, rows in zip(upserts(d), group(batch), strict=True):
        head, one = sql.split(" VALUES ", 1)
        one, tail = one.split(") ON CONFLICT ", 1)
        for start in range(0, len(rows), _ROWS_PER_UPSERT):
            chunk = rows[start : start + _ROWS_PER_UPSERT]
            values = ", ".join([one + ")"] * len(chunk))
            run(f"{head} VALUES {values} ON CONFLICT {tail}", [v for r in chunk for v in r])


_ROWS_PER_UPSERT = 200
"""Rows in one upsert (12 parameters each stay far under SQLite's 32766)."""


def minute_sql(d: Dialect) -> str:
    """SQL of a record's exact minute (:func:`minute_of`) from ``r.ts``."""
    m0 = d.minute0
    return (
        f"({m0} - (CASE WHEN ({m0}) * 60.0 > r.ts THEN 1 ELSE 0 END)"
        f" + (CASE WHEN ({m0} + 1) * 60.0 <= r.ts THEN 1 ELSE 0 END))"
    )


def dims_sql() -> tuple[str, str]:
    """SQL of the key columns from ``r`` (NULL as '' or 0), and of their ``nulls`` mask."""
    x5u = f"CASE WHEN r.sip_code = {X5U_FETCH_FAILED} THEN r.x5u END"
    exprs = [f"r.{name}" for name in DIMS[:-1]] + [x5u]
    keys = ", ".join(
        f"coalesce({e}, {_EMPTY[name == 'sip_code']})" for name, e in zip(DIMS, exprs, strict=True)
    )
    nulls = " + ".join(
        f"(CASE WHEN {e} IS NULL THEN {NULL_BITS[name]} ELSE 0 END)"
        for name, e in zip(DIMS, exprs, strict=True)
    )
    return keys, nulls


def refill(d: Dialect, run: Exec, lo: int | None, hi: int | None) -> None:
    """Recount the rollups of the minutes ``lo <= m < hi`` (None: all) from the records:
    delete them, then group the records of those minutes (``provider_hours`` too when the
    span is whole hours, as for None). The migration that adds the rollups runs it over
    everything; retention over the minute it cuts."""
    lo = FIRST_MINUTE if lo is None else max(lo, FIRST_MINUTE)
    hi = END_MINUTE if hi is None else min(hi, END_MINUTE)
    span, args = span_sql("minute", lo, hi)
    for table in TABLES:
        run(f"DELETE FROM {table} WHERE {span}", args)  # noqa: S608 - fixed names
    window, wargs = span_sql("r.ts", 60.0 * lo, 60.0 * hi)
    minute = minute_sql(d)
    keys, nulls = dims_sql()
    dims = ", ".join(DIMS)
    run(
        f"INSERT INTO record_minutes (minute, {dims}, nulls, calls)"  # noqa: S608
        f" SELECT {minute} AS m, {keys}, {nulls} AS n, count(*) FROM records r WHERE {window}"
        f" GROUP BY m, {keys}, n",
        wargs,
    )
    run(
        f"INSERT INTO record_spc_minutes (spc, minute, {dims}, nulls, calls)"
        f" SELECT s.spc, {minute} AS m, {keys}, {nulls} AS n, count(*) {_SPC_JOIN}"
        f" WHERE {window} GROUP BY s.spc, m, {keys}, n",
        wargs,
    )
    _refill_providers(d, run, "provider_minutes", "minute", minute, window, wargs)
    if lo % 60 == 0 and hi % 60 == 0:
        refill_hours(d, run, lo // 60, hi // 60)


def refill_hours(d: Dialect, run: Exec, lo: int, hi: int) -> None:
    """Recount ``provider_hours`` of the hours ``lo <= h < hi`` from the records."""
    span, args = span_sql("hour", lo, hi)
    run(f"DELETE FROM provider_hours WHERE {span}", args)  # noqa: S608 - fixed names
    window, wargs = span_sql("r.ts", 3600.0 * lo, 3600.0 * hi)
    # minute - FIRST_MINUTE >= 0, a multiple of 60 apart: SQL's `/` is floor's
    hour = f"(({minute_sql(d)} - {FIRST_MINUTE}) / 60 + {FIRST_MINUTE // 60})"
    _refill_providers(d, run, "provider_hours", "hour", hour, window, wargs)


_SPC_JOIN = "FROM record_spc s JOIN records r ON r.id = s.record_id AND r.ts = s.ts"


def _refill_providers(
    d: Dialect, run: Exec, table: str, unit: str, unit_sql: str, window: str, args: list[float]
) -> None:
    run(
        f"INSERT INTO {table} ({unit}, spc, {', '.join(_PROVIDER_SUMS)},"
        " first_ts, last_ts)"
        f" SELECT {unit_sql} AS u, s.spc, count(*),"
        " count(*) FILTER (WHERE r.attest = 'A'), count(*) FILTER (WHERE r.attest = 'B'),"
        " count(*) FILTER (WHERE r.attest = 'C'),"
        " count(*) FILTER (WHERE r.reason IS NOT NULL),"
        " count(*) FILTER (WHERE r.action = 'block'),"
        f" min(r.ts), max(r.ts) {_SPC_JOIN}"
        f" WHERE {window} GROUP BY u, s.spc",
        args,
    )


def cut(d: Dialect, run: Exec, before: float) -> None:
    """Retention: delete the rollups of the records before ``before`` (deleted in the same
    transaction), and recount the minute and the hour that ``before`` cuts."""
    minute = min(max(minute_of(before), FIRST_MINUTE), END_MINUTE)
    hour = minute // 60
    for table in TABLES:
        run(f"DELETE FROM {table} WHERE minute < ?", [minute])  # noqa: S608 - fixed names
    run("DELETE FROM provider_hours WHERE hour < ?", [hour])
    if 60 * minute < before:
        refill(d, run, minute, minute + 1)
    if 60 * hour < minute or 60 * minute < before:
        refill_hours(d, run, hour, hour + 1)


def span_sql(column: str, lo: float | None, hi: float | None) -> tuple[str, list[float]]:
    """``lo <= column < hi`` (a None bound: unbounded) as SQL with ``?``, and its arguments."""
    where, args = [], []
    if lo is not None:
        where.append(f"{column} >= ?")
        args.append(lo)
    if hi is not None:
        where.append(f"{column} < ?")
        args.append(hi)
    return " AND ".join(where) or "1 = 1", args
