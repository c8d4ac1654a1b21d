"""Soak: mixed traffic against `verifier serve` for minutes; the service must stay standing.

Starts an HTTPS certificate repository (verifier.testing.repository) and the service (one worker,
records on) on 127.0.0.1, then sends ATIS requests from 32 concurrent clients:
about 70% valid, 20% invalid (tampered signature, wrong called number, malformed header,
stale iat, unparseable body), 10% signed under a new x5u (a cache miss and a fetch). Each
minute (or each --report seconds) it prints requests/s, p50/p99 latency, the service's RSS
and its cache and record-queue sizes. It fails (exit 1) on any 5xx, on an unexpected answer,
or when a cache or queue grows past its cap.

    .venv/bin/python benchmarks/soak.py --minutes 5          # the hardening figure
    .venv/bin/python benchmarks/soak.py --seconds 5 --json   # a quick run (the tests do this)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_http import ready, serve_command, serve_env

from verifier.testing import Signer, TestPKI, free_port, pem
from verifier.testing.repository import Repository

ORIG, DEST = "12155551212", "12155551213"
CACHE_SIZE = 2000  # the service's x5u.cache_size in this run
QUEUE_SIZE = 10000  # records.queue_size


@dataclass
class Window:
    started: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)


def _rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) if match else 0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Traffic:
    """Makes the next request body and says which verstat (or HTTP status) it must get."""

    def __init__(self, pki: TestPKI, repo: Repository) -> None:
        self.pki = pki
        self.repo = repo
        self.new_x5u = 0
        self.signer = pki.signer

    def next(self) -> tuple[bytes, str]:
        now = int(time.time())
        roll = random.random()  # noqa: S311 - traffic mix, not security
        if roll < 0.70:
            return self._atis(self.signer.identity(iat=now), now), "TN-Validation-Passed"
        if roll < 0.80:
            self.new_x5u += 1
            path = f"/new/{self.new_x5u}.pem"
            self.repo.put(path, self.signer.chain_pem())
            signer = Signer(
                self.signer.key, self.signer.cert, self.signer.chain, self.repo.url(path)
            )
            return self._atis(signer.identity(iat=now), now), "TN-Validation-Passed"
        kind = random.choice(["tampered", "dest", "malformed", "stale", "garbage"])  # noqa: S311
        if kind == "tampered":
            identity = self.signer.identity(iat=now)
            token, params = identity.split(";", 1)
            head, payload, sig = token.split(".")
            return self._atis(f"{head}.{payload}.{sig[::-1]};{params}", now), "failed"
        if kind == "dest":
            return self._atis(self.signer.identity(iat=now, dest="12155550000"), now), "failed"
        if kind == "malformed":
            return self._atis("eyJ0eXAi..;info=<nope>", now), "failed"
        if kind == "stale":
            return self._atis(self.signer.identity(iat=now - 3600), now), "failed"
        return b'{"verificationRequest": [', "400"

    @staticmethod
    def _atis(identity: str, now: int) -> bytes:
        return json.dumps(
            {
                "verificationRequest": {
                    "from": {"tn": ORIG},
                    "to": {"tn": [DEST]},
                    "time": now,
                    "identity": identity,
                }
            }
        ).encode()


async def _client(
    session: aiohttp.ClientSession, url: str, traffic: Traffic, windows: list[Window], end: float
) -> None:
    while time.monotonic() < end:
        body, expected = traffic.next()
        started = time.perf_counter()
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            text = await resp.text()
        window = windows[-1]
        window.latencies.append(time.perf_counter() - started)
        window.statuses[resp.status] = window.statuses.get(resp.status, 0) + 1
        ok = (
            str(resp.status) == expected
            if expected.isdigit()
            else resp.status == 200
            and (
                f'"verstat":"{expected}"' in text
                if expected.startswith("TN-")
                else '"verstat":"TN-Validation-Passed"' not in text
            )
        )
        if not ok and len(window.unexpected) < 5:
            window.unexpected.append(f"{resp.status} {text[:200]} (expected {expected})")


async def soak(seconds: float, report: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    pki = TestPKI.create()
    try:
        async with Repository.create(pki) as repo:
            pki.signer.x5u = repo.url("/sp.pem")
            repo.put("/sp.pem", pki.signer.chain_pem())
            (work / "root.pem").write_bytes(pem(pki.root.cert))
            (work / "ca.pem").write_bytes(repo.ca_pem)
            port = free_port()
            (work / "v.toml").write_text(
                f"port = {port}\ntrust_anchors = ['{work / 'root.pem'}']\n"
                f"[http_client]\nca_file = '{work / 'ca.pem'}'\nprivate_allow = ['127.0.0.1']\n"
                f"ports = [443, {repo.port}]\n[x5u]\ncrl_check = false\ncache_size = {CACHE_SIZE}\n"
                f"[records]\ndata_dir = '{work / 'data'}'\n"
                f"[verification]\nreplay_cache_size = 20000\n"
                f"[tuning]\nwriter_queue_size = {QUEUE_SIZE}\n"
            )
            server = await asyncio.create_subprocess_exec(
                *serve_command(work / "v.toml", None),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=serve_env(),
            )
            base = f"http://127.0.0.1:{port}"
            try:
                return await _drive(base, server, Traffic(pki, repo), seconds, report)
            finally:
                server.terminate()
                await asyncio.wait_for(server.wait(), 30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _drive(
    base: str,
    server: asyncio.subprocess.Process,
    traffic: Traffic,
    seconds: float,
    report: float,
) -> dict[str, Any]:
    pid = server.pid
    connector = aiohttp.TCPConnector(limit=32)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        aiohttp.ClientSession() as monitor,  # its own connections: the clients hold all 32
    ):
        await ready(monitor, base, lambda: server.returncode)
        rss_start = _rss_kib(pid)
        windows = [Window(time.monotonic())]
        end = time.monotonic() + seconds
        clients = [
            asyncio.create_task(
                _client(session, base + "/stir/v1/verification", traffic, windows, end)
            )
            for _ in range(32)
        ]
        rows: list[dict[str, Any]] = []
        while not all(c.done() for c in clients):
            await asyncio.wait(clients, timeout=report)
            window = windows[-1]
            windows.append(Window(time.monotonic()))
            async with monitor.get(base + "/metrics") as resp:
                metrics = await resp.text()
            elapsed = max(1e-9, windows[-1].started - window.started)
            lat = sorted(window.latencies)
            rows.append(
                {
                    "t": round(windows[-1].started - windows[0].started, 1),
                    "req_per_s": round(len(lat) / elapsed, 1),
                    "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
                    "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 2) if lat else None,
                    "statuses": dict(sorted(window.statuses.items())),
                    "unexpected": window.unexpected,
                    "rss_kib": _rss_kib(pid),
                    "x5u_cache": _metric(metrics, "verifier_x5u_cache_entries"),
                    "record_queue": _metric(metrics, "verifier_records_queue_depth"),
                    "records_dropped": _metric(metrics, "verifier_records_dropped_total"),
                }
            )
        await asyncio.gather(*clients)
    errors = sum(n for r in rows for s, n in r["statuses"].items() if s >= 500)
    unexpected = [u for r in rows for u in r["unexpected"]]
    return {
        "seconds": seconds,
        "requests": sum(sum(r["statuses"].values()) for r in rows),
        "new_x5u": traffic.new_x5u,
        "server_errors": errors,
        "unexpected": unexpected,
        "rss_start_kib": rss_start,
        "rss_end_kib": rows[-1]["rss_kib"] if rows else rss_start,
        "max_x5u_cache": max((r["x5u_cache"] for r in rows), default=0),
        "max_record_queue": max((r["record_queue"] for r in rows), default=0),
        "windows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, help="run time in seconds (overrides --minutes)")
    parser.add_argument("--report", type=float, default=60.0, help="seconds per report window")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else 60 * args.minutes
    report = min(args.report, max(1.0, seconds / 3))
    summary = asyncio.run(soak(seconds, report))
    if args.json:
        print(json.dumps(summary))
    else:
        head = ("t s", "req/s", "p50 ms", "p99 ms", "RSS MiB", "x5u", "queue")
        print("".join(f"{h:>9}" for h in head), " statuses")
        for r in summary["windows"]:
            cells = (
                f"{r['t']:.0f}",
                f"{r['req_per_s']:.0f}",
                f"{r['p50_ms'] or 0:.2f}",
                f"{r['p99_ms'] or 0:.2f}",
                f"{r['rss_kib'] / 1024:.1f}",
                f"{r['x5u_cache']:.0f}",
                f"{r['record_queue']:.0f}",
            )
            print("".join(f"{c:>9}" for c in cells), "", r["statuses"])
        print(
            f"{summary['requests']} requests, {summary['new_x5u']} new x5u,"
            f" {summary['server_errors']} server errors, {len(summary['unexpected'])} unexpected;"
            f" RSS {summary['rss_start_kib'] / 1024:.1f} -> {summary['rss_end_kib'] / 1024:.1f} MiB"
        )
        for line in summary["unexpected"]:
            print("unexpected:", line)
    failed = (
        summary["server_errors"]
        or summary["unexpected"]
        or summary["max_x5u_cache"] > CACHE_SIZE
        or summary["max_record_queue"] > QUEUE_SIZE
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
