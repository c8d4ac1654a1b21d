"""The HTTP service: ATIS-1000082 REST API, the native API, and operations endpoints.

``create_app(settings)`` builds the aiohttp application; ``run(settings)`` serves it. The
x5u fetcher (and its client session) is opened and closed in one ``cleanup_ctx``; tests
pass their own ``credentials`` source and ``clock``.

Answers: a verification that fails is HTTP 200 with its verdict; 4xx (in the ATIS
``requestError`` shape) is only for a request that cannot be understood. Nothing a caller
sends produces a 500: the last-resort middleware answers POL5000 and logs the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .. import __version__
from ..core.certs import TrustStore
from ..core.errors import VerifierError
from ..core.sip import SipError, parse_invite
from ..core.times import parse_time
from ..core.tn import tn_from_uri
from ..core.verify import CallInfo, CredentialSource
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..net.fetch import CertificateFetcher
from ..net.rcd import RcdContentFetcher
from ..net.redis_tier import RedisLink, RedisReplayCache, RedisTier
from ..records.sqlite import (
    RecordQuery,
    RecordStore,
    RecordWriter,
    csv_header,
    open_store,
    to_csv_rows,
)
from ..service import Service, VerifyRequest, dumps
from ..settings import Settings
from .fastpath import FastFront, FastSite, Headers

__all__ = ["FRONT", "SERVICE", "ApiError", "Service", "create_app", "run", "start_site"]

log = logging.getLogger(__name__)
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
JSON = "application/json"
_MAX_EPOCH = 2**62  # a larger time is no date, and 10**400 would overflow float()


# -- API errors (ATIS-1000082 requestError) ----------------------------------------------------


class ApiError(VerifierError):
    """A request that cannot be served, answered in the ATIS ``requestError`` shape."""

    def __init__(
        self,
        status: int,
        message_id: str,
        text: str,
        variables: list[str] | None = None,
        *,
        kind: str = "serviceException",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{message_id} {text} {variables or []}")
        self.headers = headers or {}
        self.status = status
        self.message_id = message_id
        self.text = text
        self.variables = variables or []
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {
            "requestError": {
                self.kind: {
                    "messageId": self.message_id,
                    "text": self.text,
                    "variables": self.variables,
                }
            }
        }


def missing(name: str) -> ApiError:
    return ApiError(400, "SVC4001", "Missing mandatory parameter '%1'", [name])


def invalid(name: str, why: str) -> ApiError:
    return ApiError(400, "SVC4005", "Invalid input value for message part %1: %2", [name, why])


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type=JSON, headers=headers)


SERVICE = web.AppKey("service", Service)


# -- request parsing ---------------------------------------------------------------------------


def _given_request_id(value: str | None) -> str | None:
    """The caller's X-RequestID when it is one we echo (1-128 printable characters)."""
    if value is not None and 0 < len(value) <= 128 and value.isprintable():
        return value
    return None


class _RequestIds:
    """A new request id: 16 hex digits, 64 bits from a generator seeded from the system's
    randomness once per process (and again in a forked child).

    ``os.urandom(8)`` for each request cost 10 us in the server (0.5 us alone): it releases
    the GIL for its ``getrandom`` call, and the record writer thread took the GIL each
    time. Request ids correlate logs, records and answers; they guard nothing, so a
    non-cryptographic generator serves.
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._bits = random.Random(os.urandom(32)).getrandbits  # noqa: S311 - not a secret

    def __call__(self) -> str:
        return f"{self._bits(64):016x}"


new_request_id = _RequestIds()


def _request_id(request: web.Request) -> str:
    return _given_request_id(request.headers.get("X-RequestID")) or new_request_id()


def _token_ok(authorization: str, token: str) -> bool:
    """Whether an Authorization header value carries ``token`` as a bearer (constant-time)."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")
    )


def _authorize(request: web.Request, token: str | None, *, required: bool) -> None:
    """Check the bearer token (constant-time). ``required`` endpoints refuse everyone while
    no token is configured; the others are open then.

    Raises:
        ApiError: 401 POL4001 (no or wrong token), 403 POL4003 (no token configured).
    """
    if token is None:
        if required:
            raise ApiError(
                403,
                "POL4003",
                "Forbidden: %1",
                ["this endpoint is disabled until api.admin_token is configured"],
                kind="policyException",
            )
        return
    if not _token_ok(request.headers.get("Authorization", ""), token):
        raise ApiError(
            401,
            "POL4001",
            "Unauthorized: %1",
            ["a valid bearer token is required"],
            kind="policyException",
            headers={"WWW-Authenticate": 'Bearer realm="verifier"'},
        )


def _accept_ok(accept: str | None) -> bool:
    """Whether an Accept header value (None: absent) admits a JSON answer."""
    if not accept:
        return True
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in (JSON, "application/*", "*/*") or media.endswith("+json"):
            return True
    return False


def _check_accept(request: web.Request) -> None:
    accept = request.headers.get("Accept")
    if not _accept_ok(accept):
        raise ApiError(406, "SVC4002", "Not Acceptable: %1", [(accept or "")[:100]])


async def _read_body(request: web.Request, limit: int, types: tuple[str, ...] = (JSON,)) -> bytes:
    _check_accept(request)
    if request.content_type not in types:
        raise ApiError(
            415, "SVC4004", "Unsupported Media Type: %1", [request.content_type or "none"]
        )
    length = request.content_length
    if length is None:
        raise ApiError(411, "SVC4007", "Length Required", [])
    if length > limit:
        raise ApiError(413, "SVC4000", "Request body larger than %1 bytes", [str(limit)])
    body = await request.read()
    if not body:
        raise ApiError(400, "SVC4000", "Missing request body", [])
    return body


def _parse_json(body: bytes) -> Any:
    """The request body's JSON value, exactly as the standard parser reads it.

    orjson parses an ATIS body in 0.7 us against 2.9 (1.6 with the float check below),
    but not always the same way: it reads an integer past 64 bits as a float, and refuses
    what the standard parser takes (a byte order mark, NaN, a lone surrogate escape). So a
    body orjson refuses, or whose value holds any float (no valid request has one), is
    read again by the standard parser, whose value or error is the answer.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if not _holds_float(value):
            return value
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ApiError(
            400, "SVC4006", "Failed to parse message body: %1", [str(exc)[:200]]
        ) from None


def _holds_float(value: Any, depth: int = 0) -> bool:
    """Whether a float is anywhere in a parsed JSON value. A value nested deeper than any
    request is counted as holding one: the standard parser reads it (no deep recursion)."""
    kind = type(value)
    if kind is float or depth > 64:
        return True
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return False
    for item in value:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and _holds_float(item, depth + 1)):
            return True
    return False


def _tn_field(obj: dict[str, Any], outer: str) -> Any:
    if outer not in obj:
        raise missing(outer)
    part = obj[outer]
    if not isinstance(part, dict):
        raise invalid(outer, "must be an object")
    if "tn" not in part:
        raise missing(f"{outer}.tn")
    return part["tn"]


def _atis_call(data: Any) -> VerifyRequest:
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    request = data.get("verificationRequest")
    if request is None:
        raise missing("verificationRequest")
    if not isinstance(request, dict):
        raise invalid("verificationRequest", "must be an object")
    orig = _tn_field(request, "from")
    if not isinstance(orig, str):
        raise invalid("from.tn", "must be a telephone number")
    dest = _tn_field(request, "to")
    if not isinstance(dest, list) or not dest or not all(isinstance(t, str) for t in dest):
        raise invalid("to.tn", "must be a non-empty array of telephone numbers")
    call = CallInfo(from_=orig, to=tuple(dest))  # each number normalised once, here
    if call.calling_tn is None:
        raise invalid("from.tn", "must be a telephone number")
    if len(call.called) != len(dest) or any(p.tn is None for p in call.called):
        raise invalid("to.tn", "must be a non-empty array of telephone numbers")
    if "time" not in request:
        raise missing("time")
    when = request["time"]
    if type(when) is not int or abs(when) > _MAX_EPOCH:
        raise invalid("time", "must be an integer (epoch seconds)")
    identity = request.get("identity")
    if identity is not None and not _identity_ok(identity):
        raise invalid("identity", "must be a string or an array of strings")
    return VerifyRequest(identity=identity, call=call, date=float(when))


def _identity_ok(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_NATIVE_FIELDS = frozenset({"identity", "from", "pai", "to", "ruri", "date"})


def _native_call(data: Any, where: str = "") -> VerifyRequest:
    if not isinstance(data, dict):
        raise invalid(where.removesuffix(".") or "body", "must be a JSON object")
    if not data.keys() <= _NATIVE_FIELDS:
        raise invalid(f"{where}{sorted(set(data) - _NATIVE_FIELDS)[0]}", "unknown field")
    identity = data.get("identity")
    if identity is not None and not _identity_ok(identity):
        raise invalid(f"{where}identity", "must be a string or an array of strings")
    parties: dict[str, str | None] = {}
    for name in ("from", "pai", "to", "ruri"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid(f"{where}{name}", "must be a string (a TN or a SIP/tel URI)")
        parties[name] = value
    date = data.get("date")
    when: float | None = None
    if date is not None:
        if type(date) is int and abs(date) <= _MAX_EPOCH:
            when = float(date)
        elif isinstance(date, str):
            try:
                when = parse_time(date)
            except ValueError:
                raise invalid(f"{where}date", "must be epoch seconds or an RFC 1123 date") from None
        else:
            raise invalid(f"{where}date", "must be epoch seconds or an RFC 1123 date")
    return VerifyRequest(
        identity=identity,
        call=CallInfo(
            from_=parties["from"], pai=parties["pai"], to=parties["to"], ruri=parties["ruri"]
        ),
        date=when,
    )


# -- handlers ----------------------------------------------------------------------------------

routes = web.RouteTableDef()


def _begin_verification(request: web.Request) -> tuple[Service, str, float]:
    """What every verification endpoint does first: check the verify token (when one is
    configured), name the request and start its latency clock."""
    service = request.app[SERVICE]
    _authorize(request, service.settings.api.verify_token, required=False)
    return service, _request_id(request), time.perf_counter()


@routes.post("/stir/v1/verification")
async def atis_verification(request: web.Request) -> web.Response:
    service, rid, started = _begin_verification(request)
    body = await _read_body(request, service.settings.api.body_limit)
    return web.Response(
        body=await _atis_answer(service, body, rid, started),
        content_type=JSON,
        headers={"X-RequestID": rid},
    )


async def _atis_answer(service: Service, body: bytes, rid: str, started: float) -> bytes:
    """The ATIS answer to a request body, for the aiohttp handler and the fast lane alike.

    Raises:
        ApiError: a request that cannot be understood (SVC4001, SVC4005, SVC4006...).
    """
    item = _atis_call(_parse_json(body))
    outcome = await service.verify(item, "atis", rid)
    service.latency["atis"].observe(time.perf_counter() - started)
    return service.atis_body(outcome.result)


def _fast_front(service: Service) -> FastFront:
    """The fast lane of ``POST /stir/v1/verification`` (:mod:`verifier.http.fastpath`): the same
    answers as :func:`atis_verification` and :func:`error_middleware`, without aiohttp's
    request and response objects."""

    async def answer(body: bytes, headers: Headers) -> tuple[int, bytes, list[tuple[str, str]]]:
        given = _given_request_id(headers.get("x-requestid"))
        rid = given or new_request_id()
        started = time.perf_counter()
        try:
            return 200, await _atis_answer(service, body, rid, started), [("X-RequestID", rid)]
        except ApiError as exc:
            error = exc
        except asyncio.CancelledError:
            raise
        except Exception:
            error = _internal_error("/stir/v1/verification")
        status, payload, extra = _error_parts(service, error, given)
        return status, payload, list(extra.items())

    def accepts(headers: Headers) -> bool:
        """Requests aiohttp's handler would refuse (token, Accept) are left to it."""
        token = service.settings.api.verify_token
        if token is not None and not _token_ok(headers.get("authorization", ""), token):
            return False
        return _accept_ok(headers.get("accept"))

    return FastFront(answer, accepts, body_limit=service.settings.api.body_limit)


@routes.post("/v1/verify")
async def native_verify(request: web.Request) -> web.Response:
    service, rid, started = _begin_verification(request)
    item = _native_call(_parse_json(await _read_body(request, service.settings.api.body_limit)))
    outcome = await service.verify(item, "native", rid)
    service.latency["native"].observe(time.perf_counter() - started)
    return _json(service.native_body(outcome, rid), headers={"X-RequestID": rid})


@routes.post("/v1/verify/sip")
async def sip_verify(request: web.Request) -> web.Response:
    service, rid, started = _begin_verification(request)
    body = await _read_body(
        request, service.settings.api.body_limit, ("text/plain", "message/sip", "application/sip")
    )
    try:
        sip = parse_invite(body.decode("utf-8"))
        date = sip.date_epoch()
    except UnicodeDecodeError:
        raise ApiError(400, "SVC4006", "Failed to parse message body: %1", ["not UTF-8"]) from None
    except SipError as exc:
        raise ApiError(400, "SVC4006", "Failed to parse message body: %1", [str(exc)]) from None
    item = VerifyRequest(
        identity=sip.identity,
        call=CallInfo(from_=sip.from_, pai=sip.calling_pai(), to=sip.to, ruri=sip.ruri),
        date=date,
    )
    outcome = await service.verify(item, "sip", rid)
    service.latency["sip"].observe(time.perf_counter() - started)
    return _json(service.native_body(outcome, rid), headers={"X-RequestID": rid})


@routes.post("/v1/verify/batch")
async def batch_verify(request: web.Request) -> web.Response:
    service, rid, started = _begin_verification(request)
    api = service.settings.api
    data = _parse_json(await _read_body(request, api.batch_body_limit))
    with service.in_flight_request():
        return await _batch_answer(service, data, rid, started)


async def _batch_answer(service: Service, data: Any, rid: str, started: float) -> web.Response:
    api = service.settings.api
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    if "requests" not in data:
        raise missing("requests")
    items = data["requests"]
    if not isinstance(items, list):
        raise invalid("requests", "must be an array")
    if len(items) > api.batch_max:
        raise invalid("requests", f"at most {api.batch_max} requests in one batch")
    results: list[dict[str, Any]] = []
    calls: list[VerifyRequest] = []
    slots: list[int] = []
    for index, raw in enumerate(items):
        try:
            calls.append(_native_call(raw, f"requests[{index}]."))
        except ApiError as exc:
            service.metrics.requests_rejected.labels(exc.message_id).inc()
            results.append(exc.body())
            continue
        slots.append(index)
        results.append({})
    ids = [f"{rid}/{i}" for i in slots]
    for index, item_id, outcome in zip(
        slots, ids, await service.verify_batch(calls, "batch", ids), strict=True
    ):
        results[index] = service.native_body(outcome, item_id)
    response = _json({"request_id": rid, "results": results}, headers={"X-RequestID": rid})
    service.latency["batch"].observe(time.perf_counter() - started)
    return response


def _query_time(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise invalid(name, f"must be epoch seconds or an RFC 3339 date-time: {exc}") from None


def _record_store(request: web.Request) -> RecordStore:
    service = request.app[SERVICE]
    _authorize(request, service.settings.api.admin_token, required=True)
    if service.store is None:
        raise ApiError(404, "SVC4003", "Resource not found: %1", ["records are disabled"])
    return service.store


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
        return _json({"records": [r.to_dict() for r in page], "next_cursor": cursor})
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
    return _json(await asyncio.to_thread(store.stats, since, until))


@routes.post("/v1/admin/reload")
async def admin_reload(request: web.Request) -> web.Response:
    """Reload the trust anchors and the policy, as SIGHUP does, and say how it went."""
    service = request.app[SERVICE]
    _authorize(request, service.settings.api.admin_token, required=True)
    report = service.reload_report()
    ok = all(part["ok"] for part in report.values())
    return _json({"ok": ok, **report})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "version": __version__})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    ready = service.ready and service.credentials is not None
    body: dict[str, Any] = {
        "status": "ready" if ready else "not ready",
        "trust_anchors": len(service.trust.anchors),
    }
    if service.shared is not None:
        # Without Redis each instance caches and fetches on its own: degraded, still ready.
        body["shared"] = (
            "ok" if service.shared.healthy else f"degraded: {service.shared.last_error}"
        )
    if service.records is not None:
        # Verification goes on while the record store is in trouble; say so, stay ready.
        body["records"] = (
            "ok" if service.records.healthy else f"degraded: {service.records.last_error}"
        )
    return _json(body, status=200 if ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type=JSON)


# -- errors ------------------------------------------------------------------------------------


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    error_source: Exception | None = None
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except web.HTTPException as exc:
        error_source = exc
        if exc.status == 404:
            error = ApiError(404, "SVC4003", "Resource not found: %1", [request.path[:200]])
        elif exc.status == 405:
            error = ApiError(
                405, "POL4050", "Method not allowed: %1", [request.method], kind="policyException"
            )
        elif exc.status == 413:
            error = ApiError(413, "SVC4000", "Request body too large", [])
        else:
            raise
    except asyncio.CancelledError:
        raise
    except Exception:
        error = _internal_error(request.path)
    status, body, headers = _error_parts(
        request.app.get(SERVICE), error, _given_request_id(request.headers.get("X-RequestID"))
    )
    if isinstance(error_source, web.HTTPException) and "Allow" in error_source.headers:
        headers["Allow"] = error_source.headers["Allow"]
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


def _internal_error(path: str) -> ApiError:
    """POL5000, for an exception that should never happen: logged with its traceback (call
    it from the ``except`` block)."""
    log.exception("internal_error", extra={"path": path})
    return ApiError(500, "POL5000", "Internal server error", [], kind="policyException")


def _error_parts(
    service: Service | None, error: ApiError, request_id: str | None
) -> tuple[int, bytes, dict[str, str]]:
    """Count a refused request; its status, ``requestError`` body and headers (the caller's
    X-RequestID echoed when it gave one)."""
    if service is not None:
        service.metrics.requests_rejected.labels(error.message_id).inc()
    headers = {"X-RequestID": request_id} if request_id is not None else {}
    headers.update(error.headers)
    return error.status, dumps(error.body()), headers


class _ParserErrors(RequestHandler):
    """aiohttp's connection handler, answering what its HTTP parser refuses (a bad request
    line, header or Content-Length: no application code runs for those) in the ATIS
    ``requestError`` shape like every other refusal, SVC4006, where aiohttp answers in
    plain text. Installed by :func:`start_site` (``__slots__`` empty: an instance of
    aiohttp's handler can take this class)."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        detail = " ".join((message or str(exc or "") or "malformed HTTP request").split())
        log.warning("http_request_refused", extra={"status": status, "error": detail[:200]})
        error = ApiError(status, "SVC4006", "Failed to parse message body: %1", [detail[:200]])
        code, body, headers = _error_parts(None, error, None)
        response = web.Response(status=code, body=body, content_type=JSON, headers=headers)
        response.force_close()  # as aiohttp does: the stream is past understanding
        return response


class _Server(web.Server):
    """aiohttp's server, whose connections refuse in the API's shape (_ParserErrors)."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _ParserErrors
        return handler


# -- application -------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    *,
    trust: TrustStore | None = None,
    credentials: CredentialSource | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The aiohttp application.

    ``trust`` defaults to the settings' trust anchors; ``credentials`` to an x5u fetcher
    opened with the application (one shared client session). Tests pass their own.

    Raises:
        ValueError: no trust anchor could be loaded (the service refuses to start).
    """
    if trust is None:
        trust = TrustStore.from_paths(
            settings.trust_anchors,
            require_policy_oid=settings.verification.require_policy_oid,
        )
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.api.batch_body_limit
    )
    service = Service(settings, trust, credentials=credentials, clock=clock)
    app[SERVICE] = service
    app.add_routes(routes)
    app.cleanup_ctx.append(_fetcher_ctx)
    app.cleanup_ctx.append(_records_ctx)
    app.on_shutdown.append(_not_ready)
    app.on_cleanup.append(_flush_held_back)
    return app


async def _fetcher_ctx(app: web.Application) -> AsyncIterator[None]:
    """The x5u fetcher and the RCD content fetcher, with the shared Redis tier (certificate
    chains, failures, the fleet-wide fetch lock, replays) when ``redis.url`` is set."""
    service = app[SERVICE]
    if service.credentials is not None:
        service.ready = True
        yield
        service.ready = False
        return
    latency = service.metrics.fetch_latency

    def observe(outcome: str, seconds: float) -> None:
        latency.labels(outcome).observe(seconds)

    settings = service.settings
    async with contextlib.AsyncExitStack() as stack:
        shared: RedisTier | None = None
        if settings.redis.url is not None:
            link = await stack.enter_async_context(RedisLink(settings.redis))
            shared = RedisTier(link, clock=service.clock)
            verification = settings.verification
            service.attach_shared(
                link,
                shared,
                RedisReplayCache(
                    link,
                    max_size=verification.replay_cache_size,
                    window=verification.replay_window,
                    clock=service.clock,
                ),
            )
        fetcher = await stack.enter_async_context(
            CertificateFetcher(
                service.trust, settings.x5u, clock=service.clock, on_load=observe, shared=shared
            )
        )
        service.attach_fetcher(fetcher)
        service.rcd_fetcher = await stack.enter_async_context(
            RcdContentFetcher(settings.rcd, clock=service.clock)
        )
        service.ready = True
        yield
        service.ready = False


async def _records_ctx(app: web.Application) -> AsyncIterator[None]:
    """The record store and its writer: opened with the app, drained and closed after the
    last request (aiohttp runs cleanup after in-flight handlers finish on SIGTERM)."""
    service = app[SERVICE]
    settings = service.settings.records
    if not settings.enabled:
        yield
        return
    store = await asyncio.to_thread(open_store, settings)
    writer = RecordWriter(store, settings, clock=service.clock)
    await writer.start()
    service.store, service.records = store, writer
    service.metrics.watch_records(writer)
    try:
        yield
    finally:
        await writer.close()
        service.records = None
        service.store = None
        await asyncio.to_thread(store.close)


async def _not_ready(app: web.Application) -> None:
    app[SERVICE].ready = False


async def _flush_held_back(app: web.Application) -> None:
    """The log lines and the counts still held back (with ``--workers``, the counts reach
    the shared files here; the worker is about to exit)."""
    app[SERVICE].vlog.flush()
    app[SERVICE].metrics.flush()


FRONT = web.AppKey("fast_front", FastFront)


async def start_site(
    app: web.Application,
    settings: Settings,
    *,
    port: int | None = None,
    reuse_port: bool = False,
    handle_signals: bool = False,
) -> tuple[web.AppRunner, web.TCPSite]:
    """Start ``app`` and listen on ``settings.host`` and ``port`` (default
    ``settings.port``; 0 picks a free one).

    Connections start in the fast lane of ``POST /stir/v1/verification``
    (:mod:`verifier.http.fastpath`, ``app[FRONT]``) unless ``api.fast_path`` is off; aiohttp
    serves the rest. End with ``await runner.cleanup()``: the listening socket closes,
    requests in flight are answered (within ``shutdown_timeout``), then the stores are
    drained and closed.
    """
    front: FastFront | None = None
    if settings.api.fast_path:
        front = app[FRONT] = _fast_front(app[SERVICE])

        async def finish_fast(app: web.Application) -> None:
            await app[FRONT].shutdown(settings.shutdown_timeout)

        app.on_shutdown.append(finish_fast)
    runner = web.AppRunner(
        app,
        handle_signals=handle_signals,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout,
    )
    await runner.setup()
    if runner.server is not None:
        runner.server.__class__ = _Server  # parser errors in the requestError shape
    where = (settings.host, settings.port if port is None else port)
    site = (
        FastSite(runner, front, *where, reuse_port=reuse_port)
        if front is not None
        else web.TCPSite(runner, *where, reuse_port=reuse_port)
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


def run(settings: Settings, *, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads the trust anchors and the policy.

    Raises:
        ValueError: no trust anchor could be loaded.
    """
    _use_event_loop(settings.event_loop)
    app = create_app(settings)

    async def on_startup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, app[SERVICE].reload)
        # The collector's full passes over the long-lived objects (caches, the replay set,
        # the loaded code) showed as latency spikes: what exists after start-up is frozen
        # out of them, and young objects (nearly all freed by reference counting) are
        # collected less often. Measured: p99 10.0-10.9 ms -> 9.0-9.5 ms in bench_http.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)

    app.on_startup.append(on_startup)

    async def serve() -> None:
        runner, _site = await start_site(app, settings, reuse_port=reuse_port, handle_signals=True)
        try:
            await asyncio.Event().wait()  # until SIGTERM/SIGINT (GracefulExit)
        finally:
            await runner.cleanup()

    # As web.run_app does: GracefulExit ends the loop; the serving task then cleans up.
    loop = asyncio.new_event_loop()
    main = loop.create_task(serve())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)


def _use_event_loop(choice: str) -> None:
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("event_loop = 'uvloop' but uvloop is not installed") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
