"""``verifier demo``: the service on its embedded defaults, with everything it needs locally.

Creates a dev PKI under ``certs/dev/`` if missing, serves the dev SP certificate from an
HTTPS certificate repository on 127.0.0.1, starts the service trusting the dev root (with
private x5u allowed for 127.0.0.1 only) with its SIP front end on UDP at the HTTP port's
number, checks two calls itself, and prints copy-paste ``curl`` commands with their
expected answers and a SIPp command whose call gets a 302. Runs until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from ..core.certs import load_certificates
from ..http.app import create_app, start_site
from ..settings import Settings, load_settings
from .pki import write_pki
from .repository import Repository
from .sip import sipp_scenario

__all__ = ["run_demo"]

ORIG = "12155551212"
DEST = "12155551213"
OTHER = "12155559999"


def _sign_command(directory: Path, x5u: str, ask_to: str | None) -> str:
    """The ``verifier sign`` command line: an ATIS request asking about ``ask_to``, or (None)
    the Identity header alone."""
    sign = [
        sys.executable,
        "-m",
        "verifier",
        "sign",
        "--key",
        str(directory / "sp.key"),
        "--x5u",
        x5u,
        "--orig",
        ORIG,
        "--dest",
        DEST,
        *(["--atis-request", "--atis-to", ask_to] if ask_to is not None else []),
    ]
    return " ".join(shlex.quote(part) for part in sign)


async def _post(url: str, body: bytes) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        return resp.status, await resp.json()


def _atis_request(signer_key: Path, x5u: str, ask_to: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from .pki import identity_header, sign_jws

    key = serialization.load_pem_private_key(signer_key.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"{signer_key} is not an EC key")
    now = int(time.time())
    token = sign_jws(
        key,
        {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": x5u},
        {
            "attest": "A",
            "dest": {"tn": [DEST]},
            "iat": now,
            "orig": {"tn": ORIG},
            "origid": "4437c8b2-2b2c-4dd3-8d1c-9b1a66f5c7e1",
        },
    )
    request = {
        "verificationRequest": {
            "from": {"tn": ORIG},
            "to": {"tn": [ask_to]},
            "time": now,
            "identity": identity_header(token, x5u),
        }
    }
    return json.dumps(request).encode()


def _sipp_command(directory: Path, x5u: str, host: str, port: int) -> str:
    """A shell line: sign a fresh PASSporT into a SIPp injection file, then one SIPp call
    whose 302 must carry ``verstat=TN-Validation-Passed``. (The Identity header's ``;``
    separates SIPp fields, so the file holds the PASSporT and the scenario the rest.)"""
    scenario = directory / "sipp-invite.xml"
    identity = f'[field0];info=<{x5u}>;alg=ES256;ppt="shaken"'
    scenario.write_text(
        sipp_scenario(identity=identity, check="verstat=TN-Validation-Passed"),
        encoding="latin-1",
    )
    csv = shlex.quote(str(directory / "sipp-identity.csv"))
    sipp = [
        "sipp",
        f"{host}:{port}",
        "-sf",
        str(scenario),
        "-inf",
        str(directory / "sipp-identity.csv"),
        *(
            [
                "-m",
                "1",
                "-t",
                "u1",
                "-i",
                "127.0.0.1",
                "-p",
                "0",
                "-nostdin",
                "-timeout",
                "10s",
                "-timeout_error",
            ]
        ),
    ]
    sign = _sign_command(directory, x5u, None)
    return (
        f"{{ echo SEQUENTIAL; {sign} | cut -d';' -f1; }} > {csv}"
        f" && {' '.join(shlex.quote(part) for part in sipp)}"
    )


async def _serve(directory: Path, host: str, port: int) -> None:
    tls = (
        (directory / "tls" / "server.pem").read_bytes(),
        (directory / "tls" / "server.key").read_bytes(),
    )
    repo = Repository(tls=tls, ca_pem=(directory / "tls" / "ca.pem").read_bytes(), plain_http=False)
    repo.put("/sp.pem", (directory / "sp.pem").read_bytes())
    async with repo:
        x5u = repo.url("/sp.pem")
        settings: Settings = load_settings(
            overrides={
                "host": host,
                "port": port,
                "trust_anchors": [str(directory / "root.pem")],
                "http_client.ca_file": str(directory / "tls" / "ca.pem"),
                "http_client.private_allow": ["127.0.0.1"],
                "http_client.ports": [443, 8443, repo.port],
                "sip.listen": [f"udp:{host}:{port}"],
            }
        )
        load_certificates(settings.trust_anchors)
        runner, _site = await start_site(create_app(settings), settings)  # as `serve` does
        url = f"http://{host}:{port}"
        try:
            print(f"verifier demo: service on {url}, certificate repository {x5u}\n")
            endpoint = f"{url}/stir/v1/verification"
            curl = f"curl -s -H 'Content-Type: application/json' --data-binary @- {endpoint}"
            for title, ask_to in (
                ("A call that verifies (the PASSporT was signed for the number asked about)", DEST),
                (
                    "A call that fails (the same PASSporT presented for another called number)",
                    OTHER,
                ),
            ):
                status, answer = await _post(
                    endpoint, _atis_request(directory / "sp.key", x5u, ask_to)
                )
                print(f"# {title}:")
                print(f"{_sign_command(directory, x5u, ask_to)} \\\n  | {curl}")
                print(f"# expected (HTTP {status}): {json.dumps(answer, separators=(',', ':'))}\n")
            print(f"# SIP (UDP {host}:{port}): a 302 with verstat=TN-Validation-Passed (SIPp):")
            print(_sipp_command(directory, x5u, host, port) + "\n")
            print(
                "Each command signs a fresh Identity header (iat is checked to within 60 s).\n"
                f"Also: curl -s {url}/healthz ; curl -s {url}/metrics ;"
                f" curl -s {url}/openapi.json\n"
                "Ctrl-C stops the demo."
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()


def run_demo(directory: str | Path = "certs/dev", host: str = "127.0.0.1", port: int = 8080) -> int:
    out = Path(directory)
    if not (out / "root.pem").exists():
        write_pki(out)
        print(f"created a dev PKI in {out}/ (trust anchor root.pem; signer sp.pem + sp.key)")
    try:
        asyncio.run(_serve(out, host, port))
    except OSError as exc:
        print(f"verifier demo: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0
