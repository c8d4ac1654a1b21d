"""The console's aggregate queries and the statistics, shared by the stores: one time
window, read in one snapshot, answered as plain JSON-ready data.

A window's whole minutes are read from the rollups (:mod:`.rollup`), its partial minutes at
either edge from the records; with ``rollups=False`` everything is read from the records
(the reference the rollups are tested against). The answers are the same either way. The
overview's buckets come from the rollups when their width is a whole number of minutes;
other widths read the records.

The SQL is written once with ``?`` parameters; each store gives its reader and its
:class:`~.rollup.Dialect`. Only fixed texts are formatted into the SQL; every value is a
parameter. Ties are ordered by the keys' code points (PostgreSQL compares with ``COLLATE
"C"``, as SQLite and Python do).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .model import TOP_SPC, check_window
from .rollup import (
    X5U_FETCH_FAILED,
    Dialect,
    decode,
    merge,
    minute_of,
    minute_sql,
    span_sql,
    whole_minutes,
)

__all__ = [
    "MAX_BUCKETS",
    "MAX_PROVIDERS",
    "TOP_REASONS",
    "Run",
    "StoreQueries",
    "console_summary",
    "providers",
    "stats",
]

TOP_REASONS = 10
"""Failure reasons listed in the overview."""
MAX_PROVIDERS = 500
"""Most SPCs in the providers table (the busiest)."""
MAX_BUCKETS = 400
"""Most time buckets in one series."""
TOP_X5U = 20
"""x5u URLs listed with fetch failures."""

Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""A store's reader: (SQL with ``?`` parameters, arguments) -> rows, all in one snapshot."""

Span = tuple[float | None, float | None]
_DIMS = "verstat, attest, reason, sip_code, action, label, x5u"
_RAW_DIMS = (
    "r.verstat, r.attest, r.reason, r.sip_code, r.action, r.label,"
    f" CASE WHEN r.sip_code = {X5U_FETCH_FAILED} THEN r.x5u END AS fx"
)
_RAW_GROUP = "r.verstat, r.attest, r.reason, r.sip_code, r.action, r.label, fx"
_SPC_JOIN = "record_spc s JOIN records r ON r.id = s.record_id AND r.ts = s.ts"


def check_bucket(since: float, until: float, bucket: float) -> None:
    """Raises ValueError unless ``since``/``until``/``bucket`` make a window of at most
    :data:`MAX_BUCKETS` buckets."""
    check_window(since, until)
    if not bucket >= 1:
        raise ValueError("bucket must be at least 1 second")
    if (until - since) / bucket > MAX_BUCKETS:
        raise ValueError(f"the window holds more than {MAX_BUCKETS} buckets")


def _plan(
    since: float | None, until: float | None, rollups: bool
) -> tuple[tuple[int, int] | None, list[Span]]:
    """The whole minutes to read from the rollups (None: none), and the spans of ``ts`` to
    read from the records."""
    if not rollups:
        return None, [(since, until)]
    lo, hi = whole_minutes(since, until)
    if lo >= hi:
        return None, [(since, until)]
    edges: list[Span] = []
    if since is None or since < 60.0 * lo:
        edges.append((since, 60.0 * lo))
    if until is None or 60.0 * hi < until:
        edges.append((60.0 * hi, until))
    return (lo, hi), edges


def _provider_spans(whole: tuple[int, int] | None) -> list[tuple[str, str, int, int]]:
    """The provider rollups covering the minutes ``whole``: its whole hours from
    ``provider_hours``, its other minutes from ``provider_minutes``, as (table, unit
    column, first, end)."""
    if whole is None:
        return []
    lo, hi = whole
    first, end = -(-lo // 60), hi // 60
    if first >= end:
        return [("provider_minutes", "minute", lo, hi)]
    spans = [("provider_hours", "hour", first, end)]
    if lo < 60 * first:
        spans.append(("provider_minutes", "minute", lo, 60 * first))
    if 60 * end < hi:
        spans.append(("provider_minutes", "minute", 60 * end, hi))
    return spans


def console_summary(
    run: Run,
    d: Dialect,
    since: float,
    until: float,
    bucket: float,
    spc: str | None = None,
    *,
    rollups: bool = True,
) -> dict[str, Any]:
    """The overview of ``since <= ts < until``: verstat and attestation per bucket of
    ``bucket`` seconds (bucket ``b`` is ``b * bucket <= ts < (b + 1) * bucket``), top
    failure reasons with their SIP codes, dispositions (action, label), and x5u URLs whose
    fetch failed (436). ``spc``: only that provider's records."""
    check_bucket(since, until, bucket)
    # groups: (bucket number, verstat, attest, reason, sip_code, action, label, x5u) -> calls
    groups: Counter[tuple[Any, ...]] = Counter()
    spc_where, spc_args = ("s.spc = ? AND ", [spc]) if spc is not None else ("", [])
    source = _SPC_JOIN if spc is not None else "records r"
    if bucket % 60 == 0:
        k = int(bucket) // 60
        whole, edges = _plan(since, until, rollups)
        if whole is not None:
            base = minute_of(since) // k * k  # minute - base >= 0: SQL's `/` is floor's
            table = "record_spc_minutes" if spc is not None else "record_minutes"
            span, args = span_sql("minute", *whole)
            for b, *key, nulls, n in run(
                f"SELECT (minute - ?) / ? AS b, {_DIMS}, nulls, sum(calls)"  # noqa: S608
                f" FROM {table} WHERE {'spc = ? AND ' if spc is not None else ''}{span}"
                f" GROUP BY b, {_DIMS}, nulls",
                [base, k, *spc_args, *args],
            ):
                groups[(base // k + b, *decode(nulls, key))] += int(n)
        for edge in edges:  # by SPC: on record_spc's time, its partitions and key
            window, args = span_sql("s.ts" if spc is not None else "r.ts", *edge)
            for minute, *dims, n in run(
                f"SELECT {minute_sql(d)} AS m, {_RAW_DIMS}, count(*)"  # noqa: S608
                f" FROM {source} WHERE {spc_where}{window} GROUP BY m, {_RAW_GROUP}",
                [*spc_args, *args],
            ):
                groups[(minute // k, *dims)] += n
    else:
        window, args = span_sql("r.ts", since, until)
        for b, *dims, n in run(
            f"SELECT {d.bucket_of} AS b, {_RAW_DIMS}, count(*)"  # noqa: S608
            f" FROM {source} WHERE {spc_where}{window} GROUP BY b, {_RAW_GROUP}",
            [bucket, *spc_args, *args],
        ):
            groups[(b, *dims)] += n
    series: Counter[tuple[int, str, str]] = Counter()
    reasons: Counter[tuple[str, int | None]] = Counter()
    dispositions: Counter[tuple[str | None, str | None]] = Counter()
    x5u: Counter[str | None] = Counter()
    for (b, verstat, attest, reason, sip_code, action, label, failed_x5u), n in groups.items():
        series[b, verstat, attest or "none"] += n
        if reason is not None:
            reasons[reason, sip_code] += n
        dispositions[action, label] += n
        if sip_code == X5U_FETCH_FAILED:
            x5u[failed_x5u] += n
    return {
        "since": since,
        "until": until,
        "bucket": bucket,
        "total": sum(series.values()),
        "series": [
            {"t": b * bucket, "verstat": verstat, "attest": attest, "count": n}
            for (b, verstat, attest), n in sorted(series.items())
        ],
        "reasons": [
            {"reason": r, "sip_code": code, "count": n}
            for (r, code), n in _top(reasons, TOP_REASONS)
        ],
        "dispositions": [
            {"action": action, "label": label, "count": n}
            for (action, label), n in _top(dispositions, None)
        ],
        "x5u_failures": [{"x5u": url, "count": n} for url, n in _top(x5u, TOP_X5U)],
    }


def _top(counts: Counter[Any], limit: int | None) -> list[tuple[Any, int]]:
    """Most first, ties in the keys' order (None first); at most ``limit``."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], repr(kv[0])))
    return ranked if limit is None else ranked[:limit]


def _ranked(counts: dict[Any, int], limit: int | None = None) -> list[tuple[Any, int]]:
    """Most first, ties by key (None first, then code points); at most ``limit``."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] is not None, kv[0] or ""))
    return ranked if limit is None else ranked[:limit]


def providers(
    run: Run, since: float, until: float, *, rollups: bool = True
) -> list[dict[str, Any]]:
    """One row per SPC with records in ``since <= ts < until`` (the busiest
    :data:`MAX_PROVIDERS`, ties by SPC): calls, attestation counts, failures, blocked calls,
    first and last seen, and the certificate of its latest call that had one (fingerprint,
    issuer, expiry from the certificate table; None where the table has no chain for it)."""
    check_window(since, until)
    # spc -> [calls, A, B, C, failures, blocked, first, last]
    rows: dict[str, list[Any]] = {}

    whole, edges = _plan(since, until, rollups)
    for table, unit, lo, hi in _provider_spans(whole):
        for spc, *values in run(
            "SELECT spc, sum(calls), sum(attest_a), sum(attest_b), sum(attest_c),"  # noqa: S608
            f" sum(failures), sum(blocked), min(first_ts), max(last_ts) FROM {table}"
            f" WHERE {unit} >= ? AND {unit} < ?"
            " GROUP BY spc",
            [lo, hi],
        ):
            merge(rows, spc, [*(int(v) for v in values[:6]), *values[6:]])
    for edge in edges:
        window, args = span_sql("s.ts", *edge)
        for spc, *values in run(
            "SELECT s.spc, count(*),"  # noqa: S608
            " count(*) FILTER (WHERE r.attest = 'A'),"
            " count(*) FILTER (WHERE r.attest = 'B'),"
            " count(*) FILTER (WHERE r.attest = 'C'),"
            " count(*) FILTER (WHERE r.reason IS NOT NULL),"
            " count(*) FILTER (WHERE r.action = 'block'),"
            f" min(s.ts), max(s.ts) FROM {_SPC_JOIN} WHERE {window} GROUP BY s.spc",
            args,
        ):
            merge(rows, spc, [*(int(v) for v in values[:6]), *values[6:]])
    busiest = sorted(rows.items(), key=lambda kv: (-kv[1][0], kv[0]))[:MAX_PROVIDERS]
    certificates = _latest_certificates(run, [spc for spc, _ in busiest], since, until)
    return [
        {
            "spc": spc,
            "calls": n,
            "attest": {"A": a, "B": b, "C": c},
            "failures": failures,
            "blocked": blocked,
            "first_seen": first,
            "last_seen": last,
            **certificates.get(spc, _NO_CERTIFICATE),
        }
        for spc, (n, a, b, c, failures, blocked, first, last) in busiest
    ]


_NO_CERTIFICATE: dict[str, Any] = {"fingerprint": None, "issuer": None, "not_after": None}
_SPC_PER_QUERY = 100
LATEST_CALLS = 50
"""A provider's certificate is that of the latest of its last calls in the window to name one."""


def _latest_certificates(
    run: Run, spcs: Sequence[str], since: float, until: float
) -> dict[str, dict[str, Any]]:
    """Per SPC, the certificate of its latest record in the window that names one, among
    its last :data:`LATEST_CALLS`: each SPC's lookup reads its ``record_spc`` key range
    backwards from the window's end and joins that many records by key (without the
    bound, PostgreSQL's planner joins every record of the window for each SPC)."""
    latest: dict[str, str | None] = {}
    for start in range(0, len(spcs), _SPC_PER_QUERY):
        part = spcs[start : start + _SPC_PER_QUERY]
        values = " UNION ALL ".join(["SELECT ? AS spc"] * len(part))
        rows = run(
            "SELECT q.spc, (SELECT r.fingerprint FROM (SELECT s.ts, s.record_id"  # noqa: S608
            " FROM record_spc s WHERE s.spc = q.spc AND s.ts >= ? AND s.ts < ?"
            " ORDER BY s.ts DESC, s.record_id DESC LIMIT ?) k"
            " JOIN records r ON r.id = k.record_id AND r.ts = k.ts"
            " WHERE r.fingerprint IS NOT NULL ORDER BY k.ts DESC, k.record_id DESC LIMIT 1)"
            f" FROM ({values}) q",
            [since, until, LATEST_CALLS, *part],
        )
        latest.update(rows)
    named = sorted({f for f in latest.values() if f is not None})
    known: dict[str, tuple[str, float]] = {}
    for start in range(0, len(named), _SPC_PER_QUERY):
        part = named[start : start + _SPC_PER_QUERY]
        rows = run(
            "SELECT fingerprint, issuer, not_after FROM certificates"  # noqa: S608
            f" WHERE fingerprint IN ({', '.join('?' * len(part))})",
            part,
        )
        known.update((f, (issuer, not_after)) for f, issuer, not_after in rows)
    out: dict[str, dict[str, Any]] = {}
    for spc, fingerprint in latest.items():
        issuer, not_after = known.get(fingerprint, (None, None)) if fingerprint else (None, None)
        out[spc] = {"fingerprint": fingerprint, "issuer": issuer, "not_after": not_after}
    return out


def stats(
    run: Run, since: float | None, until: float | None, *, rollups: bool = True
) -> dict[str, Any]:
    """Counts of the records in ``since <= ts < until`` (either bound may be None).

    ``by_attest`` counts a record without attestation under ``"none"``; ``by_reason``
    counts failures only; ``top_spc`` lists the :data:`~.model.TOP_SPC` SPCs with most
    records.
    """
    check_window(since, until)
    # (verstat, attest, reason) -> calls; spc -> calls
    groups: Counter[tuple[Any, ...]] = Counter()
    spcs: Counter[str] = Counter()
    whole, edges = _plan(since, until, rollups)
    if whole is not None:
        span, args = span_sql("minute", *whole)
        for *key, nulls, n in run(
            f"SELECT {_DIMS}, nulls, sum(calls) FROM record_minutes WHERE {span}"  # noqa: S608
            f" GROUP BY {_DIMS}, nulls",
            args,
        ):
            groups[decode(nulls, key)[:3]] += int(n)
    for table, unit, lo, hi in _provider_spans(whole):
        for spc, n in run(
            f"SELECT spc, sum(calls) FROM {table} WHERE {unit} >= ? AND {unit} < ?"  # noqa: S608
            " GROUP BY spc",
            [lo, hi],
        ):
            spcs[spc] += int(n)
    for edge in edges:
        window, args = span_sql("ts", *edge)
        for *key, n in run(
            f"SELECT verstat, attest, reason, count(*) FROM records WHERE {window}"  # noqa: S608
            " GROUP BY verstat, attest, reason",
            args,
        ):
            groups[tuple(key)] += n
        for spc, n in run(
            f"SELECT spc, count(*) FROM record_spc WHERE {window} GROUP BY spc",  # noqa: S608
            args,
        ):
            spcs[spc] += n
    by: tuple[dict[Any, int], ...] = ({}, {}, {})
    for dims, n in groups.items():
        for i, value in enumerate(dims):
            if i < 2 or value is not None:  # by_reason counts failures only
                by[i][value] = by[i].get(value, 0) + n
    verstat, attest, reason = (
        {("none" if k is None else str(k)): n for k, n in _ranked(counts)} for counts in by
    )
    return {
        "since": since,
        "until": until,
        "total": sum(groups.values()),
        "by_attest": attest,
        "by_verstat": verstat,
        "by_reason": reason,
        "top_spc": [{"spc": spc, "count": n} for spc, n in _ranked(spcs, TOP_SPC)],
    }


_T = TypeVar("_T")


class StoreQueries:
    """A store's ``stats``, ``console`` and ``providers``: the functions above, each in one
    snapshot. The store gives its :class:`~.rollup.Dialect` (``_dialect``), whether it has
    its rollups (``_rollups``) and :meth:`_read`."""

    _dialect: Dialect
    _rollups: bool

    def _read(self, query: Callable[[Run], _T]) -> _T:
        """``query`` on one read connection, in one snapshot."""
        raise NotImplementedError

    def stats(self, since: float | None, until: float | None) -> dict[str, Any]:
        """Counts of the records in ``since <= ts < until`` (:func:`.aggregate.stats`).

        Raises:
            ValueError: a bound is not finite, or since > until; the database cannot be
                read (also the driver's error: sqlite3.Error, psycopg.Error).
        """
        return self._read(lambda run: stats(run, since, until, rollups=self._rollups))

    def console(
        self, since: float, until: float, bucket: float, spc: str | None = None
    ) -> dict[str, Any]:
        """The console's overview of ``since <= ts < until`` (:func:`.aggregate.console_summary`).

        Raises:
            ValueError: a bad window or bucket; the database cannot be read (also the
                driver's error: sqlite3.Error, psycopg.Error).
        """
        check_bucket(since, until, bucket)
        return self._read(
            lambda run: console_summary(
                run, self._dialect, since, until, bucket, spc, rollups=self._rollups
            )
        )

    def providers(self, since: float, until: float) -> list[dict[str, Any]]:
        """One row per SPC seen in ``since <= ts < until`` (:func:`.aggregate.providers`).

        Raises:
            ValueError: a bad window; the database cannot be read (also the driver's
                error: sqlite3.Error, psycopg.Error).
        """
        return self._read(lambda run: providers(run, since, until, rollups=self._rollups))
