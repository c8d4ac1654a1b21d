"""The Redis shared tier: what it costs on a local hit, and what it saves a cold instance.

Starts its own HTTPS certificate repository on 127.0.0.1 (verifier.testing.repository) and uses the
Redis at --redis-url (default: $VERIFIER_TEST_REDIS_URL, else redis://127.0.0.1:6379/15)
under a fresh key prefix, deleted at the end. Figures, each beside its baseline from the
same run:

(a) warm cache: ``fetcher.get(x5u)`` calls/s answered by the memory tier, for one fetcher
    with the Redis tier and one without (best of --rounds, interleaved). A local hit never
    leaves the process, so the ratio should be ~1.
(b) cold instance, warm fleet: a new instance asks for --x5us distinct x5u that another
    instance already fetched: seconds to have them all from Redis (validated locally),
    against the same loads from the repository (fetched and validated).

    .venv/bin/python benchmarks/bench_redis.py [--calls 200000] [--rounds 5] [--x5us 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from verifier.core.certs import TrustStore
from verifier.net.fetch import CertificateFetcher
from verifier.net.redis_tier import RedisLink, RedisSettings, RedisTier
from verifier.net.transport import HttpClientSettings
from verifier.testing import TestPKI
from verifier.testing.repository import Repository


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


async def _get_rate(fetcher: CertificateFetcher, x5u: str, calls: int) -> float:
    now = time.time()
    started = time.perf_counter()
    for _ in range(calls):
        await fetcher.get(x5u, now=now)
    return calls / (time.perf_counter() - started)


async def _load_all(fetcher: CertificateFetcher, urls: list[str]) -> float:
    now = time.time()
    started = time.perf_counter()
    await asyncio.gather(*(fetcher.get(url, now=now) for url in urls))
    return time.perf_counter() - started


async def run(redis_url: str, calls: int, rounds: int, x5us: int) -> dict[str, Any]:
    pki = TestPKI.create()
    trust = TrustStore([pki.root.cert])
    prefix = f"verifier-bench:{uuid.uuid4().hex}:"
    async with (
        Repository.create(pki) as repo,
        RedisLink(RedisSettings(url=redis_url, key_prefix=prefix)) as link,
    ):
        if not await link.ping():
            raise SystemExit(f"Redis at {redis_url} does not answer: {link.last_error}")
        body = pki.signer.chain_pem()
        x5u = repo.put("/sp.pem", body)
        urls = [repo.put(f"/sp{i}.pem", body) for i in range(x5us)]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                http_client = HttpClientSettings(
                    ports=frozenset({repo.port}),
                    allow_private=True,
                    ca_file=_write(Path(tmp, "repo-ca.pem"), repo.ca_pem),
                )
                async with (
                    CertificateFetcher(trust, client=http_client) as plain,
                    CertificateFetcher(trust, client=http_client, shared=RedisTier(link)) as tiered,
                    CertificateFetcher(trust, client=http_client, shared=RedisTier(link)) as cold,
                ):
                    await plain.get(x5u, now=time.time())
                    await tiered.get(x5u, now=time.time())
                    await _get_rate(plain, x5u, 1000)  # warm up
                    await _get_rate(tiered, x5u, 1000)
                    plain_rates, tiered_rates = [], []
                    for _ in range(rounds):
                        plain_rates.append(await _get_rate(plain, x5u, calls))
                        tiered_rates.append(await _get_rate(tiered, x5u, calls))
                    redis_ops = link.stats()

                    network_s = await _load_all(tiered, urls)  # fetched, published to Redis
                    fetched = repo.requests
                    shared_s = await _load_all(cold, urls)  # a new instance: from Redis
                    refetched = repo.requests - fetched
        finally:
            async with Redis.from_url(redis_url) as client:
                keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
                if keys:
                    await client.delete(*keys)
    best_plain, best_tiered = max(plain_rates), max(tiered_rates)
    return {
        "calls": calls,
        "rounds": rounds,
        "local_hit_get_per_s_without_redis": round(best_plain),
        "local_hit_get_per_s_with_redis": round(best_tiered),
        "local_hit_ratio": round(best_tiered / best_plain, 3),
        "redis_errors_during_hits": redis_ops["errors"],
        "cold_x5us": x5us,
        "cold_from_repository_s": round(network_s, 4),
        "cold_from_redis_s": round(shared_s, 4),
        "cold_repository_requests_second_instance": refetched,
        "cold_speedup": round(network_s / shared_s, 2),
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("VERIFIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
        help="a Redis to write to (default: $VERIFIER_TEST_REDIS_URL or db 15 on 127.0.0.1)",
    )
    parser.add_argument("--calls", type=int, default=200_000, help="get() calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts")
    parser.add_argument("--x5us", type=int, default=200, help="distinct x5u for figure (b)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = asyncio.run(run(args.redis_url, args.calls, args.rounds, args.x5us))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"(a) warm cache, local hits: {figures['local_hit_get_per_s_with_redis']:,} get()/s "
        f"with the Redis tier; baseline without: "
        f"{figures['local_hit_get_per_s_without_redis']:,} get()/s "
        f"(ratio {figures['local_hit_ratio']})"
    )
    print(
        f"(b) cold instance, {figures['cold_x5us']} x5u: {figures['cold_from_redis_s'] * 1000:.1f}"
        f" ms from Redis ({figures['cold_repository_requests_second_instance']} repository "
        f"requests); baseline from the repository: "
        f"{figures['cold_from_repository_s'] * 1000:.1f} ms (x{figures['cold_speedup']})"
    )


if __name__ == "__main__":
    main()
