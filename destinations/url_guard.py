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
from dataclasses import dataclass
from urllib.parse import urlsplit

# Cloud metadata endpoints that are not already covered by link-local (169.254.0.0/16).
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
    }
)


class BlockedUrl(ValueError):
    """The URL or the address it resolves to is not allowed by the network policy."""


@dataclass(frozen=True)
class NetworkPolicy:
    """`allow_private_networks` lifts both rules, for on-premise installs, the demo and tests."""

    allow_private_networks: bool = False


def check_url(url: str, policy: NetworkPolicy) -> None:
    """Raise `BlockedUrl` unless the URL is well-formed, https, and resolves to public addresses.

    Raises `OSError` when the host name does not resolve.
    """
    check_url_form(url, policy)
    parts = urlsplit(url)
    resolve_public_address(parts.hostname or "", parts.port or 443, policy)


def check_url_form(url: str, policy: NetworkPolicy) -> None:
    """The checks that need no DNS: absolute URL, no userinfo, https unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BlockedUrl("must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise BlockedUrl("must not carry credentials; put them in the secret config fields")
    if parts.scheme != "https" and not policy.allow_private_networks:
        raise BlockedUrl("must use https")


def resolve_public_address(host: str, port: int, policy: NetworkPolicy) -> str:
    """Resolve `host` and return one address to connect to.

    Every address the name resolves to must be public, so a name that mixes a public and a
    private answer is refused as a whole. Raises `BlockedUrl`, or `OSError` when the name
    does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise OSError(f"{host} did not resolve")
    if not policy.allow_private_networks:
        for address in addresses:
            if not is_public_address(address):
                raise BlockedUrl(f"{host} resolves to a non-public address")
    return addresses[0]


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA_ADDRESSES:
        return False
    return ip.is_global and not ip.is_multicast
