"""status.get: how the server and the services it depends on are doing."""

from __future__ import annotations

from typing import Any

from osnova_server import __version__
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role
from osnova_server.services.status import check_services, overall


@rpc.method("status.get", role=Role.MEMBER)
async def status_get(ctx: Context) -> dict[str, Any]:
    """Report the server's overall health and each service it depends on (and, in cluster mode, which instance answers)."""
    services = await check_services(ctx.runtime)
    answer = {
        "status": overall(services),
        "version": __version__,
        "uptime": round(ctx.runtime.uptime, 3),
        "services": services,
    }
    if ctx.runtime.clustered:
        answer["instance"] = ctx.runtime.instance_name
    if ctx.runtime.cluster is not None and ctx.runtime.cluster.instances is not None:
        answer["instances"] = await ctx.runtime.cluster.instances.everyone()
    return answer
