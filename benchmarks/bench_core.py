"""Verifications per second of the pure pipeline, beside `openssl speed` ECDSA P-256 verify.

The certificate is already validated (what a cache hit gives): the figure is the cost of
parsing, decoding, checking claims, numbers and freshness, and the ES256 signature.
Each PASSporT is distinct (its own origid and signature), as in real traffic, and all are
signed by one key, as a carrier's calls are: so the key is hot and its checks use its
precomputed table (``verifier.accel.es256``). The same pipeline without key tables, and a bare
``cryptography`` verify, are measured in the same rounds.

    .venv/bin/python benchmarks/bench_core.py [--rounds 5] [--seconds 3] [--json]

The ratio to openssl's single-core verify rate is what to compare across machines. These
machines are shared: a neighbour's load slows either side for seconds at a time. So the two
are measured in alternating rounds (openssl, then the pipeline, ``--rounds`` times) and
each side's best round is compared: load only ever slows a side down, never speeds it up.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from verifier.accel import es256
from verifier.core.certs import TrustStore
from verifier.core.verify import CallInfo, DecodeCache, Verification
from verifier.testing import TestPKI, identity_header


def openssl_verify_per_s(seconds: int) -> float:
    """ECDSA P-256 verify/s from `openssl speed` (one core), measured now."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            return float(m.group(2))
    raise RuntimeError(f"cannot read openssl speed output:\n{out}")


def pipeline_runner(count: int = 2000, *, tables: bool = True) -> Callable[[float], float]:
    """A function of seconds -> pipeline verifications/s, over ``count`` distinct
    PASSporTs signed now (made once, outside the timing); ``tables``: whether the hot key
    gets its precomputed table (built during a short warm-up, outside the timing)."""
    pki = TestPKI.create()
    now = time.time()
    # The key factory the service hands in: the key gets its table once hot.
    trust = TrustStore([pki.root.cert], key_factory=es256.ES256Key)
    credential = trust.validate(list(pki.signer.chain), now)
    headers = [pki.signer.identity(iat=int(now)) for _ in range(count)]
    numbers = {"from_": "12155551212", "to": "12155551213"}

    def once(value: str, cache: DecodeCache) -> None:
        # The call's numbers are normalised per request (CallInfo), as the HTTP edge does.
        verification = Verification(value, now=now, call=CallInfo(**numbers), cache=cache)
        for entry in verification.pending():
            verification.settle(entry, credential)
        if not verification.result().passed:
            raise RuntimeError("benchmark PASSporT did not verify")

    def run(seconds: float) -> float:
        es256.configure(max_tables=64 if tables else 0)
        cache = DecodeCache()
        for value in headers[: 2 * es256.HOT_AFTER]:
            once(value, cache)
        while tables and not es256.tables_in_use():
            time.sleep(0.01)  # the table is built on a helper thread
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for value in headers:
                once(value, cache)
            done += len(headers)
            if time.perf_counter() >= deadline:
                break
        rate = done / (time.perf_counter() - start)
        es256.configure()
        return rate

    return run


def raw_verify_runner(count: int = 2000) -> Callable[[float], float]:
    """A function of seconds -> bare ``cryptography`` ES256 verifications/s (DER signature
    and key ready, nothing else): the floor under the pipeline's cost."""
    pki = TestPKI.create()
    key = pki.signer.key.public_key()
    algorithm = ec.ECDSA(hashes.SHA256())
    messages = [b"%d.%s" % (i, b"x" * 300) for i in range(count)]
    signed = [(pki.signer.key.sign(m, algorithm), m) for m in messages]

    def run(seconds: float) -> float:
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for signature, message in signed:
                key.verify(signature, message, algorithm)
            done += len(signed)
            if time.perf_counter() >= deadline:
                break
        return done / (time.perf_counter() - start)

    return run


def best_of_rounds(
    rounds: int, seconds: int, *runners: Callable[[float], float]
) -> list[list[float]]:
    """Every round's rates: each runner's, then openssl's, alternating round by round."""
    return [
        [*(run(seconds) for run in runners), openssl_verify_per_s(seconds)] for _ in range(rounds)
    ]


def div_hop_cost(seconds: float, count: int = 1000) -> tuple[float, float]:
    """(single SHAKEN verifications/s, SHAKEN + one div hop verifications/s), same run."""
    pki = TestPKI.create()
    forwarder = pki.ca.issue_leaf("5678", x5u="https://cr.forwarder.example/sp.pem")
    now = time.time()
    trust = TrustStore([pki.root.cert], key_factory=es256.ES256Key)  # as the service has it
    credentials = {
        pki.signer.x5u: trust.validate(list(pki.signer.chain), now),
        forwarder.x5u: trust.validate(list(forwarder.chain), now),
    }
    iat = int(now)

    def div(i: int) -> str:
        token = forwarder.passport(
            iat=iat,
            dest="12155559999",
            header={"ppt": "div"},
            claims={"div": {"tn": "12155551213"}},
            drop=["attest", "origid"],
        )
        return identity_header(token, forwarder.x5u, ppt="div")

    single = [[pki.signer.identity(iat=iat)] for _ in range(count)]
    diverted = [[pki.signer.identity(iat=iat), div(i)] for i in range(count)]
    direct = {"from_": "12155551212", "to": "12155551213"}
    forwarded = {"from_": "12155551212", "to": "12155559999"}

    def rate(requests: list[list[str]], numbers: dict[str, str]) -> float:
        cache = DecodeCache()
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for values in requests:
                call = CallInfo(**numbers)  # per request, as the HTTP edge builds it
                verification = Verification(values, now=now, call=call, cache=cache)
                for entry in verification.pending():
                    verification.settle(entry, credentials[Verification.x5u_of(entry)])
                result = verification.result()
                if not result.passed:
                    raise RuntimeError(f"benchmark call did not verify: {result.reason}")
            done += len(requests)
        return done / (time.perf_counter() - start)

    return rate(single, direct), rate(diverted, forwarded)


def pyjwt_decode_per_s(seconds: float, count: int = 2000) -> float:
    """PyJWT's decode of the same PASSporTs (ES256 pinned): what a library call costs."""
    import jwt

    pki = TestPKI.create()
    key = pki.signer.key.public_key()
    now = time.time()
    tokens = [pki.signer.passport(iat=int(now)) for _ in range(count)]
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for token in tokens:
            jwt.decode(token, key, algorithms=["ES256"], options={"verify_aud": False})
        done += len(tokens)
        if time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (best kept)")
    parser.add_argument("--seconds", type=int, default=3, help="seconds per side and round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = best_of_rounds(
        args.rounds,
        args.seconds,
        pipeline_runner(),
        pipeline_runner(tables=False),
        raw_verify_runner(),
    )
    ours, untabled, raw, openssl = (max(row[i] for row in table) for i in range(4))
    pyjwt = pyjwt_decode_per_s(max(1, args.seconds))
    single, diverted = div_hop_cost(max(1, args.seconds))
    hop_cost = single / diverted - 1  # extra time of one div hop, relative to one SHAKEN
    ratio = ours / openssl
    if args.json:
        print(
            json.dumps(
                {
                    "verify_per_s": round(ours, 1),
                    "openssl_verify_per_s": round(openssl, 1),
                    "ratio": round(ratio, 3),
                    "verify_per_s_without_key_tables": round(untabled, 1),
                    "raw_cryptography_verify_per_s": round(raw, 1),
                    "rounds": [[round(x, 1) for x in row] for row in table],
                    "pyjwt_decode_per_s": round(pyjwt, 1),
                    "div_hop_cost": round(hop_cost, 3),
                }
            )
        )
    else:
        for i, (a, u, r, b) in enumerate(table, 1):
            print(
                f"round {i}: pipeline {a:8.1f}/s  without tables {u:8.1f}/s"
                f"  bare verify {r:8.1f}/s  openssl {b:8.1f}/s  ({a / b:.3f})"
            )
        print(f"pipeline verify/s (cached certificate): {ours:10.1f}  (best round)")
        print(f"openssl speed ecdsap256 verify/s:       {openssl:10.1f}  (best round)")
        print(f"ratio:                                  {ratio:10.3f}  (target >= 0.85)")
        print(
            f"same, without key tables:               {untabled:10.1f}  (ratio"
            f" {untabled / openssl:.3f}: every check through cryptography's plain verify)"
        )
        print(
            f"bare cryptography ES256 verify/s:       {raw:10.1f}  (ratio {raw / openssl:.3f};"
            f" without tables the pipeline does {100 * (raw / untabled - 1):.0f}% more work"
            " than the check alone)"
        )
        print(
            f"PyJWT decode (signature + exp only):    {pyjwt:10.1f}  (ratio {pyjwt / openssl:.3f};"
            " why the hot path decodes by hand)"
        )
        print(
            f"one div hop costs {hop_cost:.2f} x a single SHAKEN verification"
            f" ({single:.0f}/s single, {diverted:.0f}/s SHAKEN + div)"
        )


if __name__ == "__main__":
    main()
