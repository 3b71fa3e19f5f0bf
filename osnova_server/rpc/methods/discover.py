"""rpc.discover: the OpenRPC document of every method, for clients and code generators."""

from __future__ import annotations

from typing import Any

from osnova_server.rpc import openrpc
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role


@rpc.method("rpc.discover", role=Role.PUBLIC)
async def rpc_discover(ctx: Context) -> dict[str, Any]:
    """Describe every method of this server as an OpenRPC 1.3.2 document.

    Each method lists its params (by name or by position), the JSON Schema of each param and
    of its result, and the errors it may answer with. `x-roles` lists who may call it (`x-scope`: which token it needs).
    """
    return openrpc.document(rpc)
