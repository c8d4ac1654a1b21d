"""``POST /stir/v1/verification``: the ATIS-1000082 verification request and its answer."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..core.verify import CallInfo
from ..service import VerifyRequest
from .errors import JSON, invalid, missing
from .inputs import MAX_EPOCH, begin_verification, identity_ok, parse_json, read_body
from .keys import ATIS_ANSWERS

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/stir/v1/verification")
async def atis_verification(request: web.Request) -> web.Response:
    service, rid, started = begin_verification(request)
    body = await read_body(request, service.settings.api.body_limit)
    item = atis_call(parse_json(body))
    outcome = await service.verify(item, "atis", rid)
    service.latency["atis"].observe(time.perf_counter() - started)
    return web.Response(
        body=request.app[ATIS_ANSWERS].body(outcome.result),
        content_type=JSON,
        headers={"X-RequestID": rid},
    )


def _tn_field(obj: dict[str, Any], outer: str) -> Any:
    if outer not in obj:
        raise missing(outer)
    part = obj[outer]
    if not isinstance(part, dict):
        raise invalid(outer, "must be an object")
    if "tn" not in part:
        raise missing(f"{outer}.tn")
    return part["tn"]


def atis_call(data: Any) -> VerifyRequest:
    """The verification an ATIS request body asks for.

    Raises:
        ApiError: SVC4001 (a mandatory part missing), SVC4005 (a part of the wrong kind).
    """
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
    if type(when) is not int or abs(when) > MAX_EPOCH:
        raise invalid("time", "must be an integer (epoch seconds)")
    identity = request.get("identity")
    if identity is not None and not identity_ok(identity):
        raise invalid("identity", "must be a string or an array of strings")
    return VerifyRequest(identity=identity, call=call, date=float(when))
