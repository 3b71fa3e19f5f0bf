"""bans.list and bans.lift: the addresses refused after too many failed authentications."""

from __future__ import annotations

from typing import Any

from osnova_server.errors import InvalidParams, NotFound
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role
from osnova_server.services.bans import check_address
from osnova_server.timestamps import from_epoch


@rpc.method("bans.list", role=Role.OWNER)
async def bans_list(ctx: Context) -> list[dict[str, Any]]:
    """List the addresses banned right now, with until when and why."""
    return [
        {"address": ban.address, "banned_until": from_epoch(ban.banned_until), "reason": ban.reason,
         "created_at": ban.created_at}
        for ban in ctx.runtime.bans.active()
    ]


@rpc.method("bans.lift", role=Role.OWNER, errors=(InvalidParams, NotFound))
async def bans_lift(ctx: Context, address: str) -> bool:
    """Lift the ban on an address and forget its failed attempts; an address not banned is -32001."""
    try:
        canonical = check_address(address)
    except ValueError as err:
        raise InvalidParams(f"Invalid params: 'address': {err}") from None
    if not await ctx.runtime.bans.lift(canonical):
        raise NotFound(f"{canonical} is not banned; see `osnova-server bans list`")
    return True
