"""The quick version of the soak (benchmarks/soak.py, which runs for minutes): a few seconds
of mixed traffic (valid, invalid, new x5u) against a real `verifier serve` and a real HTTPS
certificate repository, all on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).parent.parent / "benchmarks" / "soak.py"


def test_mixed_traffic_leaves_the_service_standing() -> None:
    run = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == run.returncode, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads(run.stdout)
    assert 0 == summary["server_errors"]
    assert [] == summary["unexpected"]
    assert 50 < summary["requests"]  # traffic flowed; the rate is benchmarks/soak.py's figure
    assert 0 < summary["new_x5u"]
    statuses = {int(k) for w in summary["windows"] for k in w["statuses"]}
    assert {200, 400} == statuses  # verdicts, and the unparseable bodies' requestError
