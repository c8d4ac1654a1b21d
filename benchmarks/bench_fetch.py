"""Certificate retrieval: a cold burst on one x5u, and cache hits against full validation.

Starts its own HTTPS certificate repository on 127.0.0.1 (verifier.testing.repository), so it needs
no network. Two figures, each beside its baseline from the same run:

(a) cold burst: N concurrent verifications of distinct PASSporTs that share one uncached
    x5u. The repository must see exactly one request (single flight); the figure is the
    time to drain the burst.
(b) verifications/s when the credential is a cache hit, against the same pipeline with
    the chain parsed and validated (TrustStore.validate) on every call.

    .venv/bin/python benchmarks/bench_fetch.py [--n 1000] [--calls 3000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from verifier.core.certs import Credential, TrustStore, load_chain
from verifier.core.errors import TN_VALIDATION_PASSED
from verifier.core.verify import CallInfo, CredentialSource, verify
from verifier.net.fetch import CertificateFetcher
from verifier.net.transport import HttpClientSettings
from verifier.testing import Signer, TestPKI
from verifier.testing.repository import Repository

CALL = CallInfo(from_="12155551212", to="12155551213")


class ValidateEveryCall:
    """The baseline credential source: parse and validate the chain on every call."""

    def __init__(self, trust: TrustStore, body: bytes) -> None:
        self.trust = trust
        self.body = body

    async def get(self, x5u: str, *, now: float) -> Credential:
        return self.trust.validate(load_chain(self.body), now)

    def vouched(self, x5u: str) -> None:
        """Nothing is held apart here: nothing to do."""


def _values(signer: Signer, count: int, now: float) -> list[str]:
    return [
        signer.identity(orig="12155551212", dest="12155551213", iat=int(now)) for _ in range(count)
    ]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


async def _rate(source: CredentialSource, values: list[str], now: float) -> float:
    started = time.perf_counter()
    for value in values:
        result = await verify(value, now=now, credentials=source, call=CALL)
        if result.verstat != TN_VALIDATION_PASSED:
            raise SystemExit(f"verification failed: {result.reason}")
    return len(values) / (time.perf_counter() - started)


async def run(n: int, calls: int) -> dict[str, Any]:
    pki = TestPKI.create()
    trust = TrustStore([pki.root.cert])
    async with Repository.create(pki) as repo:
        x5u = repo.put("/sp.pem", b"")
        signer = pki.ca.issue_leaf("1234", x5u=x5u)
        body = signer.chain_pem()
        repo.put("/sp.pem", body)
        with tempfile.TemporaryDirectory() as tmp:
            client = HttpClientSettings(
                ports=frozenset({repo.port}),
                allow_private=True,
                ca_file=_write(Path(tmp, "repo-ca.pem"), repo.ca_pem),
            )
            async with CertificateFetcher(trust, client=client) as fetcher:
                now = time.time()
                burst = _values(signer, n, now)
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(verify(v, now=now, credentials=fetcher, call=CALL) for v in burst)
                )
                drain = time.perf_counter() - started
                passed = sum(r.verstat == TN_VALIDATION_PASSED for r in results)
                requests = repo.counts["/sp.pem"]

                values = _values(signer, calls, now)
                await _rate(fetcher, values[:200], now)  # warm up
                hit_rate = await _rate(fetcher, values, now)
                full_rate = await _rate(ValidateEveryCall(trust, body), values, now)
                stats = fetcher.stats()
    return {
        "burst_n": n,
        "burst_passed": passed,
        "burst_repository_requests": requests,
        "burst_drain_s": round(drain, 4),
        "burst_verifications_per_s": round(n / drain),
        "calls": calls,
        "cache_hit_verifications_per_s": round(hit_rate),
        "full_validation_verifications_per_s": round(full_rate),
        "speedup": round(hit_rate / full_rate, 2),
        "fetcher": {k: stats[k] for k in ("hits", "misses", "coalesced", "fetches")},
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="cold burst size (default 1000)")
    parser.add_argument("--calls", type=int, default=3000, help="calls per rate (default 3000)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = asyncio.run(run(args.n, args.calls))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"(a) cold burst: {figures['burst_n']} concurrent verifications of distinct PASSporTs, "
        f"one uncached x5u: {figures['burst_repository_requests']} repository request(s), "
        f"{figures['burst_passed']} passed, drained in {figures['burst_drain_s'] * 1000:.1f} ms"
    )
    print(
        f"(b) cache hit: {figures['cache_hit_verifications_per_s']:,} verifications/s; "
        f"baseline, chain validated every call: "
        f"{figures['full_validation_verifications_per_s']:,} verifications/s "
        f"(x{figures['speedup']})"
    )
    if figures["burst_repository_requests"] != 1:
        raise SystemExit("single flight broken: the repository saw more than one request")


if __name__ == "__main__":
    main()
