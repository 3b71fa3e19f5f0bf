"""devices.*: the paired devices, their roles, and taking a device's access away."""

from __future__ import annotations

from typing import Any, Literal

from osnova_server.errors import Forbidden, NotFound
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role


@rpc.method("devices.list", role=Role.MEMBER)
async def devices_list(ctx: Context) -> list[dict[str, Any]]:
    """List every paired device, revoked ones included; a member sees only itself."""
    only = ctx.device_id if ctx.role is Role.MEMBER else None
    return ctx.runtime.devices.list(only)


@rpc.method("devices.revoke", role=Role.MEMBER, errors=(NotFound, Forbidden))
async def devices_revoke(ctx: Context, device_id: str) -> bool:
    """Revoke a device: its tokens get 401 from now on and its sockets close.

    A member may revoke only itself (-32003); an unknown id is -32001.
    """
    if ctx.role is Role.MEMBER and ctx.device_id != device_id:
        raise Forbidden("a member device may revoke only itself; ask an owner or use an admin token")
    await ctx.runtime.devices.revoke(device_id, by=ctx.principal, remote=ctx.remote)
    return True


@rpc.method("devices.setRole", role=Role.OWNER, errors=(NotFound, Forbidden))
async def devices_set_role(ctx: Context, device_id: str, role: Literal["member", "owner"]) -> bool:
    """Make a device a member or an owner; it applies from the device's next call.

    An owner may not change its own role (-32003); an unknown id is -32001.
    """
    if ctx.device_id == device_id:
        raise Forbidden("a device may not change its own role; ask another owner or use an admin token")
    await ctx.runtime.devices.set_role(device_id, Role(role), by=ctx.principal, remote=ctx.remote)
    return True


@rpc.method("devices.remove", role=Role.OWNER, errors=(NotFound, Forbidden))
async def devices_remove(ctx: Context, device_id: str) -> bool:
    """Forget a revoked device: it leaves devices.list for good.

    A device that is not revoked is -32003 (revoke it first); an unknown id is -32001.
    """
    await ctx.runtime.devices.remove(device_id, by=ctx.principal, remote=ctx.remote)
    return True
