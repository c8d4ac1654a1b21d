"""``verifier trust status|refresh``: the trust anchors in force and the STI-PA list.

``status`` prints, as JSON, the local anchors, the cached list and the last refresh's report
(and with ``--service`` the running service's ``/readyz``); ``refresh`` fetches the list now,
through the running service's ``POST /v1/admin/trust/refresh`` (``--service``, with the admin
token) or standalone into the cache file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import aiohttp

from .core.errors import VerifierError
from .net.trustlist import describe_anchors, local_anchors, refresh_cache, status_of
from .settings import ConfigError, load_settings

__all__ = ["UsageError", "refresh", "status"]


class UsageError(VerifierError, ValueError):
    """A bad configuration, or no answer from the service: ``verifier`` exits 2 (its main
    reports a ValueError as a usage error)."""


def status(args: argparse.Namespace) -> int:
    """The anchors in force at the next start: local PEM files and the cached list, and the
    running service's view (``--service``)."""
    try:
        settings = load_settings(args.config, env=os.environ)
        listed = settings.trust.list_url is not None
        local = local_anchors(settings.trust_anchors, optional=listed)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    body = {
        "anchors": describe_anchors(local, "local"),
        **status_of(settings.trust, settings.records.data_dir),
    }
    if args.service:
        body["service"] = asyncio.run(_ask_service(args.service, "GET", "/readyz", None))
    print(json.dumps(body, indent=2))
    return 0


def refresh(args: argparse.Namespace) -> int:
    """Fetch the list now: through the running service (``--service``), or standalone into
    the cache file (read at the service's next start). Exit 1 when the list is refused."""
    try:
        settings = load_settings(args.config, env=os.environ)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.service:
        token = settings.api.admin_token
        if token is None:
            raise UsageError("--service needs the admin token: VERIFIER_API_ADMIN_TOKEN")
        path = "/v1/admin/trust/refresh"
        report = asyncio.run(_ask_service(args.service, "POST", path, token))
    elif settings.trust.list_url is None:
        raise UsageError("no [trust] list_url is configured")
    else:
        report = asyncio.run(
            refresh_cache(settings.trust, settings.http_client, data_dir=settings.records.data_dir)
        )
    print(json.dumps(report, indent=2))
    return 0 if report.get("ok") else 1


async def _ask_service(base: str, method: str, path: str, token: str | None) -> dict[str, Any]:
    """The JSON answer of the running service at ``base`` (an operator's own address)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.request(method, base.rstrip("/") + path, headers=headers) as resp,
        ):
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UsageError(f"{base}: no answer ({type(exc).__name__}: {exc})") from None
    if not isinstance(body, dict) or resp.status not in (200, 503):
        raise UsageError(f"{base}{path}: HTTP {resp.status}: {body}")
    return body
