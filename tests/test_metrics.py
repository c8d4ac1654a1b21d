"""verifier.metrics: bounded labels, rendering."""

from __future__ import annotations

from typing import Any

from verifier.metrics import MAX_HOST_LABELS, Metrics


def test_fetch_error_hosts_are_bounded() -> None:
    # x5u hosts come from callers: 500 distinct ones must not make 500 label values
    errors = {f"h{i}.example.net": i + 1 for i in range(500)}

    def stats() -> dict[str, Any]:
        return {"fetch_errors": errors}

    metrics = Metrics.create()
    metrics.watch_fetcher(stats)
    lines = [
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith("verifier_x5u_fetch_errors_total{")
    ]
    assert MAX_HOST_LABELS + 1 == len(lines)
    assert 'verifier_x5u_fetch_errors_total{host="h499.example.net"} 500.0' in lines
    other = sum(range(1, 500 - MAX_HOST_LABELS + 1))
    assert f'verifier_x5u_fetch_errors_total{{host="other"}} {float(other)}' in lines
