"""``[sip]``: the SIP front end's listeners, who may use them, and what a 302 carries."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

__all__ = ["REDIRECT_HEADERS", "Listen", "SipSettings", "parse_listen"]

REDIRECT_HEADERS = (
    "P-Asserted-Identity",
    "Reason",
    "X-Verstat",
    "X-Attestation",
    "X-Origid",
    "X-Label",
)
"""Every verdict header a 302 can carry, in the order they are written."""

MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Listen:
    transport: Literal["udp", "tcp"]
    host: str
    port: int


def parse_listen(text: str) -> Listen:
    """``udp:127.0.0.1:5060``, ``tcp:[::1]:5060`` -> :class:`Listen`.

    Raises:
        ValueError: another transport, a host that is not an IP address, a bad port.
    """
    transport, _, rest = text.strip().partition(":")
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if transport not in ("udp", "tcp"):
        raise ValueError(f"listen {text!r}: the transport must be udp or tcp")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen {text!r}: the host must be an IP address") from None
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen {text!r}: the port must be 0-65535")
    return Listen("udp" if transport == "udp" else "tcp", host, int(port))


@dataclass(frozen=True, slots=True, kw_only=True)
class SipSettings:
    listen: tuple[str, ...] = ()
    """SIP listeners, ``TRANSPORT:HOST:PORT`` with udp or tcp (none: SIP is off)."""
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Source networks (CIDR) served; others are dropped (UDP) or closed (TCP) and counted."""
    max_message: int = MAX_MESSAGE
    """Largest SIP message, in bytes (at most 65536); a larger one is refused."""
    max_transactions: int = 10_000
    """INVITE server transactions kept (for retransmissions, ACK and CANCEL); oldest go first."""
    redirect_headers: tuple[str, ...] = REDIRECT_HEADERS
    """Verdict headers a 302 carries: P-Asserted-Identity (with ``;verstat=``), Reason
    (RFC 9410, on a failure), X-Verstat, X-Attestation, X-Origid, X-Label."""
    contact_headers: tuple[str, ...] = ()
    """Verdict headers put in the 302's Contact URI as embedded headers (``?Name=value``),
    for switches that copy those onto the onward INVITE; same names as redirect_headers."""

    def __post_init__(self) -> None:
        for text in self.listen:
            parse_listen(text)
        for cidr in self.allow:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"allow {cidr!r} is not a network (CIDR)") from None
        if not 1 <= self.max_message <= MAX_MESSAGE:
            raise ValueError(f"max_message must be 1-{MAX_MESSAGE}")
        if self.max_transactions < 1:
            raise ValueError("max_transactions must be >= 1")
        for name in (*self.redirect_headers, *self.contact_headers):
            if name not in REDIRECT_HEADERS:
                raise ValueError(f"{name!r} is not one of {', '.join(REDIRECT_HEADERS)}")

    def listeners(self) -> list[Listen]:
        return [parse_listen(text) for text in self.listen]
