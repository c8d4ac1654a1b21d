"""Instructions per SIP INVITE beside instructions per ATIS request, counted by valgrind's
callgrind in the same run: how the SIP front end's cost compares with the HTTP endpoint's,
free of a neighbour's load.

Runs `verifier serve` (one worker, records off, logs on, every call a certificate cache
hit, ``[sip] listen`` on UDP) under `valgrind --tool=callgrind`, as callgrind_http.py does:
once answering N1 and once N2 sequential calls, the difference divided by N2 - N1 (start-up
cancels out). The SIP calls are what a switch does: an INVITE with a distinct valid Identity
header, its 302 (checked for ``verstat=TN-Validation-Passed``), the ACK. The ATIS calls are
callgrind_http.py's. Beside them, the instructions of one P-256 ECDSA verification by
pyca/cryptography: the baseline.

    apt-get install valgrind
    .venv/bin/python benchmarks/callgrind_sip.py [--requests 100 400] [--keep DIR] [--json]

``--keep DIR`` keeps the callgrind output files there (for ``callgrind_annotate``). Each
service run takes about half a minute; everything talks to 127.0.0.1 and ends by itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import time
from pathlib import Path

from callgrind_http import (
    TIMEOUT,
    _service_run,
    arguments,
    preloaded,
    serve_counted,
    verify_run,
)

from verifier.testing import TestPKI, free_port
from verifier.testing.sip import invite


def _ack(port: int, branch: str, call_id: str, to: bytes) -> bytes:
    """The ACK of a final response whose To header is ``to``."""
    return (
        f"ACK sip:+12155551213@switch.example.com;user=phone SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:+12155551212@origin.example.com;user=phone>;tag=from1\r\n"
        f"To: {to.decode()}\r\n"
        f"Call-ID: {call_id}@127.0.0.1\r\n"
        "CSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _sip_run(work: Path, pki: TestPKI, calls: int) -> int:
    """Instructions of a service that answered ``calls`` INVITEs (and absorbed their ACKs)."""
    http, sip = free_port(), free_port()

    def drive() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(TIMEOUT)
            port = sock.getsockname()[1]
            for i in range(calls):
                branch, call_id = f"z9hG4bK-cg-{i}", f"cg-{i}"
                sock.sendto(
                    invite(port, identity=pki.signer.identity(iat=int(time.time())),
                           branch=branch, call_id=call_id),  # signed now: never stale
                    ("127.0.0.1", sip),
                )  # fmt: skip
                while True:
                    reply = sock.recv(65536)
                    if not reply.startswith(b"SIP/2.0 100 "):
                        break
                if b"verstat=TN-Validation-Passed" not in reply:
                    raise RuntimeError(f"call {i} did not pass: {reply[:300]!r}")
                to = next(
                    line[3:].strip()
                    for line in reply.split(b"\r\n")
                    if line.lower().startswith(b"to:")
                )
                sock.sendto(_ack(port, branch, call_id, to), ("127.0.0.1", sip))

    extra = f'[sip]\nlisten = ["udp:127.0.0.1:{sip}"]\n'
    return serve_counted(work, http, extra, work / f"callgrind.sip.{calls}", drive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the callgrind output files here")
    args, low, high = arguments(parser)
    started = time.monotonic()
    with preloaded("callgrind-sip-") as (work, pki):
        per_call = (_sip_run(work, pki, high) - _sip_run(work, pki, low)) / (high - low)
        per_request = (_service_run(work, pki, high) - _service_run(work, pki, low)) / (high - low)
        per_verify = (verify_run(work, high) - verify_run(work, low)) / (high - low)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for out in work.glob("callgrind.*"):
                shutil.copy(out, args.keep / out.name)
    figures = {
        "instructions_per_sip_call": round(per_call),
        "instructions_per_atis_request": round(per_request),
        "instructions_per_p256_verify": round(per_verify),
        "sip_vs_atis": round(per_call / per_request, 3),
        "requests": [low, high],
        "seconds": round(time.monotonic() - started),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"SIP INVITE + 302 + ACK (records off, logs on): {per_call:>12,.0f} instructions")
    print(f"ATIS request (records off, logs on):           {per_request:>12,.0f} instructions")
    print(f"P-256 verify (pyca/cryptography):              {per_verify:>12,.0f} instructions")
    print(f"SIP / ATIS:                                    {figures['sip_vs_atis']:>12}")


if __name__ == "__main__":
    main()
