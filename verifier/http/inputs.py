"""What every endpoint reads from a request before its own fields: the bearer token, the
Accept header, the request id, the body (type, length, size) and its JSON value."""

from __future__ import annotations

import hmac
import json
import os
import random
import time
from typing import Any

import orjson
from aiohttp import web

from ..service import Service
from .errors import JSON, ApiError, given_request_id
from .keys import SERVICE

__all__ = [
    "MAX_EPOCH",
    "authorize",
    "begin_verification",
    "identity_ok",
    "new_request_id",
    "parse_json",
    "read_body",
]

MAX_EPOCH = 2**62  # a larger time is no date, and 10**400 would overflow float()


class _RequestIds:
    """A new request id: 16 hex digits, 64 bits from a generator seeded from the system's
    randomness once per process (and again in a forked child).

    Not ``os.urandom`` for each request: it releases the GIL for its ``getrandom`` call,
    and the record writer thread takes the GIL each time. Request ids correlate logs,
    records and answers; they guard nothing, so a non-cryptographic generator serves.
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._bits = random.Random(os.urandom(32)).getrandbits  # noqa: S311 - not a secret

    def __call__(self) -> str:
        return f"{self._bits(64):016x}"


new_request_id = _RequestIds()


def request_id(request: web.Request) -> str:
    return given_request_id(request.headers.get("X-RequestID")) or new_request_id()


def _token_ok(authorization: str, token: str) -> bool:
    """Whether an Authorization header value carries ``token`` as a bearer (constant-time)."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")
    )


def authorize(request: web.Request, token: str | None, *, required: bool) -> None:
    """Check the bearer token (constant-time). ``required`` endpoints refuse everyone while
    no token is configured; the others are open then.

    Raises:
        ApiError: 401 POL4001 (no or wrong token), 403 POL4003 (no token configured).
    """
    if token is None:
        if required:
            raise ApiError(
                403,
                "POL4003",
                "Forbidden: %1",
                ["this endpoint is disabled until api.admin_token is configured"],
                kind="policyException",
            )
        return
    if not _token_ok(request.headers.get("Authorization", ""), token):
        raise ApiError(
            401,
            "POL4001",
            "Unauthorized: %1",
            ["a valid bearer token is required"],
            kind="policyException",
            headers={"WWW-Authenticate": 'Bearer realm="verifier"'},
        )


def begin_verification(request: web.Request) -> tuple[Service, str, float]:
    """What every verification endpoint does first: check the verify token (when one is
    configured), name the request and start its latency clock."""
    service = request.app[SERVICE]
    authorize(request, service.settings.api.verify_token, required=False)
    return service, request_id(request), time.perf_counter()


def _accept_ok(accept: str | None) -> bool:
    """Whether an Accept header value (None: absent) admits a JSON answer."""
    if not accept:
        return True
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in (JSON, "application/*", "*/*") or media.endswith("+json"):
            return True
    return False


async def read_body(request: web.Request, limit: int, types: tuple[str, ...] = (JSON,)) -> bytes:
    """The request body, once Accept, Content-Type and Content-Length are acceptable.

    Raises:
        ApiError: 406 SVC4002, 415 SVC4004, 411 SVC4007, 413 SVC4000, 400 SVC4000 (empty).
    """
    accept = request.headers.get("Accept")
    if not _accept_ok(accept):
        raise ApiError(406, "SVC4002", "Not Acceptable: %1", [(accept or "")[:100]])
    if request.content_type not in types:
        raise ApiError(
            415, "SVC4004", "Unsupported Media Type: %1", [request.content_type or "none"]
        )
    length = request.content_length
    if length is None:
        raise ApiError(411, "SVC4007", "Length Required", [])
    if length > limit:
        raise ApiError(413, "SVC4000", "Request body larger than %1 bytes", [str(limit)])
    body = await request.read()
    if not body:
        raise ApiError(400, "SVC4000", "Missing request body", [])
    return body


def parse_json(body: bytes) -> Any:
    """The request body's JSON value, exactly as the standard parser reads it.

    orjson parses faster, but not always the same way: it reads an integer past 64 bits
    as a float, and refuses what the standard parser takes (a byte order mark, NaN, a lone
    surrogate escape). So a body orjson refuses, or whose value holds any float (no valid
    request has one), is read again by the standard parser, whose value or error is the
    answer.

    Raises:
        ApiError: 400 SVC4006, a body that is no JSON.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if not _holds_float(value):
            return value
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ApiError(
            400, "SVC4006", "Failed to parse message body: %1", [str(exc)[:200]]
        ) from None


def _holds_float(value: Any, depth: int = 0) -> bool:
    """Whether a float is anywhere in a parsed JSON value. A value nested deeper than any
    request is counted as holding one: the standard parser reads it (no deep recursion)."""
    kind = type(value)
    if kind is float or depth > 64:
        return True
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return False
    for item in value:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and _holds_float(item, depth + 1)):
            return True
    return False


def identity_ok(value: Any) -> bool:
    """Whether a request's ``identity`` is a string or an array of strings."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
