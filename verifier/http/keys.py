"""The application's typed state: one :class:`aiohttp.web.AppKey` per resource.

``create_app`` stores the settings, trust anchors, policy, metrics and clock; each
``cleanup_ctx`` step of :mod:`verifier.http.app` opens one resource and stores it under its
key (None where the settings leave it off); the last step builds the :class:`Service`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ..core.certs import TrustStore
from ..core.policy import Policy
from ..core.verify import CredentialSource
from ..metrics import Metrics
from ..net.rcd import RcdContentFetcher
from ..net.redis_tier import RedisLink, RedisReplayCache, RedisTier
from ..net.trustlist import TrustList
from ..records import RecordStore, RecordWriter
from ..service import Service
from ..settings import Settings
from .answers import AtisAnswers

__all__ = [
    "ATIS_ANSWERS",
    "CLOCK",
    "CREDENTIALS",
    "FLEET",
    "METRICS",
    "POLICY",
    "RCD_FETCHER",
    "RECORDS",
    "SERVICE",
    "SETTINGS",
    "TRUST",
    "TRUST_LIST",
    "Fleet",
    "Records",
]


@dataclass(frozen=True, slots=True)
class Fleet:
    """The Redis tier shared by the instances: its link, certificate tier and replay set."""

    link: RedisLink
    tier: RedisTier
    replay: RedisReplayCache


@dataclass(frozen=True, slots=True)
class Records:
    """The traceback record store and the writer that feeds it."""

    store: RecordStore
    writer: RecordWriter


SETTINGS = web.AppKey("settings", Settings)
TRUST = web.AppKey("trust", TrustStore)
"""The trust anchors loaded at start-up (the service holds the reloaded ones)."""
TRUST_LIST: web.AppKey[TrustList | None] = web.AppKey("trust_list")
"""The STI-PA trust list kept current (None without ``[trust] list_url``)."""
POLICY = web.AppKey("policy", Policy)
METRICS = web.AppKey("metrics", Metrics)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
FLEET: web.AppKey[Fleet | None] = web.AppKey("fleet")
CREDENTIALS: web.AppKey[CredentialSource] = web.AppKey("credentials")
"""The x5u certificate fetcher, or the credential source a test gave."""
RCD_FETCHER: web.AppKey[RcdContentFetcher | None] = web.AppKey("rcd_fetcher")
RECORDS: web.AppKey[Records | None] = web.AppKey("records")
SERVICE = web.AppKey("service", Service)
ATIS_ANSWERS = web.AppKey("atis_answers", AtisAnswers)
