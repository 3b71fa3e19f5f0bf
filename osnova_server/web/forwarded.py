"""Who is really calling: the peer address, or X-Forwarded-For when the peer is a trusted proxy.

Everything keyed by client (rate limits, bans, audit lines) reads `request[REMOTE_KEY]`, so a
client on the LAN cannot pick its own identity by sending X-Forwarded-For: only the configured
proxies' word is taken, and only the address just before the last trusted hop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import hdrs, web

from osnova_server.web.connections import plain_address
from osnova_server.web.keys import REMOTE_KEY

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _is_trusted(address: str, proxies: Sequence[Network]) -> bool:
    """Whether `address` is one of the trusted proxies."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """The client address: walk X-Forwarded-For from the right past trusted proxies."""
    if not proxies or not forwarded_for or not _is_trusted(peer, proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed header from a trusted proxy: trust nothing in it
        if not _is_trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


class ClientAddress:
    """Settles `request[REMOTE_KEY]` for each request, given the configured trusted proxies."""

    __slots__ = ("_proxies",)

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self._proxies = [ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies]

    def settle(self, request: web.BaseRequest) -> str:
        """Set and return the client address of `request`."""
        peer = plain_address(request.remote or "unknown")
        if self._proxies:
            peer = client_address(peer, request.headers.get(hdrs.X_FORWARDED_FOR), self._proxies)
        request[REMOTE_KEY] = peer
        return peer
