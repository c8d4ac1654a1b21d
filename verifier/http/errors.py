"""Refusals in the ATIS-1000082 ``requestError`` shape, and the middleware that makes every
refusal (and every unexpected exception) one. aiohttp answers what its own HTTP parser
refuses (a bad request line or header) itself, with a plain-text 400."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..core.errors import VerifierError
from .answers import dumps
from .keys import METRICS

__all__ = [
    "JSON",
    "ApiError",
    "error_middleware",
    "error_response",
    "invalid",
    "json_response",
    "missing",
]

log = logging.getLogger(__name__)
JSON = "application/json"


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type=JSON, headers=headers)


class ApiError(VerifierError):
    """A request that cannot be served, answered in the ATIS ``requestError`` shape."""

    def __init__(
        self,
        status: int,
        message_id: str,
        text: str,
        variables: list[str] | None = None,
        *,
        kind: str = "serviceException",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{message_id} {text} {variables or []}")
        self.headers = headers or {}
        self.status = status
        self.message_id = message_id
        self.text = text
        self.variables = variables or []
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {
            "requestError": {
                self.kind: {
                    "messageId": self.message_id,
                    "text": self.text,
                    "variables": self.variables,
                }
            }
        }


def missing(name: str) -> ApiError:
    return ApiError(400, "SVC4001", "Missing mandatory parameter '%1'", [name])


def invalid(name: str, why: str) -> ApiError:
    return ApiError(400, "SVC4005", "Invalid input value for message part %1: %2", [name, why])


def given_request_id(value: str | None) -> str | None:
    """The caller's X-RequestID when it is one we echo (1-128 printable characters)."""
    if value is not None and 0 < len(value) <= 128 and value.isprintable():
        return value
    return None


def error_response(request: web.Request, error: ApiError) -> web.Response:
    """Count a refused request; its ``requestError`` answer (the caller's X-RequestID
    echoed when it gave one)."""
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.requests_rejected.labels(error.message_id).inc()
    request_id = given_request_id(request.headers.get("X-RequestID"))
    headers = {"X-RequestID": request_id} if request_id is not None else {}
    headers.update(error.headers)
    return json_response(error.body(), status=error.status, headers=headers)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status == 404:
            error = ApiError(404, "SVC4003", "Resource not found: %1", [request.path[:200]])
        elif exc.status == 405:
            error = ApiError(
                405, "POL4050", "Method not allowed: %1", [request.method], kind="policyException"
            )
            if "Allow" in exc.headers:
                error.headers["Allow"] = exc.headers["Allow"]
        elif exc.status == 413:
            error = ApiError(413, "SVC4000", "Request body too large", [])
        else:
            raise
        return error_response(request, error)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            return _internal_error(request)  # not our client's connection that went
        # The client went away mid-body: nobody to answer and nothing broken, so no
        # traceback (each one would be an ERROR line: a cheap log flood).
        log.debug("client_disconnected", extra={"path": request.path[:200]})
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.client_disconnects.inc()
        return web.Response(status=499)  # never sent: the connection is gone
    except Exception:
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    """POL5000, for an exception that should never happen: logged with its traceback (call
    it from the ``except`` block)."""
    log.exception("internal_error", extra={"path": request.path})
    error = ApiError(500, "POL5000", "Internal server error", [], kind="policyException")
    return error_response(request, error)
