"""Where an x5u (or CRL) URL may send us: address vetting against SSRF. Pure, but for DNS.

The x5u URL is chosen by whoever sent the call, so its host is resolved here, every
address is vetted (RFC 6890 special-purpose ranges, addresses embedded in IPv6
transition prefixes, IPv4-mapped IPv6), and the fetcher then connects to one of the
vetted addresses itself (:func:`verifier.net.fetch`), so that a second DNS answer cannot swap
in an address that was not vetted.

:class:`AddressPolicy` holds the operator's allowances; :func:`special_range` names the
range an address belongs to (None for an ordinary global unicast address).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ..core.errors import X5uRefused

__all__ = [
    "AddressPolicy",
    "IPAddress",
    "Resolver",
    "host_matches",
    "resolve_vetted",
    "special_range",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``await resolver(host, port)`` -> the host's addresses as strings; OSError when none."""

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Named special-purpose ranges (RFC 6890 and its updates), checked in order; the first match
# names the refusal. Anything else that Python does not call global is refused as well.
_RANGES: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private (RFC 1918)"),
    (_V4("172.16.0.0/12"), "private (RFC 1918)"),
    (_V4("192.168.0.0/16"), "private (RFC 1918)"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("100.64.0.0/10"), "shared address space / CGNAT (RFC 6598)"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (_V4("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (_V4("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (_V4("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (_V4("198.18.0.0/15"), "benchmarking (RFC 2544)"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast (deprecated)"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "limited broadcast"),
    (_V4("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fc00::/7"), "unique local (private)"),
    (_V6("fec0::/10"), "site-local (deprecated)"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("100::/64"), "discard-only (RFC 6666)"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64 (RFC 8215)"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("2001:2::/48"), "benchmarking (RFC 5180)"),
    (_V6("2001::/23"), "IETF protocol assignments (2001::/23)"),
    (_V6("::/96"), "IPv4-compatible (deprecated)"),
)
# Never allowed, whatever the operator says: these cannot be a certificate repository.
_NEVER = frozenset({"'this network' (0.0.0.0/8)", "unspecified", "multicast", "limited broadcast"})
_NAT64 = _V6("64:ff9b::/96")


def special_range(address: IPAddress) -> str | None:
    """The special-purpose range ``address`` is in, or None for a global unicast address.

    IPv4-mapped (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::/96``), 6to4 (``2002::/16``) and
    Teredo (``2001::/32``) addresses are judged by the IPv4 address they carry.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = None
        how = ""
        if address.ipv4_mapped is not None:
            embedded, how = address.ipv4_mapped, "IPv4-mapped"
        elif address in _NAT64:
            embedded, how = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
        elif address.sixtofour is not None:
            embedded, how = address.sixtofour, "6to4"
        elif address.teredo is not None:
            embedded, how = address.teredo[1], "Teredo"
        if embedded is not None:
            inner = special_range(embedded)
            return None if inner is None else f"{how} {inner} ({embedded})"
    for network, name in _RANGES:
        if address.version == network.version and address in network:
            return name
    if not address.is_global:
        return "not globally routable"
    return None


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` is one of ``patterns``: an exact name, or ``.suffix`` for subdomains."""
    name = host.lower().rstrip(".")
    for pattern in patterns:
        p = pattern.lower().rstrip(".")
        if p.startswith("."):
            if name.endswith(p) or name == p[1:]:
                return True
        elif name == p:
            return True
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressPolicy:
    """Which special-purpose addresses the operator allows (tests and demos: loopback).

    ``allow_private`` allows every special-purpose range except unspecified, multicast and
    broadcast; ``allow`` lists host names (exact or ``.suffix``) and CIDRs that may resolve
    to, or be, special-purpose addresses.
    """

    allow_private: bool = False
    allow: tuple[str, ...] = ()
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks: list[IPNetwork] = []
        for item in self.allow:
            if "/" in item or ":" in item or item.replace(".", "").isdigit():
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ValueError(
                        f"allow entry {item!r} is not a valid address or CIDR"
                    ) from None
        object.__setattr__(self, "_networks", tuple(networks))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """The range that refuses ``address`` (an answer for ``host``), or None to use it."""
        special = special_range(address)
        if special is None:
            return None
        if special in _NEVER:
            return special
        if self.allow_private or host_matches(host, self.allow):
            return None
        if any(address.version == n.version and address in n for n in self._networks):
            return None
        return special


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (``loop.getaddrinfo``).

    Raises:
        OSError: the name does not resolve.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen[str(sockaddr[0]).split("%", 1)[0]] = None
    return list(seen)


async def resolve_vetted(
    host: str, port: int, *, policy: AddressPolicy, resolver: Resolver = system_resolver
) -> list[IPAddress]:
    """Resolve ``host`` (or take it as an IP literal) and vet every address.

    Every address must pass: one refused address refuses the host, so that a name whose
    answers mix public and private addresses cannot be used to reach the private one.

    Raises:
        X5uRefused: an address is refused by ``policy`` (the detail says which and why).
        OSError: the name does not resolve (the caller reports it as a fetch failure).
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        answers = await resolver(host, port)
        addresses = []
        for text in answers:
            try:
                addresses.append(ipaddress.ip_address(text))
            except ValueError:
                raise OSError(f"resolver returned {text!r}, not an address") from None
        if not addresses:
            raise OSError(f"{host} has no address")
    for address in addresses:
        reason = policy.refusal(host, address)
        if reason is None:
            continue
        if literal is not None:
            raise X5uRefused(f"host {address} is {reason}; refused before connecting")
        raise X5uRefused(
            f"host {host} resolves to {address}, which is {reason}; refused before connecting"
        )
    return addresses
