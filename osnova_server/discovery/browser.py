"""Browse the LAN for `_osnova._tcp` servers, as a phone does, for `osnova-server discover`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from osnova_server.discovery import SERVICE_TYPE

__all__ = ["FoundServer", "browse"]

# Time left after the browse window for the last servers found to answer their SRV/TXT question.
_RESOLVE_GRACE: Final = 1.0


@dataclass(frozen=True, slots=True)
class FoundServer:
    """One advertised server, as a phone sees it before pairing: nothing here is trusted yet."""

    name: str
    host: str
    addresses: tuple[str, ...]
    port: int
    fingerprint: str
    version: str
    tls: bool
    path: str

    def as_json(self) -> dict[str, Any]:
        """The JSON object `discover --json` prints for this server."""
        return {
            "name": self.name, "host": self.host, "addresses": list(self.addresses), "port": self.port,
            "fingerprint": self.fingerprint, "version": self.version, "tls": self.tls, "path": self.path,
        }


async def browse(timeout: float) -> list[FoundServer]:
    """Every server that answers within `timeout` seconds, by name."""
    async with _open_zeroconf() as aiozc:
        zeroconf = aiozc.zeroconf
        resolving: dict[str, asyncio.Task[FoundServer | None]] = {}

        def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
            """Resolve each new or changed server at once, so the answer is ready when the window closes."""
            if state_change is ServiceStateChange.Removed:
                task = resolving.pop(name, None)
                if task is not None:
                    task.cancel()
            else:
                resolving[name] = asyncio.ensure_future(_resolve(zeroconf, name, timeout + _RESOLVE_GRACE))

        browser = AsyncServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[on_change])
        try:
            await asyncio.sleep(timeout)
        finally:
            await browser.async_cancel()
        found: list[FoundServer] = []
        if resolving:
            done, pending = await asyncio.wait(resolving.values(), timeout=_RESOLVE_GRACE)
            for task in pending:
                task.cancel()
            found = [server for task in done if not task.cancelled() and (server := task.result()) is not None]
    return sorted(found, key=lambda server: server.name.casefold())


@contextlib.asynccontextmanager
async def _open_zeroconf() -> AsyncIterator[AsyncZeroconf]:
    """Listen on every interface, IPv6 too where the host has it."""
    try:
        aiozc = AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.All)
    except OSError:
        aiozc = AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
    try:
        yield aiozc
    finally:
        await aiozc.async_close()


async def _resolve(zeroconf: Zeroconf, name: str, timeout: float) -> FoundServer | None:
    """Ask for the SRV, TXT and address records of `name` (often already cached from the browse)."""
    info = AsyncServiceInfo(SERVICE_TYPE, name)
    if not await info.async_request(zeroconf, int(timeout * 1000)) or info.port is None:
        return None
    txt = info.decoded_properties
    return FoundServer(
        name=name.removesuffix("." + SERVICE_TYPE),
        host=(info.server or "").removesuffix("."),
        addresses=tuple(info.parsed_scoped_addresses()),
        port=info.port,
        fingerprint=txt.get("fp") or "",
        version=txt.get("v") or "",
        tls=txt.get("tls") == "1",
        path=txt.get("path") or "",
    )
