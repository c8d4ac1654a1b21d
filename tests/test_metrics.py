"""verifier.metrics: bounded labels, rendering."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from verifier import metrics as metrics_module
from verifier.core.certs import CertificateInfo
from verifier.core.errors import TN_VALIDATION_PASSED
from verifier.core.verify import Result
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


def test_fetches_refused_busy_are_counted() -> None:
    metrics = Metrics.create()
    metrics.watch_fetcher(lambda: {"fetch_busy": 3})
    assert 3.0 == _sample(metrics, "verifier_x5u_fetch_refused_total", {"reason": "busy"})


def _passed(spc: str) -> Result:
    return Result(
        verstat=TN_VALIDATION_PASSED,
        attest="A",
        certificate=CertificateInfo(
            subject="CN=x",
            issuer="CN=y",
            serial="1",
            fingerprint_sha256="00",
            not_before="",
            not_after="",
            spc=(spc,),
        ),
    )


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


async def test_verifications_reach_the_counters_within_the_flush_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted in a dict on the hot path; a scrape sees every one at once, and the
    counters themselves (what other workers' scrapes read) within FLUSH_INTERVAL."""
    monkeypatch.setattr(metrics_module, "FLUSH_INTERVAL", 0.05)
    metrics = Metrics.create()
    for spc in ("1234", "1234", "567A"):
        metrics.observe("atis", _passed(spc), "allow", "verified")
    labels = {"endpoint": "atis", "verstat": TN_VALIDATION_PASSED, "attest": "A", "reason": ""}
    assert _sample(metrics, "verifier_verifications_total", labels) is None  # not yet
    await asyncio.sleep(0.2)
    assert 3.0 == _sample(metrics, "verifier_verifications_total", labels)
    assert 3.0 == _sample(
        metrics, "verifier_dispositions_total", {"action": "allow", "label": "verified"}
    )
    by_spc = {"spc": "1234", "verstat": TN_VALIDATION_PASSED}
    assert 2.0 == _sample(metrics, "verifier_verifications_by_spc_total", by_spc)
    metrics.observe("atis", _passed("1234"), "allow", "verified")
    text = metrics.render().decode()  # a scrape flushes first
    assert (
        'verifier_verifications_total{attest="A",endpoint="atis",reason="",'
        'verstat="TN-Validation-Passed"} 4.0'
    ) in text.splitlines()


def test_without_an_event_loop_each_verification_is_counted_at_once() -> None:
    metrics = Metrics.create()
    metrics.observe("native", _passed("1234"))
    labels = {"endpoint": "native", "verstat": TN_VALIDATION_PASSED, "attest": "A", "reason": ""}
    assert 1.0 == _sample(metrics, "verifier_verifications_total", labels)
