"""Instructions per ATIS request, counted by valgrind's callgrind: a figure that does not
move with a neighbour's load, for comparing two versions of the service.

Runs `verifier serve` (one worker, records off, every call a certificate cache hit) under
`valgrind --tool=callgrind` twice, answering N1 and then N2 sequential requests on one
keep-alive connection from this script, and divides the difference in instructions by
N2 - N1 (start-up cancels out). Beside it, in the same run and the same way, the
instructions of one P-256 ECDSA verification by pyca/cryptography (OpenSSL): the baseline.
Only the service's own process is counted (its threads included, child processes not).

    apt-get install valgrind
    .venv/bin/python benchmarks/callgrind_http.py [--requests 100 400] [--json]

Each service run takes about half a minute; everything talks to 127.0.0.1 and ends by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_http import _bodies, _wait_ready

from verifier.testing import TestPKI, free_port, pem, write_preload

TIMEOUT = 600  # seconds for any one valgrind run

VERIFY = """
import sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP256R1())
sig = key.sign(b"data", ec.ECDSA(hashes.SHA256()))
pub, alg = key.public_key(), ec.ECDSA(hashes.SHA256())
for _ in range(int(sys.argv[1])):
    pub.verify(sig, b"data", alg)
"""


def _instructions(out: Path) -> int:
    text = out.read_text(errors="replace")
    found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    if found is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(found.group(1))


def _callgrind(command: list[str], out: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--trace-children=no",
        *command,
    ]


def _read_reply(sock: socket.socket) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise RuntimeError("the service closed the connection")
        head += byte
    length = re.search(rb"content-length: *(\d+)", head, re.I)
    if length is None:
        raise RuntimeError(f"no Content-Length in {head!r}")
    body, want = b"", int(length.group(1))
    while len(body) < want:
        chunk = sock.recv(want - len(body))
        if not chunk:
            raise RuntimeError("the service closed the connection")
        body += chunk
    return body


def _service_run(work: Path, pki: TestPKI, requests: int) -> int:
    """Instructions of a service that answered ``requests`` ATIS requests."""
    port = free_port()

    def drive() -> None:
        atis, _batch = _bodies(work, pki, 1)  # signed now: iat stays fresh for the run
        bodies = atis.read_text().splitlines()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            for i in range(requests):
                data = bodies[i % len(bodies)].encode()
                sock.sendall(
                    b"POST /stir/v1/verification HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % len(data)
                    + data
                )
                reply = _read_reply(sock)
                if b"TN-Validation-Passed" not in reply:
                    raise RuntimeError(f"request {i} did not pass: {reply[:200]!r}")

    return serve_counted(work, port, "", work / f"callgrind.{requests}", drive)


def serve_counted(work: Path, port: int, extra: str, out: Path, drive: Callable[[], None]) -> int:
    """Instructions of `verifier serve` (HTTP on ``port``, records off, ``extra`` appended
    to its configuration) while ``drive()`` talks to it, counted into ``out``."""
    config = work / "verifier.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ntrust_anchors = ["{work / "root.pem"}"]\n'
        f'[x5u]\npreload_dir = "{work / "preload"}"\ncrl_check = false\n'
        "[records]\nenabled = false\n" + extra
    )
    command = [sys.executable, "-m", "verifier", "serve", "--config", str(config)]
    proc = subprocess.Popen(
        _callgrind(command, out),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=TIMEOUT)
        drive()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
    return _instructions(out)


def verify_run(work: Path, verifies: int) -> int:
    out = work / f"callgrind.verify.{verifies}"
    subprocess.run(
        _callgrind([sys.executable, "-c", VERIFY, str(verifies)], out),
        check=True,
        timeout=TIMEOUT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return _instructions(out)


def arguments(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, int, int]:
    """``parser`` with ``--requests N1 N2`` and ``--json``, parsed; its arguments, N1 and
    N2 (exits on bad counts, or when valgrind is not installed)."""
    parser.add_argument("--requests", type=int, nargs=2, default=(100, 400), metavar="N")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    low, high = args.requests
    if not 0 < low < high <= 5000:
        sys.exit("--requests N1 N2: 0 < N1 < N2 <= 5000")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    return args, low, high


@contextlib.contextmanager
def preloaded(prefix: str) -> Iterator[tuple[Path, TestPKI]]:
    """A work directory (removed afterwards) and the run's test PKI, its root in
    ``root.pem`` and its signer's certificate in ``preload/`` (what :func:`serve_counted`
    reads)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
        write_preload(work / "preload", [pki.signer])
        (work / "root.pem").write_bytes(pem(pki.root.cert))
        yield work, pki
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    args, low, high = arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    started = time.monotonic()
    with preloaded("callgrind-http-") as (work, pki):
        per_request = (_service_run(work, pki, high) - _service_run(work, pki, low)) / (high - low)
        per_verify = (verify_run(work, high) - verify_run(work, low)) / (high - low)
    figures = {
        "instructions_per_atis_request": round(per_request),
        "instructions_per_p256_verify": round(per_verify),
        "ratio": round(per_verify / per_request, 3),
        "requests": [low, high],
        "seconds": round(time.monotonic() - started),
    }
    if args.json:
        print(json.dumps(figures))
        return
    request, verify = (
        figures["instructions_per_atis_request"],
        figures["instructions_per_p256_verify"],
    )
    print(f"ATIS request (records off, logs on): {request:>10,} instructions")
    print(f"P-256 verify (pyca/cryptography):    {verify:>10,} instructions")
    print(f"ratio (verify / request):             {figures['ratio']}")


if __name__ == "__main__":
    main()
