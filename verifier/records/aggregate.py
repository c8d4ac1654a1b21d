"""The console's aggregate queries, shared by the stores: one time window, read in one
snapshot, answered as plain JSON-ready data.

The SQL is written once with ``?`` parameters; each store gives its connection, its
parameter style and its expression for a record's time bucket (integer division of ``ts``).
Only fixed texts are formatted into the SQL; every value is a parameter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from .model import check_window

__all__ = ["MAX_BUCKETS", "MAX_PROVIDERS", "TOP_REASONS", "Run", "console_summary", "providers"]

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

_X5U_FETCH_FAILED = 436


def check_bucket(since: float, until: float, bucket: float) -> None:
    """Raises ValueError unless ``since``/``until``/``bucket`` make a window of at most
    :data:`MAX_BUCKETS` buckets."""
    check_window(since, until)
    if not bucket >= 1:
        raise ValueError("bucket must be at least 1 second")
    if (until - since) / bucket > MAX_BUCKETS:
        raise ValueError(f"the window holds more than {MAX_BUCKETS} buckets")


def console_summary(
    run: Run, bucket_of: str, since: float, until: float, bucket: float, spc: str | None = None
) -> dict[str, Any]:
    """The overview of ``since <= ts < until``: verstat and attestation per bucket of
    ``bucket`` seconds, top failure reasons with their SIP codes, dispositions (action,
    label), and x5u URLs whose fetch failed (436). ``spc``: only that provider's records.

    ``bucket_of``: the store's SQL for a record's bucket number from ``r.ts`` and one
    parameter (the bucket width), e.g. ``CAST(r.ts / ? AS INTEGER)``.
    """
    check_bucket(since, until, bucket)
    args: list[Any]
    if spc is None:
        source, args = "records r WHERE r.ts >= ? AND r.ts < ?", [since, until]
    else:
        source = (
            "record_spc s JOIN records r ON r.id = s.record_id AND r.ts = s.ts"
            " WHERE s.spc = ? AND s.ts >= ? AND s.ts < ?"
        )
        args = [spc, since, until]
    # One pass over the window (each further query would read every record again); the
    # groups are few (buckets x verstat x attestation x reason x disposition).
    rows = run(
        f"SELECT {bucket_of} AS b, r.verstat, r.attest, r.reason, r.sip_code, r.action,"  # noqa: S608
        " r.label, CASE WHEN r.sip_code = ? THEN r.x5u END AS failed_x5u, count(*)"
        f" FROM {source}"
        " GROUP BY b, r.verstat, r.attest, r.reason, r.sip_code, r.action, r.label, failed_x5u",
        [bucket, _X5U_FETCH_FAILED, *args],
    )
    series: Counter[tuple[int, str, str]] = Counter()
    reasons: Counter[tuple[str, int | None]] = Counter()
    dispositions: Counter[tuple[str | None, str | None]] = Counter()
    x5u: Counter[str | None] = Counter()
    for b, verstat, attest, reason, sip_code, action, label, failed_x5u, n in rows:
        series[b, verstat, attest or "none"] += n
        if reason is not None:
            reasons[reason, sip_code] += n
        dispositions[action, label] += n
        if sip_code == _X5U_FETCH_FAILED:
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


def providers(run: Run, since: float, until: float) -> list[dict[str, Any]]:
    """One row per SPC with records in ``since <= ts < until`` (the busiest
    :data:`MAX_PROVIDERS`): calls, attestation counts, failures, blocked calls, first and
    last seen, and the certificate of its latest call that had one (fingerprint, issuer,
    expiry from the certificate table; None where the table has no chain for it)."""
    check_window(since, until)
    rows = run(
        "SELECT s.spc, count(*) AS n,"
        " count(*) FILTER (WHERE r.attest = 'A'),"
        " count(*) FILTER (WHERE r.attest = 'B'),"
        " count(*) FILTER (WHERE r.attest = 'C'),"
        " count(*) FILTER (WHERE r.reason IS NOT NULL),"
        " count(*) FILTER (WHERE r.action = 'block'),"
        " min(s.ts), max(s.ts)"
        " FROM record_spc s JOIN records r ON r.id = s.record_id AND r.ts = s.ts"
        " WHERE s.ts >= ? AND s.ts < ? GROUP BY s.spc ORDER BY n DESC, s.spc LIMIT ?",
        [since, until, MAX_PROVIDERS],
    )
    certificates = _latest_certificates(run, [row[0] for row in rows], since, until)
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
        for spc, n, a, b, c, failures, blocked, first, last in rows
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
