"""The SIP front end driven by SIPp (a real SIP client, Debian package sip-tester): verdicts
in the 302, a block, OPTIONS and a UDP retransmission, over UDP and TCP."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from verifier.core.certs import TrustStore
from verifier.core.policy import Policy
from verifier.metrics import Metrics
from verifier.records import RecordSettings
from verifier.service import Service
from verifier.settings import Settings
from verifier.sip.config import SipSettings
from verifier.sip.server import SipServer
from verifier.testing import ChainSource, Signer, identity_header
from verifier.testing.sip import sipp_options_scenario, sipp_scenario

SIPP = shutil.which("sipp")
pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (.ci/run installs it)")


async def serve(
    trust: TrustStore,
    signer: Signer,
    now: int,
    policy: Policy | None = None,
    delay: float = 0.0,
) -> SipServer:
    service = Service(
        Settings(records=RecordSettings(enabled=False)),
        trust,
        credentials=ChainSource(trust, [signer], delay=delay),
        policy=policy or Policy.default(),
        metrics=Metrics.create(),
        clock=lambda: float(now),
    )
    server = SipServer(service, SipSettings(listen=("udp:127.0.0.1:0", "tcp:127.0.0.1:0")))
    return await server.__aenter__()


@pytest.fixture
async def server(trust: TrustStore, signer: Signer, now: int) -> AsyncIterator[SipServer]:
    running = await serve(trust, signer, now)
    yield running
    await running.close()


async def sipp(server: SipServer, scenario: str, tmp_path: Path, transport: str = "udp") -> str:
    """Run one SIPp call of ``scenario`` against ``server``; its output, or fail."""
    assert SIPP is not None
    port = {t: p for t, _, p in server.addresses}[transport]
    path = tmp_path / "scenario.xml"
    path.write_text(scenario, encoding="latin-1")
    process = await asyncio.create_subprocess_exec(
        SIPP,
        f"127.0.0.1:{port}",
        "-sf",
        str(path),
        "-m",
        "1",
        "-t",
        "u1" if transport == "udp" else "t1",
        "-i",
        "127.0.0.1",
        "-p",
        "0",
        "-timeout",
        "30s",
        "-timeout_error",
        "-nostdin",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await process.communicate()
    text = out.decode("utf-8", "replace")
    assert 0 == process.returncode, text[-2000:]
    return text


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipp_gets_a_302_with_verstat_passed(
    server: SipServer, signer: Signer, now: int, tmp_path: Path, transport: str
) -> None:
    scenario = sipp_scenario(
        identity=signer.identity(iat=now), check="verstat=TN-Validation-Passed"
    )
    await sipp(server, scenario, tmp_path, transport)
    assert 0 == server.stats["bad"] + server.stats["dropped"]


async def test_sipp_gets_a_302_with_the_failure_cause(
    server: SipServer, signer: Signer, now: int, tmp_path: Path
) -> None:
    head, payload, signature = signer.passport(iat=now).split(".")
    flipped = "A" if signature[10] != "A" else "B"
    forged = identity_header(
        f"{head}.{payload}.{signature[:10]}{flipped}{signature[11:]}", signer.x5u
    )
    check = "verstat=TN-Validation-Failed.*Reason: STIR;cause=438"
    await sipp(server, sipp_scenario(identity=forged, check=check), tmp_path)


async def test_sipp_gets_608_for_a_blocked_signer(
    trust: TrustStore, signer: Signer, now: int, tmp_path: Path
) -> None:
    policy = Policy.from_text('block_response = 608\n[[block]]\nspc = "1234"\n')
    running = await serve(trust, signer, now, policy)
    try:
        scenario = sipp_scenario(
            identity=signer.identity(iat=now), expect=608, check="Reason: SIP;cause=608"
        )
        await sipp(running, scenario, tmp_path)
    finally:
        await running.close()


async def test_sipp_options(server: SipServer, tmp_path: Path) -> None:
    await sipp(server, sipp_options_scenario(), tmp_path)


async def test_sipp_retransmits_the_invite_and_gets_trying_then_one_302(
    trust: TrustStore, signer: Signer, now: int, tmp_path: Path
) -> None:
    # The x5u answers late: SIPp retransmits the INVITE (every 500 ms) until the 100
    # Trying each retransmission gets; the 302 comes once, for the one transaction.
    running = await serve(trust, signer, now, delay=1.2)
    try:
        scenario = sipp_scenario(
            identity=signer.identity(iat=now),
            check="X-Verstat: TN-Validation-Passed",
            retransmit=500,
        )
        await sipp(running, scenario, tmp_path)
        assert running.stats["retransmissions"] >= 1
        assert 1 == running.transactions
    finally:
        await running.close()
