"""The per-verification JSON log line: one valid JSON object per line, every field of the
record, numbers masked unless configured, hostile strings escaped."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from aiohttp import web

from verifier.core.certs import TrustStore
from verifier.core.policy import Policy
from verifier.logs import RefusedRequests, VerificationLog, configure_logging
from verifier.metrics import Metrics
from verifier.records import Record
from verifier.service import Service
from verifier.settings import ApiSettings, Settings
from verifier.testing import ChainSource

HOSTILE = 'q"\\\n\u2603\x00},"x":1'


def record(**fields: object) -> Record:
    base: dict[str, object] = {
        "ts": 1_700_000_000.0,
        "request_id": HOSTILE,
        "endpoint": "atis",
        "orig": "12155551212",
        "dest": "12155551213",
        "origid": "123e4567-e89b-12d3-a456-426614174000",
        "attest": "A",
        "verstat": "TN-Validation-Passed",
        "reason": None,
        "sip_code": None,
        "spc": ("1234", 'AB"C'),
        "x5u": "https://cr.example/\u00e9.pem",
        "fingerprint": "ab" * 32,
        "action": "allow",
        "label": 'l"1',
    }
    base.update(fields)
    return Record(**base)  # type: ignore[arg-type]


def line_of(rec: Record, trust: TrustStore, *, full: bool = False) -> tuple[str, dict[str, object]]:
    stream = io.StringIO()
    service = Service(
        Settings(api=ApiSettings(log_full_numbers=full)),
        trust,
        credentials=ChainSource(trust, []),
        policy=Policy.default(),
        metrics=Metrics.create(),
        vlog=VerificationLog(stream),
    )
    service._log(rec)
    service.vlog.flush()
    text = stream.getvalue()
    assert text.endswith("\n")
    assert 1 == text.count("\n")
    return text, json.loads(text)


@pytest.mark.parametrize("full", [False, True])
def test_line_carries_every_field_escaped(trust: TrustStore, full: bool) -> None:
    text, line = line_of(record(), trust, full=full)
    assert text.isascii()
    assert {
        "level": "INFO",
        "logger": "verifier.verifications",
        "event": "verification",
        "endpoint": "atis",
        "request_id": HOSTILE,
        "verstat": "TN-Validation-Passed",
        "attest": "A",
        "reason": None,
        "sip_code": None,
        "spc": ["1234", 'AB"C'],
        "x5u": "https://cr.example/\u00e9.pem",
        "origid": "123e4567-e89b-12d3-a456-426614174000",
        "orig": "12155551212" if full else "*******1212",
        "dest": "12155551213" if full else "*******1213",
        "action": "allow",
        "label": 'l"1',
    } == {k: v for k, v in line.items() if k != "ts"}
    assert str(line["ts"]).endswith("+00:00")


def test_failure_line_with_no_signer_and_no_numbers(trust: TrustStore) -> None:
    rec = record(
        verstat="No-TN-Validation",
        attest=None,
        reason="no_identity",
        sip_code=428,
        spc=(),
        x5u=None,
        origid=None,
        orig=None,
        dest="12",
        action=None,
        label=None,
    )
    _text, line = line_of(rec, trust)
    assert (428, None, "no_identity", None, "12") == (
        line["sip_code"],
        line["spc"],
        line["reason"],
        line["orig"],
        line["dest"],
    )


async def test_a_request_aiohttp_refuses_is_one_warning_line_without_traceback(
    trust: TrustStore, caplog: pytest.LogCaptureFixture
) -> None:
    """What aiohttp's HTTP parser refuses (it answers 400 itself) is logged as one
    ``http_request_refused`` warning, not an ERROR with a traceback."""
    app = web.Application()
    server = logging.getLogger("aiohttp.server")
    refused = RefusedRequests()
    server.addFilter(refused)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)  # aiohttp closes after a 400
        writer.close()
    finally:
        await runner.cleanup()
        server.removeFilter(refused)
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert [("WARNING", "http_request_refused", None)] == lines
    assert 400 == caplog.records[0].status  # type: ignore[attr-defined]
    assert "Host" in caplog.records[0].error  # type: ignore[attr-defined]


def test_configure_logging_installs_the_refusal_filter_once() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    server = logging.getLogger("aiohttp.server")
    before = server.filters[:]
    try:
        configure_logging("INFO")
        configure_logging("INFO")
        assert 1 == sum(isinstance(f, RefusedRequests) for f in server.filters)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        server.filters[:] = before
