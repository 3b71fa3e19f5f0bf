"""The Host check: a request must name this server, or it gets 421 and nothing runs.

A web page that rebinds its own DNS name to the server's LAN address makes the browser send
requests with that page's host name in `Host`; refusing every name the server does not know
is what stops it from reading `/status` or anything else. Accepted: any IP address literal,
`localhost`, this machine's host name (also its first label and `NAME.local`), the host of the
advertised address (the config's, or the one `config.setServer` stored, followed as it
changes), and `[server] allowed_hosts`. A request with no Host header at all (HTTP/1.0 tools)
names no foreign host and is let through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from osnova_server.events import CONFIG_CHANGED, Event
from osnova_server.services.settings import SERVER_ADDRESS_KEY
from osnova_server.web.errors import json_error
from osnova_server.web.keys import STATE_KEY

LOCALHOST: Final = "localhost"
MDNS_SUFFIX: Final = ".local"
_SHOWN_CHARS: Final = 100
# How many Host header values HostNames.note remembers.
KNOWN_HEADERS_MAX: Final = 64


def host_name(header: str) -> str:
    """The host part of a Host header value, lower-case, without port, brackets or final dot."""
    value = header.strip()
    if value.startswith("["):
        return value[1:].partition("]")[0].lower()
    host, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        value = host
    return value.rstrip(".").lower()


def machine_names(hostname: str | None = None) -> frozenset[str]:
    """This machine's names: its host name, the name's first label, and `label.local`."""
    name = (hostname if hostname is not None else socket.gethostname()).rstrip(".").lower()
    label = name.partition(".")[0]
    return frozenset(n for n in (name, label, label + MDNS_SUFFIX, LOCALHOST) if n)


def address_host(address: str | None) -> str | None:
    """The host of an advertised address such as `https://home.example:8443`."""
    if not address:
        return None
    try:
        host = urlsplit(address if "//" in address else f"//{address}").hostname
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None


def is_ip_literal(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address literal.

    inet_pton first: it is C, and most Hosts a LAN server sees are its IP address, where the
    ipaddress module costs about ten times as much on every request.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    if "%" not in host:  # only a scoped IPv6 address (fe80::1%eth0) needs the slow path
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostNames:
    """The names this server answers to; the advertised one follows `config.setServer`."""

    __slots__ = ("machine", "known", "stored", "_configured", "_configured_host")

    def __init__(self, machine: Iterable[str]) -> None:
        self.machine = frozenset(machine)
        # Host header values that name this server by what no reload or setServer changes (an IP
        # literal, this machine's name): a client sends the same Host on every request, and from
        # the second on it costs one set lookup instead of being parsed and judged again.
        self.known: set[str] = set()
        # The host of the address config.setServer stored, if any.
        self.stored: str | None = None
        self._configured = ""
        self._configured_host: str | None = None

    def allows(self, host: str, configured: str, allowed: Iterable[str]) -> bool:
        """Whether `host` (already lower-case) names this server; `configured` is advertised_address."""
        if host in self.machine or host == self.stored or is_ip_literal(host):
            return True
        if configured != self._configured:  # changed by a SIGHUP reload
            self._configured, self._configured_host = configured, address_host(configured)
        if host == self._configured_host:
            return True
        return any(host == name.rstrip(".").lower() for name in allowed)

    def note(self, header: str, host: str) -> None:
        """Remember an allowed Host `header` (whose host is `host`) if its verdict can never change."""
        if len(self.known) < KNOWN_HEADERS_MAX and (host in self.machine or is_ip_literal(host)):
            self.known.add(header)

    def follow(self, event: Event) -> None:
        """Event-bus listener: keep the stored advertised host current."""
        if event.topic == CONFIG_CHANGED and event.data.get("key") == SERVER_ADDRESS_KEY:
            value = event.data.get("value")
            self.stored = address_host(value if isinstance(value, str) else None)


def setup_host(app: web.Application) -> Callable[[web.Request], web.Response | None]:
    """Follow the advertised address from startup on; return the check that answers 421 to other hosts."""
    state = app[STATE_KEY]
    names = HostNames(machine_names())
    unlisten: list[Callable[[], None]] = []

    async def start(app: web.Application) -> None:
        runtime = state.runtime
        names.stored = address_host(await runtime.settings.get_server())
        unlisten.append(runtime.events.listen(names.follow))

    async def stop(app: web.Application) -> None:
        while unlisten:
            unlisten.pop()()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)

    def host_refusal(request: web.Request) -> web.Response | None:
        """The 421 answer for a request that names a host this server is not, else None."""
        header = request.headers.get(hdrs.HOST)
        if header is None or header in names.known:
            return None
        server = state.runtime.config.server
        host = host_name(header)
        if names.allows(host, server.advertised_address, server.allowed_hosts):
            names.note(header, host)
            return None
        return json_error(
            421,
            f"this server does not answer to the host name {host[:_SHOWN_CHARS]!r}; use its IP address "
            "or add the name to [server] allowed_hosts",
        )

    return host_refusal
