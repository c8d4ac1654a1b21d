"""verifier.http.app: the service on a real socket; every answer is checked against openapi.json.

The credential source and the clock are fakes (x5u fetching has its own tests, against a real
HTTPS repository): ``Repository`` validates the test signer's chain for its x5u and fails
every other x5u with X5uFetchFailed, as fetch.py would for an unreachable URL.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes
from jsonschema import Draft202012Validator
from pytest_aiohttp import AiohttpClient
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from verifier import __version__
from verifier.core.certs import TrustStore
from verifier.http import app as web_module
from verifier.http.app import SERVICE, create_app
from verifier.http.inputs import new_request_id
from verifier.records import Record, RecordSettings, RecordWriter
from verifier.settings import ApiSettings, Settings
from verifier.testing import ChainSource, Signer, TestPKI, b64url, identity_header, pem

JSON = "application/json"
ORIG, DEST = "12155551212", "12155551213"
PASSED, FAILED, NO_VALIDATION = "TN-Validation-Passed", "TN-Validation-Failed", "No-TN-Validation"
POSTS = ("/stir/v1/verification", "/v1/verify", "/v1/verify/sip", "/v1/verify/batch")

# -- the contract --------------------------------------------------------------------------------

DOC: dict[str, Any] = json.loads(
    Path(web_module.__file__).with_name("openapi.json").read_text(encoding="utf-8")
)
BASE = "urn:verifier:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(
    BASE, Resource.from_contents(DOC, default_specification=DRAFT202012)
)
# Paths the document does not list are answered by these shared responses.
UNLISTED = {404: "NotFound", 405: "MethodNotAllowed", 500: "InternalError"}


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _at(pointer: str) -> Any:
    node: Any = DOC
    for part in pointer.removeprefix("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(pointer: str) -> tuple[str, dict[str, Any]]:
    node = _at(pointer)
    while "$ref" in node:
        pointer = node["$ref"].removeprefix("#")
        node = _at(pointer)
    return pointer, node


def check_contract(
    method: str, path: str, status: int, content_type: str, headers: Any, text: str
) -> Any:
    """The answer's status, media type, required headers and body are those documented for
    this route; returns the body (parsed when JSON)."""
    op = DOC["paths"].get(path, {}).get(method.lower())
    if op is None:
        assert status in UNLISTED, f"{method} {path}: {status} for a route not in openapi.json"
        pointer = f"/components/responses/{UNLISTED[status]}"
    else:
        assert str(status) in op["responses"], f"{method} {path}: {status} is not documented"
        pointer = f"/paths/{_escape(path)}/{method.lower()}/responses/{status}"
    pointer, spec = _deref(pointer)
    assert content_type in spec["content"], (method, path, status, content_type)
    for name in spec.get("headers", {}):
        _, header = _deref(f"{pointer}/headers/{_escape(name)}")
        if header.get("required"):
            assert name in headers, (method, path, status, name)
    if content_type != JSON:
        return text
    body = json.loads(text)
    schema = {"$ref": f"{BASE}#{pointer}/content/{_escape(content_type)}/schema"}
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft202012Validator(schema, registry=REGISTRY).iter_errors(body)
    ]
    assert [] == problems, (method, path, status, body)
    return body


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Any
    body: Any


class Api:
    """Sends requests to one running app; every answer must match openapi.json."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.app = client.app
        assert self.app is not None
        self.service = self.app[SERVICE]

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        content_type: str | None = JSON,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
        if data is not None and content_type is not None:
            sent.setdefault("Content-Type", content_type)
        async with self.client.request(method, path, data=data, headers=sent) as resp:
            text = await resp.text()
            route = path.split("?", 1)[0]
            body = check_contract(method, route, resp.status, resp.content_type, resp.headers, text)
            return Answer(resp.status, resp.headers, body)

    async def post(self, path: str, body: Any, **kwargs: Any) -> Answer:
        return await self.call("POST", path, json_body=body, **kwargs)


def b64decode_part(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# -- the app -------------------------------------------------------------------------------------


Repository = ChainSource  # the test signer's chain for its x5u; 436 for any other x5u


NO_RECORDS = RecordSettings(enabled=False)  # record tests give their own data directory


def make_app(pki: TestPKI, now: int, settings: Settings | None = None) -> web.Application:
    trust = TrustStore([pki.root.cert])
    return create_app(
        settings or Settings(records=NO_RECORDS),
        trust=trust,
        credentials=Repository(trust, [pki.signer]),
        clock=lambda: float(now),
    )


@pytest.fixture
async def api(aiohttp_client: AiohttpClient, pki: TestPKI, now: int) -> Api:
    return Api(await aiohttp_client(make_app(pki, now)))


@pytest.fixture
def start(aiohttp_client: AiohttpClient, pki: TestPKI, now: int) -> Callable[..., Any]:
    """``await start(api=ApiSettings(...))``: an Api over an app with those settings."""

    async def run(**settings: Any) -> Api:
        settings.setdefault("records", NO_RECORDS)
        return Api(await aiohttp_client(make_app(pki, now, Settings(**settings))))

    return run


@pytest.fixture(scope="module")
def impostor(pki: TestPKI) -> Signer:
    """Another key of the same CA that claims the default signer's x5u: bad signature."""
    return pki.ca.issue_leaf("9999", x5u=pki.signer.x5u)


@pytest.fixture
def good(signer: Signer, now: int) -> str:
    return signer.identity(iat=now)


def atis(identity: Any = None, /, *, now: int, **fields: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"from": {"tn": ORIG}, "to": {"tn": [DEST]}, "time": now}
    if identity is not None:
        request["identity"] = identity
    request.update(fields)
    return {"verificationRequest": request}


def div(signer: Signer, now: int) -> str:
    token = signer.passport(iat=now, header={"ppt": "div"}, claims={"div": {"tn": ORIG}})
    return identity_header(token, signer.x5u, ppt="div")


def svc(answer: Answer) -> tuple[int, str, list[str]]:
    error = answer.body["requestError"]
    kind = "serviceException" if "serviceException" in error else "policyException"
    return answer.status, error[kind]["messageId"], error[kind]["variables"]


# -- ATIS-1000082 --------------------------------------------------------------------------------


async def test_atis_pass_echoes_the_request_id(api: Api, good: str, now: int) -> None:
    answer = await api.post(
        "/stir/v1/verification", atis(good, now=now), headers={"X-RequestID": "abc-123"}
    )
    assert 200 == answer.status
    assert {"verificationResponse": {"verstat": PASSED, "attest": "A"}} == answer.body
    assert "abc-123" == answer.headers["X-RequestID"]


async def test_atis_pass_without_attest(start: Callable[..., Any], good: str, now: int) -> None:
    api = await start(api=ApiSettings(include_attest=False))
    answer = await api.post("/stir/v1/verification", atis(good, now=now))
    assert {"verificationResponse": {"verstat": PASSED}} == answer.body


async def test_atis_failure_is_200_with_lower_case_reason(
    api: Api, impostor: Signer, now: int
) -> None:
    answer = await api.post("/stir/v1/verification", atis(impostor.identity(iat=now), now=now))
    assert 200 == answer.status
    response = answer.body["verificationResponse"]
    assert isinstance(response.pop("reasondesc"), str)
    assert {"reasoncode": 438, "reasontext": "Invalid Identity Header", "verstat": FAILED} == (
        response
    )


async def test_atis_failure_in_camel_case(
    start: Callable[..., Any], impostor: Signer, now: int
) -> None:
    api = await start(api=ApiSettings(reason_key_case="camel"))
    answer = await api.post("/stir/v1/verification", atis(impostor.identity(iat=now), now=now))
    response = answer.body["verificationResponse"]
    assert ["reasonCode", "reasonText", "reasonDesc", "verstat"] == list(response)
    assert 438 == response["reasonCode"]


async def test_atis_unknown_x5u_is_436(api: Api, pki: TestPKI, now: int) -> None:
    stranger = pki.ca.issue_leaf("5678", x5u="https://cert.example.org/other.pem")
    answer = await api.post("/stir/v1/verification", atis(stranger.identity(iat=now), now=now))
    response = answer.body["verificationResponse"]
    assert (436, "Bad Identity Info", NO_VALIDATION) == (
        response["reasoncode"],
        response["reasontext"],
        response["verstat"],
    )


@pytest.mark.parametrize("identity", [None, "", []], ids=["absent", "empty", "empty-list"])
async def test_atis_heartbeat_is_428(api: Api, now: int, identity: Any) -> None:
    body = atis(now=now)
    if identity is not None:
        body["verificationRequest"]["identity"] = identity
    answer = await api.post("/stir/v1/verification", body)
    assert 200 == answer.status
    response = answer.body["verificationResponse"]
    assert (428, "Use Identity Header", NO_VALIDATION) == (
        response["reasoncode"],
        response["reasontext"],
        response["verstat"],
    )
    repository = api.service.credentials
    assert isinstance(repository, Repository)
    assert [] == repository.asked


@pytest.mark.parametrize("offset", [-61, 61, -3600])
async def test_atis_stale_time_is_403(api: Api, good: str, now: int, offset: int) -> None:
    answer = await api.post("/stir/v1/verification", atis(good, now=now, time=now + offset))
    response = answer.body["verificationResponse"]
    assert (403, "Stale Date", NO_VALIDATION) == (
        response["reasoncode"],
        response["reasontext"],
        response["verstat"],
    )
    assert "date_stale" not in response["reasondesc"]  # the detail, not the slug


@pytest.mark.parametrize("offset", [-60, 60])
async def test_atis_time_at_the_skew_limit_passes(
    api: Api, good: str, now: int, offset: int
) -> None:
    answer = await api.post("/stir/v1/verification", atis(good, now=now, time=now + offset))
    assert PASSED == answer.body["verificationResponse"]["verstat"]


async def test_atis_several_identity_values_in_one_string(
    api: Api, signer: Signer, good: str, now: int
) -> None:
    joined = f"{div(signer, now)},{good}"
    answer = await api.post("/stir/v1/verification", atis(joined, now=now))
    assert {"verificationResponse": {"verstat": PASSED, "attest": "A"}} == answer.body
    listed = await api.post("/stir/v1/verification", atis([good, div(signer, now)], now=now))
    assert answer.body == listed.body


def _atis_errors(now: int) -> list[tuple[Any, tuple[int, str, list[str]]]]:
    def with_(**fields: Any) -> dict[str, Any]:
        return atis("x", now=now, **fields)

    def without(name: str) -> dict[str, Any]:
        body = atis("x", now=now)
        del body["verificationRequest"][name]
        return body

    bad_tn = ["from.tn", "must be a telephone number"]
    bad_to = ["to.tn", "must be a non-empty array of telephone numbers"]
    bad_time = ["time", "must be an integer (epoch seconds)"]
    return [
        ({}, (400, "SVC4001", ["verificationRequest"])),
        ({"verificationRequest": None}, (400, "SVC4001", ["verificationRequest"])),
        ([], (400, "SVC4005", ["body", "must be a JSON object"])),
        (
            {"verificationRequest": []},
            (400, "SVC4005", ["verificationRequest", "must be an object"]),
        ),
        (without("from"), (400, "SVC4001", ["from"])),
        (with_(**{"from": "12155551212"}), (400, "SVC4005", ["from", "must be an object"])),
        (with_(**{"from": {}}), (400, "SVC4001", ["from.tn"])),
        (with_(**{"from": {"tn": "alice"}}), (400, "SVC4005", bad_tn)),
        (with_(**{"from": {"tn": 12155551212}}), (400, "SVC4005", bad_tn)),
        (without("to"), (400, "SVC4001", ["to"])),
        (with_(to={"tn": []}), (400, "SVC4005", bad_to)),
        (with_(to={"tn": DEST}), (400, "SVC4005", bad_to)),
        (with_(to={"tn": [DEST, "bob@example.com"]}), (400, "SVC4005", bad_to)),
        (with_(to={"tn": [12155551213]}), (400, "SVC4005", bad_to)),
        (without("time"), (400, "SVC4001", ["time"])),
        (with_(time=str(now)), (400, "SVC4005", bad_time)),
        (with_(time=now + 0.5), (400, "SVC4005", bad_time)),
        (with_(time=True), (400, "SVC4005", bad_time)),
        (with_(time=None), (400, "SVC4005", bad_time)),
        (with_(time=10**400), (400, "SVC4005", bad_time)),  # float() would overflow
        (
            with_(identity=5),
            (400, "SVC4005", ["identity", "must be a string or an array of strings"]),
        ),
        (
            with_(identity=["a", 5]),
            (400, "SVC4005", ["identity", "must be a string or an array of strings"]),
        ),
    ]


async def test_atis_request_errors(api: Api, now: int) -> None:
    for body, expected in _atis_errors(now):
        assert expected == svc(await api.post("/stir/v1/verification", body)), body


@pytest.mark.parametrize("path", POSTS)
async def test_empty_and_unparseable_bodies(api: Api, path: str) -> None:
    ctype = "text/plain" if path.endswith("/sip") else JSON
    empty = await api.call("POST", path, data=b"", content_type=ctype)
    assert (400, "SVC4000", []) == svc(empty)
    if ctype == JSON:
        status, message_id, variables = svc(
            await api.call("POST", path, data=b"{", content_type=ctype)
        )
        assert (400, "SVC4006") == (status, message_id)
        assert 1 == len(variables)


# -- Accept, Content-Type, Content-Length, body size ---------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "*/*",
        JSON,
        "application/json; charset=utf-8",
        "application/*",
        "application/problem+json",
        "text/html, application/json;q=0.9",
    ],
)
async def test_accept_admitting_json(api: Api, good: str, now: int, accept: str) -> None:
    answer = await api.post(
        "/stir/v1/verification", atis(good, now=now), headers={"Accept": accept}
    )
    assert 200 == answer.status


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("accept", ["text/html", "text/plain, application/xml"])
async def test_accept_without_json_is_406(api: Api, path: str, accept: str) -> None:
    answer = await api.call(
        "POST",
        path,
        data=b"{}",
        content_type="text/plain" if path.endswith("/sip") else JSON,
        headers={"Accept": accept, "X-RequestID": "r-406"},
    )
    assert (406, "SVC4002", [accept]) == svc(answer)
    assert "r-406" == answer.headers["X-RequestID"]


@pytest.mark.parametrize("path", POSTS)
async def test_unsupported_content_type_is_415(api: Api, path: str) -> None:
    wrong = JSON if path.endswith("/sip") else "text/plain"
    answer = await api.call("POST", path, data=b"{}", content_type=wrong)
    assert (415, "SVC4004", [wrong]) == svc(answer)
    untyped = await api.call("POST", path, data=b"{}", content_type=None)
    assert (415, "SVC4004") == svc(untyped)[:2]


async def test_json_content_type_with_charset(api: Api, good: str, now: int) -> None:
    answer = await api.call(
        "POST",
        "/stir/v1/verification",
        data=json.dumps(atis(good, now=now)).encode(),
        content_type="application/json; charset=utf-8",
    )
    assert PASSED == answer.body["verificationResponse"]["verstat"]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data[:1]
    yield data[1:]


@pytest.mark.parametrize("path", POSTS)
async def test_chunked_body_without_content_length_is_411(api: Api, path: str) -> None:
    ctype = "text/plain" if path.endswith("/sip") else JSON
    answer = await api.call("POST", path, data=_chunks(b'{"requests": []}'), content_type=ctype)
    assert (411, "SVC4007", []) == svc(answer)


async def test_post_without_any_length_is_411(api: Api) -> None:
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            b"POST /v1/verify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, text = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    status = int(lines[0].split()[1])
    content_type = headers["Content-Type"].split(";")[0]
    body = check_contract("POST", "/v1/verify", status, content_type, headers, text.decode())
    assert 411 == status
    assert "SVC4007" == body["requestError"]["serviceException"]["messageId"]


async def test_body_limits(start: Callable[..., Any], good: str, now: int) -> None:
    api = await start(api=ApiSettings(body_limit=2048, batch_body_limit=8192, batch_max=3))
    padded = json.dumps(atis(good, now=now)).encode().ljust(2049)
    for path in POSTS[:3]:
        ctype = "text/plain" if path.endswith("/sip") else JSON
        answer = await api.call("POST", path, data=padded, content_type=ctype)
        assert (413, "SVC4000", ["2048"]) == svc(answer), path
    under = await api.post("/stir/v1/verification", None, data=padded[:2048])
    assert 200 == under.status
    # A batch may be larger than one request, up to its own limit.
    batch = json.dumps({"requests": [{"identity": good}]}).encode().ljust(8192)
    assert 200 == (await api.call("POST", "/v1/verify/batch", data=batch)).status
    over = await api.call("POST", "/v1/verify/batch", data=batch + b" ")
    assert (413, "SVC4000", ["8192"]) == svc(over)
    four: dict[str, Any] = {"requests": [{}, {}, {}, {}]}
    assert (400, "SVC4005", ["requests", "at most 3 requests in one batch"]) == svc(
        await api.post("/v1/verify/batch", four)
    )
    assert 3 == len(
        (await api.post("/v1/verify/batch", {"requests": [{}, {}, {}]})).body["results"]
    )


async def test_app_body_cap_answers_in_the_api_shape(
    start: Callable[..., Any], good: str, now: int
) -> None:
    # The application's own cap is the batch limit: with a smaller batch limit than body
    # limit, aiohttp refuses the read, and the middleware answers SVC4000 all the same.
    api = await start(api=ApiSettings(body_limit=4096, batch_body_limit=1024))
    padded = json.dumps(atis(good, now=now)).encode().ljust(2000)
    answer = await api.call("POST", "/stir/v1/verification", data=padded)
    assert (413, "SVC4000", []) == svc(answer)


# -- request ids ---------------------------------------------------------------------------------


def test_new_request_ids_are_distinct_and_a_forked_worker_draws_its_own() -> None:
    ids = [new_request_id() for _ in range(20000)]
    assert all(re.fullmatch("[0-9a-f]{16}", rid) for rid in ids)
    assert len(ids) == len(set(ids))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a forked worker would draw first
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    assert re.fullmatch("[0-9a-f]{16}", child)
    assert child != new_request_id()  # the same state would draw the same id


async def test_request_id_generated_when_absent_or_invalid(api: Api, good: str, now: int) -> None:
    for headers in ({}, {"X-RequestID": "x" * 129}):
        answer = await api.post("/v1/verify", {"identity": good}, headers=headers)
        rid = answer.headers["X-RequestID"]
        assert re.fullmatch("[0-9a-f]{16}", rid), rid
        assert rid == answer.body["request_id"]
    given = await api.post("/v1/verify", {"identity": good}, headers={"X-RequestID": "r" * 128})
    assert "r" * 128 == given.headers["X-RequestID"] == given.body["request_id"]


async def test_error_answers_echo_only_a_given_request_id(api: Api) -> None:
    plain = await api.call("POST", "/v1/verify", data=b"{}", content_type="text/plain")
    assert "X-RequestID" not in plain.headers
    given = await api.call(
        "POST", "/v1/verify", data=b"{", headers={"X-RequestID": "e-1"}, content_type=JSON
    )
    assert "e-1" == given.headers["X-RequestID"]


# -- native --------------------------------------------------------------------------------------


async def test_native_pass_explains_the_verdict(
    api: Api, signer: Signer, good: str, now: int
) -> None:
    answer = await api.post(
        "/v1/verify",
        {
            "identity": good,
            "from": f"sip:+{ORIG}@example.com;user=phone",
            "to": f"tel:+{DEST}",
            "date": email.utils.formatdate(now, usegmt=True),
        },
        headers={"X-RequestID": "n-1"},
    )
    body = answer.body
    assert (PASSED, "A", None) == (body["verstat"], body["attest"], body["reason"])
    assert {"orig": "from", "dest": "to"} == body["matched"]
    assert (ORIG, now) == (body["claims"]["orig"]["tn"], body["claims"]["iat"])
    assert body["claims"]["origid"] == body["origid"]
    assert signer.x5u == body["x5u"]
    assert ["1234"] == body["certificate"]["spc"]
    ppi = good.split(";", 1)[0].rsplit(".", 1)[1]
    assert [
        {
            "index": 0,
            "ppt": "shaken",
            "status": "passed",
            "reason": None,
            "x5u": signer.x5u,
            "ppi": ppi,
        }
    ] == body["identities"]
    assert "n-1" == body["request_id"]
    assert {"verstat": PASSED, "reason": None, "reasons": []} == body["sip"]


async def test_native_date_as_epoch_and_pai_first(api: Api, good: str, now: int) -> None:
    answer = await api.post(
        "/v1/verify",
        {"identity": [good], "pai": ORIG, "from": "sip:anonymous@anonymous.invalid", "date": now},
    )
    assert PASSED == answer.body["verstat"]
    assert {"orig": "pai", "dest": None} == answer.body["matched"]


async def test_native_failure_carries_the_sip_reason(api: Api, impostor: Signer, now: int) -> None:
    identity = impostor.identity(iat=now)
    body = (await api.post("/v1/verify", {"identity": identity, "from": ORIG})).body
    assert FAILED == body["verstat"]
    assert (438, "invalid_signature") == (body["reason"]["sip_code"], body["reason"]["slug"])
    assert None is body["certificate"]  # the chain validated, but this key did not sign
    ppi = identity.split(";", 1)[0].rsplit(".", 1)[1]
    reason = 'STIR;cause=438;text="Invalid Identity Header"'
    assert {"verstat": FAILED, "reason": reason, "reasons": [f'{reason};ppi="{ppi}"']} == body[
        "sip"
    ]


@pytest.mark.parametrize(
    ("fields", "slug"),
    [
        ({"identity": []}, "no_identity"),
        ({"identity": None}, "no_identity"),
        ({"identity": "not a passport"}, "identity_malformed"),
        ({"from": "12155550000"}, "orig_mismatch"),
        ({"to": "12155550000", "ruri": "sip:12155550001@example.com"}, "dest_mismatch"),
        ({"date": 0}, "date_stale"),
    ],
)
async def test_native_failures(api: Api, good: str, fields: dict[str, Any], slug: str) -> None:
    body = (await api.post("/v1/verify", {"identity": good, **fields})).body
    assert slug == body["reason"]["slug"]
    assert body["sip"]["reason"].startswith(f"STIR;cause={body['reason']['sip_code']};")


async def test_native_request_errors(api: Api, now: int) -> None:
    identity_error = ["identity", "must be a string or an array of strings"]
    date_error = ["date", "must be epoch seconds or an RFC 1123 date"]
    cases: list[tuple[Any, list[str]]] = [
        ([], ["body", "must be a JSON object"]),
        ("text", ["body", "must be a JSON object"]),
        ({"identity": "x", "tn": ORIG}, ["tn", "unknown field"]),
        ({"identity": 5}, identity_error),
        ({"identity": [None]}, identity_error),
        ({"identity": {"a": 1}}, identity_error),
        ({"from": 12155551212}, ["from", "must be a string (a TN or a SIP/tel URI)"]),
        ({"ruri": ["sip:x@y"]}, ["ruri", "must be a string (a TN or a SIP/tel URI)"]),
        ({"date": [now]}, date_error),
        ({"date": 1.5}, date_error),
        ({"date": True}, date_error),
        ({"date": 10**400}, date_error),
        ({"date": "yesterday"}, date_error),
    ]
    for body, variables in cases:
        assert (400, "SVC4005", variables) == svc(await api.post("/v1/verify", body)), body


# -- SIP -----------------------------------------------------------------------------------------


def invite(*headers: str, request_line: bool = True) -> bytes:
    lines = [f"INVITE sip:+{DEST}@example.com;user=phone SIP/2.0"] if request_line else []
    lines += ["Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK776asdhds", *headers]
    return ("\r\n".join(lines) + "\r\n\r\nv=0\r\no=- 0 0 IN IP4 192.0.2.1\r\n").encode()


async def test_sip_invite_with_several_identities_folded_and_compact(
    api: Api, signer: Signer, good: str, now: int
) -> None:
    message = invite(
        'From: "Alice"',
        f"  <sip:+{ORIG}@example.com;user=phone>;tag=1928301774",
        f"t: <sip:+{DEST}@example.com;user=phone>",
        f"Date: {email.utils.formatdate(now, usegmt=True)}",
        f"y: {div(signer, now)}",
        f"Identity: {good}",
        f"Diversion: <sip:+{ORIG}@example.com>;reason=unconditional",
    )
    answer = await api.call(
        "POST",
        "/v1/verify/sip",
        data=message,
        content_type="text/plain",
        headers={"X-RequestID": "s"},
    )
    body = answer.body
    assert (PASSED, "A") == (body["verstat"], body["attest"])
    assert [("div", "passed"), ("shaken", "passed")] == [
        (h["ppt"], h["status"]) for h in body["identities"]
    ]
    assert {"orig": "from", "dest": "to"} == body["matched"]
    # this div diverts from ORIG (not the SHAKEN dest): verified, but the chain is broken
    assert "div_broken" == body["diversion"]["reason"]["slug"]
    assert "s" == body["request_id"] == answer.headers["X-RequestID"]


async def test_sip_header_lines_with_comma_joined_identities(
    api: Api, impostor: Signer, good: str, now: int
) -> None:
    bad = impostor.identity(iat=now)
    message = invite(f"f: <tel:+{ORIG}>", f"Identity: {bad}, {bad}", request_line=False)
    body = (await api.call("POST", "/v1/verify/sip", data=message, content_type="message/sip")).body
    assert FAILED == body["verstat"]
    ppi = bad.split(";", 1)[0].rsplit(".", 1)[1]
    reason = 'STIR;cause=438;text="Invalid Identity Header"'
    assert f'{reason};ppi="{ppi}"' == body["sip"]["reason"]
    assert 2 == len(body["sip"]["reasons"])
    mixed = invite(f"Identity: {bad}", f"Identity: {good}", request_line=False)
    passed = (await api.call("POST", "/v1/verify/sip", data=mixed, content_type="text/plain")).body
    assert (PASSED, None) == (passed["verstat"], passed["sip"]["reason"])
    assert [f'{reason};ppi="{ppi}"'] == passed["sip"]["reasons"]


async def test_sip_without_identity_is_428(api: Api) -> None:
    body = (await api.call("POST", "/v1/verify/sip", data=invite(), content_type="text/plain")).body
    assert (428, NO_VALIDATION) == (body["reason"]["sip_code"], body["verstat"])


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", "this is a SIP response, not a request"),
        (b"hello world\r\n", "not a SIP header line: 'hello world'"),
        (b"Date: yesterday\r\n", "Date 'yesterday' is not an RFC 1123 date"),
        (b"From: a\x00\r\n", "SIP message contains a NUL byte"),
        (b"\r\n\r\n", "no SIP request line and no header"),
        (b"From: \xff\xfe\r\n", "not UTF-8"),
        (b"X: y\r\n" * 513, "more than 512 header lines"),
    ],
)
async def test_sip_parse_errors(api: Api, message: bytes, why: str) -> None:
    answer = await api.call("POST", "/v1/verify/sip", data=message, content_type="application/sip")
    assert (400, "SVC4006", [why]) == svc(answer)


# -- batch ---------------------------------------------------------------------------------------


async def test_batch_keeps_the_order_of_valid_failing_and_malformed_items(
    api: Api, impostor: Signer, good: str, now: int
) -> None:
    requests: list[Any] = [
        {"identity": good, "from": ORIG},
        {"identity": impostor.identity(iat=now)},
        {"identity": good, "tn": ORIG},
        {},
        5,
        {"identity": good, "date": "soon"},
        {"identity": good, "to": DEST, "date": now},
    ]
    answer = await api.post(
        "/v1/verify/batch", {"requests": requests}, headers={"X-RequestID": "b"}
    )
    results = answer.body["results"]
    assert "b" == answer.body["request_id"]
    assert 7 == len(results)
    assert (PASSED, "b/0") == (results[0]["verstat"], results[0]["request_id"])
    assert ("invalid_signature", "b/1") == (results[1]["reason"]["slug"], results[1]["request_id"])
    assert {
        "requestError": {
            "serviceException": {
                "messageId": "SVC4005",
                "text": "Invalid input value for message part %1: %2",
                "variables": ["requests[2].tn", "unknown field"],
            }
        }
    } == results[2]
    assert ("no_identity", "b/3") == (results[3]["reason"]["slug"], results[3]["request_id"])
    assert ["requests[4]", "must be a JSON object"] == results[4]["requestError"][
        "serviceException"
    ]["variables"]
    assert "requests[5].date" == results[5]["requestError"]["serviceException"]["variables"][0]
    assert (PASSED, "b/6") == (results[6]["verstat"], results[6]["request_id"])


async def test_batch_request_errors(api: Api) -> None:
    cases: list[tuple[Any, tuple[int, str, list[str]]]] = [
        ([], (400, "SVC4005", ["body", "must be a JSON object"])),
        ({}, (400, "SVC4001", ["requests"])),
        ({"requests": {}}, (400, "SVC4005", ["requests", "must be an array"])),
        ({"requests": None}, (400, "SVC4005", ["requests", "must be an array"])),
    ]
    for body, expected in cases:
        assert expected == svc(await api.post("/v1/verify/batch", body)), body
    empty = await api.post("/v1/verify/batch", {"requests": []})
    assert [] == empty.body["results"]


# -- operations ----------------------------------------------------------------------------------


async def test_healthz(api: Api) -> None:
    answer = await api.call("GET", "/healthz")
    assert (200, {"status": "ok", "version": __version__}) == (answer.status, answer.body)


async def test_readyz_until_shutdown(api: Api) -> None:
    ready = await api.call("GET", "/readyz")
    assert (200, {"status": "ready", "trust_anchors": 1}) == (ready.status, ready.body)
    api.service.ready = False
    assert 503 == (await api.call("GET", "/readyz")).status
    api.service.ready = True
    assert api.app is not None
    await api.app.shutdown()  # what the runner does when SIGTERM arrives
    draining = await api.call("GET", "/readyz")
    assert (503, {"status": "not ready", "trust_anchors": 1}) == (draining.status, draining.body)


async def test_metrics_count_verifications_and_rejections(api: Api, good: str, now: int) -> None:
    await api.post("/stir/v1/verification", atis(good, now=now))
    await api.post("/stir/v1/verification", atis(now=now))
    await api.call("POST", "/v1/verify", data=b"{}", content_type="text/plain")
    answer = await api.call("GET", "/metrics")
    assert "text/plain; version=0.0.4; charset=utf-8" == answer.headers["Content-Type"]
    lines = set(answer.body.splitlines())
    assert (
        'verifier_verifications_total{attest="A",endpoint="atis",reason="",'
        'verstat="TN-Validation-Passed"} 1.0'
    ) in {_sorted_labels(line) for line in lines}
    assert (
        'verifier_verifications_total{attest="",endpoint="atis",reason="no_identity",'
        'verstat="No-TN-Validation"} 1.0'
    ) in {_sorted_labels(line) for line in lines}
    assert 'verifier_verifications_by_spc_total{spc="1234",verstat="TN-Validation-Passed"} 1.0' in (
        {_sorted_labels(line) for line in lines}
    )
    assert 'verifier_requests_rejected_total{message_id="SVC4004"} 1.0' in lines
    assert any(line.startswith("verifier_verification_seconds_bucket{") for line in lines)


def _sorted_labels(line: str) -> str:
    """A sample line with its labels in name order (the exposition keeps declaration order)."""
    match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
    if match is None:
        return line
    labels = sorted(re.findall(r'\w+="[^"]*"', match.group(2)))
    return f"{match.group(1)}{{{','.join(labels)}}} {match.group(3)}"


async def test_openapi_document_is_served(api: Api) -> None:
    answer = await api.call("GET", "/openapi.json")
    assert DOC == answer.body


async def test_unknown_resource_is_404(api: Api) -> None:
    answer = await api.call("POST", "/stir/v1/verify", data=b"{}", headers={"X-RequestID": "u"})
    assert (404, "SVC4003", ["/stir/v1/verify"]) == svc(answer)
    assert "u" == answer.headers["X-RequestID"]
    assert (404, "SVC4003", ["/"]) == svc(await api.call("GET", "/"))


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/verify", "POST"),
        ("PUT", "/stir/v1/verification", "POST"),
        ("DELETE", "/v1/verify/batch", "POST"),
        ("POST", "/healthz", "GET,HEAD"),
        ("POST", "/metrics", "GET,HEAD"),
    ],
)
async def test_wrong_method_is_405(api: Api, method: str, path: str, allow: str) -> None:
    answer = await api.call(method, path, data=b"{}" if method != "GET" else None)
    assert (405, "POL4050", [method]) == svc(answer)
    assert set(allow.split(",")) == {m.strip() for m in answer.headers["Allow"].split(",")}


async def test_internal_error_is_pol5000(
    aiohttp_client: AiohttpClient, pki: TestPKI, now: int, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(pki, now)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_get("/boom", boom)
    api = Api(await aiohttp_client(app))
    answer = await api.call("GET", "/boom", headers={"X-RequestID": "p"})
    assert {
        "requestError": {
            "policyException": {
                "messageId": "POL5000",
                "text": "Internal server error",
                "variables": [],
            }
        }
    } == answer.body
    assert (500, "p") == (answer.status, answer.headers["X-RequestID"])
    assert ["internal_error"] == [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "a bug" not in answer.body["requestError"]["policyException"]["text"]


async def test_reload_keeps_the_old_anchors_when_the_new_ones_are_broken(
    aiohttp_client: AiohttpClient, pki: TestPKI, now: int, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    (anchors / "root.pem").write_bytes(pem(pki.root.cert))
    settings = Settings(trust_anchors=(str(anchors),), records=NO_RECORDS)
    service = Api(await aiohttp_client(make_app(pki, now, settings))).service
    other = pki.untrusted_root()
    (anchors / "other.pem").write_bytes(pem(other.cert))
    assert True is service.reload()
    assert 2 == len(service.trust.anchors)
    before = service.trust
    (anchors / "other.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n")
    assert False is service.reload()
    assert before is service.trust
    (anchors / "other.pem").unlink()
    (anchors / "root.pem").unlink()
    assert False is service.reload()  # an empty directory
    nowhere = Settings(trust_anchors=(str(tmp_path / "nowhere"),), records=NO_RECORDS)
    missing = Api(await aiohttp_client(make_app(pki, now, nowhere))).service
    assert False is missing.reload()
    assert 1 == len(missing.trust.anchors)
    text = service.metrics.render().decode()
    assert 'verifier_reloads_total{outcome="ok"} 1.0' in text
    assert 'verifier_reloads_total{outcome="failed"} 2.0' in text


# -- malformed input never makes a 5xx -----------------------------------------------------------


def _malformed(good: str) -> list[bytes]:
    def dumps(value: Any) -> bytes:
        return json.dumps(value).encode()

    values: list[Any] = [None, True, 0, -1, 10**400, 1e308, "", "x" * 1000, [], {}, [[[]]]]
    bodies = [dumps(v) for v in values]
    for field in ("from", "to", "time", "identity"):
        atis_values: list[Any] = [None, 10**400, -(10**30), [[1]], {"tn": None}, "\x00"]
        for value in atis_values:
            bodies.append(
                dumps(
                    {
                        "verificationRequest": {
                            **atis(good, now=0)["verificationRequest"],
                            field: value,
                        }
                    }
                )
            )
    for field in ("identity", "from", "pai", "to", "ruri", "date"):
        native_values: list[Any] = [10**400, [None], {"x": [1]}, "\x00" * 10]
        for value in native_values:
            bodies.append(dumps({"identity": good, field: value}))
    bodies += [
        dumps({"requests": [None, 10**400, [], {"date": 10**400}, {"identity": [[good]]}]}),
        dumps({"requests": [{"identity": ["x"] * 40}]}),
        dumps({"identity": [good] * 40}),
        dumps({"identity": good.replace(";", ",")}),
        dumps({"identity": "a.b.c;info=<https://x>;" + "p=1;" * 2000}),
        b'{"identity": "\xff\xfe"}',
        b"\xff\xfe\x00{\x00}",
        b'{"identity": "a\x00b"}',
        b"\x00" * 64,
        b'{"a": NaN, "b": Infinity}',
        b'{"date": 1e999999}',
        b"1" * 5000,
        b'"\\ud800"',
        b"[" * 100_000,
        b"[" * 60_000,
        b"{" * 60_000,
        b'{"requests": ' + b"[" * 60_000,
        b"\xef\xbb\xbf{}",
        dumps({"identity": _deep_claims(970)}),
        b"INVITE sip:x SIP/2.0\r\nIdentity: \x01\r\n\r\n",
        b"Identity: " + b"," * 10_000 + b"\r\n",
        b"Identity: a;info=<https://x\r\nDate: Mon, 01 Jan 99999 00:00:00 GMT\r\n",
        b"Date: Mon, 01 Jan 2024 00:00:00 +9999\r\n",
        b"INVITE sip:x SIP/2.0\r\n\tfolded: before any header\r\n",
        b"Identity:" + b"x" * 70_000,
    ]
    # Lone UTF-16 surrogates: valid JSON escapes with no UTF-8 form, in keys and values.
    lone = "\udc80"
    for field in ("identity", "from", "pai", "to", "ruri", "date", lone):
        bodies.append(dumps({"identity": good, field: lone}))
        bodies.append(dumps({"requests": [{"identity": good, field: lone}, lone, {lone: [lone]}]}))
    bodies += [
        dumps({lone: 1}),
        dumps({"verificationRequest": {lone: lone}}),
        dumps(
            {
                "verificationRequest": {
                    "from": {"tn": lone},
                    "to": {"tn": [lone]},
                    "time": lone,
                    "identity": lone,
                }
            }
        ),
        f"INVITE sip:{lone}@x SIP/2.0\r\nIdentity: {lone}\r\n\r\n".encode("utf-8", "surrogatepass"),
    ]
    return bodies


def _deep_claims(depth: int) -> str:
    """An Identity value whose claims are valid but carry a deeply nested extra claim."""
    header = b64url(
        json.dumps(
            {
                "alg": "ES256",
                "ppt": "shaken",
                "typ": "passport",
                "x5u": "https://cert.example.org/a.pem",
            }
        ).encode()
    )
    payload = (
        '{"attest":"A","dest":{"tn":["12155551213"]},"iat":0,"orig":{"tn":"12155551212"},'
        f'"origid":"x","z":{"[" * depth}{"]" * depth}}}'
    )
    token = f"{header}.{b64url(payload.encode())}.{b64url(bytes(64))}"
    return identity_header(token, "https://cert.example.org/a.pem")


async def test_malformed_bodies_never_make_a_5xx(api: Api, good: str) -> None:
    bodies = _malformed(good)
    assert 40 <= len(bodies)
    for path in POSTS:
        ctype = "text/plain" if path.endswith("/sip") else JSON
        for data in bodies:
            answer = await api.call("POST", path, data=data, content_type=ctype)
            assert answer.status < 500, (path, data[:80], answer.body)
            assert isinstance(answer.body, dict), (path, data[:80])


# -- disposition, tokens, admin (issue 5) ---------------------------------------------------------

TOKEN = "s3cret-admin-token-0123456789"


async def test_native_answers_carry_the_disposition_and_atis_is_unchanged(
    start: Callable[..., Any], tmp_path: Path, signer: Signer, now: int
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[[block]]\nspc = '1234'\nreference = 'FCC DA 24-1'\n")
    api = await start(policy_file=str(policy))
    identity = signer.identity(iat=now)
    native = await api.post("/v1/verify", {"identity": identity, "from": ORIG, "to": DEST})
    assert PASSED == native.body["verstat"]
    assert {
        "action": "block",
        "label": "blocked",
        "reasons": [{"list": "block", "spc": "1234", "line": 1, "reference": "FCC DA 24-1"}],
        "response": {"code": 603, "text": "Decline", "reason": 'SIP;cause=603;text="FCC DA 24-1"'},
    } == native.body["disposition"]
    answer = await api.post("/stir/v1/verification", atis(identity, now=now))
    assert {"verificationResponse": {"verstat": PASSED, "attest": "A"}} == answer.body
    batch = await api.post("/v1/verify/batch", {"requests": [{"identity": identity}]})
    assert "block" == batch.body["results"][0]["disposition"]["action"]


async def test_default_disposition(api: Api, signer: Signer, now: int) -> None:
    answer = await api.post("/v1/verify", {"identity": signer.identity(iat=now, attest="B")})
    assert {"action": "label", "label": "partial"} == {
        k: answer.body["disposition"][k] for k in ("action", "label")
    }


async def test_admin_endpoints_need_a_configured_token(
    start: Callable[..., Any],
) -> None:
    closed = await start()
    answer = await closed.call("POST", "/v1/admin/reload", content_type=None)
    assert (403, "POL4003", ["this endpoint is disabled until api.admin_token is configured"]) == (
        svc(answer)
    )
    api = await start(api=ApiSettings(admin_token=TOKEN))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        answer = await api.call("POST", "/v1/admin/reload", content_type=None, headers=headers)
        assert (401, "POL4001", ["a valid bearer token is required"]) == svc(answer)
        assert 'Bearer realm="verifier"' == answer.headers["WWW-Authenticate"]
    answer = await api.call(
        "POST", "/v1/admin/reload", content_type=None, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert 200 == answer.status
    # the app was given its trust store; its settings name ./certs, which holds no anchor
    # here, so the reload fails and says why (the loaded anchors stay in force)
    assert False is answer.body["ok"]
    assert False is answer.body["trust_anchors"]["ok"]
    assert "certs" in answer.body["trust_anchors"]["error"]


async def test_verify_token_guards_the_verification_endpoints(
    start: Callable[..., Any], good: str, now: int
) -> None:
    api = await start(api=ApiSettings(verify_token=TOKEN))
    answer = await api.post("/stir/v1/verification", atis(good, now=now))
    assert (401, "POL4001", ["a valid bearer token is required"]) == svc(answer)
    answer = await api.post(
        "/stir/v1/verification", atis(good, now=now), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert {"verificationResponse": {"verstat": PASSED, "attest": "A"}} == answer.body


async def test_policy_hot_reload_under_load_fails_no_request(
    start: Callable[..., Any], tmp_path: Path, signer: Signer, pki: TestPKI, now: int
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[labels]\nA = 'green'\n")
    anchors = tmp_path / "root.pem"
    anchors.write_bytes(pem(pki.root.cert))
    api = await start(
        policy_file=str(policy), trust_anchors=(str(anchors),), api=ApiSettings(admin_token=TOKEN)
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    labels: list[str] = []

    async def caller() -> None:
        for _ in range(40):
            answer = await api.post("/v1/verify", {"identity": signer.identity(iat=now)})
            assert 200 == answer.status
            assert PASSED == answer.body["verstat"]
            labels.append(answer.body["disposition"]["label"])

    async def reloader() -> None:
        for i in range(10):
            policy.write_text(f"[labels]\nA = 'green-{i}'\n")
            answer = await api.call("POST", "/v1/admin/reload", content_type=None, headers=auth)
            assert {
                "ok": True,
                "trust_anchors": {"ok": True, "count": 1},
                "policy": {"ok": True, "source": str(policy)},
            } == answer.body
            await asyncio.sleep(0)
        policy.write_text("[labels]\nA = ''\n")  # broken: the last good policy stays
        answer = await api.call("POST", "/v1/admin/reload", content_type=None, headers=auth)
        assert False is answer.body["ok"]
        assert f"{policy}:2: [labels] A: a label is" in answer.body["policy"]["error"]

    await asyncio.gather(caller(), caller(), caller(), reloader())
    assert 120 == len(labels)
    assert len(set(labels)) > 1  # the calls saw the reloads
    final = await api.post("/v1/verify", {"identity": signer.identity(iat=now)})
    assert "green-9" == final.body["disposition"]["label"]


# -- traceback records, replay (issues 5 and 6) ---------------------------------------------------


@pytest.fixture
async def recording(start: Callable[..., Any], tmp_path: Path) -> Api:
    api: Api = await start(
        records=RecordSettings(data_dir=str(tmp_path / "data"), flush_interval=0.01),
        api=ApiSettings(admin_token=TOKEN),
    )
    return api


async def _flushed(api: Api) -> None:
    writer = api.service.records
    assert writer is not None
    for _ in range(200):
        if writer.queue_depth == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("records not written")


async def test_metrics_count_records_the_store_refused(recording: Api) -> None:
    writer = api_writer(recording)
    now = time.time()
    fields = dict.fromkeys(("orig", "dest", "origid", "attest", "reason", "x5u"))
    fields |= dict.fromkeys(("fingerprint", "action", "label"))
    for i, code in enumerate((438, 2**70)):  # past 64 bits: no store takes it
        await writer.submit(
            Record(
                ts=now,
                request_id=f"r{i}",
                endpoint="native",
                verstat=PASSED,
                sip_code=code,
                spc=(),
                **fields,
            )
        )
    await _flushed(recording)
    lines = (await recording.call("GET", "/metrics")).body.splitlines()
    assert {
        "verifier_records_written_total 1.0",
        "verifier_records_rejected_total 1.0",
        "verifier_records_dropped_total 1.0",
    } <= set(lines)


def api_writer(api: Api) -> RecordWriter:
    writer = api.service.records
    assert isinstance(writer, RecordWriter)
    return writer


async def test_every_verification_is_recorded_and_queryable(
    recording: Api, signer: Signer, impostor: Signer, now: int
) -> None:
    api, auth = recording, {"Authorization": f"Bearer {TOKEN}"}
    good = signer.identity(iat=now)
    await api.post("/stir/v1/verification", atis(good, now=now), headers={"X-RequestID": "r-1"})
    await api.post(
        "/v1/verify", {"identity": impostor.identity(iat=now), "from": "+1 (215) 555-1212"}
    )
    await api.post("/v1/verify/batch", {"requests": [{"identity": signer.identity(iat=now)}, {}]})
    await _flushed(api)
    page = (await api.call("GET", "/v1/records", headers=auth)).body
    assert 4 == len(page["records"])
    assert None is page["next_cursor"]
    first = page["records"][-1]  # newest first
    assert {
        "request_id": "r-1",
        "endpoint": "atis",
        "orig": ORIG,
        "dest": DEST,
        "verstat": PASSED,
        "attest": "A",
        "spc": ["1234"],
        "x5u": signer.x5u,
        "action": "allow",
        "label": "verified",
    } == {
        k: first[k]
        for k in (
            "request_id",
            "endpoint",
            "orig",
            "dest",
            "verstat",
            "attest",
            "spc",
            "x5u",
            "action",
            "label",
        )
    }
    assert signer.cert.fingerprint(hashes.SHA256()).hex() == first["fingerprint"]
    origid = json.loads(b64decode_part(good.split(".")[1]))["origid"]
    by_origid = await api.call("GET", f"/v1/records?origid={origid}", headers=auth)
    assert ["r-1"] == [r["request_id"] for r in by_origid.body["records"]]
    by_number = await api.call(
        "GET", f"/v1/records?orig=%2B1-215-555-1212&since={now - 1}", headers=auth
    )
    # the numbers are compared canonically; the heartbeat-like item has no number at all
    assert 3 == len(by_number.body["records"])
    failed = await api.call("GET", "/v1/records?spc=1234&limit=1", headers=auth)
    assert 1 == len(failed.body["records"])
    assert failed.body["next_cursor"] is not None
    more = await api.call(
        "GET", f"/v1/records?spc=1234&limit=1&cursor={failed.body['next_cursor']}", headers=auth
    )
    assert failed.body["records"][0]["request_id"] != more.body["records"][0]["request_id"]
    stats = (await api.call("GET", f"/v1/stats?since={now - 1}", headers=auth)).body
    assert 4 == stats["total"]
    assert {PASSED: 2, FAILED: 1, NO_VALIDATION: 1} == stats["by_verstat"]
    csv_text = (await api.call("GET", "/v1/records?format=csv", headers=auth)).body
    lines = csv_text.strip().splitlines()
    assert 5 == len(lines)
    assert lines[0].startswith("ts,")


async def test_record_endpoints_refuse_without_the_token(
    recording: Api, start: Callable[..., Any]
) -> None:
    for path in ("/v1/records", "/v1/stats"):
        assert (401, "POL4001") == svc(await recording.call("GET", path))[:2]
        wrong = await recording.call("GET", path, headers={"Authorization": "Bearer nope"})
        assert (401, "POL4001") == svc(wrong)[:2]
    closed = await start()
    assert (403, "POL4003") == svc(await closed.call("GET", "/v1/records"))[:2]


async def test_record_query_errors(recording: Api) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for query, name in (
        ("limit=0", "query"),
        ("limit=x", "limit"),
        ("since=yesterday", "since"),
        ("colour=red", "colour"),
        ("cursor=nope", "query"),
    ):
        answer = await recording.call("GET", f"/v1/records?{query}", headers=auth)
        assert (400, "SVC4005") == svc(answer)[:2], query
        assert name == svc(answer)[2][0], query
    answer = await recording.call("GET", "/v1/stats?since=2&until=1", headers=auth)
    assert (400, "SVC4005") == svc(answer)[:2]


async def test_records_disabled_answer_404(start: Callable[..., Any]) -> None:
    api = await start(api=ApiSettings(admin_token=TOKEN))
    answer = await api.call("GET", "/v1/records", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (404, "SVC4003", ["records are disabled"]) == svc(answer)


async def test_the_same_passport_twice_is_flagged_as_replayed(
    api: Api, signer: Signer, now: int
) -> None:
    first, second = signer.identity(iat=now), signer.identity(iat=now)
    answers = [
        (await api.post("/v1/verify", {"identity": value})).body for value in (first, second, first)
    ]
    assert [False, False, True] == [a["replayed"] for a in answers]
    assert ["verified", "verified", "replayed"] == [a["disposition"]["label"] for a in answers]
    assert ["allow", "allow", "label"] == [a["disposition"]["action"] for a in answers]
    metrics = (await api.call("GET", "/metrics")).body
    assert "verifier_replays_total 1.0" in metrics.splitlines()


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _twin(identity: str) -> str:
    """The same Identity header with the signature's ``s`` swapped for ``n - s``: a signature
    that verifies as well (ECDSA is malleable), as a replayer could make it."""
    token, _, params = identity.partition(";")
    head, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    s = int.from_bytes(raw[32:], "big")
    twin = raw[:32] + (P256_ORDER - s).to_bytes(32, "big")
    return f"{head}.{payload}.{b64url(twin)};{params}"


async def test_a_replay_with_the_twin_signature_is_still_a_replay(
    api: Api, signer: Signer, now: int
) -> None:
    """Issue 15 item 4: the replay set is keyed on (r, min(s, n - s)), not the text."""
    first = signer.identity(iat=now)
    twin = _twin(first)
    answers = [(await api.post("/v1/verify", {"identity": v})).body for v in (first, twin)]
    assert ["TN-Validation-Passed"] * 2 == [a["verstat"] for a in answers]  # both verify
    assert [False, True] == [a["replayed"] for a in answers]
    other = signer.identity(iat=now)
    answers = [(await api.post("/v1/verify", {"identity": v})).body for v in (_twin(other), other)]
    assert [False, True] == [a["replayed"] for a in answers]


async def test_replay_set_stays_within_its_bound(
    start: Callable[..., Any], signer: Signer, now: int
) -> None:
    from verifier.settings import VerificationSettings

    api = await start(verification=VerificationSettings(replay_cache_size=50))
    values = [signer.identity(iat=now) for _ in range(120)]
    answers = await api.post("/v1/verify/batch", {"requests": [{"identity": v} for v in values]})
    assert 120 == len(answers.body["results"])
    assert 50 >= len(api.service.replay)
    assert all(not r["replayed"] for r in answers.body["results"])


async def test_rcd_name_is_shown_only_when_verified(api: Api, signer: Signer, now: int) -> None:
    named = signer.identity(iat=now, claims={"rcd": {"nam": "ACME Pharmacy"}})
    body = (await api.post("/v1/verify", {"identity": named})).body
    assert {
        "verified": True,
        "nam": "ACME Pharmacy",
        "logo": None,
        "reason": None,
        "details": {"/nam": "covered by signature"},
    } == body["rcd"]
    late = signer.identity(iat=now - 600, claims={"rcd": {"nam": "ACME Pharmacy"}})
    body = (await api.post("/v1/verify", {"identity": late})).body
    assert (False, None) == (body["rcd"]["verified"], body["rcd"]["nam"])
    assert (
        None is (await api.post("/v1/verify", {"identity": signer.identity(iat=now)})).body["rcd"]
    )
