"""SIP messages on the wire (RFC 3261 section 7): a request read from bytes, a response
written, TCP framing by Content-Length.

Hand-written because no maintained SIP parser exists on PyPI (aiosip's last release is of
2017); it reads only what a redirect server needs, strictly and with caps, and leaves the
verification headers to :func:`verifier.core.sip.invite_from_headers`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..core.errors import VerifierError

__all__ = [
    "MAX_HEADERS",
    "MAX_LINE",
    "BadRequest",
    "Dropped",
    "Oversize",
    "Request",
    "ack_key",
    "frame",
    "parse_request",
    "readable_head",
    "response",
]

MAX_HEADERS = 256
"""Header lines in one message, at most."""
MAX_LINE = 16 * 1024
"""Characters in one (unfolded) header line, at most."""

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length"}
_REQUEST_LINE = re.compile(r"([A-Za-z][A-Za-z0-9.!%*_+`'~-]*) (\S+) SIP/2\.0")
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_CSEQ = re.compile(r"([0-9]{1,10})\s+([A-Za-z][A-Za-z0-9.!%*_+`'~-]*)")
_BRANCH = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)
_SENT_BY = re.compile(r"SIP\s*/\s*2\.0\s*/\s*[A-Za-z]+\s+([^;,\s]+)", re.IGNORECASE)
_TAG = re.compile(r";\s*tag\s*=", re.IGNORECASE)
# The first Via header line of a message and what follows its line end.
_TOP_VIA = re.compile(rb"\r\n(?:via|v)[ \t]*:[ \t]*([^\r\n]*)\r\n(.?)", re.IGNORECASE | re.DOTALL)


class Dropped(VerifierError, ValueError):
    """Not a request that can be answered (no request line, no Via...): dropped, counted."""


class Oversize(Dropped):
    """A TCP message whose header block or declared body is over the size limit."""


class BadRequest(VerifierError, ValueError):
    """A request whose Via and dialog headers can be read but that is malformed: 400."""

    def __init__(self, request: Request, reason: str) -> None:
        super().__init__(reason)
        self.request = request
        self.reason = reason


@dataclass(slots=True, kw_only=True)
class Request:
    """A parsed request: its start line, headers (unfolded, in order) and body."""

    method: str
    ruri: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    by_name: dict[str, list[str]] = field(default_factory=dict)
    """Header name (lower case, long form) -> its values, in order."""
    branch: str = ""
    """The top Via's branch ("" when it has none)."""
    sent_by: str = ""
    """The top Via's sent-by, in lower case ("" when it cannot be read)."""

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower case, long form), in order."""
        return self.by_name.get(name, [])

    def first(self, name: str) -> str | None:
        found = self.by_name.get(name)
        return found[0] if found else None

    @property
    def cseq(self) -> tuple[int, str] | None:
        match = _CSEQ.fullmatch((self.first("cseq") or "").strip())
        return (int(match.group(1)), match.group(2)) if match else None


def frame(buffer: bytes | bytearray, limit: int) -> int:
    """The length of the first whole message in a TCP stream buffer (0: not yet whole).
    Leading CRLFs (keep-alive pings) belong to no message and should be skipped first.

    Raises:
        Dropped: the header block or the declared body exceeds ``limit``, or the
            Content-Length cannot be read.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > limit:
            raise Oversize("header block over the size limit")
        return 0
    length = 0
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            if not value.strip().isdigit() or len(value.strip()) > 6:
                raise Dropped("Content-Length is not a number")
            length = int(value.strip())
    total = end + 4 + length
    if total > limit:
        raise Oversize("message over the size limit")
    return total if len(buffer) >= total else 0


def parse_request(data: bytes, *, stream: bool = False) -> Request:
    """The request in ``data`` (one datagram, or one framed TCP message).

    Raises:
        Dropped: a response, no request line, no Via with a branch, no readable text.
        BadRequest: Via and the dialog headers are there but something else is wrong.
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise Dropped("no empty line after the headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text, problem = head.decode("latin-1"), "headers are not UTF-8"
    else:
        problem = ""
    if "\x00" in text:
        raise Dropped("NUL byte in the headers")
    lines = text.split("\r\n")
    start = _REQUEST_LINE.fullmatch(lines[0])
    if start is None:
        raise Dropped("no SIP/2.0 request line")
    request = Request(method=start.group(1), ruri=start.group(2))
    for line in lines[1:]:
        if "\r" in line or "\n" in line:
            problem = problem or "a bare CR or LF"
        if len(request.headers) >= MAX_HEADERS:
            problem = problem or f"more than {MAX_HEADERS} header lines"
            break
        if line[:1] in (" ", "\t"):
            if not request.headers:
                problem = problem or "a continuation line before any header"
                continue
            name, value = request.headers[-1]
            request.headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.fullmatch(name):
            problem = problem or "a line that is not a header"
            continue
        key = name.lower()
        request.headers.append((_COMPACT.get(key, key), value.strip()))
    by_name = request.by_name
    for name, value in request.headers:
        by_name.setdefault(name, []).append(value)
        if len(value) > MAX_LINE:
            problem = problem or "a header line over the length limit"
    via = by_name.get("via")
    if via:
        request.branch, request.sent_by = _transaction_key(via[0])
    if not request.branch or not request.sent_by:
        raise Dropped("no Via with a branch")
    for name in ("from", "to", "call-id", "cseq"):
        if len(request.values(name)) != 1:
            problem = problem or f"not exactly one {name} header"
    return _checked(request, problem, body, stream=stream)


def _transaction_key(via: str) -> tuple[str, str]:
    """(branch, sent-by in lower case) of a Via value's first entry; "" where unreadable."""
    branch = _BRANCH.search(via.split(",", 1)[0])
    sent_by = _SENT_BY.match(via)
    return (branch.group(1) if branch else "", sent_by.group(1).lower() if sent_by else "")


def ack_key(data: bytes) -> tuple[str, str] | None:
    """The transaction an ACK in ``data`` names (RFC 3261 section 17.2.3: its top Via's
    branch and sent-by), read from that one header line; None when it cannot be read so
    (then :func:`parse_request` reads the whole message). Enough to absorb the ACK of a
    final response without reading the rest: a server transaction matches on these alone."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or not data.startswith(b"ACK "):
        return None
    found = _TOP_VIA.search(data, 0, end + 2)
    if found is None or found.group(2)[:1] in (b" ", b"\t"):  # folded: read it whole
        return None
    branch, sent_by = _transaction_key(found.group(1).decode("latin-1"))
    return (branch, sent_by) if branch and sent_by else None


def readable_head(data: bytes | bytearray, limit: int) -> Request | None:
    """The request whose start is ``data`` (a message over ``limit`` bytes), read from its
    header lines within the first ``limit`` bytes, when its Via, From, To and Call-ID are
    there to answer it (513); None when they are not."""
    start = bytes(data[:limit])
    end = start.find(b"\r\n\r\n")
    head = start[:end] if end >= 0 else start[: start.rfind(b"\r\n")]
    try:
        return parse_request(head + b"\r\n\r\n")
    except BadRequest as exc:
        return exc.request
    except Dropped:
        return None


def _checked(request: Request, problem: str, body: bytes, *, stream: bool) -> Request:
    declared = request.values("content-length")
    if not problem and len(declared) > 1:
        problem = "more than one Content-Length"
    if not problem and declared and (not declared[0].isdigit() or int(declared[0]) != len(body)):
        problem = "Content-Length does not match the body"
    if not problem and stream and not declared:
        problem = "no Content-Length on a stream transport"
    cseq = request.cseq
    if not problem and (cseq is None or cseq[1] != request.method):
        problem = "CSeq does not match the method"
    if problem:
        if not request.first("call-id") or not request.first("from") or not request.first("to"):
            raise Dropped(problem)
        raise BadRequest(request, problem)
    return request


def response(
    request: Request,
    code: int,
    text: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    to_tag: str = "",
    received: str = "",
    source_port: int = 0,
) -> bytes:
    """A response to ``request`` (RFC 3261 section 8.2.6): its Via headers (the top one
    with ``received`` and ``rport`` filled in), From, To (with ``to_tag`` added when it has
    no tag), Call-ID and CSeq, then ``headers``, no body."""
    lines = [f"SIP/2.0 {code} {text}"]
    first = True
    for name, value in request.headers:
        if name == "via":
            if first:
                value = _via_received(value, received, source_port)
                first = False
            lines.append(f"Via: {value}")
    to = request.first("to") or ""
    if to_tag and code > 100 and not _TAG.search(to):
        to = f"{to};tag={to_tag}"
    lines.append(f"From: {request.first('from') or ''}")
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {request.first('call-id') or ''}")
    lines.append(f"CSeq: {request.first('cseq') or ''}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _via_received(via: str, received: str, port: int) -> str:
    """The top Via value with ``;received=`` and a valueless ``;rport`` given the source
    address and port (RFC 3261 section 18.2.1, RFC 3581)."""
    first, comma, rest = via.partition(",")
    params = first.split(";")
    out = [params[0]]
    for param in params[1:]:
        if param.strip().lower() == "rport" and port:
            out.append(f"rport={port}")
        elif not param.strip().lower().startswith("received="):
            out.append(param)
    if received:
        out.append(f"received={received}")
    return ";".join(out) + comma + rest
