"""Health checks of what the server depends on, rolled up into ok, degraded or error."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime

_LOGGER = logging.getLogger(__name__)

CHECK_TIMEOUT: Final = 2.0
_RANK: Final = {"ok": 0, "degraded": 1, "error": 2}


async def _database(runtime: Runtime) -> str:
    """The database answers a query."""
    return "ok" if await runtime.store.ping() else "error"


async def _scheduler(runtime: Runtime) -> str:
    """The background job scheduler is open and its jobs alive."""
    return "error" if runtime.scheduler.closed else "ok"


CHECKS: Final = (("database", "sqlite", _database), ("scheduler", "aiojobs", _scheduler))


async def check_services(runtime: Runtime) -> list[dict[str, Any]]:
    """Run every check with a timeout; a check that fails or hangs reports `error`."""
    results = []
    for name, kind, check in CHECKS:
        try:
            status = await asyncio.wait_for(check(runtime), CHECK_TIMEOUT)
        except Exception as err:  # a broken dependency is a status, not a crash
            _LOGGER.warning("status check %s failed: %s", name, err)
            status = "error"
        results.append({"name": name, "kind": kind, "status": status})
    return results


def overall(services: list[dict[str, Any]]) -> str:
    """The worst status among the services."""
    return max((s["status"] for s in services), key=_RANK.__getitem__, default="ok")
