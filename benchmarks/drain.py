"""Drain: SIGTERM while kept-alive connections carry calls; how many calls fail.

Starts `verifier serve` (one worker, records off, the signer's certificate preloaded) on
127.0.0.1, sends ATIS calls from ``--connections`` kept-alive connections as fast as it
answers them, sends SIGTERM after ``--seconds``, and goes on until every connection is
refused. A call that was sent and got no answer (the connection reset or closed under it)
is a failed call; a refused new connection is not (the switch tries its next server).

    .venv/bin/python benchmarks/drain.py --connections 16 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from verifier.testing import TestPKI, free_port, pem, write_preload


async def run(connections: int, seconds: float) -> dict[str, object]:
    pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "root.pem").write_bytes(pem(pki.root.cert))
        preload = write_preload(root / "preload", [pki.signer])
        port = free_port()
        (root / "v.toml").write_text(
            f"port = {port}\ntrust_anchors = ['{root / 'root.pem'}']\nlog_level = 'WARNING'\n"
            f"[x5u]\npreload_dir = '{preload}'\ncrl_check = false\n[records]\nenabled = false\n"
        )
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "verifier", "serve", "--config", str(root / "v.toml")),
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        base = f"http://127.0.0.1:{port}"
        now = int(time.time())
        body = {
            "verificationRequest": {
                "from": {"tn": "12155551212"},
                "to": {"tn": ["12155551213"]},
                "time": now,
                "identity": pki.signer.identity(iat=now),
            }
        }
        counts = {"answered": 0, "answered_after_sigterm": 0, "closing_answers": 0}
        failed: list[str] = []
        refused = 0
        sigterm_at: float | None = None
        connector = aiohttp.TCPConnector(limit=connections, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # ready
                try:
                    async with session.get(base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)

            async def caller() -> None:
                nonlocal refused
                while True:
                    try:
                        async with session.post(base + "/stir/v1/verification", json=body) as resp:
                            await resp.read()
                            counts["answered"] += 1
                            if sigterm_at is not None:
                                counts["answered_after_sigterm"] += 1
                            if resp.headers.get("Connection", "").lower() == "close":
                                counts["closing_answers"] += 1
                    except aiohttp.ClientConnectorError:
                        refused += 1  # not listening any more: this call was never sent
                        return
                    except aiohttp.ClientError as exc:
                        failed.append(type(exc).__name__)

            tasks = [asyncio.create_task(caller()) for _ in range(connections)]
            await asyncio.sleep(seconds)
            rate = counts["answered"] / seconds
            proc.send_signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        code = await asyncio.wait_for(proc.wait(), 30)
    return {
        "connections": connections,
        "calls_per_s_before_sigterm": round(rate),
        **counts,
        "failed_calls": len(failed),
        "failures": sorted(set(failed)),
        "exit_code": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.connections, args.seconds)), indent=2))


if __name__ == "__main__":
    main()
