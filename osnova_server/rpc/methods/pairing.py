"""pairing.start and pairing.complete: how a new device gets its first tokens."""

from __future__ import annotations

from typing import Any, Literal

from osnova_server.errors import Forbidden, InvalidParams, Unauthorized
from osnova_server.logs import audit
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role
from osnova_server.services.pairing import DEFAULT_TTL, ISSUED_BY_ADMIN, pairing_payload


@rpc.method("pairing.start", role=Role.OWNER, errors=(InvalidParams, Forbidden))
async def pairing_start(
    ctx: Context, name: str | None = None, ttl: int = DEFAULT_TTL, role: Literal["member", "owner"] = "member",
) -> dict[str, Any]:
    """Issue a single-use pairing code and the payload a new device scans.

    `name` names the device to be paired (it wins over the name the device gives itself);
    `ttl` is the code's lifetime in seconds, from 30 to 3600; `role` is the new device's role
    (only admin tokens may issue `owner` codes, -32003 otherwise).
    """
    granted = Role(role)
    if granted is Role.OWNER and ctx.role is not Role.ADMIN:
        raise Forbidden("only an admin token may issue owner codes; pair as a member, then ask an admin")
    issued = await ctx.runtime.pairing.issue_code(name, ttl, granted, ctx.device_id or ISSUED_BY_ADMIN)
    audit(
        "pairing.start", principal=ctx.principal, remote=ctx.remote, ttl=ttl, name=issued.record.name,
        role=granted.value,
    )
    try:
        return await pairing_payload(ctx.runtime, issued)
    except BaseException:
        await ctx.runtime.pairing.discard_code(issued.record)  # a failed call leaves no code behind
        raise


@rpc.method("pairing.complete", role=Role.PUBLIC, errors=(Unauthorized, InvalidParams))
async def pairing_complete(ctx: Context, token: str, device_name: str | None = None) -> dict[str, Any]:
    """Redeem a pairing code: register this device and return its access and refresh tokens.

    A wrong, used, expired or invalidated code is -32002; five wrong codes in total invalidate
    every outstanding code. A code is used up only by a pairing that succeeds.
    """
    try:
        grant = await ctx.runtime.devices.pair(token, device_name, ctx.remote)
    except Unauthorized:
        ctx.runtime.record_auth_failure(ctx.remote, "pairing_code")
        raise
    return grant.to_json()
