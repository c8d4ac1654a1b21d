"""Operations endpoints: health and readiness, metrics, the OpenAPI document, the traceback
records and their statistics, and the admin reload."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..core.times import parse_time
from ..core.tn import tn_from_uri
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..records import RecordQuery, RecordStore, csv_header, to_csv_rows
from .errors import JSON, ApiError, invalid, json_response
from .inputs import authorize
from .keys import CLOCK, FLEET, METRICS, RECORDS, SERVICE, SETTINGS, TRUST_LIST

__all__ = ["OPENAPI_PATH", "routes"]

OPENAPI_PATH = Path(__file__).with_name("openapi.json")

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body: dict[str, Any] = {
        "status": "ready" if service.ready else "not ready",
        "trust_anchors": len(service.trust.anchors),
    }
    if request.app[TRUST_LIST] is not None:
        body["trust"] = trust_status(request.app)
    fleet = request.app[FLEET]
    if fleet is not None:
        # Without Redis each instance caches and fetches on its own: degraded, still ready.
        link = fleet.link
        body["shared"] = "ok" if link.healthy else f"degraded: {link.last_error}"
    records = request.app[RECORDS]
    if records is not None:
        # Verification goes on while the record store is in trouble (records wait in the
        # journal); say so, stay ready.
        writer = records.writer
        body["records"] = "ok" if writer.healthy else f"degraded: {writer.last_error}"
        if writer.journal_full:
            body["records"] = "degraded: journal full, records are being dropped"
    return json_response(body, status=200 if service.ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type=JSON)


@routes.post("/v1/admin/reload")
async def admin_reload(request: web.Request) -> web.Response:
    """Reload the trust anchors and the policy, as SIGHUP does, and say how it went."""
    authorize(request, request.app[SETTINGS].api.admin_token, required=True)
    report = request.app[SERVICE].reload_report()
    ok = all(part["ok"] for part in report.values())
    return json_response({"ok": ok, **report})


@routes.post("/v1/admin/trust/refresh")
async def admin_trust_refresh(request: web.Request) -> web.Response:
    """Fetch the STI-PA trust list now and say how it went."""
    authorize(request, request.app[SETTINGS].api.admin_token, required=True)
    trust_list = request.app[TRUST_LIST]
    if trust_list is None:
        report: dict[str, Any] = {"ok": False, "error": "no [trust] list_url is configured"}
    else:
        report = {**await trust_list.refresh()}
        if trust_list.settings.crl_urls:
            report["crls"] = await trust_list.refresh_crls()
    return json_response({**report, "trust": trust_status(request.app)})


def trust_status(app: web.Application) -> dict[str, Any]:
    """The trust in force: its anchors' count and earliest expiry, and the list's source,
    age and last refresh."""
    service, trust_list = app[SERVICE], app[TRUST_LIST]
    anchors = service.trust.anchors
    body: dict[str, Any] = {
        "anchors": len(anchors),
        "earliest_expiry": min(a.not_valid_after_utc for a in anchors).isoformat(),
        "source": "local",
    }
    if trust_list is not None:
        updated = trust_list.updated_at
        body["source"] = trust_list.source if trust_list.anchors else "local"
        body["list_anchors"] = len(trust_list.anchors)
        body["list_age"] = None if updated is None else round(app[CLOCK]() - updated, 3)
        body["last_refresh"] = trust_list.last
        now = app[CLOCK]()
        body["crls"] = {
            url: {"age": round(now - at, 3), "revoked": len(crl)}
            for url, (crl, at) in trust_list.crls.items()
        }
    return body


def _query_time(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise invalid(name, f"must be epoch seconds or an RFC 3339 date-time: {exc}") from None


def _record_store(request: web.Request) -> RecordStore:
    authorize(request, request.app[SETTINGS].api.admin_token, required=True)
    records = request.app[RECORDS]
    if records is None:
        raise ApiError(404, "SVC4003", "Resource not found: %1", ["records are disabled"])
    return records.store


_RECORD_PARAMS = frozenset(
    {"origid", "orig", "dest", "spc", "since", "until", "limit", "cursor", "format"}
)


@routes.get("/v1/records")
async def records(request: web.Request) -> web.StreamResponse:
    """Traceback records, newest first: JSON pages, or CSV of every match."""
    store = _record_store(request)
    unknown = set(request.query) - _RECORD_PARAMS
    if unknown:
        raise invalid(sorted(unknown)[0], "unknown query parameter")
    numbers: dict[str, str | None] = {}
    for name in ("orig", "dest"):
        given = request.query.get(name) or None
        numbers[name] = (tn_from_uri(given) or given) if given else None
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise invalid("limit", "must be an integer from 1 to 1000") from None
    try:
        query = RecordQuery(
            origid=request.query.get("origid") or None,
            orig=numbers["orig"],
            dest=numbers["dest"],
            spc=(request.query.get("spc") or "").upper() or None,
            since=_query_time(request, "since"),
            until=_query_time(request, "until"),
            limit=limit,
            cursor=request.query.get("cursor") or None,
        )
    except ValueError as exc:
        raise invalid("query", str(exc)) from None
    wants_csv = request.query.get("format") == "csv" or (
        "text/csv" in request.headers.get("Accept", "")
        and JSON not in request.headers.get("Accept", "")
    )
    if not wants_csv:
        page, cursor = await asyncio.to_thread(store.query, query)
        return json_response({"records": [r.to_dict() for r in page], "next_cursor": cursor})
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="records.csv"',
        }
    )
    await response.prepare(request)
    await response.write(csv_header().encode())
    chunks = store.iter_query(query)
    while True:
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            break
        await response.write("".join(to_csv_rows(chunk)).encode())
    await response.write_eof()
    return response


@routes.get("/v1/stats")
async def stats(request: web.Request) -> web.Response:
    """Counts by attestation, verstat, failure reason and top SPCs in a time window."""
    store = _record_store(request)
    unknown = set(request.query) - {"since", "until"}
    if unknown:
        raise invalid(sorted(unknown)[0], "unknown query parameter")
    since, until = _query_time(request, "since"), _query_time(request, "until")
    if since is not None and until is not None and since > until:
        raise invalid("since", "must not be after until")
    return json_response(await asyncio.to_thread(store.stats, since, until))
