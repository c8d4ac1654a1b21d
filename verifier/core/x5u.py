"""The x5u URL rules (ATIS-1000074 as the careful verifiers apply it). Pure.

https only; a host; port 443 unless another is allowed (AT&T's repository uses 8443);
no userinfo, query or fragment. Where the host may resolve to is the fetcher's check.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import X5uRefused

__all__ = ["DEFAULT_X5U_PORTS", "X5uUrl", "check_x5u_url"]

DEFAULT_X5U_PORTS: frozenset[int] = frozenset({443, 8443})


@dataclass(frozen=True, slots=True)
class X5uUrl:
    url: str
    host: str
    port: int


def check_x5u_url(x5u: str, allowed_ports: Collection[int] = DEFAULT_X5U_PORTS) -> X5uUrl:
    """Split ``x5u`` and apply the URL rules.

    Raises:
        X5uRefused: 436, with a detail naming the rule.
    """
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) > 0x7E for ch in x5u):
        raise X5uRefused("x5u contains whitespace, control or non-ASCII characters")
    try:
        parts = urlsplit(x5u)
        port = parts.port
    except ValueError as exc:
        raise X5uRefused(f"x5u is not a valid URL: {exc}") from None
    if parts.scheme.lower() != "https":
        raise X5uRefused(f"x5u scheme must be https, not {parts.scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise X5uRefused("x5u must not carry userinfo")
    if parts.query or "?" in x5u:
        raise X5uRefused("x5u must not carry a query")
    if parts.fragment or "#" in x5u:
        raise X5uRefused("x5u must not carry a fragment")
    host = parts.hostname
    if not host:
        raise X5uRefused("x5u has no host")
    port = 443 if port is None else port
    if port not in allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(allowed_ports))
        raise X5uRefused(f"x5u port {port} is not allowed (allowed: {allowed})")
    return X5uUrl(url=x5u, host=host, port=port)
