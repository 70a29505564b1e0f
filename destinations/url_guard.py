"""Checks on user-supplied URLs: https only, and only public addresses, pinned.

A destination's URL comes from an account owner, so a trace delivery must not become a
way to reach the operator's own network (SSRF). `check_url` runs when a config is saved;
`resolve_public_address` runs at connect time, inside the transport's connection class,
so the address that was checked is the address that is connected to and a DNS answer
that changes between check and connect (rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from urllib3.connection import HTTPConnection

# Cloud metadata endpoints that are not already covered by link-local (169.254.0.0/16).
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
    }
)


class BlockedUrl(ValueError):
    """The URL or the address it resolves to is not allowed by the network policy."""


# (host, port) -> the addresses the name resolves to.
Resolver = Callable[[str, int], list[str]]

# Prefixes whose addresses carry an IPv4 address in their last 32 bits (RFC 6052 NAT64,
# the deprecated IPv4-compatible and the SIIT IPv4-translated forms); the embedded address
# is what a translator on the path would connect to.
_EMBEDDING_V4_IN_LOW_32 = (
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("::/96"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
)
# Local-use NAT64 (RFC 8215): the operator's own translators, never public.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
# ISATAP interface identifiers (RFC 5214): ...:0:5efe:a.b.c.d or ...:200:5efe:a.b.c.d.
_ISATAP_IDS = (0x00005EFE, 0x02005EFE)


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, through the operating system."""
    # An IPv4 or IPv6 socket address starts with the address text (typeshed's union also
    # has the (int, bytes) of address families getaddrinfo never answers here).
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class NetworkPolicy:
    """`allow_private_networks` lifts both rules, for on-premise installs, the demo and tests.

    `resolver` is how names become addresses (the system's by default; tests inject one
    to show which address a connection really goes to).
    """

    allow_private_networks: bool = False
    resolver: Resolver = field(default=system_resolver, compare=False, repr=False)


def check_url(url: str, policy: NetworkPolicy) -> None:
    """Raise `BlockedUrl` unless the URL is well-formed, https, and resolves to public addresses.

    Raises `OSError` when the host name does not resolve.
    """
    check_url_form(url, policy)
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    resolve_public_address(parts.hostname or "", parts.port or default_port, policy)


def check_url_form(url: str, policy: NetworkPolicy) -> None:
    """The checks that need no DNS: absolute URL, no userinfo, https unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BlockedUrl("must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise BlockedUrl("must not carry credentials; put them in the secret config fields")
    try:
        port = parts.port
    except ValueError:
        port = 0  # out of 0..65535, or not a number
    if port == 0:
        raise BlockedUrl("has an invalid port (must be 1 to 65535)")
    if parts.scheme != "https" and not policy.allow_private_networks:
        raise BlockedUrl("must use https")


def resolve_public_address(host: str, port: int, policy: NetworkPolicy) -> str:
    """Resolve `host` and return one address to connect to.

    Every address the name resolves to must be public, so a name that mixes a public and a
    private answer is refused as a whole. Raises `BlockedUrl`, or `OSError` when the name
    does not resolve.
    """
    addresses = policy.resolver(host, port)
    if not addresses:
        raise OSError(f"{host} did not resolve")
    if not policy.allow_private_networks:
        for address in addresses:
            if not is_public_address(address):
                raise BlockedUrl(f"{host} resolves to a non-public address")
    return addresses[0]


def is_public_address(address: str) -> bool:
    """Whether `address` is a public unicast address.

    An IPv6 address that carries an IPv4 address (mapped, compatible, translated, NAT64,
    6to4) is judged by the IPv4 address, which is where a translator on the path connects:
    Python calls `64:ff9b::7f00:1` global although it reaches 127.0.0.1. Tunnels whose
    far end the address cannot vouch for (Teredo, ISATAP, local-use NAT64) are refused.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None or ip in _LOCAL_NAT64 or _is_isatap(ip):
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return _is_public(embedded)
    return _is_public(ip)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip in _METADATA_ADDRESSES:
        return False
    return ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in network for network in _EMBEDDING_V4_IN_LOW_32):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_isatap(ip: ipaddress.IPv6Address) -> bool:
    return (int(ip) >> 32) & 0xFFFFFFFF in _ISATAP_IDS


def pinned_connection_class(
    base: type[HTTPConnection], policy: NetworkPolicy
) -> type[HTTPConnection]:
    """A subclass of the urllib3 connection class `base` that resolves its host through
    `policy`, checks the address and connects to exactly that address.

    Only the address used for the socket changes: the Host header, TLS SNI and certificate
    verification still use the host name of the URL. `pinned_address` is the address the
    socket went to (the transport keeps private addresses' answers out of error texts).
    """

    # mypy takes no class whose base is a variable; `base` is urllib3's HTTP or HTTPS
    # connection class, chosen by the caller.
    class PinnedConnection(base):  # type: ignore[misc, valid-type]
        pinned_address: str | None = None
        # The host urllib3 connects to (its `host` setter sets it; it declares no type).
        _dns_host: str

        def _new_conn(self) -> socket.socket:  # urllib3's hook that opens the socket
            hostname = self._dns_host
            self._dns_host = resolve_public_address(hostname, self.port, policy)
            self.pinned_address = self._dns_host
            try:
                opened: socket.socket = super()._new_conn()
                return opened
            finally:
                self._dns_host = hostname

    return PinnedConnection
