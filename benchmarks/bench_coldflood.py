"""A flood of cold x5u beside calls whose chain is cached: the cached calls' latency.

Starts `verifier serve` (one worker, records on in the default SQLite store, the per-call
log on, as in production) and a local HTTPS certificate repository
(:mod:`verifier.testing.repository`, in a process of its own) serving one chain that every
"cached" call names and ``--cold-rate`` x ``--seconds`` distinct leaf certificates, each
named by one "cold" call. Then, open loop (a call is sent on schedule whether or not the
earlier ones were answered), on a fresh service each round:

1. warm-up: cached calls only (the cached x5u is fetched once, its key turns hot);
2. baseline: ``--cached-rate`` cached calls/s for ``--seconds``;
3. flood: the same cached calls, plus ``--cold-rate`` calls/s each naming a NEW x5u.

It prints p50/p99/max of the cached calls in (2) and (3) and of the cold calls in (3), the
cold calls' verdicts, the x5u fetches the service made and the repository served, and the
`openssl speed -seconds 3 ecdsap256` verify rate measured in the same run.

Two modes, printed with the figures:
  two-core (the default): nothing is pinned.
  one-core (``--one-core``): the whole server side (the service under ``taskset -c 0``, and
  its record writer child, which inherits it) and openssl on CPU 0; this script (the load
  generator) and the repository's process on CPU 1.

These machines are shared: a neighbour's load slows any measurement for seconds at a time,
and only ever slows it down. So each figure is its best round (``--rounds``); every
round's figures are printed too. The generator's own lateness (how far behind schedule it
sent a call) is printed: a figure from a round where it is large says more about the
generator than about the service.

    .venv/bin/python benchmarks/bench_coldflood.py [--one-core] [--rounds 3] [--seconds 10]
        [--cached-rate 200] [--cold-rate 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from bench_core import openssl_verify_per_s
from bench_http import CLIENT_CPU, SERVER_CPU, _bounded, _on_cpu, _Service, check_one_core

from verifier.testing import Signer, TestPKI, pem, write_preload
from verifier.testing.repository import Repository

PATH = "/stir/v1/verification"
WARMUP = 2.0  # seconds of cached calls before the baseline
TICK = 0.002  # the generator's schedule step, seconds
ANSWER_WAIT = 30.0  # seconds the generator waits for the last answers of a phase


def _repository(pki: TestPKI, resources: dict[str, bytes], conn: Connection) -> None:
    """The repository's process: serve ``resources``; answer "requests" with the count of
    requests served so far, end on "stop"."""

    async def serve() -> None:
        async with Repository.create(pki) as repo:
            for path, body in resources.items():
                repo.put(path, body)
            conn.send((repo.port, repo.ca_pem))
            loop = asyncio.get_running_loop()
            while (message := await loop.run_in_executor(None, conn.recv)) != "stop":
                conn.send(repo.requests if message == "requests" else None)

    asyncio.run(serve())


@dataclasses.dataclass
class Stream:
    """One kind of call: its bodies (one per call, in order), latencies and verdicts."""

    bodies: list[bytes]
    latencies: list[float] = dataclasses.field(default_factory=list)
    verdicts: dict[str, int] = dataclasses.field(default_factory=dict)
    failed: int = 0

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            if not ordered:
                return float("nan")
            return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 2)

        return {
            "answered": len(ordered),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else float("nan"),
            "verdicts": dict(sorted(self.verdicts.items())),
            "failed": self.failed,
        }


def _body(identity: str, now: int) -> bytes:
    return json.dumps(
        {
            "verificationRequest": {
                "from": {"tn": "12155551212"},
                "to": {"tn": ["12155551213"]},
                "time": now,
                "identity": identity,
            }
        }
    ).encode()


_VERDICT = re.compile(rb'"(?:reasoncode|reasonCode)":\s*(\d+)')


async def _call(session: aiohttp.ClientSession, url: str, body: bytes, stream: Stream) -> None:
    sent = time.monotonic()
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            text = await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        stream.failed += 1
        return
    stream.latencies.append(time.monotonic() - sent)
    if resp.status != 200:
        verdict = f"HTTP {resp.status}"
    elif b"TN-Validation-Passed" in text:
        verdict = "passed"
    else:
        code = _VERDICT.search(text)
        verdict = f"failed {code.group(1).decode() if code else '?'}"
    stream.verdicts[verdict] = stream.verdicts.get(verdict, 0) + 1


async def _load(
    session: aiohttp.ClientSession, url: str, seconds: float, streams: list[tuple[Stream, int]]
) -> float:
    """Send each stream's calls at its rate for ``seconds``; the generator's worst
    lateness (seconds behind schedule)."""
    tasks: set[asyncio.Task[None]] = set()
    sent = [0] * len(streams)
    late = 0.0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        for i, (stream, rate) in enumerate(streams):
            due = min(int(elapsed * rate), len(stream.bodies))
            if due > sent[i] + 1:
                late = max(late, elapsed - (sent[i] + 1) / rate)
            while sent[i] < due:
                task = asyncio.create_task(_call(session, url, stream.bodies[sent[i]], stream))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent[i] += 1
        await asyncio.sleep(TICK)
    if tasks:
        await asyncio.wait(tasks, timeout=ANSWER_WAIT)
    return late


async def _metric(session: aiohttp.ClientSession, base: str, sample: str) -> float:
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def _round(
    service: _Service,
    cached: Signer,
    cold: list[Signer],
    args: argparse.Namespace,
    repository: Connection,
) -> dict[str, Any]:
    now = int(time.time())
    count = int(args.cached_rate * args.seconds)
    warm = Stream([_body(cached.identity(iat=now), now) for _ in range(int(WARMUP * 100))])
    baseline = Stream([_body(cached.identity(iat=now), now) for _ in range(count)])
    beside = Stream([_body(cached.identity(iat=now), now) for _ in range(count)])
    flood = Stream([_body(s.identity(iat=now), now) for s in cold])
    url = service.base + PATH
    fetches = 'verifier_x5u_fetches_total{kind="fetch"}'
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _load(session, url, WARMUP, [(warm, 100)])
        if set(warm.verdicts) != {"passed"} or warm.failed:
            raise SystemExit(f"warm-up calls did not all pass: {warm.verdicts}")
        late_baseline = await _load(session, url, args.seconds, [(baseline, args.cached_rate)])
        fetched = await _metric(session, service.base, fetches)
        repository.send("requests")
        served = repository.recv()
        late_flood = await _load(
            session, url, args.seconds, [(beside, args.cached_rate), (flood, args.cold_rate)]
        )
        fetched = await _metric(session, service.base, fetches) - fetched
        repository.send("requests")
        served = repository.recv() - served
    return {
        "cached_baseline": baseline.figures(),
        "cached_in_flood": beside.figures(),
        "cold": flood.figures(),
        "x5u_fetches": int(fetched),
        "repository_requests": served,
        "generator_late_ms": round(1000 * max(late_baseline, late_flood), 1),
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=_bounded(20), default=10, help="seconds of each phase")
    parser.add_argument("--rounds", type=_bounded(10), default=3, help="rounds (best kept)")
    parser.add_argument("--cached-rate", type=_bounded(2000), default=200, help="cached calls/s")
    parser.add_argument("--cold-rate", type=_bounded(2000), default=300, help="new x5u/s")
    parser.add_argument(
        "--one-core",
        action="store_true",
        help=f"server side and openssl on CPU {SERVER_CPU}; generator, repository on"
        f" CPU {CLIENT_CPU}",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.one_core:
        check_one_core()
    return args


def main() -> None:
    args = _arguments()
    server_cpu = SERVER_CPU if args.one_core else None
    if args.one_core:
        os.sched_setaffinity(0, {CLIENT_CPU})  # this script, and the repository it forks
    work = Path(tempfile.mkdtemp(prefix="bench-coldflood-"))
    pki = TestPKI.create()
    cold_count = int(args.cold_rate * args.seconds)
    cold = [pki.ca.issue_leaf(f"{1000 + i}") for i in range(cold_count)]
    resources = {"/cached.pem": pki.signer.chain_pem()}
    resources.update((f"/cold/{i}.pem", s.chain_pem()) for i, s in enumerate(cold))
    parent, child = multiprocessing.get_context("fork").Pipe()
    repository = multiprocessing.get_context("fork").Process(
        target=_repository, args=(pki, resources, child), daemon=True
    )
    repository.start()
    rounds: list[dict[str, Any]] = []
    openssl: list[float] = []
    processes = 0
    try:
        port, ca_pem = parent.recv()
        base = f"https://127.0.0.1:{port}"
        cached = dataclasses.replace(pki.signer, x5u=f"{base}/cached.pem")
        cold = [dataclasses.replace(s, x5u=f"{base}/cold/{i}.pem") for i, s in enumerate(cold)]
        write_preload(work / "preload", [])
        (work / "root.pem").write_bytes(pem(pki.root.cert))
        (work / "repo-ca.pem").write_bytes(ca_pem)
        extra = (
            f'[http_client]\nca_file = "{work / "repo-ca.pem"}"\n'
            f'private_allow = ["127.0.0.1"]\nports = [{port}]\n'
        )
        for n in range(args.rounds):
            with _on_cpu(server_cpu):
                openssl.append(openssl_verify_per_s(3))
            service = _Service(
                work, records=True, log=True, fast=True, cpu=server_cpu, extra=extra, data=f"d{n}"
            )
            try:
                rounds.append(asyncio.run(_round(service, cached, cold, args, parent)))
                if server_cpu is not None:
                    processes = service.check_pinned()
            finally:
                service.stop()
    finally:
        parent.send("stop")
        repository.join(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    figures = _figures(rounds, openssl, args)
    figures["mode"] = "one-core" if args.one_core else "two-core"
    figures["server_processes"] = processes
    if args.json:
        print(json.dumps(figures))
    else:
        _print(figures)


def _figures(
    rounds: list[dict[str, Any]], openssl: list[float], args: argparse.Namespace
) -> dict[str, Any]:
    def best(phase: str) -> dict[str, Any]:
        figures: dict[str, Any] = min((r[phase] for r in rounds), key=lambda f: f["p99_ms"])
        return figures

    return {
        "cached_rate": args.cached_rate,
        "cold_rate": args.cold_rate,
        "seconds": args.seconds,
        "cached_baseline": best("cached_baseline"),
        "cached_in_flood": best("cached_in_flood"),
        "cold": best("cold"),
        "openssl_verify_per_s": round(max(openssl), 1),
        "openssl_runs": [round(r, 1) for r in openssl],
        "rounds": rounds,
    }


def _print(figures: dict[str, Any]) -> None:
    if figures["mode"] == "one-core":
        print(
            f"mode: one-core (server side on CPU {SERVER_CPU} under taskset,"
            f" {figures['server_processes']} processes; load generator and repository on"
            f" CPU {CLIENT_CPU}; openssl on CPU {SERVER_CPU}); records on (SQLite), log on"
        )
    else:
        print("mode: two-core (nothing pinned); records on (SQLite), log on")

    def line(name: str, f: dict[str, Any]) -> str:
        return (
            f"{name}: p50 {f['p50_ms']:7.2f} ms  p99 {f['p99_ms']:7.2f} ms"
            f"  max {f['max_ms']:7.2f} ms  ({f['answered']} answered, {f['verdicts']},"
            f" {f['failed']} unanswered)"
        )

    for i, r in enumerate(figures["rounds"], 1):
        print(
            f"round {i}: openssl {figures['openssl_runs'][i - 1]:8.1f}"
            f"  cached p99 {r['cached_baseline']['p99_ms']:.2f} ->"
            f" {r['cached_in_flood']['p99_ms']:.2f} ms in flood;"
            f"  cold p99 {r['cold']['p99_ms']:.2f} ms; x5u fetches {r['x5u_fetches']}"
            f" (repository served {r['repository_requests']});"
            f" generator late <= {r['generator_late_ms']} ms"
        )
    print(f"best of {len(figures['rounds'])} rounds ({figures['seconds']} s each phase):")
    print(line(f"  cached {figures['cached_rate']}/s alone      ", figures["cached_baseline"]))
    print(line(f"  cached {figures['cached_rate']}/s in the flood", figures["cached_in_flood"]))
    print(line(f"  cold   {figures['cold_rate']}/s (new x5u each)", figures["cold"]))
    listed = ", ".join(f"{r:.0f}" for r in figures["openssl_runs"])
    print(
        f"openssl speed -seconds 3 ecdsap256: {figures['openssl_verify_per_s']:.1f} verify/s"
        f" (one core; best of {listed})"
    )
    print("target: cached calls keep p99 <= 10 ms in the flood")


if __name__ == "__main__":
    main()
