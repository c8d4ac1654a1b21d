"""The fast lane of POST /stir/v1/verification (verifier.http.fastpath): for every request, it
answers exactly as aiohttp's handler does, or hands the connection to aiohttp.

Two real servers on 127.0.0.1 over the same application settings, one with the fast lane
and one without, get the same raw bytes; their answers must match (Date and generated
request ids aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from verifier.core.certs import TrustStore
from verifier.http.app import FRONT, create_app, start_site
from verifier.records import RecordSettings
from verifier.settings import ApiSettings, Settings
from verifier.testing import ChainSource, Signer, TestPKI

PATH = "/stir/v1/verification"
ORIG, DEST = "12155551212", "12155551213"
TOKEN = "s3cret-token-for-tests"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    def comparable(self) -> tuple[int, dict[str, str], Any]:
        """Status, headers and body, less what differs by design (Date, a generated id)."""
        headers = {k: v for k, v in self.headers.items() if k not in ("date", "x-requestid")}
        headers["x-requestid?"] = "yes" if "x-requestid" in self.headers else "no"
        if "x-requestid" in self.headers and self.headers["x-requestid"].startswith("given-"):
            headers["x-requestid"] = self.headers["x-requestid"]
        return self.status, headers, self.body


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # 100 Continue: the answer follows
        head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    text = body.decode()
    return Reply(status, headers, json.loads(text) if text.startswith("{") else text)


async def exchange(port: int, raw: bytes, replies: int = 1) -> list[Reply]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return [await asyncio.wait_for(read_reply(reader), 10) for _ in range(replies)]
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(body: bytes | str, *, headers: str = "", line: str = f"POST {PATH} HTTP/1.1") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return (
        f"{line}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{headers}\r\n"
    ).encode() + data


def atis(identity: str | None, now: int, **fields: Any) -> str:
    body: dict[str, Any] = {"from": {"tn": ORIG}, "to": {"tn": [DEST]}, "time": now}
    if identity is not None:
        body["identity"] = identity
    body.update(fields)
    return json.dumps({"verificationRequest": body})


@dataclass
class Pair:
    fast: int
    plain: int
    apps: list[web.Application]


@pytest.fixture
def serve(pki: TestPKI, now: int) -> Callable[..., contextlib.AbstractAsyncContextManager[Pair]]:
    @contextlib.asynccontextmanager
    async def run(**api: Any) -> AsyncIterator[Pair]:
        trust = TrustStore([pki.root.cert])
        ports, runners, apps = [], [], []
        for fast in (True, False):
            settings = Settings(
                host="127.0.0.1",
                api=ApiSettings(fast_path=fast, **api),
                records=RecordSettings(enabled=False),
            )
            app = create_app(
                settings,
                trust=trust,
                credentials=ChainSource(trust, [pki.signer]),
                clock=lambda: now,
            )
            runner, site = await start_site(app, settings, port=0)
            ports.append(site.port)
            runners.append(runner)
            apps.append(app)
        try:
            yield Pair(ports[0], ports[1], apps)
        finally:
            for runner in runners:
                await runner.cleanup()

    return run


async def same_answer(pair: Pair, raw: bytes, replies: int = 1) -> list[Reply]:
    fast = await exchange(pair.fast, raw, replies)
    plain = await exchange(pair.plain, raw, replies)
    assert [r.comparable() for r in plain] == [r.comparable() for r in fast]
    return fast


async def test_answers_match_aiohttp_request_by_request(
    serve: Callable[..., Any], signer: Signer, pki: TestPKI, now: int
) -> None:
    good = signer.identity(iat=now)
    impostor = pki.ca.issue_leaf("9999", x5u=signer.x5u).identity(iat=now)
    cases: list[tuple[bytes, int, bool]] = [
        # (request, expected status, served by the fast lane)
        (request(atis(good, now)), 200, True),
        (request(atis(impostor, now)), 200, True),  # 438 bad signature, as a verdict
        (request(atis(None, now)), 200, True),  # heartbeat: 428
        (request(atis(good, now - 3600)), 200, True),  # 403 Stale Date
        (request(atis(good, now), headers="X-RequestID: given-1\r\n"), 200, True),
        (request(atis(good, now), headers="Accept: application/json\r\n"), 200, True),
        (request("{not json"), 400, True),  # SVC4006
        (request('{"verificationRequest":{}}'), 400, True),  # SVC4001
        (request(atis(good, now, time="soon")), 400, True),  # SVC4005
        (request(atis(good, now), headers="X-RequestID: given-2\r\n")[:-1] + b" ", 400, True),
        (request("[]"), 400, True),
        (request(atis(good, now), headers="Accept: text/html\r\n"), 406, False),
        (request(atis(good, now)).replace(b"application/json", b"text/plain"), 415, False),
        (request(atis(good, now)).replace(b"application/json", b"Application/JSON"), 200, True),
        (
            request(atis(good, now))
            .replace(b"Content-Type", b"content-type")
            .replace(b"Content-Length", b"CONTENT-LENGTH"),
            200,
            True,
        ),
        (request(atis(good, now)).replace(b"Content-Type: ", b"Content-Type:\t"), 200, True),
        (request(atis(good, now)).replace(b"application/json", b"application/json;x=1"), 200, True),
        (
            request(atis(good, now)).replace(b"application/json", b'application/json; a="b;c"'),
            200,
            True,
        ),
        (request(atis(good, now), line=f"POST {PATH}?x=1 HTTP/1.1"), 200, False),
        (request(atis(good, now), line=f"PUT {PATH} HTTP/1.1"), 405, False),
        (request(atis(good, now), line="POST /v1/nowhere HTTP/1.1"), 404, False),
        (request("x" * 70_000), 413, False),
        (request(""), 400, False),  # Content-Length: 0
        (request(atis(good, now), headers="Expect: 100-continue\r\n"), 200, True),
        (request(atis(good, now), headers="Expect: something-else\r\n"), 417, False),
    ]
    replies = []
    async with serve() as pair:
        front = pair.apps[0][FRONT]
        for raw, status, fast in cases:
            before = front.handed_over
            (reply,) = await same_answer(pair, raw)
            assert status == reply.status, raw[:120]
            assert fast == (front.handed_over == before), raw[:120]
            replies.append(reply)
    passed = {"verificationResponse": {"verstat": "TN-Validation-Passed", "attest": "A"}}
    assert passed == replies[0].body
    assert "application/json" == replies[0].headers["content-type"]
    assert 438 == replies[1].body["verificationResponse"]["reasoncode"]
    assert 428 == replies[2].body["verificationResponse"]["reasoncode"]
    assert 403 == replies[3].body["verificationResponse"]["reasoncode"]
    assert "given-1" == replies[4].headers["x-requestid"]
    assert "SVC4006" == replies[6].body["requestError"]["serviceException"]["messageId"]


async def test_chunked_request_goes_to_aiohttp(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    body = atis(signer.identity(iat=now), now).encode()
    raw = (
        (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n"
        ).encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    async with serve() as pair:
        (reply,) = await same_answer(pair, raw)
    assert 411 == reply.status  # no Content-Length: SVC4007, from aiohttp's handler
    assert "SVC4007" == reply.body["requestError"]["serviceException"]["messageId"]


async def test_malformed_framing_goes_to_aiohttp(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    """Anything outside the recognised subset is aiohttp's to judge, byte for byte."""
    body = atis(signer.identity(iat=now), now)
    good = request(body)
    variants = [
        good.replace(b"Content-Length:", b"Content-Length: 5\r\nContent-Length:"),
        good.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\n folded"),
        good.replace(b"Host: 127.0.0.1", "Host: caf\u00e9".encode()),
        good.replace(b"Host: 127.0.0.1", b"Bad Name: x"),
        good.replace(b"POST ", b"post "),
        good.replace(b"HTTP/1.1", b"HTTP/1.0"),
        good.replace(
            b"Content-Type: application/json",
            b"Content-Type: application/json\r\nContent-Type: text/plain",
        ),
        good.replace(b"Host: 127.0.0.1", b"Connection: upgrade"),
        good.replace(b"Content-Length: ", b"Content-Length: x"),
    ]
    refused = 0
    async with serve() as pair:
        front = pair.apps[0][FRONT]
        for raw in variants:
            before = front.handed_over
            (reply,) = await same_answer(pair, raw)
            assert before + 1 == front.handed_over, raw[:160]
            assert reply.status < 500
            if reply.status >= 400:  # refused, by aiohttp's parser too: the API's error shape
                refused += 1
                assert "application/json" == reply.headers["content-type"], reply
                assert {"requestError"} == set(reply.body), reply
        assert refused >= 6


async def test_pipelined_requests_are_answered_in_order_across_the_hand_over(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    fast = [
        request(atis(signer.identity(iat=now), now), headers=f"X-RequestID: given-{i}\r\n")
        for i in range(3)
    ]
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    async with serve() as pair:
        front = pair.apps[0][FRONT]
        replies = await same_answer(pair, fast[0] + fast[1] + health + fast[2], replies=4)
        assert 1 == front.handed_over  # at /healthz; the third verification was aiohttp's
    assert ["given-0", "given-1", None, "given-2"] == [
        r.headers.get("x-requestid") for r in replies
    ]
    assert "ok" == replies[2].body["status"]


async def test_a_request_in_single_bytes_and_connection_close(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    raw = request(atis(signer.identity(iat=now), now), headers="Connection: close\r\n")
    async with serve() as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.fast)
        for i in range(len(raw)):
            writer.write(raw[i : i + 1])
            await writer.drain()
        reply = await asyncio.wait_for(read_reply(reader), 10)
        assert b"" == await asyncio.wait_for(reader.read(), 10)  # the server closed
        writer.close()
        assert 0 == pair.apps[0][FRONT].handed_over
    assert "close" == reply.headers["connection"]
    assert "TN-Validation-Passed" == reply.body["verificationResponse"]["verstat"]


async def test_keep_alive_client_stays_in_the_fast_lane(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    async with serve() as pair, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{pair.fast}{PATH}"
        for _ in range(30):
            body = json.loads(atis(signer.identity(iat=now), now))
            async with session.post(url, json=body) as resp:
                assert 200 == resp.status
                answer = await resp.json()
                assert "TN-Validation-Passed" == answer["verificationResponse"]["verstat"]
        front = pair.apps[0][FRONT]
        assert 0 == front.handed_over
        assert 1 == len(front.connections)  # one keep-alive connection for all 30


async def test_verify_token_checked_in_both_lanes(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    body = atis(signer.identity(iat=now), now)
    async with serve(verify_token=TOKEN) as pair:
        front = pair.apps[0][FRONT]
        (ok,) = await same_answer(pair, request(body, headers=f"Authorization: Bearer {TOKEN}\r\n"))
        assert 0 == front.handed_over
        (refused,) = await same_answer(pair, request(body, headers="Authorization: Bearer no\r\n"))
        (missing,) = await same_answer(pair, request(body))
        assert 2 == front.handed_over
    assert 200 == ok.status
    assert (401, 401) == (refused.status, missing.status)
    assert "POL4001" == refused.body["requestError"]["policyException"]["messageId"]


async def test_shutdown_answers_the_request_in_flight_and_closes_idle_connections(
    pki: TestPKI, signer: Signer, now: int
) -> None:
    source = ChainSource(TrustStore([pki.root.cert]), [signer], delay=0.3)
    runner, port = await fast_server(source, now)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(b"POST /stir")  # a partial request, then nothing
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request(atis(signer.identity(iat=now), now)))
    await source.called.wait()  # the request is in flight, waiting for its certificate
    await runner.cleanup()  # what SIGTERM does
    reply = await asyncio.wait_for(read_reply(reader), 10)
    assert "TN-Validation-Passed" == reply.body["verificationResponse"]["verstat"]
    assert "close" == reply.headers["connection"]
    assert b"" == await asyncio.wait_for(idle_reader.read(), 10)
    assert b"" == await asyncio.wait_for(reader.read(), 10)
    writer.close()
    idle_writer.close()


async def fast_server(source: ChainSource, now: int) -> tuple[web.AppRunner, int]:
    """One server with the fast lane over ``source``, on a free port."""
    settings = Settings(host="127.0.0.1", records=RecordSettings(enabled=False))
    app = create_app(settings, trust=source.trust, credentials=source, clock=lambda: now)
    runner, site = await start_site(app, settings, port=0)
    return runner, site.port


async def test_pipelined_bulk_behind_a_slow_request_is_read_once_it_is_answered(
    pki: TestPKI, signer: Signer, now: int
) -> None:
    """More pipelined bytes than one request may hold, behind a request still verifying:
    reading pauses, then resumes; every request is answered, in order."""

    source = ChainSource(TrustStore([pki.root.cert]), [signer], delay=0.2)
    runner, port = await fast_server(source, now)
    app = runner.app
    try:
        padding = " " * 60_000  # JSON allows white space: a large, valid body
        raws = [
            request(atis(signer.identity(iat=now), now) + padding, headers=f"X-RequestID: r{i}\r\n")
            for i in range(4)
        ]
        replies = await exchange(port, b"".join(raws), replies=4)
    finally:
        await runner.cleanup()
    assert ["r0", "r1", "r2", "r3"] == [r.headers["x-requestid"] for r in replies]
    assert {"TN-Validation-Passed"} == {r.body["verificationResponse"]["verstat"] for r in replies}
    assert 0 == app[FRONT].handed_over


# -- property: any mutation of a request gets the same answer from both servers -----------------

_HEADER_LINES = st.sampled_from(
    [
        "Accept: */*",
        "Accept: application/json;q=0.9",
        "Accept: text/html",
        "Connection: keep-alive",
        "Connection: close",
        "Connection: upgrade",
        "Content-Type: application/json",
        "Content-Type: application/json; charset=utf-8",
        "Content-Type: text/plain",
        "X-RequestID: given-x",
        'X-RequestID: given-"quoted"',
        "X-RequestID: " + "r" * 200,
        "Transfer-Encoding: chunked",
        "Expect: 100-continue",
        "Authorization: Bearer x",
        "Content-Length: 3",
        "Bad Header: x",
        " folded",
        "X-Empty:",
        "X-Tab:\tvalue",
    ]
)


@settings(
    max_examples=60,
    derandomize=True,  # the same 60 cases on every run: CI never meets a new one by chance
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    extra=st.lists(_HEADER_LINES, max_size=3),
    drop_length=st.booleans(),
    drop_type=st.booleans(),
    body_kind=st.sampled_from(["good", "bad-json", "empty", "array", "padded"]),
    # No shorter Content-Length: the rest of the body would be a second, broken request,
    # which test_trailing_garbage_is_answered_after_the_request covers.
    length_delta=st.sampled_from([0, 0, 0, 1]),
)
def test_any_request_mutation_gets_the_same_answer(
    serve: Callable[..., Any],
    signer: Signer,
    now: int,
    extra: list[str],
    drop_length: bool,
    drop_type: bool,
    body_kind: str,
    length_delta: int,
) -> None:
    body = {
        "good": atis(signer.identity(iat=now), now),
        "bad-json": '{"verificationRequest":',
        "empty": "",
        "array": "[1,2]",
        "padded": "  " + atis(None, now) + "\n",
    }[body_kind]
    data = body.encode()
    # A Content-Length shorter than the body leaves the rest as a second, broken request
    # (see test_trailing_garbage_is_answered_after_the_request).
    assume(not (drop_length and "Content-Length: 3" in extra and len(data) > 3))
    lines = [f"POST {PATH} HTTP/1.1", "Host: 127.0.0.1"]
    if not drop_type:
        lines.append("Content-Type: application/json")
    if not drop_length:
        lines.append(f"Content-Length: {max(0, len(data) + length_delta)}")
    lines.extend(extra)
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + data

    async def both() -> None:
        async with serve() as pair:
            fast = await answer_or_close(pair.fast, raw)
            plain = await answer_or_close(pair.plain, raw)
            assert plain == fast, raw[:300]

    asyncio.run(both())


async def answer_or_close(port: int, raw: bytes) -> Any:
    """The first answer's comparable parts; "closed" when the server closed without one;
    "waiting" when it still waits for the body a Content-Length promised.

    (The client does not half-close: aiohttp then drops the request unanswered, where the
    fast lane answers it, as HTTP allows.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        try:
            reply = await asyncio.wait_for(read_reply(reader), 0.5)
        except TimeoutError:
            return "waiting"
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed"
        return reply.comparable()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_trailing_garbage_is_answered_after_the_request(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    """A complete request followed by bytes that are no request: the fast lane answers the
    request, then hands the rest to aiohttp, which refuses it (400) and closes. (aiohttp
    alone answers the parse error first and drops the request: answers out of order.)"""
    raw = request(atis(signer.identity(iat=now), now)) + b"}\r\n\r\n"
    async with serve() as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.fast)
        writer.write(raw)
        first = await asyncio.wait_for(read_reply(reader), 10)
        second = await asyncio.wait_for(read_reply(reader), 10)
        assert b"" == await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert 1 == pair.apps[0][FRONT].handed_over
    assert "TN-Validation-Passed" == first.body["verificationResponse"]["verstat"]
    assert 400 == second.status


async def test_idle_and_dribbling_connections_are_closed_busy_ones_kept(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    """Keep-alive (here 0.3 s): an idle connection and one that dribbles a partial request
    a byte at a time are closed; one that keeps completing requests is kept."""
    async with serve() as pair:
        pair.apps[0][FRONT].keepalive = 0.3
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", pair.fast)
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", pair.fast)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", pair.fast)
        partial = request(atis(signer.identity(iat=now), now))
        for i in range(12):  # 1.2 s
            if not slow_writer.is_closing():
                slow_writer.write(partial[i : i + 1])
            busy_writer.write(request(atis(signer.identity(iat=now), now)))
            reply = await asyncio.wait_for(read_reply(busy_reader), 5)
            assert 200 == reply.status
            await asyncio.sleep(0.1)
        assert await closed_by_server(idle_reader)
        assert await closed_by_server(slow_reader)
        assert not busy_reader.at_eof()
        for writer in (idle_writer, slow_writer, busy_writer):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """The server closed this connection: end of stream, or (we kept writing to it) a
    broken pipe or reset."""
    try:
        return b"" == await asyncio.wait_for(reader.read(), 1)
    except ConnectionError:
        return True


async def test_half_closed_client_gets_its_answers_then_the_close(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    """A client that sends two requests and shuts down its sending side (HTTP allows it)
    gets both answers, then the connection closes."""
    raws = [
        request(atis(signer.identity(iat=now), now), headers=f"X-RequestID: h{i}\r\n")
        for i in range(2)
    ]
    async with serve() as pair:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.fast)
        writer.write(b"".join(raws))
        writer.write_eof()
        replies = [await asyncio.wait_for(read_reply(reader), 10) for _ in raws]
        assert await closed_by_server(reader)
        writer.close()
    assert ["h0", "h1"] == [r.headers["x-requestid"] for r in replies]
    assert {200} == {r.status for r in replies}


async def test_expect_100_continue_is_met_before_the_body(
    serve: Callable[..., Any], signer: Signer, now: int
) -> None:
    """A client that sends its headers with ``Expect: 100-continue`` and waits: both servers
    answer ``100 Continue``, then the verdict once the body follows."""
    raw = request(atis(signer.identity(iat=now), now), headers="Expect: 100-continue\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    async with serve() as pair:
        answers = []
        for port in (pair.fast, pair.plain):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + b"\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(body)
            answers.append((interim, await asyncio.wait_for(read_reply(reader), 10)))
            writer.close()
        assert 0 == pair.apps[0][FRONT].handed_over
    (fast_interim, fast), (plain_interim, plain) = answers
    assert b"HTTP/1.1 100 Continue\r\n\r\n" == fast_interim == plain_interim
    assert plain.comparable() == fast.comparable()
    assert "TN-Validation-Passed" == fast.body["verificationResponse"]["verstat"]
