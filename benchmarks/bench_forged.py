"""Forged x5u: a flood of made-up paths on a real repository beside its new certificates.

Starts a local HTTPS certificate repository (verifier.testing.repository, in this process)
and `verifier serve` (one worker, records off) trusting the run's test PKI. Before the
load, one legitimate call on the carrier's certificate in use (``/certs/sp-0.pem``): the
repository is one the service has fetched from before. Then, open loop for ``--seconds``
(a call is sent on schedule whether or not the earlier ones were answered):

- ``--forged`` calls/s (default 120), each a PASSporT naming its own random path on the
  repository (``--forged-dir``/<random>.pem, answered 404): the forger cannot know a
  certificate that is not published, so its x5u is fetched before its signature can fail;
  with ``--copies``, each such path serves instead a copy of the carrier's chain in use
  (anyone can download it): each copy validates, and the forger's signature fails under it;
- ``--legit`` new x5u/s (default 1): a new certificate of the carrier at
  ``/certs/sp-<n>.pem``, ``--legit-calls`` calls each (default 1), which must pass.

Every PASSporT is signed before the load starts (its iat stays fresh: at most 50 s).

It prints legitimate calls passed/sent and their p50 and p99, the forged calls' answers
(verstat and reason code) and latencies, the requests that reached the repository (forged,
legitimate), the service's refused-fetch counters from ``/metrics``, and the openssl P-256
verify rate measured in the same run (``openssl speed -seconds 3 ecdsap256``, on the
service's CPU).

Mode, printed in the output ("mode"): one-core (the default): the service runs under
``taskset -c 0``, this script (load generator and repository) on CPU 1, openssl on CPU 0;
``--two-core``: nothing pinned. ``--forged-dir /certs/`` is the forger who puts its paths
in the carrier's own directory (both budgets of the host apply; see the README's "Forged
x5u"). The figure is that of one run on a shared machine: repeat it on a quiet one.

    .venv/bin/python benchmarks/bench_forged.py [--seconds 30] [--forged 120] [--legit 1]
        [--forged-dir /] [--copies] [--two-core]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from bench_core import openssl_verify_per_s
from bench_http import CLIENT_CPU, SERVER_CPU, Served, _on_cpu, ready

from verifier.testing import Signer, TestPKI, free_port, pem
from verifier.testing.repository import Repository

MAX_SECONDS = 50  # PASSporTs are signed before the load: the run stays inside iat's 60 s
PASSED = "TN-Validation-Passed"
ORIG, DEST = "12155551212", "12155551213"


def _openssl(cpu: int | None) -> float:
    with _on_cpu(cpu):
        return openssl_verify_per_s(3)


def _quantile_ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1)


def _body(signer: Signer) -> bytes:
    now = int(time.time())
    request = {
        "from": {"tn": ORIG},
        "to": {"tn": [DEST]},
        "time": now,
        "identity": signer.identity(orig=ORIG, dest=DEST, iat=now),
    }
    return json.dumps({"verificationRequest": request}).encode()


@dataclasses.dataclass
class Tally:
    sent: int = 0
    passed: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    answers: Counter[str] = dataclasses.field(default_factory=Counter)


async def _call(session: aiohttp.ClientSession, url: str, body: bytes, tally: Tally) -> None:
    tally.sent += 1
    sent = time.monotonic()
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            answer: dict[str, Any] = await resp.json() if resp.status == 200 else {}
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.answers[type(exc).__name__] += 1
        return
    tally.latencies.append(time.monotonic() - sent)
    verdict = answer.get("verificationResponse", {})
    verstat = verdict.get("verstat", f"HTTP {resp.status}")
    if verstat == PASSED:
        tally.passed += 1
    tally.answers[f"{verstat} {verdict.get('reasoncode', '')}".strip()] += 1


async def _refused(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("verifier_x5u_fetches_refused_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.split()[-1])
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    pki = TestPKI.create()
    one_core = not args.two_core
    out: dict[str, Any] = {
        "mode": "one-core" if one_core else "two-core",
        "seconds": args.seconds,
        "forged_per_s": args.forged,
        "legit_new_x5u_per_s": args.legit,
        "calls_per_legit_x5u": args.legit_calls,
        "forged_dir": args.forged_dir,
        "forged_paths_serve": "a copy of the carrier's chain" if args.copies else "404",
    }
    out["openssl_p256_verify_per_s"] = _openssl(SERVER_CPU if one_core else None)
    with _on_cpu(CLIENT_CPU if one_core else None), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with Repository.create(pki) as repo:
            count = int(args.seconds * args.legit) + 1
            legit = []  # the carrier's certificates: sp-0 in use, then one new per 1/legit s
            for n in range(count):
                signer = pki.ca.issue_leaf("1234", x5u=repo.url(f"/certs/sp-{n}.pem"))
                repo.put(f"/certs/sp-{n}.pem", signer.chain_pem())
                legit.append(signer)
            (work / "root.pem").write_bytes(pem(pki.root.cert))
            (work / "ca.pem").write_bytes(repo.ca_pem)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            (work / "v.toml").write_text(
                f'host = "127.0.0.1"\nport = {port}\ntrust_anchors = ["{work / "root.pem"}"]\n'
                'log_level = "ERROR"\n'
                f'[http_client]\nca_file = "{work / "ca.pem"}"\nports = [{repo.port}]\n'
                'private_allow = ["127.0.0.1"]\n'
                "[x5u]\ncrl_check = false\n[records]\nenabled = false\n"
            )
            calls = _schedule(pki.signer, legit, repo, args)
            service = Served(work / "v.toml", SERVER_CPU if one_core else None)
            try:
                connector = aiohttp.TCPConnector(limit=512)
                timeout = aiohttp.ClientTimeout(total=10)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                    await ready(session, base, service.proc.poll)
                    if service.cpu is not None:
                        service.check_pinned()
                    url = base + "/stir/v1/verification"
                    warm = Tally()
                    await _call(session, url, _body(legit[0]), warm)
                    if warm.passed != 1:
                        raise SystemExit(f"the warm-up call did not pass: {dict(warm.answers)}")
                    forged, good = Tally(), Tally()
                    await _load(session, url, calls, forged, good)
                    refused = await _refused(session, base)
            finally:
                service.stop()
            legit_paths = {f"/certs/sp-{n}.pem" for n in range(count)}
            out["legit"] = {
                "new_x5u": count - 1,
                "passed": good.passed,
                "sent": good.sent,
                "p50_ms": _quantile_ms(good.latencies, 0.5),
                "p99_ms": _quantile_ms(good.latencies, 0.99),
                "answers": dict(good.answers),
            }
            out["forged"] = {
                "sent": forged.sent,
                "p50_ms": _quantile_ms(forged.latencies, 0.5),
                "p99_ms": _quantile_ms(forged.latencies, 0.99),
                "answers": dict(forged.answers),
            }
            out["repository_requests"] = {
                "forged": sum(n for p, n in repo.counts.items() if p not in legit_paths),
                "legit": sum(repo.counts[p] for p in legit_paths) - 1,  # not the warm-up's
            }
            out["service_refused_fetches"] = refused
    return out


def _schedule(
    forger: Signer, legit: list[Signer], repo: Repository, args: argparse.Namespace
) -> list[tuple[float, bool, bytes]]:
    """(send at, legitimate?, body) of every call, signed before the load starts (signing
    1,200 calls/s would otherwise be this script's bottleneck, not the service's)."""
    calls = []
    copy = legit[0].chain_pem() if args.copies else None
    for n in range(int(args.seconds * args.forged)):
        path = f"{args.forged_dir}{secrets.token_hex(12)}.pem"
        if copy is not None:
            repo.put(path, copy)
        forged = dataclasses.replace(forger, x5u=repo.url(path))
        calls.append((n / args.forged, False, _body(forged)))
    for n, signer in enumerate(legit[1:]):  # legit[0] is in use already
        for k in range(args.legit_calls):  # spread over the x5u's own 1/legit s
            calls.append(((n + k / args.legit_calls) / args.legit, True, _body(signer)))
    return sorted(calls, key=lambda call: call[0])


async def _load(
    session: aiohttp.ClientSession,
    url: str,
    calls: list[tuple[float, bool, bytes]],
    forged: Tally,
    good: Tally,
) -> None:
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    for at, legitimate, body in calls:
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(_call(session, url, body, good if legitimate else forged))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--forged", type=float, default=120.0, help="forged calls per second")
    parser.add_argument("--legit", type=float, default=1.0, help="legitimate new x5u per second")
    parser.add_argument("--legit-calls", type=int, default=1, help="calls per legitimate x5u")
    parser.add_argument("--forged-dir", default="/", help="directory of the forged paths")
    parser.add_argument(
        "--copies", action="store_true", help="forged paths serve a copy of the carrier's chain"
    )
    parser.add_argument("--two-core", action="store_true", help="pin nothing")
    args = parser.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS:
        raise SystemExit(f"--seconds must be in (0, {MAX_SECONDS}]")
    if args.forged <= 0 or args.legit <= 0 or args.legit_calls < 1:
        raise SystemExit("--forged, --legit and --legit-calls must be positive")
    if not args.forged_dir.startswith("/") or not args.forged_dir.endswith("/"):
        raise SystemExit("--forged-dir must start and end with /")
    print(json.dumps(asyncio.run(bench(args)), indent=2))


if __name__ == "__main__":
    main()
