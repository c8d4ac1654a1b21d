"""The operator console: a page (``GET /console`` and its assets, packaged in ``static/``)
and the JSON it reads (``/v1/console/...``), every figure from the record store's aggregate
queries (:mod:`verifier.records.aggregate`), so every instance of a fleet shows the same
picture; only the x5u breakers and the trust anchors are this instance's own.

The page is served without the token (it holds no data) but only while an admin token is
configured; every data call needs ``Authorization: Bearer <api.admin_token>``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from aiohttp import web

from ..core.policy import Policy, ProviderEntry
from ..net.fetch import CertificateFetcher
from ..records import RecordStore
from .errors import ApiError, invalid, json_response
from .inputs import authorize
from .keys import CLOCK, CREDENTIALS, RECORDS, SERVICE, SETTINGS

__all__ = ["STATIC", "routes"]

STATIC = Path(__file__).with_name("static")
_ASSETS = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
"""The page's assets: a fixed list, never a path from the request."""
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MIN_WINDOW, MAX_WINDOW = 60, 31 * 86400
"""The console's windows: a minute to a month, in seconds."""
_BUCKETS = 60
"""Buckets in a window's series."""
_RATE_SPAN = 300
"""Calls per second are averaged over this many seconds (at least one bucket)."""

routes = web.RouteTableDef()


def _page_allowed(request: web.Request) -> None:
    if request.app[SETTINGS].api.admin_token is None:
        raise web.HTTPForbidden(
            text="The console is disabled until api.admin_token is configured.\n",
            headers=_HEADERS,
        )


@routes.get("/console")
async def page(request: web.Request) -> web.StreamResponse:
    """The console page (no data in it: it asks for the token and calls the JSON API)."""
    _page_allowed(request)
    return web.FileResponse(STATIC / "index.html", headers=_HEADERS)


@routes.get("/console/{asset}")
async def asset(request: web.Request) -> web.StreamResponse:
    """One of the page's fixed assets."""
    _page_allowed(request)
    name = request.match_info["asset"]
    kind = _ASSETS.get(name)
    if kind is None:
        raise web.HTTPNotFound  # answered as every unknown path is (error_middleware)
    return web.FileResponse(STATIC / name, headers={**_HEADERS, "Content-Type": kind})


def _record_store(request: web.Request) -> RecordStore:
    """The store, for a caller with the admin token (as ``/v1/records`` asks)."""
    authorize(request, request.app[SETTINGS].api.admin_token, required=True)
    records = request.app[RECORDS]
    if records is None:
        raise ApiError(404, "SVC4003", "Resource not found: %1", ["records are disabled"])
    return records.store


def _window(request: web.Request, allowed: frozenset[str]) -> tuple[float, float]:
    """``(since, until)``: the last ``window`` seconds (default an hour) up to now."""
    unknown = set(request.query) - allowed
    if unknown:
        raise invalid(sorted(unknown)[0], "unknown query parameter")
    try:
        window = int(request.query.get("window", "3600"))
    except ValueError:
        raise invalid("window", f"must be whole seconds, {MIN_WINDOW} to {MAX_WINDOW}") from None
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise invalid("window", f"must be whole seconds, {MIN_WINDOW} to {MAX_WINDOW}")
    until = request.app[CLOCK]()
    return until - window, until


def _bucket(window: int) -> float:
    """A window's bucket width: a 60th of it, rounded up to whole minutes from an hour up
    (whole minutes are read from the record store's per-minute rollups)."""
    if window < 60 * _BUCKETS:
        return window / _BUCKETS
    return 60.0 * -(-window // (60 * _BUCKETS))


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _entry(entry: ProviderEntry, now: float) -> dict[str, Any]:
    return {
        "list": entry.kind,
        "key": entry.key,
        "value": entry.value,
        "reference": entry.reference or None,
        "label": entry.label,
        "effective": None if entry.effective is None else _iso(entry.effective),
        "expires": None if entry.expires is None else _iso(entry.expires),
        "active": entry.active(now),
        "line": entry.line,
    }


def _spc_policy(policy: Policy, spc: str, now: float) -> dict[str, Any]:
    """What the policy file says of an SPC: the first active block, else allow, entry."""
    for entry in (*policy.blocks, *policy.allows):
        if entry.key == "spc" and entry.value == spc and entry.active(now):
            return {
                "status": "blocked" if entry.kind == "block" else "allowed",
                "reference": entry.reference or None,
            }
    return {"status": "default", "reference": None}


@routes.get("/v1/console/overview")
async def overview(request: web.Request) -> web.Response:
    """The overview of a window: series, failure reasons, dispositions, x5u failures, the
    calls per second, and this instance's trust anchors and open x5u breakers."""
    store = _record_store(request)
    since, until = _window(request, frozenset({"window", "spc"}))
    spc = (request.query.get("spc") or "").upper() or None
    if spc is not None and (len(spc) > 64 or not spc.isprintable()):
        raise invalid("spc", "must be at most 64 printable characters")
    bucket = _bucket(round(until - since))
    try:
        body = await asyncio.to_thread(store.console, since, until, bucket, spc)
    except ValueError as exc:
        raise invalid("window", str(exc)) from None
    span = max(_RATE_SPAN, bucket)
    recent = sum(s["count"] for s in body["series"] if s["t"] >= until - span)
    body["calls_per_second"] = round(recent / span, 3)
    service = request.app[SERVICE]
    anchors = service.trust.anchors
    body["trust_anchors"] = {
        "count": len(anchors),
        "earliest_expiry": _iso(min(a.not_valid_after_utc for a in anchors).timestamp())
        if anchors
        else None,
    }
    credentials = request.app[CREDENTIALS]
    if isinstance(credentials, CertificateFetcher):
        stats = credentials.stats()
        body["x5u_fetch"] = {
            "errors": stats["fetch_errors"],
            "breakers_open": stats["breakers_open"],
            "refused": {"busy": stats["fetch_busy"], "rate_limited": stats["fetch_rate_limited"]},
        }
    else:
        body["x5u_fetch"] = None
    body["replay_label"] = service.policy.labels.get("replayed")
    return json_response(body)


@routes.get("/v1/console/providers")
async def providers(request: web.Request) -> web.Response:
    """One row per SPC seen in the window, with what the policy says of it."""
    store = _record_store(request)
    since, until = _window(request, frozenset({"window"}))
    rows = await asyncio.to_thread(store.providers, since, until)
    policy = request.app[SERVICE].policy
    for row in rows:
        row["policy"] = _spc_policy(policy, row["spc"], until)
    return json_response({"since": since, "until": until, "providers": rows})


@routes.get("/v1/console/policy")
async def policy(request: web.Request) -> web.Response:
    """The block and allow entries in force, each with the calls it matched in the window
    (entries keyed by SPC; other keys are not counted), and the rules by name."""
    store = _record_store(request)
    since, until = _window(request, frozenset({"window"}))
    rows = {row["spc"]: row for row in await asyncio.to_thread(store.providers, since, until)}
    current = request.app[SERVICE].policy
    entries = []
    for entry in (*current.blocks, *current.allows):
        out = _entry(entry, until)
        row = rows.get(entry.value) if entry.key == "spc" else None
        if entry.key != "spc":
            out["matched"] = None
        elif entry.kind == "block":
            out["matched"] = row["blocked"] if row else 0
        else:
            out["matched"] = row["calls"] if row else 0
        entries.append(out)
    return json_response(
        {
            "since": since,
            "until": until,
            "source": current.source,
            "block_response": current.block_response,
            "entries": entries,
            "rules": [
                {"name": r.name, "action": r.action, "label": r.label, "line": r.line}
                for r in current.rules
            ],
        }
    )
