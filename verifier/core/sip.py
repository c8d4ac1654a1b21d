"""SIP artefacts: the headers a verifier needs from an INVITE, and what it hands back. Pure.

:func:`parse_invite` takes a raw SIP request (or just its header lines) and returns the
Identity values, From, P-Asserted-Identity, To, Request-URI and Date. :func:`reason_value`
builds every ``Reason`` header value the package sends: :func:`reason_header` the RFC 9410
``Reason: STIR`` one of a failed verification, the policy's block response its ``SIP`` one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import VerifierError
from .identity import split_header_values
from .result import Result
from .times import parse_time

__all__ = [
    "MAX_SIP_HEADERS",
    "SipError",
    "SipRequest",
    "header_reasons",
    "invite_from_headers",
    "parse_invite",
    "reason_header",
    "reason_value",
]

MAX_SIP_HEADERS = 512
_COMPACT = {"f": "from", "t": "to", "i": "call-id", "y": "identity"}
_REQUEST_LINE = re.compile(r"^([A-Z]+) (\S+) SIP/2\.0$")
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")


class SipError(VerifierError, ValueError):
    """The text is not a SIP request or header block; the message says why."""


@dataclass(slots=True, kw_only=True)
class SipRequest:
    method: str | None = None
    ruri: str | None = None
    identity: list[str] = field(default_factory=list)
    from_: str | None = None
    pai: list[str] = field(default_factory=list)
    to: str | None = None
    date: str | None = None
    diversion: list[str] = field(default_factory=list)
    history_info: list[str] = field(default_factory=list)

    def date_epoch(self) -> float | None:
        """The Date header as epoch seconds; None when absent.

        Raises:
            SipError: a Date that is not an RFC 1123 date.
        """
        if self.date is None:
            return None
        try:
            return parse_time(self.date)
        except ValueError:
            raise SipError(f"Date {self.date!r} is not an RFC 1123 date") from None

    def calling_pai(self) -> str | None:
        """The P-Asserted-Identity to compare with orig: the tel URI if there is one."""
        for value in self.pai:
            if value.strip().lower().lstrip("<").startswith("tel:") or "<tel:" in value.lower():
                return value
        return self.pai[0] if self.pai else None


def parse_invite(text: str) -> SipRequest:
    """The verifier's view of a SIP request: a whole INVITE, or just its header lines.

    Folded (continuation) lines are unfolded; compact header names are understood; the
    body, after the first empty line, is ignored.

    Raises:
        SipError: no header at all, a line that is not ``Name: value``, or too many headers.
    """
    if "\x00" in text:
        raise SipError("SIP message contains a NUL byte")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    request = SipRequest()
    while lines and not lines[0].strip():
        lines.pop(0)
    if lines:
        match = _REQUEST_LINE.match(lines[0].strip())
        if match:
            request.method, request.ruri = match.group(1), match.group(2)
            lines.pop(0)
        elif lines[0].startswith("SIP/2.0"):
            raise SipError("this is a SIP response, not a request")
    headers: list[tuple[str, str]] = []
    for line in lines:
        if not line.strip():
            break
        if line[0] in " \t":
            if not headers:
                raise SipError("a continuation line comes before any header")
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.fullmatch(name):
            raise SipError(f"not a SIP header line: {line[:40]!r}")
        headers.append((name, value.strip()))
        if len(headers) > MAX_SIP_HEADERS:
            raise SipError(f"more than {MAX_SIP_HEADERS} header lines")
    if not headers and request.method is None:
        raise SipError("no SIP request line and no header")
    return invite_from_headers(request.method, request.ruri, headers)


def invite_from_headers(
    method: str | None, ruri: str | None, headers: Iterable[tuple[str, str]]
) -> SipRequest:
    """The verifier's view of a request already split into its start line and its
    (unfolded) header lines, names in any case, compact or long: what :func:`parse_invite`
    returns for its text."""
    request = SipRequest(method=method, ruri=ruri)
    for name, value in headers:
        key = name.lower()
        key = _COMPACT.get(key, key)
        if key == "identity":
            request.identity.extend(split_header_values(value))
        elif key == "from":
            request.from_ = value
        elif key == "to":
            request.to = value
        elif key == "p-asserted-identity":
            request.pai.extend(split_header_values(value))
        elif key == "date":
            request.date = value
        elif key == "diversion":
            request.diversion.extend(split_header_values(value))
        elif key == "history-info":
            request.history_info.extend(split_header_values(value))
    return request


def reason_header(result: Result) -> str | None:
    """RFC 9410 ``Reason`` header value for a failed verification, None when it passed.

    With several Identity headers, ``ppi`` names the failing one by its signature.
    """
    reason = result.reason
    if reason is None:
        return None
    failing = [h for h in result.identities if h.status == "failed" and h.ppi]
    ppi = failing[0].ppi if len(result.identities) > 1 and failing else None
    return reason_value("STIR", reason.sip_code, reason.text, ppi=ppi)


def header_reasons(result: Result) -> list[str]:
    """One RFC 9410 ``Reason`` value per failed Identity header, each with its ``ppi``."""
    return [
        reason_value("STIR", h.reason.sip_code, h.reason.text, ppi=h.ppi)
        for h in result.identities
        if h.status == "failed" and h.reason is not None and h.ppi
    ]


def reason_value(protocol: str, cause: int, text: str, *, ppi: str | None = None) -> str:
    """The one ``Reason`` header value builder (RFC 3326, RFC 9410):
    ``STIR;cause=438;text="Invalid Identity Header"[;ppi="..."]``.

    ``text`` is cut to printable ASCII without quotes or backslashes (100 characters at
    most), so nothing a caller sent can inject into the header; ``ppi`` is a base64url
    signature from a header that decoded.
    """
    cleaned = "".join(ch for ch in text if 0x20 <= ord(ch) < 0x7F and ch not in '"\\')[:100]
    value = f'{protocol};cause={cause};text="{cleaned}"'
    return value if ppi is None else f'{value};ppi="{ppi}"'
