"""verifier.http.threegpp and verifier.core.rph: the 3GPP verification API (TS 24.229 Annex V)
on a real socket, every answer checked against openapi.json; the rph checks on their own.

The credential source is the test signers' chains (``ChainSource``), validated against the
test PKI's root; the clock is fixed.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from pytest_aiohttp import AiohttpClient
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from verifier.core.certs import Credential, TrustStore
from verifier.core.rph import (
    NO_RPH_VALIDATION,
    RPH_VALIDATION_FAILED,
    RPH_VALIDATION_PASSED,
)
from verifier.http import app as web_module
from verifier.http.app import create_app
from verifier.records import RecordSettings
from verifier.settings import ApiSettings, Settings
from verifier.testing import ChainSource, Signer, TestPKI, identity_header

JSON = "application/json"
ORIG, DEST, HOP2, HOP3 = "12155551212", "12155551213", "12155551214", "12155551215"
PASSED, FAILED, NO_VALIDATION = "TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation"
ROOT = "/3gpp/stir/v1"
SHAKEN_PATH, DIV_PATH, RPH_PATH = (
    f"{ROOT}/{r}" for r in ("verification", "divVerification", "rphVerification")
)

# -- the contract --------------------------------------------------------------------------------

DOC: dict[str, Any] = json.loads(
    Path(web_module.__file__).with_name("openapi.json").read_text(encoding="utf-8")
)
BASE = "urn:verifier:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    BASE, Resource.from_contents(DOC, default_specification=DRAFT202012)
)


def _problems(schema_pointer: str, body: Any) -> list[str]:
    schema = {"$ref": f"{BASE}#{schema_pointer}"}
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft202012Validator(schema, registry=REGISTRY).iter_errors(body)
    ]


def _schema_of(path: str, status: int) -> str:
    """The JSON pointer of the documented answer's schema (an undocumented path under the
    3GPP root answers the TS's error shape)."""
    op = DOC["paths"].get(path.replace(ROOT, "/3gpp/stir/v1", 1), {}).get("post")
    if op is None or str(status) not in op["responses"]:
        return "/components/schemas/MsError"
    if status == 200:
        return "/components/schemas/MsVerificationResponse"
    ref = op["responses"][str(status)]["$ref"].removeprefix("#")
    assert {"$ref": "#/components/schemas/MsError"} == DOC["components"]["responses"][
        ref.rsplit("/", 1)[1]
    ]["content"][JSON]["schema"]
    return "/components/schemas/MsError"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Any
    body: Any


class Api:
    """Sends requests to one running app; every answer must match openapi.json."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def call(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        async with self.client.request(method, path, data=data, headers=headers) as resp:
            assert JSON == resp.content_type, (method, path, resp.status)
            body = json.loads(await resp.text())
            assert [] == _problems(_schema_of(path, resp.status), body), (path, body)
            return Answer(resp.status, resp.headers, body)

    async def post(self, path: str, body: Any, **headers: str) -> Answer:
        sent = {"Content-Type": JSON, **headers}
        return await self.call("POST", path, data=json.dumps(body).encode(), headers=sent)


def make_app(
    pki: TestPKI, now: int, signers: list[Signer] | None = None, **api: Any
) -> web.Application:
    trust = TrustStore([pki.root.cert])
    return create_app(
        Settings(records=RecordSettings(enabled=False), api=ApiSettings(**api)),
        trust=trust,
        credentials=ChainSource(trust, signers or [pki.signer]),
        clock=lambda: float(now),
    )


@pytest.fixture
async def api(aiohttp_client: AiohttpClient, pki: TestPKI, now: int) -> Api:
    return Api(await aiohttp_client(make_app(pki, now)))


def ms(*values: str, now: int, wrap: bool = True, **fields: Any) -> dict[str, Any]:
    """A 3GPP request: the first value in ``identityHeader``, the rest in ``identityHeaders``."""
    request: dict[str, Any] = {"from": ORIG, "to": DEST, "time": now}
    if values:
        request["identityHeader"] = values[0]
    if values[1:]:
        request["identityHeaders"] = list(values[1:])
    request.update(fields)
    return {"verificationRequest": request} if wrap else request


def div(signer: Signer, now: int, frm: str, to: str) -> str:
    token = signer.passport(
        iat=now,
        dest=to,
        header={"ppt": "div"},
        claims={"div": {"tn": frm}},
        drop=("attest", "origid"),
    )
    return identity_header(token, signer.x5u, ppt="div")


def rph(signer: Signer, now: int, auth: Any = ("ets.0",), **claims: Any) -> str:
    token = signer.passport(
        iat=now,
        header={"ppt": "rph"},
        claims={"rph": {"auth": list(auth)}, **claims},
        drop=("attest", "origid"),
    )
    return identity_header(token, signer.x5u, ppt="rph")


def results(answer: Answer) -> list[dict[str, Any]]:
    return [r["verifyResult"] for r in answer.body["verificationResponse"]["verifyResults"]]


def payload(value: str) -> dict[str, Any]:
    import base64

    part = value.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert isinstance(claims, dict)
    return claims


# -- verification: passes ------------------------------------------------------------------------


async def test_shaken_pass(api: Api, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now)
    answer = await api.post(SHAKEN_PATH, ms(value, now=now), **{"X-RequestID": "ms-1"})
    assert 200 == answer.status
    assert "ms-1" == answer.headers["X-RequestID"]
    expected = {
        "verstatValue": PASSED,
        "verifyResults": [
            {"verifyResult": {"ppt": "shaken", "status": "pass", "validClaims": payload(value)}}
        ],
    }
    assert {"verificationResponse": expected} == answer.body


async def test_members_at_the_top_level_are_read_alike(api: Api, signer: Signer, now: int) -> None:
    value = signer.identity(iat=now)
    wrapped = await api.post(SHAKEN_PATH, ms(value, now=now))
    top = await api.post(SHAKEN_PATH, ms(value, now=now, wrap=False))
    assert wrapped.body == top.body


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        ('"Alice" <sip:+12155551212@example.com>', "<sip:+12155551213@example.com>"),
        ("tel:+12155551212", ["sip:+12155551299@example.com", "12155551213"]),
        ({"tn": ORIG}, {"tn": DEST}),
        ({"uri": "sip:+12155551212@example.com"}, {"uri": "tel:+12155551213"}),
    ],
    ids=["name-addr", "tel-and-array", "tn-objects", "uri-objects"],
)
async def test_identities_in_each_accepted_form(
    api: Api, signer: Signer, now: int, frm: Any, to: Any
) -> None:
    answer = await api.post(
        SHAKEN_PATH, ms(signer.identity(iat=now), now=now, to=to, **{"from": frm})
    )
    assert PASSED == answer.body["verificationResponse"]["verstatValue"]


async def test_shaken_and_two_div_passports_in_one_request(
    api: Api, signer: Signer, now: int
) -> None:
    """The call went DEST -> HOP2 -> HOP3: the chain links the SHAKEN dest to the R-URI."""
    values = [signer.identity(iat=now), div(signer, now, DEST, HOP2), div(signer, now, HOP2, HOP3)]
    answer = await api.post(DIV_PATH, ms(*values, now=now, dest=f"sip:+{HOP3}@example.com"))
    response = answer.body["verificationResponse"]
    assert PASSED == response["verstatValue"]
    assert [("shaken", "pass"), ("div", "pass"), ("div", "pass")] == [
        (r["ppt"], r["status"]) for r in results(answer)
    ]
    assert [payload(v) for v in values] == [r["validClaims"] for r in results(answer)]
    assert [[DEST, PASSED], [HOP2, PASSED]] == response["divResult"]
    assert "verstatPriority" not in response


async def test_a_div_hop_with_a_bad_signature(
    api: Api, signer: Signer, impostor: Signer, now: int
) -> None:
    values = [
        signer.identity(iat=now),
        div(signer, now, DEST, HOP2),
        div(impostor, now, HOP2, HOP3),
    ]
    answer = await api.post(DIV_PATH, ms(*values, now=now, dest=HOP3))
    response = answer.body["verificationResponse"]
    # The chain broke at its second hop: each diverting identity gets the chain's verstat.
    assert [[DEST, FAILED], [HOP2, FAILED]] == response["divResult"]
    third = results(answer)[2]
    assert ("fail", 438, "Invalid Identity Header") == (
        third["status"],
        third["reasonCode"],
        third["reasonText"],
    )
    assert values[2].split(";")[0] == third["passport"]


async def test_div_passports_without_shaken_carry_no_verstat_value(
    api: Api, signer: Signer, now: int
) -> None:
    """Neustar's "2 Forwarding" example sends only div PASSporTs, in identityHeaders."""
    body = {
        "identityHeaders": [div(signer, now, DEST, HOP2), div(signer, now, HOP2, HOP3)],
        "from": f'"Alice" <sip:+{ORIG}@example.com>',
        "to": f'"Rob" <sip:+{HOP3}@example.com>',
        "dest": f'"Voice_Mail" <sip:+{HOP3}@example.com>',
        "time": now,
        "protectedHeaders": {"div": {"tn": HOP3, "hi": None}},
    }
    answer = await api.post(DIV_PATH, body)
    response = answer.body["verificationResponse"]
    assert "verstatValue" not in response
    assert [NO_VALIDATION, NO_VALIDATION] == [v for _, v in response["divResult"]]


async def test_neustar_one_forwarding_shape(api: Api, signer: Signer, now: int) -> None:
    """Neustar's "1 Forwarding" example: a div PASSporT in identityHeader, name-addr
    identities at the top level, and a protectedHeaders div entry (accepted, not read)."""
    body = {
        "identityHeader": div(signer, now, DEST, HOP2),
        "from": f'"Alice" <sip:+{ORIG}@example.com>',
        "to": f'"John" <sip:+{DEST}@example.com>',
        "dest": f'"Voice_Mail" <sip:+{HOP2}@example.com>',
        "time": now,
        "protectedHeaders": {"div": {"tn": DEST, "hi": None}},
    }
    answer = await api.post(DIV_PATH, body)
    response = answer.body["verificationResponse"]
    assert [("div", "pass")] == [(r["ppt"], r["status"]) for r in results(answer)]
    assert [[DEST, NO_VALIDATION]] == response["divResult"]  # no shaken PASSporT to anchor it
    assert "verstatValue" not in response


# -- verification: each failure class ------------------------------------------------------------


@pytest.fixture(scope="module")
def impostor(pki: TestPKI) -> Signer:
    """Another key of the same CA that claims the default signer's x5u: bad signature."""
    return pki.ca.issue_leaf("9999", x5u=pki.signer.x5u)


async def _one_failure(api: Api, value: str, now: int, **fields: Any) -> tuple[Any, ...]:
    answer = await api.post(SHAKEN_PATH, ms(value, now=now, **fields))
    response = answer.body["verificationResponse"]
    (only,) = results(answer)
    assert value.split(";")[0] == only["passport"]
    assert {"ppt", "status", "reasonCode", "reasonText", "passport"} == set(only)
    return response["verstatValue"], only["status"], only["reasonCode"], only["reasonText"]


async def test_bad_signature(api: Api, impostor: Signer, now: int) -> None:
    assert (FAILED, "fail", 438, "Invalid Identity Header") == await _one_failure(
        api, impostor.identity(iat=now), now
    )


async def test_unknown_x5u(api: Api, pki: TestPKI, now: int) -> None:
    other = pki.ca.issue_leaf("1234", x5u="https://127.0.0.1:8443/other.pem")
    assert (NO_VALIDATION, "fail", 436, "Bad Identity Info") == await _one_failure(
        api, other.identity(iat=now), now
    )


async def test_untrusted_certificate(aiohttp_client: AiohttpClient, pki: TestPKI, now: int) -> None:
    stranger = pki.untrusted_root().issue_leaf("1234", x5u="https://127.0.0.1:8443/stranger.pem")
    api = Api(await aiohttp_client(make_app(pki, now, [pki.signer, stranger])))
    verstat, status, code, _ = await _one_failure(api, stranger.identity(iat=now), now)
    assert (FAILED, "fail", 437) == (verstat, status, code)


async def test_stale_iat(api: Api, signer: Signer, now: int) -> None:
    assert (NO_VALIDATION, "fail", 403, "Stale Date") == await _one_failure(
        api, signer.identity(iat=now - 3600), now
    )


async def test_orig_mismatch(api: Api, signer: Signer, now: int) -> None:
    assert (NO_VALIDATION, "fail", 438, "Invalid Identity Header") == await _one_failure(
        api, signer.identity(iat=now, orig="12155550000"), now
    )


async def test_stale_request_time_fails_every_passport(api: Api, signer: Signer, now: int) -> None:
    values = [signer.identity(iat=now), div(signer, now, DEST, HOP2)]
    answer = await api.post(DIV_PATH, ms(*values, now=now - 3600))
    assert NO_VALIDATION == answer.body["verificationResponse"]["verstatValue"]
    assert [(403, v.split(";")[0]) for v in values] == [
        (r["reasonCode"], r["passport"]) for r in results(answer)
    ]


async def test_no_identity_is_428_without_results(api: Api, now: int) -> None:
    answer = await api.post(SHAKEN_PATH, {"from": ORIG, "to": DEST, "time": now})
    assert {"verificationResponse": {"verstatValue": NO_VALIDATION, "verifyResults": []}} == (
        answer.body
    )


async def test_unsupported_ppt_fails_its_entry(api: Api, signer: Signer, now: int) -> None:
    other = identity_header(signer.passport(iat=now, header={"ppt": "xyz"}), signer.x5u, ppt="xyz")
    answer = await api.post(SHAKEN_PATH, ms(signer.identity(iat=now), other, now=now))
    assert PASSED == answer.body["verificationResponse"]["verstatValue"]
    assert [("shaken", "pass"), ("xyz", "fail")] == [
        (r["ppt"], r["status"]) for r in results(answer)
    ]


async def test_oracle_failure_example_has_the_same_members(
    api: Api, impostor: Signer, now: int
) -> None:
    """Oracle's SBC documentation shows a failed verification as verificationResponse with
    verifyResults [{verifyResult: {status, ppt, reasonCode, reasonText, passport}}] and
    verstatValue: the same members and nesting as ours."""
    answer = await api.post(SHAKEN_PATH, ms(impostor.identity(iat=now), now=now))
    response = answer.body["verificationResponse"]
    assert {"verifyResults", "verstatValue"} == set(response)
    assert {"status", "ppt", "reasonCode", "reasonText", "passport"} == set(results(answer)[0])


ORACLE_TEXT = "Identity signature payload does not match the re-constructed one"
ORACLE_EXAMPLE = {
    "verificationResponse": {
        "verifyResults": [
            {
                "verifyResult": {
                    "status": "fail",
                    "ppt": "shaken",
                    "reasonCode": 438,
                    "reasonText": ORACLE_TEXT,
                    "passport": "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsIn",
                }
            },
            {
                "verifyResult": {
                    "status": "fail",
                    "ppt": "div",
                    "reasonCode": 438,
                    "reasonText": ORACLE_TEXT,
                    "passport": "eyJhbGciOiJFUzI1NiIsInBwdCI6uPuDqJ8ua",
                }
            },
        ],
        "verstatValue": "TN-Validation-Failed",
    }
}


def test_the_schema_admits_oracles_example_answer() -> None:
    """Oracle SBC 10.0 "Extract verifyResults Content for DIV Passports for 3GPP" (its
    typographic quote and trailing '.' after the array corrected)."""
    assert [] == _problems("/components/schemas/MsVerificationResponse", ORACLE_EXAMPLE)
    empty_div: dict[str, Any] = {"verificationResponse": {"verifyResults": [], "divResult": []}}
    assert ["verificationResponse/divResult: [] should be non-empty"] == _problems(
        "/components/schemas/MsVerificationResponse", empty_div
    )


# -- rph -----------------------------------------------------------------------------------------


def _priority(answer: Answer) -> tuple[str, list[tuple[str, str]]]:
    response = answer.body["verificationResponse"]
    return response["verstatPriority"], [(r["ppt"], r["status"]) for r in results(answer)]


async def test_rph_pass(api: Api, signer: Signer, now: int) -> None:
    values = [signer.identity(iat=now), rph(signer, now, ["ets.0", "WPS.1"])]
    body = ms(*values, now=now, protectedHeaders={"Resource-Priority": "wps.1, ets.0"})
    answer = await api.post(RPH_PATH, body)
    assert (RPH_VALIDATION_PASSED, [("shaken", "pass"), ("rph", "pass")]) == _priority(answer)
    assert {"auth": ["ets.0", "WPS.1"]} == results(answer)[1]["validClaims"]["rph"]


async def test_rph_auth_not_among_the_resource_priority_values(
    api: Api, signer: Signer, now: int
) -> None:
    values = [signer.identity(iat=now), rph(signer, now, ["ets.0", "wps.0"])]
    body = ms(*values, now=now, protectedHeaders={"resource-priority": ["ets.0"]})
    answer = await api.post(RPH_PATH, body)
    assert (RPH_VALIDATION_FAILED, [("shaken", "pass"), ("rph", "fail")]) == _priority(answer)
    assert 438 == results(answer)[1]["reasonCode"]
    assert PASSED == answer.body["verificationResponse"]["verstatValue"]


async def test_rph_without_resource_priority_fails(api: Api, signer: Signer, now: int) -> None:
    answer = await api.post(RPH_PATH, ms(signer.identity(iat=now), rph(signer, now), now=now))
    assert RPH_VALIDATION_FAILED == _priority(answer)[0]


@pytest.mark.parametrize(
    ("priority", "verdict"),
    [
        ("psap-callback", RPH_VALIDATION_PASSED),
        ("urgent", RPH_VALIDATION_FAILED),
        (None, RPH_VALIDATION_FAILED),
    ],
)
async def test_sph_needs_the_psap_callback_priority(
    api: Api, signer: Signer, now: int, priority: str | None, verdict: str
) -> None:
    headers: dict[str, Any] = {"Resource-Priority": "esnet.1"}
    if priority is not None:
        headers["Priority"] = priority
    values = [signer.identity(iat=now), rph(signer, now, ["esnet.1"], sph="psap-callback")]
    answer = await api.post(RPH_PATH, ms(*values, now=now, protectedHeaders=headers))
    assert verdict == _priority(answer)[0]


async def test_rph_with_a_bad_signature(
    api: Api, signer: Signer, impostor: Signer, now: int
) -> None:
    values = [signer.identity(iat=now), rph(impostor, now)]
    body = ms(*values, now=now, protectedHeaders={"Resource-Priority": "ets.0"})
    answer = await api.post(RPH_PATH, body)
    assert (RPH_VALIDATION_FAILED, [("shaken", "pass"), ("rph", "fail")]) == _priority(answer)


@pytest.mark.parametrize(
    "auth", [[], ["ets"], [5], "ets.0"], ids=["empty", "no-dot", "number", "not-array"]
)
async def test_malformed_rph_claim(api: Api, signer: Signer, now: int, auth: Any) -> None:
    token = signer.passport(
        iat=now, header={"ppt": "rph"}, claims={"rph": {"auth": auth}}, drop=("attest", "origid")
    )
    values = [signer.identity(iat=now), identity_header(token, signer.x5u, ppt="rph")]
    body = ms(*values, now=now, protectedHeaders={"Resource-Priority": "ets.0"})
    answer = await api.post(RPH_PATH, body)
    assert (RPH_VALIDATION_FAILED, [("shaken", "pass"), ("rph", "fail")]) == _priority(answer)


async def test_no_rph_passport(api: Api, signer: Signer, now: int) -> None:
    answer = await api.post(RPH_PATH, ms(signer.identity(iat=now), now=now))
    assert (NO_RPH_VALIDATION, [("shaken", "pass")]) == _priority(answer)
    plain = await api.post(SHAKEN_PATH, ms(signer.identity(iat=now), now=now))
    assert "verstatPriority" not in plain.body["verificationResponse"]


async def test_verification_judges_the_priority_headers_it_is_sent(
    api: Api, signer: Signer, now: int
) -> None:
    """TS 24.229 Annex V.2 defines one verification resource and 7.13.8 makes verstatPriority
    the verdict on the Resource-Priority (and Priority) values: sent them, /verification
    answers it, even with no rph PASSporT."""
    body = ms(signer.identity(iat=now), now=now, protectedHeaders={"Resource-Priority": "ets.0"})
    answer = await api.post(SHAKEN_PATH, body)
    assert (NO_RPH_VALIDATION, [("shaken", "pass")]) == _priority(answer)
    sph_only = ms(signer.identity(iat=now), now=now, protectedHeaders={"Priority": "psap-callback"})
    assert NO_RPH_VALIDATION == _priority(await api.post(SHAKEN_PATH, sph_only))[0]


async def test_rph_on_the_verification_resource(api: Api, signer: Signer, now: int) -> None:
    """The same rph verdicts as rphVerification, on the TS's resource."""
    values = [signer.identity(iat=now), rph(signer, now, ["ets.0"])]
    headers = {"Resource-Priority": "ets.0"}
    on_ts = await api.post(SHAKEN_PATH, ms(*values, now=now, protectedHeaders=headers))
    on_vendor = await api.post(RPH_PATH, ms(*values, now=now, protectedHeaders=headers))
    assert (RPH_VALIDATION_PASSED, [("shaken", "pass"), ("rph", "pass")]) == _priority(on_ts)
    assert on_vendor.body == on_ts.body


# -- refusals in the TS shape --------------------------------------------------------------------


BASE_BODY = {"from": "1", "to": "2", "time": 1}


async def _refusal(api: Api, body: bytes) -> tuple[int, str, str]:
    """The same 400 from each of the three resources."""
    answers = []
    for path in (SHAKEN_PATH, DIV_PATH, RPH_PATH):
        answer = await api.call("POST", path, data=body, headers={"Content-Type": JSON})
        answers.append((answer.status, answer.body["error"], answer.body["detail"]))
    assert 1 == len(set(answers)), answers
    return answers[0]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "Missing request body"),
        (b"{not json", "Failed to parse message body"),
        (b"[1]", "Invalid parameter value"),
        (b'{"verificationRequest": 1}', "Invalid parameter value"),
    ],
)
async def test_unreadable_bodies_are_400(api: Api, body: bytes, error: str) -> None:
    assert (400, error) == (await _refusal(api, body))[:2]


@pytest.mark.parametrize("member", ["from", "to", "time"])
async def test_a_missing_member_is_named(api: Api, member: str) -> None:
    body = json.dumps({k: v for k, v in BASE_BODY.items() if k != member}).encode()
    expected = (400, "Missing mandatory parameter", f"Missing mandatory parameter '{member}'")
    assert expected == await _refusal(api, body)


@pytest.mark.parametrize(
    "fields",
    [
        {"time": "now"},
        {"time": 1.5},
        {"from": 5},
        {"to": {}},
        {"to": []},
        {"identityHeader": 7},
        {"identityHeaders": [7]},
        {"protectedHeaders": "x"},
        {"protectedHeaders": {"Priority": 1}},
        {"protectedHeaders": {"Resource-Priority": {}}},
    ],
)
async def test_invalid_members_are_400(api: Api, fields: dict[str, Any]) -> None:
    status, error, detail = await _refusal(api, json.dumps({**BASE_BODY, **fields}).encode())
    assert (400, "Invalid parameter value") == (status, error)
    assert detail.startswith(f"Invalid input value for message part {next(iter(fields))}")


async def test_wrong_content_type_is_415(api: Api, now: int) -> None:
    answer = await api.call("POST", SHAKEN_PATH, data=b"{}", headers={"Content-Type": "text/plain"})
    assert (415, "Unsupported request body type") == (answer.status, answer.body["error"])


async def test_unacceptable_accept_is_406(api: Api) -> None:
    sent = {"Content-Type": JSON, "Accept": "text/html"}
    answer = await api.call("POST", SHAKEN_PATH, data=b"{}", headers=sent)
    assert (406, "Requested response body type is not supported") == (
        answer.status,
        answer.body["error"],
    )


async def test_no_content_length_is_411(api: Api) -> None:
    async def chunks() -> Any:
        yield b"{}"

    async with api.client.post(SHAKEN_PATH, data=chunks(), headers={"Content-Type": JSON}) as resp:
        body = await resp.json()
    assert (411, "Missing mandatory Content-Length headers") == (resp.status, body["error"])
    assert [] == _problems("/components/schemas/MsError", body)


async def test_too_large_is_413(api: Api) -> None:
    answer = await api.call("POST", RPH_PATH, data=b" " * 70_000, headers={"Content-Type": JSON})
    assert (413, "Request body too large") == (answer.status, answer.body["error"])


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_are_405(api: Api, method: str) -> None:
    answer = await api.call(method, DIV_PATH)
    assert (405, "Method not allowed") == (answer.status, answer.body["error"])
    assert "POST" == answer.headers["Allow"]


async def test_unknown_resource_under_the_root_is_404(api: Api) -> None:
    answer = await api.call("POST", f"{ROOT}/signing", data=b"{}", headers={"X-RequestID": "r"})
    assert (404, "Requested resource not found") == (answer.status, answer.body["error"])
    assert "r" == answer.headers["X-RequestID"]


async def test_internal_error_is_500_in_the_ts_shape(
    aiohttp_client: AiohttpClient, pki: TestPKI, now: int, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        async def get(self, x5u: str, *, now: float) -> Credential:
            raise RuntimeError("repository client broke")

        def vouched(self, x5u: str) -> None:
            raise AssertionError("no PASSporT can pass under this source")

    app = create_app(
        Settings(records=RecordSettings(enabled=False)),
        trust=TrustStore([pki.root.cert]),
        credentials=Broken(),
        clock=lambda: float(now),
    )
    api = Api(await aiohttp_client(app))
    answer = await api.post(SHAKEN_PATH, ms(pki.signer.identity(iat=now), now=now))
    assert (500, "Internal server error") == (answer.status, answer.body["error"])
    assert "internal_error" in caplog.text


# -- settings, metrics ---------------------------------------------------------------------------


async def test_root_is_configurable(
    aiohttp_client: AiohttpClient, pki: TestPKI, signer: Signer, now: int
) -> None:
    client = await aiohttp_client(make_app(pki, now, threegpp_root="/sti/ms"))
    body = json.dumps(ms(signer.identity(iat=now), now=now)).encode()
    async with client.post(
        "/sti/ms/verification", data=body, headers={"Content-Type": JSON}
    ) as resp:
        assert 200 == resp.status
        assert PASSED == (await resp.json())["verificationResponse"]["verstatValue"]
    async with client.post(SHAKEN_PATH, data=body, headers={"Content-Type": JSON}) as resp:
        assert 404 == resp.status
        assert "requestError" in await resp.json()  # outside the 3GPP root: the ATIS shape


@pytest.mark.parametrize("root", ["", "/", "3gpp", "/3gpp/", "/a b", "/stir/v1"])
def test_bad_roots_are_refused(root: str) -> None:
    with pytest.raises(ValueError, match="threegpp_root"):
        ApiSettings(threegpp_root=root)


async def test_counted_as_endpoint_3gpp(
    aiohttp_client: AiohttpClient, pki: TestPKI, signer: Signer, now: int
) -> None:
    client = await aiohttp_client(make_app(pki, now))
    body = json.dumps(ms(signer.identity(iat=now), now=now)).encode()
    async with client.post(SHAKEN_PATH, data=body, headers={"Content-Type": JSON}) as resp:
        assert 200 == resp.status
    async with client.get("/metrics") as resp:
        text = await resp.text()
    assert any(
        line.startswith("verifier_verifications_total{")
        and 'endpoint="3gpp"' in line
        and line.endswith(" 1.0")
        for line in text.splitlines()
    ), text


def test_the_three_routes_are_documented() -> None:
    for path in (SHAKEN_PATH, DIV_PATH, RPH_PATH):
        op = DOC["paths"][path]["post"]
        assert {"200", "400", "405", "406", "411", "415", "500"} <= set(op["responses"])


async def test_recorded_as_endpoint_3gpp(
    aiohttp_client: AiohttpClient, pki: TestPKI, signer: Signer, now: int, tmp_path: Path
) -> None:
    token = "s3cret-admin-token-0123456789"
    trust = TrustStore([pki.root.cert])
    settings = Settings(
        records=RecordSettings(data_dir=str(tmp_path / "data"), flush_interval=0.01),
        api=ApiSettings(admin_token=token),
    )
    app = create_app(
        settings, trust=trust, credentials=ChainSource(trust, [signer]), clock=lambda: float(now)
    )
    client = await aiohttp_client(app)
    body = json.dumps(ms(signer.identity(iat=now), now=now)).encode()
    sent = {"Content-Type": JSON, "X-RequestID": "ms-rec"}
    async with client.post(SHAKEN_PATH, data=body, headers=sent) as resp:
        assert 200 == resp.status
    auth = {"Authorization": f"Bearer {token}"}
    records: list[dict[str, Any]] = []
    for _ in range(200):  # the writer thread stores it within its flush interval
        async with client.get("/v1/records", headers=auth) as resp:
            records = (await resp.json())["records"]
        if records:
            break
        await asyncio.sleep(0.01)
    assert [("ms-rec", "3gpp", PASSED)] == [
        (r["request_id"], r["endpoint"], r["verstat"]) for r in records
    ]
