"""The quick version of benchmarks/fuzz_api.py: schemathesis generates requests for every
operation in openapi.json against a real `verifier serve`; no answer may be a 5xx or differ
from the document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).parent.parent / "benchmarks" / "fuzz_api.py"


def test_generated_requests_get_documented_answers() -> None:
    run = subprocess.run(
        [sys.executable, str(FUZZ), "--max-examples", "15", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert 0 == run.returncode, run.stdout[-3000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout
