"""The admin page's overview: one snapshot of how the server is doing, pushed over /admin/live."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osnova_server import __version__
from osnova_server.security.tls import TlsError, certificate_not_after
from osnova_server.services.status import check_services, overall
from osnova_server.timestamps import rfc3339

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime

_LOGGER = logging.getLogger(__name__)


async def certificate_expiry(runtime: Runtime) -> str | None:
    """When the served certificate expires (RFC 3339), or None without TLS or when unreadable."""
    tls = runtime.config.tls
    if not tls.enabled:
        return None
    try:
        return rfc3339(await asyncio.to_thread(certificate_not_after, Path(tls.cert_path)))
    except TlsError as err:
        _LOGGER.warning("overview: %s", err)
        return None


async def overview(runtime: Runtime) -> dict[str, Any]:
    """Version, uptime, each service's health, the certificate's expiry, connections and devices."""
    services = await check_services(runtime)
    devices = runtime.store.devices()
    return {
        "status": overall(services),
        "version": __version__,
        "uptime": round(runtime.uptime, 3),
        "services": services,
        "tls": runtime.config.tls.enabled,
        "certificate_expires_at": await certificate_expiry(runtime),
        "connections": runtime.connection_count(),
        "max_connections": runtime.config.server.max_clients,
        "active_devices": runtime.active_sessions(),
        "paired_devices": sum(1 for device in devices if not device.revoked),
        "apps": len(runtime.store.apps()),
        "timestamp": rfc3339(),
    }
