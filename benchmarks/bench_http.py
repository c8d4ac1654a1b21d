"""Load test of the HTTP service with wrk, beside `openssl speed` ECDSA P-256 verify.

Starts `verifier serve` (one worker) on 127.0.0.1 with a test PKI whose certificate is
preloaded (so every call is a certificate cache hit), then drives, from 32 keep-alive
connections:
  1. POST /stir/v1/verification with distinct valid Identity headers;
  2. POST /v1/verify/batch with 100 distinct headers per request.
With ``--threegpp``, only (1) and the 3GPP route (POST /3gpp/stir/v1/verification, the same
headers in the TS 24.229 shape) run, each round on fresh services, and the ratio of the
two rates is printed.
It prints req/s, p50 and p99 for (1), verifications/s for (2), the openssl single-core
verify rate measured in the same run, and the ratios. (1) is run again with records off
(what recording costs) and with the fast lane off (aiohttp serving every request; skipped
where the service has no ``api.fast_path`` setting).

Two modes, printed in the output and in the JSON ("mode"):
  two-core (the default): nothing is pinned; the service, wrk and openssl share the cores.
  one-core (``--one-core``): the whole server side (the service, started under
  ``taskset -c 0``, and its child processes, which inherit that) runs on CPU 0, wrk on
  CPU 1, and openssl (one process) on CPU 0 too. The script checks, before stopping each
  service, that every process of the service's session is pinned to CPU 0.

These machines are shared: a neighbour's load slows any measurement for seconds at a
time, and only ever slows it down. So everything is measured in ``--rounds`` rounds
(openssl, then each run on a fresh service), and each figure is its best round, the
baseline's included; every round's figures are printed too (``--json``: "rounds").
Everything runs on 127.0.0.1 and the script ends by itself: rounds and seconds are
bounded, and each process it starts either ends by itself (wrk, openssl) or is stopped
within a time limit (the service, its children included).

    apt-get install wrk        # Debian package `wrk`; `taskset` is in util-linux
    .venv/bin/python benchmarks/bench_http.py [--one-core] [--rounds 5] [--seconds 4]
        [--json] [--no-log] [--threegpp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from bench_core import openssl_verify_per_s

from verifier.settings import ApiSettings
from verifier.testing import TestPKI, free_port, pem, write_preload

SERVER_CPU, CLIENT_CPU = 0, 1  # --one-core: the whole server side, and wrk
MAX_ROUNDS, MAX_SECONDS = 20, 30  # bounds; a run must end well within iat's 60 s freshness
STOP_WAIT = 30.0  # seconds a stopped service (and its children) gets before SIGKILL

LUA = r"""
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
local bodies = {}
local n = 0
init = function(args)
  for line in io.lines(args[1]) do
    n = n + 1
    bodies[n] = line
  end
  counter = math.random(n)
  answered, unpassed = 0, 0
end
request = function()
  counter = counter % n + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[counter])
end
-- Every answer must be a pass: a stale or refused PASSporT is answered faster than a
-- verified one, and would inflate the figure.
response = function(status, headers, body)
  answered = answered + 1
  if status ~= 200 or not string.find(body, "TN-Validation-Passed", 1, true)
      or string.find(body, "TN-Validation-Failed", 1, true)
      or string.find(body, "No-TN-Validation", 1, true) then
    unpassed = unpassed + 1
  end
end
done = function(summary, latency, requests)
  local a, u = 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("answered")
    u = u + t:get("unpassed")
  end
  io.write(string.format("answered: %d\nnot passed: %d\n", a, u))
end
"""


def _wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - 127.0.0.1
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"service not ready at {url}")


def _wrk(url: str, bodies: Path, seconds: int, script: Path) -> dict[str, float]:
    command = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*command, url, "--", str(bodies)],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if m is None:
            raise RuntimeError(f"no {p}% in wrk output:\n{out}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    unpassed = int(re.search(r"not passed: (\d+)", out).group(1))  # type: ignore[union-attr]
    if unpassed:
        raise RuntimeError(f"{unpassed} answers were not TN-Validation-Passed:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "req_per_s": rate,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def _has_fast_path() -> bool:
    """Whether this tree's service has the ``api.fast_path`` setting (an unknown key is a
    configuration error)."""
    return "fast_path" in {f.name for f in dataclasses.fields(ApiSettings)}


@contextlib.contextmanager
def _on_cpu(cpu: int | None) -> Iterator[None]:
    """This process, and what it starts meanwhile, on ``cpu`` (None: unchanged)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def ready(
    session: aiohttp.ClientSession, base: str, exited: Callable[[], int | None]
) -> dict[str, Any]:
    """Wait (30 s at most) until the service at ``base`` answers ``/readyz`` with 200; its
    body. ``exited``: the service's exit status, None while it runs (SystemExit once it has
    one)."""
    for _ in range(300):
        if exited() is not None:
            raise SystemExit("the service exited")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(base + "/readyz") as resp:
                if resp.status == 200:
                    body: dict[str, Any] = await resp.json()
                    return body
        await asyncio.sleep(0.1)
    raise SystemExit("the service did not become ready")


def serve_command(config: Path, cpu: int | None) -> list[str]:
    """`verifier serve` on ``config``; ``cpu``: under ``taskset -c cpu`` (its children
    inherit it). Run it with :func:`serve_env`."""
    pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
    return [*pin, sys.executable, "-m", "verifier", "serve", "--config", str(config)]


def serve_env() -> dict[str, str]:
    """The environment of :func:`serve_command`: this process's, as it is now."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


class Served:
    """`verifier serve` on ``config`` (:func:`serve_command`) in a subprocess and a session
    of its own, its output dropped."""

    def __init__(self, config: Path, cpu: int | None) -> None:
        self.cpu = cpu
        self.proc = subprocess.Popen(
            serve_command(config, cpu),
            env=serve_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def processes(self) -> list[int]:
        """The service's process and its children: every process of its session."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.getsid(int(entry)) == self.proc.pid:
                        pids.append(int(entry))
        return pids

    def check_pinned(self) -> int:
        """Raise unless every process of the service is on ``cpu`` only; their count."""
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                cpus = os.sched_getaffinity(pid)
                if cpus != {self.cpu}:
                    raise RuntimeError(f"server process {pid} runs on CPUs {sorted(cpus)}")
        return len(pids)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole session if it has not ended in time."""
        self.proc.terminate()
        deadline = time.monotonic() + STOP_WAIT
        try:
            self.proc.wait(timeout=STOP_WAIT)
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)  # the record writer child ends once it has read everything
        except subprocess.TimeoutExpired:
            pass
        if self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_WAIT)


class _Service(Served):
    """`verifier serve` (one worker) on the run's PKI, ready (:class:`Served`); ``cpu``:
    started under ``taskset -c cpu``; ``extra``: TOML tables added to its configuration;
    ``data``: its records directory in ``work``."""

    def __init__(
        self,
        work: Path,
        *,
        records: bool,
        log: bool,
        fast: bool,
        cpu: int | None,
        extra: str = "",
        data: str = "data",
    ) -> None:
        self.port = free_port()
        config = work / f"verifier-{'rec' if records else 'norec'}.toml"
        fast_line = f"fast_path = {'true' if fast else 'false'}\n" if _has_fast_path() else ""
        config.write_text(
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'trust_anchors = ["{work / "root.pem"}"]\nlog_level = "INFO"\n'
            f'[x5u]\npreload_dir = "{work / "preload"}"\ncrl_check = false\n'
            f"[api]\nlog_verifications = {'true' if log else 'false'}\n"
            f"{fast_line}"
            f"[records]\nenabled = {'true' if records else 'false'}\n"
            f'data_dir = "{work / data}"\n'
            f"{extra}"
        )
        super().__init__(config, cpu)
        self.base = f"http://127.0.0.1:{self.port}"
        try:
            _wait_ready(self.base + "/readyz")
        except BaseException:
            self.stop()
            raise


def _bodies(work: Path, pki: TestPKI, per_batch: int) -> tuple[Path, Path]:
    """Distinct PASSporTs, signed now. Made again before each run: iat must stay fresh
    (60 s) for the whole run, and a whole benchmark takes minutes."""
    count = 20000
    now = int(time.time())
    headers = [pki.signer.identity(iat=now) for _ in range(count)]
    atis = work / "atis.txt"
    atis.write_text(
        "\n".join(
            json.dumps(
                {
                    "verificationRequest": {
                        "from": {"tn": "12155551212"},
                        "to": {"tn": ["12155551213"]},
                        "time": now,
                        "identity": h,
                    }
                }
            )
            for h in headers
        )
    )
    batch = work / "batch.txt"
    batch.write_text(
        "\n".join(
            json.dumps(
                {
                    "requests": [
                        {"identity": h, "from": "12155551212", "to": "12155551213"}
                        for h in headers[i : i + per_batch]
                    ]
                }
            )
            for i in range(0, count, per_batch)
        )
    )
    return atis, batch


def _threegpp_bodies(atis: Path) -> Path:
    """The ATIS bodies' calls in the 3GPP (TS 24.229) shape: the same PASSporTs."""
    out = atis.with_name("threegpp.txt")
    lines = []
    for line in atis.read_text().splitlines():
        call = json.loads(line)["verificationRequest"]
        ms = {
            "identityHeader": call["identity"],
            "from": call["from"]["tn"],
            "to": call["to"]["tn"][0],
            "time": call["time"],
        }
        lines.append(json.dumps({"verificationRequest": ms}))
    out.write_text("\n".join(lines))
    return out


def _bounded(top: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= top:
            raise argparse.ArgumentTypeError(f"must be 1 to {top}")
        return value

    return parse


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=_bounded(MAX_SECONDS), default=4, help="seconds of each wrk run"
    )
    parser.add_argument(
        "--rounds",
        type=_bounded(MAX_ROUNDS),
        default=5,
        help="rounds of openssl + every run (best kept)",
    )
    parser.add_argument(
        "--one-core",
        action="store_true",
        help=f"server side and openssl on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU}",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-log", action="store_true", help="turn off per-verification logs")
    parser.add_argument(
        "--threegpp", action="store_true", help="the 3GPP route beside the ATIS route, only"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if args.one_core:
        check_one_core()
    return args


def check_one_core() -> None:
    """Exit saying why when ``--one-core`` cannot pin: no taskset, or not both CPUs here."""
    if shutil.which("taskset") is None:
        sys.exit("taskset is not installed: apt-get install util-linux")
    if not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0):
        sys.exit(f"--one-core needs CPUs {SERVER_CPU} and {CLIENT_CPU}")


PER_BATCH = 100
PATH = "/stir/v1/verification"
MS_PATH = f"{ApiSettings().threegpp_root}/verification"


def main() -> None:
    args = _arguments()
    server_cpu = SERVER_CPU if args.one_core else None
    # name: (records, fast lane, endpoint)
    runs = {
        "atis": (True, True, PATH),
        "batch": (True, True, "/v1/verify/batch"),
        "unrecorded": (False, True, PATH),
    }
    if args.threegpp:
        runs = {"atis": (True, True, PATH), "threegpp": (True, True, MS_PATH)}
    elif _has_fast_path():
        runs["plain"] = (True, False, PATH)
    best: dict[str, dict[str, float]] = {}
    openssl_runs: list[float] = []
    rounds: list[dict[str, float]] = []
    processes: dict[str, int] = {}
    non_2xx = 0.0
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    if args.one_core:
        os.sched_setaffinity(0, {CLIENT_CPU})  # this script, and the wrk it starts
    try:
        pki = TestPKI.create(x5u="https://certs.example.net/sp.pem")
        write_preload(work / "preload", [pki.signer])
        (work / "root.pem").write_bytes(pem(pki.root.cert))
        script = work / "bench.lua"
        script.write_text(LUA)
        for _ in range(args.rounds):
            with _on_cpu(server_cpu):
                openssl_runs.append(openssl_verify_per_s(2))
            this_round = {"openssl": openssl_runs[-1]}
            for name, (records, fast, endpoint) in runs.items():
                atis, batch = _bodies(work, pki, PER_BATCH)
                if endpoint == MS_PATH:
                    bodies = _threegpp_bodies(atis)
                else:
                    bodies = batch if endpoint.endswith("batch") else atis
                service = _Service(
                    work, records=records, log=not args.no_log, fast=fast, cpu=server_cpu
                )
                try:
                    _wrk(service.base + endpoint, bodies, 1, script)  # warm up
                    got = _wrk(service.base + endpoint, bodies, args.seconds, script)
                    if server_cpu is not None:
                        processes[name] = service.check_pinned()
                finally:
                    service.stop()
                this_round[name] = got["req_per_s"]
                non_2xx += got["non_2xx"]
                if name not in best or got["req_per_s"] > best[name]["req_per_s"]:
                    best[name] = got
            rounds.append(this_round)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.threegpp:
        figures = _threegpp_figures(best, openssl_runs, rounds, non_2xx)
    else:
        figures = _figures(best, openssl_runs, rounds, non_2xx)
    figures["mode"] = "one-core" if args.one_core else "two-core"
    if args.one_core:
        figures["server_processes"] = processes
    if args.json:
        print(json.dumps(figures))
    elif args.threegpp:
        _print_threegpp(figures)
    else:
        _print(figures, best, rounds, one_core=args.one_core)


def _threegpp_figures(
    best: dict[str, dict[str, float]],
    openssl_runs: list[float],
    rounds: list[dict[str, float]],
    non_2xx: float,
) -> dict[str, Any]:
    """The 3GPP route beside the ATIS route: best rates, and the median of each round's
    ratio (the two runs of a round are seconds apart)."""
    atis, ms = best["atis"], best["threegpp"]
    return {
        "atis_req_per_s": round(atis["req_per_s"], 1),
        "atis_p99_ms": round(atis["p99_ms"], 3),
        "threegpp_req_per_s": round(ms["req_per_s"], 1),
        "threegpp_p99_ms": round(ms["p99_ms"], 3),
        "threegpp_to_atis": round(statistics.median(r["threegpp"] / r["atis"] for r in rounds), 3),
        "openssl_verify_per_s": round(max(openssl_runs), 1),
        "rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds],
        "non_2xx": non_2xx,
    }


def _print_threegpp(figures: dict[str, Any]) -> None:
    print(f"mode: {figures['mode']}")
    for i, r in enumerate(figures["rounds"], 1):
        print(
            f"round {i}: openssl {r['openssl']:8.1f}  ATIS {r['atis']:7.1f}"
            f"  3GPP {r['threegpp']:7.1f}"
        )
    print(
        f"ATIS {PATH}: {figures['atis_req_per_s']:9.1f} req/s  p99 {figures['atis_p99_ms']:.2f} ms"
    )
    print(
        f"3GPP {MS_PATH}: {figures['threegpp_req_per_s']:9.1f} req/s"
        f"  p99 {figures['threegpp_p99_ms']:.2f} ms"
    )
    print(f"3GPP / ATIS: {figures['threegpp_to_atis']:.3f} (median of rounds; target within 10%)")
    if figures["non_2xx"]:
        print(f"WARNING: {figures['non_2xx']:.0f} non-2xx responses")


def _figures(
    best: dict[str, dict[str, float]],
    openssl_runs: list[float],
    rounds: list[dict[str, float]],
    non_2xx: float,
) -> dict[str, Any]:
    single, batched, unrecorded = best["atis"], best["batch"], best["unrecorded"]
    plain = best.get("plain")
    openssl = max(openssl_runs)
    batch_rate = batched["req_per_s"] * PER_BATCH
    # Costs compare runs of one round (neighbours: a few seconds apart), then the median.
    record_cost = statistics.median(1 - r["atis"] / r["unrecorded"] for r in rounds)
    fast_gain = (
        None if plain is None else statistics.median(r["atis"] / r["plain"] - 1 for r in rounds)
    )
    return {
        "atis_req_per_s": round(single["req_per_s"], 1),
        "atis_p50_ms": round(single["p50_ms"], 3),
        "atis_p99_ms": round(single["p99_ms"], 3),
        "batch_verify_per_s": round(batch_rate, 1),
        "openssl_verify_per_s": round(openssl, 1),
        "atis_ratio": round(single["req_per_s"] / openssl, 3),
        "batch_ratio": round(batch_rate / openssl, 3),
        "atis_req_per_s_without_records": round(unrecorded["req_per_s"], 1),
        "record_cost": round(record_cost, 3),
        "fast_lane_gain": None if fast_gain is None else round(fast_gain, 3),
        "atis_req_per_s_without_fast_lane": None if plain is None else round(plain["req_per_s"], 1),
        "atis_p99_ms_without_fast_lane": None if plain is None else round(plain["p99_ms"], 3),
        "openssl_runs": [round(r, 1) for r in openssl_runs],
        "rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds],
        "non_2xx": non_2xx,
    }


def _print(
    figures: dict[str, Any],
    best: dict[str, dict[str, float]],
    rounds: list[dict[str, float]],
    *,
    one_core: bool,
) -> None:
    if one_core:
        pinned = ", ".join(f"{k} {v}" for k, v in figures["server_processes"].items())
        print(
            f"mode: one-core (server side on CPU {SERVER_CPU} under taskset, processes per"
            f" run: {pinned}; wrk on CPU {CLIENT_CPU}; openssl on CPU {SERVER_CPU})"
        )
    else:
        print("mode: two-core (nothing pinned)")
    for i, r in enumerate(rounds, 1):
        plain = f"  fast lane off {r['plain']:7.1f}" if "plain" in r else ""
        print(
            f"round {i}: openssl {r['openssl']:8.1f}  ATIS {r['atis']:7.1f}"
            f"  batch {r['batch'] * PER_BATCH:8.1f}  records off {r['unrecorded']:7.1f}{plain}"
        )
    single = best["atis"]
    print(
        f"ATIS /stir/v1/verification: {single['req_per_s']:9.1f} req/s"
        f"  p50 {single['p50_ms']:.2f} ms  p99 {single['p99_ms']:.2f} ms  (records on)"
    )
    print(
        f"  same, records off:        {figures['atis_req_per_s_without_records']:9.1f} req/s"
        f"  -> recording costs {100 * figures['record_cost']:.1f}%"
        " (median of rounds; target <= 10%)"
    )
    if "plain" in best:
        print(
            f"  same, fast lane off:      {best['plain']['req_per_s']:9.1f} req/s"
            f"  p99 {best['plain']['p99_ms']:.2f} ms (aiohttp serves every request;"
            f" the fast lane gains {100 * figures['fast_lane_gain']:.0f}%, median of rounds)"
        )
    print(
        f"batch /v1/verify/batch:     {figures['batch_verify_per_s']:9.1f} verifications/s"
        f" ({PER_BATCH} a request)"
    )
    listed = ", ".join(f"{r:.0f}" for r in figures["openssl_runs"])
    print(
        f"openssl speed ecdsap256:    {figures['openssl_verify_per_s']:9.1f} verify/s"
        f" (one core; best of {listed})"
    )
    if one_core:
        targets = "ATIS target >= 0.45, p99 <= 10 ms, one core; batch: no one-core target"
        print(
            f"ratios: ATIS {figures['atis_ratio']:.3f}; batch {figures['batch_ratio']:.3f}"
            f" ({targets})"
        )
    else:
        print(
            f"ratios: ATIS {figures['atis_ratio']:.3f} (target >= 0.55, p99 <= 10 ms);"
            f" batch {figures['batch_ratio']:.3f} (target >= 0.8)"
        )
    if figures["non_2xx"]:
        print(f"WARNING: {figures['non_2xx']:.0f} non-2xx responses")


if __name__ == "__main__":
    main()
