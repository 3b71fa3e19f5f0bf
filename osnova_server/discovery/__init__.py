"""mDNS (DNS-SD) discovery: what `_osnova._tcp` record the server advertises, and on which interfaces.

Everything here is decided without python-zeroconf: `advertiser` and `browser` import it, and
only a server that advertises (or `osnova-server discover`) loads them. ifaddr (it loads ctypes:
about 4 ms at start-up) is imported by `coverage`, which runs in a thread once the server is ready.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from osnova_server import __version__
from osnova_server.config import MAX_INSTANCE_NAME_BYTES, Config

if TYPE_CHECKING:
    import ifaddr

    from osnova_server.discovery.advertiser import Advertiser

__all__ = [
    "RPC_PATH",
    "SERVICE_TYPE",
    "Advertising",
    "Coverage",
    "advertises",
    "coverage",
    "instance_name",
    "numbered_name",
    "txt_record",
]

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_osnova._tcp.local."
RPC_PATH: Final = "/rpc"
# Interface flags from <linux/if.h>, and the ioctl that reads them (<linux/sockios.h>).
_IFF_UP: Final = 0x1
_IFF_LOOPBACK: Final = 0x8
_IFF_MULTICAST: Final = 0x1000
_SIOCGIFFLAGS: Final = 0x8913
# Goodbye packets go out three times 125 ms apart; this bounds a LAN that stops answering.
_CLOSE_TIMEOUT: Final = 3.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Coverage:
    """The interfaces an advertisement goes out on and the addresses it names.

    `interfaces` is in python-zeroconf's form: IPv4 addresses, and IPv6 interface indexes.
    Empty `interfaces` means there is nothing to advertise on, and `problem` says why.
    """

    interfaces: tuple[str | int, ...]
    addresses: tuple[str, ...]
    ipv6: bool
    problem: str = ""


class Advertising:
    """The background job that keeps the server advertised; it never delays start-up nor fails it.

    Deciding where to advertise (a host-name bind resolves), importing zeroconf and probing the
    LAN for a free name take a second or more, so all of it runs after the server is ready.
    """

    __slots__ = ("_advertiser", "_changed", "_config", "_fingerprint", "_port", "_task")

    def __init__(self, config: Config, port: int, fingerprint: Callable[[], Awaitable[str]]) -> None:
        """Advertise port `port` with the pairing fingerprint `fingerprint()` gives, once started."""
        self._config = config
        self._port = port
        self._fingerprint = fingerprint
        self._changed = asyncio.Event()
        self._advertiser: Advertiser | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin in the background."""
        self._task = asyncio.create_task(self._run(), name="mdns-advertising")

    def reload(self, config: Config) -> None:
        """Re-read the name and the fingerprint (a new certificate) and update the record if they changed."""
        self._config = config
        self._changed.set()

    async def stop(self) -> None:
        """Withdraw the record (goodbye packets), or give up registering it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._advertiser is not None:
            advertiser, self._advertiser = self._advertiser, None
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await advertiser.close()
            except (OSError, TimeoutError) as err:
                _LOGGER.warning("mDNS goodbye not sent (%s); phones forget the record within 2 minutes", err)

    async def _run(self) -> None:
        """Register, then apply each reload; a failure is one warning and the server serves on."""
        try:
            found = await asyncio.to_thread(self._plan)
            if found is None:
                return
            if found.problem:
                _LOGGER.warning("not advertised over mDNS: %s", found.problem)
                return
            from osnova_server.discovery.advertiser import Advertiser

            advertiser = self._advertiser = Advertiser(found, self._port)
            await advertiser.publish(*await self._describe())
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - discovery is optional: whatever breaks it, the server serves on
            _LOGGER.warning("not advertised over mDNS (%s); the server serves anyway: pair with the QR or "
                            "the address", err)
            return
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await advertiser.publish(*await self._describe())
            except Exception as err:  # noqa: BLE001 - keep the last record rather than stop advertising
                _LOGGER.warning("mDNS record not updated (%s); it still says what it said before", err)

    def _plan(self) -> Coverage | None:
        """Where to advertise, or None when the config says not to; loads zeroconf only then."""
        if not advertises(self._config):
            _LOGGER.debug("not advertising over mDNS: [discovery] mdns = %r with bind address %s",
                          self._config.discovery.mdns, self._config.server.bind_address)
            return None
        found = coverage(self._config)
        if not found.problem:
            importlib.import_module("osnova_server.discovery.advertiser")  # here, off the event loop
        return found

    async def _describe(self) -> tuple[str, dict[str, str]]:
        """The instance name and TXT record the current config and certificate call for."""
        config = self._config
        return instance_name(config), txt_record(await self._fingerprint(), config.tls.enabled)


def advertises(config: Config) -> bool:
    """Whether `[discovery] mdns` asks for an advertisement with this bind address."""
    mdns = config.discovery.mdns
    if mdns == "auto":
        return not _loopback_only(_bind_addresses(config.host))
    return mdns is True


def instance_name(config: Config) -> str:
    """`[discovery] name`, else this machine's host name (its first label), cut to one DNS label."""
    name = config.discovery.name.strip() or socket.gethostname().partition(".")[0] or "osnova"
    return _fit(name, MAX_INSTANCE_NAME_BYTES)


def numbered_name(name: str, number: int) -> str:
    """The name to try when `name` is taken on the LAN: `osnova (2)`, still one DNS label."""
    suffix = f" ({number})"
    return _fit(name, MAX_INSTANCE_NAME_BYTES - len(suffix.encode())) + suffix


def txt_record(fingerprint: str, tls: bool) -> dict[str, str]:
    """The TXT keys a phone reads: what to pin (`fp`), the version, TLS, and the RPC path."""
    return {"fp": fingerprint, "v": __version__, "tls": "1" if tls else "0", "path": RPC_PATH}


def coverage(config: Config) -> Coverage:
    """The interfaces the bind address covers that can carry multicast, and their addresses.

    A wildcard bind covers every interface that is up and multicast-capable except loopback
    (`::` covers IPv4 too: the socket is dual stack); a specific address covers the interface
    holding it, loopback included, since `mdns = true` asks for exactly that.
    """
    import ifaddr  # here, not at start-up: see the module docstring

    host = config.host
    ipv6 = host == "::" or any(a.version == 6 for a in _bind_addresses(host))
    interfaces: list[str | int] = []
    addresses: list[str] = []
    silent: list[str] = []
    for adapter in ifaddr.get_adapters():
        flags = _flags(adapter.nice_name)
        for ip in _covered(adapter, host, flags):
            if not flags & _IFF_UP or not flags & _IFF_MULTICAST:
                silent.append(adapter.nice_name)
                continue
            if ip.version == 4:
                interfaces.append(str(ip))
            elif adapter.index is not None and adapter.index not in interfaces:
                interfaces.append(adapter.index)
            if not ip.is_link_local:  # a link-local IPv6 address is useless without its scope
                addresses.append(str(ip))
    problem = ""
    if not interfaces:
        problem = _no_interface_problem(config.server.bind_address, sorted(set(silent)))
    return Coverage(tuple(interfaces), tuple(addresses), ipv6, problem)


def _covered(adapter: ifaddr.Adapter, host: str, flags: int) -> list[Address]:
    """The adapter's addresses that a socket bound to `host` listens on."""
    wildcard = {"0.0.0.0": (4,), "::": (4, 6)}.get(host)
    bound = set(_bind_addresses(host)) if wildcard is None else set()
    found: list[Address] = []
    for ip in adapter.ips:
        address = ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
        if wildcard is not None:
            if address.version in wildcard and not flags & _IFF_LOOPBACK and not address.is_loopback:
                found.append(address)
        elif address in bound:
            found.append(address)
    return found


def _no_interface_problem(bind_address: str, silent: list[str]) -> str:
    """Why nothing can be advertised, said so the admin knows what to change."""
    if silent:
        names = ", ".join(silent)
        return (
            f"the interfaces {bind_address} covers ({names}) are down or cannot carry multicast; "
            f"phones will not find the server on the LAN (for loopback: `ip link set lo multicast on`)"
        )
    return f"no interface holds an address {bind_address} covers; phones will not find the server on the LAN"


def _bind_addresses(host: str) -> list[Address]:
    """The IP addresses a bind to `host` listens on (a host name resolves to several)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return _unique(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos)


def _loopback_only(addresses: list[Address]) -> bool:
    """Whether every address is loopback (an unresolvable name counts as loopback: nothing to say)."""
    return all(address.is_loopback for address in addresses)


def _flags(name: str) -> int:
    """The interface's flags (up, loopback, multicast); ifaddr does not report them.

    Asked with SIOCGIFFLAGS on a UDP socket rather than read from /sys/class/net, which shows
    the interfaces of whoever mounted /sys, not necessarily those of this network namespace.
    """
    request = struct.pack("16s24x", name.encode()[:15])  # struct ifreq: the name, then a union
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            answer = fcntl.ioctl(sock, _SIOCGIFFLAGS, request)
    except OSError:
        return _IFF_UP | _IFF_MULTICAST  # not Linux, or no such call: let zeroconf try
    return int(struct.unpack_from("16sH", answer)[1])


def _fit(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, never inside a character."""
    return text.encode()[:limit].decode(errors="ignore").rstrip()


def _unique(addresses: Iterable[Address]) -> list[Address]:
    """The addresses once each, in order."""
    return list(dict.fromkeys(addresses))
