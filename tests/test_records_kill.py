"""A real ``verifier serve`` killed with SIGKILL while PostgreSQL is away and its records go
to the journal: what was fsync'd is replayed into PostgreSQL at the next start, once.

Needs VERIFIER_TEST_DATABASE_URL (skipped without it); the outage is a
:class:`verifier.testing.faults.TcpProxy` between the service and the server, cut.
"""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psycopg
from psycopg import sql

from verifier.testing import TestPKI, free_port, pem, write_preload
from verifier.testing.faults import TcpProxy


def start(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "verifier", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


async def wait_ready(base: str, proc: subprocess.Popen[str]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if proc.poll() is not None:
                raise AssertionError(f"exited early: {proc.communicate()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError("service did not become ready")


def stored(database_url: str, schema: str) -> list[str]:
    """Every record's request id in ``schema`` (an empty list before the table exists)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        try:
            return [row[0] for row in conn.execute("SELECT request_id FROM records")]
        except psycopg.errors.UndefinedTable:
            return []


async def until_true(check: Callable[[], bool], seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


async def test_sigkill_while_journaling_loses_nothing_fsynced(
    tmp_path: Path, database_url: str, schema: str, procs: list[subprocess.Popen[str]]
) -> None:
    pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
    (tmp_path / "root.pem").write_bytes(pem(pki.root.cert))
    preload = write_preload(tmp_path / "preload", [pki.signer])
    parts = urlsplit(database_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxied = parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}")
        url = f"{proxied.geturl()}?options=-csearch_path%3D{schema}"
        config = tmp_path / "v.toml"
        config.write_text(
            f"port = {port}\ntrust_anchors = ['{tmp_path / 'root.pem'}']\nlog_level = 'WARNING'\n"
            f"[x5u]\npreload_dir = '{preload}'\ncrl_check = false\n"
            f"[records]\ndata_dir = '{data}'\ndatabase_url = '{url}'\n"
        )
        proc = start(config)
        procs.append(proc)
        await wait_ready(base, proc)
        now = int(time.time())
        identity = pki.signer.identity(iat=now)
        body = {
            "verificationRequest": {
                "from": {"tn": "12155551212"},
                "to": {"tn": ["12155551213"]},
                "time": now,
                "identity": identity,
            }
        }
        async with aiohttp.ClientSession() as session:

            async def call(rid: str) -> None:
                headers = {"X-RequestID": rid}
                url = base + "/stir/v1/verification"
                async with session.post(url, json=body, headers=headers) as resp:
                    await resp.read()
                    assert 200 == resp.status

            for i in range(50):
                await call(f"before-{i}")
            await until_true(lambda: 50 == len(stored(database_url, schema)))
            proxy.cut()  # PostgreSQL goes away
            during = [f"during-{i}" for i in range(300)]
            for chunk in range(0, 300, 30):
                await asyncio.gather(*(call(rid) for rid in during[chunk : chunk + 30]))

        def journaled() -> bool:
            text = b"".join(p.read_bytes() for p in data.glob("journal/*/*.jnl"))
            return all(f'"{rid}"'.encode() in text for rid in during)

        await until_true(journaled)  # on disk: fsync'd with the write, by the journal's sync
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        proxy.restore()
        again = start(config)
        procs.append(again)
        await wait_ready(base, again)
        expected = {f"before-{i}" for i in range(50)} | set(during)
        await until_true(lambda: expected <= set(stored(database_url, schema)))
        again.send_signal(signal.SIGTERM)
        again.communicate()
    got = stored(database_url, schema)
    assert expected == set(got)
    assert len(expected) == len(got)  # none twice
