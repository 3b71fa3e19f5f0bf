"""config.getServer and config.setServer: the address pairing codes point devices at."""

from __future__ import annotations

from osnova_server.errors import InvalidParams
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role


@rpc.method("config.getServer", role=Role.MEMBER)
async def config_get_server(ctx: Context) -> str | None:
    """Return the advertised server address (set here, else the config file's), or null."""
    return await ctx.runtime.settings.get_server()


@rpc.method("config.setServer", role=Role.OWNER, errors=(InvalidParams,))
async def config_set_server(ctx: Context, address: str) -> bool:
    """Set the advertised server address, an http(s)://host[:port] URL; kept across restarts."""
    await ctx.runtime.settings.set_server(address)
    return True
