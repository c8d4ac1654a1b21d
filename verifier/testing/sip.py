"""SIP requests as a switch sends them and responses read back, for the SIP front end's
tests, benchmark and demo (plain text, no SIP stack)."""

from __future__ import annotations

import secrets

__all__ = ["RURI", "invite", "response_headers"]

RURI = "sip:+12155551213@switch.example.com;user=phone"


def invite(
    port: int,
    *,
    identity: str | None = None,
    branch: str | None = None,
    method: str = "INVITE",
    cseq_method: str | None = None,
    call_id: str | None = None,
    transport: str = "UDP",
    extra: str = "",
    ruri: str = RURI,
) -> bytes:
    """A request as a switch sends it (``identity``: an Identity header value)."""
    branch = branch or f"z9hG4bK-{secrets.token_hex(8)}"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch={branch};rport",
        "Max-Forwards: 70",
        "From: <sip:+12155551212@origin.example.com;user=phone>;tag=from1",
        "To: <sip:+12155551213@switch.example.com;user=phone>",
        f"Call-ID: {call_id or secrets.token_hex(8)}@127.0.0.1",
        f"CSeq: 1 {cseq_method or method}",
        "Contact: <sip:caller@127.0.0.1>",
    ]
    if identity is not None:
        lines.append(f"Identity: {identity}")
    if extra:
        lines.append(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response_headers(data: bytes) -> tuple[int, dict[str, list[str]]]:
    """(status code, header name in lower case -> values) of a response."""
    text = data.decode()
    if not text.endswith("\r\n\r\n"):
        raise ValueError("not a whole SIP response")
    status, *lines = text[:-4].split("\r\n")
    found: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    version, code, _ = status.split(" ", 2)
    if version != "SIP/2.0":
        raise ValueError("not a SIP/2.0 response")
    return int(code), found
