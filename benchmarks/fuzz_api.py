"""Fuzz the HTTP API from its OpenAPI document (schemathesis) against a running service.

Starts `verifier serve` on 127.0.0.1 (admin token set, records on, a throw-away data
directory) and runs `schemathesis run` on every operation: generated valid and invalid
requests, with the checks that matter for a service on a switch's call path: no 5xx
(``not_a_server_error``) and every answer shaped as documented
(``response_schema_conformance``, ``content_type_conformance``). Exit status is
schemathesis's.

    .venv/bin/python benchmarks/fuzz_api.py [--max-examples 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from verifier.testing import TestPKI, free_port, pem

TOKEN = "fuzz-admin-token-0123456789abcdef"  # noqa: S105 - a throw-away test service's
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


def run(max_examples: int, seed: int | None = None) -> int:
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        pki = TestPKI.create()
        (work / "root.pem").write_bytes(pem(pki.root.cert))
        port = free_port()
        (work / "v.toml").write_text(
            f"port = {port}\ntrust_anchors = ['{work / 'root.pem'}']\nlog_level = 'ERROR'\n"
            f"[records]\ndata_dir = '{work / 'data'}'\n"
        )
        env = {**os.environ, "VERIFIER_API_ADMIN_TOKEN": TOKEN}
        server = subprocess.Popen(
            [sys.executable, "-m", "verifier", "serve", "--config", str(work / "v.toml")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    with urllib.request.urlopen(base + "/readyz", timeout=1):  # noqa: S310
                        break
                except OSError:
                    time.sleep(0.1)
            command = [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{base}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                str(max_examples),
                "-H",
                f"Authorization: Bearer {TOKEN}",
            ]
            if seed is not None:
                command += ["--seed", str(seed)]
            # its working files (.schemathesis/) go to the throw-away directory
            return subprocess.run(command, check=False, cwd=work).returncode
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=500)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    sys.exit(run(args.max_examples, args.seed))


if __name__ == "__main__":
    main()
