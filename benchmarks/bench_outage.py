"""Records outage: PostgreSQL away under load, then a SIGKILL while journaling.

Starts `verifier serve` (one worker, records in PostgreSQL through a cut-able
:class:`verifier.testing.faults.TcpProxy`, x5u preloaded) and sends ATIS calls at a fixed
rate (open loop: a call is sent on schedule whether or not the earlier ones were answered),
each with its own X-RequestID. Phases:

1. healthy, ``--healthy`` s: p99 of answered calls (the baseline, measured in the same run);
2. PostgreSQL away, ``--outage`` s (the proxy refuses and cuts connections): p99;
3. PostgreSQL back: waits until the journal is empty (``/metrics``), then counts the
   records in PostgreSQL by request id: every answered call's, none twice;
4. PostgreSQL away again, the service SIGKILLed under load after ``--kill-after`` s,
   PostgreSQL back, the service started again on the same data directory: how many of
   the calls answered before the kill are missing from PostgreSQL once the journal is
   replayed (the bound: the records of the last ``journal_fsync_interval``).

``--one-core``: the service and its record writer under ``taskset -c 0``, this script (the
load generator) on CPU 1; PostgreSQL, the store, is not pinned. The same run prints
`openssl speed` ECDSA P-256 verify/s on CPU 0 as the machine's baseline.

    VERIFIER_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python benchmarks/bench_outage.py --outage 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psycopg
from bench_core import openssl_verify_per_s
from bench_http import CLIENT_CPU, SERVER_CPU, ready, serve_command, serve_env
from psycopg import sql

from verifier.testing import TestPKI, free_port, pem, write_preload
from verifier.testing.faults import TcpProxy


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


class Load:
    """Open-loop ATIS calls at ``rate``/s, each with a request id ``<prefix>-<n>``."""

    def __init__(self, base: str, body: bytes, rate: int) -> None:
        self.base = base
        self.body = body
        self.rate = rate
        self.answered: list[str] = []
        self.latencies: list[float] = []
        self.failed = 0
        self.statuses: dict[int, int] = {}

    async def run(self, session: aiohttp.ClientSession, prefix: str, seconds: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * self.rate)
            while n < due:
                task = asyncio.create_task(self._call(session, f"{prefix}-{n}", time.monotonic()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def _call(self, session: aiohttp.ClientSession, rid: str, sent: float) -> None:
        try:
            async with session.post(
                self.base + "/stir/v1/verification",
                data=self.body,
                headers={"X-RequestID": rid, "Content-Type": "application/json"},
            ) as resp:
                await resp.read()
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    self.answered.append(rid)
                    self.latencies.append(time.monotonic() - sent)
        except (TimeoutError, aiohttp.ClientError):
            self.failed += 1


def _stored(database_url: str, schema: str) -> list[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        return [row[0] for row in conn.execute("SELECT request_id FROM records")]


async def _journal_empty(session: aiohttp.ClientSession, base: str, server: Any) -> None:
    for _ in range(1200):
        body = await ready(session, base, lambda: server.returncode)
        async with session.get(base + "/metrics") as resp:
            text = await resp.text()
        waiting = [
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith(("verifier_records_journal_bytes ", "verifier_records_queue_depth "))
        ]
        if body and waiting == ["0.0", "0.0"]:
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the journal was not replayed within 120 s")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    database_url = args.database_url
    schema = f"bench_outage_{uuid.uuid4().hex}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    work = Path(tempfile.mkdtemp(prefix="outage-"))
    parts = urlsplit(database_url)
    out: dict[str, Any] = {"rate": args.rate, "outage_s": args.outage}
    try:
        pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
        (work / "root.pem").write_bytes(pem(pki.root.cert))
        preload = write_preload(work / "preload", [pki.signer])
        now = int(time.time())
        body = json.dumps(
            {
                "verificationRequest": {
                    "from": {"tn": "12155551212"},
                    "to": {"tn": ["12155551213"]},
                    "time": now,
                    "identity": pki.signer.identity(iat=now),
                }
            }
        ).encode()
        async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
            netloc = f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"
            url = f"{parts._replace(netloc=netloc).geturl()}?options=-csearch_path%3D{schema}"
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            (work / "v.toml").write_text(
                f"port = {port}\ntrust_anchors = ['{work / 'root.pem'}']\nlog_level = 'ERROR'\n"
                f"[x5u]\npreload_dir = '{preload}'\ncrl_check = false\n"
                f"[records]\ndata_dir = '{work / 'data'}'\ndatabase_url = '{url}'\n"
            )

            command = serve_command(work / "v.toml", SERVER_CPU if args.one_core else None)

            async def serve() -> Any:
                return await asyncio.create_subprocess_exec(
                    *command,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=serve_env(),
                )

            server = await serve()
            connector = aiohttp.TCPConnector(limit=256)
            async with aiohttp.ClientSession(connector=connector) as session:
                await ready(session, base, lambda: server.returncode)
                healthy = Load(base, body, args.rate)
                await healthy.run(session, "healthy", args.healthy)
                proxy.cut()
                away = Load(base, body, args.rate)
                await away.run(session, "outage", args.outage)
                proxy.restore()
                await _journal_empty(session, base, server)
                got = _stored(database_url, schema)
                answered = set(healthy.answered) | set(away.answered)
                out["healthy"] = {
                    "answered": len(healthy.answered),
                    "p99_ms": _p99(healthy.latencies),
                    "max_ms": max(healthy.latencies, default=0) * 1000,
                }
                out["outage"] = {
                    "answered": len(away.answered),
                    "failed": away.failed,
                    "statuses": away.statuses,
                    "p99_ms": _p99(away.latencies),
                    "max_ms": max(away.latencies, default=0) * 1000,
                }
                out["after_outage"] = {
                    "answered": len(answered),
                    "in_postgresql": len(answered & set(got)),
                    "missing": len(answered - set(got)),
                    "duplicates": len(got) - len(set(got)),
                }
                # SIGKILL while journaling
                proxy.cut()
                doomed = Load(base, body, args.rate)
                load = asyncio.create_task(doomed.run(session, "killed", args.kill_after + 2))
                await asyncio.sleep(args.kill_after)
                server.send_signal(signal.SIGKILL)
                killed_at = len(doomed.answered)
                await load
                await server.wait()
                proxy.restore()
                server = await serve()
                await ready(session, base, lambda: server.returncode)
                await _journal_empty(session, base, server)
                got = _stored(database_url, schema)
                lost = set(doomed.answered) - set(got)
                out["sigkill"] = {
                    "answered_before_kill": len(doomed.answered),
                    "answered_at_kill_signal": killed_at,
                    "missing": len(lost),
                    "duplicates": len(got) - len(set(got)),
                    "rate_per_s": args.rate,
                }
                server.send_signal(signal.SIGTERM)
                await server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="calls per second")
    parser.add_argument("--healthy", type=float, default=20.0, help="seconds of the baseline")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds PostgreSQL is away")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds before SIGKILL")
    parser.add_argument(
        "--one-core",
        action="store_true",
        help=f"service on CPU {SERVER_CPU} (taskset), this load generator on CPU {CLIENT_CPU}",
    )
    parser.add_argument(
        "--database-url", default=os.environ.get("VERIFIER_TEST_DATABASE_URL"), required=False
    )
    args = parser.parse_args()
    if not args.database_url:
        raise SystemExit("give --database-url or VERIFIER_TEST_DATABASE_URL")
    baseline: dict[str, Any] = {}
    if args.one_core:
        if shutil.which("taskset") is None:
            raise SystemExit("taskset is not installed: apt-get install util-linux")
        os.sched_setaffinity(0, {SERVER_CPU})
        baseline["openssl_p256_verify_per_s"] = openssl_verify_per_s(3)
        os.sched_setaffinity(0, {CLIENT_CPU})
    out = asyncio.run(bench(args))
    out["mode"] = "one-core" if args.one_core else "unpinned"
    out.update(baseline)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
