"""devices.list and devices.revoke: the paired devices, and taking one's access away."""

from __future__ import annotations

from typing import Any

from osnova_server.errors import Forbidden, NotFound
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.tokens import Scope


@rpc.method("devices.list", scope=Scope.DEVICE)
async def devices_list(ctx: Context) -> list[dict[str, Any]]:
    """List every device ever paired, revoked ones included."""
    return ctx.runtime.devices.list()


@rpc.method("devices.revoke", scope=Scope.DEVICE, errors=(NotFound, Forbidden))
async def devices_revoke(ctx: Context, device_id: str) -> bool:
    """Revoke a device: its tokens get 401 from now on and its sockets close.

    Device tokens may revoke only their own device (-32003); an unknown id is -32001.
    """
    if not ctx.is_admin and ctx.device_id != device_id:
        raise Forbidden("a device may revoke only itself; revoke other devices with an admin token")
    await ctx.runtime.devices.revoke(device_id, by=ctx.principal, remote=ctx.remote)
    return True
