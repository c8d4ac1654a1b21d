"""Prometheus metrics, one registry per application (no process-global state).

With ``verifier serve --workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its
workers: counters and histograms are then summed over all workers at every scrape, and the
cache gauges are those of the worker that answered.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .accel import es256
from .core.verify import Result

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HOST_LABELS = 50
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
FLUSH_INTERVAL = 1.0
"""Seconds within which a verification reaches the counters (a scrape flushes at once)."""
_FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def _labelled(
    name: str,
    documentation: str,
    label: str,
    stats: dict[str, Any],
    values: Iterable[tuple[str, str]],
) -> CounterMetricFamily:
    """One counter family with a sample per (label value, key in ``stats``) pair."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, key in values:
        family.add_metric([value], stats.get(key, 0))
    return family


class _FetcherCollector(Collector):
    """Cache and fetch counters read from the fetcher at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        yield _labelled(
            "verifier_x5u_cache_lookups",
            "x5u credential cache lookups",
            "result",
            s,
            (
                ("hit", "hits"),
                ("miss", "misses"),
                ("stale", "stale_served"),
                ("negative", "negative_hits"),
                ("coalesced", "coalesced"),
            ),
        )
        yield GaugeMetricFamily(
            "verifier_x5u_cache_entries",
            "validated credentials cached",
            value=s.get("cache_size", 0),
        )
        yield GaugeMetricFamily(
            "verifier_es256_key_tables",
            "signing keys in heavy use holding a precomputed table",
            value=es256.tables_in_use(),
        )
        yield GaugeMetricFamily(
            "verifier_x5u_negative_entries",
            "failures remembered",
            value=s.get("negative_size", 0),
        )
        yield GaugeMetricFamily(
            "verifier_x5u_breakers_open",
            "hosts whose circuit is open",
            value=s.get("breakers_open", 0),
        )
        yield _labelled(
            "verifier_x5u_fetches",
            "x5u fetches made",
            "kind",
            s,
            (("fetch", "fetches"), ("refresh", "refreshes")),
        )
        errors = CounterMetricFamily(
            "verifier_x5u_fetch_errors", "failed x5u fetches by host", labels=["host"]
        )
        # x5u hosts are chosen by whoever sent the call: a label per host would let them grow
        # the exposition without bound, so the busiest MAX_HOST_LABELS are named, the rest
        # summed as "other".
        by_host = sorted(s.get("fetch_errors", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        for host, count in by_host[:MAX_HOST_LABELS]:
            errors.add_metric([host], count)
        rest = sum(count for _host, count in by_host[MAX_HOST_LABELS:])
        if rest:
            errors.add_metric(["other"], rest)
        yield errors
        yield CounterMetricFamily(
            "verifier_x5u_breaker_opens",
            "circuit breaker openings",
            value=s.get("breaker_opens", 0),
        )
        yield _labelled(
            "verifier_x5u_fetch_refused",
            "x5u fetches not made, by reason (busy: the host's max_per_host fetches were running)",
            "reason",
            s,
            (("busy", "fetch_busy"),),
        )
        crl = CounterMetricFamily("verifier_crl_fetches", "CRL fetches", labels=["result"])
        crl.add_metric(["ok"], max(0, s.get("crl_fetches", 0) - s.get("crl_failures", 0)))
        crl.add_metric(["failed"], s.get("crl_failures", 0))
        yield crl


class _RecordsCollector(Collector):
    """The traceback record writer's counters, read at scrape time."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def collect(self) -> Iterator[Any]:
        w = self._writer
        yield CounterMetricFamily("verifier_records_written", "records on disk", value=w.written)
        yield CounterMetricFamily(
            "verifier_records_dropped",
            "records not kept (journal full, queue full in drop mode, wait timeout, shutdown,"
            " refused)",
            value=w.dropped,
        )
        yield CounterMetricFamily(
            "verifier_records_journal_dropped",
            "records dropped because the journal was full (also counted as dropped)",
            value=w.journal_dropped,
        )
        journal = w.journal
        yield CounterMetricFamily(
            "verifier_records_journaled",
            "records spilled to the journal (store failing or queue past its high-water mark)",
            value=0 if journal is None else journal.appended,
        )
        yield GaugeMetricFamily(
            "verifier_records_journal_bytes",
            "bytes in the journal waiting for the record store",
            value=w.journaled,
        )
        yield CounterMetricFamily(
            "verifier_records_rejected",
            "records the store refused for their content (also counted as dropped)",
            value=w.rejected,
        )
        yield CounterMetricFamily(
            "verifier_records_write_errors", "failed store writes (retried)", value=w.write_errors
        )
        yield GaugeMetricFamily(
            "verifier_records_queue_depth", "records accepted, not yet written", value=w.queue_depth
        )
        yield GaugeMetricFamily(
            "verifier_records_healthy",
            "1 when the record store accepts writes",
            value=int(w.healthy),
        )


class _SharedCollector(Collector):
    """The Redis tier's health and counters, read at scrape time."""

    def __init__(
        self, tier: Callable[[], dict[str, Any]], replay: Callable[[], dict[str, Any]]
    ) -> None:
        self._tier = tier
        self._replay = replay

    def collect(self) -> Iterator[Any]:
        t = self._tier()
        r = self._replay()
        yield GaugeMetricFamily(
            "verifier_redis_healthy", "1 while Redis answers", value=int(bool(t.get("healthy")))
        )
        yield CounterMetricFamily(
            "verifier_redis_errors",
            "Redis calls that failed or timed out",
            value=t.get("errors", 0),
        )
        yield CounterMetricFamily(
            "verifier_redis_fallbacks",
            "operations answered locally because Redis was away",
            value=t.get("fallbacks", 0),
        )
        yield _labelled(
            "verifier_redis_chain_lookups",
            "shared-tier lookups on a local miss",
            "result",
            t,
            (("hit", "hits"), ("miss", "misses"), ("failure", "failure_hits")),
        )
        yield _labelled(
            "verifier_redis_fetch_locks",
            "fleet-wide fetch lock outcomes",
            "outcome",
            t,
            (
                ("acquired", "lock_acquired"),
                ("waited", "lock_waits"),
                ("timed_out", "lock_timeouts"),
            ),
        )
        yield CounterMetricFamily(
            "verifier_redis_replay_local_answers",
            "replay checks answered locally (Redis away)",
            value=r.get("local_answers", 0),
        )


class _TrustCollector(Collector):
    """The trust in force and what expires soon, read at scrape time from ``status()``: a
    dict with ``anchors``, ``source``, ``earliest_anchor_expiry`` (seconds from now),
    ``list_age`` and ``crl_ages`` (seconds, by URL), ``list_refusals``, ``expiring`` (by
    kind) and ``cert_expiry`` ((SPC, seconds from now) of the soonest cached signers)."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        t = self._status()
        yield GaugeMetricFamily("verifier_trust_anchors", "trust anchors in force", t["anchors"])
        source = GaugeMetricFamily(
            "verifier_trust_source", "where the anchors in force came from", labels=["source"]
        )
        source.add_metric([t["source"]], 1)
        yield source
        yield GaugeMetricFamily(
            "verifier_trust_anchor_expiry_seconds",
            "seconds until the earliest trust anchor expires",
            t["earliest_anchor_expiry"],
        )
        if t.get("list_age") is not None:
            yield GaugeMetricFamily(
                "verifier_trust_list_age_seconds", "age of the trust list in force", t["list_age"]
            )
        yield CounterMetricFamily(
            "verifier_trust_list_refusals",
            "trust list refreshes refused or failed (the anchors in force stayed)",
            value=t.get("list_refusals", 0),
        )
        crls = GaugeMetricFamily(
            "verifier_trust_crl_age_seconds", "age of each STI-PA CRL in force", labels=["url"]
        )
        for url, age in t.get("crl_ages", {}).items():
            crls.add_metric([url], age)
        yield crls
        expiring = GaugeMetricFamily(
            "verifier_trust_expiring",
            "anchors and cached signer certificates expiring within [trust] expiry_warning",
            labels=["kind"],
        )
        for kind, count in t["expiring"].items():
            expiring.add_metric([kind], count)
        yield expiring
        certs = GaugeMetricFamily(
            "verifier_cert_expiry_seconds",
            "seconds until the soonest-expiring cached signer certificates expire, by SPC",
            labels=["spc"],
        )
        for spc, seconds in t["cert_expiry"]:
            certs.add_metric([spc], seconds)
        yield certs


class Metrics:
    """The service's metrics. You get one per application from :func:`Metrics.create`."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool) -> None:
        self.registry = registry
        self._multiprocess = multiprocess
        self._fetcher: _FetcherCollector | None = None
        self._children: dict[tuple[str, ...], Any] = {}
        self._dispositions: dict[tuple[str, ...], Any] = {}
        self._by_spc: dict[tuple[str, ...], Any] = {}
        self._records: _RecordsCollector | None = None
        self._shared: _SharedCollector | None = None
        self._pending: dict[tuple[Any, ...], int] = {}
        self._flusher: asyncio.TimerHandle | None = None
        self.verifications = Counter(
            "verifier_verifications",
            "verifications by verstat, attestation and failure reason",
            ["endpoint", "verstat", "attest", "reason"],
            registry=registry,
        )
        self.signers = Counter(
            "verifier_verifications_by_spc",
            "verifications by the signer's SPC (from TNAuthList) and verstat",
            ["spc", "verstat"],
            registry=registry,
        )
        self.latency = Histogram(
            "verifier_verification_seconds",
            "time to answer one verification request",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.fetch_latency = Histogram(
            "verifier_x5u_fetch_seconds",
            "time to fetch and validate one x5u",
            ["outcome"],
            buckets=_FETCH_BUCKETS,
            registry=registry,
        )
        self.requests_rejected = Counter(
            "verifier_requests_rejected",
            "API requests refused before verification (requestError), by messageId",
            ["message_id"],
            registry=registry,
        )
        self.dispositions = Counter(
            "verifier_dispositions",
            "dispositions by action and label",
            ["action", "label"],
            registry=registry,
        )
        self.replays = Counter(
            "verifier_replays",
            "PASSporTs seen again within their freshness window",
            registry=registry,
        )
        self.client_disconnects = Counter(
            "verifier_client_disconnects",
            "requests whose client closed the connection before sending the whole body",
            registry=registry,
        )
        self.reloads = Counter(
            "verifier_reloads", "SIGHUP reloads by outcome", ["outcome"], registry=registry
        )

    @classmethod
    def create(cls) -> Metrics:
        return cls(CollectorRegistry(), multiprocess="PROMETHEUS_MULTIPROC_DIR" in os.environ)

    def watch_fetcher(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._fetcher = _FetcherCollector(stats)
        self.registry.register(self._fetcher)

    def watch_shared(
        self, tier: Callable[[], dict[str, Any]], replay: Callable[[], dict[str, Any]]
    ) -> None:
        if self._shared is not None:
            self.registry.unregister(self._shared)
        self._shared = _SharedCollector(tier, replay)
        self.registry.register(self._shared)

    def watch_trust(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_TrustCollector(status))

    def watch_records(self, writer: Any) -> None:
        if self._records is not None:
            self.registry.unregister(self._records)
        self._records = _RecordsCollector(writer)
        self.registry.register(self._records)

    def observe(self, endpoint: str, result: Result, action: str = "", label: str = "") -> None:
        """Count one verification (and its disposition and signer).

        In one process, counted here in a dict and added to the counters by :meth:`flush`:
        at every scrape (:meth:`render`), within :data:`FLUSH_INTERVAL` seconds and at
        shutdown: the three counters' own ``inc()`` each take a lock, a dict entry does
        not. With ``--workers`` (multiprocess mode) a scrape
        reads every worker's counters, not their dicts: each count goes in at once.
        """
        certificate = result.certificate
        key = (
            endpoint,
            result.verstat,
            result.attest or "",
            result.reason.slug if result.reason is not None else "",
            action,
            label,
            certificate.spc if certificate is not None else (),
        )
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        if self._multiprocess:
            self.flush()
        elif self._flusher is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flusher = loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Add the verifications counted since the last flush to the counters."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        pending, self._pending = self._pending, {}
        for (endpoint, verstat, attest, reason, action, label, spcs), count in pending.items():
            key = (endpoint, verstat, attest, reason)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.verifications.labels(*key)
            child.inc(count)
            if action:
                pair = (action, label)
                counted = self._dispositions.get(pair)
                if counted is None:
                    counted = self._dispositions[pair] = self.dispositions.labels(*pair)
                counted.inc(count)
            for spc in spcs:
                signer = (spc, verstat)
                by_spc = self._by_spc.get(signer)
                if by_spc is None:
                    by_spc = self._by_spc[signer] = self.signers.labels(*signer)
                by_spc.inc(count)

    def render(self) -> bytes:
        self.flush()
        if self._multiprocess:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            for local in (self._fetcher, self._records, self._shared):
                if local is not None:
                    merged.register(local)
            return generate_latest(merged)
        return generate_latest(self.registry)
