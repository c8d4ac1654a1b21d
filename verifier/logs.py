"""One JSON object per log line, configured by the CLI (never at import)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sys
import time
from typing import Any, TextIO

from aiohttp.http import HttpProcessingError

__all__ = [
    "JsonFormatter",
    "RefusedRequests",
    "VerificationLog",
    "configure_logging",
    "json_string",
]

_log = logging.getLogger("verifier.http")
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode
json_string = json.encoder.encode_basestring_ascii
"""A str as a JSON string (quoted, escaped, ASCII): the C encoder's own function."""

# Attributes every LogRecord has; anything else came in through ``extra={...}``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...extra}``; the message is the stable event name."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log duplicates our verification lines; keep its errors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RefusedRequests) for f in server.filters):
        server.addFilter(RefusedRequests())


class RefusedRequests(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (a 400 it answers itself) as an
    ERROR with a traceback: bad input, not a fault, and a cheap log flood. Such a record
    becomes one ``http_request_refused`` warning line (status and reason, no traceback);
    every other record of aiohttp's server passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError) or not 400 <= error.code < 500:
            return True
        detail = " ".join((error.message or type(error).__name__).split())
        level = min(record.levelno, logging.WARNING)  # aiohttp's debug lines stay debug
        _log.log(level, "http_request_refused", extra={"status": error.code, "error": detail[:200]})
        return False


class VerificationLog:
    """The per-verification JSON lines, written in batches.

    Not through :mod:`logging`: a LogRecord, a lock, the formatter and one write per line
    weigh on every request. This writer formats the same JSON object (``ts``, ``level``,
    ``logger``, ``event`` and the fields) itself and writes every ``flush_interval``
    seconds, or each ``max_lines``, with one ``write``.
    It honours the ``verifier.verifications`` logger's level (INFO by default).
    """

    logger_name = "verifier.verifications"

    def __init__(
        self, stream: TextIO | None = None, *, max_lines: int = 256, flush_interval: float = 0.2
    ) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._max_lines = max_lines
        self._interval = flush_interval
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._prefix = ""
        self._millisecond = -1
        self._head = ""

    @property
    def enabled(self) -> bool:
        return logging.getLogger(self.logger_name).isEnabledFor(logging.INFO)

    def emit(self, fields: dict[str, Any]) -> None:
        self.emit_members(_ENCODE(fields)[1:-1])

    def emit_members(self, members: str) -> None:
        """One line whose fields are ``members``: JSON object members (``"k":v,...``)
        already encoded, by a caller that formats its line faster than a dict would be."""
        now = time.time()
        millisecond = int(now * 1000)
        if millisecond != self._millisecond:  # lines of the same millisecond share a head
            self._millisecond = millisecond
            second = int(now)
            if second != self._second:
                self._second = second
                self._prefix = dt.datetime.fromtimestamp(second, dt.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%S"
                )
            self._head = (
                f'{{"ts":"{self._prefix}.{int((now - second) * 1000):03d}+00:00","level":"INFO",'
                f'"logger":"{self.logger_name}","event":"verification",'
            )
        self._lines.append(self._head + members + "}")
        if len(self._lines) >= self._max_lines:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # stderr closed or full: the lines are lost, not the call
            pass
