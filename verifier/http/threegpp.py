"""The 3GPP verification API (TS 24.229 Annex V, the Ms reference point): ``POST
{root}/verification``, ``{root}/divVerification`` and ``{root}/rphVerification``.

The same service call as the ATIS endpoint (:mod:`.atis`), logged and counted as endpoint
``3gpp``; only the request's and the answer's shapes differ. Refusals take the TS's
``{"error": ...}`` shape (:func:`.errors.ms_error_body`, chosen by path in the middleware).
The vendor variants accepted, and why, are listed in the README's API section.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..core.errors import NO_TN_VALIDATION, TN_VALIDATION_FAILED
from ..core.identity import split_identity_values
from ..core.rph import RPH, judge_priority, priority_values
from ..core.verify import CallInfo, Result
from ..service import VerifyRequest
from .answers import dumps
from .errors import JSON, invalid, missing
from .inputs import MAX_EPOCH, begin_verification, parse_json, read_body

__all__ = ["MsCall", "ms_answer", "ms_call", "routes"]

SHAKEN_ROUTE, DIV_ROUTE, RPH_ROUTE = "verification", "divVerification", "rphVerification"


def routes(root: str) -> web.RouteTableDef:
    """The three resources under ``root`` (``[api] threegpp_root``)."""
    table = web.RouteTableDef()

    @table.post(f"{root}/{SHAKEN_ROUTE}")
    async def ms_verification(request: web.Request) -> web.Response:
        return await _verification(request, SHAKEN_ROUTE)

    @table.post(f"{root}/{DIV_ROUTE}")
    async def ms_div_verification(request: web.Request) -> web.Response:
        return await _verification(request, DIV_ROUTE)

    @table.post(f"{root}/{RPH_ROUTE}")
    async def ms_rph_verification(request: web.Request) -> web.Response:
        return await _verification(request, RPH_ROUTE)

    return table


async def _verification(request: web.Request, route: str) -> web.Response:
    service, rid, started = begin_verification(request)
    body = await read_body(request, service.settings.api.body_limit)
    call = ms_call(parse_json(body))
    outcome = await service.verify(call.item, "3gpp", rid)
    service.latency["3gpp"].observe(time.perf_counter() - started)
    return web.Response(
        body=dumps(ms_answer(outcome.result, call, route)),
        content_type=JSON,
        headers={"X-RequestID": rid},
    )


@dataclass(frozen=True, slots=True)
class MsCall:
    """A 3GPP verification request, read: the service's request, each Identity header
    value (in order: ``identityHeader``, then ``identityHeaders``), and the protected
    Resource-Priority and Priority values."""

    item: VerifyRequest
    values: tuple[str, ...]
    resource_priority: frozenset[str]
    priority: str | None


def _party(request: dict[str, Any], name: str, *, required: bool) -> str | tuple[str, ...] | None:
    """``from``/``to``/``dest``: a string (TN, SIP or tel URI, name-addr), an array of them
    (``to``), or an ATIS-style ``{"tn": ...}`` / ``{"uri": ...}`` object."""
    if name not in request or request[name] is None:
        if required:
            raise missing(name)
        return None
    value = request[name]
    if isinstance(value, dict) and len(value) == 1:
        value = value.get("tn", value.get("uri"))
    if isinstance(value, str) and value:
        return value
    if (
        name == "to"
        and isinstance(value, list)
        and value
        and all(isinstance(v, str) and v for v in value)
    ):
        return tuple(value)
    raise invalid(name, "must be a telephone number or a SIP/tel URI")


def _strings(request: dict[str, Any], name: str) -> list[str]:
    value = request.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise invalid(name, "must be a string or an array of strings")


def _protected(request: dict[str, Any]) -> tuple[frozenset[str], str | None]:
    """Resource-Priority values and the Priority value from ``protectedHeaders`` (names
    matched case-insensitively; other headers, such as a ``div`` entry, are not needed)."""
    headers = request.get("protectedHeaders")
    if headers is None:
        return frozenset(), None
    if not isinstance(headers, dict):
        raise invalid("protectedHeaders", "must be an object of header names and values")
    by_name = {str(k).lower(): v for k, v in headers.items()}
    rp = by_name.get("resource-priority")
    if rp is None:
        rp_values: list[str] = []
    elif isinstance(rp, str):
        rp_values = [rp]
    elif isinstance(rp, list) and all(isinstance(v, str) for v in rp):
        rp_values = rp
    else:
        raise invalid("protectedHeaders.Resource-Priority", "must be a string or strings")
    priority = by_name.get("priority")
    if priority is not None and not isinstance(priority, str):
        raise invalid("protectedHeaders.Priority", "must be a string")
    return priority_values(rp_values), priority


def ms_call(data: Any) -> MsCall:
    """What a 3GPP request body asks for. The members may sit in a ``verificationRequest``
    object (as the TS names the type) or at the top level (as Neustar's examples send them).

    Raises:
        ApiError: SVC4001 (a mandatory member missing), SVC4005 (a member of the wrong kind).
    """
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    request = data.get("verificationRequest", data)
    if not isinstance(request, dict):
        raise invalid("verificationRequest", "must be an object")
    shaken = request.get("identityHeader")
    if shaken is not None and not isinstance(shaken, str):
        raise invalid("identityHeader", "must be a string")
    others = _strings(request, "identityHeaders")
    values = split_identity_values(([shaken] if shaken else []) + others)
    orig = _party(request, "from", required=True)
    to = _party(request, "to", required=True)
    dest = _party(request, "dest", required=False)
    if "time" not in request:
        raise missing("time")
    when = request["time"]
    if type(when) is not int or abs(when) > MAX_EPOCH:
        raise invalid("time", "must be an integer (epoch seconds)")
    rp, priority = _protected(request)
    call = CallInfo(
        from_=orig if isinstance(orig, str) else None,
        to=to,
        ruri=dest if isinstance(dest, str) else None,
    )
    item = VerifyRequest(identity=values or None, call=call, date=float(when))
    return MsCall(item=item, values=tuple(values), resource_priority=rp, priority=priority)


def ms_answer(result: Result, call: MsCall, route: str) -> dict[str, Any]:
    """The ``verificationResponse``: ``verstatValue`` (with a SHAKEN PASSporT), one
    ``verifyResult`` per PASSporT, ``divResult`` (with div PASSporTs), ``verstatPriority``
    (on rphVerification, with rph PASSporTs, or when the request carries Resource-Priority
    or Priority values)."""
    identities = result.identities
    priority, rph_failures = judge_priority(identities, call.resource_priority, call.priority)
    verify_results: list[dict[str, Any]] = []
    for header in identities:
        entry: dict[str, Any] = {"ppt": header.ppt or "shaken"}
        reason = header.reason
        problem = rph_failures.get(header.index)
        if header.status == "passed" and problem is None:
            entry["status"] = "pass"
            entry["validClaims"] = header.payload
        else:
            entry["status"] = "fail"
            if problem is not None:
                entry["reasonCode"], entry["reasonText"] = problem.sip_code, problem.text
            elif reason is not None:
                entry["reasonCode"], entry["reasonText"] = reason.sip_code, reason.text
            entry["passport"] = call.values[header.index].split(";", 1)[0].strip()
        verify_results.append({"verifyResult": entry})
    if not identities and result.reason is not None:
        # The verdict came before any PASSporT was read (stale time, too many headers).
        for value in call.values:
            verify_results.append(
                {
                    "verifyResult": {
                        "ppt": "shaken",
                        "status": "fail",
                        "reasonCode": result.reason.sip_code,
                        "reasonText": result.reason.text,
                        "passport": value.split(";", 1)[0].strip(),
                    }
                }
            )
    answer: dict[str, Any] = {}
    if not identities or any(h.ppt in (None, "shaken") for h in identities):
        answer["verstatValue"] = result.verstat
    answer["verifyResults"] = verify_results
    divs = _div_result(result.diversion) if result.diversion is not None else []
    if divs:
        answer["divResult"] = divs  # TS 24.229 7.13.7: one or more tuples, else absent
    asked = bool(call.resource_priority) or call.priority is not None
    if route == RPH_ROUTE or asked or any(h.ppt == RPH for h in identities):
        # The TS's one verification resource judges the priority headers it is sent.
        answer["verstatPriority"] = priority
    return {"verificationResponse": answer}


def _div_result(diversion: dict[str, Any]) -> list[list[str]]:
    """``[div, verstat]`` for each diverting number: a linked, verified hop takes the
    chain's verstat; a hop whose own check failed, TN-Validation-Failed when that failure
    is the chain's; any other hop, No-TN-Validation."""
    chain = diversion["verstat"]
    tuples: list[list[str]] = []
    for hop in diversion["hops"]:
        if hop["div"] is None:
            continue
        if hop["linked"] and hop["status"] == "passed":
            verstat = chain
        elif hop["status"] == "failed" and chain == TN_VALIDATION_FAILED:
            verstat = TN_VALIDATION_FAILED
        else:
            verstat = NO_TN_VALIDATION
        tuples.append([hop["div"], verstat])
    return tuples
