"""The HTTP service: ATIS-1000082 REST API (:mod:`.atis`), the native API (:mod:`.native`)
and operations endpoints (:mod:`.ops`), served by aiohttp.

``create_app(settings)`` builds the application: each resource (the Redis tier, the x5u
fetcher, the RCD content fetcher, the record store and writer) is opened and closed by its
own ``cleanup_ctx`` step and kept under its :mod:`.keys` AppKey; the last step builds the
:class:`~verifier.service.Service` from them. ``run(settings)`` serves it with
:func:`aiohttp.web.run_app`; tests pass their own ``credentials`` source and ``clock``.

Answers: a verification that fails is HTTP 200 with its verdict; 4xx (in the ATIS
``requestError`` shape) is only for a request that cannot be understood. Nothing a caller
sends produces a 500: the last-resort middleware answers POL5000 and logs the traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from aiohttp import web

from .. import __version__
from ..accel import es256
from ..accel.batcher import SignatureBatcher
from ..core.certs import TrustStore
from ..core.policy import Policy
from ..core.verify import CredentialSource
from ..metrics import Metrics
from ..net.fetch import CertificateFetcher
from ..net.rcd import RcdContentFetcher
from ..net.redis_tier import RedisLink, RedisReplayCache, RedisTier
from ..records import RecordWriter, open_store
from ..service import Service
from ..settings import Settings
from ..sip.server import SipServer
from . import atis, native, ops
from .answers import AtisAnswers
from .errors import ApiError, error_middleware
from .keys import (
    ATIS_ANSWERS,
    CLOCK,
    CREDENTIALS,
    FLEET,
    METRICS,
    POLICY,
    RCD_FETCHER,
    RECORDS,
    SERVICE,
    SETTINGS,
    TRUST,
    Fleet,
    Records,
)

__all__ = ["SERVICE", "ApiError", "create_app", "run", "start_site"]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    trust: TrustStore | None = None,
    credentials: CredentialSource | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The aiohttp application.

    ``trust`` defaults to the settings' trust anchors; ``credentials`` to an x5u fetcher
    opened with the application (one shared client session). Tests pass their own.

    Raises:
        ValueError: no trust anchor could be loaded (the service refuses to start).
        PolicyError: the policy file cannot be loaded.
    """
    if trust is None:
        trust = TrustStore.from_paths(
            settings.trust_anchors,
            require_policy_oid=settings.verification.require_policy_oid,
        )
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.api.batch_body_limit
    )
    app[SETTINGS] = settings
    app[TRUST] = trust.with_key_factory(es256.ES256Key)  # the ES256 accelerator, handed in
    app[POLICY] = Policy.load(settings.policy_file) if settings.policy_file else Policy.default()
    app[METRICS] = Metrics.create()
    app[CLOCK] = clock
    app[ATIS_ANSWERS] = AtisAnswers(settings.api)
    app.add_routes(atis.routes)
    app.add_routes(native.routes)
    app.add_routes(ops.routes)
    app.cleanup_ctx.append(_fleet_ctx)
    app.cleanup_ctx.append(_credentials_ctx(credentials))
    app.cleanup_ctx.append(_rcd_ctx)
    app.cleanup_ctx.append(_records_ctx)
    app.cleanup_ctx.append(_service_ctx)
    app.cleanup_ctx.append(_sip_ctx)
    app.on_shutdown.append(_not_ready)
    return app


async def _fleet_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Redis tier the instances share (certificate chains, failures, the fleet-wide
    fetch lock, replays) when ``redis.url`` is set."""
    settings, clock = app[SETTINGS], app[CLOCK]
    if settings.redis.url is None:
        app[FLEET] = None
        yield
        return
    async with RedisLink(settings.redis) as link:
        verification = settings.verification
        fleet = Fleet(
            link=link,
            tier=RedisTier(link, clock=clock),
            replay=RedisReplayCache(
                link,
                max_size=verification.replay_cache_size,
                window=verification.replay_window,
                clock=clock,
            ),
        )
        app[METRICS].watch_shared(fleet.tier.stats, fleet.replay.stats)
        app[FLEET] = fleet
        yield


def _credentials_ctx(
    given: CredentialSource | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The step that opens the x5u certificate fetcher (or keeps the source a test gave)."""

    async def credentials_ctx(app: web.Application) -> AsyncIterator[None]:
        if given is not None:
            app[CREDENTIALS] = given
            yield
            return
        settings, metrics, fleet = app[SETTINGS], app[METRICS], app[FLEET]
        latency = metrics.fetch_latency

        def observe(outcome: str, seconds: float) -> None:
            latency.labels(outcome).observe(seconds)

        async with CertificateFetcher(
            app[TRUST],
            settings.x5u,
            client=settings.http_client,
            clock=app[CLOCK],
            on_load=observe,
            shared=fleet.tier if fleet is not None else None,
        ) as fetcher:
            metrics.watch_fetcher(fetcher.stats)
            app[CREDENTIALS] = fetcher
            yield

    return credentials_ctx


async def _rcd_ctx(app: web.Application) -> AsyncIterator[None]:
    """The fetcher of Rich Call Data content (logos, jCards) for the RCD verdicts."""
    settings = app[SETTINGS]
    async with RcdContentFetcher(
        settings.rcd, client=settings.http_client, clock=app[CLOCK]
    ) as fetcher:
        app[RCD_FETCHER] = fetcher
        yield


async def _records_ctx(app: web.Application) -> AsyncIterator[None]:
    """The record store and its writer: opened with the app, drained and closed after the
    last request (aiohttp runs cleanup after in-flight handlers finish on SIGTERM)."""
    settings = app[SETTINGS].records
    if not settings.enabled:
        app[RECORDS] = None
        yield
        return
    store = await asyncio.to_thread(open_store, settings)
    try:
        writer = RecordWriter(store, settings, clock=app[CLOCK])
        await writer.start()
        try:
            app[METRICS].watch_records(writer)
            app[RECORDS] = Records(store=store, writer=writer)
            yield
        finally:
            await writer.close()
    finally:
        await asyncio.to_thread(store.close)


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    """The service, from the resources the steps before opened. At its end, the log lines
    and counts still held back are written (with ``--workers``, the counts reach the
    shared files here; the worker is about to exit)."""
    settings, credentials = app[SETTINGS], app[CREDENTIALS]
    fleet, records = app[FLEET], app[RECORDS]
    service = Service(
        settings,
        app[TRUST],
        credentials=credentials,
        policy=app[POLICY],
        metrics=app[METRICS],
        clock=app[CLOCK],
        on_trust=credentials.set_trust if isinstance(credentials, CertificateFetcher) else None,
        rcd_fetcher=app[RCD_FETCHER],
        replay=fleet.replay if fleet is not None else None,
        records=records.writer if records is not None else None,
        signatures=SignatureBatcher() if settings.batch_signatures else None,
    )
    app[SERVICE] = service
    try:
        yield
    finally:
        service.ready = False
        service.vlog.flush()
        service.metrics.flush()


async def _sip_ctx(app: web.Application) -> AsyncIterator[None]:
    """The SIP front end (``[sip] listen``), answering with the same service."""
    settings = app[SETTINGS]
    if not settings.sip.listen:
        yield
        return
    async with SipServer(app[SERVICE], settings.sip, reuse_port=settings.workers > 1):
        yield


async def _not_ready(app: web.Application) -> None:
    app[SERVICE].ready = False


async def start_site(
    app: web.Application,
    settings: Settings,
    *,
    port: int | None = None,
) -> tuple[web.AppRunner, web.TCPSite]:
    """Start ``app`` and listen on ``settings.host`` and ``port`` (default
    ``settings.port``; 0 picks a free one), as :func:`run` does, without its signals.

    End with ``await runner.cleanup()``: the listening socket closes, requests in flight
    are answered (within ``shutdown_timeout``), then the stores are drained and closed.
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout,
        keepalive_timeout=settings.keepalive_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port if port is None else port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


def run(
    settings: Settings,
    *,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT (:func:`aiohttp.web.run_app`); SIGHUP reloads the trust
    anchors and the policy. ``reuse_port``: one of ``--workers`` processes on one port.

    Raises:
        ValueError: no trust anchor could be loaded.
    """
    _use_event_loop(settings.event_loop)
    app = create_app(settings)

    async def on_startup(app: web.Application) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app[SERVICE].reload)
        log.info("serving", extra=startup_summary(app))
        # Full collections over the long-lived objects (caches, the replay set, the loaded
        # code) showed as latency spikes: what exists after start-up is frozen out of them,
        # and young objects (nearly all freed by reference counting) are collected less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)

    app.on_startup.append(on_startup)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port or None,
        shutdown_timeout=settings.shutdown_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        access_log=None,
        handle_signals=True,
        print=None,
    )


def startup_summary(app: web.Application) -> dict[str, object]:
    """What ``verifier serve`` says once it is up (each worker, with ``--workers``): version,
    address, workers, process, trust anchors (count, earliest expiry), policy file, record
    store and Redis (no credentials), whether ES256 key tables are available."""
    settings, service = app[SETTINGS], app[SERVICE]
    anchors = service.trust.anchors
    earliest = min(a.not_valid_after_utc for a in anchors)
    records = settings.records
    if not records.enabled:
        store = "off"
    elif records.database_url is not None:
        store = f"postgresql {_where(records.database_url)}"
    else:
        store = f"sqlite {records.data_dir}"
    why_not = es256.unavailable()
    return {
        "version": __version__,
        "address": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "pid": os.getpid(),
        "trust_anchors": len(anchors),
        "earliest_anchor_expiry": earliest.astimezone(dt.UTC).isoformat(),
        "policy": settings.policy_file or "default",
        "records": store,
        "redis": _where(settings.redis.url) if settings.redis.url is not None else "off",
        "key_tables": "available" if not why_not else f"unavailable: {why_not}",
    }


def _where(url: str) -> str:
    """A database or Redis URL without its user and password: scheme, host, port, path."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _use_event_loop(choice: str) -> None:
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("event_loop = 'uvloop' but uvloop is not installed") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
