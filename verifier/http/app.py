"""The HTTP service: ATIS-1000082 REST API (:mod:`.atis`), the native API (:mod:`.native`)
and operations endpoints (:mod:`.ops`), served by aiohttp.

``create_app(settings)`` builds the application: each resource (the Redis tier, the x5u
fetcher, the RCD content fetcher, the record store and writer) is opened and closed by its
own ``cleanup_ctx`` step and kept under its :mod:`.keys` AppKey; the last step builds the
:class:`~verifier.service.Service` from them. ``run(settings)`` serves it with aiohttp's
``AppRunner``; tests pass their own ``credentials`` source and ``clock``.

Answers: a verification that fails is HTTP 200 with its verdict; 4xx (in the ATIS
``requestError`` shape) is only for a request that cannot be understood. Nothing a caller
sends produces a 500: the last-resort middleware answers POL5000 and logs the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
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
from ..net.trustlist import TrustList, expiry_figures, local_anchors
from ..records import RecordWriter, open_store
from ..records.journal import open_journal
from ..service import Service
from ..settings import Settings
from ..sip.server import SipServer
from . import atis, console, native, ops, threegpp
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
    TRUST_LIST,
    Fleet,
    Records,
)

__all__ = ["SERVICE", "ApiError", "create_app", "run", "start_site"]

log = logging.getLogger(__name__)

EXPIRY_CHECK_INTERVAL = 3600.0
"""Seconds between the checks that log anchors and signer certificates about to expire."""

DRAIN_GRACE = 1.0
"""Seconds ``verifier serve`` goes on answering its open connections after SIGTERM, each
answer with ``Connection: close``, before it closes the ones left idle."""


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
    trust_list = _trust_list(settings, clock)
    if trust is None:
        trust = _initial_trust(settings, trust_list)
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.api.batch_body_limit
    )
    app[SETTINGS] = settings
    app[TRUST] = trust.with_key_factory(es256.ES256Key)  # the ES256 accelerator, handed in
    app[POLICY] = Policy.load(settings.policy_file) if settings.policy_file else Policy.default()
    app[METRICS] = Metrics.create()
    app[CLOCK] = clock
    app[TRUST_LIST] = trust_list
    app[ATIS_ANSWERS] = AtisAnswers(settings.api)
    app.add_routes(atis.routes)
    app.add_routes(threegpp.routes(settings.api.threegpp_root))
    app.add_routes(native.routes)
    app.add_routes(ops.routes)
    app.add_routes(console.routes)
    app.cleanup_ctx.append(_fleet_ctx)
    app.cleanup_ctx.append(_credentials_ctx(credentials))
    app.cleanup_ctx.append(_rcd_ctx)
    app.cleanup_ctx.append(_records_ctx)
    app.cleanup_ctx.append(_service_ctx)
    app.cleanup_ctx.append(_trust_ctx)
    app.cleanup_ctx.append(_sip_ctx)
    app.on_shutdown.append(_not_ready)
    app.on_response_prepare.append(_close_when_draining)
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
        journal = await asyncio.to_thread(open_journal, settings)
        writer = RecordWriter(store, settings, clock=app[CLOCK], journal=journal)
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
    fleet, records, trust_list = app[FLEET], app[RECORDS], app[TRUST_LIST]
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
        list_anchors=trust_list.anchors if trust_list is not None else (),
    )
    app[SERVICE] = service
    try:
        yield
    finally:
        service.ready = False
        service.vlog.flush()
        service.metrics.flush()


def _trust_list(settings: Settings, clock: Callable[[], float]) -> TrustList | None:
    """The STI-PA trust list (from its cache file) and CRLs, when ``[trust] list_url`` or
    ``crl_urls`` is set."""
    if settings.trust.list_url is None and not settings.trust.crl_urls:
        return None
    trust_list = TrustList(
        settings.trust, settings.http_client, data_dir=settings.records.data_dir, clock=clock
    )
    if settings.trust.list_url is not None:
        trust_list.load_cache()
    return trust_list


def _initial_trust(settings: Settings, trust_list: TrustList | None) -> TrustStore:
    """The local anchors (optional with a trust list) and the cached list's.

    Raises:
        ValueError: no anchor at all, or a local anchor path that cannot be read.
    """
    local = local_anchors(settings.trust_anchors, optional=trust_list is not None)
    listed = trust_list.anchors if trust_list is not None else ()
    given = set(local)
    return TrustStore(
        [*local, *(a for a in listed if a not in given)],
        require_policy_oid=settings.verification.require_policy_oid,
    )


def _trust_figures(app: web.Application) -> dict[str, Any]:
    """The trust in force and what expires within ``[trust] expiry_warning``."""
    service, credentials = app[SERVICE], app[CREDENTIALS]
    signers = (
        credentials.soonest_expiring(app[SETTINGS].x5u.cache_size)
        if isinstance(credentials, CertificateFetcher)
        else []
    )
    return expiry_figures(
        service.trust.anchors,
        app[TRUST_LIST],
        signers,
        now=app[CLOCK](),
        warning=app[SETTINGS].trust.expiry_warning,
    )


async def _warn_expiring(app: web.Application) -> None:
    """A warning line for each anchor and cached signer certificate about to expire: at
    start, then hourly."""
    while True:
        for item in _trust_figures(app)["soon"]:
            when = dt.datetime.fromtimestamp(item["not_after"], dt.UTC).isoformat()
            log.warning(f"{item['kind']}_expiring", extra={**item, "not_after": when})
        await asyncio.sleep(EXPIRY_CHECK_INTERVAL)


async def _trust_ctx(app: web.Application) -> AsyncIterator[None]:
    """Expiry watch (metrics, warnings) and, when configured, the trust list and the STI-PA
    CRLs: fetched once before serving, then every ``refresh_interval`` and
    ``crl_refresh_interval``."""
    app[METRICS].watch_trust(lambda: _trust_figures(app))
    tasks = [asyncio.create_task(_warn_expiring(app))]
    trust_list = app[TRUST_LIST]
    try:
        if trust_list is None:
            yield
            return
        service, credentials = app[SERVICE], app[CREDENTIALS]
        trust_list.on_change = service.set_list_anchors
        trust_list.anchors_in_force = lambda: service.trust.anchors
        if isinstance(credentials, CertificateFetcher):
            trust_list.on_crls = credentials.set_published_crls
        async with trust_list:
            if trust_list.settings.list_url is not None:
                await trust_list.refresh()
            if trust_list.settings.crl_urls:
                await trust_list.refresh_crls()
            tasks.append(asyncio.create_task(trust_list.run()))
            yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    """Once shutdown has begun, each answer closes its connection (``Connection: close``)."""
    if not request.app[SERVICE].ready:
        response.force_close()
        response.headers["Connection"] = "close"


async def start_site(
    app: web.Application,
    settings: Settings,
    *,
    port: int | None = None,
    reuse_port: bool = False,
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
    site = web.TCPSite(
        runner,
        settings.host,
        settings.port if port is None else port,
        reuse_port=reuse_port or None,
    )
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
    """Serve until SIGTERM/SIGINT; SIGHUP reloads the trust anchors and the policy.
    ``reuse_port``: one of ``--workers`` processes on one port.

    SIGTERM drains: ``/readyz`` turns 503 and the listening socket closes; for
    :data:`DRAIN_GRACE` seconds the connections already open are still answered, each answer
    with ``Connection: close``; then the runner's cleanup closes the idle ones, gives the
    requests in flight ``shutdown_timeout`` and drains the stores. SIGINT skips the grace.
    (:func:`aiohttp.web.run_app` closes idle keep-alive connections at once, and a request
    already sent on one is reset: hence this loop, on aiohttp's public runner API.)

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
    asyncio.run(_serve(app, settings, reuse_port=reuse_port))


async def _serve(app: web.Application, settings: Settings, *, reuse_port: bool) -> None:
    """Listen until SIGTERM or SIGINT, drain (SIGTERM), clean up."""
    runner, site = await start_site(app, settings, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    stop, now = asyncio.Event(), asyncio.Event()

    def interrupt() -> None:
        now.set()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)  # again later: no effect
    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        await stop.wait()
        app[SERVICE].ready = False
        await site.stop()
        if not now.is_set():
            log.info("draining", extra={"grace": DRAIN_GRACE})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(now.wait(), DRAIN_GRACE)
    finally:
        await runner.cleanup()


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
        "trust_list": _trust_list_line(app),
        "key_tables": "available" if not why_not else f"unavailable: {why_not}",
    }


def _trust_list_line(app: web.Application) -> str:
    """``off``, or where the list in force came from (url, cache, none) and its URL."""
    trust_list, url = app[TRUST_LIST], app[SETTINGS].trust.list_url
    if trust_list is None or url is None:
        return "off"
    return f"{trust_list.source} {_where(url)} ({len(trust_list.anchors)} anchors)"


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
