"""Health checks of what the server depends on, rolled up into ok, degraded or error."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from osnova_server.security.tls import TlsError, certificate_not_after
from osnova_server.timestamps import utc_now

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime

_LOGGER = logging.getLogger(__name__)

CHECK_TIMEOUT: Final = 2.0
_RANK: Final = {"ok": 0, "degraded": 1, "error": 2}
# Long enough to renew by hand (or for a renewal timer to have failed visibly) before clients refuse it.
CERTIFICATE_WARNING: Final = dt.timedelta(days=14)
# Below this a few installs and the WAL's growth could fill the disk and stop every write.
DISK_FREE_MINIMUM: Final = 100 * 1024 * 1024

# A check answers "ok", "degraded" or "error", or None when it does not apply to this server.
Check = Callable[["Runtime"], Awaitable[str | None]]


async def _database(runtime: Runtime) -> str | None:
    """The database answers a query."""
    return "ok" if await runtime.store.ping() else "error"


async def _scheduler(runtime: Runtime) -> str | None:
    """The background job scheduler is open and its jobs alive."""
    return "error" if runtime.scheduler.closed else "ok"


async def _redis(runtime: Runtime) -> str | None:
    """Cluster mode's Redis answers; `degraded` when not (each process goes on alone)."""
    if runtime.cluster is None:
        return None
    return await runtime.cluster.status()


def certificate_status(not_after: dt.datetime, now: dt.datetime) -> str:
    """Expired is `error`; expiring within CERTIFICATE_WARNING is `degraded`; else `ok`."""
    if not_after <= now:
        return "error"
    if not_after - now < CERTIFICATE_WARNING:
        return "degraded"
    return "ok"


async def _tls(runtime: Runtime) -> str | None:
    """The served certificate is readable and not about to expire; skipped when TLS is off."""
    tls = runtime.config.tls
    if not tls.enabled:
        return None
    try:
        not_after = await asyncio.to_thread(certificate_not_after, Path(tls.cert_path))
    except TlsError as err:
        _LOGGER.warning("status check tls: %s", err)
        return "error"
    return certificate_status(not_after, utc_now())


def disk_status(free_bytes: int) -> str:
    """Under DISK_FREE_MINIMUM free is `degraded`; else `ok`."""
    return "degraded" if free_bytes < DISK_FREE_MINIMUM else "ok"


def free_bytes(path: Path) -> int:
    """Bytes available to this process on the file system holding `path` (blocking)."""
    return shutil.disk_usage(path).free


async def _disk(runtime: Runtime) -> str | None:
    """The file system holding `state_dir` has room for the database to grow."""
    return disk_status(await asyncio.to_thread(free_bytes, runtime.config.state_dir))


CHECKS: Final[tuple[tuple[str, str, Check], ...]] = (
    ("database", "sqlite", _database),
    ("redis", "redis", _redis),
    ("scheduler", "aiojobs", _scheduler),
    ("tls", "certificate", _tls),
    ("disk", "filesystem", _disk),
)


async def check_services(runtime: Runtime) -> list[dict[str, Any]]:
    """Run every check with a timeout; a check that fails or hangs reports `error`."""
    results = []
    for name, kind, check in CHECKS:
        status: str | None
        try:
            status = await asyncio.wait_for(check(runtime), CHECK_TIMEOUT)
        except Exception as err:  # noqa: BLE001 - a broken dependency is a status, not a crash
            _LOGGER.warning("status check %s failed: %s", name, err)
            status = "error"
        if status is not None:
            if name == "database":
                kind = runtime.store.engine.name  # sqlite, or postgresql in cluster mode
            results.append({"name": name, "kind": kind, "status": status})
    results.append(runtime.apps.breakers.service())
    return results


def overall(services: list[dict[str, Any]]) -> str:
    """The worst status among the services."""
    return max((s["status"] for s in services), key=_RANK.__getitem__, default="ok")
