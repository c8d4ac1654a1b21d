"""The SIP front end inside the service: ``[sip]`` settings, ``serve --sip-listen``, the
listener started with the app (real x5u repository over TLS, records on), and hostile input."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from verifier.cli import main
from verifier.http.app import create_app, start_site
from verifier.records import RecordQuery, open_store
from verifier.settings import ConfigError, load_settings
from verifier.sip.config import SipSettings, parse_listen
from verifier.testing import TestPKI, free_port
from verifier.testing.repository import Repository
from verifier.testing.sip import RURI, invite
from verifier.testing.sip import response_headers as headers


def test_listen_values_are_checked() -> None:
    listen = parse_listen("tcp:[::1]:5061")
    assert ("tcp", "::1", 5061) == (listen.transport, listen.host, listen.port)
    for bad, why in [
        ("tls:127.0.0.1:5061", "transport"),
        ("udp:switch.example.com:5060", "IP address"),
        ("udp:127.0.0.1:99999", "port"),
        ("udp:127.0.0.1", "IP address"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_listen(bad)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"allow": ("10.0.0.0/33",)}, "not a network"),
        ({"max_message": 70_000}, "max_message"),
        ({"max_transactions": 0}, "max_transactions"),
        ({"redirect_headers": ("X-Foo",)}, "not one of"),
        ({"contact_headers": ("Identity",)}, "not one of"),
    ],
)
def test_sip_settings_refuse_bad_values(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        SipSettings(**changes)


def test_the_sip_table_and_its_environment_variables() -> None:
    env = {"VERIFIER_SIP_LISTEN": "udp:127.0.0.1:5060, tcp:127.0.0.1:5060"}
    loaded = load_settings(env=env)
    assert ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060") == loaded.sip.listen
    assert () == load_settings().sip.listen
    with pytest.raises(ConfigError, match="VERIFIER_SIP_LISTEN"):
        load_settings(env={"VERIFIER_SIP_LISTEN": "sctp:127.0.0.1:5060"})


def run(argv: Sequence[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    code = info.value.code
    assert isinstance(code, int)
    return code


def test_serve_refuses_a_bad_sip_listen_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--sip-listen", "udp:127.0.0.1:5060", "--sip-listen", "tls:127.0.0.1:5061"]
    assert 2 == run([*argv, "--trust-anchor", str(tmp_path / "none.pem")])
    assert "the transport must be udp or tcp" in capsys.readouterr().err


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)


async def test_the_app_serves_sip_with_its_service_and_records_each_call(
    tmp_path: Path,
) -> None:
    pki = TestPKI.create()
    async with Repository.create(pki) as repo:
        pki.signer.x5u = repo.url("/sp.pem")
        repo.put("/sp.pem", pki.signer.chain_pem())
        port = free_port(socket.SOCK_DGRAM)
        settings = repo.service_settings(
            pki,
            tmp_path,
            {
                "records.data_dir": str(tmp_path / "data"),
                "sip.listen": [f"udp:127.0.0.1:{port}"],
            },
        )
        app = create_app(settings)
        runner, _ = await start_site(app, settings, port=0)
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(_Udp, local_addr=("127.0.0.1", 0))
        try:
            mine = transport.get_extra_info("sockname")[1]
            # the app's clock is the real one: iat is now, not the session's ``now``
            request = invite(mine, identity=pki.signer.identity(iat=int(time.time())))
            transport.sendto(request, ("127.0.0.1", port))
            data = await asyncio.wait_for(client.replies.get(), 20)
            while data.startswith(b"SIP/2.0 100 "):
                data = await asyncio.wait_for(client.replies.get(), 20)
            code, found = headers(data)
            assert 302 == code
            assert [f"<{RURI}>"] == found["contact"]
            assert ["<tel:+12155551212;verstat=TN-Validation-Passed>"] == found[
                "p-asserted-identity"
            ]
        finally:
            transport.close()
            await runner.cleanup()
    store = open_store(settings.records)
    try:
        rows, _ = store.query(RecordQuery())
        assert [("sip_redirect", "TN-Validation-Passed")] == [(r.endpoint, r.verstat) for r in rows]
    finally:
        store.close()
