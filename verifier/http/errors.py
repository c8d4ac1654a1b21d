"""Refusals in the ATIS-1000082 ``requestError`` shape (under the 3GPP root, TS 24.229
Annex V's ``{"error": ...}``), and the middleware that makes every refusal (and every
unexpected exception) one. aiohttp answers what its own HTTP parser refuses (a bad request
line or header) itself, with a plain-text 400."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..core.errors import VerifierError
from .answers import dumps
from .keys import METRICS, SETTINGS

__all__ = [
    "JSON",
    "ApiError",
    "error_middleware",
    "error_response",
    "invalid",
    "json_response",
    "missing",
    "ms_error_body",
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


_MS_ERRORS = {
    "SVC4000": "Missing request body",
    "SVC4001": "Missing mandatory parameter",
    "SVC4002": "Requested response body type is not supported",
    "SVC4003": "Requested resource not found",
    "SVC4004": "Unsupported request body type",
    "SVC4005": "Invalid parameter value",
    "SVC4006": "Failed to parse message body",
    "SVC4007": "Missing mandatory Content-Length headers",
    "POL4001": "Unauthorized",
    "POL4003": "Forbidden",
    "POL4050": "Method not allowed",
    "POL5000": "Internal server error",
}
"""The TS 24.229 Annex V error phrase of each refusal (as Neustar's OpenAPI words them)."""


def ms_error_body(error: ApiError) -> dict[str, Any]:
    """A refusal in the 3GPP shape: the TS phrase in ``error``, the particulars in ``detail``."""
    detail = error.text
    for number, value in enumerate(error.variables, 1):
        detail = detail.replace(f"%{number}", value)
    phrase = (
        "Request body too large"
        if error.status == 413
        else _MS_ERRORS.get(error.message_id, detail)
    )
    return {"error": phrase, "detail": detail}


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
    settings = request.app.get(SETTINGS)
    if settings is not None and request.path.startswith(settings.api.threegpp_root + "/"):
        return json_response(ms_error_body(error), status=error.status, headers=headers)
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
