"""The native API: ``POST /v1/verify`` (JSON), ``/v1/verify/sip`` (a SIP INVITE) and
``/v1/verify/batch`` (many verifications in one request)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..core.sip import SipError, parse_invite
from ..core.times import parse_time
from ..core.verify import CallInfo
from ..service import Service, VerifyRequest
from .answers import native_body
from .errors import ApiError, invalid, json_response, missing
from .inputs import MAX_EPOCH, begin_verification, identity_ok, parse_json, read_body
from .keys import METRICS

__all__ = ["routes"]

routes = web.RouteTableDef()

_NATIVE_FIELDS = frozenset({"identity", "from", "pai", "to", "ruri", "date"})


def native_call(data: Any, where: str = "") -> VerifyRequest:
    """The verification a native request object asks for (``where``: its place in a batch).

    Raises:
        ApiError: SVC4005, a field unknown or of the wrong kind.
    """
    if not isinstance(data, dict):
        raise invalid(where.removesuffix(".") or "body", "must be a JSON object")
    if not data.keys() <= _NATIVE_FIELDS:
        raise invalid(f"{where}{sorted(set(data) - _NATIVE_FIELDS)[0]}", "unknown field")
    identity = data.get("identity")
    if identity is not None and not identity_ok(identity):
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
        if type(date) is int and abs(date) <= MAX_EPOCH:
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


@routes.post("/v1/verify")
async def native_verify(request: web.Request) -> web.Response:
    service, rid, started = begin_verification(request)
    item = native_call(parse_json(await read_body(request, service.settings.api.body_limit)))
    outcome = await service.verify(item, "native", rid)
    service.latency["native"].observe(time.perf_counter() - started)
    return json_response(native_body(outcome, rid), headers={"X-RequestID": rid})


@routes.post("/v1/verify/sip")
async def sip_verify(request: web.Request) -> web.Response:
    service, rid, started = begin_verification(request)
    body = await read_body(
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
    return json_response(native_body(outcome, rid), headers={"X-RequestID": rid})


@routes.post("/v1/verify/batch")
async def batch_verify(request: web.Request) -> web.Response:
    service, rid, started = begin_verification(request)
    data = parse_json(await read_body(request, service.settings.api.batch_body_limit))
    with service.in_flight_request():
        return await _batch_answer(request, service, data, rid, started)


async def _batch_answer(
    request: web.Request, service: Service, data: Any, rid: str, started: float
) -> web.Response:
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
    rejected = request.app[METRICS].requests_rejected
    results: list[dict[str, Any]] = []
    calls: list[VerifyRequest] = []
    slots: list[int] = []
    for index, raw in enumerate(items):
        try:
            calls.append(native_call(raw, f"requests[{index}]."))
        except ApiError as exc:
            rejected.labels(exc.message_id).inc()
            results.append(exc.body())
            continue
        slots.append(index)
        results.append({})
    ids = [f"{rid}/{i}" for i in slots]
    for index, item_id, outcome in zip(
        slots, ids, await service.verify_batch(calls, "batch", ids), strict=True
    ):
        results[index] = native_body(outcome, item_id)
    response = json_response({"request_id": rid, "results": results}, headers={"X-RequestID": rid})
    service.latency["batch"].observe(time.perf_counter() - started)
    return response
