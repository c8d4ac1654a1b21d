"""The answers' bodies in JSON: the ATIS-1000082 ``verificationResponse`` and the native API's
verdict object, formatted from a verification's outcome."""

from __future__ import annotations

import json
from typing import Any

import orjson

from ..core.sip import header_reasons, reason_header
from ..core.verify import Result
from ..service import Outcome
from ..settings import ApiSettings

__all__ = ["AtisAnswers", "dumps", "native_body"]


def dumps(obj: Any) -> bytes:
    """Compact JSON in UTF-8, by orjson (faster than the standard encoder).

    What orjson refuses, the standard encoder writes, every non-ASCII character as an
    escape: an integer beyond 64 bits (an unknown claim we keep may hold one), a string
    with a lone UTF-16 surrogate (no UTF-8 form: only a request's ``\\u`` escape makes
    one, echoed in an error), a key that is not a string.
    """
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


class AtisAnswers:
    """The ATIS answer body of a verdict, as ``api`` settings shape it. A pass's body
    depends on its attestation alone: each is encoded once and kept."""

    def __init__(self, api: ApiSettings) -> None:
        self._include_attest = api.include_attest
        if api.reason_key_case == "camel":
            self._reason_keys = ("reasonCode", "reasonText", "reasonDesc")
        else:
            self._reason_keys = ("reasoncode", "reasontext", "reasondesc")
        self._pass_bodies: dict[str | None, bytes] = {}

    def body(self, result: Result) -> bytes:
        if result.reason is None:
            body = self._pass_bodies.get(result.attest)
            if body is None:
                answer: dict[str, Any] = {"verstat": result.verstat}
                if self._include_attest and result.attest:
                    answer["attest"] = result.attest
                body = self._pass_bodies[result.attest] = dumps({"verificationResponse": answer})
            return body
        code, text, desc = self._reason_keys
        reason = result.reason
        return dumps(
            {
                "verificationResponse": {
                    code: reason.sip_code,
                    text: reason.text,
                    desc: reason.detail,
                    "verstat": result.verstat,
                }
            }
        )


def native_body(outcome: Outcome, request_id: str) -> dict[str, Any]:
    """The native API's answer to one verification: the verdict, its disposition and the
    SIP header values a proxy would add."""
    result = outcome.result
    body = result.to_dict()
    body["disposition"] = outcome.disposition.to_dict()
    body["request_id"] = request_id
    body["sip"] = {
        "verstat": result.verstat,
        "reason": reason_header(result),
        "reasons": header_reasons(result),
    }
    return body
