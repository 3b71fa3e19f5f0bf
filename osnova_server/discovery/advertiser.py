"""The live `_osnova._tcp` registration in python-zeroconf: probed for a free name, kept current, withdrawn."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable
from typing import Final

from zeroconf import IPVersion, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from osnova_server.discovery import SERVICE_TYPE, Coverage, numbered_name

__all__ = ["Advertiser", "NoFreeName"]

_LOGGER = logging.getLogger(__name__)

# `osnova (2)` up to `osnova (MAX_NAME_TRIES)`; past that something on the LAN answers for every name.
MAX_NAME_TRIES: Final = 20
# How long another server has to answer for a name before it is taken to be free.
_ASK_TIMEOUT_MS: Final = 2000


class NoFreeName(Exception):
    """Every name tried is taken on the LAN."""


class Advertiser:
    """One server's record on the LAN; `close` sends the goodbye packets that withdraw it."""

    __slots__ = ("_coverage", "_info", "_port", "_requested", "_server", "_zeroconf")

    def __init__(self, coverage: Coverage, port: int) -> None:
        """Open the multicast sockets on the covered interfaces; raises OSError where that fails."""
        self._coverage = coverage
        self._port = port
        self._server = f"{socket.gethostname().partition('.')[0] or 'osnova'}.local."
        ip_version = IPVersion.All if coverage.ipv6 else IPVersion.V4Only
        self._zeroconf = AsyncZeroconf(interfaces=list(coverage.interfaces), ip_version=ip_version)
        self._info: AsyncServiceInfo | None = None
        self._requested = ""

    @property
    def name(self) -> str:
        """The instance name on the LAN (`osnova (2)` after a conflict), or "" before it is registered."""
        if self._info is None:
            return ""
        return self._info.name.removesuffix("." + SERVICE_TYPE)

    async def publish(self, name: str, txt: dict[str, str]) -> None:
        """Make the record on the LAN say `name` and `txt`: register, update the TXT, or re-register."""
        current = self._info
        if current is not None and name == self._requested:
            if current.decoded_properties == txt:
                return
            updated = self._service_info(self.name, txt)
            announced = await self._zeroconf.async_update_service(updated)
            self._info = updated
            # Logged once the new record is on the LAN, before its repeats are done: a shutdown
            # meanwhile cancels the repeats, and the log must still say the record changed.
            _LOGGER.info("mDNS record of %r updated (fp %s)", self.name, txt.get("fp"))
            await announced
            return
        if current is not None:
            await (await self._zeroconf.async_unregister_service(current))
            self._info = None
        self._info, announced = await self._register(name, txt)
        self._requested = name
        await announced  # a SIGTERM meanwhile still withdraws it: it is registered already
        _LOGGER.info("advertising %r (%s) over mDNS on %s, port %d", self.name, SERVICE_TYPE,
                     ", ".join(self._coverage.addresses) or "no routable address", self._port)

    async def close(self) -> None:
        """Send goodbye packets for the record and close the sockets."""
        await self._zeroconf.async_close()
        if self._info is not None:
            _LOGGER.info("mDNS record of %r withdrawn", self.name)
            self._info = None

    async def _register(self, name: str, txt: dict[str, str]) -> tuple[AsyncServiceInfo, Awaitable[object]]:
        """Probe for `name`, then `name (2)`, `name (3)`...; start announcing the first that is free.

        python-zeroconf's own renaming makes `name-2`; DNS-SD (RFC 6763 section 9) and every
        Apple device show `name (2)`, so the numbering is done here.
        """
        for number in range(1, MAX_NAME_TRIES + 1):
            candidate = name if number == 1 else numbered_name(name, number)
            info = self._service_info(candidate, txt)
            if not await self._answered(candidate):
                try:
                    return info, await self._zeroconf.async_register_service(info)
                except NonUniqueNameException:
                    pass
            _LOGGER.warning("mDNS name %r is taken on this network; trying %r",
                            candidate, numbered_name(name, number + 1))
        raise NoFreeName(f"the names {name!r} to {numbered_name(name, MAX_NAME_TRIES)!r} are all taken; "
                         "set another [discovery] name")

    async def _answered(self, name: str) -> bool:
        """Whether another responder on the LAN answers for instance `name` within two seconds.

        python-zeroconf's probe only looks for the name among the PTR records it has cached,
        which a freshly started server has not (the other server answers the probe with SRV and
        TXT records), so it misses a conflict unless it happened to hear the other's PTR; asking
        for the name first finds it.
        """
        return await AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}").async_request(
            self._zeroconf.zeroconf, _ASK_TIMEOUT_MS)

    def _service_info(self, name: str, txt: dict[str, str]) -> AsyncServiceInfo:
        """The SRV, TXT and address records of instance `name`."""
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=self._port,
            properties=dict(txt),
            server=self._server,
            parsed_addresses=list(self._coverage.addresses),
        )
